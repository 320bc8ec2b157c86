//! The store's behaviour, run against every backend: SQLite on a temporary file, and
//! PostgreSQL in a schema of its own on the server `SIGNER_TEST_POSTGRES_URL` names
//! (`scripts/with-postgres` starts a throwaway one). Backend-specific checks live
//! beside each backend.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::store::*;

/// A deterministic account public key for test number `i`.
pub fn test_account(i: u32) -> String {
    let mut raw = [0u8; 32];
    raw[..4].copy_from_slice(&i.to_be_bytes());
    raw[31] = 0x5a;
    format!("{}", stellar_strkey::ed25519::PublicKey(raw))
}

pub fn channel(i: u32) -> NewKey {
    NewKey {
        public_key: test_account(i),
        role: KeyRole::Channel,
        format: KeyFormat::KmsDirect,
        kms_key_id: "alias/test".into(),
        kms_ciphertext: vec![1, 2, 3, i as u8],
        sealed_seed: None,
        state: KeyState::Active,
        pending_for: None,
    }
}

/// A backend the suite runs on: a fresh, empty database per fixture.
pub trait TestBackend: Store + Clone + Sized + 'static {
    /// Anything that must live as long as the database (its directory, its schema).
    type Guard;
    fn open_fresh(clock: Clock) -> (Self, Self::Guard);
    /// A second store on the same database, as another host would open it.
    fn reopen(&self) -> Self;
    /// Runs SQL on a connection of its own, outside the store's API.
    fn execute_raw(&self, sql: &str) -> Result<(), String>;
    /// Makes the database refuse audit rows of `kind` with an error of its own (a write
    /// failing midway, after its earlier statements changed something).
    fn refuse_audit_kind(&self, kind: &str);
}

pub struct Fixture<S: TestBackend> {
    pub store: S,
    pub time: Arc<AtomicI64>,
    _guard: S::Guard,
}

impl<S: TestBackend> Fixture<S> {
    pub fn new(channels: u32) -> Fixture<S> {
        let time = Arc::new(AtomicI64::new(1_700_000_000_000));
        let clock_time = time.clone();
        let (store, guard) = S::open_fresh(Arc::new(move || clock_time.load(Ordering::SeqCst)));
        let keys: Vec<NewKey> = (0..channels).map(channel).collect();
        if !keys.is_empty() {
            store.insert_keys(&keys).unwrap();
        }
        Fixture {
            store,
            time,
            _guard: guard,
        }
    }

    pub fn advance(&self, by: Duration) {
        self.time.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl TestBackend for SqliteStore {
    type Guard = tempfile::TempDir;

    fn open_fresh(clock: Clock) -> (Self, Self::Guard) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with_clock(
            &dir.path().join("signer.db"),
            LockLimits::default(),
            Duration::from_secs(10),
            clock,
        )
        .unwrap();
        (store, dir)
    }

    fn reopen(&self) -> Self {
        SqliteStore::open(self.path(), LockLimits::default(), Duration::from_secs(5)).unwrap()
    }

    fn execute_raw(&self, sql: &str) -> Result<(), String> {
        let conn = rusqlite::Connection::open(self.path()).unwrap();
        conn.execute_batch(sql).map_err(|e| e.to_string())
    }

    fn refuse_audit_kind(&self, kind: &str) {
        self.execute_raw(&format!(
            "CREATE TRIGGER refuse_{kind} BEFORE INSERT ON audit_log WHEN NEW.kind = '{kind}'
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
        ))
        .unwrap();
    }
}

/// A PostgreSQL schema dropped when the fixture ends.
pub struct PostgresSchema {
    pub url: String,
    admin_url: String,
    schema: String,
}

impl PostgresSchema {
    /// A new, empty schema on the test server; its URL selects it for every connection.
    pub fn create() -> PostgresSchema {
        let admin_url = std::env::var("SIGNER_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!(
                "SIGNER_TEST_POSTGRES_URL is not set: run the tests through \
                 scripts/with-postgres (it starts a throwaway PostgreSQL server)"
            )
        });
        let mut bytes = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        let schema = format!("t_{}", common::hex(&bytes));
        let mut client = ::postgres::Client::connect(&admin_url, ::postgres::NoTls).unwrap();
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .unwrap();
        let separator = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{separator}options=-c%20search_path%3D{schema}");
        PostgresSchema {
            url,
            admin_url,
            schema,
        }
    }
}

