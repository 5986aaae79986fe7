//! One JSON log format for every entry point: a JSON object per line, the
//! event's fields at the top level, and the fields of the span it happened
//! in under `span`. Work on a request runs inside a span that names it
//! (`request_id`, and for an image `serial_number` and `image`), so every
//! line of that work carries them without repeating them at each call.
//! CloudWatch Logs Insights reads them as `span.request_id` and so on.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// The JSON layer writing to `writer`. Lambda stamps each line with its own
/// time, so `timestamps` is off there and on locally.
pub fn json_layer<S, W>(writer: W, timestamps: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        // The innermost span names the request; the whole list would
        // repeat it on every line.
        .with_span_list(false)
        .with_writer(writer);
    if timestamps {
        layer.boxed()
    } else {
        layer.without_time().boxed()
    }
}

/// `RUST_LOG` when set, else `default`.
pub fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}
