//! Key records: public key, role, format and the KMS ciphertexts that only the enclave
//! can open.

use super::SqliteStore;
use crate::store::{
    AuditEntry, KeyFormat, KeyRecord, KeyRole, KeyState, KeyStore, NewKey, PendingFor,
    Provisioning, StoreError, names_an_account,
};
use rusqlite::{OptionalExtension, params};

const KEY_COLUMNS: &str = "public_key, role, format, kms_key_id, kms_ciphertext, sealed_seed, \
                           state, created_at_ms, updated_at_ms, provisioning_tx_hash, \
                           provisioning_max_time_s, pending_for, pending_reason";

fn read_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    let text_enum = |index: usize, value: String| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unexpected value {value:?}").into(),
        )
    };
    let role: String = row.get(1)?;
    let format: String = row.get(2)?;
    let state: String = row.get(6)?;
    Ok(KeyRecord {
        public_key: row.get(0)?,
        role: KeyRole::parse(&role).ok_or_else(|| text_enum(1, role.clone()))?,
        format: KeyFormat::parse(&format).ok_or_else(|| text_enum(2, format.clone()))?,
        kms_key_id: row.get(3)?,
        kms_ciphertext: row.get(4)?,
        sealed_seed: row.get(5)?,
        state: KeyState::parse(&state).ok_or_else(|| text_enum(6, state.clone()))?,
        created_at_ms: row.get(7)?,
        updated_at_ms: row.get(8)?,
        provisioning: match (
            row.get::<_, Option<String>>(9)?,
            row.get::<_, Option<i64>>(10)?,
        ) {
            (Some(tx_hash), Some(max_time)) => Some(Provisioning {
                tx_hash,
                max_time: u64::try_from(max_time).unwrap_or_default(),
            }),
            _ => None,
        },
        pending_for: match row.get::<_, Option<String>>(11)? {
            Some(text) => Some(PendingFor::parse(&text).ok_or_else(|| text_enum(11, text))?),
            None => None,
        },
        pending_reason: row.get(12)?,
    })
}

impl KeyStore for SqliteStore {
    /// Stores keys and their audit rows in one transaction, durably (fsync of the
    /// database and its directory) before returning: either all are stored or none.
    fn insert_keys_audited(&self, keys: &[NewKey], audit: &[AuditEntry]) -> Result<(), StoreError> {
        for key in keys {
            key.validate()?;
        }
        self.write_durably(|tx, now| {
            for key in keys {
                if key.role == KeyRole::Distribution && key.state == KeyState::Active {
                    // The unique index is the guarantee; this names the key in the way.
                    let active: Option<String> = tx
                        .query_row(
                            "SELECT public_key FROM keys \
                             WHERE role = 'distribution' AND state = 'active'",
                            [],
                            |row| row.get(0),
                        )
                        .optional()?;
                    if let Some(active) = active.filter(|active| *active != key.public_key) {
                        return Err(StoreError::DistributionExists {
                            active,
                            new: key.public_key.clone(),
                        });
                    }
                }
                let pending_for = key.stored_pending_for().map(PendingFor::as_str);
                let inserted = tx.execute(
                    "INSERT INTO keys (public_key, role, format, kms_key_id, kms_ciphertext, \
                     sealed_seed, state, created_at_ms, updated_at_ms, pending_for) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9) ON CONFLICT DO NOTHING",
                    params![
                        key.public_key,
                        key.role.as_str(),
                        key.format.as_str(),
                        key.kms_key_id,
                        key.kms_ciphertext,
                        key.sealed_seed,
                        key.state.as_str(),
                        now,
                        pending_for
                    ],
                )?;
                if inserted == 0 {
                    return Err(StoreError::KeyExists(key.public_key.clone()));
                }
                if key.role == KeyRole::Channel && key.state == KeyState::Active {
                    tx.execute(
                        "INSERT INTO channel_locks (public_key) VALUES (?1)",
                        params![key.public_key],
                    )?;
                }
            }
            for entry in audit {
                super::audit::insert_audit(tx, now, entry)?;
            }
            Ok(())
        })
    }

    fn record_provisioning(
        &self,
        accounts: &[String],
        provisioning: &Provisioning,
        audit: &[AuditEntry],
    ) -> Result<(), StoreError> {
        let max_time = i64::try_from(provisioning.max_time)
            .map_err(|_| StoreError::InvalidKey(format!("maxTime {}", provisioning.max_time)))?;
        // Durable: a re-run relies on it not to rebuild too early.
        self.write_durably(|tx, now| {
            for account in accounts {
                let updated = tx.execute(
                    "UPDATE keys SET provisioning_tx_hash = ?2, provisioning_max_time_s = ?3, \
                     updated_at_ms = ?4 \
                     WHERE public_key = ?1 AND role = 'channel' AND state = 'pending'",
                    params![account, provisioning.tx_hash, max_time, now],
                )?;
                if updated == 0 {
                    return Err(StoreError::InvalidKey(format!(
                        "{account} is not a pending channel key"
                    )));
                }
            }
            for entry in audit {
                super::audit::insert_audit(tx, now, entry)?;
            }
            Ok(())
        })
    }