impl Drop for PostgresSchema {
    fn drop(&mut self) {
        if let Ok(mut client) = ::postgres::Client::connect(&self.admin_url, ::postgres::NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema));
        }
    }
}

impl TestBackend for PostgresStore {
    type Guard = PostgresSchema;

    fn open_fresh(clock: Clock) -> (Self, Self::Guard) {
        let schema = PostgresSchema::create();
        let target = PostgresTarget::new(&schema.url, None).unwrap();
        let store = PostgresStore::open_with_clock(
            target,
            LockLimits::default(),
            Duration::from_secs(10),
            clock,
        )
        .unwrap();
        (store, schema)
    }

    fn reopen(&self) -> Self {
        PostgresStore::open(
            self.target().clone(),
            LockLimits::default(),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn execute_raw(&self, sql: &str) -> Result<(), String> {
        let mut client = self.target().config().connect(::postgres::NoTls).unwrap();
        client.batch_execute(sql).map_err(|e| {
            use std::error::Error;
            e.source()
                .map_or_else(|| e.to_string(), ToString::to_string)
        })
    }
    fn refuse_audit_kind(&self, kind: &str) {
        self.execute_raw(&format!(
            "ALTER TABLE audit_log ADD CONSTRAINT refuse_{kind} CHECK (kind <> '{kind}')"
        ))
        .unwrap();
    }
}

/// Each named test, once per backend.
macro_rules! on_every_backend {
    ($($name:ident),+ $(,)?) => {
        mod sqlite_backend {
            $(#[test]
            fn $name() {
                super::$name::<crate::store::SqliteStore>();
            })+
        }
        mod postgres_backend {
            $(#[test]
            fn $name() {
                super::$name::<crate::store::PostgresStore>();
            })+
        }
    };
}

on_every_backend!(
    keys_are_validated_stored_listed_and_never_duplicated,
    one_active_distribution_key_at_a_time,
    pending_and_retired_channels_are_not_in_the_pool,
    withdrawal_takes_only_idle_accounts_and_records_why,
    a_rewrap_swaps_the_seal_only_if_the_record_is_unchanged,
    empty_pool_and_exhausted_pool_are_different_errors,
    lock_durations_default_and_cap,
    expired_locks_are_reusable_and_stale_tokens_cannot_release,
    signing_extends_the_lock_to_max_time_and_unlock_matches_the_recorded_hash,
    picks_are_spread_over_the_idle_accounts,
    sixty_four_concurrent_acquirers_never_share_an_account,
    the_audit_log_is_append_only,
    group_commit_answers_each_write_with_its_own_result,
    a_write_failing_midway_leaves_nothing_and_the_others_commit,
    text_from_requests_never_fails_a_write_with_a_database_error,
    the_key_cache_sees_its_own_writes_at_once_and_others_within_the_epoch_check,
    queued_writes_answer_as_blocking_ones_do_and_commit_before_answering,
    an_acquire_whose_caller_left_holds_no_account,
);

fn keys_are_validated_stored_listed_and_never_duplicated<S: TestBackend>() {
    let f = Fixture::<S>::new(0);
    let mut distribution = channel(100);
    distribution.role = KeyRole::Distribution;
    f.store
        .insert_keys(&[distribution.clone(), channel(1)])
        .unwrap();
    assert!(matches!(
        f.store.insert_keys(&[channel(2), channel(1)]),
        Err(StoreError::KeyExists(k)) if k == test_account(1)
    ));
    // The failed batch stored nothing, not even its first key.
    assert!(f.store.key(&test_account(2)).unwrap().is_none());

    let stored = f.store.key(&test_account(100)).unwrap().unwrap();
    assert_eq!(stored.role, KeyRole::Distribution);
    assert_eq!(stored.kms_ciphertext, distribution.kms_ciphertext);
    let channels = f.store.list_keys(Some(KeyRole::Channel)).unwrap();
    assert_eq!(channels.len(), 1);
    assert_eq!(f.store.list_keys(None).unwrap().len(), 2);

    let mut bad = channel(3);
    bad.public_key = "GABC".into();
    assert!(matches!(
        f.store.insert_keys(&[bad]),
        Err(StoreError::InvalidKey(_))
    ));
    let mut bad = channel(3);
    bad.format = KeyFormat::Envelope;
    assert!(matches!(
        f.store.insert_keys(&[bad]),
        Err(StoreError::InvalidKey(_))
    ));
    let mut bad = channel(3);
    bad.kms_ciphertext.clear();
    assert!(matches!(
        f.store.insert_keys(&[bad]),
        Err(StoreError::InvalidKey(_))
    ));
}

fn one_active_distribution_key_at_a_time<S: TestBackend>() {
    let f = Fixture::<S>::new(0);
    let distribution = |i: u32, state: KeyState| NewKey {
        role: KeyRole::Distribution,
        state,
        ..channel(i)
    };
    f.store
        .insert_keys(&[distribution(100, KeyState::Active)])
        .unwrap();
    for batch in [
        vec![distribution(101, KeyState::Active)],
        vec![channel(1), distribution(102, KeyState::Active)],
    ] {
        assert!(matches!(
            f.store.insert_keys(&batch),
            Err(StoreError::DistributionExists { active, .. }) if active == test_account(100)
        ));
    }
    assert!(f.store.key(&test_account(1)).unwrap().is_none());
    // Two in one batch: the second finds the first.
    let f2 = Fixture::<S>::new(0);
    assert!(matches!(
        f2.store.insert_keys(&[
            distribution(1, KeyState::Active),
            distribution(2, KeyState::Active)
        ]),
        Err(StoreError::DistributionExists { .. })
    ));
    // A pending one may wait beside it; once the first is retired, another is active.
    f.store
        .insert_keys(&[distribution(103, KeyState::Pending)])
        .unwrap();
    f.store
        .set_key_state(&test_account(100), KeyState::Retired, &[])
        .unwrap();
    f.store
        .insert_keys(&[distribution(104, KeyState::Active)])
        .unwrap();
}

fn pending_and_retired_channels_are_not_in_the_pool<S: TestBackend>() {
    let f = Fixture::<S>::new(0);
    let mut pending = channel(1);
    pending.state = KeyState::Pending;
    f.store.insert_keys(&[pending]).unwrap();
    assert!(matches!(
        f.store.acquire(None),
        Err(StoreError::NoChannelAccountsConfigured)
    ));
    f.store
        .set_key_state(&test_account(1), KeyState::Active, &[])
        .unwrap();
    assert_eq!(f.store.acquire(None).unwrap().account, test_account(1));
    f.store
        .set_key_state(&test_account(1), KeyState::Retired, &[])
        .unwrap();
    assert_eq!(f.store.summary(false).unwrap().total, 0);
}

fn withdrawal_takes_only_idle_accounts_and_records_why<S: TestBackend>() {
    let f = Fixture::<S>::new(5);
    let held: Vec<String> = (0..2)
        .map(|_| f.store.acquire(None).unwrap().account)
        .collect();
    let mut pending = channel(9);
    pending.state = KeyState::Pending;
    f.store.insert_keys(&[pending]).unwrap();
    assert_eq!(
        f.store.key(&test_account(9)).unwrap().unwrap().pending_for,
        Some(PendingFor::Creation)
    );

    let taken = f.store.withdraw_idle(10, Some(1000)).unwrap();
    assert_eq!(taken.len(), 3, "five accounts, two locked");
    assert!(
        taken.iter().all(|t| !held.contains(t)),
        "a locked account is never taken"
    );
    for account in &taken {
        let key = f.store.key(account).unwrap().unwrap();
        assert_eq!(
            (key.state, key.pending_for),
            (KeyState::Pending, Some(PendingFor::Merge))
        );
    }
    assert_eq!(f.store.summary(false).unwrap().total, 2);
    let audit = f.store.recent_audit(10).unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|r| r.entry.kind == "channel_withdrawn")
            .count(),
        3
    );
    assert!(
        f.store.withdraw_idle(10, None).unwrap().is_empty(),
        "the rest are locked"
    );

