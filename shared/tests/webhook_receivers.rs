//! Webhook receivers that misbehave: down, slower than the timeout, failing
//! then recovering, redirecting to a private address, answering with an
//! endless body. Retries stay bounded, the final status is right, and every
//! call that arrives carries the same body, delivery ID and a signature that
//! verifies.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::service::{Service, WEBHOOK_SECRET};
use common::{ImageServer, Tripwire, WebhookCall, csv_of};
use imgproc::services::notify::signature;
use serde_json::Value;

/// What the receiver does on one attempt.
#[derive(Clone, Debug)]
enum Act {
    Answer(u16),
    /// Answers after a delay (longer than the webhook timeout: the sender gives up first).
    Slow(Duration, u16),
    Redirect(String),
    /// This status with a body that never ends.
    Endless(u16),
}

#[derive(Clone)]
struct Hook {
    addr: std::net::SocketAddr,
    calls: Arc<Mutex<Vec<WebhookCall>>>,
    /// Bytes of endless bodies the sender actually took off the socket (TCP
    /// buffers included): bounded if the sender never reads the answer.
    endless_sent: Arc<AtomicU64>,
}

#[derive(Clone)]
struct HookState {
    script: Arc<Vec<Act>>,
    calls: Arc<Mutex<Vec<WebhookCall>>>,
    endless_sent: Arc<AtomicU64>,
}

impl Hook {
    /// Attempt `n` (0-based) gets `script[n]`, or the last act once the script runs out.
    async fn start(script: Vec<Act>) -> Self {
        let state = HookState {
            script: Arc::new(script),
            calls: Arc::default(),
            endless_sent: Arc::default(),
        };
        let hook = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            calls: state.calls.clone(),
            endless_sent: state.endless_sent.clone(),
        };
        let router = Router::new().route("/hook", post(answer)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, ..hook }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn calls(&self) -> Vec<WebhookCall> {
        self.calls.lock().unwrap().clone()
    }
}

async fn answer(State(s): State<HookState>, headers: HeaderMap, body: Bytes) -> Response {
    let n = {
        let mut calls = s.calls.lock().unwrap();
        calls.push(WebhookCall { headers, body });
        calls.len() - 1
    };
    let act = s
        .script
        .get(n)
        .or(s.script.last())
        .cloned()
        .unwrap_or(Act::Answer(204));
    match act {
        Act::Answer(code) => status(code).into_response(),
        Act::Slow(delay, code) => {
            tokio::time::sleep(delay).await;
            status(code).into_response()
        }
        Act::Redirect(to) => {
            (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, to)]).into_response()
        }
        Act::Endless(code) => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let sent = s.endless_sent.clone();
            let stream = futures_util::stream::repeat_with(move || {
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Ok::<_, std::io::Error>(chunk.clone())
            });
            (status(code), Body::from_stream(stream)).into_response()
        }
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT)
}

const MAX_ATTEMPTS: u64 = 3;

/// A service with a one-second webhook timeout and three attempts.
async fn service(
    extra: &[(&str, &str)],
    tune: impl FnOnce(&mut imgproc::local::LocalRuntimeOptions),
) -> Service {
    let mut env = vec![
        ("WEBHOOK_TIMEOUT_SECS", "1"),
        ("WEBHOOK_MAX_ATTEMPTS", "3"),
        ("RETRY_BASE_DELAY_MS", "50"),
    ];
    env.extend_from_slice(extra);
    Service::start_with(&env, tune).await
}

/// Submits one image with `webhook`, waits for the webhook to settle, and
/// returns the status answer and how long the whole request took.
async fn run(svc: &Service, images: &ImageServer, webhook: &str) -> (Value, Duration) {
    let started = Instant::now();
    let id = svc
        .submit_with_webhook(
            webhook,
            &csv_of(&[(1, "A", vec![images.photo("coffee.jpg")])]),
        )
        .await;
    let status = svc.wait_done(&id).await;
    (status, started.elapsed())
}

