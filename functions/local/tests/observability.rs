//! What an operator sees of a real run of `imgproc-local --log-json serve`:
//! JSON log lines in which every line of a request's work names the
//! request (and the image, where there is one) and no secret or webhook
//! body appears; and `GET /metrics` counting exactly what the request went
//! through, a retry and a failed webhook attempt included.

#[path = "../../../shared/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ImageServer, WebhookReceiver, csv_of, is_terminal};
use serde_json::Value;

const API_TOKEN: &str = "api-token-never-logged";
const WEBHOOK_SECRET: &str = "webhook-secret-never-logged";
/// In the webhook URL's query: receivers put credentials there.
const HOOK_TOKEN: &str = "hook-token-never-logged";
/// In an image URL's query, as in a presigned URL.
const IMAGE_TOKEN: &str = "image-signature-never-logged";

/// `name value` lines of an OpenMetrics text, by name with labels.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, value)| value.parse().ok().map(|v| (name.to_owned(), v)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_request_and_metrics_count_it_exactly() {
    let images = ImageServer::start().await;
    // The first webhook attempt gets a 500, the second a 204.
    let hook = WebhookReceiver::start(1).await;
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log_path = data.path().join("stderr.jsonl");
    let mut server = Command::new(env!("CARGO_BIN_EXE_imgproc-local"))
        .args([
            "--log-json",
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data.path().join("data"))
        .env("ALLOW_PRIVATE_NETWORKS", "true")
        .env("RETRY_BASE_DELAY_MS", "20")
        .env("WEBHOOK_RETRY_SCHEDULE", "20ms")
        .env("WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("API_TOKEN", API_TOKEN)
        .env("IMGPROC_WORKERS", "4")
        // The default level of `serve`, as an operator runs it.
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("imgproc-local starts");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    common::wait_healthy(&client, &base).await;

    // Given six images: four good ones (one behind a 503 the first time,
    // one with a token in its URL), one that answers 404, and one on a
    // port where nothing listens (its URL carries a token too).
    let closed = common::free_port();
    let rows = vec![
        (
            7,
            "Coffee",
            vec![
                images.url(&format!("/photos/coffee.jpg?sig={IMAGE_TOKEN}")),
                images.photo("chelsea-cat.png"),
            ],
        ),
        (
            8,
            "Brushes",
            vec![
                images.photo("paint-brushes.webp"),
                images.url("/status/404"),
            ],
        ),
        (
            9,
            "Rocket",
            vec![
                images.url("/flaky/1/rocket-launch.gif"),
                format!("http://127.0.0.1:{closed}/gone.jpg?sig={IMAGE_TOKEN}"),
            ],
        ),
    ];
    let webhook_url = format!("{}?token={HOOK_TOKEN}", hook.url());
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("webhook_url", &webhook_url)
        .finish();
    let accepted = common::post_csv(
        client
            .post(format!("{base}/v1/requests?{query}"))
            .bearer_auth(API_TOKEN),
        csv_of(&rows),
    )
    .await;
    let id = accepted["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("accepted: {accepted}"))
        .to_owned();

    // When the request has finished and its webhook has been delivered,
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s: Value = client
            .get(format!("{base}/v1/requests/{id}"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if is_terminal(&s) && s["webhook"]["status"] != "pending" {
            break s;
        }
        assert!(Instant::now() < deadline, "the request did not finish: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["progress"]["succeeded"], 4);
    assert_eq!(status["webhook"]["status"], "delivered");

    // then /metrics (no token needed) counts exactly that.
    let response = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "a complete exposition");
    let m = samples(&text);
    let all_images: Vec<&Value> = status["products"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["images"].as_array().unwrap())
        .collect();
    let bytes = |field: &str| {
        all_images
            .iter()
            .filter(|i| i["status"] == "succeeded")
            .filter_map(|i| i[field].as_f64())
            .sum::<f64>()
    };
    let expected = [
        ("imgproc_requests_accepted_total", 1.0),
        ("imgproc_images_queued_total", 6.0),
        ("imgproc_images_succeeded_total", 4.0),
        ("imgproc_images_failed_total{code=\"http_status\"}", 1.0),
        ("imgproc_images_failed_total{code=\"fetch_failed\"}", 1.0),
        ("imgproc_images_failed_total{code=\"not_an_image\"}", 0.0),
        ("imgproc_image_retries_total{code=\"http_status\"}", 1.0),
        // MAX_ATTEMPTS is 3: two retries, then the image fails.
        ("imgproc_image_retries_total{code=\"fetch_failed\"}", 2.0),
        ("imgproc_input_bytes_total", bytes("input_bytes")),
        ("imgproc_output_bytes_total", bytes("output_bytes")),
        ("imgproc_compression_ratio_count", 4.0),
        ("imgproc_download_seconds_count", 4.0),
        ("imgproc_decode_seconds_count", 4.0),
        ("imgproc_encode_seconds_count", 4.0),
        (
            "imgproc_requests_completed_total{status=\"completed_with_errors\"}",
            1.0,
        ),
        (
            "imgproc_requests_completed_total{status=\"completed\"}",
            0.0,
        ),
        ("imgproc_webhook_attempts_total", 2.0),
        ("imgproc_webhook_attempts_failed_total", 1.0),
        ("imgproc_webhooks_delivered_total", 1.0),
        ("imgproc_webhooks_failed_total", 0.0),
    ];
    for (name, value) in expected {
        assert_eq!(m.get(name), Some(&value), "{name} in\n{text}");
    }
    assert!(bytes("input_bytes") > bytes("output_bytes"));

    server.kill().ok();
    server.wait().ok();

    // Every line of stderr is a JSON object; every line after start-up is
    // work on the request and names it.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let work: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] != "imgproc-local serving")
        .collect();
    assert!(work.len() >= 10, "{log}");
    for line in &work {
        assert_eq!(
            line["span"]["request_id"],
            id.as_str(),
            "a line of the request's work without its ID: {line}"
        );
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
    }
    let with = |message: &str| {
        work.iter()
            .filter(|l| l["message"] == message)
            .copied()
            .collect::<Vec<_>>()
    };
    assert_eq!(with("request accepted").len(), 1);
    assert_eq!(with("request accepted")[0]["images"], 6);
    let succeeded = with("image succeeded");
    assert_eq!(succeeded.len(), 4);
    let mut named: Vec<(u64, u64)> = succeeded
        .iter()
        .map(|l| {
            (
                l["span"]["serial_number"].as_u64().unwrap(),
                l["span"]["image"].as_u64().unwrap(),
            )
        })
        .collect();
    named.sort();
    assert_eq!(
        named,
        vec![(7, 1), (7, 2), (8, 1), (9, 1)],
        "each image line names its product and image"
    );
    assert!(
        succeeded
            .iter()
            .all(|l| l["decode_ms"].is_u64() && l["download_ms"].is_u64())
    );
    // One retry of the 503, two of the closed port (each line naming its image).
    let mut retried: Vec<(Value, Value, Value)> = with("image failed, will retry")
        .iter()
        .map(|l| {
            (
                l["span"]["image"].clone(),
                l["span"]["attempt"].clone(),
                l["code"].clone(),
            )
        })
        .collect();
    retried.sort_by_key(|r| (r.0.as_u64(), r.1.as_u64()));
    assert_eq!(
        retried,
        vec![
            (1.into(), 1.into(), "http_status".into()),
            (2.into(), 1.into(), "fetch_failed".into()),
            (2.into(), 2.into(), "fetch_failed".into()),
        ]
    );
    let mut failed: Vec<(Value, Value, Value)> = with("image failed")
        .iter()
        .map(|l| {
            (
                l["span"]["serial_number"].clone(),
                l["span"]["image"].clone(),
                l["code"].clone(),
            )
        })
        .collect();
    failed.sort_by_key(|f| f.0.as_u64());
    assert_eq!(
        failed,
        vec![
            (8.into(), 2.into(), "http_status".into()),
            (9.into(), 2.into(), "fetch_failed".into())
        ]
    );
    assert_eq!(with("request finished").len(), 1);
    assert_eq!(with("webhook answered with an error").len(), 1);
    assert_eq!(with("webhook delivered").len(), 1);
    assert_eq!(with("webhook delivered")[0]["webhook_host"], "127.0.0.1");

    // No secret, no credential from a URL, no webhook body.
    let body = hook.calls()[1].body.clone();
    for secret in [
        API_TOKEN,
        WEBHOOK_SECRET,
        HOOK_TOKEN,
        IMAGE_TOKEN,
        "request.completed",
        "sha256=",
    ] {
        assert!(!log.contains(secret), "{secret:?} reached the log:\n{log}");
    }
    assert!(!log.contains(std::str::from_utf8(&body).unwrap()));
}