    let provisioning = Provisioning {
        tx_hash: "ab".repeat(32),
        max_time: 1_700_000_300,
    };
    f.store
        .record_provisioning(&taken, &provisioning, &[])
        .unwrap();
    assert_eq!(
        f.store.key(&taken[0]).unwrap().unwrap().provisioning,
        Some(provisioning.clone())
    );
    assert!(
        f.store
            .record_provisioning(&held[..1], &provisioning, &[])
            .is_err(),
        "only pending keys carry a transaction"
    );
    f.store
        .set_key_state(&taken[0], KeyState::Retired, &[])
        .unwrap();
    let retired = f.store.key(&taken[0]).unwrap().unwrap();
    assert_eq!((retired.pending_for, retired.provisioning), (None, None));
}

fn a_rewrap_swaps_the_seal_only_if_the_record_is_unchanged<S: TestBackend>() {
    let f = Fixture::<S>::new(2);
    let old = f.store.key(&test_account(0)).unwrap().unwrap();
    let replacement = NewKey {
        format: KeyFormat::Envelope,
        kms_key_id: "arn:aws:kms:us-east-1:111122223333:key/next".into(),
        kms_ciphertext: vec![9; 40],
        sealed_seed: Some(vec![7; 60]),
        pending_for: None,
        ..channel(0)
    };
    // Someone else changed the record first: nothing is swapped.
    assert!(matches!(
        f.store
            .replace_key_seal(&replacement, b"another ciphertext", &[]),
        Err(StoreError::InvalidKey(_))
    ));
    assert_eq!(f.store.key(&test_account(0)).unwrap().unwrap(), old);
    f.store
        .replace_key_seal(&replacement, &old.kms_ciphertext, &[])
        .unwrap();
    let new = f.store.key(&test_account(0)).unwrap().unwrap();
    assert_eq!(
        (
            new.format,
            new.kms_key_id.as_str(),
            &new.kms_ciphertext,
            &new.sealed_seed
        ),
        (
            KeyFormat::Envelope,
            replacement.kms_key_id.as_str(),
            &replacement.kms_ciphertext,
            &replacement.sealed_seed
        )
    );
    assert_eq!((new.role, new.state), (old.role, old.state));
    assert_eq!(
        f.store.summary(false).unwrap().total,
        2,
        "still in the pool"
    );
    // A retired key is never given a new seal.
    f.store
        .set_key_state(&test_account(1), KeyState::Retired, &[])
        .unwrap();
    let retired = f.store.key(&test_account(1)).unwrap().unwrap();
    let replacement = NewKey {
        kms_ciphertext: vec![8; 40],
        sealed_seed: Some(vec![7; 60]),
        format: KeyFormat::Envelope,
        ..channel(1)
    };
    assert!(
        f.store
            .replace_key_seal(&replacement, &retired.kms_ciphertext, &[])
            .is_err()
    );
}

