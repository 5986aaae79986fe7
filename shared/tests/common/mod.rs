//! Test servers on 127.0.0.1: real photographs (with failure modes on
//! demand) and a webhook receiver, plus a local service around them.
#![allow(dead_code)]

pub mod openapi;
pub mod service;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

/// `examples/photos` of the workspace, from whichever crate includes this module.
pub fn photos_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|p| p.join("examples/photos"))
        .find(|p| p.is_dir())
        .expect("examples/photos in the workspace")
}

pub const PHOTOS: [&str; 7] = [
    "coffee.jpg",
    "mountain-meadow-progressive.jpg",
    "astronaut-portrait-exif6.jpg",
    "chelsea-cat.png",
    "dandelions-vignette.png",
    "paint-brushes.webp",
    "rocket-launch.gif",
];

async fn spawn(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// Serves the example photographs, counting every request by path.
#[derive(Clone)]
pub struct ImageServer {
    pub addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, u32>>>,
}

#[derive(Clone)]
struct ImageState {
    hits: Arc<Mutex<HashMap<String, u32>>>,
}

impl ImageState {
    fn hit(&self, path: String) -> u32 {
        let mut hits = self.hits.lock().unwrap();
        let n = hits.entry(path).or_default();
        *n += 1;
        *n
    }
}

fn photo_response(name: &str) -> Response {
    match std::fs::read(photos_dir().join(name)) {
        // Deliberately a generic type: the service must sniff the bytes.
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

impl ImageServer {
    pub async fn start() -> Self {
        let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let state = ImageState { hits: hits.clone() };
        let router = Router::new()
            .route(
                "/photos/{name}",
                get(|State(s): State<ImageState>, Path(name): Path<String>| async move {
                    s.hit(format!("/photos/{name}"));
                    photo_response(&name)
                }),
            )
            .route(
                "/flaky/{fails}/{name}",
                get(|State(s): State<ImageState>, Path((fails, name)): Path<(u32, String)>| async move {
                    let n = s.hit(format!("/flaky/{fails}/{name}"));
                    if n <= fails { StatusCode::SERVICE_UNAVAILABLE.into_response() } else { photo_response(&name) }
                }),
            )
            .route(
                "/status/{code}",
                get(|State(s): State<ImageState>, Path(code): Path<u16>| async move {
                    s.hit(format!("/status/{code}"));
                    StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT).into_response()
                }),
            )
            .route(
                "/html",
                get(|State(s): State<ImageState>| async move {
                    s.hit("/html".into());
                    ([(header::CONTENT_TYPE, "image/jpeg")], "<!doctype html><html><body>Sorry</body></html>").into_response()
                }),
            )
            .route(
                "/slow/{ms}/{name}",
                get(|State(s): State<ImageState>, Path((ms, name)): Path<(u64, String)>| async move {
                    s.hit(format!("/slow/{ms}/{name}"));
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    photo_response(&name)
                }),
            )
            .route(
                "/redirect",
                get(|State(s): State<ImageState>, Query(q): Query<HashMap<String, String>>| async move {
                    s.hit("/redirect".into());
                    let to = q.get("to").cloned().unwrap_or_default();
                    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
                }),
            )
            .route(
                "/endless",
                get(|State(s): State<ImageState>| async move {
                    s.hit("/endless".into());
                    // A body with no Content-Length that never ends.
                    let chunk = Bytes::from(vec![0xAB; 64 * 1024]);
                    let stream = futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
                    Body::from_stream(stream).into_response()
                }),
            )
            .with_state(state);
        Self {
            addr: spawn(router).await,
            hits,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn photo(&self, name: &str) -> String {
        self.url(&format!("/photos/{name}"))
    }

    pub fn hits(&self, path: &str) -> u32 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    pub fn total_hits(&self) -> u32 {
        self.hits.lock().unwrap().values().sum()
    }
}

#[derive(Clone, Debug)]
pub struct WebhookCall {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the call arrived.
    pub at: Instant,
}

impl WebhookCall {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Records every POST to `/hook`; answers 500 to the first `fail_first`,
/// then 204 (after `delay`, when one is set).
#[derive(Clone)]
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<WebhookCall>>>,
}

type ReceiverState = (Arc<Mutex<Vec<WebhookCall>>>, Arc<AtomicU32>);

impl WebhookReceiver {
    pub async fn start(fail_first: u32) -> Self {
        Self::start_with(fail_first, Duration::ZERO).await
    }

    /// A receiver that takes `delay` to answer every call (one that hangs,
    /// when longer than the webhook timeout).
    pub async fn slow(delay: Duration) -> Self {
        Self::start_with(0, delay).await
    }

    async fn start_with(fail_first: u32, delay: Duration) -> Self {
        let calls: Arc<Mutex<Vec<WebhookCall>>> = Arc::default();
        let seen = Arc::new(AtomicU32::new(0));
        let state: ReceiverState = (calls.clone(), seen);
        let router = Router::new()
            .route(
                "/hook",
                post(
                    move |State((calls, seen)): State<ReceiverState>,
                          headers: HeaderMap,
                          body: Bytes| async move {
                        calls.lock().unwrap().push(WebhookCall {
                            headers,
                            body,
                            at: Instant::now(),
                        });
                        if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                            return StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        tokio::time::sleep(delay).await;
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(state);
        Self {
            addr: spawn(router).await,
            calls,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn calls(&self) -> Vec<WebhookCall> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until at least `n` calls arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<WebhookCall> {
        let deadline = Instant::now() + within;
        loop {
            let calls = self.calls();
            if calls.len() >= n {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} webhook calls within {within:?}, got {}",
                calls.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A listener that serves nothing and only counts the TCP connections it
/// accepts: proof that nothing connected, even without sending a request.
pub struct Tripwire {
    pub addr: SocketAddr,
    accepted: Arc<AtomicU32>,
}

impl Tripwire {
    /// Binds `ip:port` (`port` 0: any free port). `None` when the address
    /// cannot be bound (e.g. no IPv6 loopback on this machine).
    pub async fn bind(ip: &str, port: u16) -> Option<Self> {
        let listener = tokio::net::TcpListener::bind((ip, port)).await.ok()?;
        let addr = listener.local_addr().ok()?;
        let accepted = Arc::new(AtomicU32::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        Some(Self { addr, accepted })
    }

    pub fn connections(&self) -> u32 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connects once and waits until the connection is counted, so a test
    /// proves its tripwire would have seen a connection.
    pub async fn self_test(&self) {
        let before = self.connections();
        let _socket = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect to the tripwire");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.connections() == before {
            assert!(
                Instant::now() < deadline,
                "the tripwire on {} counts connections",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Serves the example photographs slowly at `/photos/{name}` (any query
/// string), counting the requests it is answering at once: over HTTP/1.1
/// each is a connection busy with one download, so the highest count seen
/// is the most downloads the service ran against this host at a time.
#[derive(Clone)]
pub struct ConcurrencyServer {
    pub addr: SocketAddr,
    counts: Arc<ConcurrencyCounts>,
}

#[derive(Default)]
struct ConcurrencyCounts {
    now: AtomicU32,
    max: AtomicU32,
    served: AtomicU32,
}

/// Counts a request out when its handler ends, also when the client hung up.
struct InFlight(Arc<ConcurrencyCounts>);

impl InFlight {
    fn enter(counts: Arc<ConcurrencyCounts>) -> Self {
        let now = counts.now.fetch_add(1, Ordering::SeqCst) + 1;
        counts.max.fetch_max(now, Ordering::SeqCst);
        Self(counts)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ConcurrencyServer {
    /// Each answer takes `delay` before its body is sent.
    pub async fn start(delay: Duration) -> Self {
        let counts: Arc<ConcurrencyCounts> = Arc::default();
        let router = Router::new()
            .route(
                "/photos/{name}",
                get(
                    move |State(counts): State<Arc<ConcurrencyCounts>>,
                          Path(name): Path<String>| async move {
                        let _in_flight = InFlight::enter(counts.clone());
                        tokio::time::sleep(delay).await;
                        let response = photo_response(&name);
                        counts.served.fetch_add(1, Ordering::SeqCst);
                        response
                    },
                ),
            )
            .with_state(counts.clone());
        Self {
            addr: spawn(router).await,
            counts,
        }
    }

    /// URL `i` of `n` distinct ones, cycling through the example photographs.
    pub fn urls(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                format!(
                    "http://{}/photos/{}?copy={i}",
                    self.addr,
                    PHOTOS[i % PHOTOS.len()]
                )
            })
            .collect()
    }

    /// The most requests answered at once so far.
    pub fn max_in_flight(&self) -> u32 {
        self.counts.max.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> u32 {
        self.counts.now.load(Ordering::SeqCst)
    }

    /// Requests answered in full.
    pub fn served(&self) -> u32 {
        self.counts.served.load(Ordering::SeqCst)
    }

    /// Forgets the highest count (between two phases of a test).
    pub fn reset_max(&self) {
        self.counts.max.store(self.in_flight(), Ordering::SeqCst);
    }
}

/// A CSV with one product per row, each a list of URLs.
pub fn csv_of(rows: &[(u64, &str, Vec<String>)]) -> String {
    let mut csv = String::from("S. No.,Product Name,Input Image Urls\n");
    for (serial, name, urls) in rows {
        csv.push_str(&format!("{serial},{name},\"{}\"\n", urls.join(",")));
    }
    csv
}

pub fn is_terminal(status: &Value) -> bool {
    matches!(
        status["status"].as_str(),
        Some("completed" | "completed_with_errors" | "failed")
    )
}

/// A loopback port nobody listens on right now, for a server started next.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits, at most 30 s, until a server at `base` answers `GET /health`.
pub async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `csv` as `text/csv` with `request` (an upload's POST, with any
/// query or headers already on it) and returns the JSON answer.
pub async fn post_csv(request: reqwest::RequestBuilder, csv: String) -> Value {
    let answer = request
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .expect("upload sent");
    serde_json::from_slice(&answer.bytes().await.expect("upload answered")).expect("a JSON answer")
}
