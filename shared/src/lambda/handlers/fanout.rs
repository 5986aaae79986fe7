//! `fanout`: messages naming a stored request whose image jobs are to be
//! queued, or whose finished images are to be completed (results CSV,
//! terminal transition). Each run works until its deadline draws near,
//! then hands the rest to a continuation message of its own.

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};

use super::batch::{Settle, cutoff, receive_count, settle_all};
use crate::adapters::sqs::FanOutMessage;
use crate::ports::JobSource;
use crate::services::App;
use crate::services::fanout::{FanOutRun, fan_out};
use crate::services::results::{Completion, complete};

/// A kick is sent before its request item is stored (so that a crash
/// between the two cannot strand the request); one that finds no request
/// keeps looking this long after it was sent.
pub const MISSING_GRACE: Duration = Duration::from_secs(60);

pub async fn handle(
    app: &App,
    source: &dyn JobSource,
    event: SqsEvent,
    deadline: Option<Instant>,
) -> SqsBatchResponse {
    settle_all(&event.records, source, deadline, |m| {
        handle_message(app, m, deadline)
    })
    .await
}

fn age(message: &SqsMessage) -> Option<Duration> {
    let sent: u64 = message.attributes.get("SentTimestamp")?.parse().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    Some(Duration::from_millis(now.saturating_sub(sent)))
}

pub async fn handle_message(app: &App, message: &SqsMessage, deadline: Option<Instant>) -> Settle {
    let message_id = message.message_id.as_deref().unwrap_or("");
    let Some(Ok(body)) = message
        .body
        .as_deref()
        .map(serde_json::from_str::<FanOutMessage>)
    else {
        tracing::error!(message_id, "message is not a fan-out request; dropped");
        return Settle::Done;
    };
    let request_id = body.request_id;
    // The run pauses (its budget ahead of this) before the batch would
    // hand the message back.
    let own_deadline = cutoff(deadline);
    if let Some(progress) = body.complete {
        return match complete(app, request_id, progress, own_deadline).await {
            Ok(Completion::Completed { .. } | Completion::NotDone) => Settle::Done,
            Ok(Completion::Paused) => continue_later(app, body).await,
            Err(e) => {
                tracing::warn!(%request_id, error = %e,
                    "completion failed; it resumes from the stored parts");
                Settle::RetryAfter(app.config.backoff(receive_count(message)))
            }
        };
    }
    match fan_out(app, request_id, own_deadline).await {
        Ok(FanOutRun::Finished) => Settle::Done,
        Ok(FanOutRun::Missing) if age(message).is_some_and(|a| a < MISSING_GRACE) => {
            Settle::RetryAfter(Duration::from_secs(5))
        }
        Ok(FanOutRun::Missing) => {
            tracing::info!(%request_id, "no such request; nothing to fan out");
            Settle::Done
        }
        Ok(FanOutRun::Busy(after)) => Settle::RetryAfter(after),
        Ok(FanOutRun::Paused) => continue_later(app, body).await,
        Err(e) => {
            tracing::warn!(%request_id, error = %e, "fan-out failed; it resumes from its cursor");
            Settle::RetryAfter(app.config.backoff(receive_count(message)))
        }
    }
}

/// A run that paused at its deadline queues its continuation, a new
/// message, and is done; if that cannot be sent, this message comes back
/// and resumes where the run stopped.
async fn continue_later(app: &App, body: FanOutMessage) -> Settle {
    let Some(queue) = &app.fanout else {
        return Settle::RetryAfter(Duration::ZERO);
    };
    let sent = match body.complete {
        Some(progress) => {
            queue
                .complete(body.request_id, progress, Duration::ZERO)
                .await
        }
        None => queue.start(body.request_id, Duration::ZERO).await,
    };
    match sent {
        Ok(()) => Settle::Done,
        Err(e) => {
            tracing::warn!(request_id = %body.request_id, error = %e, "cannot queue the continuation");
            Settle::RetryAfter(Duration::ZERO)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_names_a_request_and_has_an_age() {
        let event: SqsEvent =
            serde_json::from_str(include_str!("../../../../infra/events/fanout.json")).unwrap();
        let m = &event.records[0];
        let body: FanOutMessage = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            body.request_id.to_string(),
            "0f8fad5b-d9cb-469f-a165-70867728950e"
        );
        assert_eq!(body.complete, None);
        // Sent long ago: a fan-out that finds no request gives up.
        assert!(age(m).is_some_and(|a| a > MISSING_GRACE));
    }
}
