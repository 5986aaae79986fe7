//! The AWS path end to end on a moto server: the upload route → messages
//! received from SQS, handed to the process handler as an `SqsEvent` →
//! records read from DynamoDB Streams, handed to the notify handler → its
//! messages on the webhook queue, handed to the deliver handler → one
//! signed webhook call; the status route agrees. Also: duplicate SQS
//! deliveries, a repeated S3 event, a rejected S3 drop, and webhooks
//! retried on their schedule through delayed messages.
//!
//! The metrics the handlers publish along the way are captured as the EMF
//! lines a Lambda function writes to stdout (and printed, as it would),
//! held to the EMF JSON schema and the specification's other rules, and
//! added up: they must agree exactly with what the request went through.
//!
//! Needs `--features stream-poller` and `MOTO_ENDPOINT` (scripts/test-aws.sh
//! sets both up); without the endpoint every test says why and passes.
#![cfg(feature = "stream-poller")]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::SqsBatchResponse;
use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::{get, post};
use common::WebhookReceiver;
use futures_util::future::join_all;
use http_body_util::BodyExt;
use imgproc::adapters::dynamo::WriteLog;
use imgproc::config::Config;
use imgproc::domain::{
    ErrorCode, ImageJob, ImageKey, ImageStatus, Progress, RequestRecord, RequestStatus,
    WebhookStatus,
};
use imgproc::lambda::handlers::ingest::{self, IngestOutcome};
use imgproc::lambda::handlers::{deadletter, deliver, fanout, notify, process};
use imgproc::lambda::{
    Adapters, Clients, DynamoStore, RowsBucket, S3Objects, SqsFanOut, SqsQueue, SqsWebhookQueue,
    app_with_metrics, stream_poller,
};
use imgproc::metrics::EmfRecorder;
use imgproc::ports::{FanOutClaim, JobQueue, JobSource, JobStore, ObjectStore, WebhookJob};
use imgproc::services::App;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

const SECRET: &str = "webhook-secret-for-tests";
/// Where the service says clients reach it: output URLs are under `files/`.
const PUBLIC_URL: &str = "https://imgproc.example.test/";
const REQUEST_ID_SECRET: &str = "request-id-secret-for-tests-0123456789";

fn moto() -> Option<String> {
    match std::env::var("MOTO_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            eprintln!(
                "skipped: MOTO_ENDPOINT is not set (run scripts/test-aws.sh to run the AWS end-to-end tests on moto)"
            );
            None
        }
    }
}

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} must be set (eval \"$(infra/moto-up.sh)\")"))
}

/// Serves the example photographs, and 404 for anything else.
async fn photo_server() -> SocketAddr {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/photos");
    let app = Router::new()
        .route(
            "/photos/{name}",
            get(
                |State(dir): State<Arc<PathBuf>>, Path(name): Path<String>| async move {
                    match (
                        name.contains('/') || name.contains(".."),
                        tokio::fs::read(dir.join(&name)).await,
                    ) {
                        (false, Ok(bytes)) => (StatusCode::OK, bytes),
                        _ => (StatusCode::NOT_FOUND, Vec::new()),
                    }
                },
            ),
        )
        .with_state(Arc::new(dir));
    serve(app).await
}

type Calls = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// Records every webhook call and answers 204.
async fn webhook_receiver() -> (SocketAddr, Calls) {
    let calls: Calls = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(calls): State<Calls>, headers: HeaderMap, body: Bytes| async move {
                    calls.lock().unwrap().push((headers, body));
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(calls.clone());
    (serve(app).await, calls)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

struct Harness {
    app: Arc<App>,
    adapters: Adapters,
    clients: Clients,
    queue_arn: String,
    /// The webhook queue of this harness alone, and its ARN.
    webhooks: SqsWebhookQueue,
    webhooks_arn: String,
    /// Every EMF line the app wrote.
    emf: Arc<Mutex<Vec<String>>>,
}

/// A queue on moto for one harness, and its ARN.
async fn create_queue(clients: &Clients, prefix: &str) -> (String, String) {
    let queue_url = clients
        .sqs
        .create_queue()
        .queue_name(format!("{prefix}-{}", Uuid::new_v4()))
        .send()
        .await
        .expect("create a queue on moto")
        .queue_url
        .expect("queue URL");
    let queue_arn = format!(
        "arn:aws:sqs:{}:123456789012:{}",
        env("AWS_REGION"),
        queue_url.rsplit('/').next().unwrap_or("")
    );
    (queue_url, queue_arn)
}

/// The app on moto's table and bucket, with queues of its own so that
/// tests running side by side never take each other's messages.
async fn harness() -> Harness {
    harness_with(&[]).await
}

/// [`harness`] with these settings on top of the tests' own.
async fn harness_with(settings: &[(&str, &str)]) -> Harness {
    let clients = Clients::new(&Config::from_env().unwrap()).await;
    let (queue_url, queue_arn) = create_queue(&clients, "e2e").await;
    let (webhooks_url, webhooks_arn) = create_queue(&clients, "e2e-webhooks").await;
    let settings: std::collections::HashMap<String, String> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Config::from_lookup(|name| {
        if let Some(v) = settings.get(name) {
            return Some(v.clone());
        }
        match name {
            "PUBLIC_URL" => Some(PUBLIC_URL.into()),
            "ALLOW_PRIVATE_NETWORKS" => Some("true".into()),
            "WEBHOOK_SECRET" => Some(SECRET.into()),
            "REQUEST_ID_SECRET" => Some(REQUEST_ID_SECRET.into()),
            "RETRY_BASE_DELAY_MS" => Some("10".into()),
            "FETCH_TIMEOUT_SECS" => Some("10".into()),
            "METRICS_NAMESPACE" => Some(NAMESPACE.into()),
            "WEBHOOK_RETRY_SCHEDULE" => Some("0s,1s,1s".into()),
            _ => None,
        }
    })
    .unwrap();
    let adapters = Adapters {
        store: DynamoStore::new(
            clients.dynamodb.clone(),
            env("TABLE_NAME"),
            RowsBucket::new(clients.s3.clone(), env("BUCKET")),
        ),
        queue: SqsQueue::new(clients.sqs.clone(), queue_url),
        fanout: None,
        objects: S3Objects::new(
            clients.s3.clone(),
            env("BUCKET"),
            format!("{PUBLIC_URL}files/"),
        ),
    };
    let emf: Arc<Mutex<Vec<String>>> = Arc::default();
    let captured = emf.clone();
    let recorder = EmfRecorder::with_sink(config.metrics_namespace.clone(), move |line| {
        // What the Lambda function writes to stdout (shown with --nocapture).
        print!("{line}");
        captured.lock().unwrap().push(line.to_owned());
    });
    let app = app_with_metrics(config, &adapters, Arc::new(recorder)).unwrap();
    let webhooks = SqsWebhookQueue::new(clients.sqs.clone(), webhooks_url);
    Harness {
        app,
        adapters,
        clients,
        queue_arn,
        webhooks,
        webhooks_arn,
        emf,
    }
}

const NAMESPACE: &str = "imgproc/e2e";

fn emf_schema() -> Value {
    serde_json::from_str(include_str!("fixtures/emf.schema.json")).expect("the EMF schema is JSON")
}

/// Parses one EMF line and holds it to the schema and to the rules of the
/// specification a schema cannot state: one JSON object on one line, every
/// dimension a string member of the root, every metric a number (or an
/// array of at most 100 numbers) on the root.
fn assert_emf(line: &str, validator: &jsonschema::Validator) -> Value {
    let body = line
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("an EMF document is one line: {line:?}"));
    assert!(
        !body.contains('\n'),
        "an EMF document is one line: {line:?}"
    );
    let doc: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "not a valid EMF document:\n{}\n{doc:#}",
        errors.join("\n")
    );
    let directives = doc["_aws"]["CloudWatchMetrics"].as_array().unwrap();
    assert!(!directives.is_empty(), "no metric in {doc}");
    for directive in directives {
        assert_eq!(directive["Namespace"], NAMESPACE);
        for name in directive["Dimensions"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|set| set.as_array().unwrap())
        {
            assert!(
                doc[name.as_str().unwrap()].is_string(),
                "dimension {name} is not a string member: {doc}"
            );
        }
        for metric in directive["Metrics"].as_array().unwrap() {
            let value = &doc[metric["Name"].as_str().unwrap()];
            let numeric = value.is_number()
                || value
                    .as_array()
                    .is_some_and(|a| a.len() <= 100 && a.iter().all(Value::is_number));
            assert!(
                numeric,
                "metric {} has no numeric member: {doc}",
                metric["Name"]
            );
        }
    }
    doc
}

impl Harness {
    /// The EMF documents written so far, each checked by [`assert_emf`].
    fn emf_documents(&self) -> Vec<Value> {
        let validator = jsonschema::options()
            .build(&emf_schema())
            .expect("the EMF schema compiles");
        self.emf
            .lock()
            .unwrap()
            .iter()
            .map(|line| assert_emf(line, &validator))
            .collect()
    }
}

