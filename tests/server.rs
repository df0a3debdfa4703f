//! The HTTP server on port 0 with a real client and a temporary database.

use autofunnel::server::{AppState, serve};
use autofunnel::store::Store;
use tokio::net::TcpListener;

#[tokio::test]
async fn healthz_answers_ok_while_the_database_answers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}/t.db", dir.path().display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        AppState {
            store: store.clone(),
            funnels: 2,
        },
        async {
            let _ = stopped.await;
        },
    ));
    let resp = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "status": "ok", "funnels": 2 }));
    let missing = reqwest::get(format!("http://{addr}/nope")).await.unwrap();
    assert_eq!(missing.status(), 404);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
