//! `signer-host`: parse the command line, start logging and the runtime, run one
//! subcommand (see `commands/`).

use anyhow::Context;
use clap::Parser;
use host::commands::Command;

#[derive(Debug, Parser)]
#[command(name = "signer-host", version, about = "Stellar signer: the host side")]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, env = "SIGNER_LOG_FORMAT", default_value = "text")]
    log_format: String,

    /// Print the answers of the commands that call a running host as JSON (for
    /// scripts) instead of aligned `field  value` lines.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

// glibc malloc was about a tenth of the CPU under load (README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::logging::init(&cli.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(cli.command.run(cli.json))
}
