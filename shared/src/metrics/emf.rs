//! CloudWatch Embedded Metric Format: each event becomes one JSON object
//! on one line of stdout, which Lambda hands to CloudWatch Logs, which
//! extracts the metrics named under `_aws`. No metrics API call is made
//! and nothing is buffered, so a sandbox frozen or killed after an
//! invocation loses nothing already recorded.
//!
//! Metrics carry no dimension (one series per namespace), except the
//! failure counts, published both in total and per `ErrorCode`, and
//! completed requests, both in total and per `Status`. The request ID is a
//! plain member of the line: searchable in Logs Insights, never a
//! dimension (each dimension value is a custom metric, billed monthly).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{Event, ImageTimings, Recorder, WebhookAttempt, compression_ratio};

/// Receives each finished line (ending in `\n`).
type Sink = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Clone)]
pub struct EmfRecorder {
    namespace: String,
    sink: Sink,
}

impl std::fmt::Debug for EmfRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmfRecorder")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

const NO_DIMENSION: &[&str] = &[];

impl EmfRecorder {
    /// Lines to stdout, as Lambda expects them. Each line is written with
    /// one call under stdout's lock, so it never interleaves with a log line.
    pub fn stdout(namespace: impl Into<String>) -> Self {
        Self::with_sink(namespace, |line| {
            let mut out = std::io::stdout().lock();
            // A closed stdout must not fail the work being measured.
            let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
        })
    }

    /// Lines to `sink` instead (tests capture them).
    pub fn with_sink(
        namespace: impl Into<String>,
        sink: impl Fn(&str) + Send + Sync + 'static,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            sink: Arc::new(sink),
        }
    }

    /// The EMF document of one event, stamped `timestamp_ms` (milliseconds
    /// since the Unix epoch).
    pub fn document(&self, event: &Event, timestamp_ms: i64) -> Value {
        let mut doc = Document::default();
        match *event {
            Event::RequestAccepted { request_id, images } => {
                doc.about("request_accepted", request_id);
                doc.metric(NO_DIMENSION, "RequestsAccepted", "Count", 1);
                doc.metric(NO_DIMENSION, "ImagesQueued", "Count", images);
            }
            Event::ImageSucceeded {
                request_id,
                counted,
                input_bytes,
                output_bytes,
                timings,
            } => {
                doc.about("image_succeeded", request_id);
                doc.metric(NO_DIMENSION, "ImagesSucceeded", "Count", u8::from(counted));
                if counted {
                    doc.metric(NO_DIMENSION, "BytesIn", "Bytes", input_bytes);
                    doc.metric(NO_DIMENSION, "BytesOut", "Bytes", output_bytes);
                    if let Some(ratio) = compression_ratio(input_bytes, output_bytes) {
                        doc.metric(NO_DIMENSION, "CompressionRatio", "None", round(ratio, 4));
                    }
                }
                doc.timings(&timings);
            }
            Event::ImageFailed {
                request_id,
                counted,
                code,
                timings,
            } => {
                doc.about("image_failed", request_id);
                doc.member("ErrorCode", code.as_str());
                doc.metric(&["ErrorCode"], "ImagesFailed", "Count", u8::from(counted));
                doc.metric(NO_DIMENSION, "ImagesFailed", "Count", u8::from(counted));
                doc.timings(&timings);
            }
            Event::ImageRetried {
                request_id,
                code,
                timings,
            } => {
                doc.about("image_retried", request_id);
                doc.member("ErrorCode", code.as_str());
                doc.metric(&["ErrorCode"], "ImageRetries", "Count", 1);
                doc.metric(NO_DIMENSION, "ImageRetries", "Count", 1);
                doc.timings(&timings);
            }
            Event::RequestCompleted {
                request_id,
                status,
                progress,
            } => {
                doc.about("request_completed", request_id);
                doc.member("Status", status.as_str());
                doc.member("images", progress.total);
                doc.member("succeeded", progress.succeeded);
                doc.member("failed", progress.failed);
                doc.metric(&["Status"], "RequestsCompleted", "Count", 1);
                doc.metric(NO_DIMENSION, "RequestsCompleted", "Count", 1);
            }
            Event::WebhookAttempted {
                request_id,
                attempt,
                outcome,
            } => {
                doc.about("webhook_attempted", request_id);
                doc.member("attempt", attempt);
                let failed = matches!(outcome, WebhookAttempt::Failed { .. });
                doc.metric(NO_DIMENSION, "WebhookAttempts", "Count", 1);
                doc.metric(
                    NO_DIMENSION,
                    "WebhookAttemptsFailed",
                    "Count",
                    u8::from(failed),
                );
                // The outcome of the webhook as a whole, once it has one.
                match outcome {
                    WebhookAttempt::Delivered => {
                        doc.metric(NO_DIMENSION, "WebhooksDelivered", "Count", 1);
                        doc.metric(NO_DIMENSION, "WebhooksFailed", "Count", 0);
                    }
                    WebhookAttempt::Failed { last: true } => {
                        doc.metric(NO_DIMENSION, "WebhooksDelivered", "Count", 0);
                        doc.metric(NO_DIMENSION, "WebhooksFailed", "Count", 1);
                    }
                    WebhookAttempt::Failed { last: false } => {}
                }
            }
        }
        doc.finish(&self.namespace, timestamp_ms)
    }
}

