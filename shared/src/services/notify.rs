//! The webhook of a finished request (SPEC §5): signed, one delivery ID per
//! event, retried with exponential backoff, every attempt recorded.

use bytes::Bytes;
use chrono::SecondsFormat;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;

use super::App;
use crate::domain::{RequestRecord, WebhookStatus, results_key};
use crate::metrics::{Event, WebhookAttempt};
use crate::net::PostOutcome;
use crate::ports::PortError;

pub const EVENT: &str = "request.completed";

/// The same for every attempt of one event, so receivers can dedupe.
pub fn delivery_id(request_id: Uuid) -> Uuid {
    Uuid::new_v5(&request_id, EVENT.as_bytes())
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The event body. Built only from stored fields, so every attempt, even
/// after a restart, sends the same bytes.
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

/// Delivers the webhook of a terminal request, resuming from the attempts
/// already recorded. Does nothing for a request that is not terminal, has
/// no webhook, or whose webhook already ended. Logs name the receiver's
/// host only (its URL can carry tokens), never the body.
#[tracing::instrument(name = "webhook", skip_all, fields(%request_id))]
pub async fn notify(app: &App, request_id: Uuid) -> Result<(), PortError> {
    let Some(request) = app.store.get_request(request_id).await? else {
        return Ok(());
    };
    let Some(mut state) = request.webhook.clone() else {
        return Ok(());
    };
    if request.terminal.is_none() || state.status != WebhookStatus::Pending {
        return Ok(());
    }
    let body = Bytes::from(payload(app, &request).await?);
    let mut headers = vec![
        ("x-imgproc-event", EVENT.to_owned()),
        ("x-imgproc-delivery", delivery_id(request_id).to_string()),
    ];
    if let Some(secret) = &app.config.webhook_secret {
        headers.push(("x-imgproc-signature", signature(secret.expose(), &body)));
    }
    let max = app.config.webhook_max_attempts;
    while state.attempts < max {
        if state.attempts > 0 {
            tokio::time::sleep(app.config.backoff(state.attempts)).await;
        }
        state.attempts += 1;
        let outcome = app
            .http
            .post_json(
                &state.url,
                &headers,
                body.clone(),
                app.config.webhook_timeout,
            )
            .await;
        state.status = match &outcome {
            PostOutcome::Delivered(_) => WebhookStatus::Delivered,
            _ if state.attempts >= max => WebhookStatus::Failed,
            _ => WebhookStatus::Pending,
        };
        // The URL can carry tokens: log its host only.
        let host = url::Url::parse(&state.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let attempt = state.attempts;
        match &outcome {
            PostOutcome::Delivered(code) => {
                tracing::info!(webhook_host = %host, attempt, status = code, "webhook delivered")
            }
            PostOutcome::Rejected(code) => {
                tracing::warn!(webhook_host = %host, attempt, status = code, "webhook answered with an error")
            }
            PostOutcome::Failed(why) => {
                tracing::warn!(webhook_host = %host, attempt, error = %why, "webhook delivery failed")
            }
        }
        let result = match outcome {
            PostOutcome::Delivered(_) => WebhookAttempt::Delivered,
            _ => WebhookAttempt::Failed {
                last: state.status == WebhookStatus::Failed,
            },
        };
        app.metrics.record(&Event::WebhookAttempted {
            request_id,
            attempt,
            outcome: result,
        });
        app.store.record_webhook(request_id, &state).await?;
        if state.status != WebhookStatus::Pending {
            break;
        }
    }
    Ok(())
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
    fn one_delivery_id_per_event() {
        let id = Uuid::new_v4();
        assert_eq!(delivery_id(id), delivery_id(id));
        assert_ne!(delivery_id(id), delivery_id(Uuid::new_v4()));
    }
}