fn empty_pool_and_exhausted_pool_are_different_errors<S: TestBackend>() {
    let empty = Fixture::<S>::new(0);
    let error = empty.store.acquire(None).unwrap_err();
    assert!(matches!(error, StoreError::NoChannelAccountsConfigured));
    assert_eq!(
        error.to_wire().code,
        common::wire::ErrorCode::NoChannelAccountsConfigured
    );

    let f = Fixture::<S>::new(2);
    f.store.acquire(None).unwrap();
    f.store.acquire(None).unwrap();
    let error = f.store.acquire(None).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::NoIdleChannelAccount {
                total: 2,
                next_free_in_ms: 30_000
            }
        ),
        "{error}"
    );
    assert_eq!(
        error.to_wire().code,
        common::wire::ErrorCode::NoIdleChannelAccount
    );
    assert!(
        error
            .to_string()
            .contains("add channel accounts or lower concurrency")
    );
}

fn lock_durations_default_and_cap<S: TestBackend>() {
    let f = Fixture::<S>::new(3);
    let now = f.time.load(Ordering::SeqCst);
    assert_eq!(f.store.acquire(None).unwrap().locked_until_ms, now + 30_000);
    assert_eq!(
        f.store
            .acquire(Some(Duration::from_mins(5)))
            .unwrap()
            .locked_until_ms,
        now + 300_000
    );
    assert!(matches!(
        f.store.acquire(Some(Duration::from_secs(301))),
        Err(StoreError::InvalidLockDuration {
            requested_ms: 301_000,
            max_ms: 300_000
        })
    ));
    assert!(matches!(
        f.store.acquire(Some(Duration::ZERO)),
        Err(StoreError::InvalidLockDuration { .. })
    ));
}

