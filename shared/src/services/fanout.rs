//! Fan-out: queueing a stored request's image jobs, one bounded slice at a
//! time, so that submitting answers in a time that does not grow with the
//! request. The cursor and a lease live on the request: a worker that dies
//! mid-way leaves a lease that lapses, and the next run resumes at the
//! first slice not recorded as queued; a duplicate run finds the lease
//! taken and queues nothing.

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::App;
use crate::ports::{FanOutClaim, PortError};

/// How long a fan-out worker holds a request between two slices: far
/// longer than one slice takes, shorter than the fan-out queue's
/// visibility timeout, so a redelivered message finds a dead worker's
/// lease lapsed.
pub const LEASE: Duration = Duration::from_secs(180);

/// A run stops taking slices when less than this is left before its deadline.
pub const SLICE_BUDGET: Duration = Duration::from_secs(15);

/// How a fan-out run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanOutRun {
    /// Every image of the request is queued.
    Finished,
    /// Stopped at its deadline with slices left; the lease is released so
    /// that the continuation can start at once.
    Paused,
    /// Another worker is fanning the request out, or just lost its lease
    /// to one: come back after the delay if the work may be left undone.
    Busy(Duration),
    /// No such request (expired or never stored).
    Missing,
}

/// Queues the images of request `id` from where its fan-out stands, until
/// all are queued or `deadline` draws near.
#[tracing::instrument(name = "fanout", skip_all, fields(request_id = %id))]
pub async fn fan_out(
    app: &App,
    id: Uuid,
    deadline: Option<Instant>,
) -> Result<FanOutRun, PortError> {
    let owner = Uuid::new_v4();
    let mut next = match app.store.claim_fan_out(id, owner, LEASE).await? {
        FanOutClaim::Claimed { next, .. } => next,
        FanOutClaim::Busy { retry_after } => return Ok(FanOutRun::Busy(retry_after)),
        FanOutClaim::Finished => return Ok(FanOutRun::Finished),
        FanOutClaim::Missing => return Ok(FanOutRun::Missing),
    };
    let mut queued = 0usize;
    loop {
        if deadline.is_some_and(|d| Instant::now() + SLICE_BUDGET >= d) {
            // Release the lease (a zero-length renewal) for the continuation.
            app.store
                .advance_fan_out(id, owner, next, next, 0, Duration::ZERO)
                .await?;
            tracing::info!(next, queued, "fan-out paused at its deadline");
            return Ok(FanOutRun::Paused);
        }
        let Some(slice) = app.store.fan_out_slice(id, next).await? else {
            tracing::info!(queued, "fan-out finished");
            return Ok(FanOutRun::Finished);
        };
        app.queue.send(&slice.jobs).await?;
        let count = slice.jobs.len() as u32;
        if !app
            .store
            .advance_fan_out(id, owner, next, slice.next, count, LEASE)
            .await?
        {
            // The lease lapsed and another worker took over; it re-queues
            // this slice, whose duplicate jobs count nothing twice.
            tracing::warn!(
                next,
                "fan-out lease lost; leaving the rest to its new holder"
            );
            return Ok(FanOutRun::Busy(LEASE));
        }
        queued += count as usize;
        next = slice.next;
    }
}

/// Hands the fan-out of request `id` to its own worker, when the app has a
/// fan-out queue. Called BEFORE the request is stored too: a process that
/// dies between storing and asking would otherwise strand the request
/// (the worker waits a while for a request that is not there yet).
pub async fn ask(app: &App, id: Uuid) -> Result<(), PortError> {
    match &app.fanout {
        Some(queue) => queue.start(id, Duration::ZERO).await,
        None => Ok(()),
    }
}

/// Fans a stored request out here and now, when the app has no fan-out
/// queue (the local runner).
pub async fn run_inline(app: &App, id: Uuid) -> Result<(), PortError> {
    if app.fanout.is_some() {
        return Ok(());
    }
    match fan_out(app, id, None).await? {
        FanOutRun::Finished | FanOutRun::Missing | FanOutRun::Busy(_) => Ok(()),
        FanOutRun::Paused => Err(PortError::Transient(
            "fan-out paused without a deadline".into(),
        )),
    }
}
