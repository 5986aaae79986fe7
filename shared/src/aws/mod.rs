//! The AWS side: DynamoDB, SQS and S3 adapters for the ports, and the
//! Lambda event handlers the functions call. Built with the `aws`
//! feature; the local runner does without it.
//!
//! `AWS_ENDPOINT_URL` (read by the SDK itself) points every client at an
//! emulator such as moto or LocalStack; S3 then uses path-style addresses,
//! which emulators need.
//!
//! Every function starts through [`setup_from_env`]: the configuration, with
//! the secrets named by `<NAME>_SECRET_ARN` read from Secrets Manager
//! ([`secrets`]), and the clients.

pub mod dynamo;
mod error;
pub mod handlers;
pub mod rows;
pub mod s3;
pub mod secrets;
pub mod sqs;
#[cfg(feature = "stream-poller")]
pub mod stream_poller;
pub mod webhook_queue;

use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};

pub use dynamo::DynamoStore;
pub use rows::RowsBucket;
pub use s3::S3Objects;
pub use sqs::{SqsFanOut, SqsQueue};
pub use webhook_queue::SqsWebhookQueue;

use crate::compress::{Engine, Settings, available_cores};
use crate::config::{Config, ConfigError};
use crate::metrics::{EmfRecorder, Recorder};
use crate::net::{GuardedClient, NetPolicy};
use crate::services::App;

/// The three AWS clients, built once per cold start and reused.
#[derive(Clone, Debug)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
}

impl Clients {
    /// Region, credentials and endpoint from the environment, as every AWS tool reads them.
    pub async fn from_env() -> Self {
        Self::new(&sdk_config().await)
    }

    /// The clients on one SDK configuration (S3 path-style on an emulator).
    pub fn new(sdk: &SdkConfig) -> Self {
        let emulated = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()));
        let path_style = emulated
            || std::env::var("S3_FORCE_PATH_STYLE").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let s3 = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(path_style)
            .build();
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            s3: aws_sdk_s3::Client::from_conf(s3),
        }
    }
}

async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// A function's configuration and clients at cold start: the environment,
/// with the secrets its `<NAME>_SECRET_ARN` variables name read once from
/// Secrets Manager and seen as `<NAME>`.
pub async fn setup_from_env() -> Result<(Config, Clients), SetupError> {
    let sdk = sdk_config().await;
    let config = secrets::config_from_lookup(&aws_sdk_secretsmanager::Client::new(&sdk), |name| {
        std::env::var(name).ok()
    })
    .await?;
    Ok((config, Clients::new(&sdk)))
}

/// Why a function cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("HTTP client: {0}")]
    Http(String),
}

/// The adapters of one process, kept apart from `App` for the handlers
/// that need more than the ports (the SQS receipt handles, the S3 drop).
#[derive(Clone, Debug)]
pub struct Adapters {
    pub store: DynamoStore,
    pub queue: SqsQueue,
    pub fanout: Option<SqsFanOut>,
    pub objects: S3Objects,
}

/// A setting a function cannot start without.
pub fn required(value: &Option<String>, var: &'static str) -> Result<String, ConfigError> {
    value.clone().ok_or(ConfigError {
        var,
        problem: "must be set".into(),
    })
}

/// Days items live before DynamoDB's TTL removes them (`RECORD_TTL_DAYS`, default 30).
fn ttl_from_env() -> Result<Duration, ConfigError> {
    let var = "RECORD_TTL_DAYS";
    match std::env::var(var)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
    {
        None => Ok(dynamo::DEFAULT_TTL),
        Some(raw) => match raw.parse::<u64>() {
            Ok(days @ 1..=3650) => Ok(Duration::from_secs(days * 24 * 3600)),
            _ => Err(ConfigError {
                var,
                problem: format!("must be a whole number of days from 1 to 3650, got {raw:?}"),
            }),
        },
    }
}

