//! The local runner's metrics: events added up in memory since the process
//! started, read by `GET /metrics` in the text format Prometheus scrapes
//! (OpenMetrics 1.0, which Prometheus asks for and understands).
//! The `prometheus-client` crate keeps the counters and writes the format,
//! so names, escaping and histogram buckets follow the specification.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::{Event, ImageTimings, Recorder, WebhookAttempt, compression_ratio};
use crate::domain::{ErrorCode, RequestStatus};

/// The content type of [`PrometheusRecorder::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, &'static str)>;

pub struct PrometheusRecorder {
    registry: Registry,
    requests_accepted: Counter,
    images_queued: Counter,
    images_succeeded: Counter,
    images_failed: Family<Labels, Counter>,
    image_retries: Family<Labels, Counter>,
    input_bytes: Counter,
    output_bytes: Counter,
    compression_ratio: Histogram,
    download: Histogram,
    decode: Histogram,
    encode: Histogram,
    requests_completed: Family<Labels, Counter>,
    webhook_attempts: Counter,
    webhook_attempts_failed: Counter,
    webhooks_delivered: Counter,
    webhooks_failed: Counter,
}

impl std::fmt::Debug for PrometheusRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrometheusRecorder")
    }
}

/// 5 ms to ~20 s: downloads and CPU stages of one image.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

impl Default for PrometheusRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl PrometheusRecorder {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("imgproc");
        let m = Self {
            registry: Registry::default(),
            requests_accepted: Counter::default(),
            images_queued: Counter::default(),
            images_succeeded: Counter::default(),
            images_failed: Family::default(),
            image_retries: Family::default(),
            input_bytes: Counter::default(),
            output_bytes: Counter::default(),
            compression_ratio: Histogram::new([
                1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0,
            ]),
            download: seconds(),
            decode: seconds(),
            encode: seconds(),
            requests_completed: Family::default(),
            webhook_attempts: Counter::default(),
            webhook_attempts_failed: Counter::default(),
            webhooks_delivered: Counter::default(),
            webhooks_failed: Counter::default(),
        };
        r.register(
            "requests_accepted",
            "Requests stored and queued",
            m.requests_accepted.clone(),
        );
        r.register(
            "images_queued",
            "Images queued by accepted requests",
            m.images_queued.clone(),
        );
        r.register(
            "images_succeeded",
            "Images compressed and stored",
            m.images_succeeded.clone(),
        );
        r.register(
            "images_failed",
            "Images that failed for good, by error code",
            m.images_failed.clone(),
        );
        r.register(
            "image_retries",
            "Transient image failures sent back to the queue, by error code",
            m.image_retries.clone(),
        );
        r.register_with_unit(
            "input",
            "Bytes downloaded of images that succeeded",
            Unit::Bytes,
            m.input_bytes.clone(),
        );
        r.register_with_unit(
            "output",
            "Bytes stored of images that succeeded",
            Unit::Bytes,
            m.output_bytes.clone(),
        );
        r.register(
            "compression_ratio",
            "Input bytes per output byte of each image that succeeded",
            m.compression_ratio.clone(),
        );
        r.register_with_unit(
            "download",
            "Time to download one image",
            Unit::Seconds,
            m.download.clone(),
        );
        r.register_with_unit(
            "decode",
            "Time to decode one image (and apply its orientation)",
            Unit::Seconds,
            m.decode.clone(),
        );
        r.register_with_unit(
            "encode",
            "Time to encode one JPEG",
            Unit::Seconds,
            m.encode.clone(),
        );
        r.register(
            "requests_completed",
            "Requests that reached a terminal status, by status",
            m.requests_completed.clone(),
        );
        r.register(
            "webhook_attempts",
            "Webhook POSTs made",
            m.webhook_attempts.clone(),
        );
        r.register(
            "webhook_attempts_failed",
            "Webhook POSTs without a 2xx answer",
            m.webhook_attempts_failed.clone(),
        );
        r.register(
            "webhooks_delivered",
            "Webhooks acknowledged with a 2xx",
            m.webhooks_delivered.clone(),
        );
        r.register(
            "webhooks_failed",
            "Webhooks given up after their last attempt",
            m.webhooks_failed.clone(),
        );
        // Every labelled series exists from the start, at zero, so that
        // rates and alerts see a failure's first occurrence.
        for code in ErrorCode::ALL {
            let _ = m
                .images_failed
                .get_or_create(&vec![("code", code.as_str())]);
        }
        for status in [
            RequestStatus::Completed,
            RequestStatus::CompletedWithErrors,
            RequestStatus::Failed,
        ] {
            let _ = m
                .requests_completed
                .get_or_create(&vec![("status", status.as_str())]);
        }
        Self { registry: r, ..m }
    }

    /// Every metric, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    fn timings(&self, t: &ImageTimings) {
        for (histogram, value) in [
            (&self.download, t.download),
            (&self.decode, t.decode),
            (&self.encode, t.encode),
        ] {
            if let Some(d) = value {
                histogram.observe(d.as_secs_f64());
            }
        }
    }
}

