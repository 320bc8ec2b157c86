//! The whole local stack, real binaries over mock-vsock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use std::time::Duration;

use harness::{Dev, Stack};
use host::api_client::{ApiConnection, request_once};
use hyper::{Method, StatusCode};
use nix::sys::signal::Signal;

fn check<'a>(readiness: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    readiness["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {readiness}"))
}

#[tokio::test]
async fn a_request_round_trips_through_host_and_enclave() {
    let mut stack = Stack::start().await;

    let (status, body) = stack.get("/healthz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );

    let (status, body) = stack.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ready");
    assert_eq!(check(&body, "enclave")["ok"], true);
    assert_eq!(check(&body, "store")["ok"], true);

    let (status, body) = stack.get("/v1/ping").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enclave_build"], "mock");

    // Errors are JSON with stable codes.
    let (status, body) = stack.get("/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = stack.get("/v1/ping?delay_ms=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = request_once(&stack.host_socket, Method::DELETE, "/v1/ping", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");

    // The socket has the default mode, and a clean shutdown removes it and exits 0.
    let mode = std::fs::metadata(&stack.host_socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    stack.host.signal(Signal::SIGTERM);
    let status = stack.host.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "host exited with {status}");
    assert!(!stack.host_socket.exists(), "socket file left behind");
}

#[tokio::test]
async fn two_hundred_concurrent_requests_all_complete() {
    let stack = Stack::start().await;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let socket = stack.host_socket.clone();
            tokio::spawn(async move {
                request_once(&socket, Method::GET, "/v1/ping", None)
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test]
async fn a_slow_request_does_not_delay_fast_ones() {
    let stack = Stack::start().await;
    let socket = stack.host_socket.clone();
    let slow = tokio::spawn(async move {
        request_once(&socket, Method::GET, "/v1/ping?delay_ms=4000", None)
            .await
            .unwrap()
    });
    // Make sure the slow one is in flight first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!slow.is_finished());
    let fast: Vec<_> = (0..50)
        .map(|_| {
            let socket = stack.host_socket.clone();
            tokio::spawn(async move {
                request_once(&socket, Method::GET, "/v1/ping", None)
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in fast {
        assert_eq!(task.await.unwrap().0, StatusCode::OK);
    }
    assert!(
        !slow.is_finished(),
        "all fast requests must finish while the slow one is still running"
    );
    assert_eq!(slow.await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn enclave_crash_fails_in_flight_requests_and_recovery_needs_no_host_restart() {
    let mut stack = Stack::start().await;
    let socket = stack.host_socket.clone();
    let in_flight = tokio::spawn(async move {
        request_once(&socket, Method::GET, "/v1/ping?delay_ms=20000", None)
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!in_flight.is_finished());

    let mut enclave = stack.enclave.take().unwrap();
    enclave.signal(Signal::SIGKILL);
    enclave.wait_exit(Duration::from_secs(10));
    // Fails promptly (long before the 20 s the request would have taken) and clearly.
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("in-flight request hung after the enclave died")
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "enclave_unavailable");

    let body = stack.wait_ready(false).await;
    assert_eq!(body["status"], "not_ready");
    assert_eq!(check(&body, "enclave")["ok"], false);
    assert_eq!(check(&body, "store")["ok"], true);
    let (status, body) = stack.get("/v1/ping").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "enclave_unavailable");

    stack.restart_enclave(1);
    stack.wait_ready(true).await;
    let (status, _) = stack.get("/v1/ping").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        stack.host.child.try_wait().unwrap().is_none(),
        "host kept running"
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let mut stack = Stack::start().await;
    // A keep-alive connection that is idle at shutdown must not hold the host open.
    let mut idle = ApiConnection::connect(&stack.host_socket).await.unwrap();
    assert_eq!(
        idle.request(Method::GET, "/healthz", None).await.unwrap().0,
        StatusCode::OK
    );
    let socket = stack.host_socket.clone();
    let in_flight = tokio::spawn(async move {
        request_once(&socket, Method::GET, "/v1/ping?delay_ms=1500", None)
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.host.signal(Signal::SIGTERM);
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "in-flight request was cut off: {body}"
    );
    let finished = std::time::Instant::now();
    let exit = stack.host.wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "host exited with {exit}");
    // Well before the 10 s grace period, which the idle connection would have used up.
    assert!(
        finished.elapsed() < Duration::from_secs(5),
        "exited {:?} after its last request",
        finished.elapsed()
    );
    assert!(!stack.host_socket.exists());
    assert!(
        request_once(&stack.host_socket, Method::GET, "/healthz", None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn dev_command_brings_up_the_stack_and_ctrl_c_stops_it() {
    let dev = Dev::start(&[]);
    let state = dev.state();
    let host_socket = dev.socket();
    let curl_line = dev
        .banner
        .iter()
        .find(|line| line.contains("curl --unix-socket"))
        .unwrap_or_else(|| panic!("no curl line printed: {:?}", dev.banner));
    assert!(
        curl_line.contains(&host_socket.display().to_string()),
        "{curl_line}"
    );
    let (status, body) = request_once(&host_socket, Method::GET, "/readyz", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    // SIGINT, as Ctrl-C sends it; a clean exit is asserted.
    let (_log, _dir) = tokio::task::spawn_blocking(move || dev.stop_keeping_state())
        .await
        .unwrap();
    // Both processes are gone: neither socket remains.
    assert!(!host_socket.exists());
    for _ in 0..100 {
        if !state.join("enclave.sock").exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the enclave child outlived signer-dev up");
}
