//! A job whose host has every download slot taken waits in its queue, not
//! in a worker: it is queued again, as a new message delayed by a backoff,
//! and the delivery at hand ends. Nothing spins (each look waits longer,
//! up to [`MAX_PAUSE`]) and no attempt is used up: the queue counts the
//! new message's deliveries from one, so the job carries the attempts of
//! its earlier messages (`HostWait::attempts`), and a platform limit on
//! receives (the SQS redrive policy) never sees a waiting job.
//!
//! The wait ends: a job that has waited [`MAX_WAIT`] since it first found
//! its host busy fails as `timeout`, which completes its request like any
//! other outcome. A day holds every image of the largest request
//! (`MAX_IMAGES`, 50,000) to one host at the default cap of 8 with
//! downloads of up to 13 s each; the request's records outlive it
//! (`RECORD_TTL_DAYS`, 30 by default), and each message lives far less than
//! SQS keeps one (4 days by default), since every look is a new message.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::{Settle, record};
use crate::config::backoff;
use crate::domain::{ErrorCode, HostWait, ImageError, ImageJob, ImageOutcome};
use crate::metrics::ImageTimings;
use crate::ports::PortError;
use crate::services::App;

/// The longest a job waits for a slot of its host before it fails.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The longest pause between two looks for a free slot. Short enough that
/// a host's slots do not sit idle while jobs wait (with many jobs waiting,
/// some look every moment); long enough that a queue of thousands looks a
/// few times a minute each, not thousands of times.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);

/// Queues `job` (its delivery being attempt `attempt`) again to look for a
/// slot of `host` later, or fails it once it has waited [`MAX_WAIT`].
pub(super) async fn wait(
    app: &App,
    job: &ImageJob,
    host: &str,
    attempt: u32,
) -> Result<Settle, PortError> {
    let now = Utc::now().timestamp_millis();
    let since_ms = job.host_wait.map_or(now, |w| w.since_ms);
    let waits = job.host_wait.map_or(0, |w| w.waits).saturating_add(1);
    let waited = Duration::from_millis(now.saturating_sub(since_ms).max(0) as u64);
    if waited >= MAX_WAIT {
        let outcome = ImageOutcome::Failed {
            error: ImageError::new(
                ErrorCode::Timeout,
                format!(
                    "no download slot of {host} came free in {} hours (MAX_CONCURRENT_PER_HOST={})",
                    MAX_WAIT.as_secs() / 3600,
                    app.config.max_concurrent_per_host
                ),
            ),
            input_bytes: None,
        };
        tracing::warn!(host, waits, "gave up waiting for a download slot");
        return record(app, job, outcome, ImageTimings::default(), Instant::now()).await;
    }
    let delay = pause(app.config.retry_base_delay, waits);
    let next = ImageJob {
        host_wait: Some(HostWait {
            // This delivery made no attempt.
            attempts: attempt.saturating_sub(1),
            waits,
            since_ms,
        }),
        ..job.clone()
    };
    app.queue.send_later(&next, delay).await?;
    tracing::debug!(
        host,
        waits,
        retry_in_ms = delay.as_millis() as u64,
        "every download slot of the host is taken; the job waits in the queue"
    );
    Ok(Settle::Done)
}

/// The pause before look number `waits` (1-based): the retry backoff, with
/// its upper half random so that jobs that found the host busy together do
/// not all come back at the same moment.
fn pause(base: Duration, waits: u32) -> Duration {
    let full = backoff(base, waits, MAX_PAUSE);
    let half = full / 2;
    let spread = half.as_millis() as u64;
    let random = if spread == 0 {
        0
    } else {
        (uuid::Uuid::new_v4().as_u128() % u128::from(spread + 1)) as u64
    };
    half + Duration::from_millis(random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_a_minute_and_are_spread() {
        let base = Duration::from_secs(1);
        for _ in 0..50 {
            let first = pause(base, 1);
            assert!(
                first >= Duration::from_millis(500) && first <= base,
                "{first:?}"
            );
            let later = pause(base, 30);
            assert!(later >= MAX_PAUSE / 2 && later <= MAX_PAUSE, "{later:?}");
        }
        let spread: std::collections::HashSet<Duration> = (0..20).map(|_| pause(base, 6)).collect();
        assert!(spread.len() > 1, "jobs do not all come back at once");
    }
}
