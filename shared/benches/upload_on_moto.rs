//! How long the AWS `upload` function takes to accept a large CSV when its
//! DynamoDB table and SQS queue are a moto server (BENCHMARKS.md, target 6).
//!
//! The function is `lambda_http::run(api::router(app))` on the adapters of
//! `lambda::app_from_env`; this drives that router on those adapters, without
//! the Lambda runtime's envelope. Each upload stores the request, its
//! products and images (`BatchWriteItem`) and queues one message per image
//! (`SendMessageBatch`); the time is from the first byte sent to the `202`.
//!
//! `bench/upload.sh` starts moto, writes the CSV and runs this with
//! `UPLOAD_CSV=<file>` (and `UPLOAD_RUNS`, default 3).

use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use imgproc::api;
use tower::ServiceExt;

#[tokio::main]
async fn main() {
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        eprintln!("skipped: AWS_ENDPOINT_URL is not set; run bench/upload.sh, which starts moto");
        return;
    }
    let Ok(path) = std::env::var("UPLOAD_CSV") else {
        eprintln!("skipped: UPLOAD_CSV names no CSV file; run bench/upload.sh, which writes one");
        return;
    };
    let csv = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let runs: usize = std::env::var("UPLOAD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (app, _) = imgproc::lambda::app_from_env()
        .await
        .expect("the AWS app starts on moto");
    let router = api::router(app);

    for run in 1..=runs {
        let request = Request::post("/v1/requests")
            .header(header::CONTENT_TYPE, "text/csv")
            .body(Body::from(csv.clone()))
            .expect("request");
        let started = Instant::now();
        let response = router
            .clone()
            .oneshot(request)
            .await
            .expect("router answers");
        let elapsed = started.elapsed();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let answer: serde_json::Value = serde_json::from_slice(&body).expect("JSON answer");
        println!(
            "upload on moto, run {run}: {:.2} s for {} products, {} images ({} bytes)",
            elapsed.as_secs_f64(),
            answer["products"],
            answer["images"],
            csv.len()
        );
    }
}
