//! Behaviour under faults, over the whole local stack: KMS throttling, denial,
//! slowness and unavailability (the mock KMS's fault switches); the enclave killed
//! under load (`signer-dev up` restarts it, as a service manager would); slow and idle
//! connections against the host API's limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::stellar::{b64, user_payment};
use harness::{Dev, Proc, assert_no_secret_in, host_bin};
use host::api_client::{ApiConnection, request_once};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// `POST /v1/sign` of a channel-sourced payment of a user's funds.
fn sign_body(channel: &str) -> Value {
    let envelope = user_payment(channel, channel, 1);
    json!({"transaction": b64(&envelope), "signers": [channel]})
}

fn stack_file(dev: &Dev) -> Value {
    serde_json::from_slice(&std::fs::read(dev.state().join("stack.json")).unwrap()).unwrap()
}

/// Applies a fault update to the stack's mock KMS; returns its state, with the count
/// of KMS requests it has received.
async fn faults(dev: &Dev, update: Value) -> Value {
    let kms_url = stack_file(dev)["kms_url"].as_str().unwrap().to_string();
    mock_kms::admin_client::set_faults(&kms_url, &dev.state().join("mock-kms-ca.pem"), &update)
        .await
        .unwrap()
}

async fn kms_requests(dev: &Dev) -> u64 {
    faults(dev, json!({})).await["requests"].as_u64().unwrap()
}

/// Signs once under `fault`, then lifts it; returns the answer, how long it took and
/// how many KMS requests it made.
async fn sign_under(
    dev: &Dev,
    channel: &str,
    fault: Value,
    lift: Value,
) -> (StatusCode, Value, Duration, u64) {
    let before = kms_requests(dev).await;
    faults(dev, fault).await;
    let started = Instant::now();
    let (status, body) = dev
        .call(Method::POST, "/v1/sign", Some(sign_body(channel)))
        .await;
    let took = started.elapsed();
    let after = faults(dev, lift).await["requests"].as_u64().unwrap();
    (status, body, took, after - before)
}

#[tokio::test]
async fn kms_faults_are_retried_within_bounds_refusals_never_and_each_has_its_code() {
    let dev = Dev::start(&[]);
    let channel = dev.keys("channel").await.remove(0);
    let sign = || dev.call(Method::POST, "/v1/sign", Some(sign_body(&channel)));
    assert_eq!(sign().await.0, StatusCode::OK);

    // Throttling: retried with backoff (4 attempts), then its own code.
    let (status, body, took, requests) = sign_under(
        &dev,
        &channel,
        json!({"throttle": true}),
        json!({"throttle": false}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("kms_throttled")),
        "{body}"
    );
    assert_eq!(requests, 4, "one call and three retries");
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(sign().await.0, StatusCode::OK);

    // A refusal is not retried: the mock's clock moved on, so the document is stale.
    let (status, body, _, requests) = sign_under(
        &dev,
        &channel,
        json!({"clock_skew_s": 600}),
        json!({"clock_skew_s": 0}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("kms_access_denied")),
        "{body}"
    );
    assert_eq!(requests, 1, "a refusal is final");

    // Unavailable (503 and a closed connection): retried, then kms_unavailable.
    let (status, body, _, requests) = sign_under(
        &dev,
        &channel,
        json!({"unavailable": true}),
        json!({"unavailable": false}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("kms_unavailable")),
        "{body}"
    );
    assert_eq!(requests, 4);

    // Slower than the per-attempt timeout: cut off, within the per-call bound.
    let (status, body, took, _) = sign_under(
        &dev,
        &channel,
        json!({"latency_ms": 2500}),
        json!({"latency_ms": 0}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("kms_unavailable")),
        "{body}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(12),
        "{took:?}"
    );

    assert_eq!(
        sign().await.0,
        StatusCode::OK,
        "signs again once KMS is well"
    );
    let seeds = dev.seeds();
    assert_no_secret_in(&dev.stop(), &seeds);
}

/// Answers seen by the load: (status, error code) of every request.
type Answers = Vec<(StatusCode, String)>;

