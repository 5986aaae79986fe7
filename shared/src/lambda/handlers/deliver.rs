//! `deliver`: an SQS batch of webhook attempts from the webhook queue, one
//! attempt per message, all messages at once (each POST bounded by the
//! webhook timeout, so receivers never wait for each other), answered with
//! a partial batch response naming only the messages that must come back.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};

use super::batch::{Settle, receive_count, settle_all};
use crate::adapters::sqs::SqsWebhookQueue;
use crate::ports::WebhookJob;
use crate::services::App;
use crate::services::notify::{self, Handled};

pub async fn handle(app: &App, queue: &SqsWebhookQueue, event: SqsEvent) -> SqsBatchResponse {
    settle_all(&event.records, queue.source(), None, |m| {
        handle_message(app, queue, m)
    })
    .await
}

/// One message: the attempt it carries. Whatever comes next (the next
/// attempt, or the rest of a wait longer than SQS's longest delay) is a new
/// message, sent before this one is deleted.
pub async fn handle_message(app: &App, queue: &SqsWebhookQueue, message: &SqsMessage) -> Settle {
    let message_id = message.message_id.as_deref().unwrap_or("");
    let Some(job) = message
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str::<WebhookJob>(b).ok())
    else {
        // Never retried into success: it reaches the dead-letter queue
        // after the redrive limit, where the alarm shows it.
        tracing::error!(message_id, "message is not a webhook job");
        return Settle::RetryAfter(app.config.backoff(receive_count(message)));
    };
    match notify::run_attempt(app, queue, job).await {
        Ok(Handled::Finished | Handled::Rescheduled | Handled::Waiting) => {
            return Settle::Done;
        }
        Ok(Handled::NotYet) => {}
        Err(e) => {
            tracing::warn!(message_id, request_id = %job.request_id, attempt = job.attempt, error = %e,
                "the webhook attempt failed on the store or queue; it will come back");
        }
    }
    Settle::RetryAfter(app.config.backoff(receive_count(message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_carries_a_webhook_job() {
        let event: SqsEvent =
            serde_json::from_str(include_str!("../../../../infra/events/deliver.json")).unwrap();
        let job: WebhookJob =
            serde_json::from_str(event.records[0].body.as_deref().unwrap()).unwrap();
        assert_eq!(job.attempt, 1);
        assert_eq!(
            job.request_id.to_string(),
            "0f8fad5b-d9cb-469f-a165-70867728950e"
        );
    }
}
