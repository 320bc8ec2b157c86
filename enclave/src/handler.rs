//! Turns one request into one response. Each request runs in its own task, so a slow
//! one (a KMS round trip) never holds up the others.

use common::WireError;
use common::protocol::{Request, Response};

use crate::BUILD_FLAVOR;

/// Upper bound for the test-only `Ping` delay, so a mistaken value cannot park a task
/// for hours.
#[cfg(feature = "mock")]
const MAX_TEST_DELAY_MS: u32 = 30_000;

#[derive(Debug, Default)]
pub struct Handler {}

impl Handler {
    pub fn new() -> Self {
        Self {}
    }

    pub async fn handle(&self, request: Request) -> Result<Response, WireError> {
        match request {
            Request::Ping { delay_ms } => {
                #[cfg(feature = "mock")]
                if delay_ms > 0 {
                    let delay = delay_ms.min(MAX_TEST_DELAY_MS);
                    tokio::time::sleep(std::time::Duration::from_millis(delay.into())).await;
                }
                #[cfg(not(feature = "mock"))]
                let _ = delay_ms;
                Ok(Response::Pong {
                    build: BUILD_FLAVOR,
                })
            }
        }
    }
}
