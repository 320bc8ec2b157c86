//! Versioned migrations, tracked in `PRAGMA user_version`. Append only: a released
//! migration is never edited.

use rusqlite::Connection;

use crate::store::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: keys, channel locks, audit log.
    r"
    CREATE TABLE keys (
        public_key      TEXT PRIMARY KEY
                        CHECK (length(public_key) = 56 AND substr(public_key, 1, 1) = 'G'),
        role            TEXT NOT NULL CHECK (role IN ('distribution', 'channel')),
        format          TEXT NOT NULL CHECK (format IN ('kms-direct', 'envelope')),
        kms_key_id      TEXT NOT NULL,
        -- kms-direct: the KMS CiphertextBlob of the secret;
        -- envelope: the KMS CiphertextBlob of the data key.
        kms_ciphertext  BLOB NOT NULL CHECK (length(kms_ciphertext) > 0),
        -- envelope only: nonce || AES-256-GCM(seed) || tag, AAD = public key.
        sealed_seed     BLOB,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'active', 'retired')),
        created_at_ms   INTEGER NOT NULL,
        updated_at_ms   INTEGER NOT NULL,
        CHECK ((format = 'envelope') = (sealed_seed IS NOT NULL))
    ) STRICT;

    -- One row per active channel account; the row is the lock.
    CREATE TABLE channel_locks (
        public_key      TEXT PRIMARY KEY REFERENCES keys (public_key),
        locked_at_ms    INTEGER,
        locked_until_ms INTEGER NOT NULL DEFAULT 0,
        lock_token      TEXT,
        -- Hash of the last transaction signed with this channel (the inner hash for a
        -- fee-bump): the success path unlocks by it.
        tx_hash         TEXT
    ) STRICT;
    CREATE INDEX channel_locks_by_expiry ON channel_locks (locked_until_ms);
    CREATE INDEX channel_locks_by_tx_hash ON channel_locks (tx_hash) WHERE tx_hash IS NOT NULL;

    CREATE TABLE audit_log (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms           INTEGER NOT NULL,
        caller_uid      INTEGER,
        public_key      TEXT,
        tx_hash         TEXT,
        kind            TEXT NOT NULL,
        outcome         TEXT NOT NULL,
        detail          TEXT
    ) STRICT;
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    ",
    // 2: at most one active distribution key, whichever route or host stores it.
    r"
    CREATE UNIQUE INDEX keys_one_active_distribution ON keys (role)
        WHERE role = 'distribution' AND state = 'active';
    ",
    // 3: what a pending key waits for (an imported key: the enclave's check; a channel:
    // its account's creation, or its merge into the distribution account on leaving the
    // pool), why it still waits, and the transaction it was last signed into, so a
    // re-run after a crash knows whether that may still land (docs/design.md §6).
    r"
    ALTER TABLE keys ADD COLUMN pending_for TEXT
        CHECK (pending_for IS NULL OR pending_for IN ('verification', 'creation', 'merge'));
    ALTER TABLE keys ADD COLUMN pending_reason TEXT;
    ALTER TABLE keys ADD COLUMN provisioning_tx_hash TEXT;
    ALTER TABLE keys ADD COLUMN provisioning_max_time_s INTEGER;
    ",
    // 4: a counter every change to `keys` moves, whoever makes it (another host, the
    // offline CLI), so a host's in-memory key cache can see that it is stale.
    r"
    CREATE TABLE key_epoch (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        value INTEGER NOT NULL
    ) STRICT;
    INSERT INTO key_epoch (id, value) VALUES (1, 0);
    CREATE TRIGGER keys_epoch_insert AFTER INSERT ON keys
        BEGIN UPDATE key_epoch SET value = value + 1 WHERE id = 1; END;
    CREATE TRIGGER keys_epoch_update AFTER UPDATE ON keys
        BEGIN UPDATE key_epoch SET value = value + 1 WHERE id = 1; END;
    CREATE TRIGGER keys_epoch_delete AFTER DELETE ON keys
        BEGIN UPDATE key_epoch SET value = value + 1 WHERE id = 1; END;
    ",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tracing::info!(version = index + 1, "applied database migration");
    }
    tx.commit()?;
    Ok(())
}
