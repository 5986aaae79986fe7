//! `process`: an SQS batch of image jobs, handled concurrently within the
//! invocation's deadline, answered with a partial batch response naming
//! only the messages that must come back.

use std::sync::Arc;
use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};

use super::batch::{Settle, receive_count, settle_all};
use crate::domain::ImageJob;
use crate::ports::JobSource;
use crate::services::App;
use crate::services::kept_slots::KeptSlots;
use crate::services::process::{process_job, settle};

pub async fn handle(
    app: &App,
    source: &dyn JobSource,
    event: SqsEvent,
    deadline: Option<Instant>,
) -> SqsBatchResponse {
    // The batch takes one download slot per host and keeps it for all its
    // downloads of that host: two writes per host per batch, not per image.
    let kept = Arc::new(KeptSlots::new(app.hosts.clone()));
    let batch = App {
        hosts: kept.clone(),
        ..app.clone()
    };
    let response = settle_all(&event.records, source, deadline, |m| {
        handle_message(&batch, m)
    })
    .await;
    // The instance freezes after answering: the slots go back now, not
    // when their leases end.
    if let Err(e) = kept.free_all().await {
        tracing::warn!(error = %e, "cannot free the batch's download slots; they free themselves when their leases end");
    }
    response
}

pub async fn handle_message(app: &App, message: &SqsMessage) -> Settle {
    let message_id = message.message_id.as_deref().unwrap_or("");
    let job = match message
        .body
        .as_deref()
        .map(serde_json::from_str::<ImageJob>)
    {
        Some(Ok(job)) => job,
        // Never retried into success: it goes to the dead-letter queue
        // after the redrive limit, where the alarm shows it.
        _ => {
            tracing::error!(message_id, "message is not an image job");
            return Settle::RetryAfter(app.config.backoff(receive_count(message)));
        }
    };
    let count = receive_count(message);
    settle(app, &job, count, process_job(app, &job, count).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_carries_an_image_job() {
        let event: SqsEvent =
            serde_json::from_str(include_str!("../../../../infra/events/process.json")).unwrap();
        let job: ImageJob =
            serde_json::from_str(event.records[0].body.as_deref().unwrap()).unwrap();
        assert_eq!(job.image, 1);
        assert_eq!(receive_count(&event.records[0]), 1);
    }
}