/// Every call of one event: same body, same delivery ID, a valid signature.
fn assert_consistent(calls: &[WebhookCall], request_id: &str) {
    assert!(!calls.is_empty());
    let delivery = calls[0].header("x-imgproc-delivery").to_owned();
    assert!(!delivery.is_empty());
    for (i, c) in calls.iter().enumerate() {
        assert_eq!(
            c.header("x-imgproc-signature"),
            signature(WEBHOOK_SECRET, &c.body),
            "call {i}: the signature verifies"
        );
        assert_eq!(
            c.header("x-imgproc-delivery"),
            delivery,
            "call {i}: one delivery ID per event"
        );
        assert_eq!(
            c.body, calls[0].body,
            "call {i}: the same bytes on every attempt"
        );
        assert_eq!(c.json()["request_id"], request_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_is_down_fails_after_bounded_attempts() {
    let images = ImageServer::start().await;
    // A port that nothing listens on: every attempt is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let svc = service(&[], |_| {}).await;
    let (status, took) = run(&svc, &images, &format!("http://{closed}/hook")).await;
    assert_eq!(
        status["status"], "completed",
        "the webhook does not change the request's outcome"
    );
    assert_eq!(status["webhook"]["status"], "failed");
    assert_eq!(status["webhook"]["attempts"], MAX_ATTEMPTS);
    assert!(took < Duration::from_secs(20), "bounded: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_slower_than_the_timeout_is_cut_off_and_retried() {
    let images = ImageServer::start().await;
    let svc = service(&[], |_| {}).await;

    let never = Hook::start(vec![Act::Slow(Duration::from_secs(5), 204)]).await;
    let (status, took) = run(&svc, &images, &never.url()).await;
    assert_eq!(status["webhook"]["status"], "failed");
    assert_eq!(status["webhook"]["attempts"], MAX_ATTEMPTS);
    assert_eq!(
        never.calls().len() as u64,
        MAX_ATTEMPTS,
        "one call per attempt, no more"
    );
    assert_consistent(&never.calls(), status["request_id"].as_str().unwrap());
    // Three attempts cut at one second each, plus backoff: far below 3 × 5 s.
    assert!(
        took < Duration::from_secs(10),
        "each attempt is cut at the timeout: {took:?}"
    );

    // Slow once, then prompt: delivered on the second attempt. The receiver
    // saw the event twice with one delivery ID, so it can dedupe.
    let once = Hook::start(vec![
        Act::Slow(Duration::from_secs(3), 204),
        Act::Answer(204),
    ])
    .await;
    let (status, _) = run(&svc, &images, &once.url()).await;
    assert_eq!(status["webhook"]["status"], "delivered");
    assert_eq!(status["webhook"]["attempts"], 2);
    assert_eq!(once.calls().len(), 2);
    assert_consistent(&once.calls(), status["request_id"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_then_success_is_delivered_once_and_nothing_follows() {
    let images = ImageServer::start().await;
    let svc = service(&[], |_| {}).await;
    for (script, attempts) in [
        (vec![Act::Answer(500), Act::Answer(200)], 2u64),
        (
            vec![Act::Answer(503), Act::Answer(429), Act::Answer(201)],
            3,
        ),
        (vec![Act::Answer(404)], MAX_ATTEMPTS),
    ] {
        let hook = Hook::start(script.clone()).await;
        let (status, _) = run(&svc, &images, &hook.url()).await;
        let expected = if matches!(script.last(), Some(Act::Answer(c)) if *c < 300) {
            "delivered"
        } else {
            "failed"
        };
        assert_eq!(status["webhook"]["status"], expected, "{script:?}");
        assert_eq!(status["webhook"]["attempts"], attempts, "{script:?}");
        // Wait a little longer than a retry would take: a 2xx is final.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(hook.calls().len() as u64, attempts, "{script:?}");
        assert_consistent(&hook.calls(), status["request_id"].as_str().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redirect_to_a_private_address_is_not_followed() {
    let images = ImageServer::start().await;
    let wire = Tripwire::bind("127.0.0.1", 0).await.unwrap();
    wire.self_test().await;
    let hook = Hook::start(vec![Act::Redirect(format!("http://{}/hook", wire.addr))]).await;
    let (hook_addr, images_addr) = (hook.addr, images.addr);
    // The guard is on; only the receiver itself and the image server stand
    // in for public hosts.
    let svc = service(&[("ALLOW_PRIVATE_NETWORKS", "false")], move |o| {
        o.net_exempt.extend([hook_addr, images_addr])
    })
    .await;
    let before = wire.connections();
    let (status, _) = run(&svc, &images, &hook.url()).await;
    assert_eq!(status["status"], "completed");
    assert_eq!(
        status["webhook"]["status"], "failed",
        "a 301 is not a delivery"
    );
    assert_eq!(status["webhook"]["attempts"], MAX_ATTEMPTS);
    assert_eq!(hook.calls().len() as u64, MAX_ATTEMPTS);
    assert_eq!(
        wire.connections(),
        before,
        "the redirect target was never contacted"
    );
    assert_consistent(&hook.calls(), status["request_id"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endless_answer_body_is_never_read() {
    let images = ImageServer::start().await;
    let svc = service(&[], |_| {}).await;

    let ok = Hook::start(vec![Act::Endless(200)]).await;
    let (status, took) = run(&svc, &images, &ok.url()).await;
    assert_eq!(status["webhook"]["status"], "delivered");
    assert_eq!(status["webhook"]["attempts"], 1);
    assert!(took < Duration::from_secs(10), "{took:?}");

    let failing = Hook::start(vec![Act::Endless(500)]).await;
    let (status, took) = run(&svc, &images, &failing.url()).await;
    assert_eq!(status["webhook"]["status"], "failed");
    assert_eq!(status["webhook"]["attempts"], MAX_ATTEMPTS);
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_consistent(&failing.calls(), status["request_id"].as_str().unwrap());

    // Only what socket buffers hold left the receiver: the sender reads no body.
    let sent =
        ok.endless_sent.load(Ordering::Relaxed) + failing.endless_sent.load(Ordering::Relaxed);
    eprintln!(
        "endless webhook answers: {} KiB left the receivers over {} calls",
        sent / 1024,
        1 + MAX_ATTEMPTS
    );
    assert!(sent < 64 << 20, "{sent} bytes of answer were pulled");
}
