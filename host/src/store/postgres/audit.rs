//! The append-only audit log on PostgreSQL (triggers refuse updates, deletes and
//! truncation), written by the group-commit writer with the signing outcome.

use std::borrow::Cow;

use super::{PostgresStore, Sql, uid_column};
use crate::store::{AuditEntry, AuditRow, StoreError};

/// `text` as PostgreSQL can store it: it refuses NUL in text, and an audit row must not
/// fail (and with it a signature, and its batch's first run) over a string that came in a
/// request. Each NUL becomes U+FFFD.
fn storable(text: Option<&str>) -> Option<Cow<'_, str>> {
    text.map(|text| {
        if text.contains('\0') {
            Cow::Owned(text.replace('\0', "\u{FFFD}"))
        } else {
            Cow::Borrowed(text)
        }
    })
}

/// One audit row, on the writer's session or a durable write's transaction.
pub(super) fn insert_audit(
    tx: &mut impl Sql,
    now_ms: i64,
    entry: &AuditEntry,
) -> Result<(), StoreError> {
    let [public_key, tx_hash, kind, outcome, detail] = [
        entry.public_key.as_deref(),
        entry.tx_hash.as_deref(),
        Some(entry.kind.as_str()),
        Some(entry.outcome.as_str()),
        entry.detail.as_deref(),
    ]
    .map(storable);
    tx.execute(
        "INSERT INTO audit_log (at_ms, caller_uid, public_key, tx_hash, kind, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &now_ms,
            &uid_column(entry.caller_uid),
            &public_key,
            &tx_hash,
            &kind,
            &outcome,
            &detail,
        ],
    )?;
    Ok(())
}

impl PostgresStore {
    pub(super) fn audit_rows(&self, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let mut client = self.client()?;
        let rows = client.query(
            "SELECT id, at_ms, caller_uid, public_key, tx_hash, kind, outcome, detail \
             FROM audit_log ORDER BY id DESC LIMIT $1",
            &[&i64::from(limit)],
        )?;
        rows.iter()
            .map(|row| {
                let caller_uid: Option<i64> = row.try_get(2)?;
                Ok(AuditRow {
                    id: row.try_get(0)?,
                    at_ms: row.try_get(1)?,
                    entry: AuditEntry {
                        caller_uid: caller_uid.and_then(|uid| u32::try_from(uid).ok()),
                        public_key: row.try_get(3)?,
                        tx_hash: row.try_get(4)?,
                        kind: row.try_get(5)?,
                        outcome: row.try_get(6)?,
                        detail: row.try_get(7)?,
                    },
                })
            })
            .collect()
    }
}