/// A caller that, until `stop`, acquires a channel, signs with it and releases it
/// whatever the answer, as a well-behaved caller does; a signature that was not given
/// must leave no signed transaction recorded on the lock.
async fn locking_caller(socket: std::path::PathBuf, stop: Arc<AtomicBool>) -> Answers {
    let mut answers = Vec::new();
    let mut connection = ApiConnection::connect(&socket).await.unwrap();
    while !stop.load(Ordering::Relaxed) {
        let call = async {
            let (status, lease) = connection
                .request(Method::POST, "/v1/channels/acquire", None)
                .await
                .unwrap();
            assert_eq!(status, StatusCode::OK, "{lease}");
            let channel = lease["account"].as_str().unwrap();
            let (status, body) = connection
                .request(Method::POST, "/v1/sign", Some(&sign_body(channel)))
                .await
                .unwrap();
            if status != StatusCode::OK {
                let (_, pool) = connection
                    .request(Method::GET, "/v1/channels?accounts=true", None)
                    .await
                    .unwrap();
                let row = pool["accounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["account"] == channel)
                    .unwrap();
                assert!(
                    row["tx_hash"].is_null(),
                    "a failed signature left a signed transaction on its lock: {row}"
                );
            }
            let release = json!({"account": lease["account"], "lock_token": lease["lock_token"]});
            let (released, answer) = connection
                .request(Method::POST, "/v1/channels/release", Some(&release))
                .await
                .unwrap();
            assert_eq!(released, StatusCode::OK, "{answer}");
            (
                status,
                body["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        };
        // Every request is answered, well within the host's enclave timeout (30 s).
        answers.push(
            tokio::time::timeout(Duration::from_secs(15), call)
                .await
                .expect("a request hung"),
        );
    }
    answers
}

/// A caller that pings through host and enclave until `stop`.
async fn pinging_caller(socket: std::path::PathBuf, stop: Arc<AtomicBool>) -> Answers {
    let mut answers = Vec::new();
    let mut connection = ApiConnection::connect(&socket).await.unwrap();
    while !stop.load(Ordering::Relaxed) {
        let call = connection.request(Method::GET, "/v1/ping", None);
        let (status, body) = tokio::time::timeout(Duration::from_secs(15), call)
            .await
            .expect("a ping hung")
            .unwrap();
        answers.push((
            status,
            body["error"]["code"].as_str().unwrap_or("").to_string(),
        ));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enclave_killed_under_load_answers_enclave_unavailable_leaks_no_lock_and_recovers() {
    let dev = Dev::start(&[]);
    let channels = dev.keys("channel").await;
    let enclave_pid = stack_file(&dev)["enclave_pid"].as_u64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // 64 callers: one per channel locking it for each signature, the rest pinging.
    let callers: Vec<_> = (0..64)
        .map(|i| {
            if i < channels.len() {
                tokio::spawn(locking_caller(dev.socket(), stop.clone()))
            } else {
                tokio::spawn(pinging_caller(dev.socket(), stop.clone()))
            }
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(enclave_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Answers::new();
    for caller in callers {
        answers.extend(caller.await.unwrap());
    }
    let signed = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let unavailable = answers
        .iter()
        .filter(|(_, c)| c == "enclave_unavailable")
        .count();
    let other: Vec<_> = answers
        .iter()
        .filter(|(s, c)| {
            *s != StatusCode::OK && c != "enclave_unavailable" && c != "no_credentials"
        })
        .collect();
    assert!(
        signed > 0 && unavailable > 0,
        "signed {signed}, enclave_unavailable {unavailable}"
    );
    // Right after the restart the enclave may not have its credentials yet.
    assert!(other.is_empty(), "unexpected answers: {other:?}");

    let (_, summary) = dev.call(Method::GET, "/v1/channels", None).await;
    assert_eq!(
        summary["locked"], 0,
        "no lock outlives its caller's release: {summary}"
    );

    // Restarted by the stack: a new process signs again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = dev
            .call(Method::POST, "/v1/sign", Some(sign_body(&channels[0])))
            .await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never signed again: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(
        stack_file(&dev)["enclave_pid"].as_u64().unwrap(),
        enclave_pid
    );
    let seeds = dev.seeds();
    assert_no_secret_in(&dev.stop(), &seeds);
}

/// Reads what the host sends until it closes the connection (or `limit` passes).
async fn read_until_closed(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> Option<String> {
    let mut answer = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

/// Asserts that `stream` is answered with HTTP `status`, the answer naming `code`, and
/// closed within 3 s.
async fn answered_and_closed(stream: &mut UnixStream, status: &str, code: &str) {
    let answer = read_until_closed(stream, Duration::from_secs(3))
        .await
        .unwrap_or_else(|| panic!("not answered {status} and closed within 3 s"));
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")) && answer.contains(code),
        "{answer}"
    );
}

/// Whether the host at `socket` answers a store-only route.
async fn healthy(socket: &std::path::Path) -> bool {
    answers(socket, "/v1/channels").await
}

/// Whether the host at `socket` answers `GET path` with 200.
async fn answers(socket: &std::path::Path, path: &str) -> bool {
    matches!(
        request_once(socket, Method::GET, path, None).await,
        Ok((StatusCode::OK, _))
    )
}

/// A host (no enclave) with tight connection limits: 8 connections (all of them for
/// one uid), `deadline_ms` to read a request's headers or body.
async fn limited_host(dir: &std::path::Path, deadline_ms: u64) -> (Proc, std::path::PathBuf) {
    limited_host_with(dir, deadline_ms, ALL_FOR_ONE_UID, "").await
}

/// All the connections of [`limited_host_with`] for one uid.
const ALL_FOR_ONE_UID: &str = "max_connections_per_uid = 8";

/// [`limited_host`] with more `[api]` settings (`api`, lines of that table) and
/// `callers` (an `[api.callers]` table, or nothing for the default allow-lists).
async fn limited_host_with(
    dir: &std::path::Path,
    deadline_ms: u64,
    api: &str,
    callers: &str,
) -> (Proc, std::path::PathBuf) {
    let socket = dir.join("host.sock");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nsocket = \"{}\"\nsocket_mode = \"0666\"\nmax_connections = 8\n\
             header_read_timeout_ms = {deadline_ms}\nbody_read_timeout_ms = {deadline_ms}\n\
             {api}\n\n{callers}\n\n\
             [enclave]\nendpoint = \"unix://{}\"\n\n[store]\npath = \"{}\"\n",
            socket.display(),
            dir.join("no-enclave.sock").display(),
            dir.join("signer.db").display(),
        ),
    )
    .unwrap();
    let host = Proc::spawn(
        std::process::Command::new(host_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config),
        dir.join("host.log"),
    );
    // `/healthz`: the callers may admit nobody to the store's routes.
    until_answered(&socket, "/healthz", Duration::from_secs(20), || {
        format!("host did not start: {}", host.log_text())
    })
    .await;
    (host, socket)
}

/// Polls the host at `socket` until it answers `GET path` with 200; fails with `why`
/// after `within`.
async fn until_answered(
    socket: &std::path::Path,
    path: &str,
    within: Duration,
    why: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !answers(socket, path).await {
        assert!(Instant::now() < deadline, "{}", why());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A health probe, for callers over a raw socket.
const RAW_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";

/// A whole request of a store-only route, for callers over a raw socket.
const RAW_GET: &[u8] = b"GET /v1/channels HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test]
async fn slow_and_idle_connections_are_cut_off_and_capped_while_callers_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (_host, socket) = limited_host(dir.path(), 600).await;
    let healthy = || healthy(&socket);

    // The start-up probes' connections close first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Seven slow callers: three send nothing, one trickles its headers a byte every
    // 100 ms (the deadline is for all of them, not for each read), two stop
    // mid-headers, one mid-body.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(UnixStream::connect(&socket).await.unwrap());
    }
    let (mut trickled, mut trickling) = UnixStream::connect(&socket).await.unwrap().into_split();
    let trickle = tokio::spawn(async move {
        let head = b"GET /v1/channels HTTP/1.1\r\nx-slow: ".iter();
        for byte in head.chain(std::iter::repeat(&b'a')).take(100) {
            if trickling.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    for _ in 0..2 {
        let mut stream = UnixStream::connect(&socket).await.unwrap();
        stream
            .write_all(b"POST /v1/channels/acquire HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        idle.push(stream);
    }
    let mut half_body = UnixStream::connect(&socket).await.unwrap();
    half_body
        .write_all(b"POST /v1/channels/acquire HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"lock")
        .await
        .unwrap();
    let opened = Instant::now();
    // One slot is left: a well-behaved caller is served.
    let (status, body) = request_once(&socket, Method::GET, "/v1/channels", None)
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "a caller within the cap is served: {body}"
    );
    // The cap is full with one more: the next caller is told so, at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let filler = UnixStream::connect(&socket).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut refused = UnixStream::connect(&socket).await.unwrap();
    refused.write_all(RAW_GET).await.unwrap();
    answered_and_closed(&mut refused, "503", "\"too_many_connections\"").await;

    // The half body is answered request_timeout and closed; the rest are closed.
    answered_and_closed(&mut half_body, "408", "request_timeout").await;
    for mut stream in idle.into_iter().chain([filler]) {
        let closed = read_until_closed(&mut stream, Duration::from_secs(3)).await;
        assert!(closed.is_some(), "a slow connection was kept open");
    }
    let closed = read_until_closed(&mut trickled, Duration::from_secs(3)).await;
    assert!(
        closed.is_some(),
        "headers trickled a byte at a time kept the connection"
    );
    trickle.abort();
    assert!(
        opened.elapsed() < Duration::from_secs(3),
        "{:?}",
        opened.elapsed()
    );
    assert!(
        healthy().await,
        "callers are served once the slow ones are gone"
    );
}

/// A process that may open the socket but is on no allow-list (only the health probes
/// admit it) holds at most a quarter of the connections: 2 of 8 here, the third is
/// answered `too_many_connections` while slots remain, and a slot it frees is its again.
#[tokio::test]
async fn callers_on_no_allow_list_hold_at_most_a_quarter_of_the_connections() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = "[api.callers]\nsigning = { uids = [4242] }\nchannels = { uids = [4242] }\n\
                  read_only = { uids = [4242] }\nkey_admin = { uids = [4242] }";
    let (_host, socket) = limited_host_with(dir.path(), 5_000, ALL_FOR_ONE_UID, nobody).await;
    let served = || held_open(&socket);
    let mut held = vec![served().await, served().await];
    let mut third = UnixStream::connect(&socket).await.unwrap();
    third.write_all(RAW_HEALTHZ).await.unwrap();
    answered_and_closed(&mut third, "503", "too_many_connections").await;
    drop(held.pop());
    held.push(served().await);
}

/// A connection to the host at `socket` whose health probe was answered 200, kept open;
/// retried until the host has seen earlier connections (the start-up probes', a dropped
/// one) close, for up to 5 s.
async fn held_open(socket: &std::path::Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = UnixStream::connect(socket).await.unwrap();
        stream.write_all(RAW_HEALTHZ).await.unwrap();
        let mut answer = [0u8; 12];
        if stream.read_exact(&mut answer).await.is_ok() && &answer == b"HTTP/1.1 200" {
            return stream;
        }
        assert!(Instant::now() < deadline, "no connection slot came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One user holds at most its share of the connections (4 of 8 here): its next one is
/// answered `too_many_connections` naming that limit while slots remain, another user
/// is served meanwhile, and a slot the first frees is its again.
#[tokio::test]
async fn one_user_holds_at_most_its_share_while_other_users_are_served() {
    let dir = tempfile::tempdir().unwrap();
    // Another user must reach the socket through the directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_host, socket) =
        limited_host_with(dir.path(), 5_000, "max_connections_per_uid = 4", "").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(held_open(&socket).await);
    }
    let mut fifth = UnixStream::connect(&socket).await.unwrap();
    fifth.write_all(RAW_HEALTHZ).await.unwrap();
    answered_and_closed(&mut fifth, "503", "api.max_connections_per_uid").await;
    if nix::unistd::geteuid().is_root() {
        // A probe from uid 4242 (Python, which any user may run, unlike a build tree
        // under a private home): answered, although this user is at its limit.
        let probe = "import socket, sys\n\
                     s = socket.socket(socket.AF_UNIX)\n\
                     s.connect(sys.argv[1])\n\
                     s.sendall(b'GET /healthz HTTP/1.1\\r\\nhost: x\\r\\n\\r\\n')\n\
                     print(s.recv(64).decode(errors='replace'))\n";
        let other_user = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(probe)
            .arg(&socket)
            .uid(4242)
            .gid(4242)
            .output()
            .await
            .expect("python3, for the probe as uid 4242");
        let answer = String::from_utf8_lossy(&other_user.stdout);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "another user was not served: {answer} {}",
            String::from_utf8_lossy(&other_user.stderr)
        );
    } else {
        eprintln!("not root: another user's connection is not tried");
    }
    drop(held.pop());
    held.push(held_open(&socket).await);
    drop(held);
    // Counted for the operator, by the limit's setting.
    let deadline = Instant::now() + Duration::from_secs(3);
    let metrics = loop {
        match host::api_client::get_text(&socket, "/metrics").await {
            Ok((StatusCode::OK, _, text)) => break text,
            // The host may not have seen the held connections close yet.
            other => assert!(Instant::now() < deadline, "no metrics: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let refused: u64 = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("signer_api_limit_refusals_total{limit=\"max_connections_per_uid\"} ")
        })
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no per-uid refusals counted:\n{metrics}"));
    assert!(refused >= 1, "{metrics}");
}

/// The host buffers at most `api.max_buffered_body_bytes` of bodies at once: with one
/// caller's 4 KiB body (all of it) half sent, another's small request waits, unread,
/// and is served once the first is answered.
#[tokio::test]
async fn bodies_beyond_the_buffer_budget_wait_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let api = "max_body_bytes = 4096\nmax_buffered_body_bytes = 4096\nmax_connections_per_uid = 8";
    let (_host, socket) = limited_host_with(dir.path(), 5_000, api, "").await;
    let body = format!(
        "{{\"account\": \"{}\", \"lock_token\": \"x\"}}",
        "A".repeat(4062)
    );
    assert_eq!(body.len(), 4096);
    let head = "POST /v1/channels/release HTTP/1.1\r\nhost: x\r\n\
                content-type: application/json\r\ncontent-length: ";
    let mut large = UnixStream::connect(&socket).await.unwrap();
    large
        .write_all(format!("{head}4096\r\n\r\n{}", &body[..2048]).as_bytes())
        .await
        .unwrap();
    let small_body = "{\"account\": \"x\", \"lock_token\": \"x\"}";
    let small_request = format!("{head}{}\r\n\r\n{small_body}", small_body.len());
    // Once the host has taken the large body's room (the first small requests may come
    // before), a small one waits unanswered.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut small = loop {
        let mut small = UnixStream::connect(&socket).await.unwrap();
        small.write_all(small_request.as_bytes()).await.unwrap();
        let mut first_bytes = [0u8; 12];
        let waited =
            tokio::time::timeout(Duration::from_millis(300), small.read(&mut first_bytes)).await;
        if waited.is_err() {
            break small;
        }
        assert!(
            Instant::now() < deadline,
            "small requests were answered while the large body held the budget"
        );
    };
    // Still waiting a second later: held back by the budget, not merely slow.
    let mut first_bytes = [0u8; 12];
    let still = tokio::time::timeout(Duration::from_secs(1), small.read(&mut first_bytes)).await;
    assert!(
        still.is_err(),
        "the small request was answered while the large body held the budget"
    );
    large.write_all(&body.as_bytes()[2048..]).await.unwrap();
    for (stream, which) in [
        (&mut large, "the large body"),
        (&mut small, "the waiting one"),
    ] {
        let mut answer = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{which} was not answered"))
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]);
        // Refused as an unknown account, once read: neither busy nor timed out.
        assert!(
            answer.contains("unknown_channel_account"),
            "{which}: {answer}"
        );
    }
}

/// A body no route reads (on a GET, or a health probe) or one declared over `api.max_body_bytes` is refused
/// at once, before any of it is read, rather than waited for until the body's deadline;
/// a path of any length is logged and repeated cut to 128 bytes.
#[tokio::test]
async fn bodies_that_cannot_be_taken_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let (host, socket) = limited_host(dir.path(), 5_000).await;
    for (head, status, code) in [
        (
            "POST /v1/channels/acquire HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: 100000000\r\n\r\n",
            "413",
            "payload_too_large",
        ),
        (
            "GET /v1/channels HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n",
            "400",
            "bad_request",
        ),
        // Anyone may probe: a probe's body would take room from the listed callers.
        (
            "POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n",
            "400",
            "bad_request",
        ),
    ] {
        let mut stream = UnixStream::connect(&socket).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        // Within 3 s, before the body's 5 s deadline.
        answered_and_closed(&mut stream, status, code).await;
    }
    let long = format!("/v1/{}", "a".repeat(20_000));
    let (status, answer) = request_once(&socket, Method::GET, &long, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("(20004 bytes)") && message.len() < 300,
        "{message}"
    );
    let log = host.log_text();
    assert!(
        log.contains("(20004 bytes)"),
        "the request's log line: {log}"
    );
    assert!(
        !log.contains(&"a".repeat(200)),
        "a whole long path was logged"
    );
}

/// A caller over the connection cap is answered `too_many_connections` after it sent its
/// request (an HTTP client that sees an answer before it sent its request reports a
/// closed connection instead), and a flood of silent connections beyond the refusals the
/// host answers at once is closed unanswered.
#[tokio::test]
async fn callers_over_the_cap_are_answered_after_their_request_and_a_flood_is_closed() {
    use host::api::connections::MAX_REFUSING;
    let dir = tempfile::tempdir().unwrap();
    // Deadlines long enough that the connections filling the cap stay for the test.
    let (_host, socket) = limited_host(dir.path(), 10_000).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut filling = Vec::new();
    for _ in 0..8 {
        filling.push(UnixStream::connect(&socket).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Nothing comes before the request; its answer comes at once after it.
    let mut raw = UnixStream::connect(&socket).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(200), raw.read(&mut byte)).await;
    assert!(early.is_err(), "answered before the request: {early:?}");
    raw.write_all(RAW_GET).await.unwrap();
    answered_and_closed(&mut raw, "503", "\"too_many_connections\"").await;
    // An HTTP client library gets the answer, not a closed connection.
    for _ in 0..5 {
        let (status, body) = request_once(&socket, Method::GET, "/v1/channels", None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "too_many_connections");
    }

    // The refusals above end once their callers close.
    drop(raw);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Silent connections over the cap: as many as are answered at once wait for their
    // request; the next one is closed at once.
    let mut waiting = Vec::new();
    for _ in 0..MAX_REFUSING {
        waiting.push(UnixStream::connect(&socket).await.unwrap());
    }
    // Accepted in order, after the waiting ones.
    let mut beyond = UnixStream::connect(&socket).await.unwrap();
    // Told apart by what it reads, not by when: a refusal would answer it within 1 s.
    let closed = read_until_closed(&mut beyond, Duration::from_secs(3)).await;
    assert_eq!(closed.as_deref(), Some(""), "closed unanswered");
    // Those waiting are answered once their wait for a request is over.
    for mut stream in waiting {
        answered_and_closed(&mut stream, "503", "\"too_many_connections\"").await;
    }
    drop(filling);
    until_answered(&socket, "/v1/channels", Duration::from_secs(5), || {
        "not served once the cap had room".into()
    })
    .await;
}

/// Pipelined requests a caller sends and never reads the answers of.
const PIPELINED: usize = 20_000;

#[tokio::test]
async fn a_caller_that_never_reads_its_answers_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (_host, socket) = limited_host(dir.path(), 600).await;
    // Once an answer has waited to be written as long as the deadline, the connection
    // is cut, not held.
    let (mut reader, mut writer) = UnixStream::connect(&socket).await.unwrap().into_split();
    let sending = tokio::spawn(async move {
        let request = RAW_GET.repeat(PIPELINED);
        let _ = writer.write_all(&request).await;
        writer
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answers = read_until_closed(&mut reader, Duration::from_secs(10))
        .await
        .expect("the host closed the connection of a caller that did not read");
    let answered = answers.matches("HTTP/1.1 200").count();
    assert!(
        answered < PIPELINED,
        "a caller that did not read kept its connection: all {answered} answers written"
    );
    drop(sending);
    assert!(healthy(&socket).await, "and callers are still served");
}

/// What one caller was told before the host died.
#[derive(Default)]
struct Acknowledged {
    /// Leases it holds (acquired, not released).
    held: Vec<Value>,
    /// Leases it released.
    released: Vec<Value>,
    /// Keys stored (registered; the enclave cannot verify them without KMS).
    registered: Vec<u32>,
}

/// Acquires, and releases every other lease, until the host dies.
async fn acquiring_caller(socket: std::path::PathBuf) -> Acknowledged {
    let mut told = Acknowledged::default();
    let Ok(mut connection) = ApiConnection::connect(&socket).await else {
        return told;
    };
    loop {
        let Ok((status, lease)) = connection
            .request(Method::POST, "/v1/channels/acquire", None)
            .await
        else {
            return told;
        };
        if status != StatusCode::OK {
            assert_eq!(lease["error"]["code"], "no_idle_channel_account", "{lease}");
            continue;
        }
        // Every other lease is kept (at most 10 per caller, so the pool never runs dry).
        if told.held.len() <= told.released.len() && told.held.len() < 10 {
            told.held.push(lease);
            continue;
        }
        let release = json!({"account": lease["account"], "lock_token": lease["lock_token"]});
        match connection
            .request(Method::POST, "/v1/channels/release", Some(&release))
            .await
        {
            Ok((StatusCode::OK, _)) => told.released.push(lease),
            Ok((status, body)) => panic!("release: {status} {body}"),
            // Died mid-release: whether it was released is unknown; skip it.
            Err(_) => return told,
        }
    }
}

/// Registers keys `first..` until the host dies.
async fn registering_caller(socket: std::path::PathBuf, first: u32) -> Acknowledged {
    let mut told = Acknowledged::default();
    let Ok(mut connection) = ApiConnection::connect(&socket).await else {
        return told;
    };
    for i in first.. {
        match connection
            .request(
                Method::POST,
                "/v1/keys",
                Some(&harness::register_body(i, "channel")),
            )
            .await
        {
            // Stored, then refused verification (no KMS here): kept, pending, audited.
            Ok((StatusCode::SERVICE_UNAVAILABLE, body))
                if body["error"]["code"] == "kms_unavailable" =>
            {
                told.registered.push(i);
            }
            Ok((status, body)) => panic!("key {i}: {status} {body}"),
            Err(_) => break,
        }
    }
    told
}

/// `POST /v1/channels/release` of `lease` (as `acquire` answered it).
async fn release_lease(socket: &std::path::Path, lease: &Value) -> (StatusCode, Value) {
    let release = json!({"account": lease["account"], "lock_token": lease["lock_token"]});
    request_once(socket, Method::POST, "/v1/channels/release", Some(&release))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_killed_under_load_keeps_every_answered_lock_release_key_and_audit_row() {
    let mut stack = harness::Stack::start().await;
    stack.store_active_keys(0..1000, host::store::KeyRole::Channel);
    let callers: Vec<_> = (0..64u32)
        .map(|i| {
            let socket = stack.host_socket.clone();
            if i < 4 {
                tokio::spawn(registering_caller(socket, 100_000 + i * 100_000))
            } else {
                tokio::spawn(acquiring_caller(socket))
            }
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stack.host.signal(nix::sys::signal::Signal::SIGKILL);
    stack.host.wait_exit(Duration::from_secs(10));
    let mut told = Acknowledged::default();
    for caller in callers {
        let one = caller.await.unwrap();
        told.held.extend(one.held);
        told.released.extend(one.released);
        told.registered.extend(one.registered);
    }
    assert!(
        told.held.len() > 50 && told.released.len() > 50 && told.registered.len() > 5,
        "too little load to mean anything: {} held, {} released, {} registered",
        told.held.len(),
        told.released.len(),
        told.registered.len()
    );

    let socket = stack.dir.path().join("host-after.sock");
    let host = harness::spawn_host(
        stack.dir.path(),
        "host-after",
        &socket,
        &stack.enclave_socket,
        &stack.db_path(),
    );
    harness::wait_ready_at(&socket, true, &host).await;
    let (_, pool) = request_once(&socket, Method::GET, "/v1/channels?accounts=true", None)
        .await
        .unwrap();
    let rows = pool["accounts"].as_array().unwrap();
    let row = |account: &Value| rows.iter().find(|r| &r["account"] == account).unwrap();
    for lease in &told.released {
        // Its token no longer holds anything (an acquire in flight at the crash may
        // have taken the account since, under another token).
        let (status, body) = release_lease(&socket, lease).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("lock_token_mismatch")),
            "a release was lost: {lease}"
        );
    }
    for lease in &told.held {
        assert_eq!(
            row(&lease["account"])["status"],
            "locked",
            "a lock was lost: {lease}"
        );
        let (status, body) = release_lease(&socket, lease).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the token issued before the crash holds its lock: {body}"
        );
    }
    let store = host::store::SqliteStore::open(
        &stack.db_path(),
        host::store::LockLimits::default(),
        Duration::from_secs(5),
    )
    .unwrap();
    let audit = host::store::AuditLog::recent_audit(&store, 100_000).unwrap();
    for i in &told.registered {
        let key = harness::test_account(*i);
        assert!(
            host::store::KeyStore::key(&store, &key).unwrap().is_some(),
            "key {i} was lost"
        );
        assert!(
            audit.iter().any(|row| row.entry.kind == "key_registered"
                && row.entry.public_key.as_deref() == Some(&*key)),
            "the audit row of key {i} was lost"
        );
    }
}
