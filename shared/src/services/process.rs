//! Processing one image job: fetch, compress, store, record — and, for the
//! last image of a request, the results CSV and the terminal transition.

use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use super::{App, ServiceError};
use crate::domain::{Compressed, ErrorCode, ImageError, ImageJob, ImageOutcome, ImageStatus, Progress, results_key};
use crate::net::FetchLimits;
use crate::ports::PortError;

/// What to do with the job's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobResult {
    /// Finished (or already finished): delete the message.
    Done,
    /// A transient failure with attempts left: deliver it again after the delay.
    RetryAfter(Duration),
}

/// Processes one delivery of `job`. `receive_count` (1-based) is how many
/// times the queue has delivered it, which bounds the retries: on the last
/// allowed attempt a transient failure fails the image, so no request hangs.
/// An `Err` means the store itself failed; the message should come back.
pub async fn process_job(app: &App, job: &ImageJob, receive_count: u32) -> Result<JobResult, PortError> {
    let key = job.key();
    match app.store.image_status(key).await? {
        // The request is gone (expired): nothing to do.
        None => return Ok(JobResult::Done),
        Some(ImageStatus::Pending) => {}
        // A repeated delivery. The first may have died between counting the
        // image and completing the request, so finish that step.
        Some(_) => {
            if let Some(request) = app.store.get_request(job.request_id).await? {
                if request.terminal.is_none() {
                    complete_if_done(app, job.request_id, request.progress).await?;
                }
            }
            return Ok(JobResult::Done);
        }
    }

    let last_attempt = receive_count >= app.config.max_attempts;
    let started = Instant::now();
    let outcome = match run(app, job).await {
        Ok(compressed) => ImageOutcome::Succeeded(compressed),
        Err(failure) if failure.transient && !last_attempt => {
            let delay = app.config.backoff(receive_count);
            tracing::warn!(request_id = %job.request_id, serial_number = job.serial_number, image = job.image,
                attempt = receive_count, code = failure.error.code.as_str(), error = %failure.error.message,
                retry_in_ms = delay.as_millis() as u64, "image failed, will retry");
            return Ok(JobResult::RetryAfter(delay));
        }
        Err(failure) => ImageOutcome::Failed { error: failure.error, input_bytes: failure.input_bytes },
    };

    let finished = app.store.finish_image(key, &outcome).await?;
    match &outcome {
        ImageOutcome::Succeeded(c) => tracing::info!(request_id = %job.request_id, serial_number = job.serial_number,
            image = job.image, input_bytes = c.input_bytes, output_bytes = c.output_bytes,
            original_kept = c.original_kept, ms = started.elapsed().as_millis() as u64, counted = finished.applied,
            "image succeeded"),
        ImageOutcome::Failed { error, .. } => tracing::info!(request_id = %job.request_id,
            serial_number = job.serial_number, image = job.image, code = error.code.as_str(), error = %error.message,
            attempt = receive_count, counted = finished.applied, "image failed"),
    }
    complete_if_done(app, job.request_id, finished.progress).await?;
    Ok(JobResult::Done)
}

struct Failure {
    error: ImageError,
    transient: bool,
    input_bytes: Option<u64>,
}

async fn run(app: &App, job: &ImageJob) -> Result<Compressed, Failure> {
    let limits = FetchLimits { max_bytes: app.config.max_download_bytes, timeout: app.config.fetch_timeout };
    let input = app.http.fetch(&job.input_url, limits).await.map_err(|e| Failure {
        transient: e.is_transient(),
        error: ImageError::new(e.code(), e.to_string()),
        input_bytes: None,
    })?;
    let input_bytes = input.len() as u64;
    let out = app.engine.compress(input).await.map_err(|e| Failure {
        transient: false,
        error: ImageError::new(e.code(), e.to_string()),
        input_bytes: Some(input_bytes),
    })?;
    let output_key = job.output_key();
    let output_bytes = out.bytes.len() as u64;
    app.objects.put(&output_key, Bytes::from(out.bytes), "image/jpeg").await.map_err(|e| Failure {
        transient: e.is_transient(),
        error: ImageError::new(ErrorCode::StorageFailed, format!("storing the result failed: {e}")),
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

/// Once every image has finished: write `results/{id}.csv`, then make the
/// terminal transition (exactly one caller wins it). The CSV is written
/// first so that it exists by the time anyone sees the terminal status.
pub async fn complete_if_done(app: &App, id: Uuid, progress: Progress) -> Result<bool, PortError> {
    if !progress.is_done() {
        return Ok(false);
    }
    let csv = match super::status::build_output_csv(app, id).await {
        Ok(csv) => csv,
        Err(ServiceError::Backend(e)) => return Err(e),
        Err(other) => return Err(PortError::Permanent(other.to_string())),
    };
    app.objects.put(&results_key(id), Bytes::from(csv), "text/csv; charset=utf-8").await?;
    let won = app.store.complete_request(id, progress).await?;
    if won {
        tracing::info!(request_id = %id, total = progress.total, succeeded = progress.succeeded,
            failed = progress.failed, "request finished");
    }
    Ok(won)
}
