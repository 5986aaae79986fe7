//! Webhook attempts on SQS (`WEBHOOK_QUEUE_URL`): one message per
//! scheduled attempt, its body a [`WebhookJob`], held back with
//! `DelaySeconds` until it is due. SQS holds a message back at most 15
//! minutes, so a longer wait is a chain of hops: a message that arrives
//! before its due time is sent again for the rest (see
//! [`run_attempt`](crate::services::notify::run_attempt)).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;

use super::{MAX_DELAY, SqsQueue, send_delayed};
use crate::ports::{PortError, PortResult, WebhookJob, WebhookScheduler};
use crate::services::notify::now_ms;

/// The webhook queue is an SQS queue like the image jobs' one; only what
/// it sends differs.
#[derive(Clone, Debug)]
pub struct SqsWebhookQueue {
    queue: SqsQueue,
}

/// `DelaySeconds` for a job due at `due_ms` sent at `now_ms`: the whole
/// wait rounded up to a second, at most SQS's 15 minutes.
pub fn delay_seconds(due_ms: i64, now_ms: i64) -> i32 {
    let wait_ms = due_ms.saturating_sub(now_ms).max(0);
    let seconds = wait_ms.saturating_add(999) / 1000;
    seconds.min(MAX_DELAY.as_secs() as i64) as i32
}

impl SqsWebhookQueue {
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        Self {
            queue: SqsQueue::new(client, queue_url),
        }
    }

    pub fn queue_url(&self) -> &str {
        self.queue.queue_url()
    }

    /// The queue its messages are received from (and handed back to).
    pub fn source(&self) -> &SqsQueue {
        &self.queue
    }
}

#[async_trait]
impl WebhookScheduler for SqsWebhookQueue {
    async fn schedule(&self, job: &WebhookJob) -> PortResult<()> {
        let body = serde_json::to_string(job)
            .map_err(|e| PortError::Permanent(format!("encoding a webhook job: {e}")))?;
        let delay = Duration::from_secs(delay_seconds(job.due_ms, now_ms()) as u64);
        send_delayed(
            self.queue.client(),
            self.queue.queue_url(),
            body,
            delay,
            "SQS SendMessage (webhook)",
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_a_second_and_stop_at_fifteen_minutes() {
        let now = 1_764_320_100_000;
        assert_eq!(delay_seconds(now - 5_000, now), 0, "overdue: at once");
        assert_eq!(delay_seconds(now, now), 0);
        assert_eq!(delay_seconds(now + 1, now), 1);
        assert_eq!(delay_seconds(now + 30_000, now), 30);
        assert_eq!(delay_seconds(now + 899_500, now), 900);
        // Eight hours: a first hop of 15 minutes, the rest on arrival.
        assert_eq!(delay_seconds(now + 8 * 3_600_000, now), 900);
        assert_eq!(delay_seconds(i64::MAX, i64::MIN), 900);
    }
}
