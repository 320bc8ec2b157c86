//! `signer-dev stub-rpc` as a child process, and a bare JSON-RPC call to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::dev_bin;

/// A running stub; stopped when dropped.
pub struct StubRpc {
    child: Child,
    pub url: String,
    address: String,
}

impl StubRpc {
    /// A stub whose ledger holds `funded` (G..., stroops), with `extra` flags.
    pub fn start(funded: &[(&str, i64)], extra: &[&str]) -> StubRpc {
        let mut command = Command::new(dev_bin());
        command.arg("stub-rpc");
        for (account, balance) in funded {
            command.arg("--fund").arg(format!("{account}={balance}"));
        }
        let mut child = command
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let url = line
            .split_whitespace()
            .last()
            .unwrap_or_else(|| panic!("stub-rpc printed {line:?}"))
            .to_string();
        let address = url.trim_start_matches("http://").to_string();
        StubRpc {
            child,
            url,
            address,
        }
    }

    /// One JSON-RPC call; the `result`, or the whole answer when it is an error.
    pub fn call(&self, method: &str, params: &Value) -> Value {
        let body =
            json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }).to_string();
        let mut stream = TcpStream::connect(&self.address).unwrap();
        write!(
            stream,
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.address,
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (_, json_body) = answer.split_once("\r\n\r\n").unwrap();
        let value: Value = serde_json::from_str(json_body).unwrap();
        if value["result"].is_null() {
            value
        } else {
            value["result"].clone()
        }
    }

    /// The stub's non-standard listing: accounts and applied transactions.
    pub fn ledger(&self) -> Value {
        self.call("stubLedger", &json!({}))
    }

    /// The accounts on the stub's ledger.
    pub fn accounts(&self) -> Vec<String> {
        self.ledger()["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["account"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for StubRpc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
