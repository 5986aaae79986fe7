//! Processing one image job: fetch, compress, store, record — and, for the
//! last image of a request, its completion.

use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use super::{App, Settle, results};
use crate::domain::{
    Compressed, ErrorCode, ImageError, ImageJob, ImageOutcome, ImageStatus, Progress,
};
use crate::metrics::{Event, ImageTimings};
use crate::net::{FetchLimits, origin_of};
use crate::ports::{HostSlot, PortError};

mod host_wait;

/// Processes one delivery of `job`. `receive_count` (1-based) is how many
/// times the queue has delivered it, which bounds the retries: on the last
/// allowed attempt a transient failure fails the image, and a delivery past
/// it means every attempt's worker died (out of memory, a timeout, a crash)
/// before it could record anything, so the image fails as `worker_crashed`
/// without being tried again. Either way no request hangs.
/// An `Err` means the store itself failed; the message should come back.
///
/// The download waits for one of its host's `MAX_CONCURRENT_PER_HOST`
/// slots: a job that finds none is queued again for later as a new message
/// that carries its attempts so far (see [`host_wait`]), so waiting never
/// uses up an attempt, and this delivery is done.
///
/// Everything logged here, by the adapters too, happens inside the
/// `image` span, which names the request, the product and the image.
#[tracing::instrument(name = "image", skip_all,
    fields(request_id = %job.request_id, serial_number = job.serial_number, image = job.image, attempt = receive_count))]
pub async fn process_job(
    app: &App,
    job: &ImageJob,
    receive_count: u32,
) -> Result<Settle, PortError> {
    // Attempts of the job's earlier messages (before it waited for its
    // host) count as well.
    let receive_count = job.attempt(receive_count);
    let key = job.key();
    // Only a repeated delivery can find its image finished: the first
    // delivery of a job reads nothing before doing its work.
    if receive_count > 1 {
        match app.store.image_status(key).await? {
            // The request is gone (expired): nothing to do.
            None => return Ok(Settle::Done),
            Some(ImageStatus::Pending) => {}
            // The first delivery may have died between recording the image
            // and counting it or completing the request: finish those steps
            // (the outcome given is ignored for an image that has one).
            Some(_) => {
                let outcome = crashed(receive_count);
                let finished = app.store.finish_image(key, &outcome).await?;
                if let Some(progress) = finished.all_done {
                    complete_if_done(app, job.request_id, progress).await?;
                }
                return Ok(Settle::Done);
            }
        }
    }
    if receive_count > app.config.max_attempts {
        let outcome = crashed(receive_count - 1);
        tracing::warn!(
            code = ErrorCode::WorkerCrashed.as_str(),
            "every attempt's worker died; failing the image"
        );
        return record(app, job, outcome, ImageTimings::default(), Instant::now()).await;
    }

    let last_attempt = receive_count >= app.config.max_attempts;
    let started = Instant::now();
    let mut timings = ImageTimings::default();
    let outcome = match run(app, job, &mut timings).await {
        Ok(compressed) => ImageOutcome::Succeeded(compressed),
        Err(Stop::HostBusy(host)) => return host_wait::wait(app, job, &host, receive_count).await,
        Err(Stop::Store(e)) => return Err(e),
        Err(Stop::Failed(failure)) if failure.transient && !last_attempt => {
            let delay = app.config.backoff(receive_count);
            tracing::warn!(code = failure.error.code.as_str(), error = %failure.error.message,
                retry_in_ms = delay.as_millis() as u64, "image failed, will retry");
            app.metrics.record(&Event::ImageRetried {
                request_id: job.request_id,
                code: failure.error.code,
                timings,
            });
            return Ok(Settle::RetryAfter(delay));
        }
        Err(Stop::Failed(failure)) => ImageOutcome::Failed {
            error: failure.error,
            input_bytes: failure.input_bytes,
        },
    };
    record(app, job, outcome, timings, started).await
}

/// What the queue does with a delivery of `job` after [`process_job`]:
/// its answer, or, when the store failed, the delivery comes back after
/// the backoff of its attempt. Both runners settle jobs through this.
pub fn settle(
    app: &App,
    job: &ImageJob,
    receive_count: u32,
    result: Result<Settle, PortError>,
) -> Settle {
    result.unwrap_or_else(|e| {
        tracing::warn!(request_id = %job.request_id, image = job.image, error = %e,
            "the store failed; the job will come back");
        Settle::RetryAfter(app.config.backoff(receive_count))
    })
}

/// The outcome of an image whose worker died on each of its `attempts`.
pub fn crashed(attempts: u32) -> ImageOutcome {
    ImageOutcome::Failed {
        error: ImageError::new(
            ErrorCode::WorkerCrashed,
            format!(
                "the worker processing this image stopped on each of its {attempts} attempt(s) \
                 (out of memory, a timeout or a crash)"
            ),
        ),
        input_bytes: None,
    }
}

