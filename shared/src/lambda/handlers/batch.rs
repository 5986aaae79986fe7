//! What every SQS-triggered function does with its batch: handle each
//! message at once, each within the invocation's deadline, and answer
//! with a partial batch response (`ReportBatchItemFailures`) naming only
//! the messages that must come back, each after its own delay.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsMessage};
use futures_util::future::join_all;

use crate::ports::JobSource;
pub use crate::services::Settle;

/// How long before the invocation's deadline a message still running is
/// handed back, leaving time to answer Lambda.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(3);

/// When a message still running is handed back: [`DEADLINE_MARGIN`]
/// before the invocation's `deadline`. Work that pauses by itself (the
/// fan-out's slices, the results CSV's parts) plans against this too.
pub fn cutoff(deadline: Option<Instant>) -> Option<Instant> {
    deadline.map(|d| d.checked_sub(DEADLINE_MARGIN).unwrap_or(d))
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

/// Runs `each` on every message of the batch concurrently. A message still
/// running `DEADLINE_MARGIN` before `deadline` is handed back untouched
/// (its work is idempotent), so the invocation never times out with the
/// whole batch. `source` moves a returned message's visibility so that it
/// comes back after its own delay rather than the queue's timeout.
pub async fn settle_all<'a, F, Fut>(
    messages: &'a [SqsMessage],
    source: &dyn JobSource,
    deadline: Option<Instant>,
    each: F,
) -> SqsBatchResponse
where
    F: Fn(&'a SqsMessage) -> Fut,
    Fut: Future<Output = Settle> + 'a,
{
    let cutoff = cutoff(deadline);
    let outcomes = join_all(messages.iter().map(|m| {
        let work = each(m);
        async move {
            match cutoff {
                Some(at) => tokio::time::timeout_at(at.into(), work)
                    .await
                    .unwrap_or_else(|_| {
                        tracing::warn!(
                            message_id = m.message_id.as_deref().unwrap_or(""),
                            "the invocation's deadline is near: handing the message back"
                        );
                        Settle::RetryAfter(Duration::ZERO)
                    }),
                None => work.await,
            }
        }
    }))
    .await;
    let mut response = SqsBatchResponse::default();
    for (message, outcome) in messages.iter().zip(outcomes) {
        let Settle::RetryAfter(delay) = outcome else {
            continue;
        };
        if let Some(receipt) = &message.receipt_handle
            && let Err(e) = source.retry_later(receipt, delay).await
        {
            // The message still comes back, after the queue's visibility timeout.
            tracing::warn!(error = %e, "cannot delay the retry");
        }
        match &message.message_id {
            Some(id) => response.add_failure(id.clone()),
            None => tracing::error!("a message to retry has no message ID; it will be deleted"),
        }
    }
    response
}

/// The invocation's deadline as an `Instant`, from Lambda's epoch milliseconds.
pub fn deadline_of(epoch_ms: u64) -> Option<Instant> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    Some(Instant::now() + Duration::from_millis(epoch_ms.checked_sub(now_ms)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receive_count_comes_from_the_record_attributes() {
        let mut m = SqsMessage::default();
        assert_eq!(receive_count(&m), 1);
        m.attributes
            .insert("ApproximateReceiveCount".into(), "3".into());
        assert_eq!(receive_count(&m), 3);
        m.attributes
            .insert("ApproximateReceiveCount".into(), "junk".into());
        assert_eq!(receive_count(&m), 1);
    }

    #[test]
    fn a_past_deadline_has_no_instant() {
        assert!(deadline_of(0).is_none());
        let in_a_minute = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 60_000;
        let d = deadline_of(in_a_minute).unwrap();
        assert!(d > Instant::now() + Duration::from_secs(55));
    }
}