impl Recorder for PrometheusRecorder {
    fn record(&self, event: &Event) {
        match *event {
            Event::RequestAccepted { images, .. } => {
                self.requests_accepted.inc();
                self.images_queued.inc_by(u64::from(images));
            }
            Event::ImageSucceeded {
                counted,
                input_bytes,
                output_bytes,
                timings,
                ..
            } => {
                if counted {
                    self.images_succeeded.inc();
                    self.input_bytes.inc_by(input_bytes);
                    self.output_bytes.inc_by(output_bytes);
                    if let Some(ratio) = compression_ratio(input_bytes, output_bytes) {
                        self.compression_ratio.observe(ratio);
                    }
                }
                self.timings(&timings);
            }
            Event::ImageFailed {
                counted,
                code,
                timings,
                ..
            } => {
                if counted {
                    self.images_failed
                        .get_or_create(&vec![("code", code.as_str())])
                        .inc();
                }
                self.timings(&timings);
            }
            Event::ImageRetried { code, timings, .. } => {
                self.image_retries
                    .get_or_create(&vec![("code", code.as_str())])
                    .inc();
                self.timings(&timings);
            }
            Event::RequestCompleted { status, .. } => {
                self.requests_completed
                    .get_or_create(&vec![("status", status.as_str())])
                    .inc();
            }
            Event::WebhookAttempted { outcome, .. } => {
                self.webhook_attempts.inc();
                match outcome {
                    WebhookAttempt::Delivered => {
                        self.webhooks_delivered.inc();
                    }
                    WebhookAttempt::Failed { last } => {
                        self.webhook_attempts_failed.inc();
                        if last {
                            self.webhooks_failed.inc();
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use uuid::Uuid;

    use super::*;

    #[test]
    fn events_add_up_in_the_exposition() {
        let m = PrometheusRecorder::new();
        let id = Uuid::new_v4();
        let timings = ImageTimings {
            download: Some(Duration::from_millis(30)),
            decode: Some(Duration::from_millis(60)),
            encode: Some(Duration::from_millis(20)),
        };
        m.record(&Event::RequestAccepted {
            request_id: id,
            images: 3,
        });
        m.record(&Event::ImageSucceeded {
            request_id: id,
            counted: true,
            input_bytes: 1000,
            output_bytes: 250,
            timings,
        });
        m.record(&Event::ImageSucceeded {
            request_id: id,
            counted: false,
            input_bytes: 1000,
            output_bytes: 250,
            timings,
        });
        m.record(&Event::ImageFailed {
            request_id: id,
            counted: true,
            code: ErrorCode::HttpStatus,
            timings: ImageTimings::default(),
        });
        m.record(&Event::WebhookAttempted {
            request_id: id,
            attempt: 1,
            outcome: WebhookAttempt::Failed { last: false },
        });
        m.record(&Event::WebhookAttempted {
            request_id: id,
            attempt: 2,
            outcome: WebhookAttempt::Delivered,
        });
        let text = m.render();
        for line in [
            "imgproc_requests_accepted_total 1",
            "imgproc_images_queued_total 3",
            "imgproc_images_succeeded_total 1",
            "imgproc_images_failed_total{code=\"http_status\"} 1",
            "imgproc_images_failed_total{code=\"timeout\"} 0",
            "imgproc_input_bytes_total 1000",
            "imgproc_output_bytes_total 250",
            "imgproc_compression_ratio_sum 4.0",
            "imgproc_compression_ratio_count 1",
            "imgproc_decode_seconds_count 2",
            "imgproc_webhook_attempts_total 2",
            "imgproc_webhook_attempts_failed_total 1",
            "imgproc_webhooks_delivered_total 1",
            "imgproc_webhooks_failed_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
