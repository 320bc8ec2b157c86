//! One logging setup for both binaries: `SIGNER_LOG` filters (default `info`), output
//! on stderr as text or JSON lines.

/// A log format other than `text` or `json`; holds the one given.
#[derive(Debug, thiserror::Error)]
#[error("log format {0:?}: expected text or json")]
pub struct UnknownLogFormat(pub String);

/// Installs the global tracing subscriber: filter from `SIGNER_LOG` (default `info`),
/// output on stderr as `text` or `json` lines. Call it once per process.
pub fn init(format: &str) -> Result<(), UnknownLogFormat> {
    init_with_default(format, "info")
}

/// As [`init`], with `default_filter` when `SIGNER_LOG` is unset (a tool whose output
/// is its own table logs only warnings unless asked).
pub fn init_with_default(format: &str, default_filter: &str) -> Result<(), UnknownLogFormat> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIGNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colours only on a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => return Err(UnknownLogFormat(other.to_string())),
    }
    Ok(())
}
