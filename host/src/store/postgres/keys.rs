//! Key records on PostgreSQL; the same rules as `sqlite/keys.rs`, durably committed.

use postgres::Row;

use super::{PostgresStore, Sql};
use crate::store::{
    AuditEntry, KeyFormat, KeyRecord, KeyRole, KeyState, KeyStore, NewKey, PendingFor,
    Provisioning, StoreError, names_an_account,
};

const SELECT_KEYS: &str = "SELECT public_key, role, format, kms_key_id, kms_ciphertext, \
     sealed_seed, state, created_at_ms, updated_at_ms, provisioning_tx_hash, \
     provisioning_max_time_s, pending_for, pending_reason FROM keys";

fn read_key(row: &Row) -> Result<KeyRecord, StoreError> {
    let unexpected = |column: &str, value: &str| {
        StoreError::Corrupt(format!("keys.{column} holds unexpected value {value:?}"))
    };
    let role: String = row.try_get(1)?;
    let format: String = row.try_get(2)?;
    let state: String = row.try_get(6)?;
    let pending_for: Option<String> = row.try_get(11)?;
    Ok(KeyRecord {
        public_key: row.try_get(0)?,
        role: KeyRole::parse(&role).ok_or_else(|| unexpected("role", &role))?,
        format: KeyFormat::parse(&format).ok_or_else(|| unexpected("format", &format))?,
        kms_key_id: row.try_get(3)?,
        kms_ciphertext: row.try_get(4)?,
        sealed_seed: row.try_get(5)?,
        state: KeyState::parse(&state).ok_or_else(|| unexpected("state", &state))?,
        created_at_ms: row.try_get(7)?,
        updated_at_ms: row.try_get(8)?,
        provisioning: match (
            row.try_get::<_, Option<String>>(9)?,
            row.try_get::<_, Option<i64>>(10)?,
        ) {
            (Some(tx_hash), Some(max_time)) => Some(Provisioning {
                tx_hash,
                max_time: u64::try_from(max_time).unwrap_or_default(),
            }),
            _ => None,
        },
        pending_for: match pending_for {
            Some(text) => {
                Some(PendingFor::parse(&text).ok_or_else(|| unexpected("pending_for", &text))?)
            }
            None => None,
        },
        pending_reason: row.try_get(12)?,
    })
}

/// The active distribution key other than `public_key`, if any: the unique index is
/// the guarantee, this names the key in the way.
fn other_active_distribution(
    tx: &mut impl Sql,
    public_key: &str,
) -> Result<Option<String>, StoreError> {
    Ok(tx
        .row(
            "SELECT public_key FROM keys WHERE role = 'distribution' AND state = 'active' \
             AND public_key <> $1",
            &[&public_key],
        )?
        .map(|row| row.get(0)))
}

fn insert_audit_rows(tx: &mut impl Sql, now: i64, audit: &[AuditEntry]) -> Result<(), StoreError> {
    for entry in audit {
        super::audit::insert_audit(tx, now, entry)?;
    }
    Ok(())
}

