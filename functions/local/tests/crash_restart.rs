//! `kill -9` of `imgproc-local serve` in the middle of a request, twice,
//! then a restart: the request completes with exact counts and exactly one
//! webhook.

#[path = "../../../shared/tests/common/mod.rs"]
mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ImageServer, PHOTOS, WebhookReceiver, csv_of, is_terminal};
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn serve(data: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_imgproc-local"))
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .env("ALLOW_PRIVATE_NETWORKS", "true")
        .env("RETRY_BASE_DELAY_MS", "50")
        .env("WEBHOOK_SECRET", "s")
        .env("IMGPROC_WORKERS", "8")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("imgproc-local starts")
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(client: &reqwest::Client, base: &str, id: &str) -> Value {
    client.get(format!("{base}/v1/requests/{id}?limit=1000")).send().await.unwrap().json().await.unwrap()
}

async fn finished(client: &reqwest::Client, base: &str, id: &str) -> u64 {
    let s = status(client, base, id).await;
    s["progress"]["succeeded"].as_u64().unwrap() + s["progress"]["failed"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_request_then_restart_loses_nothing_and_counts_nothing_twice() {
    let images = ImageServer::start().await;
    let hook = WebhookReceiver::start(0).await;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    // 200 images, each served slowly enough that the kills land mid-request.
    let rows: Vec<(u64, &str, Vec<String>)> = (0..50u64)
        .map(|r| (r + 1, "Product", (0..4u64).map(|i| images.url(&format!("/slow/60/{}?n={}", PHOTOS[((r * 4 + i) % 7) as usize], r * 4 + i))).collect()))
        .collect();
    let mut server = serve(data.path(), port);
    wait_healthy(&client, &base).await;
    let accepted: Value = client
        .post(format!("{base}/v1/requests?webhook_url={}", hook.url()))
        .header("content-type", "text/csv")
        .body(csv_of(&rows))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["request_id"].as_str().expect("accepted").to_owned();
    assert_eq!(accepted["images"], 200);

    for kill_after in [40, 120] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while finished(&client, &base, &id).await < kill_after {
            assert!(Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.kill().expect("SIGKILL");
        server.wait().unwrap();
        server = serve(data.path(), port);
        wait_healthy(&client, &base).await;
        let done = finished(&client, &base, &id).await;
        assert!(done >= kill_after && done < 200, "killed mid-request ({done} finished)");
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let s = loop {
        let s = status(&client, &base, &id).await;
        if is_terminal(&s) && s["webhook"]["status"] != "pending" {
            break s;
        }
        assert!(Instant::now() < deadline, "request did not finish: {}", s["progress"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    server.kill().ok();
    assert_eq!(s["status"], "completed", "{:#}", s["products"][0]);
    assert_eq!(s["progress"]["total"], 200);
    assert_eq!(s["progress"]["succeeded"], 200, "every image processed, none counted twice");
    assert_eq!(s["progress"]["failed"], 0);
    let outputs = s["products"].as_array().unwrap().iter().flat_map(|p| p["images"].as_array().unwrap().clone()).filter(|i| i["status"] == "succeeded" && i["output_url"].is_string()).count();
    assert_eq!(outputs, 200);
    let stored = std::fs::read_dir(data.path().join("objects/processed").join(&id))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .filter(|f| f.as_ref().unwrap().path().extension().is_some_and(|e| e == "jpg"))
        .count();
    assert_eq!(stored, 200);
    // Give a duplicate delivery the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = hook.calls();
    assert_eq!(calls.len(), 1, "exactly one webhook");
    assert_eq!(calls[0].json()["progress"]["succeeded"], 200);
    assert_eq!(s["webhook"]["status"], "delivered");
}
