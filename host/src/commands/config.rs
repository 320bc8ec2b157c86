//! `signer-host config check`: validate a configuration and print the effective one.

use clap::Subcommand;

use super::serve::ConfigArgs;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration `serve` would run with (file, then SIGNER_HOST__*
    /// variables, then flags) and print it as TOML with secrets redacted.
    ///
    /// Example: `signer-host config check --config /etc/signer-host/config.toml --set
    /// api.max_connections=2048`
    Check(ConfigArgs),
}

pub fn run(command: &ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check(args) => {
            let config = args.effective_config()?;
            print!("{}", config.to_redacted_toml()?);
            Ok(())
        }
    }
}