fn expired_locks_are_reusable_and_stale_tokens_cannot_release<S: TestBackend>() {
    let f = Fixture::<S>::new(1);
    let first = f.store.acquire(None).unwrap();
    assert!(f.store.acquire(None).is_err());
    let summary = f.store.summary(false).unwrap();
    assert_eq!((summary.locked, summary.idle, summary.expired), (1, 0, 0));

    f.advance(Duration::from_secs(31));
    let summary = f.store.summary(true).unwrap();
    assert_eq!((summary.locked, summary.idle, summary.expired), (0, 0, 1));
    assert_eq!(summary.accounts.unwrap()[0].status, "expired");

    let second = f.store.acquire(None).unwrap();
    assert_eq!(second.account, first.account);
    assert_ne!(second.lock_token, first.lock_token);
    // The first holder's token no longer releases the account.
    assert!(matches!(
        f.store.release(&first.account, &first.lock_token),
        Err(StoreError::LockTokenMismatch { .. })
    ));
    assert!(
        f.store.acquire(None).is_err(),
        "still locked by the second holder"
    );
    f.store
        .release(&second.account, &second.lock_token)
        .unwrap();
    // Released once; the same token cannot release again.
    assert!(matches!(
        f.store.release(&second.account, &second.lock_token),
        Err(StoreError::LockTokenMismatch { .. })
    ));
    assert!(matches!(
        f.store.release(&test_account(77), "whatever"),
        Err(StoreError::UnknownChannelAccount(_))
    ));
    let summary = f.store.summary(false).unwrap();
    assert_eq!((summary.locked, summary.idle, summary.expired), (0, 1, 0));
    f.store.acquire(None).unwrap();
}

fn signing_extends_the_lock_to_max_time_and_unlock_matches_the_recorded_hash<S: TestBackend>() {
    let f = Fixture::<S>::new(2);
    let lease = f.store.acquire(None).unwrap();
    let now_s = (f.time.load(Ordering::SeqCst) / 1000) as u64;
    let max_time = now_s + 200;
    // A fee-bump's channel records the inner transaction's hash.
    let inner_hash = "AB".repeat(32);
    let until = f
        .store
        .record_signed(&lease.account, &inner_hash, Some(max_time))
        .unwrap();
    assert_eq!(until, (max_time as i64) * 1000 + 30_000);

    // Past the 30 s acquire lock, the account is still held: the transaction can land.
    f.advance(Duration::from_secs(100));
    let other = f.store.acquire(None).unwrap();
    assert_ne!(other.account, lease.account);
    assert!(matches!(
        f.store.acquire(None),
        Err(StoreError::NoIdleChannelAccount { .. })
    ));
    let row = f
        .store
        .summary(true)
        .unwrap()
        .accounts
        .unwrap()
        .into_iter()
        .find(|r| r.account == lease.account)
        .unwrap();
    assert_eq!(
        row.tx_hash.as_deref(),
        Some(inner_hash.to_ascii_lowercase().as_str())
    );

    // A shorter maxTime never shortens a lock.
    let again = f
        .store
        .record_signed(&lease.account, &inner_hash, Some(now_s))
        .unwrap();
    assert_eq!(again, until);

    let outcome = f
        .store
        .unlock_by_tx_hashes(&[inner_hash.clone(), "cd".repeat(32)])
        .unwrap();
    assert_eq!(outcome.unlocked.len(), 1);
    assert_eq!(outcome.unlocked[0].account, lease.account);
    assert_eq!(outcome.unmatched, vec!["cd".repeat(32)]);
    assert_eq!(f.store.acquire(None).unwrap().account, lease.account);
    assert!(matches!(
        f.store.record_signed(&test_account(99), &inner_hash, None),
        Err(StoreError::UnknownChannelAccount(_))
    ));
}

fn picks_are_spread_over_the_idle_accounts<S: TestBackend>() {
    let f = Fixture::<S>::new(50);
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let lease = f.store.acquire(None).unwrap();
        seen.insert(lease.account.clone());
        f.store.release(&lease.account, &lease.lock_token).unwrap();
    }
    // Released accounts go to the back of the queue, so the whole pool is used.
    assert_eq!(seen.len(), 50);
}

