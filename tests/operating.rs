//! Operating the host: caller allow-lists on the socket (SO_PEERCRED), the socket's
//! owner, group and mode, one log line per request, and the configuration's sources
//! (`config check`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use harness::{Proc, host_bin, output_text, start_enclave, wait_ready_at};
use host::api_client::request_once;
use hyper::{Method, StatusCode};
use serde_json::json;

/// A host on the enclave at `enclave_socket`, configured by `config` (TOML).
async fn host_with(dir: &Path, name: &str, enclave_socket: &Path, config: &str) -> Proc {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, config).unwrap();
    let proc = Proc::spawn(
        Command::new(host_bin())
            .args(["--log-format", "json", "serve"])
            .arg("--config")
            .arg(&file)
            .arg("--enclave")
            .arg(format!("unix://{}", enclave_socket.display()))
            .arg("--store")
            .arg(dir.join("signer.db")),
        dir.join(format!("{name}.log")),
    );
    wait_ready_at(&dir.join(format!("{name}.sock")), true, &proc).await;
    proc
}

async fn code_of(socket: &Path, method: Method, path: &str) -> (StatusCode, String) {
    let body = (method == Method::POST).then(|| json!({"public_key": harness::test_account(1)}));
    let (status, answer) = request_once(socket, method, path, body.as_ref())
        .await
        .unwrap();
    let code = answer["error"]["code"].as_str().unwrap_or("").to_string();
    (status, code)
}

#[tokio::test]
async fn callers_outside_a_groups_allow_list_are_refused_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let enclave_socket = dir.path().join("enclave.sock");
    let _enclave = start_enclave(dir.path(), &enclave_socket, 0);
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let other = uid + 4242;
    // This test's user may administer keys and read, but not sign.
    let socket = dir.path().join("allowed.sock");
    let host = host_with(
        dir.path(),
        "allowed",
        &enclave_socket,
        &format!(
            "[api]\nsocket = {socket:?}\nsocket_mode = \"0660\"\nsocket_group = \"{gid}\"\n\
             [api.callers]\nsigning = {{ uids = [{other}] }}\nkey_admin = {{ uids = [{uid}] }}\n"
        ),
    )
    .await;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);

    assert_eq!(
        code_of(&socket, Method::POST, "/v1/sign").await,
        (StatusCode::FORBIDDEN, "caller_not_allowed".to_string())
    );
    assert_eq!(
        code_of(&socket, Method::POST, "/v1/fee-bump").await,
        (StatusCode::FORBIDDEN, "caller_not_allowed".to_string())
    );
    // Reads are open (no list), key administration admits this uid: the request gets
    // past the check to its own answer (an unknown key).
    assert_eq!(
        code_of(&socket, Method::GET, "/v1/channels").await.0,
        StatusCode::OK
    );
    assert_eq!(
        code_of(&socket, Method::POST, "/v1/keys/retire").await,
        (StatusCode::NOT_FOUND, "unknown_key".to_string())
    );
    let lines = json_lines(&host.log_text());
    let refusal = lines
        .iter()
        .find(|l| l["fields"]["message"] == "caller not allowed")
        .expect("a refusal line");
    assert_eq!(refusal["fields"]["uid"], uid.to_string());
    assert_eq!(refusal["fields"]["group"], "signing");
    // One line per request, refused or not, with caller, route, status and duration.
    let request = |route: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == "request" && l["fields"]["route"] == route)
            .unwrap_or_else(|| panic!("no request line for {route}"))
            .clone()
    };
    let sign = request("/v1/sign");
    assert_eq!(sign["fields"]["status"], 403);
    assert_eq!(sign["fields"]["uid"], uid.to_string());
    assert!(sign["fields"]["duration_us"].is_u64(), "{sign}");
    assert_eq!(request("/v1/keys/retire")["fields"]["status"], 404);

    // The same user, now outside key administration and the read-only list (given by
    // group only, and not this one): refused there, signing open again.
    let socket = dir.path().join("refused.sock");
    let _host = host_with(
        dir.path(),
        "refused",
        &enclave_socket,
        &format!(
            "[api]\nsocket = {socket:?}\n[api.callers]\nkey_admin = {{ uids = [{other}] }}\n\
             read_only = {{ gids = [{}] }}\n",
            gid + 4242
        ),
    )
    .await;
    for route in [
        "/v1/keys/retire",
        "/v1/keys/generate",
        "/v1/channels/provision",
    ] {
        assert_eq!(
            code_of(&socket, Method::POST, route).await,
            (StatusCode::FORBIDDEN, "caller_not_allowed".to_string()),
            "{route}"
        );
    }
    assert_eq!(
        code_of(&socket, Method::GET, "/v1/keys").await,
        (StatusCode::FORBIDDEN, "caller_not_allowed".to_string())
    );
    // The liveness probe is never behind a list.
    assert_eq!(
        code_of(&socket, Method::GET, "/healthz").await.0,
        StatusCode::OK
    );
    assert_ne!(
        code_of(&socket, Method::POST, "/v1/sign").await.1,
        "caller_not_allowed"
    );
}

fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn config_check(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(host_bin())
        .args(["config", "check"])
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (output.status.success(), output_text(&output))
}

#[test]
fn config_check_prints_the_effective_configuration_flags_over_environment_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signer.toml");
    std::fs::write(
        &file,
        "[api]\nmax_connections = 10\nsocket = \"/file.sock\"\n[kms]\nregion = \"us-east-1\"\n\
         credentials = \"static\"\nstatic_access_key_id = \"AKIDCHECK\"\n\
         static_secret_access_key = \"wJalrXUtnFEMI-secret\"\n",
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();
    let (ok, shown) = config_check(
        &["--config", file_arg, "--set", "api.socket=/flag.sock"],
        &[
            ("SIGNER_HOST__API__SOCKET", "/env.sock"),
            ("SIGNER_HOST__API__MAX_CONNECTIONS", "20"),
        ],
    );
    assert!(ok, "{shown}");
    assert!(shown.contains("socket = \"/flag.sock\""), "{shown}");
    assert!(shown.contains("max_connections = 20"), "{shown}");
    assert!(shown.contains("AKIDCHECK"), "{shown}");
    assert!(!shown.contains("wJalrXUtnFEMI-secret"), "{shown}");
    assert!(shown.contains("[REDACTED]"), "{shown}");

    let (ok, shown) = config_check(
        &["--config", file_arg],
        &[("SIGNER_HOST__API__MAX_CONNECTIONS", "0")],
    );
    assert!(!ok);
    assert!(shown.contains("api.max_connections"), "{shown}");
    assert!(!shown.contains("wJalrXUtnFEMI-secret"), "{shown}");
}

/// The value of the sample `series` (name and labels, exactly as rendered) in `text`.
/// Every series the test reads counts something, so its value is a whole number.
fn sample(text: &str, series: &str) -> Option<i64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_signatures_refusals_kms_calls_and_the_pool() {
    use harness::stellar::{b64, op, transaction, user_payment};
    let dev = harness::Dev::start(&[]);
    let channel = dev.keys("channel").await.remove(0);
    let (status, lease) = dev
        .call(Method::POST, "/v1/channels/acquire", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{lease}");
    let sign = |envelope| {
        dev.call(
            Method::POST,
            "/v1/sign",
            Some(json!({"transaction": b64(&envelope), "signers": [channel]})),
        )
    };
    assert_eq!(
        sign(user_payment(&channel, &channel, 1)).await.0,
        StatusCode::OK
    );
    // A fee over the cap: refused by the policy (here the host's pre-check).
    let payment = user_payment(&channel, &channel, 1);
    let stellar_xdr::TransactionEnvelope::Tx(v1) = payment else {
        unreachable!()
    };
    let dear = transaction(
        &channel,
        50_000_000,
        vec![op(
            v1.tx.operations[0].source_account.clone(),
            v1.tx.operations[0].body.clone(),
        )],
    );
    let (status, refusal) = sign(dear).await;
    assert_eq!(refusal["error"]["code"], "policy_violation", "{status}");

    let response = host::api_client::get_text(&dev.socket(), "/metrics")
        .await
        .unwrap();
    assert_eq!(response.0, StatusCode::OK);
    assert!(
        response.1.starts_with("text/plain; version=0.0.4"),
        "{}",
        response.1
    );
    let text = response.2;
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
    assert_eq!(
        value("signer_signatures_total{role=\"channel\",kind=\"sign\",result=\"signed\"}"),
        1
    );
    assert_eq!(
        value("signer_signatures_total{role=\"channel\",kind=\"sign\",result=\"refused\"}"),
        1
    );
    assert_eq!(value("signer_policy_refusals_total{rule=\"fee_cap\"}"), 1);
    assert_eq!(
        value("signer_sign_duration_seconds_count{kind=\"sign\"}"),
        2
    );
    assert_eq!(
        value("signer_channel_acquisitions_total{result=\"acquired\"}"),
        1
    );
    // The acquired account, and the signed one (held until its maxTime): one or two.
    let locked = value("signer_channel_accounts{state=\"locked\"}");
    assert!((1..=2).contains(&locked), "{text}");
    assert_eq!(
        locked
            + value("signer_channel_accounts{state=\"idle\"}")
            + value("signer_channel_accounts{state=\"expired\"}"),
        8
    );
    // The enclave's own counters: the signature's decryption (and the dev stack's key
    // generation), its latency, the distribution account's untouched budget.
    assert!(value("signer_kms_requests_total{operation=\"Decrypt\",result=\"ok\"}") >= 1);
    assert!(value("signer_kms_duration_seconds_count{operation=\"Decrypt\",result=\"ok\"}") >= 1);
    assert_eq!(value("signer_fee_budget_remaining_stroops"), 1_000_000_000);
    assert_eq!(value("signer_enclave_up"), 1);
    assert!(value("signer_enclave_round_trip_seconds_count") >= 2);
    assert!(
        text.contains(&format!(
            "signer_build_info{{version=\"{}\",enclave_build=\"mock\",protocol=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            common::wire::messages::PROTOCOL_VERSION
        )),
        "{text}"
    );
    // Nothing in it names a key.
    assert!(!text.contains(&channel[..12]), "{text}");
    dev.stop();
}

/// The `/readyz` check named `name`: (ok, detail).
fn check(readyz: &serde_json::Value, name: &str) -> (bool, String) {
    let found = readyz["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {readyz}"));
    (
        found["ok"].as_bool().unwrap(),
        found["detail"].as_str().unwrap().to_string(),
    )
}

