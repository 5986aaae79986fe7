//! `MAX_CONCURRENT_PER_HOST` in the local runner: fifty jobs to one host,
//! more workers than the cap, and a server that counts the downloads it is
//! answering at once. (The same on the AWS handlers, on moto, is in
//! `aws_end_to_end.rs`.)

mod common;

use std::time::Duration;

use common::service::Service;
use common::{ConcurrencyServer, csv_of};
use serde_json::Value;

const IMAGES: usize = 50;

fn statuses(status: &Value) -> Vec<String> {
    status["products"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["images"].as_array().unwrap().clone())
        .map(|i| i["status"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Submits one product per URL and waits for the request to end.
async fn run(svc: &Service, urls: Vec<String>) -> Value {
    let rows: Vec<(u64, &str, Vec<String>)> = urls
        .into_iter()
        .enumerate()
        .map(|(i, url)| (i as u64 + 1, "Photo", vec![url]))
        .collect();
    let accepted = svc.submit(&csv_of(&rows)).await;
    let id = accepted["request_id"].as_str().unwrap().to_owned();
    svc.wait_done(&id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_host_cap_holds_under_fifty_concurrent_jobs_to_one_host() {
    let photos = ConcurrencyServer::start(Duration::from_millis(150)).await;
    let svc = Service::start_with(&[("MAX_CONCURRENT_PER_HOST", "3")], |o| o.workers = 16).await;
    let status = run(&svc, photos.urls(IMAGES)).await;
    assert_eq!(status["status"], "completed", "{status:#}");
    assert_eq!(status["progress"]["succeeded"], IMAGES);
    assert!(statuses(&status).iter().all(|s| s == "succeeded"));
    assert_eq!(
        photos.max_in_flight(),
        3,
        "at most 3 downloads at once, and the cap was reached"
    );
    // Waiting for a slot is no attempt: every photo was downloaded once.
    assert_eq!(photos.served() as usize, IMAGES);
    svc.runtime.shutdown().await;

    // The same jobs with the cap lifted: the pool does overlap downloads,
    // so the bound above is the cap's doing.
    photos.reset_max();
    let unlimited =
        Service::start_with(&[("MAX_CONCURRENT_PER_HOST", "0")], |o| o.workers = 16).await;
    let status = run(&unlimited, photos.urls(IMAGES)).await;
    assert_eq!(status["status"], "completed", "{status:#}");
    assert!(
        photos.max_in_flight() > 3,
        "without the cap {} downloads overlapped",
        photos.max_in_flight()
    );
    eprintln!(
        "{IMAGES} images to one host: at most 3 downloads at once with MAX_CONCURRENT_PER_HOST=3, {} without",
        photos.max_in_flight()
    );
    unlimited.runtime.shutdown().await;
}