    fn replace_key_seal(
        &self,
        replacement: &NewKey,
        expected_ciphertext: &[u8],
        audit: &[AuditEntry],
    ) -> Result<(), StoreError> {
        replacement.validate()?;
        self.write_durably(|tx, now| {
            let updated = tx.execute(
                "UPDATE keys SET format = ?2, kms_key_id = ?3, kms_ciphertext = ?4, \
                 sealed_seed = ?5, updated_at_ms = ?6 \
                 WHERE public_key = ?1 AND kms_ciphertext = ?7 AND state != 'retired'",
                params![
                    replacement.public_key,
                    replacement.format.as_str(),
                    replacement.kms_key_id,
                    replacement.kms_ciphertext,
                    replacement.sealed_seed,
                    now,
                    expected_ciphertext
                ],
            )?;
            if updated == 0 {
                return Err(StoreError::InvalidKey(format!(
                    "{} changed (or was retired) while it was rewrapped; run the rewrap again",
                    replacement.public_key
                )));
            }
            for entry in audit {
                super::audit::insert_audit(tx, now, entry)?;
            }
            Ok(())
        })
    }

    fn set_pending_reason(
        &self,
        public_key: &str,
        reason: &str,
        audit: &[AuditEntry],
    ) -> Result<(), StoreError> {
        self.write_durably(|tx, now| {
            let updated = tx.execute(
                "UPDATE keys SET pending_reason = ?2, updated_at_ms = ?3 \
                 WHERE public_key = ?1 AND state = 'pending'",
                params![public_key, reason, now],
            )?;
            if updated == 0 {
                return Err(StoreError::InvalidKey(format!(
                    "{public_key} is not a pending key"
                )));
            }
            for entry in audit {
                super::audit::insert_audit(tx, now, entry)?;
            }
            Ok(())
        })
    }

    /// Moves a key to another state; channel accounts join the pool when they become
    /// active and leave it when retired.
    fn set_key_state(
        &self,
        public_key: &str,
        state: KeyState,
        audit: &[AuditEntry],
    ) -> Result<(), StoreError> {
        self.write_durably(|tx, now| {
            if state == KeyState::Active {
                // The unique index is the guarantee; this names the key in the way.
                let active: Option<String> = tx
                    .query_row(
                        "SELECT public_key FROM keys WHERE role = 'distribution' \
                         AND state = 'active' AND public_key != ?1 \
                         AND EXISTS (SELECT 1 FROM keys WHERE public_key = ?1 \
                                     AND role = 'distribution')",
                        params![public_key],
                        |row| row.get(0),
                    )
                    .optional()?;
                if let Some(active) = active {
                    return Err(StoreError::DistributionExists {
                        active,
                        new: public_key.to_string(),
                    });
                }
            }
            let role: Option<String> = tx
                .query_row(
                    "UPDATE keys SET state = ?2, updated_at_ms = ?3, pending_for = NULL, \
                     pending_reason = NULL, provisioning_tx_hash = NULL, \
                     provisioning_max_time_s = NULL \
                     WHERE public_key = ?1 RETURNING role",
                    params![public_key, state.as_str(), now],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(role) = role else {
                return Err(StoreError::InvalidKey(format!("no key {public_key}")));
            };
            if role == KeyRole::Channel.as_str() {
                match state {
                    KeyState::Active => tx.execute(
                        "INSERT INTO channel_locks (public_key) VALUES (?1) ON CONFLICT DO NOTHING",
                        params![public_key],
                    )?,
                    KeyState::Pending | KeyState::Retired => tx.execute(
                        "DELETE FROM channel_locks WHERE public_key = ?1",
                        params![public_key],
                    )?,
                };
            }
            for entry in audit {
                super::audit::insert_audit(tx, now, entry)?;
            }
            Ok(())
        })
    }

    fn key(&self, public_key: &str) -> Result<Option<KeyRecord>, StoreError> {
        if !names_an_account(public_key) {
            return Ok(None);
        }
        let conn = self.pool.get()?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE public_key = ?1");
        Ok(conn
            .prepare_cached(&sql)?
            .query_row(params![public_key], read_key)
            .optional()?)
    }

    fn key_epoch(&self) -> Result<i64, StoreError> {
        let conn = self.pool.get()?;
        Ok(conn
            .prepare_cached("SELECT value FROM key_epoch WHERE id = 1")?
            .query_row([], |row| row.get(0))?)
    }

    fn list_keys(&self, role: Option<KeyRole>) -> Result<Vec<KeyRecord>, StoreError> {
        let conn = self.pool.get()?;
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE ?1 IS NULL OR role = ?1 \
             ORDER BY role, created_at_ms, public_key"
        );
        let mut statement = conn.prepare_cached(&sql)?;
        let rows = statement.query_map(params![role.map(KeyRole::as_str)], read_key)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
