//! `process`: an SQS batch of image jobs, handled concurrently, answered
//! with a partial batch response (`ReportBatchItemFailures`) naming only
//! the messages that must come back.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures_util::future::join_all;

use crate::domain::ImageJob;
use crate::ports::JobSource;
use crate::services::App;
use crate::services::process::{JobResult, process_job};

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    /// Done (or already done): Lambda deletes the message.
    Done,
    /// Handed back to the queue, to be delivered again.
    Retry,
}

/// Handles every message of the batch at once. `source` moves the
/// visibility of a message handed back, so its retry waits for the
/// service's backoff instead of the queue's full visibility timeout.
pub async fn handle(app: &App, source: &dyn JobSource, event: SqsEvent) -> SqsBatchResponse {
    let outcomes = join_all(event.records.iter().map(|m| handle_message(app, source, m))).await;
    let mut response = SqsBatchResponse::default();
    for (message, outcome) in event.records.iter().zip(outcomes) {
        if outcome == MessageOutcome::Retry {
            match &message.message_id {
                Some(id) => response.add_failure(id.clone()),
                None => tracing::error!("a message to retry has no message ID; it will be deleted"),
            }
        }
    }
    response
}

/// `ApproximateReceiveCount` of a Lambda SQS record: 1 on the first delivery.
pub fn receive_count(message: &SqsMessage) -> u32 {
    message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

pub async fn handle_message(
    app: &App,
    source: &dyn JobSource,
    message: &SqsMessage,
) -> MessageOutcome {
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
            return MessageOutcome::Retry;
        }
    };
    let count = receive_count(message);
    let delay = match process_job(app, &job, count).await {
        Ok(JobResult::Done) => return MessageOutcome::Done,
        Ok(JobResult::RetryAfter(delay)) => delay,
        Err(e) => {
            tracing::warn!(message_id, request_id = %job.request_id, image = job.image, error = %e,
                "the store failed; the job will come back");
            app.config.backoff(count)
        }
    };
    if let Some(receipt) = &message.receipt_handle {
        if let Err(e) = source.retry_later(receipt, delay).await {
            // The message still comes back, after the queue's visibility timeout.
            tracing::warn!(message_id, error = %e, "cannot delay the retry");
        }
    }
    MessageOutcome::Retry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receive_count_comes_from_the_record_attributes() {
        let event: SqsEvent =
            serde_json::from_str(include_str!("../../../../infra/events/process.json")).unwrap();
        assert_eq!(receive_count(&event.records[0]), 1);
        let mut m = event.records[0].clone();
        m.attributes
            .insert("ApproximateReceiveCount".into(), "3".into());
        assert_eq!(receive_count(&m), 3);
        m.attributes
            .insert("ApproximateReceiveCount".into(), "junk".into());
        assert_eq!(receive_count(&m), 1);
    }

    #[test]
    fn the_fixture_carries_an_image_job() {
        let event: SqsEvent =
            serde_json::from_str(include_str!("../../../../infra/events/process.json")).unwrap();
        let job: ImageJob =
            serde_json::from_str(event.records[0].body.as_deref().unwrap()).unwrap();
        assert_eq!(job.image, 1);
    }
}
