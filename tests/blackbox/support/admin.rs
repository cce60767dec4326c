//! The admin API with the test token: requests, a projection's status, waiting for a state.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::{client, read, Reply, Server};

/// Bearer token of the admin API in tests.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// How long a test waits for a projection to reach a state.
pub const PATIENCE: Duration = Duration::from_secs(120);
/// The token the admin helpers send.
const TOKEN: &str = ADMIN_TOKEN;

/// `GET` on the admin API, which must answer 200; its JSON body.
pub async fn admin_get(server: &Server, path: &str) -> serde_json::Value {
    let reply = read(
        client()
            .get(server.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    reply.json()
}

/// `PUT`s a component to an admin path (waiting for the compile as long as a request may).
pub async fn admin_put(server: &Server, path: &str, component: Vec<u8>) -> Reply {
    read(
        client()
            .put(server.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/wasm")
            // Wait for the compile as long as a request may (a loaded machine can take longer
            // than the default wait before `202 Accepted`); tests of the 202 path ask for less.
            .header("prefer", "wait=60")
            .body(component)
            .send()
            .await
            .expect("send"),
    )
    .await
}

/// `POST` on the admin API with no body.
pub async fn admin_post(server: &Server, path: &str) -> Reply {
    read(
        client()
            .post(server.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("send"),
    )
    .await
}

/// Polls `check` every 100 ms until it holds, or panics after [`PATIENCE`].
pub async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends an admin request with the test token.
pub async fn admin(method: reqwest::Method, server: &Server, path: &str) -> Reply {
    let request = client()
        .request(method, server.url(path))
        .bearer_auth(TOKEN);
    read(request.send().await.expect("send")).await
}

/// Uploads a component as projection `name`.
pub async fn upload(server: &Server, name: &str, bytes: Vec<u8>) -> Reply {
    admin_put(server, &format!("/admin/projections/{name}"), bytes).await
}

/// `GET /admin/projections/{name}`, which must answer 200.
pub async fn admin_status(server: &Server, name: &str) -> serde_json::Value {
    admin_get(server, &format!("/admin/projections/{name}")).await
}

/// Polls until `check` holds for the projection's admin status, or panics after `limit`.
pub async fn wait_status(
    server: &Server,
    name: &str,
    limit: Duration,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let status = admin_status(server, name).await;
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: {status:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the projection's live checkpoint is the last outbox row and no rebuild runs.
pub async fn wait_caught_up(server: &Server, name: &str) -> serde_json::Value {
    wait_status(server, name, PATIENCE, "projection never caught up", |s| {
        s["lagEvents"] == 0 && s["rebuild"].is_null()
    })
    .await
}

/// The wallet ids a fixture projection recorded in its `seen` table, in order.
pub async fn seen(pool: &PgPool, projection: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT wallet_id FROM projection_{}.seen ORDER BY 1",
        projection.replace('-', "_")
    ))
    .fetch_all(pool)
    .await
    .expect("seen")
}