/// `threads` threads spread over `hosts` (stores on one database) acquire, hold and
/// release test accounts 0..`accounts` until each has done `rounds`, asserting that no
/// account is ever held twice. Returns how often one met an exhausted pool.
pub fn acquire_concurrently<S: ChannelLocks + Clone + 'static>(
    hosts: &[S],
    accounts: u32,
    threads: usize,
    rounds: usize,
) -> u64 {
    let held: Arc<Vec<AtomicBool>> =
        Arc::new((0..accounts).map(|_| AtomicBool::new(false)).collect());
    let index_of: Arc<std::collections::HashMap<String, usize>> = Arc::new(
        (0..accounts)
            .map(|i| (test_account(i), i as usize))
            .collect(),
    );
    let barrier = Arc::new(Barrier::new(threads));
    let threads: Vec<_> = (0..threads)
        .map(|thread| {
            let store = hosts[thread % hosts.len()].clone();
            let (held, index_of, barrier) = (held.clone(), index_of.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut done = 0;
                let mut exhausted = 0u64;
                while done < rounds {
                    match store.acquire(None) {
                        Ok(lease) => {
                            let slot = &held[index_of[&lease.account]];
                            assert!(
                                !slot.swap(true, Ordering::SeqCst),
                                "{} handed out twice",
                                lease.account
                            );
                            std::thread::yield_now();
                            slot.store(false, Ordering::SeqCst);
                            store.release(&lease.account, &lease.lock_token).unwrap();
                            done += 1;
                        }
                        Err(StoreError::NoIdleChannelAccount { .. }) => {
                            exhausted += 1;
                            std::thread::yield_now();
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                exhausted
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

fn sixty_four_concurrent_acquirers_never_share_an_account<S: TestBackend>() {
    const ACCOUNTS: u32 = 50;
    let f = Fixture::<S>::new(ACCOUNTS);
    let exhausted = acquire_concurrently(std::slice::from_ref(&f.store), ACCOUNTS, 64, 60);
    let summary = f.store.summary(false).unwrap();
    assert_eq!(summary.locked, 0);
    assert_eq!(summary.idle, u64::from(ACCOUNTS));
    eprintln!(
        "{} acquisitions, {exhausted} met an exhausted pool",
        64 * 60
    );
}

fn the_audit_log_is_append_only<S: TestBackend>() {
    let f = Fixture::<S>::new(0);
    let entry = AuditEntry {
        caller_uid: Some(1000),
        public_key: Some(test_account(1)),
        tx_hash: Some("ab".repeat(32)),
        kind: "sign".into(),
        outcome: "ok".into(),
        detail: None,
    };
    f.store.append_audit(&entry).unwrap();
    f.store.append_audit(&entry).unwrap();
    let rows = f.store.recent_audit(10).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].entry, entry);
    let update = f
        .store
        .execute_raw("UPDATE audit_log SET outcome = 'forged'");
    assert!(update.unwrap_err().contains("append-only"));
    let delete = f.store.execute_raw("DELETE FROM audit_log");
    assert!(delete.unwrap_err().contains("append-only"));
    assert_eq!(f.store.recent_audit(10).unwrap().len(), 2);
}

/// Caller `i`'s signature by channel `account`, as the sign path records it: one audit
/// row of each of `kinds` and the signed transaction (hash `i`) extending the lock.
fn signed_by_channel(i: u32, account: &str, kinds: &[&str]) -> (Vec<AuditEntry>, SignedChannelTx) {
    let rows = kinds
        .iter()
        .map(|kind| AuditEntry {
            caller_uid: Some(i),
            public_key: Some(account.to_string()),
            tx_hash: Some(format!("{i:064x}")),
            kind: (*kind).into(),
            outcome: "ok".into(),
            detail: None,
        })
        .collect();
    let signed = SignedChannelTx {
        account: account.to_string(),
        tx_hash: format!("{i:064x}"),
        max_time_unix_s: Some(1_700_000_100),
    };
    (rows, signed)
}

/// Writes from many threads land in shared group commits, each answered with its own
/// result: a refused release among them fails alone, and every answered write's rows
/// are there.
fn group_commit_answers_each_write_with_its_own_result<S: TestBackend>() {
    const THREADS: u32 = 32;
    let f = Fixture::<S>::new(THREADS);
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let store = f.store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let lease = store.acquire(None).unwrap();
                let wrong = store.release(&lease.account, "not-the-token");
                assert!(matches!(wrong, Err(StoreError::LockTokenMismatch { .. })));
                let (rows, signed) = signed_by_channel(i, &lease.account, &["sign"]);
                store.record_outcome(&rows, Some(&signed)).unwrap();
                lease.account
            })
        })
        .collect();
    let accounts: HashSet<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        accounts.len(),
        THREADS as usize,
        "an account was leased twice"
    );
    assert_eq!(f.store.recent_audit(1000).unwrap().len(), THREADS as usize);
    let summary = f.store.summary(true).unwrap();
    assert_eq!(summary.locked, u64::from(THREADS));
    let hashes: Vec<String> = (0..THREADS).map(|i| format!("{i:064x}")).collect();
    let unlocked = f.store.unlock_by_tx_hashes(&hashes).unwrap();
    assert_eq!(unlocked.unlocked.len(), THREADS as usize);
}