#[test]
fn the_emf_checks_refuse_what_cloudwatch_would_not_extract() {
    let validator = jsonschema::options()
        .build(&emf_schema())
        .expect("the EMF schema compiles");
    let good = json!({
        "_aws": {"Timestamp": 1_764_345_600_000u64, "CloudWatchMetrics": [
            {"Namespace": NAMESPACE, "Dimensions": [["ErrorCode"], []], "Metrics": [{"Name": "ImagesFailed", "Unit": "Count"}]}]},
        "ErrorCode": "timeout",
        "ImagesFailed": 1,
    });
    assert_emf(&format!("{good}\n"), &validator);
    let mut bad = Vec::new();
    let mut no_timestamp = good.clone();
    no_timestamp["_aws"]
        .as_object_mut()
        .unwrap()
        .remove("Timestamp");
    bad.push(no_timestamp);
    let mut unknown_unit = good.clone();
    unknown_unit["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"] = json!("Millis");
    bad.push(unknown_unit);
    let mut no_dimension_set = good.clone();
    no_dimension_set["_aws"]["CloudWatchMetrics"][0]["Dimensions"] = json!([]);
    bad.push(no_dimension_set);
    let mut dimension_not_a_string = good.clone();
    dimension_not_a_string["ErrorCode"] = json!(7);
    bad.push(dimension_not_a_string);
    let mut metric_missing = good.clone();
    metric_missing
        .as_object_mut()
        .unwrap()
        .remove("ImagesFailed");
    bad.push(metric_missing);
    let mut metric_not_a_number = good.clone();
    metric_not_a_number["ImagesFailed"] = json!("1");
    bad.push(metric_not_a_number);
    for doc in bad {
        let line = format!("{doc}\n");
        let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_emf(&line, &validator)
        }))
        .is_err();
        assert!(refused, "accepted an invalid EMF document: {doc}");
    }
    let two_lines = format!("{good}\n{good}\n");
    assert!(
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| assert_emf(
            &two_lines, &validator
        )))
        .is_err(),
        "two documents in one line"
    );
}

/// The sum of `metric` over the documents about request `id`.
fn total(docs: &[Value], id: Uuid, metric: &str) -> f64 {
    docs.iter()
        .filter(|d| d["request_id"] == id.to_string())
        .filter_map(|d| d[metric].as_f64())
        .sum()
}

impl Harness {
    /// One receive call's messages from the image job queue, shaped as the
    /// records of the Lambda SQS event the event source mapping would send.
    async fn receive_records(&self) -> Vec<Value> {
        self.receive_records_from(self.adapters.queue.queue_url(), &self.queue_arn)
            .await
    }