/// Records `outcome` for the job's image (counting it once), reports it,
/// and completes the request when it was the last image.
pub async fn record(
    app: &App,
    job: &ImageJob,
    outcome: ImageOutcome,
    timings: ImageTimings,
    started: Instant,
) -> Result<Settle, PortError> {
    let finished = app.store.finish_image(job.key(), &outcome).await?;
    let request_id = job.request_id;
    let counted = finished.applied;
    match &outcome {
        ImageOutcome::Succeeded(c) => {
            tracing::info!(
                input_bytes = c.input_bytes,
                output_bytes = c.output_bytes,
                original_kept = c.original_kept,
                ms = started.elapsed().as_millis() as u64,
                download_ms = ms(timings.download),
                decode_ms = ms(timings.decode),
                encode_ms = ms(timings.encode),
                counted,
                "image succeeded"
            );
            app.metrics.record(&Event::ImageSucceeded {
                request_id,
                counted,
                input_bytes: c.input_bytes,
                output_bytes: c.output_bytes,
                timings,
            });
        }
        ImageOutcome::Failed { error, .. } => {
            tracing::info!(code = error.code.as_str(), error = %error.message, counted, "image failed");
            app.metrics.record(&Event::ImageFailed {
                request_id,
                counted,
                code: error.code,
                timings,
            });
        }
    }
    if let Some(progress) = finished.all_done {
        complete_if_done(app, request_id, progress).await?;
    }
    Ok(Settle::Done)
}

fn ms(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_millis() as u64)
}

struct Failure {
    error: ImageError,
    transient: bool,
    input_bytes: Option<u64>,
}

/// Why a job ended before its outcome.
enum Stop {
    Failed(Failure),
    /// Every download slot of this origin is taken.
    HostBusy(String),
    /// The host slots' store failed.
    Store(PortError),
}

impl From<Failure> for Stop {
    fn from(failure: Failure) -> Self {
        Self::Failed(failure)
    }
}

/// How long a download slot is held at most: the fetch is cut at its
/// timeout, and the margin covers the clocks of the workers disagreeing.
fn slot_lease(fetch_timeout: Duration) -> Duration {
    fetch_timeout + Duration::from_secs(15)
}

/// Downloads `url` within one of its host's slots, freed as soon as the
/// body is in (compression does not hold it). A slot that cannot be freed,
/// or whose worker dies first, frees itself when its lease ends.
async fn download(app: &App, url: &str, limits: FetchLimits) -> Result<Bytes, Stop> {
    let cap = app.config.max_concurrent_per_host;
    let slot: Option<HostSlot> = match origin_of(url) {
        Some(host) if cap > 0 => {
            match app
                .hosts
                .acquire(&host, cap, slot_lease(limits.timeout))
                .await
            {
                Ok(Some(slot)) => Some(slot),
                Ok(None) => return Err(Stop::HostBusy(host)),
                Err(e) => return Err(Stop::Store(e)),
            }
        }
        // Unlimited, or not a URL any connection is made to.
        _ => None,
    };
    let fetched = app.http.fetch(url, limits).await;
    if let Some(slot) = slot
        && let Err(e) = app.hosts.release(&slot).await
    {
        tracing::warn!(host = %slot.host, error = %e,
            "cannot free a download slot; it frees itself when its lease ends");
    }
    fetched.map_err(|e| {
        Stop::Failed(Failure {
            transient: e.is_transient(),
            error: ImageError::new(e.code(), e.to_string()),
            input_bytes: None,
        })
    })
}

/// Fetches, compresses and stores one image, noting in `timings` how long
/// each stage it reached took.
async fn run(app: &App, job: &ImageJob, timings: &mut ImageTimings) -> Result<Compressed, Stop> {
    let limits = FetchLimits {
        max_bytes: app.config.max_download_bytes,
        timeout: app.config.fetch_timeout,
    };
    let fetch_started = Instant::now();
    let input = download(app, &job.input_url, limits).await?;
    timings.download = Some(fetch_started.elapsed());
    let input_bytes = input.len() as u64;
    let out = app.engine.compress(input).await.map_err(|e| Failure {
        transient: false,
        error: ImageError::new(e.code(), e.to_string()),
        input_bytes: Some(input_bytes),
    })?;
    timings.decode = Some(out.timings.decode);
    timings.encode = Some(out.timings.encode);
    let output_key = job.output_key();
    let output_bytes = out.bytes.len() as u64;
    app.objects
        .put(&output_key, Bytes::from(out.bytes), "image/jpeg")
        .await
        .map_err(|e| Failure {
            transient: e.is_transient(),
            error: ImageError::new(
                ErrorCode::StorageFailed,
                format!("storing the result failed: {e}"),
            ),
            input_bytes: Some(input_bytes),
        })?;
    Ok(Compressed {
        output_key,
        input_bytes,
        output_bytes,
        width: out.width,
        height: out.height,
        original_kept: out.original_kept,
    })
}

/// Once every image has finished, completes the request (see
/// [`super::results`]): here and now, or, where the app has a fan-out
/// worker, by handing it there, whose runs are long and resume where they
/// stopped; the results CSV of a large request outlasts one image job.
pub async fn complete_if_done(app: &App, id: Uuid, progress: Progress) -> Result<(), PortError> {
    if !progress.is_done() {
        return Ok(());
    }
    match &app.fanout {
        Some(queue) => queue.complete(id, progress, Duration::ZERO).await,
        None => results::complete(app, id, progress, None).await.map(|_| ()),
    }
}
