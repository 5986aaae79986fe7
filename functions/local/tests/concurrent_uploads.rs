//! Load: 100 uploads of 50-row CSVs at once against `imgproc-local serve`.
//! Every upload is accepted, every request completes with exact counts,
//! and every webhook arrives exactly once.

#[path = "../../../shared/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::routing::get;
use common::{WebhookReceiver, csv_of, is_terminal};
use futures_util::future::join_all;
use serde_json::Value;

const UPLOADS: usize = 100;
const ROWS: u64 = 50;

/// A small real JPEG (a crop of an example photograph): the load is on the
/// API, the store and the queue, not the encoder.
fn small_jpeg() -> Vec<u8> {
    let photo = image::open(common::photos_dir().join("coffee.jpg")).expect("example photo");
    let crop = photo.crop_imm(0, 0, 48, 48).to_rgb8();
    let mut out = Vec::new();
    crop.write_to(
        &mut std::io::Cursor::new(&mut out),
        image::ImageFormat::Jpeg,
    )
    .expect("encode");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_uploads_all_complete_with_exact_counts() {
    let jpeg = small_jpeg();
    let images = Router::new().route(
        "/img/{n}",
        get(move || {
            let body = jpeg.clone();
            async move { ([(header::CONTENT_TYPE, "image/jpeg")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let images_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, images).await });
    let hook = WebhookReceiver::start(0).await;

    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_imgproc-local"))
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data.path())
        .env("ALLOW_PRIVATE_NETWORKS", "true")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("imgproc-local starts");
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(UPLOADS)
        .build()
        .unwrap();
    common::wait_healthy(&client, &base).await;

    // Upload u, row r: image "u-r" (two images on every tenth row).
    let csvs: Vec<String> = (0..UPLOADS)
        .map(|u| {
            let rows: Vec<(u64, &str, Vec<String>)> = (1..=ROWS)
                .map(|r| {
                    let n = if r % 10 == 0 { 2 } else { 1 };
                    (
                        r,
                        "Product",
                        (0..n)
                            .map(|i| format!("http://{images_addr}/img/{u}-{r}-{i}"))
                            .collect(),
                    )
                })
                .collect();
            csv_of(&rows)
        })
        .collect();
    let per_upload = ROWS + ROWS / 10;

    let started = Instant::now();
    let answers = join_all(csvs.iter().map(|csv| {
        let client = client.clone();
        let url = format!("{base}/v1/requests?webhook_url={}", hook.url());
        async move {
            let r = client
                .post(url)
                .header("content-type", "text/csv")
                .body(csv.clone())
                .send()
                .await
                .expect("upload answered");
            (
                r.status().as_u16(),
                r.json::<Value>().await.expect("JSON answer"),
            )
        }
    }))
    .await;
    let upload_time = started.elapsed();
    let mut ids = Vec::new();
    for (code, body) in &answers {
        assert_eq!(*code, 202, "{body:#}");
        assert_eq!(body["products"], ROWS);
        assert_eq!(body["images"], per_upload);
        ids.push(body["request_id"].as_str().unwrap().to_owned());
    }
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), UPLOADS, "one request per upload");

    let deadline = Instant::now() + Duration::from_secs(300);
    let mut done: HashMap<String, Value> = HashMap::new();
    while done.len() < UPLOADS {
        for id in &ids {
            if done.contains_key(id) {
                continue;
            }
            let s: Value = client
                .get(format!("{base}/v1/requests/{id}?limit=1000"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if is_terminal(&s) && s["webhook"]["status"] != "pending" {
                done.insert(id.clone(), s);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} of {UPLOADS} requests finished in time",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total_time = started.elapsed();

    for (id, s) in &done {
        assert_eq!(s["status"], "completed", "{id}");
        assert_eq!(s["progress"]["total"], per_upload);
        assert_eq!(
            s["progress"]["succeeded"], per_upload,
            "{id}: every image counted once"
        );
        let listed = s["products"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["images"].as_array().unwrap().clone())
            .filter(|i| i["status"] == "succeeded")
            .count();
        assert_eq!(listed as u64, per_upload);
        assert_eq!(s["webhook"]["status"], "delivered");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill().ok();
    server.wait().ok();
    let calls = hook.calls();
    let mut per_request: HashMap<String, usize> = HashMap::new();
    for c in &calls {
        *per_request
            .entry(c.json()["request_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_request.len(), UPLOADS, "a webhook for every request");
    assert!(
        per_request.values().all(|&n| n == 1),
        "exactly one webhook each"
    );
    eprintln!(
        "{UPLOADS} concurrent uploads of {ROWS} rows ({} images): all accepted in {upload_time:?}, all complete in {total_time:?}",
        UPLOADS as u64 * per_upload
    );
}
