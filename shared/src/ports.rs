//! The traits the services are written against. Each has an embedded
//! implementation and an AWS one (`crate::adapters`); both pass one
//! conformance suite.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;

use crate::domain::{
    ImageJob, ImageKey, ImageOutcome, ImageStatus, NewRequest, ProductRecord, Progress,
    RequestRecord, WebhookState,
};

/// What an adapter reports when a backend call fails.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PortError {
    /// Worth retrying: throttling, timeouts, a backend briefly unavailable.
    #[error("{0} (temporary)")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
}

impl PortError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

pub type PortResult<T> = Result<T, PortError>;

#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    Created,
    /// A request with this ID already exists (a repeated submission).
    Existing(RequestRecord),
}

/// What finishing an image did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// False when the image had already finished: nothing was counted.
    pub applied: bool,
    /// `Some` with the request's final counts once every image of the
    /// request has finished, as far as this call can tell; the caller then
    /// completes the request (which is idempotent).
    pub all_done: Option<Progress>,
}

/// The right to fan a request out, held by one worker at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanOutClaim {
    /// Taken: queue products from `next` on; `queued` images are queued already.
    Claimed { next: u32, queued: u32 },
    /// Another worker holds it until its lease ends.
    Busy { retry_after: Duration },
    /// Every image is queued.
    Finished,
    /// No such request (it expired).
    Missing,
}

/// One slice of a request's images to queue, from a product position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanOutSlice {
    pub jobs: Vec<ImageJob>,
    /// Where the next slice starts.
    pub next: u32,
}

/// Requests, their products and images, and every transition between states.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a request with all its products, durably and in a time that
    /// does not grow with its size. A request with the same ID is left as
    /// it is and returned. Images are queued afterwards by the fan-out
    /// (`claim_fan_out` … `advance_fan_out`).
    async fn create_request(&self, new: &NewRequest) -> PortResult<CreateOutcome>;

    async fn get_request(&self, id: Uuid) -> PortResult<Option<RequestRecord>>;

    /// Products in input order, with their images, starting after position
    /// `after` (from the first when `None`).
    async fn list_products(
        &self,
        id: Uuid,
        after: Option<u32>,
        limit: u32,
    ) -> PortResult<Vec<ProductRecord>>;

    async fn image_status(&self, key: ImageKey) -> PortResult<Option<ImageStatus>>;

    /// Moves a pending image to its outcome and counts it, exactly once: a
    /// second call for the same image (even with another outcome) counts
    /// nothing, and a call that repeats one interrupted half-way completes
    /// the counting.
    async fn finish_image(&self, key: ImageKey, outcome: &ImageOutcome) -> PortResult<Finished>;

    /// Moves a request whose counters read `progress` (all images finished)
    /// to its terminal status. True only for the one call that did it.
    async fn complete_request(&self, id: Uuid, progress: Progress) -> PortResult<bool>;

    async fn record_webhook(&self, id: Uuid, state: &WebhookState) -> PortResult<()>;

    /// Takes the fan-out of a request for `owner` until `lease` from now
    /// (or renews it when `owner` holds it).
    async fn claim_fan_out(
        &self,
        id: Uuid,
        owner: Uuid,
        lease: Duration,
    ) -> PortResult<FanOutClaim>;

    /// The jobs of the products from position `from` on, in one bounded
    /// slice; `None` once `from` is past the last product.
    async fn fan_out_slice(&self, id: Uuid, from: u32) -> PortResult<Option<FanOutSlice>>;

    /// Records that the slice `from..next` (`jobs` images) is queued and
    /// renews `owner`'s lease. False when `owner` no longer holds the
    /// fan-out or another worker already recorded that slice.
    async fn advance_fan_out(
        &self,
        id: Uuid,
        owner: Uuid,
        from: u32,
        next: u32,
        jobs: u32,
        lease: Duration,
    ) -> PortResult<bool>;

    /// Takes attempt `attempt` (1-based) of a terminal request's webhook for
    /// `lease`. Every POST happens under a claim, and a claim is given only
    /// while the webhook is pending with exactly `attempt - 1` attempts
    /// recorded and nobody else holds this attempt, so duplicate deliveries
    /// of one scheduled attempt never POST twice and nothing follows a 2xx.
    /// The lease covers an attempt whose holder died before recording it.
    async fn claim_webhook_attempt(
        &self,
        id: Uuid,
        attempt: u32,
        lease: Duration,
    ) -> PortResult<WebhookClaim>;
}