/// A signing outcome whose second audit row the database refuses fails alone, among
/// concurrent writes sharing its group commits: its first row and its lock extension are
/// undone, every other outcome is committed in full.
fn a_write_failing_midway_leaves_nothing_and_the_others_commit<S: TestBackend>() {
    const THREADS: u32 = 16;
    let f = Fixture::<S>::new(THREADS);
    f.store.refuse_audit_kind("poison");
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let poisoned = |i: u32| i.is_multiple_of(4);
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let store = f.store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let lease = store.acquire(None).unwrap();
                let kinds: &[&str] = if poisoned(i) {
                    &["sign", "poison"]
                } else {
                    &["sign"]
                };
                let (rows, signed) = signed_by_channel(i, &lease.account, kinds);
                barrier.wait();
                store.record_outcome(&rows, Some(&signed))
            })
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let recorded = thread.join().unwrap();
        if poisoned(i as u32) {
            assert!(
                matches!(
                    recorded,
                    Err(StoreError::Sqlite(_) | StoreError::Postgres(_))
                ),
                "{i}: {recorded:?}"
            );
        } else {
            recorded.unwrap();
        }
    }
    let audit = f.store.recent_audit(1000).unwrap();
    let mut audited: Vec<u32> = audit.iter().filter_map(|r| r.entry.caller_uid).collect();
    audited.sort_unstable();
    let expected: Vec<u32> = (0..THREADS).filter(|&i| !poisoned(i)).collect();
    assert_eq!(audited, expected, "a failed outcome left an audit row");
    let hashes: Vec<String> = (0..THREADS).map(|i| format!("{i:064x}")).collect();
    let unlocked = f.store.unlock_by_tx_hashes(&hashes).unwrap();
    assert_eq!(unlocked.unlocked.len(), expected.len());
    let unmatched: Vec<String> = (0..THREADS)
        .filter(|&i| poisoned(i))
        .map(|i| format!("{i:064x}"))
        .collect();
    assert_eq!(
        unlocked.unmatched, unmatched,
        "a failed outcome left its lock extension"
    );
}

/// Text from a request that PostgreSQL cannot store (a NUL) never reaches the database
/// as a failing write, which would also make the writer redo its batch: a release naming
/// it is refused for what it is, and an audit row stores it (PostgreSQL with U+FFFD).
/// A key looked up by it is simply not stored.
fn text_from_requests_never_fails_a_write_with_a_database_error<S: TestBackend>() {
    let f = Fixture::<S>::new(1);
    let cached = KeyCache::new(f.store.clone());
    for name in ["G\0", "\0", "not a key"] {
        assert!(matches!(f.store.key(name), Ok(None)), "{name:?}");
        assert!(matches!(cached.key(name), Ok(None)), "{name:?}");
    }
    let lease = f.store.acquire(None).unwrap();
    let refused = f.store.release("G\0", &lease.lock_token);
    assert!(
        matches!(refused, Err(StoreError::UnknownChannelAccount(_))),
        "{refused:?}"
    );
    let truncated = format!("{}\0", &lease.lock_token[1..]);
    for token in ["\0", truncated.as_str()] {
        let refused = f.store.release(&lease.account, token);
        assert!(
            matches!(refused, Err(StoreError::LockTokenMismatch { .. })),
            "{refused:?}"
        );
        let queued = f
            .store
            .submit_release(&lease.account, token)
            .blocking_recv()
            .unwrap();
        assert!(
            matches!(queued, Err(StoreError::LockTokenMismatch { .. })),
            "{queued:?}"
        );
    }
    f.store.release(&lease.account, &lease.lock_token).unwrap();

    let entry = AuditEntry {
        caller_uid: None,
        public_key: Some("G\0".into()),
        tx_hash: None,
        kind: "sign".into(),
        outcome: "refused".into(),
        detail: Some("before\0after".into()),
    };
    f.store.record_outcome(&[entry], None).unwrap();
    let row = &f.store.recent_audit(1).unwrap()[0];
    let detail = row.entry.detail.as_deref().unwrap();
    assert!(
        ["before\0after", "before\u{FFFD}after"].contains(&detail),
        "{detail:?}"
    );
}

