//! The Lambda side: each function's set-up at cold start (configuration,
//! secrets, clients, the `App` on the AWS adapters of
//! [`crate::adapters`]) and the event handlers the functions call. Built
//! with the `aws` feature; the local runner does without it.
//!
//! `AWS_ENDPOINT_URL` (read by the SDK itself) points every client at an
//! emulator such as moto or LocalStack; S3 then uses path-style addresses,
//! which emulators need (`Config::s3_force_path_style`).
//!
//! Every function starts through [`setup_from_env`]: the configuration, with
//! the secrets named by `<NAME>_SECRET_ARN` read from Secrets Manager
//! ([`secrets`]), and the clients.

pub mod handlers;
pub mod secrets;
#[cfg(feature = "stream-poller")]
pub mod stream_poller;

use std::sync::Arc;
use std::time::Instant;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{LambdaEvent, service_fn};

pub use crate::adapters::dynamo::DynamoStore;
pub use crate::adapters::s3::{RowsBucket, S3Objects};
pub use crate::adapters::sqs::{SqsFanOut, SqsQueue, SqsWebhookQueue};

use crate::compress::available_cores;
use crate::config::{Config, ConfigError};
use crate::metrics::{EmfRecorder, Recorder};
use crate::ports::{FanOutQueue, JobSource};
use crate::services::{App, AppParts};

/// The three AWS clients, built once per cold start and reused.
#[derive(Clone, Debug)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
}

impl Clients {
    /// Region, credentials and endpoint from the environment, as every
    /// AWS tool reads them; S3's addressing from `config`.
    pub async fn new(config: &Config) -> Self {
        Self::on(&sdk_config().await, config)
    }

    /// The clients on one SDK configuration.
    pub fn on(sdk: &SdkConfig, config: &Config) -> Self {
        let s3 = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(config.s3_force_path_style)
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
    let clients = Clients::on(&sdk, &config);
    Ok((config, clients))
}

/// Why a function cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
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

impl Adapters {
    pub fn new(config: &Config, clients: &Clients) -> Result<Self, ConfigError> {
        let bucket = required(&config.bucket, "BUCKET")?;
        Ok(Self {
            store: DynamoStore::new(
                clients.dynamodb.clone(),
                required(&config.table_name, "TABLE_NAME")?,
                RowsBucket::new(clients.s3.clone(), bucket.clone()),
            )
            .with_ttl(config.record_ttl),
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
    let parts = AppParts {
        store: Arc::new(adapters.store.clone()),
        queue: Arc::new(adapters.queue.clone()),
        fanout: adapters
            .fanout
            .clone()
            .map(|f| Arc::new(f) as Arc<dyn FanOutQueue>),
        objects: Arc::new(adapters.objects.clone()),
        // The slots are items of the jobs table, shared by every invocation.
        hosts: Arc::new(adapters.store.clone()),
        metrics,
        net_exempt: Vec::new(),
        lookup: None,
        cpu_threads: available_cores(),
    };
    Ok(Arc::new(App::new(config, parts).map_err(SetupError::Http)?))
}

/// The queue an SQS-triggered function of the image pipeline reads, and
/// hands messages back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSource {
    /// The image jobs (`QUEUE_URL`): the `process` function.
    Jobs,
    /// Fan-out requests (`FANOUT_QUEUE_URL`): the `fanout` function.
    FanOut,
    /// The image jobs' dead-letter queue (`DEAD_LETTER_QUEUE_URL`).
    DeadLetter,
}

/// A whole SQS-triggered function: the set-up from the environment once
/// per cold start, then every batch through `handle`, within the
/// invocation's deadline.
pub async fn run_batches<H>(source: BatchSource, handle: H) -> Result<(), lambda_runtime::Error>
where
    H: AsyncFn(&App, &dyn JobSource, SqsEvent, Option<Instant>) -> SqsBatchResponse,
{
    init_tracing();
    let (app, adapters) = app_from_env().await?;
    let other = |url: &Option<String>, var| {
        required(url, var).map(|url| SqsQueue::new(adapters.queue.client().clone(), url))
    };
    let source = match source {
        BatchSource::Jobs => adapters.queue.clone(),
        BatchSource::FanOut => other(&app.config.fanout_queue_url, "FANOUT_QUEUE_URL")?,
        BatchSource::DeadLetter => {
            other(&app.config.dead_letter_queue_url, "DEAD_LETTER_QUEUE_URL")?
        }
    };
    let (app, source, handle) = (&app, &source, &handle);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = handlers::batch::deadline_of(event.context.deadline);
        Ok::<_, lambda_runtime::Error>(handle(app, source, event.payload, deadline).await)
    }))
    .await
}
