//! `signer-dev`'s command line: `up` and `bench`, with the flags the old
//! old `signer-host dev` and `signer-host bench` had.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_signer-dev"))
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn up_and_bench_keep_their_flags() {
    let top = help(&["--help"]);
    assert!(top.contains("up") && top.contains("bench"), "{top}");
    let up = help(&["up", "--help"]);
    for flag in [
        "--dir",
        "--bin-dir",
        "--enclave-pcrs",
        "--no-host-policy-precheck",
        "--soroban-contract",
    ] {
        assert!(up.contains(flag), "{flag} missing from:\n{up}");
    }
    let bench = help(&["bench", "--help"]);
    for flag in [
        "--json",
        "--requests",
        "--clients",
        "--postgres",
        "--stack-log",
    ] {
        assert!(bench.contains(flag), "{flag} missing from:\n{bench}");
    }
}
