//! What `/readyz` needs beyond "the enclave answers" and "the database is migrated", so
//! that ready means usable: the AWS credentials this host pushed are in the enclave it
//! is connected to now and unexpired, and, when configured, a canary (the enclave
//! decrypts one stored key; the only signature is over its domain-separated key-check
//! payload, never a Stellar payload) has passed within its period.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::signing::Signing;
use crate::store::{KeyRole, KeyState, SharedStore, blocking};

/// Credentials that expire within this are as good as gone.
const EXPIRY_MARGIN_SECS: u64 = 60;

/// One readiness check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub detail: String,
}

impl Verdict {
    fn ok(detail: impl Into<String>) -> Verdict {
        Verdict {
            ok: true,
            detail: detail.into(),
        }
    }

    fn failed(detail: impl Into<String>) -> Verdict {
        Verdict {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// The last credentials push: on which enclave connection, and until when they hold.
#[derive(Debug, Clone)]
struct Push {
    connection: u64,
    expires_unix: Option<u64>,
}

/// What the credentials pusher last achieved.
#[derive(Debug, Default)]
pub struct CredentialsStatus {
    last_push: Mutex<Option<Push>>,
    last_error: Mutex<Option<String>>,
}

impl CredentialsStatus {
    /// Credentials reached the enclave on connection number `connection`.
    pub fn pushed(&self, connection: u64, expires_unix: Option<u64>) {
        *crate::lock(&self.last_push) = Some(Push {
            connection,
            expires_unix,
        });
        *crate::lock(&self.last_error) = None;
    }

    /// Resolving or pushing failed.
    pub fn failed(&self, error: String) {
        *crate::lock(&self.last_error) = Some(error);
    }

    /// Whether the enclave on connection `current` holds credentials valid at `now_unix`.
    pub fn verdict(&self, current: u64, now_unix: u64) -> Verdict {
        let push = crate::lock(&self.last_push).clone();
        let error = crate::lock(&self.last_error).clone();
        let why = |what: &str| match &error {
            Some(e) => format!("{what}; last error: {e}"),
            None => what.to_string(),
        };
        match push {
            None => Verdict::failed(why("no credentials pushed to the enclave yet")),
            Some(push) if push.connection != current => Verdict::failed(why(
                "the enclave reconnected since the last push; pushing again",
            )),
            Some(Push {
                expires_unix: Some(expires),
                ..
            }) if expires <= now_unix + EXPIRY_MARGIN_SECS => Verdict::failed(why(&format!(
                "the pushed credentials expire at {expires} (now {now_unix})"
            ))),
            Some(Push { expires_unix, .. }) => Verdict::ok(match expires_unix {
                Some(expires) => format!("pushed, valid until {expires} (unix seconds)"),
                None => "pushed (static credentials: no expiry)".to_string(),
            }),
        }
    }
}

/// The canary's last run.
#[derive(Debug, Clone)]
struct CanaryRun {
    finished: Instant,
    outcome: Result<String, String>,
}

/// A periodic decryption of one stored key.
#[derive(Debug)]
pub struct Canary {
    period: Duration,
    /// How long a run may take (the enclave request timeout).
    run_limit: Duration,
    last: Mutex<Option<CanaryRun>>,
}

impl Canary {
    /// Passed, and recently enough: within its period (plus the time one run may take).
    pub fn verdict(&self) -> Verdict {
        let last = crate::lock(&self.last).clone();
        let limit = self.period + self.run_limit;
        match last {
            None => Verdict::failed("the canary has not run yet"),
            Some(run) if run.finished.elapsed() > limit => Verdict::failed(format!(
                "the canary's last run ended {} s ago, longer than its period allows ({} s)",
                run.finished.elapsed().as_secs(),
                limit.as_secs()
            )),
            Some(CanaryRun {
                outcome: Ok(key), ..
            }) => Verdict::ok(key),
            Some(CanaryRun {
                outcome: Err(e), ..
            }) => Verdict::failed(e),
        }
    }

    fn record(&self, outcome: Result<String, String>) {
        *crate::lock(&self.last) = Some(CanaryRun {
            finished: Instant::now(),
            outcome,
        });
    }
}

/// Starts the canary: every `period`, the enclave decrypts one active key (the
/// distribution key when there is one) and proves it with a key-check signature.
pub fn spawn_canary(
    period: Duration,
    run_limit: Duration,
    signing: Signing,
    store: SharedStore,
    shutdown: CancellationToken,
) -> Arc<Canary> {
    let canary = Arc::new(Canary {
        period,
        run_limit,
        last: Mutex::new(None),
    });
    let status = canary.clone();
    tokio::spawn(async move {
        loop {
            let outcome = run_canary(&signing, &store).await;
            match &outcome {
                // The pass itself is logged by `run_canary`, with the key it checked.
                Ok(detail) => debug!(%detail, "canary passed"),
                Err(e) => warn!(error = %e, "canary failed"),
            }
            status.record(outcome);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
        }
    });
    canary
}

async fn run_canary(signing: &Signing, store: &SharedStore) -> Result<String, String> {
    let store = store.clone();
    let keys = blocking(move || store.list_keys(None))
        .await
        .map_err(|e| format!("{}: {}", e.code, e.message))?;
    let Some(key) = keys
        .iter()
        .filter(|k| k.state == KeyState::Active)
        .find(|k| k.role == KeyRole::Distribution)
        .or_else(|| keys.iter().find(|k| k.state == KeyState::Active))
        .cloned()
    else {
        // A store still being provisioned: nothing is broken, there is nothing to sign
        // with yet (and key generation must be able to run on a host that is ready).
        return Ok("no active key yet (nothing to decrypt)".to_string());
    };
    let (public_key, role) = (key.public_key.clone(), key.role.as_str());
    signing
        .check_key(key)
        .await
        .map(|()| {
            // The key is logged, not shown: /readyz is open to every caller.
            info!(%public_key, "canary key checked");
            format!("the enclave decrypted and checked a stored {role} key")
        })
        .map_err(|e| format!("{}: {}", e.code, e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_must_be_pushed_on_this_connection_and_unexpired() {
        let status = CredentialsStatus::default();
        assert!(!status.verdict(1, 1_000).ok);
        status.failed("no instance role".into());
        let verdict = status.verdict(1, 1_000);
        assert!(!verdict.ok && verdict.detail.contains("no instance role"));
        status.pushed(1, Some(5_000));
        assert!(status.verdict(1, 1_000).ok);
        // The enclave restarted (a new connection) and lost them.
        assert!(!status.verdict(2, 1_000).ok);
        // About to expire.
        assert!(!status.verdict(1, 4_950).ok);
        status.pushed(2, None);
        assert!(status.verdict(2, 1_000_000).ok);
    }

    #[test]
    fn a_canary_passes_only_recently_and_successfully() {
        let canary = Canary {
            period: Duration::from_millis(20),
            run_limit: Duration::from_millis(20),
            last: Mutex::new(None),
        };
        assert!(!canary.verdict().ok);
        canary.record(Err("kms_access_denied: the key policy".into()));
        assert!(!canary.verdict().ok);
        canary.record(Ok("GABC".into()));
        assert!(canary.verdict().ok);
        std::thread::sleep(Duration::from_millis(60));
        assert!(!canary.verdict().ok, "stale");
    }
}
