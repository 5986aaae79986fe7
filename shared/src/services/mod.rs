//! What the service does, written once against the ports: the HTTP API,
//! the Lambda handlers and the local runner all call these.

pub mod fanout;
pub mod kept_slots;
pub mod notify;
pub mod process;
pub mod status;
pub mod submit;

use std::sync::Arc;

use crate::compress::Engine;
use crate::config::Config;
use crate::domain::csv_input::Issue;
use crate::metrics::Recorder;
use crate::net::GuardedClient;
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
