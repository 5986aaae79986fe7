//! Webhook receivers that misbehave: down, slower than the timeout, failing
//! then recovering, redirecting to a private address, answering with an
//! endless body, hanging while another waits. Retries follow the schedule
//! (across a restart too), stay bounded, the final status is right, and
//! every call that arrives carries the same body, delivery ID and
//! signatures that verify.

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
use imgproc::services::notify::{signature, signature_v2};
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
        calls.push(WebhookCall {
            headers,
            body,
            at: Instant::now(),
        });
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
        ("WEBHOOK_RETRY_SCHEDULE", "50ms,100ms"),
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

/// What a receiver checks of `X-Imgproc-Signature-V2`: it verifies over
/// the call's own `X-Imgproc-Timestamp`, which is within the 5 minutes of
/// tolerance the README asks receivers to apply.
fn assert_signed_v2(c: &WebhookCall) {
    let t: i64 = c
        .header("x-imgproc-timestamp")
        .parse()
        .expect("X-Imgproc-Timestamp is Unix seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - t).abs() <= 300, "timestamp {t}, now {now}");
    assert_eq!(
        c.header("x-imgproc-signature-v2"),
        signature_v2(WEBHOOK_SECRET, t, &c.body),
        "the V2 signature verifies"
    );
    assert_ne!(
        c.header("x-imgproc-signature-v2"),
        signature_v2(WEBHOOK_SECRET, t - 600, &c.body),
        "and would not under another timestamp"
    );
}

/// Every call of one event: same body, same delivery ID, valid signatures.
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
        assert_signed_v2(c);
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

/// Polls the status route until `check` holds (at most 30 s).
async fn wait_status(svc: &Service, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, s) = svc.status(id, "?limit=1").await;
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "status never matched: {s:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `hook` has had at least `n` calls (at most 30 s).
async fn wait_calls(hook: &Hook, n: usize) -> Vec<WebhookCall> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let calls = hook.calls();
        if calls.len() >= n {
            return calls;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} webhook calls, got {}",
            calls.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_twice_then_accepted_is_delivered_once_on_the_schedule() {
    let images = ImageServer::start().await;
    let svc = service(
        &[
            ("WEBHOOK_RETRY_SCHEDULE", "0s,1s,1s"),
            ("WEBHOOK_MAX_ATTEMPTS", "4"),
        ],
        |_| {},
    )
    .await;
    let hook = Hook::start(vec![Act::Answer(500), Act::Answer(503), Act::Answer(204)]).await;
    let (status, _) = run(&svc, &images, &hook.url()).await;
    assert_eq!(status["webhook"]["status"], "delivered");
    assert_eq!(status["webhook"]["attempts"], 3);
    let calls = hook.calls();
    assert_eq!(calls.len(), 3, "two refusals, then the one 2xx");
    assert_consistent(&calls, status["request_id"].as_str().unwrap());
    // The second delay of the schedule (1 s) separates the last two calls.
    let gap = calls[2].at - calls[1].at;
    assert!(gap >= Duration::from_millis(950), "{gap:?}");
    // A 2xx is final: nothing follows, even after the next delay would have passed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.calls().len(), 3);
    assert_eq!(svc.runtime.store.webhook_outbox_len().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_schedule_survives_restarts_of_the_local_runtime() {
    let images = ImageServer::start().await;
    let mut svc = service(&[("WEBHOOK_RETRY_SCHEDULE", "2s,1s")], |_| {}).await;
    let hook = Hook::start(vec![Act::Answer(500), Act::Answer(502), Act::Answer(200)]).await;
    let id = svc
        .submit_with_webhook(
            &hook.url(),
            &csv_of(&[(1, "A", vec![images.photo("coffee.jpg")])]),
        )
        .await;
    // Attempt 1 is refused; attempt 2 waits in the outbox, due in 2 s.
    wait_status(&svc, &id, |s| s["webhook"]["attempts"] == 1).await;
    assert_eq!(wait_calls(&hook, 1).await.len(), 1);
    // Restarted at once: the wait goes on from the stored due time.
    svc = svc.restart().await;
    let calls = wait_calls(&hook, 2).await;
    let gap = calls[1].at - calls[0].at;
    assert!(
        gap >= Duration::from_millis(1950),
        "not replayed early: {gap:?}"
    );
    // Attempt 2 is refused too; the process is down when attempt 3 is due
    // (1 s later) and delivers it when it comes back.
    wait_status(&svc, &id, |s| s["webhook"]["attempts"] == 2).await;
    let down = Instant::now();
    let svc = svc.restart_after(Duration::from_millis(1500)).await;
    let status = svc.wait_done(&id).await;
    assert_eq!(status["webhook"]["status"], "delivered");
    assert_eq!(status["webhook"]["attempts"], 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = hook.calls();
    assert_eq!(calls.len(), 3, "one call per attempt, one 2xx");
    assert!(
        calls[2].at >= down + Duration::from_millis(1500),
        "nobody delivered while the service was down"
    );
    assert_consistent(&calls, &id);
    assert_eq!(svc.runtime.store.webhook_outbox_len().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_receiver_does_not_delay_another() {
    let images = ImageServer::start().await;
    let svc = service(&[("WEBHOOK_TIMEOUT_SECS", "20")], |_| {}).await;
    let hanging = Hook::start(vec![Act::Slow(Duration::from_secs(60), 204)]).await;
    let prompt = Hook::start(vec![Act::Answer(204)]).await;
    let csv = |name: &str| csv_of(&[(1, name, vec![images.photo("coffee.jpg")])]);
    let stuck = svc.submit_with_webhook(&hanging.url(), &csv("Stuck")).await;
    wait_calls(&hanging, 1).await;
    let started = Instant::now();
    let id = svc.submit_with_webhook(&prompt.url(), &csv("Prompt")).await;
    let status = svc.wait_done(&id).await;
    assert_eq!(status["webhook"]["status"], "delivered");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // The hanging attempt is still in flight: nothing waited for it.
    let (_, s) = svc.status(&stuck, "?limit=1").await;
    assert_eq!(s["webhook"]["status"], "pending");
    assert_eq!(s["webhook"]["attempts"], 0);
    assert_eq!(hanging.calls().len(), 1);
}