impl KeyStore for PostgresStore {
    fn insert_keys_audited(&self, keys: &[NewKey], audit: &[AuditEntry]) -> Result<(), StoreError> {
        for key in keys {
            key.validate()?;
        }
        self.write_durably(|tx, now| {
            for key in keys {
                if key.role == KeyRole::Distribution
                    && key.state == KeyState::Active
                    && let Some(active) = other_active_distribution(tx, &key.public_key)?
                {
                    return Err(StoreError::DistributionExists {
                        active,
                        new: key.public_key.clone(),
                    });
                }
                let pending_for = key.stored_pending_for().map(PendingFor::as_str);
                let inserted = tx.execute(
                    "INSERT INTO keys (public_key, role, format, kms_key_id, kms_ciphertext, \
                     sealed_seed, state, created_at_ms, updated_at_ms, pending_for) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) ON CONFLICT (public_key) DO NOTHING",
                    &[
                        &key.public_key,
                        &key.role.as_str(),
                        &key.format.as_str(),
                        &key.kms_key_id,
                        &key.kms_ciphertext,
                        &key.sealed_seed,
                        &key.state.as_str(),
                        &now,
                        &pending_for,
                    ],
                )?;
                if inserted == 0 {
                    return Err(StoreError::KeyExists(key.public_key.clone()));
                }
                if key.role == KeyRole::Channel && key.state == KeyState::Active {
                    tx.execute(
                        "INSERT INTO channel_locks (public_key) VALUES ($1)",
                        &[&key.public_key],
                    )?;
                }
            }
            insert_audit_rows(tx, now, audit)
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
        self.write_durably(|tx, now| {
            for account in accounts {
                let updated = tx.execute(
                    "UPDATE keys SET provisioning_tx_hash = $2, provisioning_max_time_s = $3, \
                     updated_at_ms = $4 \
                     WHERE public_key = $1 AND role = 'channel' AND state = 'pending'",
                    &[account, &provisioning.tx_hash, &max_time, &now],
                )?;
                if updated == 0 {
                    return Err(StoreError::InvalidKey(format!(
                        "{account} is not a pending channel key"
                    )));
                }
            }
            insert_audit_rows(tx, now, audit)
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
                "UPDATE keys SET format = $2, kms_key_id = $3, kms_ciphertext = $4, \
                 sealed_seed = $5, updated_at_ms = $6 \
                 WHERE public_key = $1 AND kms_ciphertext = $7 AND state <> 'retired'",
                &[
                    &replacement.public_key,
                    &replacement.format.as_str(),
                    &replacement.kms_key_id,
                    &replacement.kms_ciphertext,
                    &replacement.sealed_seed,
                    &now,
                    &expected_ciphertext,
                ],
            )?;
            if updated == 0 {
                return Err(StoreError::InvalidKey(format!(
                    "{} changed (or was retired) while it was rewrapped; run the rewrap again",
                    replacement.public_key
                )));
            }
            insert_audit_rows(tx, now, audit)
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
                "UPDATE keys SET pending_reason = $2, updated_at_ms = $3 \
                 WHERE public_key = $1 AND state = 'pending'",
                &[&public_key, &reason, &now],
            )?;
            if updated == 0 {
                return Err(StoreError::InvalidKey(format!(
                    "{public_key} is not a pending key"
                )));
            }
            insert_audit_rows(tx, now, audit)
        })
    }

    fn set_key_state(
        &self,
        public_key: &str,
        state: KeyState,
        audit: &[AuditEntry],
    ) -> Result<(), StoreError> {
        self.write_durably(|tx, now| {
            if state == KeyState::Active
                && let Some(active) = tx
                    .row(
                        "SELECT public_key FROM keys WHERE role = 'distribution' \
                         AND state = 'active' AND public_key <> $1 \
                         AND EXISTS (SELECT 1 FROM keys WHERE public_key = $1 \
                                     AND role = 'distribution')",
                        &[&public_key],
                    )?
                    .map(|row| row.get::<_, String>(0))
            {
                return Err(StoreError::DistributionExists {
                    active,
                    new: public_key.to_string(),
                });
            }
            let role: Option<String> = tx
                .row(
                    "UPDATE keys SET state = $2, updated_at_ms = $3, pending_for = NULL, \
                     pending_reason = NULL, provisioning_tx_hash = NULL, \
                     provisioning_max_time_s = NULL \
                     WHERE public_key = $1 RETURNING role",
                    &[&public_key, &state.as_str(), &now],
                )?
                .map(|row| row.get(0));
            let Some(role) = role else {
                return Err(StoreError::InvalidKey(format!("no key {public_key}")));
            };
            if role == KeyRole::Channel.as_str() {
                match state {
                    KeyState::Active => tx.execute(
                        "INSERT INTO channel_locks (public_key) VALUES ($1) ON CONFLICT (public_key) DO NOTHING",
                        &[&public_key],
                    )?,
                    KeyState::Pending | KeyState::Retired => tx.execute(
                        "DELETE FROM channel_locks WHERE public_key = $1",
                        &[&public_key],
                    )?,
                };
            }
            insert_audit_rows(tx, now, audit)
        })
    }

    fn key(&self, public_key: &str) -> Result<Option<KeyRecord>, StoreError> {
        if !names_an_account(public_key) {
            return Ok(None);
        }
        let mut client = self.client()?;
        let sql = format!("{SELECT_KEYS} WHERE public_key = $1");
        client
            .query_opt(sql.as_str(), &[&public_key])?
            .as_ref()
            .map(read_key)
            .transpose()
    }

    fn key_epoch(&self) -> Result<i64, StoreError> {
        let mut client = self.client()?;
        Ok(client
            .query_one("SELECT value FROM key_epoch WHERE id = 1", &[])?
            .try_get(0)?)
    }

    fn list_keys(&self, role: Option<KeyRole>) -> Result<Vec<KeyRecord>, StoreError> {
        let mut client = self.client()?;
        let sql = format!(
            "{SELECT_KEYS} WHERE $1::text IS NULL OR role = $1 \
             ORDER BY role, created_at_ms, public_key COLLATE \"C\""
        );
        client
            .query(sql.as_str(), &[&role.map(KeyRole::as_str)])?
            .iter()
            .map(read_key)
            .collect()
    }
}
