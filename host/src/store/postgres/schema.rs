//! The PostgreSQL schema: the same tables and the same numbered migrations as SQLite's
//! (`sqlite/schema.rs`), in PostgreSQL's dialect, applied by refinery and tracked in its
//! `refinery_schema_history` table. Append only: a released migration is never edited
//! (refinery refuses a database whose applied migrations' checksums differ).

use refinery::{Migration, Runner};

use super::connect::PostgresTarget;
use crate::store::StoreError;
use crate::store::sqlite::SCHEMA_VERSION;

/// (refinery name `V{n}__{what}`, SQL). Number n does what SQLite's migration n does.
const MIGRATIONS: [(&str, &str); 4] = [
    (
        "V1__keys_channel_locks_audit_log",
        r"
        CREATE TABLE keys (
            public_key      TEXT PRIMARY KEY
                            CHECK (length(public_key) = 56 AND substr(public_key, 1, 1) = 'G'),
            role            TEXT NOT NULL CHECK (role IN ('distribution', 'channel')),
            format          TEXT NOT NULL CHECK (format IN ('kms-direct', 'envelope')),
            kms_key_id      TEXT NOT NULL,
            kms_ciphertext  BYTEA NOT NULL CHECK (length(kms_ciphertext) > 0),
            sealed_seed     BYTEA,
            state           TEXT NOT NULL CHECK (state IN ('pending', 'active', 'retired')),
            created_at_ms   BIGINT NOT NULL,
            updated_at_ms   BIGINT NOT NULL,
            CHECK ((format = 'envelope') = (sealed_seed IS NOT NULL))
        );

        CREATE TABLE channel_locks (
            public_key      TEXT PRIMARY KEY REFERENCES keys (public_key),
            locked_at_ms    BIGINT,
            locked_until_ms BIGINT NOT NULL DEFAULT 0,
            lock_token      TEXT,
            tx_hash         TEXT
        );
        CREATE INDEX channel_locks_by_expiry ON channel_locks (locked_until_ms);
        CREATE INDEX channel_locks_by_tx_hash ON channel_locks (tx_hash)
            WHERE tx_hash IS NOT NULL;

        CREATE TABLE audit_log (
            id              BIGSERIAL PRIMARY KEY,
            at_ms           BIGINT NOT NULL,
            caller_uid      BIGINT,
            public_key      TEXT,
            tx_hash         TEXT,
            kind            TEXT NOT NULL,
            outcome         TEXT NOT NULL,
            detail          TEXT
        );
        CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
        CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
            FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
        CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
            FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
        ",
    ),
    (
        "V2__one_active_distribution_key",
        r"
        CREATE UNIQUE INDEX keys_one_active_distribution ON keys (role)
            WHERE role = 'distribution' AND state = 'active';
        ",
    ),
    (
        "V3__pending_keys",
        r"
        ALTER TABLE keys
            ADD COLUMN pending_for TEXT CHECK (pending_for IS NULL
                OR pending_for IN ('verification', 'creation', 'merge')),
            ADD COLUMN pending_reason TEXT,
            ADD COLUMN provisioning_tx_hash TEXT,
            ADD COLUMN provisioning_max_time_s BIGINT;
        ",
    ),
    (
        "V4__key_epoch",
        r"
        CREATE TABLE key_epoch (
            id    INTEGER PRIMARY KEY CHECK (id = 1),
            value BIGINT NOT NULL
        );
        INSERT INTO key_epoch (id, value) VALUES (1, 0);
        CREATE FUNCTION keys_epoch_bump() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN UPDATE key_epoch SET value = value + 1 WHERE id = 1; RETURN NULL; END $$;
        CREATE TRIGGER keys_epoch AFTER INSERT OR UPDATE OR DELETE ON keys
            FOR EACH STATEMENT EXECUTE FUNCTION keys_epoch_bump();
        ",
    ),
];

// Both backends are at the same schema version, migration for migration.
const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// Serialises migrations between hosts starting at once (an arbitrary constant,
/// "signer" in ASCII).
const MIGRATION_LOCK: i64 = 0x7369_676e_6572;

fn runner() -> Result<Runner, StoreError> {
    let migrations = MIGRATIONS
        .iter()
        .map(|(name, sql)| Migration::unapplied(name, sql))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Migration(e.to_string()))?;
    // All pending migrations in one transaction; a database with migrations this
    // binary does not know (a newer signer-host's) is refused, not "repaired".
    Ok(Runner::new(&migrations)
        .set_grouped(true)
        .set_abort_divergent(true)
        .set_abort_missing(true))
}

/// The newest applied migration's number, 0 on an empty database.
fn applied_version(client: &mut postgres::Client) -> Result<i64, StoreError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let version: Option<i32> = client
        .query_one("SELECT max(version) FROM refinery_schema_history", &[])?
        .get(0);
    Ok(i64::from(version.unwrap_or(0)))
}

fn refuse_newer(found: i64) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Applies pending migrations, one host at a time (a session advisory lock). A host
/// waits for another's migration however long it takes: the connection's
/// `lock_timeout` (the busy timeout, for row locks) is lifted for the wait.
pub fn migrate(client: &mut postgres::Client, target: &PostgresTarget) -> Result<(), StoreError> {
    client.batch_execute("SET lock_timeout = 0")?;
    let locked = client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]);
    let reset = client.batch_execute("RESET lock_timeout");
    locked?;
    reset?;
    let result = (|| {
        let found = applied_version(client)?;
        refuse_newer(found)?;
        let report = runner()?
            .run(client)
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        for migration in report.applied_migrations() {
            tracing::info!(
                version = migration.version(),
                name = migration.name(),
                database = %target.describe(),
                "applied database migration"
            );
        }
        Ok(())
    })();
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result.and(unlocked.map(|_| ()).map_err(StoreError::from))
}

/// Whether the schema is exactly this binary's.
pub fn check(client: &mut postgres::Client) -> Result<(), StoreError> {
    let found = applied_version(client)?;
    refuse_newer(found)?;
    if found < SCHEMA_VERSION {
        return Err(StoreError::SchemaNotMigrated {
            found,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(())
}
