//! PostgreSQL-only checks; the behaviour every backend shares is in `store/tests.rs`.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use postgres::config::SslMode;

use super::*;
use crate::store::tests::{PostgresSchema, acquire_concurrently, channel, test_account};
use crate::store::{ChannelLocks, KeyRole, KeyState, KeyStore, NewKey, SCHEMA_VERSION};

fn open(schema: &PostgresSchema) -> Result<PostgresStore, StoreError> {
    let target = PostgresTarget::new(&schema.url, None)?;
    PostgresStore::open(target, LockLimits::default(), Duration::from_secs(10))
}

/// Hosts starting at once migrate the database once between them; a database a newer
/// signer-host migrated is refused at start-up and by the readiness check.
#[test]
fn hosts_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let schema = PostgresSchema::create();
    let barrier = Arc::new(Barrier::new(3));
    let hosts: Vec<_> = (0..3)
        .map(|_| {
            let (url, barrier) = (schema.url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let target = PostgresTarget::new(&url, None).unwrap();
                PostgresStore::open(target, LockLimits::default(), Duration::from_secs(10))
            })
        })
        .collect();
    let stores: Vec<PostgresStore> = hosts
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    let mut client = stores[0].target().connect().unwrap();
    let applied: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .unwrap()
        .get(0);
    assert_eq!(applied, SCHEMA_VERSION);
    stores[0].check().unwrap();

    client
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES ($1, 'from_a_newer_host', '2027-01-01', '0')",
            &[&(SCHEMA_VERSION as i32 + 1)],
        )
        .unwrap();
    let refused = open(&schema).unwrap_err();
    assert!(
        matches!(refused, StoreError::SchemaTooNew { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{refused}"
    );
    assert!(matches!(
        stores[1].check(),
        Err(StoreError::SchemaTooNew { .. })
    ));
}

/// Three hosts (three stores, each with its own writer and pool) on one database, 48
/// threads acquiring and releasing: no account is ever held by two at once. Without
/// `FOR UPDATE SKIP LOCKED` a host's UPDATE re-checks only the account it chose, after
/// another host's commit, and leases it a second time.
#[test]
fn three_hosts_on_one_database_never_share_an_account() {
    const ACCOUNTS: u32 = 24;
    let schema = PostgresSchema::create();
    let first = open(&schema).unwrap();
    first
        .insert_keys(&(0..ACCOUNTS).map(channel).collect::<Vec<_>>())
        .unwrap();
    let hosts = [first, open(&schema).unwrap(), open(&schema).unwrap()];
    acquire_concurrently(&hosts, ACCOUNTS, 48, 60);
    let summary = hosts[2].summary(false).unwrap();
    assert_eq!((summary.locked, summary.idle), (0, u64::from(ACCOUNTS)));
}

/// The URL's password never reaches logs, errors or `/readyz`.
#[test]
fn the_description_names_the_database_but_not_the_password() {
    let target = PostgresTarget::new(
        "postgres://signer:hunter2@db.internal:6432/signer?sslmode=require",
        None,
    )
    .unwrap();
    assert_eq!(target.describe(), "signer@db.internal:6432/signer");
    assert!(!format!("{target:?}").contains("hunter2"));
    // An '@' typed unencoded: the driver takes "ter2@db" for the host.
    let slipped = PostgresTarget::new("postgres://signer:hun@ter2@db/x", None).unwrap();
    assert_eq!(slipped.describe(), "signer@[REDACTED]:5432/x");
    let refused =
        PostgresTarget::new("postgres://signer:hunter2@db/x?sslmode=nonsense", None).unwrap_err();
    assert!(!refused.to_string().contains("hunter2"), "{refused}");
}

/// A database not on this machine is reached over TLS or not at all: libpq's default
/// `prefer` (plaintext when a man in the middle answers "no TLS") is read as `require`,
/// `disable` is refused, and so is a CA file next to `disable`. On this machine (a Unix
/// socket, a loopback address) the URL's mode stands.
#[test]
fn tls_is_required_for_a_database_elsewhere() {
    let mode = |url: &str| PostgresTarget::new(url, None).map(|t| t.config().get_ssl_mode());
    for url in [
        "postgres://signer@db.internal/signer",
        "postgres://signer@db.internal/signer?sslmode=prefer",
        "postgres://signer@db.internal/signer?sslmode=require",
        "postgres://signer@db.internal/signer?sslmode=verify-ca",
        "postgres://signer@10.0.0.5/signer?connect_timeout=3&sslmode=verify-full",
        "postgres://signer:pa?ss@db.internal/signer?sslmode=verify-full",
    ] {
        assert_eq!(mode(url).unwrap(), SslMode::Require, "{url}");
    }
    for url in [
        "postgres://signer@db.internal/signer?sslmode=disable",
        "postgres://signer@127.0.0.1,db.internal/signer?sslmode=disable",
        "postgres://signer@localhost/signer?hostaddr=10.0.0.5&sslmode=disable",
    ] {
        let refused = mode(url).unwrap_err();
        assert!(
            refused.to_string().contains("plaintext"),
            "{url}: {refused}"
        );
    }
    for (url, stays) in [
        (
            "postgres://signer@127.0.0.1/signer?sslmode=disable",
            SslMode::Disable,
        ),
        (
            "postgres://signer@[::1]:6432/signer?sslmode=disable",
            SslMode::Disable,
        ),
        ("postgres://signer@localhost/signer", SslMode::Prefer),
        (
            "postgres://signer@%2Fvar%2Frun%2Fpostgresql/signer?sslmode=disable",
            SslMode::Disable,
        ),
    ] {
        assert_eq!(mode(url).unwrap(), stays, "{url}");
    }
    let contradiction = PostgresTarget::new(
        "postgres://signer@127.0.0.1/signer?sslmode=disable",
        Some(std::path::Path::new("/etc/ssl/certs/ca-certificates.crt")),
    );
    assert!(matches!(contradiction, Err(StoreError::BadUrl { .. })));
}

/// The busy timeout bounds row-lock waits unless the URL's options set `lock_timeout`
/// (a setting merely ending in the name, `deadlock_timeout`, does not count).
#[test]
fn the_busy_timeout_bounds_lock_waits_unless_the_url_sets_its_own() {
    let options = |url: &str| {
        PostgresTarget::new(url, None)
            .unwrap()
            .with_timeouts(Duration::from_millis(2_500))
            .config()
            .get_options()
            .unwrap_or_default()
            .to_string()
    };
    let base = "postgres://signer@127.0.0.1/signer";
    assert!(options(base).contains("-c lock_timeout=2500"));
    assert!(
        options(&format!("{base}?options=-c%20deadlock_timeout%3D1s"))
            .contains("-c lock_timeout=2500")
    );
    for own in [
        "-c%20lock_timeout%3D9s",
        "-clock_timeout%3D9s",
        "--lock-timeout%3D9s",
    ] {
        let set = options(&format!("{base}?options={own}"));
        assert!(!set.contains("2500"), "{own}: {set}");
    }
}

/// TLS against the test server (a certificate for 127.0.0.1 from a throwaway CA):
/// verified with the CA file, refused against the web PKI roots (an unknown issuer is
/// no server to trust), and `sslmode=require` really encrypts.
#[test]
fn tls_is_verified_against_the_ca_file_and_refused_without_it() {
    let ca = std::env::var("SIGNER_TEST_POSTGRES_CA")
        .expect("SIGNER_TEST_POSTGRES_CA is not set: run through scripts/with-postgres");
    let schema = PostgresSchema::create();
    let url = schema.url.replace("sslmode=disable", "sslmode=require");
    assert!(url.contains("sslmode=require"), "{url}");

    let trusted = PostgresTarget::new(&url, Some(std::path::Path::new(&ca))).unwrap();
    let mut client = trusted.connect().unwrap();
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(encrypted);

    // With a CA file and no sslmode, or libpq's verify-full, TLS is required too.
    for url in [
        url.replace("sslmode=require&", ""),
        url.replace("sslmode=require", "sslmode=verify-full"),
    ] {
        let target = PostgresTarget::new(&url, Some(std::path::Path::new(&ca))).unwrap();
        assert_eq!(target.config().get_ssl_mode(), SslMode::Require, "{url}");
        target.connect().unwrap();
    }

    let untrusted = PostgresTarget::new(&url, None).unwrap();
    let Err(refused) = untrusted.connect() else {
        panic!("a certificate from an unknown CA was accepted");
    };
    assert!(refused.to_string().contains("certificate"), "{refused}");
    let missing = PostgresTarget::new(&url, Some(std::path::Path::new("/nonexistent.pem")));
    assert!(matches!(missing, Err(StoreError::BadUrl { .. })));
}

/// Two hosts making two distribution keys active at the same moment (activating a
/// pending one, or storing a new active one): both find none active, the unique index
/// lets the first commit, and the second host answers `DistributionExists` naming the
/// first (not a bare database error, not `KeyExists`), as one host would.
#[test]
fn distribution_keys_activated_at_once_on_two_hosts_leave_one_active() {
    type Activate = fn(&PostgresStore, NewKey) -> Result<(), StoreError>;
    let distribution = |i: u32, state: KeyState| NewKey {
        role: KeyRole::Distribution,
        state,
        ..channel(i)
    };
    let ways: [(&str, Activate); 2] = [
        ("activating a pending key", |store, key| {
            store.set_key_state(&key.public_key, KeyState::Active, &[])
        }),
        ("storing an active key", |store, key| {
            store.insert_keys(&[NewKey {
                state: KeyState::Active,
                ..key
            }])
        }),
    ];
    for (way, activate) in ways {
        let schema = PostgresSchema::create();
        let store = open(&schema).unwrap();
        store
            .insert_keys(&[distribution(1, KeyState::Pending)])
            .unwrap();
        let second = distribution(2, KeyState::Pending);
        if way == "activating a pending key" {
            store.insert_keys(std::slice::from_ref(&second)).unwrap();
        }
        let first = test_account(1);

        // The other host's activation, not yet committed.
        let mut other_host = store.target().connect().unwrap();
        let mut activation = other_host.transaction().unwrap();
        let other_pid: i32 = activation
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        activation
            .execute(
                "UPDATE keys SET state = 'active' WHERE public_key = $1",
                &[&first],
            )
            .unwrap();
        let racing = {
            let (store, second) = (store.clone(), second.clone());
            std::thread::spawn(move || activate(&store, second))
        };
        // Commit once this host's write waits on the index entry the other one holds.
        let mut watcher = store.target().connect().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                &[&other_pid],
            )
            .unwrap()
            .get::<_, i64>(0)
            == 0
        {
            assert!(std::time::Instant::now() < deadline, "{way}: never waited");
            std::thread::sleep(Duration::from_millis(10));
        }
        activation.commit().unwrap();

        let refused = racing.join().unwrap().unwrap_err();
        assert!(
            matches!(&refused, StoreError::DistributionExists { active, new } if *active == first && *new == second.public_key),
            "{way}: {refused}"
        );
        let left = store.key(&second.public_key).unwrap().map(|k| k.state);
        assert_ne!(left, Some(KeyState::Active), "{way}");
    }
}
