//! The webhook of a finished request (SPEC §5): signed, one delivery ID per
//! event, every attempt recorded, retried on a durable schedule.
//!
//! One call of [`run_attempt`] is one attempt. A failed attempt schedules
//! the next one through a [`WebhookScheduler`] (an SQS message with a
//! delay on AWS, an outbox row locally) instead of sleeping, so a receiver
//! that is down for a day costs nothing while it waits, and deliveries to
//! different receivers never wait for each other. A claim in the store
//! ([`JobStore::claim_webhook_attempt`](crate::ports::JobStore::claim_webhook_attempt))
//! guards every POST, so duplicate jobs never deliver an event twice.

use std::time::Duration;

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;

use super::App;
use crate::domain::{RequestRecord, WebhookStatus, results_key};
use crate::metrics::{Event, WebhookAttempt};
use crate::net::PostOutcome;
use crate::ports::{PortError, WebhookClaim, WebhookJob, WebhookScheduler};

pub const EVENT: &str = "request.completed";

/// How much earlier than its due time a job may run. Queues deliver in
/// whole seconds and clocks differ a little between hosts.
const EARLY_TOLERANCE_MS: i64 = 1000;

/// Beyond the webhook timeout, how long a claim outlives its POST: room for
/// the store writes that record the attempt.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);

/// The same for every attempt of one event, so receivers can dedupe.
pub fn delivery_id(request_id: Uuid) -> Uuid {
    Uuid::new_v5(&request_id, EVENT.as_bytes())
}

fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `X-Imgproc-Signature`: `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    hmac_hex(secret, &[body])
}

/// `X-Imgproc-Signature-V2`: `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`,
/// with `timestamp` the `X-Imgproc-Timestamp` of the same attempt, so a
/// captured delivery cannot be replayed once receivers find it too old.
pub fn signature_v2(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hmac_hex(secret, &[timestamp.to_string().as_bytes(), b".", body])
}

/// Now, in Unix milliseconds (the clock of [`WebhookJob::due_ms`]).
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The first attempt of a request's webhook, due now.
pub fn first_attempt(request_id: Uuid) -> WebhookJob {
    WebhookJob {
        request_id,
        attempt: 1,
        due_ms: now_ms(),
    }
}

/// How long a claim on an attempt lasts.
pub fn claim_lease(app: &App) -> Duration {
    app.config.webhook_timeout + CLAIM_MARGIN
}

/// The event body. Built only from stored fields and the results CSV's
/// URL, so every attempt, even after a restart, sends the same bytes while
/// that URL is stable (presigned URLs are signed afresh each time).
pub async fn payload(app: &App, request: &RequestRecord) -> Result<Vec<u8>, PortError> {
    let p = request.progress;
    let output_csv_url = app.objects.url(&results_key(request.id)).await?;
    let body = json!({
        "event": EVENT,
        "request_id": request.id,
        "status": request.status().as_str(),
        "progress": {
            "total": p.total,
            "succeeded": p.succeeded,
            "failed": p.failed,
            "pending": p.pending(),
            "percent": p.percent(),
        },
        "output_csv_url": output_csv_url,
        "completed_at": request.completed_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
    });
    Ok(serde_json::to_vec(&body).unwrap_or_default())
}

/// What became of one webhook job; tells its carrier (a queue message, an
/// outbox row) what to do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Delivered, given up, or nothing (left) to do: drop the job.
    Finished,
    /// The attempt failed and the next one is scheduled: drop this job.
    Rescheduled,
    /// The job came before its due time and was scheduled again as it is:
    /// drop this copy (a queue message) or keep it (an outbox row).
    Waiting,
    /// Not now: another caller holds the attempt, or the previous attempt
    /// is not recorded yet. Hand the job back after a backoff.
    NotYet,
}

/// Makes attempt `job.attempt` of a request's webhook, if it is due and
/// still owed. A failed attempt with attempts left schedules the next one
/// (after the `WEBHOOK_RETRY_SCHEDULE` delay) before it is recorded, so a
/// crash in between leaves a duplicate, which the claim absorbs, never a
/// gap. An `Err` means a store or queue call failed: hand the job back.
///
/// Logs name the receiver's host only (its URL can carry tokens), never
/// the body.
#[tracing::instrument(name = "webhook", skip_all, fields(request_id = %job.request_id, attempt = job.attempt))]
pub async fn run_attempt(
    app: &App,
    scheduler: &dyn WebhookScheduler,
    job: WebhookJob,
) -> Result<Handled, PortError> {
    if job.due_ms - now_ms() > EARLY_TOLERANCE_MS {
        scheduler.schedule(&job).await?;
        return Ok(Handled::Waiting);
    }
    let request_id = job.request_id;
    let Some(request) = app.store.get_request(request_id).await? else {
        return Ok(Handled::Finished);
    };
    let Some(mut state) = request.webhook.clone() else {
        return Ok(Handled::Finished);
    };
    if request.terminal.is_none()
        || state.status != WebhookStatus::Pending
        || state.attempts >= job.attempt
    {
        return Ok(Handled::Finished);
    }
    if state.attempts + 1 < job.attempt {
        return Ok(Handled::NotYet);
    }
    let max = app.config.webhook_max_attempts;
    if job.attempt > max {
        // Scheduled under a larger WEBHOOK_MAX_ATTEMPTS: the webhook is out of attempts.
        tracing::warn!(max, "webhook out of attempts");
        state.status = WebhookStatus::Failed;
        app.store.record_webhook(request_id, &state).await?;
        return Ok(Handled::Finished);
    }
    let body = Bytes::from(payload(app, &request).await?);
    match app
        .store
        .claim_webhook_attempt(request_id, job.attempt, claim_lease(app))
        .await?
    {
        WebhookClaim::Claimed => {}
        WebhookClaim::NotYet => return Ok(Handled::NotYet),
        WebhookClaim::Done => return Ok(Handled::Finished),
    }

    let mut headers = vec![
        ("x-imgproc-event", EVENT.to_owned()),
        ("x-imgproc-delivery", delivery_id(request_id).to_string()),
    ];
    if let Some(secret) = &app.config.webhook_secret {
        let timestamp = Utc::now().timestamp();
        headers.push(("x-imgproc-signature", signature(secret.expose(), &body)));
        headers.push(("x-imgproc-timestamp", timestamp.to_string()));
        headers.push((
            "x-imgproc-signature-v2",
            signature_v2(secret.expose(), timestamp, &body),
        ));
    }
    let outcome = app
        .http
        .post_json(&state.url, &headers, body, app.config.webhook_timeout)
        .await;

    let attempt = job.attempt;
    state.attempts = attempt;
    state.status = match &outcome {
        PostOutcome::Delivered(_) => WebhookStatus::Delivered,
        _ if attempt >= max => WebhookStatus::Failed,
        _ => WebhookStatus::Pending,
    };
    let host = url::Url::parse(&state.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    match &outcome {
        PostOutcome::Delivered(code) => {
            tracing::info!(webhook_host = %host, status = code, "webhook delivered")
        }
        PostOutcome::Rejected(code) => {
            tracing::warn!(webhook_host = %host, status = code, "webhook answered with an error")
        }
        PostOutcome::Failed(why) => {
            tracing::warn!(webhook_host = %host, error = %why, "webhook delivery failed")
        }
    }
    app.metrics.record(&Event::WebhookAttempted {
        request_id,
        attempt,
        outcome: match outcome {
            PostOutcome::Delivered(_) => WebhookAttempt::Delivered,
            _ => WebhookAttempt::Failed {
                last: state.status == WebhookStatus::Failed,
            },
        },
    });

    let handled = if state.status == WebhookStatus::Pending {
        let delay = app.config.webhook_retry_delay(attempt);
        let next = WebhookJob {
            request_id,
            attempt: attempt + 1,
            due_ms: now_ms().saturating_add(delay.as_millis() as i64),
        };
        scheduler.schedule(&next).await?;
        tracing::info!(
            next_attempt = next.attempt,
            retry_in_s = delay.as_secs(),
            "webhook retry scheduled"
        );
        Handled::Rescheduled
    } else {
        Handled::Finished
    };
    app.store.record_webhook(request_id, &state).await?;
    Ok(handled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signature_v2_is_hmac_sha256_of_the_timestamp_a_dot_and_the_body() {
        // Computed independently: Python's hmac.new(key, b"<t>.<body>", hashlib.sha256).
        assert_eq!(
            signature_v2("Jefe", 1_700_000_000, b"what do ya want for nothing?"),
            "sha256=1cdd0650c8be1cb0974b1788d458b1e781206cfef59b85faafc582d2e182c57e"
        );
        assert_eq!(
            signature_v2(
                "whsec_imgproc",
                1_764_320_100,
                br#"{"event":"request.completed"}"#
            ),
            "sha256=eea0d93cefe80b3e0cdc44741defaa3f3c7afa31f551be38e7a1cdf83aabd8bb"
        );
        // Another second is another signature: an old one cannot be reused.
        assert_ne!(
            signature_v2("Jefe", 1_700_000_001, b"what do ya want for nothing?"),
            signature_v2("Jefe", 1_700_000_000, b"what do ya want for nothing?")
        );
    }

    #[test]
    fn one_delivery_id_per_event() {
        let id = Uuid::new_v4();
        assert_eq!(delivery_id(id), delivery_id(id));
        assert_ne!(delivery_id(id), delivery_id(Uuid::new_v4()));
    }

    #[test]
    fn a_job_is_plain_json() {
        let job = WebhookJob {
            request_id: Uuid::nil(),
            attempt: 3,
            due_ms: 1_764_320_100_000,
        };
        let text = serde_json::to_string(&job).unwrap();
        assert_eq!(
            text,
            r#"{"request_id":"00000000-0000-0000-0000-000000000000","attempt":3,"due_ms":1764320100000}"#
        );
        assert_eq!(serde_json::from_str::<WebhookJob>(&text).unwrap(), job);
    }
}
