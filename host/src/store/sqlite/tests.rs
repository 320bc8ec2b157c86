//! SQLite-only checks; the behaviour every backend shares is in `store/tests.rs`.

use std::time::Duration;

use super::*;
use crate::store::tests::{Fixture, channel};
use crate::store::*;

#[test]
fn schema_versions_are_applied_once_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signer.db");
    let open = || SqliteStore::open(&path, LockLimits::default(), Duration::from_secs(1));
    open().unwrap();
    open().unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let error = open().unwrap_err();
    assert!(
        matches!(error, StoreError::SchemaTooNew { found, supported } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("newer than this signer-host supports")
    );
}

#[test]
fn acquire_picks_through_the_expiry_index_without_scanning_or_sorting_the_pool() {
    let f = Fixture::<SqliteStore>::new(1);
    let conn = f.store.pool.get().unwrap();
    let mut plan = conn
        .prepare(&format!(
            "EXPLAIN QUERY PLAN {}",
            super::channels::PICK_IDLE
        ))
        .unwrap();
    let details: Vec<String> = plan
        .query_map(rusqlite::params![5, 16], |row| row.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.contains("USING INDEX channel_locks_by_expiry")),
        "{details:?}"
    );
    // The pool is never scanned or sorted: only the few rows the index yields are
    // shuffled (the temporary tree comes after the scan of the subquery's rows).
    assert!(
        !details.iter().any(|d| d.starts_with("SCAN channel_locks")),
        "{details:?}"
    );
    let sorted_at = details.iter().position(|d| d.contains("TEMP B-TREE"));
    let subquery_at = details.iter().position(|d| d == "SCAN (subquery-1)");
    assert!(
        sorted_at.is_none_or(|sorted| subquery_at.is_some_and(|scan| scan < sorted)),
        "{details:?}"
    );
}

/// When the group cannot commit (here another process holds SQLite's write lock past
/// the busy timeout), every write in it fails and nothing is handed out or written.
#[test]
fn a_group_that_cannot_commit_fails_all_its_writes_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signer.db");
    let store = SqliteStore::open(&path, LockLimits::default(), Duration::from_millis(50)).unwrap();
    store.insert_keys(&[channel(1)]).unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let failed = store.acquire(None);
    assert!(
        matches!(&failed, Err(StoreError::Writer(message)) if message.contains("locked")),
        "{failed:?}"
    );
    let audit = AuditEntry {
        caller_uid: None,
        public_key: None,
        tx_hash: None,
        kind: "sign".into(),
        outcome: "ok".into(),
        detail: None,
    };
    assert!(store.record_outcome(&[audit], None).is_err());
    other.execute_batch("ROLLBACK").unwrap();
    assert!(store.recent_audit(10).unwrap().is_empty());
    assert_eq!(store.summary(false).unwrap().locked, 0);
    // The writer carries on once the lock is free.
    store.acquire(None).unwrap();
}

/// Every connection plans without looking at bound values, so a cached statement is
/// never re-prepared because a parameter changed (the channel lease was, on every
/// acquire, for more than half its cost): checked on the lease, run at three times.
#[test]
fn cached_statements_are_not_re_prepared_when_their_parameters_change() {
    use crate::store::hot_writes::HotSql;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signer.db");
    let store = SqliteStore::open(&path, LockLimits::default(), Duration::from_secs(5)).unwrap();
    store
        .insert_keys(&[channel(1), channel(2), channel(3)])
        .unwrap();
    let mut conn = super::pool::open(&path, Duration::from_secs(5)).unwrap();
    for (i, now) in [1_000_i64, 2_000, 3_000].into_iter().enumerate() {
        conn.lease(now, now + 10, format!("t{i}")).unwrap();
    }
    let reprepared = conn
        .prepare_cached(super::channels::PICK_IDLE)
        .unwrap()
        .get_status(rusqlite::StatementStatus::RePrepare);
    assert_eq!(reprepared, 0);
}