    /// One receive call's messages from the queue at `url`, as Lambda event records.
    async fn receive_records_from(&self, url: &str, arn: &str) -> Vec<Value> {
        let out = self
            .clients
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        out.messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let attributes: serde_json::Map<String, Value> = m
                    .attributes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k.as_str().to_owned(), Value::String(v)))
                    .collect();
                json!({
                    "messageId": m.message_id,
                    "receiptHandle": m.receipt_handle,
                    "body": m.body,
                    "attributes": attributes,
                    "messageAttributes": {},
                    "md5OfBody": m.md5_of_body,
                    "eventSource": "aws:sqs",
                    "eventSourceARN": arn,
                    "awsRegion": env("AWS_REGION"),
                })
            })
            .collect()
    }

    /// Receives messages until `n` arrived (or the deadline).
    async fn receive_event(&self, n: usize) -> SqsEvent {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut records = Vec::new();
        while records.len() < n && Instant::now() < deadline {
            records.extend(self.receive_records().await);
        }
        serde_json::from_value(json!({ "Records": records })).unwrap()
    }

    /// Receives every message the queue holds (until a receive comes back empty).
    async fn receive_all(&self) -> SqsEvent {
        let mut records = Vec::new();
        loop {
            let batch = self.receive_records().await;
            if batch.is_empty() {
                break;
            }
            records.extend(batch);
        }
        serde_json::from_value(json!({ "Records": records })).unwrap()
    }

    /// Runs the process handler on `event` and, like Lambda, deletes the
    /// messages it did not report as failed.
    async fn process(&self, event: SqsEvent) -> Vec<String> {
        let response = process::handle(&self.app, &self.adapters.queue, event.clone(), None).await;
        let failed: Vec<String> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        for m in &event.records {
            if !failed.contains(m.message_id.as_ref().unwrap()) {
                self.adapters
                    .queue
                    .ack(m.receipt_handle.as_deref().unwrap())
                    .await
                    .unwrap();
            }
        }
        failed
    }

    /// One batch of the webhook queue (empty when no message is visible),
    /// as the deliver function's event.
    async fn receive_webhook_event(&self) -> SqsEvent {
        let records = self
            .receive_records_from(self.webhooks.queue_url(), &self.webhooks_arn)
            .await;
        serde_json::from_value(json!({ "Records": records })).unwrap()
    }

    /// Runs the deliver handler on `event` and, like Lambda, deletes the
    /// messages it did not report as failed.
    async fn deliver(&self, event: SqsEvent) -> SqsBatchResponse {
        let response = deliver::handle(&self.app, &self.webhooks, event.clone()).await;
        for m in &event.records {
            let failed = response
                .batch_item_failures
                .iter()
                .any(|f| Some(&f.item_identifier) == m.message_id.as_ref());
            if !failed {
                self.clients
                    .sqs
                    .delete_message()
                    .queue_url(self.webhooks.queue_url())
                    .receipt_handle(m.receipt_handle.as_deref().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
        response
    }

    /// Plays the deliver function's event source mapping: hands every
    /// message that becomes visible on the webhook queue (delayed ones when
    /// their delay ends) to the deliver handler, until the webhooks of
    /// `ids` have settled (delivered or failed). Returns the batches handed over.
    async fn deliver_until_settled(&self, ids: &[Uuid], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        let mut batches = 0;
        loop {
            let mut settled = true;
            for id in ids {
                let r = self.adapters.store.get_request(*id).await.unwrap().unwrap();
                settled &= r.webhook.is_none_or(|w| w.status != WebhookStatus::Pending);
            }
            if settled {
                return batches;
            }
            assert!(
                Instant::now() < deadline,
                "webhooks of {ids:?} not settled within {within:?}"
            );
            let event = self.receive_webhook_event().await;
            if event.records.is_empty() {
                // moto's server answers one call at a time: no long polling.
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else {
                batches += 1;
                self.deliver(event).await;
            }
        }
    }

    /// Queues the webhook of request `id` as the notify function would,
    /// from the request's stream records.
    async fn notify(&self, id: Uuid) {
        let stream = self.stream_event(id).await;
        let response = notify::handle(&self.webhooks, stream).await;
        assert!(response.batch_item_failures.is_empty());
    }

    /// The stream records of one request, as the notify function's event.
    async fn stream_event(&self, request_id: Uuid) -> aws_lambda_events::event::dynamodb::Event {
        let streams = aws_sdk_dynamodbstreams::Client::new(
            &aws_config::defaults(aws_config::BehaviorVersion::latest())
                .load()
                .await,
        );
        let arn = self
            .clients
            .dynamodb
            .describe_table()
            .table_name(env("TABLE_NAME"))
            .send()
            .await
            .unwrap()
            .table
            .and_then(|t| t.latest_stream_arn)
            .expect("the table has a stream");
        let pk = format!("REQ#{request_id}");
        let records: Vec<_> = stream_poller::read_all(&streams, &arn)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| {
                r.dynamodb
                    .as_ref()
                    .and_then(|d| d.keys.as_ref())
                    .and_then(|k| k.get("pk"))
                    .and_then(|v| v.as_s().ok())
                    == Some(&pk)
            })
            .collect();
        stream_poller::lambda_event(&records, &arn).unwrap()
    }
}

async fn call(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn json_of(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_process_notify_and_status_on_moto() {
    if moto().is_none() {
        return;
    }
    let h = harness().await;
    let photos = photo_server().await;
    let (hook, calls) = webhook_receiver().await;
    let router = imgproc::api::router(h.app.clone());

    // Given a CSV of real photographs, one of them missing.
    let csv = format!(
        "S. No.,Product Name,Input Image Urls\n\
         1,Coffee,\"http://{photos}/photos/coffee.jpg,http://{photos}/photos/chelsea-cat.png\"\n\
         2,Brushes,\"http://{photos}/photos/paint-brushes.webp,http://{photos}/photos/missing.jpg\"\n"
    );
    let webhook_url = format!("http://{hook}/hook");
    let upload = Request::post(format!("/v1/requests?webhook_url={webhook_url}"))
        .header("content-type", "text/csv")
        .body(Body::from(csv))
        .unwrap();
    let (status, headers, body) = call(&router, upload).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let accepted = json_of(&body);
    let id: Uuid = accepted["request_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        (accepted["products"].as_u64(), accepted["images"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(headers["location"], format!("/v1/requests/{id}").as_str());

    // When the queue's four messages reach the process handler — the first
    // one twice in one batch and once more concurrently in another —
    let event = h.receive_event(4).await;
    assert_eq!(event.records.len(), 4, "one message per image");
    let coffee = event
        .records
        .iter()
        .find(|m| m.body.as_deref().unwrap_or("").contains("coffee.jpg"))
        .unwrap()
        .clone();
    let mut doubled = event.clone();
    doubled.records = vec![coffee.clone(), coffee.clone()];
    let duplicates = join_all([
        process::handle(&h.app, &h.adapters.queue, doubled.clone(), None),
        process::handle(&h.app, &h.adapters.queue, doubled, None),
    ])
    .await;
    assert!(duplicates.iter().all(|r| r.batch_item_failures.is_empty()));
    let r = h.adapters.store.get_request(id).await.unwrap().unwrap();
    assert_eq!(
        r.progress,
        Progress {
            total: 4,
            succeeded: 1,
            failed: 0
        },
        "four deliveries of one image count once"
    );

    let failed = h.process(event).await;
    assert!(failed.is_empty(), "nothing to retry: {failed:?}");

    // then every image has finished and the request is terminal, once.
    let r = h.adapters.store.get_request(id).await.unwrap().unwrap();
    assert_eq!(
        r.progress,
        Progress {
            total: 4,
            succeeded: 3,
            failed: 1
        }
    );
    assert_eq!(r.terminal, Some(RequestStatus::CompletedWithErrors));
    let missing = ImageKey {
        request_id: id,
        product: 1,
        image: 2,
        ordinal: 3,
        total: 4,
    };
    assert_eq!(
        h.adapters.store.image_status(missing).await.unwrap(),
        Some(ImageStatus::Failed)
    );
    let stored = h
        .adapters
        .objects
        .fetch(&env("BUCKET"), &format!("processed/{id}/1/1.jpg"), u64::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&stored.body[..3], b"\xff\xd8\xff", "a JPEG was stored");
    assert!(
        h.adapters
            .objects
            .fetch(&env("BUCKET"), &format!("results/{id}.csv"), u64::MAX)
            .await
            .unwrap()
            .is_some()
    );

    // When the stream's records reach the notify handler (twice, as a retry would),
    let stream = h.stream_event(id).await;
    assert!(
        stream
            .records
            .iter()
            .any(|r| notify::became_terminal(r) == Some(id)),
        "the stream shows the terminal transition"
    );
    // and the deliver handler takes what they queued,
    for _ in 0..2 {
        let response = notify::handle(&h.webhooks, stream.clone()).await;
        assert!(response.batch_item_failures.is_empty());
    }
    h.deliver_until_settled(&[id], Duration::from_secs(30))
        .await;

    // then the receiver got exactly one signed call.
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "exactly one webhook call");
    let (headers, body) = &calls[0];
    assert_eq!(headers["x-imgproc-event"], "request.completed");
    assert_eq!(
        headers["x-imgproc-delivery"],
        imgproc::services::notify::delivery_id(id)
            .to_string()
            .as_str()
    );
    assert_eq!(
        headers["x-imgproc-signature"],
        imgproc::services::notify::signature(SECRET, body).as_str()
    );
    let payload = json_of(body);
    assert_eq!(payload["request_id"], id.to_string());
    assert_eq!(payload["status"], "completed_with_errors");
    assert_eq!(payload["progress"]["succeeded"], 3);
    assert!(
        payload["output_csv_url"]
            .as_str()
            .unwrap()
            .contains(&format!("results/{id}.csv"))
    );

    // And the status route agrees.
    let (status, _, body) = call(
        &router,
        Request::get(format!("/v1/requests/{id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let view = json_of(&body);
    assert_eq!(view["status"], "completed_with_errors");
    assert_eq!(
        view["progress"],
        json!({"total": 4, "queued": 4, "succeeded": 3, "failed": 1, "pending": 0, "percent": 100.0})
    );
    assert_eq!(
        view["webhook"],
        json!({"url": webhook_url, "status": "delivered", "attempts": 1})
    );
    assert!(view["output_csv_url"].is_string());
    let images = &view["products"][1]["images"];
    assert_eq!(images[0]["status"], "succeeded");
    assert!(
        images[0]["output_url"]
            .as_str()
            .unwrap()
            .contains(&format!("processed/{id}/2/1.jpg"))
    );
    assert_eq!(images[1]["status"], "failed");
    assert_eq!(images[1]["error"]["code"], "http_status");
    // output.csv redirects to the stored CSV, presigned just now.
    let csv = follow(
        &router,
        &format!("/v1/requests/{id}/output.csv"),
        &env("AWS_ACCESS_KEY_ID"),
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&csv).lines().count(),
        3,
        "a header and two rows"
    );
    assert_links_last(&h, &router, id, &view, &payload).await;

    // The metrics, as CloudWatch would extract them from the EMF lines,
    // tell the same story exactly.
    let docs = h.emf_documents();
    let sum = |metric: &str| total(&docs, id, metric);
    assert_eq!((sum("RequestsAccepted"), sum("ImagesQueued")), (1.0, 4.0));
    assert_eq!(
        sum("ImagesSucceeded"),
        3.0,
        "four deliveries of one image count once"
    );
    assert_eq!(sum("ImagesFailed"), 1.0);
    let failure = docs.iter().find(|d| d["ImagesFailed"] == 1).unwrap();
    assert_eq!(failure["ErrorCode"], "http_status");
    assert_eq!(sum("ImageRetries"), 0.0);
    assert_eq!(sum("RequestsCompleted"), 1.0);
    let completed = docs.iter().find(|d| d["RequestsCompleted"] == 1).unwrap();
    assert_eq!(completed["Status"], "completed_with_errors");
    assert_eq!(
        (sum("WebhookAttempts"), sum("WebhookAttemptsFailed")),
        (1.0, 0.0)
    );
    assert_eq!(
        (sum("WebhooksDelivered"), sum("WebhooksFailed")),
        (1.0, 0.0)
    );
    let images: Vec<&Value> = view["products"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["images"].as_array().unwrap())
        .collect();
    let bytes = |field: &str| {
        images
            .iter()
            .filter(|i| i["status"] == "succeeded")
            .filter_map(|i| i[field].as_f64())
            .sum::<f64>()
    };
    assert_eq!(sum("BytesIn"), bytes("input_bytes"));
    assert_eq!(sum("BytesOut"), bytes("output_bytes"));
    for success in docs.iter().filter(|d| d["ImagesSucceeded"] == 1) {
        for stage in [
            "DownloadTime",
            "DecodeTime",
            "EncodeTime",
            "CompressionRatio",
        ] {
            assert!(
                success[stage].as_f64().is_some_and(|v| v > 0.0),
                "{stage} of {success}"
            );
        }
    }
}

/// Answers `GET path` on `router` with a redirect that is signed with
/// `key_id` and never cached, follows it to moto, and returns the body.
async fn follow(router: &Router, path: &str, key_id: &str) -> Bytes {
    let (status, headers, body) =
        call(router, Request::get(path).body(Body::empty()).unwrap()).await;
    assert_eq!(
        status,
        StatusCode::FOUND,
        "{path}: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(headers["cache-control"], "no-store", "{path}");
    let location = headers["location"].to_str().unwrap();
    let signed_by = url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "X-Amz-Credential")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    assert!(
        signed_by.starts_with(&format!("{key_id}/")),
        "{path} is signed by {signed_by:?}, not {key_id}"
    );
    let answer = reqwest::get(location).await.unwrap();
    assert_eq!(answer.status(), 200, "{location}");
    answer.bytes().await.unwrap()
}

/// Every URL a completed request hands out (the status answer, the stored
/// output CSV, the webhook body) is the service's own lasting URL, with no
/// signature in it; it still answers when another key, not the one that
/// served the request so far, signs the redirect; `output.csv` and
/// `output_csv_url` give the same bytes; and unknown paths get the API's
/// 404 body.
async fn assert_links_last(
    h: &Harness,
    router: &Router,
    id: Uuid,
    status: &Value,
    webhook: &Value,
) {
    let results_key = format!("results/{id}.csv");
    let stored_csv = h.adapters.objects.get(&results_key).await.unwrap().unwrap();
    let mut urls: Vec<String> = vec![
        status["output_csv_url"].as_str().unwrap().to_owned(),
        webhook["output_csv_url"].as_str().unwrap().to_owned(),
    ];
    for product in status["products"].as_array().unwrap() {
        for image in product["images"].as_array().unwrap() {
            urls.extend(image["output_url"].as_str().map(str::to_owned));
        }
    }
    let csv_urls: Vec<String> = csv::Reader::from_reader(&stored_csv[..])
        .records()
        .flat_map(|r| {
            r.unwrap()[3]
                .split(',')
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(csv_urls.len(), 3, "one output URL per succeeded image");
    urls.extend(csv_urls);
    for url in &urls {
        assert!(
            url.starts_with(&format!("{PUBLIC_URL}files/")),
            "{url} is not the service's lasting URL"
        );
        assert!(
            !url.contains("X-Amz-Signature") && !url.contains("X-Amz-Credential"),
            "{url} is presigned"
        );
    }
    assert_eq!(
        status["output_csv_url"], webhook["output_csv_url"],
        "the status answer and the webhook name one CSV"
    );

    // A later instance holds other credentials (the first ones expired):
    // the same URLs still answer, redirected to URLs it signed itself.
    let rotated_key = "AKIAROTATEDLATER0001";
    let s3 = aws_sdk_s3::Client::from_conf(
        h.clients
            .s3
            .config()
            .to_builder()
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                rotated_key,
                "another-secret-access-key",
                None,
                None,
                "rotated",
            ))
            .build(),
    );
    let adapters = Adapters {
        store: h.adapters.store.clone(),
        queue: h.adapters.queue.clone(),
        fanout: None,
        objects: S3Objects::new(s3, env("BUCKET"), format!("{PUBLIC_URL}files/")),
    };
    let config = Config::from_lookup(|name| match name {
        "PUBLIC_URL" => Some(PUBLIC_URL.into()),
        _ => None,
    })
    .unwrap();
    let later = imgproc::api::router(
        app_with_metrics(
            config,
            &adapters,
            Arc::new(EmfRecorder::with_sink("imgproc/e2e", |_| {})),
        )
        .unwrap(),
    );
    for url in &urls {
        let path = &url[PUBLIC_URL.len() - 1..];
        let body = follow(&later, path, rotated_key).await;
        let key = path.strip_prefix("/files/").unwrap();
        let stored = h.adapters.objects.get(key).await.unwrap().unwrap();
        assert_eq!(body, stored, "{url} serves its stored object");
        if key.starts_with("processed/") {
            assert_eq!(&body[..3], b"\xff\xd8\xff", "{url} is a JPEG");
        }
    }
    // output.csv is the stored document too, byte for byte, redirected.
    let via_route = follow(
        &later,
        &format!("/v1/requests/{id}/output.csv"),
        rotated_key,
    )
    .await;
    assert_eq!(
        via_route, stored_csv,
        "output.csv and output_csv_url differ"
    );

    // Paths no route or object matches get the API's error body.
    for path in [
        "/v1/requests/../etc".to_owned(),
        "/files/incoming/anything.csv".to_owned(),
        format!("/files/processed/{id}/9/9.jpg"),
        format!("/files/processed/{id}/../../results/{id}.csv"),
        "/nowhere".to_owned(),
    ] {
        let (status, _, body) =
            call(router, Request::get(&path).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(json_of(&body)["error"]["code"], "not_found", "{path}");
    }
}

async fn s3_event(bucket: &str, key: &str, e_tag: &str) -> S3Event {
    let mut event: S3Event =
        serde_json::from_str(include_str!("../../infra/events/ingest.json")).unwrap();
    let record = &mut event.records[0];
    record.s3.bucket.name = Some(bucket.into());
    record.s3.object.key = Some(key.replace(' ', "+"));
    record.s3.object.e_tag = Some(e_tag.trim_matches('"').into());
    event
}

async fn put_drop(h: &Harness, key: &str, body: &str, webhook: Option<&str>) -> String {
    let mut put = h
        .clients
        .s3
        .put_object()
        .bucket(env("BUCKET"))
        .key(key)
        .body(body.as_bytes().to_vec().into());
    if let Some(url) = webhook {
        put = put.metadata("webhook-url", url);
    }
    put.send().await.unwrap().e_tag.unwrap_or_default()
}

async fn queued(h: &Harness) -> u64 {
    let out = h
        .clients
        .sqs
        .get_queue_attributes()
        .queue_url(h.adapters.queue.queue_url())
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    out.attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                .cloned()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_s3_event_twice_makes_one_request() {
    if moto().is_none() {
        return;
    }
    let h = harness().await;
    let key = format!("incoming/batch {}.csv", Uuid::new_v4());
    let csv = "S. No.,Product Name,Input Image Urls\n1,SKU1,\"https://img.example.com/a.jpg,https://img.example.com/b.png\"\n";
    let e_tag = put_drop(&h, &key, csv, Some("https://hooks.example.com/imgproc")).await;
    let event = s3_event(&env("BUCKET"), &key, &e_tag).await;

    let first = ingest::handle(&h.app, &h.adapters.objects, event.clone())
        .await
        .unwrap();
    let second = ingest::handle(&h.app, &h.adapters.objects, event)
        .await
        .unwrap();
    let [IngestOutcome::Accepted { request_id }] = first.as_slice() else {
        panic!("{first:?}")
    };
    assert_eq!(second, first, "the repeated event finds the same request");
    let r = h
        .adapters
        .store
        .get_request(*request_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.progress.total, 2);
    assert_eq!(
        r.webhook.map(|w| w.url).as_deref(),
        Some("https://hooks.example.com/imgproc")
    );
    assert!(queued(&h).await >= 2, "the images were queued");

    // Another upload under the same key is new content: a new request.
    let e_tag = put_drop(
        &h,
        &key,
        &format!("{csv}2,SKU2,https://img.example.com/c.webp\n"),
        None,
    )
    .await;
    let third = ingest::handle(
        &h.app,
        &h.adapters.objects,
        s3_event(&env("BUCKET"), &key, &e_tag).await,
    )
    .await
    .unwrap();
    assert!(
        matches!(third.as_slice(), [IngestOutcome::Accepted { request_id: other }] if other != request_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_keys_are_scoped_and_their_requests_private_on_dynamodb() {
    if moto().is_none() {
        return;
    }
    const ACME: &str = "acme-token-0123456789abcdef0123456789";
    const GLOBEX: &str = "globex-token-0123456789abcdef01234567";
    let tokens = format!("acme:{ACME},globex:{GLOBEX}");
    let h = harness_with(&[("API_TOKENS", &tokens)]).await;
    h.app
        .config
        .require_api_auth()
        .expect("tokens long enough for AWS");
    let router = imgproc::api::router(h.app.clone());
    let key = format!("order-{}", Uuid::new_v4());
    let csv = "S. No.,Product Name,Input Image Urls\n1,SKU1,http://127.0.0.1:9/a.jpg\n";
    let submit = |token: &str| {
        Request::post("/v1/requests")
            .header("content-type", "text/csv")
            .header("authorization", format!("Bearer {token}"))
            .header("idempotency-key", key.as_str())
            .body(Body::from(csv))
            .unwrap()
    };
    let get = |uri: &str, token: &str| {
        Request::get(uri)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let id_of = |body: &Bytes| -> Uuid {
        json_of(body)["request_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (status, _, acme) = call(&router, submit(ACME)).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&acme)
    );
    let (status, _, globex) = call(&router, submit(GLOBEX)).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "one client's key never blocks another's"
    );
    let (acme_id, globex_id) = (id_of(&acme), id_of(&globex));
    assert_ne!(acme_id, globex_id);
    let (status, _, again) = call(&router, submit(ACME)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        id_of(&again),
        acme_id,
        "the same client and key: the same request"
    );
    let stored = h
        .adapters
        .store
        .get_request(acme_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.client_id.as_deref(), Some("acme"));

    for (id, owner, other) in [(acme_id, ACME, GLOBEX), (globex_id, GLOBEX, ACME)] {
        let (status, _, _) = call(&router, get(&format!("/v1/requests/{id}"), owner)).await;
        assert_eq!(status, StatusCode::OK);
        // Not finished: its owner is told so, the other client learns nothing.
        let csv_uri = format!("/v1/requests/{id}/output.csv");
        let (status, _, _) = call(&router, get(&csv_uri, owner)).await;
        assert_eq!(status, StatusCode::CONFLICT);
        for uri in [format!("/v1/requests/{id}"), csv_uri] {
            let (status, _, body) = call(&router, get(&uri, other)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "another client's {uri}");
            let missing = uri.replace(&id.to_string(), &Uuid::new_v4().to_string());
            let (_, _, missing_body) = call(&router, get(&missing, other)).await;
            assert_eq!(body, missing_body, "the same answer as for no request");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drop_that_fails_for_good_gets_a_report() {
    if moto().is_none() {
        return;
    }
    let h = harness().await;
    // Without the secret no ID can be made: a failure no retry cures.
    let app = app_with_metrics(
        Config::from_lookup(|name| (name == "PUBLIC_URL").then(|| PUBLIC_URL.into())).unwrap(),
        &h.adapters,
        Arc::new(EmfRecorder::with_sink(NAMESPACE, |_: &str| {})),
    )
    .unwrap();
    let key = format!("incoming/{}.csv", Uuid::new_v4());
    let csv = "S. No.,Product Name,Input Image Urls\n1,SKU1,https://img.example.com/a.jpg\n";
    let e_tag = put_drop(&h, &key, csv, None).await;
    let outcomes = ingest::handle(
        &app,
        &h.adapters.objects,
        s3_event(&env("BUCKET"), &key, &e_tag).await,
    )
    .await
    .expect("a permanent failure is reported, not retried");
    assert_eq!(
        outcomes,
        vec![IngestOutcome::Rejected {
            report_key: format!("rejected/{key}.json")
        }]
    );
    let report = h
        .adapters
        .objects
        .fetch(&env("BUCKET"), &format!("rejected/{key}.json"), u64::MAX)
        .await
        .unwrap()
        .unwrap();
    let report = json_of(&report.body);
    assert_eq!(report["error"]["code"], "internal");
    assert!(
        !report.to_string().contains("REQUEST_ID_SECRET"),
        "internals stay in the log: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_drop_gets_a_report_and_nothing_else() {
    if moto().is_none() {
        return;
    }
    let h = harness().await;
    let name = Uuid::new_v4();
    let key = format!("incoming/{name}.csv");
    let e_tag = put_drop(
        &h,
        &key,
        "S. No.,Product Name,Input Image Urls\n0,,ftp://nope\n",
        None,
    )
    .await;
    let outcomes = ingest::handle(
        &h.app,
        &h.adapters.objects,
        s3_event(&env("BUCKET"), &key, &e_tag).await,
    )
    .await
    .unwrap();
    assert_eq!(
        outcomes,
        vec![IngestOutcome::Rejected {
            report_key: format!("rejected/{key}.json")
        }]
    );

    let report = h
        .adapters
        .objects
        .fetch(&env("BUCKET"), &format!("rejected/{key}.json"), u64::MAX)
        .await
        .unwrap()
        .unwrap();
    let report = json_of(&report.body);
    assert_eq!(report["error"]["code"], "invalid_csv");
    let details = report["error"]["details"].as_array().unwrap();
    assert!(details.len() >= 3, "every problem is reported: {details:?}");
    assert!(details.iter().all(|d| d["line"] == 2));

    // Nothing else: no job queued, no object but the drop and its report.
    assert_eq!(queued(&h).await, 0);
    // Every page of the listing: other tests share the bucket.
    let mut mine: Vec<String> = Vec::new();
    let mut pages = h
        .clients
        .s3
        .list_objects_v2()
        .bucket(env("BUCKET"))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        mine.extend(
            page.unwrap()
                .contents
                .unwrap_or_default()
                .into_iter()
                .filter_map(|o| o.key)
                .filter(|k| k.contains(&name.to_string())),
        );
    }
    assert_eq!(mine.len(), 2, "{mine:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_duplicate_delivery_on_moto_counts_once_and_loses_nothing() {
    if moto().is_none() {
        return;
    }
    // Room for all 15 deliveries below at once: waiting for a download slot
    // has its own test.
    let h = harness_with(&[("MAX_CONCURRENT_PER_HOST", "16")]).await;
    let photos = photo_server().await;
    let (hook, calls) = webhook_receiver().await;

    // Given an S3 drop of two products, three images, one of them missing,
    let key = format!("incoming/duplicates-{}.csv", Uuid::new_v4());
    let csv = format!(
        "S. No.,Product Name,Input Image Urls\n\
         1,A,\"http://{photos}/photos/coffee.jpg,http://{photos}/photos/missing.jpg\"\n\
         2,B,http://{photos}/photos/chelsea-cat.png\n"
    );
    let e_tag = put_drop(&h, &key, &csv, Some(&format!("http://{hook}/hook"))).await;
    let event = s3_event(&env("BUCKET"), &key, &e_tag).await;

    // when its S3 event arrives five times at once (an invocation that finds
    // the request still being stored by another fails, and Lambda's
    // asynchronous retry delivers it again),
    let retried = std::sync::atomic::AtomicU32::new(0);
    let ingest_with_retries = || async {
        for _ in 0..20 {
            match ingest::handle(&h.app, &h.adapters.objects, event.clone()).await {
                Ok(outcomes) => return outcomes,
                Err(e) => {
                    assert!(e.source.is_transient(), "{e}");
                    retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!("the S3 event was never ingested");
    };
    let ingested = join_all((0..5).map(|_| ingest_with_retries())).await;
    let ids: std::collections::HashSet<Uuid> = ingested
        .iter()
        .map(|o| match o.as_slice() {
            [IngestOutcome::Accepted { request_id }] => *request_id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids.len(), 1, "one request for five events");
    let id = *ids.iter().next().unwrap();

    // and every message on the queue (each image queued once, however
    // many repeats ran the fan-out) is delivered five times concurrently,
    let messages = h.receive_all().await;
    assert_eq!(messages.records.len(), 3, "every image queued once");
    let deliveries = messages
        .records
        .iter()
        .flat_map(|m| std::iter::repeat_n(m.clone(), 5))
        .map(|m| {
            let mut one = messages.clone();
            one.records = vec![m];
            process::handle(&h.app, &h.adapters.queue, one, None)
        });
    let responses = join_all(deliveries).await;
    assert!(
        responses.iter().all(|r| r.batch_item_failures.is_empty()),
        "nothing to retry"
    );
    for m in &messages.records {
        h.adapters
            .queue
            .ack(m.receipt_handle.as_deref().unwrap())
            .await
            .unwrap();
    }
    eprintln!(
        "5 concurrent S3 events ({} retried), {} queue messages, {} process deliveries",
        retried.load(std::sync::atomic::Ordering::Relaxed),
        messages.records.len(),
        responses.len()
    );

    // then each image counted once and the request is terminal once,
    let r = h.adapters.store.get_request(id).await.unwrap().unwrap();
    assert_eq!(
        r.progress,
        Progress {
            total: 3,
            succeeded: 2,
            failed: 1
        }
    );
    assert_eq!(r.terminal, Some(RequestStatus::CompletedWithErrors));
    // (serial number, image): product positions are 0-based, serial numbers as in the CSV.
    for (serial, image) in [(1u32, 1u32), (2, 1)] {
        let k = ImageKey {
            request_id: id,
            product: serial - 1,
            image,
            // Product 1 has two images, product 2 one.
            ordinal: if serial == 1 { image - 1 } else { 2 },
            total: 3,
        };
        assert_eq!(
            h.adapters.store.image_status(k).await.unwrap(),
            Some(ImageStatus::Succeeded),
            "{k:?}"
        );
        assert!(
            h.adapters
                .objects
                .fetch(
                    &env("BUCKET"),
                    &format!("processed/{id}/{serial}/{image}.jpg"),
                    u64::MAX
                )
                .await
                .unwrap()
                .is_some()
        );
    }
    let missing = ImageKey {
        request_id: id,
        product: 0,
        image: 2,
        ordinal: 1,
        total: 3,
    };
    assert_eq!(
        h.adapters.store.image_status(missing).await.unwrap(),
        Some(ImageStatus::Failed)
    );
    let stream = h.stream_event(id).await;
    let transitions = stream
        .records
        .iter()
        .filter(|r| notify::became_terminal(r) == Some(id))
        .count();
    assert_eq!(transitions, 1, "the stream shows one terminal transition");

    // and the stream batch redelivered three times sends one webhook.
    for _ in 0..3 {
        assert!(
            notify::handle(&h.webhooks, stream.clone())
                .await
                .batch_item_failures
                .is_empty()
        );
    }
    h.deliver_until_settled(&[id], Duration::from_secs(30))
        .await;
    // The copies queued by the repeats find the webhook delivered.
    let extra = h.receive_webhook_event().await;
    if !extra.records.is_empty() {
        assert!(h.deliver(extra).await.batch_item_failures.is_empty());
    }
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "exactly one webhook call");
    assert_eq!(json_of(&calls[0].1)["progress"]["succeeded"], 2);
    assert_eq!(
        calls[0].0["x-imgproc-signature"],
        imgproc::services::notify::signature(SECRET, &calls[0].1).as_str()
    );

    // A late repeat of the S3 event finds the finished request and queues nothing.
    let late = ingest::handle(&h.app, &h.adapters.objects, event)
        .await
        .unwrap();
    assert_eq!(late, vec![IngestOutcome::Accepted { request_id: id }]);
    assert_eq!(queued(&h).await, 0, "nothing queued again");
    assert_eq!(
        h.adapters
            .store
            .get_request(id)
            .await
            .unwrap()
            .unwrap()
            .progress,
        Progress {
            total: 3,
            succeeded: 2,
            failed: 1
        }
    );
}

/// A thumbnail of a real photograph (coffee.jpg at 64×48), as a JPEG: the
/// scale tests process thousands of images, so each must be cheap.
fn small_photo() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/photos/coffee.jpg");
    let photo = image::open(path)
        .expect("the example photo decodes")
        .to_rgb8();
    let thumb = image::imageops::thumbnail(&photo, 64, 48);
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(thumb.as_raw(), 64, 48, jpeg_encoder::ColorType::Rgb)
        .expect("encode the thumbnail");
    out
}

/// Serves `body` as a JPEG at every path after `delay`, counting requests.
async fn jpeg_server(body: Vec<u8>, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let body = Bytes::from(body);
    let app = Router::new().fallback(move || {
        let (body, hits) = (body.clone(), counted.clone());
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            ([("content-type", "image/jpeg")], body)
        }
    });
    (serve(app).await, hits)
}

/// One CSV row per image, all at `base`.
fn csv_of_images(base: &str, n: usize) -> String {
    let mut csv = String::from("S. No.,Product Name,Input Image Urls\n");
    for i in 1..=n {
        csv.push_str(&format!("{i},Product {i},{base}/img/{i}.jpg\n"));
    }
    csv
}

async fn submit_csv(router: &Router, csv: String) -> Uuid {
    let upload = Request::post("/v1/requests")
        .header("content-type", "text/csv")
        .body(Body::from(csv))
        .unwrap();
    let (status, _, body) = call(router, upload).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    json_of(&body)["request_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A queue of its own on moto, its URL and its ARN.
async fn new_queue(h: &Harness, prefix: &str) -> (String, String) {
    let url = h
        .clients
        .sqs
        .create_queue()
        .queue_name(format!("{prefix}-{}", Uuid::new_v4()))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = format!(
        "arn:aws:sqs:{}:123456789012:{}",
        env("AWS_REGION"),
        url.rsplit('/').next().unwrap_or("")
    );
    (url, arn)
}

/// Every message of `queue_url` received so far, as Lambda SQS records.
async fn receive_from(h: &Harness, queue_url: &str, arn: &str) -> SqsEvent {
    let mut records = Vec::new();
    loop {
        let batch = h.receive_records_from(queue_url, arn).await;
        if batch.is_empty() {
            break;
        }
        records.extend(batch);
    }
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// A deadline for a fan-out run that must pause at once: inside its 15 s
/// budget (slices, results parts), and far enough for its first reads on a
/// loaded moto to end before the batch hands the message back, 3 s before
/// the deadline.
const PAUSING_DEADLINE: Duration = Duration::from_secs(10);

/// The harness with a fan-out queue of its own, as the Lambda functions
/// have: uploads ask for their fan-out there, and last images for their
/// request's completion.
struct FanOutHarness {
    h: Harness,
    app: Arc<App>,
    router: Router,
    fanout_url: String,
    fanout_arn: String,
    fanout_source: SqsQueue,
}

async fn fan_out_harness() -> FanOutHarness {
    let mut h = harness().await;
    let (fanout_url, fanout_arn) = new_queue(&h, "fanout").await;
    h.adapters.fanout = Some(SqsFanOut::new(h.clients.sqs.clone(), &fanout_url));
    let app = app_with_metrics(
        Config::from_lookup(|_| None).unwrap(),
        &h.adapters,
        Arc::new(EmfRecorder::with_sink(NAMESPACE, |_: &str| {})),
    )
    .unwrap();
    let router = imgproc::api::router(app.clone());
    let fanout_source = SqsQueue::new(h.clients.sqs.clone(), &fanout_url);
    FanOutHarness {
        h,
        app,
        router,
        fanout_url,
        fanout_arn,
        fanout_source,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fan_out_runs_apart_from_the_upload_and_resumes_from_its_cursor() {
    if moto().is_none() {
        return;
    }
    let FanOutHarness {
        h,
        app,
        router,
        fanout_url,
        fanout_arn,
        fanout_source,
    } = fan_out_harness().await;

    // Given an upload of 600 images (two fan-out slices: 500 and 100),
    let id = submit_csv(&router, csv_of_images("http://127.0.0.1:9", 600)).await;
    // it is answered before anything is queued,
    let r = h.adapters.store.get_request(id).await.unwrap().unwrap();
    assert_eq!((r.queued, r.progress.total), (0, 600));
    assert!(h.receive_all().await.records.is_empty(), "no job yet");

    // and its fan-out message, run with its deadline already near, pauses
    // at once and hands the rest to a continuation.
    let kick = receive_from(&h, &fanout_url, &fanout_arn).await;
    assert_eq!(kick.records.len(), 1, "one fan-out message per upload");
    let soon = Some(Instant::now() + PAUSING_DEADLINE);
    let response = fanout::handle(&app, &fanout_source, kick.clone(), soon).await;
    assert!(response.batch_item_failures.is_empty());
    delete_all(&h, &fanout_url, &kick).await;
    let continuation = receive_from(&h, &fanout_url, &fanout_arn).await;
    assert_eq!(continuation.records.len(), 1, "a continuation was queued");

    // When a worker queues the first slice and dies (its lease lapses),
    let dead = Uuid::new_v4();
    let lease = Duration::from_secs(1);
    assert!(matches!(
        h.adapters
            .store
            .claim_fan_out(id, dead, lease)
            .await
            .unwrap(),
        FanOutClaim::Claimed { next: 0, .. }
    ));
    let first = h
        .adapters
        .store
        .fan_out_slice(id, 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.jobs.len(), 500);
    h.adapters.queue.send(&first.jobs).await.unwrap();
    assert!(
        h.adapters
            .store
            .advance_fan_out(id, dead, 0, first.next, 500, lease)
            .await
            .unwrap()
    );
    // the continuation waits while the lease holds, then resumes at the cursor,
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = fanout::handle(&app, &fanout_source, continuation.clone(), None).await;
        if response.batch_item_failures.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lapsed lease was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // and a duplicate of the kick, arriving late, queues nothing.
    let again = fanout::handle(&app, &fanout_source, kick, None).await;
    assert!(again.batch_item_failures.is_empty());

    // Then every image is queued exactly once.
    let jobs = h.receive_all().await;
    let mut ordinals: Vec<u32> = jobs
        .records
        .iter()
        .map(|m| {
            serde_json::from_str::<ImageJob>(m.body.as_deref().unwrap())
                .unwrap()
                .ordinal
        })
        .collect();
    ordinals.sort_unstable();
    assert_eq!(ordinals, (0..600).collect::<Vec<_>>());
    let r = h.adapters.store.get_request(id).await.unwrap().unwrap();
    assert_eq!(r.queued, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_image_hands_completion_to_the_fan_out_function_which_resumes_from_stored_parts() {
    use futures_util::StreamExt;
    use imgproc::adapters::sqs::FanOutMessage;
    use imgproc::domain::{ImageError, ImageOutcome, results_key, results_part_key};
    use imgproc::metrics::ImageTimings;
    use imgproc::services::results::PART_PRODUCTS;

    if moto().is_none() {
        return;
    }
    let FanOutHarness {
        h,
        app,
        router,
        fanout_url,
        fanout_arn,
        fanout_source,
    } = fan_out_harness().await;

    // Given a request of one product more than a results part holds,
    let products = PART_PRODUCTS as usize + 1;
    let id = submit_csv(&router, csv_of_images("http://127.0.0.1:9", products)).await;
    let kick = receive_from(&h, &fanout_url, &fanout_arn).await;
    assert!(
        fanout::handle(&app, &fanout_source, kick.clone(), None)
            .await
            .batch_item_failures
            .is_empty()
    );
    delete_all(&h, &fanout_url, &kick).await;
    let jobs: Vec<ImageJob> = h
        .receive_all()
        .await
        .records
        .iter()
        .map(|m| serde_json::from_str(m.body.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(jobs.len(), products);

    // when every image is recorded (failed here, fetching nothing),
    futures_util::stream::iter(&jobs)
        .for_each_concurrent(16, |job| {
            let app = app.clone();
            async move {
                let outcome = ImageOutcome::Failed {
                    error: ImageError::new(ErrorCode::HttpStatus, "the server answered 404"),
                    input_bytes: None,
                };
                let settle = imgproc::services::process::record(
                    &app,
                    job,
                    outcome,
                    ImageTimings::default(),
                    Instant::now(),
                )
                .await
                .unwrap();
                assert_eq!(settle, imgproc::services::Settle::Done);
            }
        })
        .await;
    // the last one leaves the request for the fan-out function to complete.
    let asked = receive_from(&h, &fanout_url, &fanout_arn).await;
    assert!(!asked.records.is_empty(), "completion was handed over");
    for m in &asked.records {
        let body: FanOutMessage = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        assert_eq!(body.request_id, id);
        let p = body.complete.expect("a completion message");
        assert_eq!((p.total, p.failed), (products as u32, products as u32));
    }
    let r = h.adapters.store.get_request(id).await.unwrap().unwrap();
    assert_eq!(r.terminal, None, "the process function did not complete it");

    // Run with its deadline near, it stores nothing and queues a continuation;
    let soon = Some(Instant::now() + PAUSING_DEADLINE);
    let response = fanout::handle(&app, &fanout_source, asked.clone(), soon).await;
    assert!(response.batch_item_failures.is_empty());
    delete_all(&h, &fanout_url, &asked).await;
    let continuation = receive_from(&h, &fanout_url, &fanout_arn).await;
    assert_eq!(continuation.records.len(), asked.records.len());
    assert_eq!(
        h.adapters
            .store
            .get_request(id)
            .await
            .unwrap()
            .unwrap()
            .terminal,
        None
    );
    assert_eq!(
        h.adapters
            .objects
            .get(&results_part_key(id, 0))
            .await
            .unwrap(),
        None
    );

    // and the continuation takes a part an earlier run stored as it is
    // (a marker stands in for it), builds the rest, and completes the request.
    let marker = "MARKER,stored by an earlier run\r\n";
    h.adapters
        .objects
        .put(
            &results_part_key(id, 1),
            marker.as_bytes().to_vec().into(),
            "text/csv",
        )
        .await
        .unwrap();
    // (Lambda gives every run a deadline: the function's 120 s.)
    let deadline = Some(Instant::now() + Duration::from_secs(120));
    let response = fanout::handle(&app, &fanout_source, continuation.clone(), deadline).await;
    assert!(response.batch_item_failures.is_empty());
    delete_all(&h, &fanout_url, &continuation).await;
    let r = finished(&h, id).await;
    assert_eq!(r.terminal, Some(RequestStatus::Failed));
    let first = h
        .adapters
        .objects
        .get(&results_part_key(id, 0))
        .await
        .unwrap()
        .expect("part 0");
    assert!(first.starts_with(b"S. No.,Product Name,Input Image Urls,Output Image Urls\r\n"));
    let csv = h
        .adapters
        .objects
        .get(&results_key(id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(csv, [&first[..], marker.as_bytes()].concat());
    assert!(
        receive_from(&h, &fanout_url, &fanout_arn)
            .await
            .records
            .is_empty(),
        "nothing left to do"
    );
}

async fn delete_all(h: &Harness, queue_url: &str, event: &SqsEvent) {
    for m in &event.records {
        h.clients
            .sqs
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(m.receipt_handle.as_deref().unwrap())
            .send()
            .await
            .unwrap();
    }
}

/// The terminal request, its results CSV, and its image statuses by ordinal.
async fn finished(h: &Harness, id: Uuid) -> RequestRecord {
    let r = h.adapters.store.get_request(id).await.unwrap().unwrap();
    assert!(r.terminal.is_some(), "{r:?}");
    assert!(
        h.adapters
            .objects
            .fetch(&env("BUCKET"), &format!("results/{id}.csv"), u64::MAX)
            .await
            .unwrap()
            .is_some(),
        "the results CSV exists"
    );
    r
}

fn error_codes(products: &[imgproc::domain::ProductRecord]) -> Vec<Option<ErrorCode>> {
    products
        .iter()
        .flat_map(|p| p.images.iter().map(|i| i.error.as_ref().map(|e| e.code)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_past_its_attempts_fails_as_worker_crashed_without_a_fetch() {
    if moto().is_none() {
        return;
    }
    let h = harness().await;
    let (images, hits) = jpeg_server(small_photo(), Duration::ZERO).await;
    let router = imgproc::api::router(h.app.clone());
    let id = submit_csv(&router, csv_of_images(&format!("http://{images}"), 2)).await;
    let mut event = h.receive_event(2).await;
    assert_eq!(event.records.len(), 2);
    // The first job's workers all died: the queue delivers it once more than
    // the attempts allow.
    let past = (h.app.config.max_attempts + 1).to_string();
    event.records[0]
        .attributes
        .insert("ApproximateReceiveCount".into(), past);
    let failed = h.process(event).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "only the healthy job fetched"
    );
    let r = finished(&h, id).await;
    assert_eq!(r.terminal, Some(RequestStatus::CompletedWithErrors));
    let products = h.adapters.store.list_products(id, None, 10).await.unwrap();
    let codes = error_codes(&products);
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == Some(ErrorCode::WorkerCrashed))
            .count(),
        1
    );
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_lettered_job_fails_and_its_request_still_completes() {
    if moto().is_none() {
        return;
    }
    let h = harness().await;
    let router = imgproc::api::router(h.app.clone());
    let id = submit_csv(&router, csv_of_images("http://127.0.0.1:9", 1)).await;
    // Given the request's only job moved to the dead-letter queue (every
    // invocation that took it died),
    let jobs = h.receive_event(1).await;
    let (dlq_url, dlq_arn) = new_queue(&h, "dlq").await;
    h.clients
        .sqs
        .send_message()
        .queue_url(&dlq_url)
        .message_body(jobs.records[0].body.clone().unwrap())
        .send()
        .await
        .unwrap();
    h.adapters
        .queue
        .ack(jobs.records[0].receipt_handle.as_deref().unwrap())
        .await
        .unwrap();
    // and a message that is not a job at all,
    h.clients
        .sqs
        .send_message()
        .queue_url(&dlq_url)
        .message_body("not a job")
        .send()
        .await
        .unwrap();
    // when the deadletter function takes them,
    let dead = receive_from(&h, &dlq_url, &dlq_arn).await;
    assert_eq!(dead.records.len(), 2);
    let source = SqsQueue::new(h.clients.sqs.clone(), &dlq_url);
    let response = deadletter::handle(&h.app, &source, dead.clone(), None).await;
    assert!(response.batch_item_failures.is_empty());
    // then the image failed as worker_crashed and the request is terminal,
    let r = finished(&h, id).await;
    assert_eq!(r.terminal, Some(RequestStatus::Failed));
    let products = h.adapters.store.list_products(id, None, 10).await.unwrap();
    assert_eq!(error_codes(&products), vec![Some(ErrorCode::WorkerCrashed)]);
    // and the same dead letter again changes nothing.
    deadletter::handle(&h.app, &source, dead, None).await;
    let again = h.adapters.store.get_request(id).await.unwrap().unwrap();
    assert_eq!(again.progress, r.progress);
    assert_eq!(again.completed_at, r.completed_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_process_handler_hands_work_back_before_its_deadline() {
    if moto().is_none() {
        return;
    }
    let h = harness().await;
    // An image server slower than the invocation has left.
    let (images, _) = jpeg_server(small_photo(), Duration::from_secs(60)).await;
    let router = imgproc::api::router(h.app.clone());
    let id = submit_csv(&router, csv_of_images(&format!("http://{images}"), 1)).await;
    let event = h.receive_event(1).await;
    let started = Instant::now();
    let deadline = Some(started + Duration::from_secs(4));
    let response = process::handle(&h.app, &h.adapters.queue, event.clone(), deadline).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered before the deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(
        response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect::<Vec<_>>(),
        vec![event.records[0].message_id.clone().unwrap()],
        "the unfinished job is handed back"
    );
    let r = h.adapters.store.get_request(id).await.unwrap().unwrap();
    assert_eq!((r.progress.succeeded, r.progress.failed), (0, 0));
}

/// 5,000 images through the fan-out and the process handler on moto, with
/// the DynamoDB adapter counting its writes per item: none may take more
/// than 1 % of the images' writes (50 here; at 5,000 images/s that is at
/// most 50 writes in the second the request takes, far under one item's
/// 1,000 write units per second).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_thousand_images_write_no_item_more_than_one_percent_of_them() {
    if moto().is_none() {
        return;
    }
    const IMAGES: usize = 5000;
    let mut h = harness().await;
    let log = WriteLog::default();
    h.adapters.store = h.adapters.store.clone().with_write_log(log.clone());
    let app = app_with_metrics(
        Config::from_lookup(|name| match name {
            "ALLOW_PRIVATE_NETWORKS" => Some("true".into()),
            // Every image is on one loopback host: this test measures the
            // request's own items, and the loop below stops at an empty
            // queue, which jobs waiting for a slot would leave early. The
            // cap has a test of its own.
            "MAX_CONCURRENT_PER_HOST" => Some("0".into()),
            _ => None,
        })
        .unwrap(),
        &h.adapters,
        Arc::new(EmfRecorder::with_sink(NAMESPACE, |_: &str| {})),
    )
    .unwrap();
    let (images, hits) = jpeg_server(small_photo(), Duration::ZERO).await;
    let router = imgproc::api::router(app.clone());
    let started = Instant::now();
    let id = submit_csv(&router, csv_of_images(&format!("http://{images}"), IMAGES)).await;
    let queued_in = started.elapsed();

    // Batches of ten, several invocations at once, as the event source mapping sends them.
    let processing = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let batches: Vec<SqsEvent> = join_all((0..8).map(|_| async {
            let records = h.receive_records().await;
            serde_json::from_value::<SqsEvent>(json!({ "Records": records })).unwrap()
        }))
        .await;
        if batches.iter().all(|b| b.records.is_empty()) {
            break;
        }
        let runs = batches
            .into_iter()
            .filter(|b| !b.records.is_empty())
            .map(|b| {
                let app = app.clone();
                let queue = h.adapters.queue.clone();
                async move {
                    let response = process::handle(&app, &queue, b.clone(), None).await;
                    assert!(response.batch_item_failures.is_empty());
                    for m in &b.records {
                        queue
                            .ack(m.receipt_handle.as_deref().unwrap())
                            .await
                            .unwrap();
                    }
                }
            });
        join_all(runs).await;
        assert!(
            Instant::now() < deadline,
            "5,000 images did not finish in 10 minutes"
        );
    }
    let seconds = processing.elapsed().as_secs_f64();
    let r = finished(&h, id).await;
    assert_eq!(
        (
            r.progress.total,
            r.progress.succeeded,
            r.progress.failed,
            r.queued
        ),
        (IMAGES as u32, IMAGES as u32, 0, IMAGES as u32)
    );
    assert_eq!(r.terminal, Some(RequestStatus::Completed));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        IMAGES,
        "each image fetched once"
    );

    let counts = log.counts();
    let request_pk = format!("REQ#{id}");
    let ours: Vec<(&(String, String), &u32)> = counts
        .iter()
        .filter(|((pk, _), _)| pk.starts_with(&request_pk))
        .collect();
    let (hottest, max) = ours
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, n)| ((*k).clone(), **n))
        .unwrap();
    let writes: u32 = ours.iter().map(|(_, n)| **n).sum();
    eprintln!(
        "{IMAGES} images: upload answered and queued in {:.2} s, processed in {seconds:.1} s \
         ({:.0} images/s through moto); {} items written {writes} times ({:.2} per image); \
         hottest {hottest:?} written {max} times",
        queued_in.as_secs_f64(),
        IMAGES as f64 / seconds,
        ours.len(),
        f64::from(writes) / IMAGES as f64,
    );
    assert!(
        max as usize * 100 <= IMAGES,
        "{hottest:?} was written {max} times, over 1 % of {IMAGES}"
    );
    assert!(
        f64::from(writes) / IMAGES as f64 <= 2.1,
        "{writes} writes for {IMAGES} images"
    );
}

/// Fifty images on one host through the router, the fan-out and the process
/// handler, five batches of ten at a time as concurrent invocations would
/// run them, with `MAX_CONCURRENT_PER_HOST=3`: the slots are DynamoDB items
/// shared by every invocation, and the server counts the downloads it is
/// answering at once. Jobs that find the host busy go back to the queue
/// as delayed messages; every image still succeeds, downloaded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_host_cap_holds_across_invocations_on_moto() {
    if moto().is_none() {
        return;
    }
    const IMAGES: usize = 50;
    const CAP: u32 = 3;
    let h = harness_with(&[("MAX_CONCURRENT_PER_HOST", "3")]).await;
    let photos = common::ConcurrencyServer::start(Duration::from_millis(150)).await;
    let router = imgproc::api::router(h.app.clone());
    let mut csv = String::from("S. No.,Product Name,Input Image Urls\n");
    for (i, url) in photos.urls(IMAGES).iter().enumerate() {
        csv.push_str(&format!("{},Photo,{url}\n", i + 1));
    }
    let id = submit_csv(&router, csv).await;

    let deadline = Instant::now() + Duration::from_secs(180);
    let mut waited = 0usize;
    loop {
        let r = h.adapters.store.get_request(id).await.unwrap().unwrap();
        if r.terminal.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not finished in time: {:?}",
            r.progress
        );
        let batches: Vec<SqsEvent> = join_all((0..5).map(|_| async {
            let records = h.receive_records().await;
            serde_json::from_value::<SqsEvent>(json!({ "Records": records })).unwrap()
        }))
        .await;
        let received: usize = batches.iter().map(|b| b.records.len()).sum();
        if received == 0 {
            // Every job left is waiting out its delay in the queue.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let before = photos.served() as usize;
        let failed: Vec<Vec<String>> = join_all(
            batches
                .into_iter()
                .filter(|b| !b.records.is_empty())
                .map(|b| h.process(b)),
        )
        .await;
        assert!(
            failed.iter().all(Vec::is_empty),
            "a job that finds its host busy is no failed message: {failed:?}"
        );
        waited += received - (photos.served() as usize - before);
        assert!(
            photos.max_in_flight() <= CAP,
            "{} downloads at once",
            photos.max_in_flight()
        );
    }
    let r = finished(&h, id).await;
    assert_eq!(
        (r.progress.total, r.progress.succeeded, r.progress.failed),
        (IMAGES as u32, IMAGES as u32, 0)
    );
    assert_eq!(r.terminal, Some(RequestStatus::Completed));
    assert_eq!(
        photos.max_in_flight(),
        CAP,
        "at most {CAP} downloads at once, and the cap was reached"
    );
    assert_eq!(
        photos.served() as usize,
        IMAGES,
        "each image downloaded once"
    );
    assert!(waited > 0, "some jobs waited for a slot");
    eprintln!("{IMAGES} images at a cap of {CAP}: {waited} deliveries found the host busy");
}

/// Uploads one photograph with `webhook_url` through the router and runs
/// its job through the process handler: a terminal request whose webhook
/// is owed.
async fn finished_request(h: &Harness, photos: SocketAddr, webhook_url: &str) -> Uuid {
    let router = imgproc::api::router(h.app.clone());
    let csv = format!(
        "S. No.,Product Name,Input Image Urls\n1,Coffee,http://{photos}/photos/coffee.jpg\n"
    );
    let upload = Request::post(format!("/v1/requests?webhook_url={webhook_url}"))
        .header("content-type", "text/csv")
        .body(Body::from(csv))
        .unwrap();
    let (status, _, body) = call(&router, upload).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let id: Uuid = json_of(&body)["request_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let event = h.receive_event(1).await;
    assert!(h.process(event).await.is_empty());
    let r = h.adapters.store.get_request(id).await.unwrap().unwrap();
    assert_eq!(r.terminal, Some(RequestStatus::Completed));
    id
}

impl Harness {
    /// Receives from the webhook queue until `n` messages arrived (or 20 s
    /// passed), as one event.
    async fn receive_webhook_batch(&self, n: usize) -> SqsEvent {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut records = Vec::new();
        while records.len() < n && Instant::now() < deadline {
            let batch = self
                .receive_records_from(self.webhooks.queue_url(), &self.webhooks_arn)
                .await;
            if batch.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            records.extend(batch);
        }
        serde_json::from_value(json!({ "Records": records })).unwrap()
    }
}

fn job_of(message: &aws_lambda_events::event::sqs::SqsMessage) -> WebhookJob {
    serde_json::from_str(message.body.as_deref().unwrap()).unwrap()
}

/// Every call is the same event: one delivery ID, one body, both
/// signatures verifying (V2 over the call's own timestamp).
fn assert_one_event(calls: &[common::WebhookCall], id: Uuid) {
    let delivery = imgproc::services::notify::delivery_id(id).to_string();
    for c in calls {
        assert_eq!(c.header("x-imgproc-delivery"), delivery);
        assert_eq!(c.body, calls[0].body);
        assert_eq!(
            c.header("x-imgproc-signature"),
            imgproc::services::notify::signature(SECRET, &c.body)
        );
        let t: i64 = c.header("x-imgproc-timestamp").parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - t).abs() <= 300);
        assert_eq!(
            c.header("x-imgproc-signature-v2"),
            imgproc::services::notify::signature_v2(SECRET, t, &c.body)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_refuses_twice_gets_one_2xx_on_the_schedule_on_moto() {
    if moto().is_none() {
        return;
    }
    // Output URLs from a base URL: presigned ones are signed afresh on every
    // attempt, and this test holds every attempt to the same bytes.
    let h = harness_with(&[
        ("WEBHOOK_RETRY_SCHEDULE", "0s,1s,1s"),
        ("OUTPUT_BASE_URL", "https://cdn.example.com/imgproc/"),
    ])
    .await;
    let photos = photo_server().await;
    let hook = WebhookReceiver::start(2).await;

    // Given a finished request whose receiver refuses two calls,
    let id = finished_request(&h, photos, &hook.url()).await;
    // when its stream records reach the notify handler, and every message
    // of the webhook queue reaches the deliver handler as it becomes visible,
    h.notify(id).await;
    let batches = h
        .deliver_until_settled(&[id], Duration::from_secs(60))
        .await;

    // then three attempts were made, one message each, the third one a 2xx,
    let calls = hook.calls();
    assert_eq!(calls.len(), 3, "two refusals, then the one 2xx");
    assert!(batches >= 3, "one message per attempt: {batches}");
    assert_one_event(&calls, id);
    // the second retry waited for its delay (1 s) on the queue,
    let gap = calls[2].at - calls[1].at;
    assert!(gap >= Duration::from_millis(900), "{gap:?}");
    // and the status says so.
    let r = h.adapters.store.get_request(id).await.unwrap().unwrap();
    let webhook = r.webhook.unwrap();
    assert_eq!(
        (webhook.status, webhook.attempts),
        (WebhookStatus::Delivered, 3)
    );
    // Nothing follows a 2xx: no message is left, visible or delayed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(h.receive_webhook_event().await.records.is_empty());
    assert_eq!(hook.calls().len(), 3);
    let docs = h.emf_documents();
    let sum = |metric: &str| total(&docs, id, metric);
    assert_eq!(
        (sum("WebhookAttempts"), sum("WebhookAttemptsFailed")),
        (3.0, 2.0)
    );
    assert_eq!(
        (sum("WebhooksDelivered"), sum("WebhooksFailed")),
        (1.0, 0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_receiver_does_not_delay_another_in_the_same_batch_on_moto() {
    if moto().is_none() {
        return;
    }
    let h = harness_with(&[("WEBHOOK_TIMEOUT_SECS", "3")]).await;
    let photos = photo_server().await;
    let hanging = WebhookReceiver::slow(Duration::from_secs(60)).await;
    let prompt = WebhookReceiver::start(0).await;
    let stuck = finished_request(&h, photos, &hanging.url()).await;
    let quick = finished_request(&h, photos, &prompt.url()).await;
    h.notify(stuck).await;
    h.notify(quick).await;

    // Both attempts in one batch of the deliver handler:
    let event = h.receive_webhook_batch(2).await;
    assert_eq!(event.records.len(), 2);
    let started = Instant::now();
    let response = h.deliver(event).await;
    let took = started.elapsed();

    // the prompt receiver was called at once, not after the other's timeout,
    let calls = prompt.calls();
    assert_eq!(calls.len(), 1);
    let waited = calls[0].at - started;
    eprintln!(
        "deliver batch of 2: the prompt receiver called after {waited:?}, the batch took {took:?} (webhook timeout 3 s)"
    );
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    // the hanging one was cut at the webhook timeout,
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "{took:?}"
    );
    // and a refused or cut attempt is not a failed message: it scheduled
    // the next attempt instead.
    assert!(response.batch_item_failures.is_empty());
    let quick_hook = h
        .adapters
        .store
        .get_request(quick)
        .await
        .unwrap()
        .unwrap()
        .webhook
        .unwrap();
    assert_eq!(
        (quick_hook.status, quick_hook.attempts),
        (WebhookStatus::Delivered, 1)
    );
    let stuck_hook = h
        .adapters
        .store
        .get_request(stuck)
        .await
        .unwrap()
        .unwrap()
        .webhook
        .unwrap();
    assert_eq!(
        (stuck_hook.status, stuck_hook.attempts),
        (WebhookStatus::Pending, 1)
    );
    let next = h.receive_webhook_batch(1).await;
    assert_eq!(next.records.len(), 1);
    let job = job_of(&next.records[0]);
    assert_eq!((job.request_id, job.attempt), (stuck, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_that_arrives_before_its_due_time_waits_for_it_on_moto() {
    if moto().is_none() {
        return;
    }
    let h = harness().await;
    let photos = photo_server().await;
    let hook = WebhookReceiver::start(0).await;
    let id = finished_request(&h, photos, &hook.url()).await;

    // A job due in 3 s that arrives now (SQS holds a message back at most
    // 15 minutes: longer waits arrive early, hop by hop).
    let sent = Instant::now();
    let job = WebhookJob {
        request_id: id,
        attempt: 1,
        due_ms: imgproc::services::notify::now_ms() + 3000,
    };
    h.clients
        .sqs
        .send_message()
        .queue_url(h.webhooks.queue_url())
        .message_body(serde_json::to_string(&job).unwrap())
        .send()
        .await
        .unwrap();
    let early = h.receive_webhook_batch(1).await;
    assert_eq!(early.records.len(), 1);
    assert!(h.deliver(early).await.batch_item_failures.is_empty());
    assert!(hook.calls().is_empty(), "nothing is sent before it is due");
    // It went back on the queue as it was, held back for the rest of the wait.
    assert!(h.receive_webhook_event().await.records.is_empty());

    h.deliver_until_settled(&[id], Duration::from_secs(30))
        .await;
    let calls = hook.calls();
    assert_eq!(calls.len(), 1);
    let waited = calls[0].at - sent;
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert_one_event(&calls, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_notify_handler_reports_every_record_it_could_not_queue_on_moto() {
    if moto().is_none() {
        return;
    }
    let h = harness().await;
    let photos = photo_server().await;
    let hook = WebhookReceiver::start(0).await;
    let first = finished_request(&h, photos, &hook.url()).await;
    let second = finished_request(&h, photos, &hook.url()).await;
    let mut event = h.stream_event(first).await;
    event.records.extend(h.stream_event(second).await.records);
    let owed: Vec<String> = event
        .records
        .iter()
        .filter(|r| notify::owes_webhook(r).is_some())
        .map(|r| r.change.sequence_number.clone().unwrap())
        .collect();
    assert_eq!(owed.len(), 2);

    // A queue that refuses every message: each record is tried and
    // reported, the first failure stops nothing.
    let gone = SqsWebhookQueue::new(
        h.clients.sqs.clone(),
        format!("{}-deleted", h.webhooks.queue_url()),
    );
    let response = notify::handle(&gone, event.clone()).await;
    let mut reported: Vec<String> = response
        .batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.clone())
        .collect();
    reported.sort();
    let mut expected = owed.clone();
    expected.sort();
    assert_eq!(reported, expected);

    // The same batch again (the stream's retry) on the real queue: both queued.
    assert!(
        notify::handle(&h.webhooks, event)
            .await
            .batch_item_failures
            .is_empty()
    );
    let queued = h.receive_webhook_batch(2).await;
    let mut ids: Vec<Uuid> = queued
        .records
        .iter()
        .map(|m| job_of(m).request_id)
        .collect();
    ids.sort();
    let mut both = vec![first, second];
    both.sort();
    assert_eq!(ids, both);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_messages_in_one_batch_make_one_call_on_moto() {
    if moto().is_none() {
        return;
    }
    let h = harness().await;
    let photos = photo_server().await;
    // A receiver that takes a second to answer keeps the first attempt in
    // flight while its duplicates run: only the claim keeps them out.
    let hook = WebhookReceiver::slow(Duration::from_secs(1)).await;
    let id = finished_request(&h, photos, &hook.url()).await;
    for _ in 0..3 {
        h.notify(id).await;
    }
    let event = h.receive_webhook_batch(3).await;
    assert_eq!(event.records.len(), 3, "three copies of attempt 1");
    let response = h.deliver(event).await;
    assert_eq!(hook.calls().len(), 1, "one call for three copies");
    assert_eq!(
        response.batch_item_failures.len(),
        2,
        "the copies that found the attempt held come back later"
    );
    // When they come back, the attempt is recorded: they end without a call.
    h.deliver_until_settled(&[id], Duration::from_secs(30))
        .await;
    // (moto answers one call at a time, all tests' calls: allow for a queue.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let event = h.receive_webhook_event().await;
        if event.records.is_empty() {
            break;
        }
        assert!(h.deliver(event).await.batch_item_failures.is_empty());
        assert!(Instant::now() < deadline);
    }
    assert_eq!(hook.calls().len(), 1);
    let r = h.adapters.store.get_request(id).await.unwrap().unwrap();
    let webhook = r.webhook.unwrap();
    assert_eq!(
        (webhook.status, webhook.attempts),
        (WebhookStatus::Delivered, 1)
    );
}