/// The host's key cache: its own writes are seen at once; another process's within
/// the epoch check.
fn the_key_cache_sees_its_own_writes_at_once_and_others_within_the_epoch_check<S: TestBackend>() {
    let f = Fixture::<S>::new(2);
    let cached = KeyCache::new(f.store.clone());
    let (first, second) = (test_account(0), test_account(1));
    assert_eq!(cached.key(&first).unwrap().unwrap().state, KeyState::Active);
    assert_eq!(
        cached.key(&second).unwrap().unwrap().state,
        KeyState::Active
    );
    // Read once, the record answers from memory (the signing path's fast lookup).
    assert_eq!(
        cached.key_in_memory(&first).unwrap().state,
        KeyState::Active
    );
    cached
        .set_key_state(&first, KeyState::Retired, &[])
        .unwrap();
    assert!(
        cached.key_in_memory(&first).is_none(),
        "a write clears memory at once"
    );
    assert_eq!(
        cached.key(&first).unwrap().unwrap().state,
        KeyState::Retired
    );
    // Another writer on the same database: a second store, as another host would be.
    let other = f.store.reopen();
    other
        .set_key_state(&second, KeyState::Retired, &[])
        .unwrap();
    std::thread::sleep(crate::store::key_cache::EPOCH_CHECK + Duration::from_millis(50));
    assert!(
        cached.key_in_memory(&second).is_none(),
        "past the epoch check nothing answers from memory"
    );
    assert_eq!(
        cached.key(&second).unwrap().unwrap().state,
        KeyState::Retired
    );
    assert!(cached.key(&test_account(9)).unwrap().is_none());
}

/// A queued write's answer, waited for.
fn answer<T>(pending: crate::store::Pending<T>) -> Result<T, StoreError> {
    pending.blocking_recv().unwrap()
}

fn queued_writes_answer_as_blocking_ones_do_and_commit_before_answering<S: TestBackend>() {
    let f = Fixture::<S>::new(1);
    let lease = answer(f.store.submit_acquire(None)).unwrap().claim();
    assert!(matches!(
        answer(f.store.submit_acquire(None)),
        Err(StoreError::NoIdleChannelAccount { .. })
    ));
    assert!(matches!(
        answer(f.store.submit_acquire(Some(Duration::ZERO))),
        Err(StoreError::InvalidLockDuration { .. })
    ));
    assert!(matches!(
        answer(f.store.submit_release(&lease.account, "not-the-token")),
        Err(StoreError::LockTokenMismatch { .. })
    ));
    let row = AuditEntry {
        caller_uid: Some(7),
        public_key: Some(lease.account.clone()),
        tx_hash: Some("cd".repeat(32)),
        kind: "sign".into(),
        outcome: "ok".into(),
        detail: None,
    };
    let signed = SignedChannelTx {
        account: lease.account.clone(),
        tx_hash: "cd".repeat(32),
        max_time_unix_s: Some(1_700_000_100),
    };
    answer(
        f.store
            .submit_outcome(std::slice::from_ref(&row), Some(&signed)),
    )
    .unwrap();
    // Answered only once committed: another connection sees the row and the lock.
    let other = f.store.reopen();
    assert_eq!(other.recent_audit(1).unwrap()[0].entry, row);
    let pool = other.summary(true).unwrap();
    assert_eq!(
        pool.accounts.unwrap()[0].tx_hash.as_deref(),
        Some(&*"cd".repeat(32))
    );
    answer(f.store.submit_release(&lease.account, &lease.lock_token)).unwrap();
    assert_eq!(other.summary(false).unwrap().locked, 0);
}

/// A caller that stops awaiting its acquire (hung up, timed out) never learns the lock
/// token: the account is not left locked until the lock expires. However the writer
/// meets the acquire (before its caller left, or after), and also when the answer came
/// but was never claimed, the pool ends with nothing locked, and the one account is
/// acquired again at once.
fn an_acquire_whose_caller_left_holds_no_account<S: TestBackend>() {
    let f = Fixture::<S>::new(1);
    // An acquire met after its caller left is undone by a write queued after it.
    let until_nothing_is_locked = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while f.store.summary(false).unwrap().locked != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "an account stays locked for a caller who left"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    for _ in 0..20 {
        drop(f.store.submit_acquire(None));
        // Queued after it, so answered once the writer has met it.
        assert!(matches!(
            f.store.release(&test_account(0), "no-such-token"),
            Err(StoreError::LockTokenMismatch { .. })
        ));
        until_nothing_is_locked();
    }
    let unclaimed = answer(f.store.submit_acquire(None)).unwrap();
    assert_eq!(f.store.summary(false).unwrap().locked, 1);
    drop(unclaimed);
    until_nothing_is_locked();
    let lease = answer(f.store.submit_acquire(None)).unwrap().claim();
    f.store.release(&lease.account, &lease.lock_token).unwrap();
}
