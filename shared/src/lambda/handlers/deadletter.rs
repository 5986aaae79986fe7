//! `deadletter`: image jobs that reached the dead-letter queue, i.e. whose
//! every delivery died before recording anything (out of memory, a
//! timeout, a crash in a decoder) or that the process function could not
//! read. Each such image fails as `worker_crashed` and is counted, so its
//! request still completes and notifies.

use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};

use super::batch::{Settle, receive_count, settle_all};
use crate::domain::ImageJob;
use crate::metrics::ImageTimings;
use crate::ports::JobSource;
use crate::services::App;
use crate::services::process::{crashed, record};

pub async fn handle(
    app: &App,
    source: &dyn JobSource,
    event: SqsEvent,
    deadline: Option<Instant>,
) -> SqsBatchResponse {
    settle_all(&event.records, source, deadline, |m| handle_message(app, m)).await
}

pub async fn handle_message(app: &App, message: &SqsMessage) -> Settle {
    let message_id = message.message_id.as_deref().unwrap_or("");
    let Some(Ok(job)) = message
        .body
        .as_deref()
        .map(serde_json::from_str::<ImageJob>)
    else {
        // Not a job: there is no image to fail. Logged for the alarm's reader.
        tracing::error!(
            message_id,
            "dead-lettered message is not an image job; dropped"
        );
        return Settle::Done;
    };
    let outcome = crashed(app.config.max_attempts);
    match record(app, &job, outcome, ImageTimings::default(), Instant::now()).await {
        Ok(_) => {
            tracing::warn!(request_id = %job.request_id, image = job.image,
                "dead-lettered image job failed as worker_crashed");
            Settle::Done
        }
        Err(e) => {
            tracing::warn!(message_id, error = %e, "cannot record the dead-lettered job; it will come back");
            Settle::RetryAfter(app.config.backoff(receive_count(message)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_carries_an_image_job() {
        let event: SqsEvent =
            serde_json::from_str(include_str!("../../../../infra/events/deadletter.json")).unwrap();
        let job: ImageJob =
            serde_json::from_str(event.records[0].body.as_deref().unwrap()).unwrap();
        assert_eq!((job.ordinal, job.total), (0, 1));
    }
}
