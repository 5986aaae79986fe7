//! What the service counts and times. The services describe each thing
//! that happened as one [`Event`] and hand it to the process's
//! [`Recorder`]; how it is published is the recorder's business:
//!
//! - on Lambda, [`EmfRecorder`] writes each event as one CloudWatch
//!   Embedded Metric Format line to stdout, which CloudWatch Logs turns into
//!   metrics (no API call, nothing buffered that a frozen sandbox could lose);
//! - locally, [`PrometheusRecorder`] adds events up for `GET /metrics`.
//!
//! Counts of images follow the store: a duplicate delivery that finds its
//! image already counted records the work it did (timings) but counts
//! nothing, so the sums agree with the requests' progress.

mod emf;
#[cfg(feature = "local")]
mod prometheus;

use std::time::Duration;

use uuid::Uuid;

pub use emf::EmfRecorder;
#[cfg(feature = "local")]
pub use prometheus::PrometheusRecorder;

/// The content type of [`PrometheusRecorder::render`]'s text.
#[cfg(feature = "local")]
pub fn prometheus_content_type() -> &'static str {
    prometheus::CONTENT_TYPE
}

use crate::domain::{ErrorCode, Progress, RequestStatus};

/// Where one image's time went. `None` for a stage it did not reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageTimings {
    pub download: Option<Duration>,
    pub decode: Option<Duration>,
    pub encode: Option<Duration>,
}

/// What became of one webhook attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookAttempt {
    /// A 2xx answer.
    Delivered,
    /// Any other answer, or no answer; `last` when no attempt is left.
    Failed { last: bool },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// A new request was stored and its images queued.
    RequestAccepted { request_id: Uuid, images: u32 },
    /// An image was compressed and stored. `counted` is false for a
    /// duplicate delivery whose image had already finished.
    ImageSucceeded {
        request_id: Uuid,
        counted: bool,
        input_bytes: u64,
        output_bytes: u64,
        timings: ImageTimings,
    },
    /// An image failed for good.
    ImageFailed {
        request_id: Uuid,
        counted: bool,
        code: ErrorCode,
        timings: ImageTimings,
    },
    /// An image failed transiently and goes back to the queue.
    ImageRetried {
        request_id: Uuid,
        code: ErrorCode,
        timings: ImageTimings,
    },
    /// A request reached its terminal status (exactly once per request).
    RequestCompleted {
        request_id: Uuid,
        status: RequestStatus,
        progress: Progress,
    },
    /// One POST of a request's webhook.
    WebhookAttempted {
        request_id: Uuid,
        attempt: u32,
        outcome: WebhookAttempt,
    },
}

/// Takes every event of a process. Called on the request path: it must be
/// quick and must never fail the work it measures.
pub trait Recorder: Send + Sync {
    fn record(&self, event: &Event);
}

/// Records nothing: for tools and tests that do not look at metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl Recorder for Discard {
    fn record(&self, _: &Event) {}
}

/// Input bytes per output byte: 4.0 means the output is a quarter of the input.
pub fn compression_ratio(input_bytes: u64, output_bytes: u64) -> Option<f64> {
    (input_bytes > 0 && output_bytes > 0).then(|| input_bytes as f64 / output_bytes as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_input_over_output_and_undefined_for_empty_files() {
        assert_eq!(compression_ratio(800, 200), Some(4.0));
        assert_eq!(compression_ratio(0, 200), None);
        assert_eq!(compression_ratio(800, 0), None);
    }
}
