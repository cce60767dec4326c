//! The public API as a client sees it: requests, fully read replies, problem details, bodies and
//! ids, and a load of creates in the background.

use std::time::Duration;

use super::Server;

/// An HTTP client for tests (no connection reuse surprises: a fresh pool per test).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (panics, showing the body, when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an RFC 9457 problem response of this status and type slug.
    pub fn assert_problem(&self, status: u16, slug: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "status; body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let problem = self.json();
        assert_eq!(
            problem["type"],
            format!("/problems/{slug}"),
            "problem: {problem}"
        );
        assert_eq!(problem["status"], status);
        assert!(
            problem["title"].is_string() && problem["detail"].is_string(),
            "{problem}"
        );
        problem
    }
}

/// POSTs `body` to `/wallets` with `Content-Type: application/json` and the given headers.
pub async fn post_wallet(
    client: &reqwest::Client,
    server: &Server,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = client
        .post(server.url("/wallets"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    read(request.send().await.expect("send")).await
}

/// POSTs a JSON body to `url`, with an idempotency key if given. Owns its arguments, so it can
/// run in a spawned task.
pub async fn post_owned(
    client: reqwest::Client,
    url: String,
    body: String,
    key: Option<String>,
) -> Reply {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    read(request.send().await.expect("send")).await
}

/// Reads a response whole.
pub async fn read(response: reqwest::Response) -> Reply {
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("body").to_vec(),
    }
}

/// `GET` on the server, read whole.
pub async fn get(client: &reqwest::Client, server: &Server, path: &str) -> Reply {
    read(client.get(server.url(path)).send().await.expect("send")).await
}

/// A valid create body.
pub fn wallet_body(wallet_id: &str) -> String {
    format!(r#"{{"walletId":"{wallet_id}","ownerId":"user-001","initialBalance":100.00}}"#)
}

/// A fresh id usable as wallet id and idempotency key.
pub fn fresh_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A task that creates wallets against `base` until `stop` is cancelled, asserting that every
/// create answers 201; returns how many it created.
pub fn spawn_creator(
    base: &str,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u32> {
    let base = base.to_owned();
    tokio::spawn(async move {
        let client = client();
        let mut created = 0_u32;
        while !stop.is_cancelled() {
            let response = client
                .post(format!("{base}/wallets"))
                .header("content-type", "application/json")
                .body(wallet_body(&fresh_id("load")))
                .send()
                .await
                .expect("create");
            assert_eq!(response.status(), 201, "wallet creation failed under load");
            created += 1;
        }
        created
    })
}
