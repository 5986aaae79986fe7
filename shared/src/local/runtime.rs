//! The local runner's moving parts: the in-process worker pool (what the
//! SQS trigger does on AWS), the notifier (what the DynamoDB stream, the
//! webhook queue and the deliver function do), and recovery after a restart.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::adapters::fs::{FsObjectStore, content_type_of};
use crate::adapters::memory::MemoryHostSlots;
use crate::adapters::sqlite::{DueWebhook, SqliteStore};
use crate::api::{self, ApiError};
use crate::compress::available_cores;
use crate::config::{Config, MIN_REQUEST_ID_SECRET_CHARS, Secret};
use crate::domain::ImageJob;
use crate::metrics::{PrometheusRecorder, prometheus_content_type};
use crate::net::NameLookup;
use crate::ports::{Delivery, JobQueue, JobSource, PortResult};
use crate::services::App;
use crate::services::notify::{self, Handled};
use crate::services::process::{complete_if_done, process_job, settle};
use crate::services::{AppParts, Settle};

pub struct LocalRuntimeOptions {
    /// Holds `imgproc.sqlite` and, unless `objects_dir` is set, `objects/`.
    pub data_dir: PathBuf,
    pub objects_dir: Option<PathBuf>,
    /// Prefix of output URLs when neither `OUTPUT_BASE_URL` nor
    /// `PUBLIC_URL` is set, e.g. `http://127.0.0.1:3000/files/`.
    pub files_base_url: String,
    /// Jobs in flight at once (downloads overlap; compression is bounded
    /// separately by `cpu_threads`).
    pub workers: usize,
    pub cpu_threads: usize,
    /// Private endpoints let through the network guard (the example server).
    pub net_exempt: Vec<SocketAddr>,
    /// Name resolution; the system resolver when `None`.
    pub lookup: Option<Arc<dyn NameLookup>>,
    /// How often idle loops look for work that became due.
    pub poll_interval: Duration,
}

