//! `cargo run -p signer-fuzz --example seeds -- DIR`: writes each fuzz target's seed
//! corpus ([`signer_fuzz::seeds::corpora`]) into `DIR/<target>/`.

use std::path::PathBuf;

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args_os().nth(1).context("usage: seeds DIR")?);
    for (target, inputs) in signer_fuzz::seeds::corpora() {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir)
            .with_context(|| format!("creating {}", target_dir.display()))?;
        for (index, input) in inputs.iter().enumerate() {
            let path = target_dir.join(format!("seed-{index:04}"));
            std::fs::write(&path, input).with_context(|| format!("writing {}", path.display()))?;
        }
        println!("{}: {} seeds", target_dir.display(), inputs.len());
    }
    Ok(())
}
