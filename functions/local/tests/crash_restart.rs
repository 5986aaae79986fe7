//! `kill -9` of `imgproc-local serve` at random moments of a 500-image
//! request, several times, then a restart: the request completes with exact
//! counts, every image processed and stored once, and exactly one webhook.
//! The moments come from a seed printed by the test; `CRASH_SEED=<n>`
//! replays a run.

#[path = "../../../shared/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ImageServer, PHOTOS, WebhookReceiver, csv_of, is_terminal};
use serde_json::Value;

fn serve(data: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_imgproc-local"))
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
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

async fn status(client: &reqwest::Client, base: &str, id: &str) -> Value {
    client
        .get(format!("{base}/v1/requests/{id}?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Images finished so far (the progress needs no page of products).
async fn finished(client: &reqwest::Client, base: &str, id: &str) -> u64 {
    let s: Value = client
        .get(format!("{base}/v1/requests/{id}?limit=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    s["progress"]["succeeded"].as_u64().unwrap() + s["progress"]["failed"].as_u64().unwrap()
}

/// A small xorshift generator: the kill moments, reproducible from the seed.
struct Moments(u64);

impl Moments {
    fn from_env_or_clock() -> (u64, Self) {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        (seed, Self(seed.max(1)))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

const IMAGES: u64 = 500;
const KILLS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_moments_then_restart_loses_nothing_and_counts_nothing_twice() {
    let (seed, mut rng) = Moments::from_env_or_clock();
    eprintln!("CRASH_SEED={seed}");
    let images = ImageServer::start().await;
    let hook = WebhookReceiver::start(0).await;
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    // 500 images (100 products of 5), each served slowly enough that the
    // kills land mid-request; every URL distinct so each is fetched anew.
    let rows: Vec<(u64, &str, Vec<String>)> = (0..IMAGES / 5)
        .map(|r| {
            (
                r + 1,
                "Product",
                (0..5u64)
                    .map(|i| {
                        images.url(&format!(
                            "/slow/40/{}?n={}",
                            PHOTOS[((r * 5 + i) % 7) as usize],
                            r * 5 + i
                        ))
                    })
                    .collect(),
            )
        })
        .collect();
    let mut server = serve(data.path(), port);
    common::wait_healthy(&client, &base).await;
    let accepted = common::post_csv(
        client.post(format!("{base}/v1/requests?webhook_url={}", hook.url())),
        csv_of(&rows),
    )
    .await;
    let id = accepted["request_id"]
        .as_str()
        .expect("accepted")
        .to_owned();
    assert_eq!(accepted["images"], IMAGES);

    // Random moments: a progress mark in each fifth of the first 90 %, then
    // a random 0-150 ms more, so kills land between and inside jobs alike.
    let mut marks: Vec<u64> = (0..KILLS as u64)
        .map(|k| k * IMAGES * 9 / 10 / KILLS as u64 + rng.below(IMAGES * 9 / 10 / KILLS as u64))
        .collect();
    marks.sort_unstable();
    let mut killed_at = Vec::new();
    for mark in marks {
        let deadline = Instant::now() + Duration::from_secs(120);
        while finished(&client, &base, &id).await < mark {
            assert!(Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(150))).await;
        server.kill().expect("SIGKILL");
        server.wait().unwrap();
        server = serve(data.path(), port);
        common::wait_healthy(&client, &base).await;
        let done = finished(&client, &base, &id).await;
        assert!(done < IMAGES, "killed mid-request ({done} finished)");
        killed_at.push(done);
    }
    eprintln!("killed at {killed_at:?} of {IMAGES} images finished");

    let deadline = Instant::now() + Duration::from_secs(240);
    let s = loop {
        let s = status(&client, &base, &id).await;
        if is_terminal(&s) && s["webhook"]["status"] != "pending" {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "request did not finish: {}",
            s["progress"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(s["status"], "completed", "{:#}", s["products"][0]);
    assert_eq!(s["progress"]["total"], IMAGES);
    assert_eq!(
        s["progress"]["succeeded"], IMAGES,
        "every image processed, none counted twice"
    );
    assert_eq!(s["progress"]["failed"], 0);
    let listed: Vec<Value> = s["products"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["images"].as_array().unwrap().clone())
        .collect();
    assert_eq!(listed.len() as u64, IMAGES);
    assert!(
        listed
            .iter()
            .all(|i| i["status"] == "succeeded" && i["output_url"].is_string()),
        "every image has its output"
    );
    let stored = std::fs::read_dir(data.path().join("objects/processed").join(&id))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|e| e == "jpg")
        })
        .count();
    assert_eq!(stored as u64, IMAGES, "one stored file per image");
    // The output CSV names one output per input, all distinct.
    let csv_out = client
        .get(format!("{base}/v1/requests/{id}/output.csv"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut outputs: Vec<String> = csv::Reader::from_reader(csv_out.as_bytes())
        .records()
        .flat_map(|r| {
            r.unwrap()[3]
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    outputs.sort();
    outputs.dedup();
    assert_eq!(outputs.len() as u64, IMAGES);
    // Give a duplicate delivery the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill().ok();
    server.wait().ok();
    let calls = hook.calls();
    assert_eq!(calls.len(), 1, "exactly one webhook");
    assert_eq!(calls[0].json()["progress"]["succeeded"], IMAGES);
    assert_eq!(s["webhook"]["status"], "delivered");
}