impl LocalRuntimeOptions {
    pub fn new(data_dir: impl Into<PathBuf>, files_base_url: impl Into<String>) -> Self {
        let cores = available_cores();
        Self {
            data_dir: data_dir.into(),
            objects_dir: None,
            files_base_url: files_base_url.into(),
            workers: cores * 4,
            cpu_threads: cores,
            net_exempt: Vec::new(),
            lookup: None,
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// Sends jobs to SQLite and wakes the worker pool at once.
struct WakingQueue {
    store: SqliteStore,
    wake: Arc<Notify>,
}

#[async_trait]
impl JobQueue for WakingQueue {
    async fn send(&self, jobs: &[ImageJob]) -> PortResult<()> {
        self.store.send(jobs).await?;
        self.wake.notify_one();
        Ok(())
    }

    async fn send_later(&self, job: &ImageJob, delay: Duration) -> PortResult<()> {
        self.store.send_later(job, delay).await
    }
}

/// A running local service: the `App` for the router, plus the background
/// worker pool and notifier.
pub struct LocalRuntime {
    pub app: Arc<App>,
    pub store: SqliteStore,
    pub objects: FsObjectStore,
    /// What the services recorded since the start, served at `/metrics`.
    pub metrics: Arc<PrometheusRecorder>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl LocalRuntime {
    pub async fn start(mut config: Config, options: LocalRuntimeOptions) -> Result<Self, String> {
        std::fs::create_dir_all(&options.data_dir).map_err(|e| {
            format!(
                "cannot create data folder {}: {e}",
                options.data_dir.display()
            )
        })?;
        if config.request_id_secret.is_none() {
            config.request_id_secret = Some(kept_request_id_secret(&options.data_dir)?);
        }
        let store = SqliteStore::open(&options.data_dir.join("imgproc.sqlite"))
            .map_err(|e| e.to_string())?;
        let objects_dir = options
            .objects_dir
            .clone()
            .unwrap_or_else(|| options.data_dir.join("objects"));
        let base_url = config
            .files_base_url()
            .unwrap_or_else(|| options.files_base_url.clone());
        let objects = FsObjectStore::new(objects_dir, base_url);
        let wake = Arc::new(Notify::new());
        let metrics = Arc::new(PrometheusRecorder::new());
        let app = Arc::new(App::new(
            config,
            AppParts {
                store: Arc::new(store.clone()),
                queue: Arc::new(WakingQueue {
                    store: store.clone(),
                    wake: wake.clone(),
                }),
                // Locally the submitting process fans out itself (SQLite is fast).
                fanout: None,
                objects: Arc::new(objects.clone()),
                // One process: the slots of the worker pool are in its memory.
                hosts: Arc::new(MemoryHostSlots::new()),
                metrics: metrics.clone(),
                net_exempt: options.net_exempt.clone(),
                lookup: options.lookup.clone(),
                cpu_threads: options.cpu_threads,
            },
        )?);

        let requeued = store.recover().await.map_err(|e| e.to_string())?;
        store
            .release_webhook_claims()
            .await
            .map_err(|e| e.to_string())?;
        if requeued > 0 {
            tracing::info!(
                jobs = requeued,
                "queued images left unqueued by an earlier run"
            );
        }
        // A fan-out cut short by a crash resumes where its cursor stands.
        for id in store
            .unfinished_fan_outs()
            .await
            .map_err(|e| e.to_string())?
        {
            crate::services::fanout::fan_out(&app, id, None)
                .await
                .map_err(|e| e.to_string())?;
        }
        for (id, progress) in store
            .unfinished_complete_requests()
            .await
            .map_err(|e| e.to_string())?
        {
            complete_if_done(&app, id, progress)
                .await
                .map_err(|e| e.to_string())?;
        }

        let (shutdown, stop) = watch::channel(false);
        let lease = app.config.fetch_timeout * 2 + Duration::from_secs(60);
        let tasks = vec![
            tokio::spawn(worker_pool(
                app.clone(),
                store.clone(),
                wake,
                options.workers.max(1),
                lease,
                options.poll_interval,
                stop.clone(),
            )),
            tokio::spawn(notifier(
                app.clone(),
                store.clone(),
                options.poll_interval,
                stop,
            )),
        ];
        Ok(Self {
            app,
            store,
            objects,
            metrics,
            shutdown,
            tasks,
        })
    }

    /// The API (with `/files/*` for stored objects) plus `/metrics` for
    /// Prometheus, which exists only here: on AWS, CloudWatch holds the
    /// metrics. `/metrics` needs no API token, like `/health`: it holds
    /// only counts, no request data.
    pub fn router(&self) -> Router {
        api::router(self.app.clone()).route(
            "/metrics",
            get(serve_metrics).with_state(self.metrics.clone()),
        )
    }

    /// Stops taking work and waits for the loops to end. Jobs still in
    /// flight are delivered again at the next start.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn worker_pool(
    app: Arc<App>,
    store: SqliteStore,
    wake: Arc<Notify>,
    workers: usize,
    lease: Duration,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(workers));
    loop {
        if *stop.borrow() {
            break;
        }
        let Ok(first) = slots.clone().acquire_owned().await else {
            break;
        };
        let free = slots.available_permits() + 1;
        let deliveries = match store.receive(free, lease).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the job queue");
                Vec::new()
            }
        };
        if deliveries.is_empty() {
            drop(first);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let mut first = Some(first);
        for delivery in deliveries {
            let permit = match first.take() {
                Some(p) => p,
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (app, store) = (app.clone(), store.clone());
            tokio::spawn(async move {
                handle(&app, &store, delivery).await;
                drop(permit);
            });
        }
    }
    // Let jobs in flight finish (bounded), so a clean stop loses no work.
    let _ = tokio::time::timeout(Duration::from_secs(30), slots.acquire_many(workers as u32)).await;
}

async fn handle(app: &App, store: &SqliteStore, d: Delivery) {
    let result = process_job(app, &d.job, d.receive_count).await;
    let result = match settle(app, &d.job, d.receive_count, result) {
        Settle::Done => store.ack(&d.receipt).await,
        Settle::RetryAfter(delay) => store.retry_later(&d.receipt, delay).await,
    };
    if let Err(e) = result {
        // The lease expires and the job comes back: nothing is lost.
        tracing::warn!(request_id = %d.job.request_id, error = %e, "cannot update the job queue");
    }
}

/// Rows of the outbox started per pass of the notifier.
const DUE_WEBHOOKS_PER_PASS: u32 = 256;

/// Delivers owed webhooks from the outbox (what the webhook queue and the
/// deliver function do on AWS): requests that became terminal enter it
/// with their first attempt; every due attempt runs on its own task, so a
/// slow receiver holds up nobody else; a failed attempt leaves its
/// successor in the outbox, due after the retry schedule's delay, so the
/// schedule survives restarts.
async fn notifier(
    app: Arc<App>,
    store: SqliteStore,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let in_flight: Arc<Mutex<HashSet<(uuid::Uuid, u32)>>> = Arc::default();
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => break,
        }
        while running.try_join_next().is_some() {}
        if let Err(e) = store.open_webhook_outbox().await {
            tracing::error!(error = %e, "cannot move finished requests to the webhook outbox");
            continue;
        }
        let due = match store.due_webhooks(DUE_WEBHOOKS_PER_PASS).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the webhook outbox");
                continue;
            }
        };
        for d in due {
            let slot = (d.job.request_id, d.job.attempt);
            if !in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(slot)
            {
                continue;
            }
            let (app, store, in_flight) = (app.clone(), store.clone(), in_flight.clone());
            running.spawn(async move {
                deliver(&app, &store, d).await;
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&slot);
            });
        }
    }
    // Attempts in flight end within the webhook timeout: let them record
    // their outcome, so a clean stop repeats no POST.
    let grace = app.config.webhook_timeout + Duration::from_secs(5);
    let _ = tokio::time::timeout(grace, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    running.abort_all();
}

