//! Reads that wait for their own writes: `GET /projections/{p}/{table}/{key}?minPosition=` served by
//! the projections router in process, over the runtime and a real PostgreSQL.

use std::time::Duration;

use wallex_test_support::db::PooledDb as TestDb;
use wallex_test_support::events::create_wallet;
use wallex_test_support::projections::{fast_config, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_after_write_waits_for_the_checkpoint() {
    let db = TestDb::new().await;
    let mut config = fast_config();
    // Only notifications can make a read fast: polling alone would take 10 s.
    config.defaults.poll_interval = Duration::from_secs(10);
    let (projections, stop) = start(&db, config).await;
    let app = wallex_http::projections::router::<()>(projections.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    // Let the workers take their leases and go idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..5 {
        let id = format!("raw{i}");
        let position = create_wallet(&db.pool, &id, "7.00").await;
        let started = std::time::Instant::now();
        let response = client
            .get(format!(
                "http://{addr}/projections/read-model/wallets/{id}?minPosition={position}"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let seen: i64 = response.headers()["x-projection-position"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(seen >= position);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["id"], id);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "read waited for the poll interval"
        );
    }
    // A position that never comes: bounded wait, then a problem.
    let response = client
        .get(format!(
            "http://{addr}/projections/read-model/wallets/raw0?minPosition=999999&timeoutMs=300"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let missing = client
        .get(format!("http://{addr}/projections/read-model/wallets/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let status: serde_json::Value = client
        .get(format!("http://{addr}/projections"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["projections"].as_array().unwrap().len(), 3);
    stop.cancel();
    db.drop_db().await;
}