/// What claiming a webhook attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookClaim {
    /// The caller holds the attempt: POST, then `record_webhook`.
    Claimed,
    /// Another caller holds this attempt, or an earlier one is not recorded
    /// yet: try again later.
    NotYet,
    /// The attempt was made already, the webhook ended (or there is none),
    /// or the request is gone or not terminal: nothing to do.
    Done,
}

/// One scheduled webhook attempt: the body of a webhook queue message on
/// AWS, a row of the outbox locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WebhookJob {
    pub request_id: Uuid,
    /// 1-based.
    pub attempt: u32,
    /// When the attempt is due, in Unix milliseconds. Waits longer than a
    /// queue can hold a message are made of several hops; a job that arrives
    /// before this time is scheduled again for the rest.
    pub due_ms: i64,
}

/// Where webhook attempts wait until they are due: an SQS queue with
/// delays on AWS, the SQLite outbox locally. Both survive restarts.
#[async_trait]
pub trait WebhookScheduler: Send + Sync {
    /// Stores `job` durably; it is handed back at (or, on AWS, possibly
    /// before) `job.due_ms`, at least once.
    async fn schedule(&self, job: &WebhookJob) -> PortResult<()>;
}

/// Where image jobs are sent.
#[async_trait]
pub trait JobQueue: Send + Sync {
    async fn send(&self, jobs: &[ImageJob]) -> PortResult<()>;

    /// Queues `job` again, visible after `delay` (on AWS at most 15
    /// minutes), as a new message whose receive count starts over, in
    /// place of the delivery being handled: the caller then acknowledges
    /// that delivery as done.
    async fn send_later(&self, job: &ImageJob, delay: Duration) -> PortResult<()>;
}

/// A download slot of one host, held until its lease ends or it is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSlot {
    /// The origin the slot belongs to (`crate::net::origin_of`).
    pub host: String,
    /// Which of the host's slots, `0..cap`.
    pub index: u32,
    /// The holder's token: only it releases the slot.
    pub owner: Uuid,
}

/// A counting semaphore per host, shared by every worker: at most `cap`
/// slots of a host are held at once. Each slot is a lease, so a holder
/// that dies without releasing frees it when the lease ends.
#[async_trait]
pub trait HostSlots: Send + Sync {
    /// Takes one of the `cap` slots of `host` until `lease` from now;
    /// `None` when every one is held by a lease still running.
    async fn acquire(&self, host: &str, cap: u32, lease: Duration) -> PortResult<Option<HostSlot>>;

    /// Frees `slot` if its owner still holds it; a slot whose lease ended
    /// and was taken by another worker is left to that worker.
    async fn release(&self, slot: &HostSlot) -> PortResult<()>;
}

/// Where the fan-out of a request is handed to a worker of its own (SQS on
/// AWS). Without one, the submitting process fans out itself.
#[async_trait]
pub trait FanOutQueue: Send + Sync {
    /// Asks for the fan-out of request `id` to run (again), after `delay`.
    async fn start(&self, id: Uuid, delay: Duration) -> PortResult<()>;
    /// Asks for request `id`, whose images are all finished with
    /// `progress`, to be completed (again), after `delay`.
    async fn complete(&self, id: Uuid, progress: Progress, delay: Duration) -> PortResult<()>;
}

/// One received job. `receive_count` starts at 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub job: ImageJob,
    pub receipt: String,
    pub receive_count: u32,
}

/// Where workers take jobs from (Lambda's event source does this on AWS).
#[async_trait]
pub trait JobSource: Send + Sync {
    /// Up to `max` visible jobs, each hidden from other receivers for `lease`.
    async fn receive(&self, max: usize, lease: Duration) -> PortResult<Vec<Delivery>>;
    /// The job is done: it is never delivered again.
    async fn ack(&self, receipt: &str) -> PortResult<()>;
    /// Deliver the job again after `delay`.
    async fn retry_later(&self, receipt: &str, delay: Duration) -> PortResult<()>;
}

/// How a client gets a stored object from the service's `/files` route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    /// Fetch it from this short-lived URL (a presigned GET), never cached:
    /// the object's bytes never pass through the service.
    Redirect(String),
    /// The object itself.
    Body { bytes: Bytes, content_type: String },
}

/// Stored objects: processed images and result CSVs.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Stores the whole object or nothing.
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> PortResult<()>;
    async fn get(&self, key: &str) -> PortResult<Option<Bytes>>;
    /// The lasting URL clients are given for the object: it carries no
    /// signature, so it works for as long as the object is kept.
    async fn url(&self, key: &str) -> PortResult<String>;
    /// How to hand the object to a client right now; `None` when it does
    /// not exist.
    async fn download(&self, key: &str) -> PortResult<Option<Download>>;
}
