//! The append-only audit log: one row per signature (and per key registration). The
//! table's triggers refuse updates and deletes.

use super::SqliteStore;
use crate::store::{AuditEntry, AuditRow, StoreError};
use rusqlite::params;

/// One audit row, on `conn` (a transaction, when the row must commit with other writes).
pub(super) fn insert_audit(
    conn: &rusqlite::Connection,
    now_ms: i64,
    entry: &AuditEntry,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit_log (at_ms, caller_uid, public_key, tx_hash, kind, outcome, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        now_ms,
        entry.caller_uid,
        entry.public_key,
        entry.tx_hash,
        entry.kind,
        entry.outcome,
        entry.detail
    ])?;
    Ok(())
}

impl SqliteStore {
    /// The newest `limit` entries, newest first.
    pub(super) fn audit_rows(&self, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let conn = self.pool.get()?;
        let mut statement = conn.prepare(
            "SELECT id, at_ms, caller_uid, public_key, tx_hash, kind, outcome, detail \
             FROM audit_log ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = statement.query_map(params![limit], |row| {
            Ok(AuditRow {
                id: row.get(0)?,
                at_ms: row.get(1)?,
                entry: AuditEntry {
                    caller_uid: row.get(2)?,
                    public_key: row.get(3)?,
                    tx_hash: row.get(4)?,
                    kind: row.get(5)?,
                    outcome: row.get(6)?,
                    detail: row.get(7)?,
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