impl Recorder for EmfRecorder {
    fn record(&self, event: &Event) {
        let document = self.document(event, chrono::Utc::now().timestamp_millis());
        let mut line = document.to_string();
        line.push('\n');
        (self.sink)(&line);
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn millis(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0, 3)
}

/// The members of one line and its metric directives, one directive per
/// distinct dimension set.
#[derive(Default)]
struct Document {
    members: Map<String, Value>,
    directives: Vec<(&'static [&'static str], Vec<Value>)>,
}

impl Document {
    fn about(&mut self, event: &str, request_id: Uuid) {
        self.member("event", event);
        self.member("request_id", request_id.to_string());
    }

    fn member(&mut self, name: &str, value: impl Into<Value>) {
        self.members.insert(name.to_owned(), value.into());
    }

    /// A metric under `dimensions` (dimension names whose values are
    /// members of the line). The same name under two dimension sets shares
    /// one value, as EMF reads it from one member.
    fn metric(
        &mut self,
        dimensions: &'static [&'static str],
        name: &str,
        unit: &str,
        value: impl Into<Value>,
    ) {
        self.member(name, value);
        let definition = json!({"Name": name, "Unit": unit});
        match self.directives.iter_mut().find(|(d, _)| *d == dimensions) {
            Some((_, metrics)) => metrics.push(definition),
            None => self.directives.push((dimensions, vec![definition])),
        }
    }

    fn timings(&mut self, t: &ImageTimings) {
        for (name, value) in [
            ("DownloadTime", t.download),
            ("DecodeTime", t.decode),
            ("EncodeTime", t.encode),
        ] {
            if let Some(d) = value {
                self.metric(NO_DIMENSION, name, "Milliseconds", millis(d));
            }
        }
    }

    fn finish(mut self, namespace: &str, timestamp_ms: i64) -> Value {
        let directives: Vec<Value> = self
            .directives
            .into_iter()
            .map(|(dimensions, metrics)| json!({"Namespace": namespace, "Dimensions": [dimensions], "Metrics": metrics}))
            .collect();
        self.members.insert(
            "_aws".into(),
            json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": directives}),
        );
        Value::Object(self.members)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::domain::ErrorCode;

    fn lines_of(event: Event) -> Vec<Value> {
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        let recorder = EmfRecorder::with_sink("imgproc/test", move |l| {
            sink.lock().unwrap().push(l.to_owned())
        });
        recorder.record(&event);
        let lines = lines.lock().unwrap().clone();
        lines
            .iter()
            .map(|l| {
                assert!(
                    l.ends_with('\n') && !l.trim_end().contains('\n'),
                    "one line per event: {l:?}"
                );
                serde_json::from_str(l).unwrap()
            })
            .collect()
    }

    #[test]
    fn a_failure_is_counted_in_total_and_per_error_code() {
        let id = Uuid::new_v4();
        let timings = ImageTimings {
            download: Some(Duration::from_micros(12_345)),
            ..Default::default()
        };
        let [doc] = lines_of(Event::ImageFailed {
            request_id: id,
            counted: true,
            code: ErrorCode::NotAnImage,
            timings,
        })
        .try_into()
        .unwrap();
        assert_eq!(doc["ImagesFailed"], 1);
        assert_eq!(doc["ErrorCode"], "not_an_image");
        assert_eq!(doc["DownloadTime"], 12.345);
        assert_eq!(doc["request_id"], id.to_string());
        let directives = doc["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives[0]["Dimensions"], json!([["ErrorCode"]]));
        assert_eq!(directives[1]["Dimensions"], json!([[]]));
        assert_eq!(
            directives[1]["Metrics"],
            json!([
                {"Name": "ImagesFailed", "Unit": "Count"},
                {"Name": "DownloadTime", "Unit": "Milliseconds"},
            ])
        );
        assert!(directives.iter().all(|d| d["Namespace"] == "imgproc/test"));
    }

    #[test]
    fn a_duplicate_delivery_counts_nothing_but_its_time() {
        let timings = ImageTimings {
            decode: Some(Duration::from_millis(40)),
            encode: Some(Duration::from_millis(20)),
            download: None,
        };
        let event = Event::ImageSucceeded {
            request_id: Uuid::new_v4(),
            counted: false,
            input_bytes: 10,
            output_bytes: 5,
            timings,
        };
        let [doc] = lines_of(event).try_into().unwrap();
        assert_eq!(doc["ImagesSucceeded"], 0);
        assert!(doc.get("BytesIn").is_none() && doc.get("CompressionRatio").is_none());
        assert_eq!(
            (doc["DecodeTime"].as_f64(), doc["EncodeTime"].as_f64()),
            (Some(40.0), Some(20.0))
        );
    }

    #[test]
    fn the_last_failed_webhook_attempt_fails_the_webhook() {
        let id = Uuid::new_v4();
        let [doc] = lines_of(Event::WebhookAttempted {
            request_id: id,
            attempt: 5,
            outcome: WebhookAttempt::Failed { last: true },
        })
        .try_into()
        .unwrap();
        assert_eq!(
            (
                doc["WebhookAttempts"].as_u64(),
                doc["WebhookAttemptsFailed"].as_u64()
            ),
            (Some(1), Some(1))
        );
        assert_eq!(
            (
                doc["WebhooksFailed"].as_u64(),
                doc["WebhooksDelivered"].as_u64()
            ),
            (Some(1), Some(0))
        );
        let [doc] = lines_of(Event::WebhookAttempted {
            request_id: id,
            attempt: 1,
            outcome: WebhookAttempt::Failed { last: false },
        })
        .try_into()
        .unwrap();
        assert!(
            doc.get("WebhooksFailed").is_none(),
            "not yet the webhook's outcome"
        );
    }
}
