//! A local service (SQLite + filesystem + worker pool + notifier) driven
//! through its router, as a client would.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use imgproc::config::Config;
use imgproc::local::{LocalRuntime, LocalRuntimeOptions};
use serde_json::Value;
use tower::ServiceExt;

use super::is_terminal;

pub struct Service {
    pub runtime: LocalRuntime,
    pub router: Router,
    pub dir: tempfile::TempDir,
    /// The configuration it started with, for [`Service::restart`].
    config: Config,
}

pub const WEBHOOK_SECRET: &str = "test-webhook-secret";

impl Service {
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_with(env, |_| {}).await
    }

    /// Loopback test servers need the guard off unless a test turns it on.
    pub async fn start_with(
        env: &[(&str, &str)],
        tune: impl FnOnce(&mut LocalRuntimeOptions),
    ) -> Self {
        let mut vars: HashMap<String, String> = [
            ("ALLOW_PRIVATE_NETWORKS", "true"),
            ("RETRY_BASE_DELAY_MS", "20"),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("FETCH_TIMEOUT_SECS", "10"),
            // Five webhook attempts, quickly.
            ("WEBHOOK_RETRY_SCHEDULE", "20ms,40ms,80ms,160ms"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = Config::from_lookup(|k| vars.get(k).cloned()).expect("valid test config");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut options = LocalRuntimeOptions::new(dir.path(), "http://files.test/files/");
        options.poll_interval = Duration::from_millis(20);
        tune(&mut options);
        let runtime = LocalRuntime::start(config.clone(), options)
            .await
            .expect("service starts");
        let router = runtime.router();
        Self {
            runtime,
            router,
            dir,
            config,
        }
    }

    /// Stops the runtime and starts a new one on the same data folder and
    /// configuration (the default options: a `tune` of the first start is
    /// not applied again), as a restarted process would.
    pub async fn restart(self) -> Self {
        self.restart_after(Duration::ZERO).await
    }

    /// [`Service::restart`], with the service down for `pause` in between.
    pub async fn restart_after(self, pause: Duration) -> Self {
        let Self {
            runtime,
            dir,
            config,
            ..
        } = self;
        runtime.shutdown().await;
        tokio::time::sleep(pause).await;
        let mut options = LocalRuntimeOptions::new(dir.path(), "http://files.test/files/");
        options.poll_interval = Duration::from_millis(20);
        let runtime = LocalRuntime::start(config.clone(), options)
            .await
            .expect("service restarts");
        let router = runtime.router();
        Self {
            runtime,
            router,
            dir,
            config,
        }
    }

    pub async fn call(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("router answers");
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        (parts.status, parts.headers, body)
    }

    pub async fn json(&self, request: Request<Body>) -> (StatusCode, Value) {
        let (status, headers, body) = self.call(request).await;
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "{status}: content type {ct:?}, body {:?}",
            String::from_utf8_lossy(&body)
        );
        (status, serde_json::from_slice(&body).expect("JSON body"))
    }

    pub async fn submit(&self, csv: &str) -> Value {
        self.submit_to("/v1/requests", csv).await
    }

    /// Submits with `webhook_url` as a query parameter; returns the request ID.
    pub async fn submit_with_webhook(&self, webhook_url: &str, csv: &str) -> String {
        let uri = format!(
            "/v1/requests?webhook_url={}",
            url::form_urlencoded::byte_serialize(webhook_url.as_bytes()).collect::<String>()
        );
        self.submit_to(&uri, csv).await["request_id"]
            .as_str()
            .expect("a request ID")
            .to_owned()
    }

    pub async fn submit_to(&self, uri: &str, csv: &str) -> Value {
        let req = Request::post(uri)
            .header(header::CONTENT_TYPE, "text/csv")
            .body(Body::from(csv.to_owned()))
            .unwrap();
        let (status, body) = self.json(req).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body:#}");
        body
    }

    pub async fn status(&self, id: &str, query: &str) -> (StatusCode, Value) {
        self.json(
            Request::get(format!("/v1/requests/{id}{query}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// Polls the status route until the request is terminal and its webhook
    /// (if any) has settled.
    pub async fn wait_done(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, s) = self.status(id, "?limit=1000").await;
            assert_eq!(code, StatusCode::OK, "{s:#}");
            if is_terminal(&s) && s["webhook"]["status"] != "pending" {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "request {id} not done in time: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
