//! What the service does, written once against the ports: the HTTP API,
//! the Lambda handlers and the local runner all call these.

pub mod fanout;
pub mod kept_slots;
pub mod notify;
pub mod process;
pub mod results;
pub mod status;
pub mod submit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::compress::Engine;
use crate::config::Config;
use crate::domain::csv_input::Issue;
use crate::metrics::Recorder;
use crate::net::{GuardedClient, NameLookup, NetPolicy};
use crate::ports::{FanOutQueue, HostSlots, JobQueue, JobStore, ObjectStore, PortError};

/// Everything the services need, built once per process (per cold start
/// on Lambda) and shared.
#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn JobQueue>,
    /// Where fan-outs run (the `fanout` function on AWS); `None` fans out
    /// in the submitting process.
    pub fanout: Option<Arc<dyn FanOutQueue>>,
    pub objects: Arc<dyn ObjectStore>,
    /// The download slots of each host (`MAX_CONCURRENT_PER_HOST`).
    pub hosts: Arc<dyn HostSlots>,
    pub http: GuardedClient,
    pub engine: Engine,
    /// Where the services report what happened (EMF on Lambda, Prometheus locally).
    pub metrics: Arc<dyn Recorder>,
}

/// What the Lambda set-up and the local runner give an `App`: the
/// adapters, where metrics go, and what the host allows. The rest (the
/// guarded HTTP client, the engine) follows from the configuration.
pub struct AppParts {
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn JobQueue>,
    pub fanout: Option<Arc<dyn FanOutQueue>>,
    pub objects: Arc<dyn ObjectStore>,
    pub hosts: Arc<dyn HostSlots>,
    pub metrics: Arc<dyn Recorder>,
    /// Private endpoints let through the network guard (the local runner's
    /// example server).
    pub net_exempt: Vec<SocketAddr>,
    /// Name resolution; the system resolver when `None`.
    pub lookup: Option<Arc<dyn NameLookup>>,
    /// Images compressed at once.
    pub cpu_threads: usize,
}

impl App {
    /// The one way an `App` is built, on Lambda and locally.
    pub fn new(config: Config, parts: AppParts) -> Result<Self, String> {
        let policy = NetPolicy {
            allow_private: config.allow_private_networks,
            exempt: parts.net_exempt,
        };
        let http = match parts.lookup {
            Some(lookup) => GuardedClient::with_lookup(policy, lookup)?,
            None => GuardedClient::new(policy)?,
        };
        let engine = Engine::new(config.engine_settings(), parts.cpu_threads);
        Ok(Self {
            config: Arc::new(config),
            store: parts.store,
            queue: parts.queue,
            fanout: parts.fanout,
            objects: parts.objects,
            hosts: parts.hosts,
            http,
            engine,
            metrics: parts.metrics,
        })
    }
}

/// What a queue does with a message once its work has run: the one answer
/// of every job handler, on SQS and on the local queue alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Finished, or nothing left to do: delete the message.
    Done,
    /// Deliver the message again after the delay.
    RetryAfter(Duration),
}

/// Why a service call did not do what was asked. Mapped to HTTP in one
/// place (`api::error`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("the CSV is invalid: {} problem(s)", .0.len())]
    InvalidCsv(Vec<Issue>),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("no such request")]
    NotFound,
    #[error("the request is still being processed")]
    NotReady,
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Backend(#[from] PortError),
}
