//! A database of its own per test on the throwaway PostgreSQL server that
//! `scripts/with-postgres` starts (`SIGNER_TEST_POSTGRES_URL`), and that server's
//! `pg_ctl` (`SIGNER_TEST_POSTGRES_CTL`) for tests that stop and restart it.

use std::time::Duration;

use host::store::{LockLimits, PostgresStore, PostgresTarget};

fn server_url() -> String {
    std::env::var("SIGNER_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "SIGNER_TEST_POSTGRES_URL is not set: run the tests through scripts/with-postgres \
             (it starts a throwaway PostgreSQL server)"
        )
    })
}

/// A fresh database, dropped (connections and all) when this is dropped.
pub struct PostgresDb {
    pub url: String,
    name: String,
}

impl PostgresDb {
    pub fn create() -> PostgresDb {
        let server = server_url();
        let mut bytes = [0u8; 8];
        rand_bytes(&mut bytes);
        let name = format!("signer_test_{}", common::hex(&bytes));
        let create = format!("CREATE DATABASE {name}");
        off_runtime(|| {
            let mut admin = postgres::Client::connect(&server, postgres::NoTls).unwrap();
            admin.batch_execute(&create).unwrap();
        });
        PostgresDb {
            url: with_database(&server, &name),
            name,
        }
    }

    /// A fresh database holding channel accounts `0..accounts`, active.
    pub fn with_channels(accounts: u32) -> PostgresDb {
        let db = PostgresDb::create();
        db.with_store(|store| {
            let keys = crate::active_keys(0..accounts, host::store::KeyRole::Channel);
            host::store::KeyStore::insert_keys(store, &keys).unwrap();
        });
        db
    }

    /// Runs `work` with a store on this database, as a host opens it, on a thread of
    /// its own: the store's calls block, and PostgreSQL's blocking client refuses to
    /// run on an async runtime's thread.
    pub fn with_store<T: Send>(&self, work: impl FnOnce(&PostgresStore) -> T + Send) -> T {
        off_runtime(|| {
            let target = PostgresTarget::new(&self.url, None).unwrap();
            let store = PostgresStore::open(target, LockLimits::default(), Duration::from_secs(10))
                .unwrap();
            work(&store)
        })
    }

    /// Runs `work` with a plain client (rows behind the store's back), likewise.
    pub fn with_client<T: Send>(&self, work: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
        off_runtime(|| work(&mut postgres::Client::connect(&self.url, postgres::NoTls).unwrap()))
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        off_runtime(|| {
            if let Ok(mut admin) = postgres::Client::connect(&server_url(), postgres::NoTls) {
                let _ = admin.batch_execute(&drop);
            }
        });
    }
}

/// `url` (`…/maintenance-db?params`) naming database `name` instead, parameters kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    if query.is_empty() {
        format!("{server}/{name}")
    } else {
        format!("{server}/{name}?{query}")
    }
}

/// Runs `work` on a thread of its own: PostgreSQL's blocking client refuses to run on
/// an async runtime's thread, and the store's calls block.
fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(work).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

fn rand_bytes(out: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(out))
        .unwrap();
}

/// One enclave and `hosts` hosts (`host-N.sock`) on `db`, in `dir`, with `extra` flags.
pub async fn hosts_on(
    dir: &std::path::Path,
    db: &PostgresDb,
    hosts: usize,
    extra: &[&str],
) -> (crate::Proc, Vec<(crate::Proc, std::path::PathBuf)>) {
    let enclave_socket = dir.join("enclave.sock");
    let enclave = crate::start_enclave(dir, &enclave_socket, 0);
    let mut started = Vec::new();
    for i in 0..hosts {
        let socket = dir.join(format!("host-{i}.sock"));
        let name = format!("host-{i}");
        let store = std::ffi::OsStr::new(&db.url);
        let proc = crate::spawn_host_on(dir, &name, &socket, &enclave_socket, store, extra);
        crate::wait_ready_at(&socket, true, &proc).await;
        started.push((proc, socket));
    }
    (enclave, started)
}

/// Runs the test server's `pg_ctl` with `action` (`stop -m fast -w`, `start -w`).
pub fn server_ctl(action: &str) {
    let ctl = std::env::var("SIGNER_TEST_POSTGRES_CTL")
        .expect("SIGNER_TEST_POSTGRES_CTL is not set: run through scripts/with-postgres");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{ctl} {action} >/dev/null"))
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl {action} failed");
}
