//! The production binary's command line: no development tooling ships in it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_signer-host"))
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn help_lists_the_production_subcommands_and_no_development_ones() {
    let text = help(&["--help"]);
    for wanted in [
        "serve",
        "render-key-policy",
        "render-iam-policy",
        "keys",
        "channels",
    ] {
        assert!(text.contains(wanted), "{wanted} missing from:\n{text}");
    }
    let subcommands: Vec<&str> = text
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for unwanted in ["dev", "up", "bench", "render-policy"] {
        assert!(
            !subcommands.contains(&unwanted),
            "{unwanted} is in signer-host's subcommands: {subcommands:?}"
        );
    }
}

#[test]
fn the_old_render_policy_name_is_gone() {
    let output = Command::new(env!("CARGO_BIN_EXE_signer-host"))
        .args(["render-policy", "--help"])
        .output()
        .unwrap();
    assert!(!output.status.success());
}