/// Polls `/readyz` until `want` holds of it, for at most `limit`.
async fn readyz_until(
    socket: &Path,
    limit: std::time::Duration,
    want: impl Fn(StatusCode, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let (status, body) = request_once(socket, Method::GET, "/readyz", None)
            .await
            .unwrap();
        if want(status, &body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz never got there; last {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn ready_means_credentials_pushed_schema_migrated_and_a_recent_canary() {
    let dev = harness::Dev::start(&["--host-set", "readiness.canary_period_secs=10"]);
    let socket = dev.socket();
    let distribution = dev.keys("distribution").await.remove(0);
    // The canary may have run before the keys existed: wait for one that decrypted.
    let ready = readyz_until(
        &socket,
        std::time::Duration::from_secs(15),
        |status, body| {
            status == StatusCode::OK && check(body, "canary").1.contains("distribution key")
        },
    )
    .await;
    // The key itself is in the host's log, not in /readyz (open to every caller).
    assert!(!ready.to_string().contains(&distribution), "{ready}");
    for name in ["store", "enclave", "credentials", "canary"] {
        assert!(check(&ready, name).0, "{ready}");
    }
    assert!(check(&ready, "credentials").1.contains("pushed"), "{ready}");

    // KMS refuses the enclave (its attestation looks stale to KMS): the next canary run
    // fails and the host is not ready, naming why; once KMS admits it again, ready.
    let stack: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.state().join("stack.json")).unwrap()).unwrap();
    let kms_url = stack["kms_url"].as_str().unwrap().to_string();
    let ca = dev.state().join("mock-kms-ca.pem");
    mock_kms::admin_client::set_faults(&kms_url, &ca, &json!({"clock_skew_s": 600}))
        .await
        .unwrap();
    let refused = readyz_until(&socket, std::time::Duration::from_secs(25), |status, _| {
        status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let (ok, detail) = check(&refused, "canary");
    assert!(!ok && detail.contains("kms_access_denied"), "{refused}");
    assert!(
        check(&refused, "enclave").0,
        "only the canary fails: {refused}"
    );
    mock_kms::admin_client::set_faults(&kms_url, &ca, &json!({"clock_skew_s": 0}))
        .await
        .unwrap();
    readyz_until(&socket, std::time::Duration::from_secs(25), |status, _| {
        status == StatusCode::OK
    })
    .await;
    dev.stop();
}

#[tokio::test]
async fn not_ready_without_credentials_in_the_enclave_or_with_an_unmigrated_schema() {
    let dir = tempfile::tempdir().unwrap();
    let enclave_socket = dir.path().join("enclave.sock");
    // A bare enclave (no KMS settings) refuses credentials: a host that must push them
    // is never ready, and says why.
    let _enclave = start_enclave(dir.path(), &enclave_socket, 0);
    let socket = dir.path().join("pushing.sock");
    let file = dir.path().join("pushing.toml");
    std::fs::write(
        &file,
        format!(
            "[api]\nsocket = {socket:?}\n[kms]\nregion = \"us-east-1\"\n\
             endpoint = \"https://127.0.0.1:9\"\ncredentials = \"static\"\n\
             static_access_key_id = \"AKID\"\nstatic_secret_access_key = \"s3cret\"\n\
             relay_listen = \"unix://{}\"\n",
            dir.path().join("relay.sock").display()
        ),
    )
    .unwrap();
    let host = Proc::spawn(
        Command::new(host_bin())
            .args(["serve", "--config"])
            .arg(&file)
            .arg("--enclave")
            .arg(format!("unix://{}", enclave_socket.display()))
            .arg("--store")
            .arg(dir.path().join("signer.db")),
        dir.path().join("pushing.log"),
    );
    let body = wait_ready_at(&socket, false, &host).await;
    let body = if check(&body, "credentials").1.contains("last error") {
        body
    } else {
        readyz_until(&socket, std::time::Duration::from_secs(10), |_, body| {
            check(body, "credentials").1.contains("last error")
        })
        .await
    };
    let (ok, detail) = check(&body, "credentials");
    assert!(!ok, "{body}");
    assert!(detail.contains("no credentials pushed"), "{body}");
    assert!(check(&body, "enclave").0, "{body}");
    drop(host);

    // A host without [kms] pushes none and says so; a database whose schema another
    // process changed under it is not ready.
    let stack = harness::Stack::start().await;
    let ready = stack.wait_ready(true).await;
    let (ok, detail) = check(&ready, "credentials");
    assert!(ok && detail.contains("not pushed by this host"), "{ready}");
    let db = rusqlite::Connection::open(stack.db_path()).unwrap();
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    db.pragma_update(None, "user_version", version + 1).unwrap();
    let body = stack.wait_ready(false).await;
    let (ok, detail) = check(&body, "store");
    assert!(!ok && detail.contains("newer"), "{body}");
    db.pragma_update(None, "user_version", version).unwrap();
    stack.wait_ready(true).await;
}

/// `signer-host ARGS` against the dev stack, with `stdin`; (succeeded, stdout, stderr).
fn cli(dev: &harness::Dev, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let socket = dev.socket();
    let mut child = Command::new(host_bin())
        .args(args)
        .env("SIGNER_HOST_SOCKET", &socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn cli_json(dev: &harness::Dev, args: &[&str], stdin: &str) -> serde_json::Value {
    let (ok, stdout, stderr) = cli(dev, args, stdin);
    assert!(ok, "signer-host {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test]
async fn the_client_cli_acquires_signs_fee_bumps_unlocks_and_verifies_the_attestation() {
    use harness::stellar::{b64, user_payment};
    let dev = harness::Dev::start(&[]);

    let lease = cli_json(&dev, &["channels", "acquire", "--json"], "");
    let channel = lease["account"].as_str().unwrap().to_string();
    let unsigned = b64(&user_payment(&channel, &channel, 1));
    // The envelope on standard input, human output.
    let (ok, human, stderr) = cli(&dev, &["sign", "--signer", &channel], &unsigned);
    assert!(ok, "{stderr}");
    assert!(human.lines().any(|l| l.starts_with("hash ")), "{human}");
    assert!(human.contains(&format!("public_key={channel}")), "{human}");
    // The same as an argument, JSON output for scripts.
    let signed = cli_json(
        &dev,
        &["sign", "--signer", &channel, &unsigned, "--json"],
        "",
    );
    let hash = signed["hash"].as_str().unwrap().to_string();
    let bumped = cli_json(
        &dev,
        &["fee-bump", "--base-fee", "200", "--json", "-"],
        signed["transaction"].as_str().unwrap(),
    );
    assert_eq!(bumped["inner_hash"], hash.as_str(), "{bumped}");
    assert_eq!(bumped["fee"], 400, "{bumped}");
    let unlocked = cli_json(&dev, &["channels", "unlock", &hash, "--json"], "");
    assert!(unlocked.to_string().contains(&channel), "{unlocked}");
    // A refusal is a failure with its code.
    let (ok, _, stderr) = cli(&dev, &["sign", "--signer", &channel, "AAAA"], "");
    assert!(!ok && stderr.contains("malformed_transaction"), "{stderr}");

    // Which build is this? A fresh document with our nonce, checked against the mock
    // CA, the development PCRs and the enclave's settings digest.
    let nonce = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let answer = cli(
        &dev,
        &["attestation", "get", "--nonce", nonce, "--json"],
        "",
    )
    .1;
    let parsed: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let digest = parsed["user_data"].as_str().unwrap().to_string();
    assert_eq!(parsed["nonce"], nonce);
    let root = dev.state().join("mock-nsm-ca/root.pem");
    let root = root.to_str().unwrap();
    // The mock enclave's measurements (signer-dev's DEV_PCRS): PCRn is 48 bytes of 0xdn.
    let pcr = |i: usize| format!("{i}={}", format!("d{i}").repeat(48));
    let (pcr0, pcr1, pcr2) = (pcr(0), pcr(1), pcr(2));
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "attestation",
            "verify",
            "--root",
            root,
            "--pcr",
            &pcr0,
            "--pcr",
            &pcr1,
            "--pcr",
            &pcr2,
        ];
        args.extend_from_slice(extra);
        cli(&dev, &args, &answer)
    };
    let (ok, shown, stderr) = verify(&["--nonce", nonce, "--settings-digest", &digest]);
    assert!(ok, "{stderr}");
    assert!(
        shown.contains("verified") && shown.contains("true"),
        "{shown}"
    );
    // Each wrong expectation fails, naming it; so does the AWS root for a mock document.
    let (ok, _, stderr) = verify(&["--nonce", "00"]);
    assert!(!ok && stderr.contains("nonce"), "{stderr}");
    let zeros = "00".repeat(32);
    let (ok, _, stderr) = verify(&["--nonce", nonce, "--settings-digest", &zeros]);
    assert!(!ok && stderr.contains("settings digest"), "{stderr}");
    let wrong_pcr1 = format!("1={}", "d9".repeat(48));
    let (ok, _, stderr) = verify(&["--nonce", nonce, "--pcr", &wrong_pcr1]);
    assert!(!ok && stderr.contains("PCR1"), "{stderr}");
    let (ok, _, stderr) = cli(
        &dev,
        &["attestation", "verify", "--nonce", nonce, "--no-pcrs"],
        &answer,
    );
    assert!(!ok && stderr.contains("root"), "{stderr}");
    // Nothing pinned is not a verification: the command asks for the PCRs and the nonce.
    let (ok, _, stderr) = cli(&dev, &["attestation", "verify", "--pcr", &pcr0], &answer);
    assert!(!ok && stderr.contains("--pcr 1=HEX"), "{stderr}");
    let (ok, _, stderr) = verify(&[]);
    assert!(!ok && stderr.contains("--nonce"), "{stderr}");
    // The enclave bounds the nonce; the host refuses what is not hex.
    let (ok, _, stderr) = cli(
        &dev,
        &["attestation", "get", "--nonce", &"ab".repeat(65)],
        "",
    );
    assert!(!ok && stderr.contains("bad_request"), "{stderr}");
    dev.stop();
}

#[test]
fn every_client_subcommand_explains_itself_with_an_example() {
    for args in [
        &["sign"][..],
        &["fee-bump"],
        &["soroban", "authorize"],
        &["channels", "status"],
        &["channels", "acquire"],
        &["channels", "release"],
        &["channels", "unlock"],
        &["channels", "ensure"],
        &["channels", "activate"],
        &["channels", "retire"],
        &["keys", "list"],
        &["keys", "generate"],
        &["keys", "verify"],
        &["keys", "rewrap"],
        &["keys", "retire"],
        &["import", "wallet-backend"],
        &["attestation", "get"],
        &["attestation", "verify"],
        &["config", "check"],
    ] {
        let output = Command::new(host_bin())
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        let help = output_text(&output);
        assert!(output.status.success(), "{args:?}: {help}");
        assert!(help.contains("Example"), "{args:?} has no example:\n{help}");
    }
}
