//! Image jobs on SQS. On Lambda the event source mapping receives and
//! deletes messages; `JobSource` is what a worker outside Lambda (and the
//! conformance suite) uses, and `retry_later` is how the process handler
//! delays a message it hands back.

pub mod webhook_queue;

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};
use futures_util::StreamExt;

use super::port_error;
use crate::domain::{ImageJob, Progress};
use crate::ports::{Delivery, FanOutQueue, JobQueue, JobSource, PortError, PortResult};

pub use webhook_queue::SqsWebhookQueue;

/// The body of a message of the fan-out queue: which request to fan out,
/// or, with `complete`, to complete (its images are all finished, with
/// these counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FanOutMessage {
    pub request_id: uuid::Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<Progress>,
}

/// `SendMessageBatch` takes at most ten entries.
const BATCH: usize = 10;
/// Batches sent at once: a fan-out slice of 500 jobs is 50 batches, and
/// with 32 in flight it takes about two round trips.
const BATCHES_IN_FLIGHT: usize = 32;
const MAX_TRIES: u32 = 6;
/// SQS's ceiling for a visibility timeout: 12 hours.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
}

impl SqsQueue {
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends one batch, retrying only the entries SQS did not take.
    async fn send_batch(&self, jobs: &[ImageJob]) -> PortResult<()> {
        let mut pending: Vec<(String, String)> = jobs
            .iter()
            .enumerate()
            .map(|(i, job)| {
                serde_json::to_string(job)
                    .map(|body| (i.to_string(), body))
                    .map_err(|e| PortError::Permanent(format!("encoding a job: {e}")))
            })
            .collect::<PortResult<_>>()?;
        let mut last_error = String::new();
        for attempt in 0..MAX_TRIES {
            if attempt > 0 {
                tokio::time::sleep(crate::config::backoff(
                    Duration::from_millis(100),
                    attempt,
                    Duration::from_secs(3),
                ))
                .await;
            }
            let entries = pending
                .iter()
                .map(|(id, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(id)
                        .message_body(body)
                        .build()
                        .map_err(|e| PortError::Permanent(format!("SQS batch entry: {e}")))
                })
                .collect::<PortResult<Vec<_>>>()?;
            match self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => {
                    let failed = out.failed;
                    // A sender's fault (a malformed entry) will fail the same way again.
                    if let Some(f) = failed.iter().find(|f| f.sender_fault) {
                        return Err(PortError::Permanent(format!(
                            "SQS refused a job: {} {}",
                            f.code,
                            f.message.as_deref().unwrap_or("")
                        )));
                    }
                    last_error = failed.first().map(|f| f.code.clone()).unwrap_or_default();
                    pending.retain(|(id, _)| failed.iter().any(|f| &f.id == id));
                    if pending.is_empty() {
                        return Ok(());
                    }
                }
                Err(e) => {
                    let err = port_error("SQS SendMessageBatch", e);
                    if !err.is_transient() {
                        return Err(err);
                    }
                    last_error = err.to_string();
                }
            }
        }
        Err(PortError::Transient(format!(
            "SQS did not take {} job(s) after {MAX_TRIES} tries: {last_error}",
            pending.len()
        )))
    }
}

#[async_trait]
impl JobQueue for SqsQueue {
    async fn send(&self, jobs: &[ImageJob]) -> PortResult<()> {
        // Owned chunks: a closure over borrowed slices is not `Send` enough for the trait's future.
        let chunks: Vec<Vec<ImageJob>> = jobs.chunks(BATCH).map(<[ImageJob]>::to_vec).collect();
        let results: Vec<PortResult<()>> = futures_util::stream::iter(chunks)
            .map(|chunk| async move { self.send_batch(&chunk).await })
            .buffer_unordered(BATCHES_IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn send_later(&self, job: &ImageJob, delay: Duration) -> PortResult<()> {
        let body = serde_json::to_string(job)
            .map_err(|e| PortError::Permanent(format!("encoding a job: {e}")))?;
        send_delayed(
            &self.client,
            &self.queue_url,
            body,
            delay,
            "SQS SendMessage",
        )
        .await
    }
}

/// SQS's ceiling for a message delay: 15 minutes.
const MAX_DELAY: Duration = Duration::from_secs(900);

/// One message, visible after `delay` (cut to SQS's 15 minutes).
async fn send_delayed(
    client: &Client,
    queue_url: &str,
    body: String,
    delay: Duration,
    call: &'static str,
) -> PortResult<()> {
    client
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .delay_seconds(delay.min(MAX_DELAY).as_secs() as i32)
        .send()
        .await
        .map_err(|e| port_error(call, e))?;
    Ok(())
}

/// The queue the `fanout` function reads.
#[derive(Clone, Debug)]
pub struct SqsFanOut {
    client: Client,
    queue_url: String,
}

impl SqsFanOut {
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }
}

#[async_trait]
impl FanOutQueue for SqsFanOut {
    async fn start(&self, id: uuid::Uuid, delay: Duration) -> PortResult<()> {
        self.send(
            FanOutMessage {
                request_id: id,
                complete: None,
            },
            delay,
        )
        .await
    }

    async fn complete(
        &self,
        id: uuid::Uuid,
        progress: Progress,
        delay: Duration,
    ) -> PortResult<()> {
        self.send(
            FanOutMessage {
                request_id: id,
                complete: Some(progress),
            },
            delay,
        )
        .await
    }
}

impl SqsFanOut {
    async fn send(&self, message: FanOutMessage, delay: Duration) -> PortResult<()> {
        let body = serde_json::to_string(&message)
            .map_err(|e| PortError::Permanent(format!("encoding a fan-out message: {e}")))?;
        send_delayed(
            &self.client,
            &self.queue_url,
            body,
            delay,
            "SQS SendMessage (fan-out)",
        )
        .await
    }
}

fn visibility(d: Duration) -> i32 {
    d.min(MAX_VISIBILITY).as_secs() as i32
}

#[async_trait]
impl JobSource for SqsQueue {
    async fn receive(&self, max: usize, lease: Duration) -> PortResult<Vec<Delivery>> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(visibility(lease))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| port_error("SQS ReceiveMessage", e))?;
        let mut deliveries = Vec::new();
        for message in out.messages.unwrap_or_default() {
            let Some(receipt) = message.receipt_handle.clone() else {
                continue;
            };
            let receive_count = message
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            match message
                .body
                .as_deref()
                .map(serde_json::from_str::<ImageJob>)
            {
                Some(Ok(job)) => deliveries.push(Delivery {
                    job,
                    receipt,
                    receive_count,
                }),
                // Like the embedded queue: a body that is not a job never will be.
                _ => {
                    tracing::warn!(
                        message_id = message.message_id.as_deref().unwrap_or(""),
                        "dropping a message that is not an image job"
                    );
                    self.ack(&receipt).await?;
                }
            }
        }
        Ok(deliveries)
    }

    async fn ack(&self, receipt: &str) -> PortResult<()> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| port_error("SQS DeleteMessage", e))?;
        Ok(())
    }

    async fn retry_later(&self, receipt: &str, delay: Duration) -> PortResult<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(visibility(delay))
            .send()
            .await
            .map_err(|e| port_error("SQS ChangeMessageVisibility", e))?;
        Ok(())
    }
}