impl Adapters {
    pub fn new(config: &Config, clients: &Clients) -> Result<Self, ConfigError> {
        let bucket = required(&config.bucket, "BUCKET")?;
        Ok(Self {
            store: DynamoStore::new(
                clients.dynamodb.clone(),
                required(&config.table_name, "TABLE_NAME")?,
                RowsBucket::new(clients.s3.clone(), bucket.clone()),
            )
            .with_ttl(ttl_from_env()?),
            queue: SqsQueue::new(
                clients.sqs.clone(),
                required(&config.queue_url, "QUEUE_URL")?,
            ),
            fanout: config
                .fanout_queue_url
                .as_ref()
                .map(|url| SqsFanOut::new(clients.sqs.clone(), url)),
            objects: S3Objects::new(
                clients.s3.clone(),
                bucket,
                // Output URLs must outlive any credentials: never presigned.
                config.files_base_url().ok_or(ConfigError {
                    var: "PUBLIC_URL",
                    problem: "must be set (the service's base URL, for lasting output URLs under /files/) unless OUTPUT_BASE_URL is"
                        .into(),
                })?,
            ),
        })
    }
}

/// The webhook queue (`WEBHOOK_QUEUE_URL`), for the functions that
/// schedule and deliver webhook attempts.
pub fn webhook_queue(config: &Config, clients: &Clients) -> Result<SqsWebhookQueue, ConfigError> {
    Ok(SqsWebhookQueue::new(
        clients.sqs.clone(),
        required(&config.webhook_queue_url, "WEBHOOK_QUEUE_URL")?,
    ))
}

/// JSON log lines on stdout for CloudWatch (the format of
/// [`crate::logging`]), filtered by `RUST_LOG` (`info` when unset). Lambda
/// stamps every line with its own time, so none is added here.
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(crate::logging::filter("info"))
        .with(crate::logging::json_layer(std::io::stdout, false))
        .init();
}

/// Everything a function needs, from the environment ([`setup_from_env`]): configuration,
/// clients, adapters and the `App` the services run on.
pub async fn app_from_env() -> Result<(Arc<App>, Adapters), SetupError> {
    let (config, clients) = setup_from_env().await?;
    let adapters = Adapters::new(&config, &clients)?;
    Ok((app_with(config, &adapters)?, adapters))
}

/// The `App` on these adapters, publishing its metrics as EMF lines on
/// stdout (where Lambda sends them to CloudWatch Logs).
pub fn app_with(config: Config, adapters: &Adapters) -> Result<Arc<App>, SetupError> {
    let metrics = Arc::new(EmfRecorder::stdout(config.metrics_namespace.clone()));
    app_with_metrics(config, adapters, metrics)
}

/// The `App` on these adapters, with metrics going to `metrics`.
pub fn app_with_metrics(
    config: Config,
    adapters: &Adapters,
    metrics: Arc<dyn Recorder>,
) -> Result<Arc<App>, SetupError> {
    let http = GuardedClient::new(NetPolicy {
        allow_private: config.allow_private_networks,
        exempt: Vec::new(),
    })
    .map_err(SetupError::Http)?;
    let engine = Engine::new(
        Settings {
            quality: config.jpeg_quality,
            max_pixels: config.max_pixels,
            max_decode_bytes: config.max_decode_bytes(),
            max_cpu_time: config.max_image_cpu,
        },
        available_cores(),
    );
    Ok(Arc::new(App {
        config: Arc::new(config),
        store: Arc::new(adapters.store.clone()),
        queue: Arc::new(adapters.queue.clone()),
        fanout: adapters
            .fanout
            .clone()
            .map(|f| Arc::new(f) as Arc<dyn crate::ports::FanOutQueue>),
        objects: Arc::new(adapters.objects.clone()),
        // The slots are items of the jobs table, shared by every invocation.
        hosts: Arc::new(adapters.store.clone()),
        http,
        engine,
        metrics,
    }))
}