/// One outbox row through one attempt.
async fn deliver(app: &App, store: &SqliteStore, due: DueWebhook) {
    let job = due.job;
    let retry = app.config.backoff(due.tries + 1);
    let result = match notify::run_attempt(app, store, job).await {
        Ok(Handled::Finished | Handled::Rescheduled) => store.finish_webhook_job(&job).await,
        Ok(Handled::Waiting) => Ok(()),
        Ok(Handled::NotYet) => store.retry_webhook_job(&job, retry).await,
        Err(e) => {
            tracing::warn!(request_id = %job.request_id, attempt = job.attempt, error = %e,
                "webhook attempt failed on the store; will retry");
            store.retry_webhook_job(&job, retry).await
        }
    };
    if let Err(e) = result {
        // The row stays as it was and comes up again.
        tracing::warn!(request_id = %job.request_id, error = %e, "cannot update the webhook outbox");
    }
}

async fn serve_metrics(State(metrics): State<Arc<PrometheusRecorder>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus_content_type()),
        )],
        metrics.render(),
    )
        .into_response()
}

/// Serves the files under `root` read-only, with a content type from the
/// extension (the folder of local images `imgproc-local process --serve`
/// offers). Paths that would leave `root` are not found.
/// Where the local runner keeps the request ID secret it made.
pub const REQUEST_ID_SECRET_FILE: &str = "request-id-secret";

/// The request ID secret kept in `data_dir`, made (32 random bytes, hex)
/// the first time: a restart must give a repeated idempotency key the
/// same ID as before. The file is readable by its owner only.
pub fn kept_request_id_secret(data_dir: &std::path::Path) -> Result<Secret, String> {
    use std::io::Write;
    let path = data_dir.join(REQUEST_ID_SECRET_FILE);
    let read = |path: &std::path::Path| -> Result<Secret, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let secret = text.trim();
        if secret.len() < MIN_REQUEST_ID_SECRET_CHARS {
            return Err(format!(
                "{} holds no request ID secret of at least {MIN_REQUEST_ID_SECRET_CHARS} characters; remove it to make a new one (IDs of repeated keys then change) or set REQUEST_ID_SECRET",
                path.display()
            ));
        }
        Ok(Secret::new(secret))
    };
    if path.exists() {
        return read(&path);
    }
    let bytes = random_bytes()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(hex::encode(bytes).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            read(&path)
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}

/// 32 bytes from the operating system's random source.
#[cfg(unix)]
fn random_bytes() -> Result<[u8; 32], String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("no randomness for the request ID secret: {e}"))?;
    Ok(bytes)
}

/// 32 bytes from the operating system's random source, by way of two
/// random UUIDs (244 random bits: each fixes 6 bits of version and variant).
#[cfg(not(unix))]
fn random_bytes() -> Result<[u8; 32], String> {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    Ok(bytes)
}

pub fn file_router(root: PathBuf) -> Router {
    Router::new()
        .route("/{*path}", get(serve_file))
        .with_state(Arc::new(root))
}

async fn serve_file(State(root): State<Arc<PathBuf>>, UrlPath(path): UrlPath<String>) -> Response {
    let store = FsObjectStore::new(root.as_path(), "");
    let Some(file) = store.path_of(&path) else {
        return ApiError::NotFound.into_response();
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type_of(&file)),
            )],
            bytes,
        )
            .into_response(),
        Err(_) => ApiError::NotFound.into_response(),
    }
}
