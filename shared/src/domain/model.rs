//! The records a request is made of, and the rules that derive its status.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A request's status as clients see it. Only the terminal values are ever
/// stored; `pending` and `processing` are derived from the counters, so an
/// image finishing never needs a second write to the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Pending,
    Processing,
    Completed,
    CompletedWithErrors,
    Failed,
}

impl RequestStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::CompletedWithErrors | Self::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::CompletedWithErrors => "completed_with_errors",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Processing,
            Self::Completed,
            Self::CompletedWithErrors,
            Self::Failed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    /// The status that the counters alone imply.
    pub fn from_progress(p: &Progress) -> Self {
        if p.is_done() {
            if p.failed == 0 {
                Self::Completed
            } else if p.succeeded == 0 {
                Self::Failed
            } else {
                Self::CompletedWithErrors
            }
        } else if p.succeeded + p.failed == 0 {
            Self::Pending
        } else {
            Self::Processing
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub total: u32,
    pub succeeded: u32,
    pub failed: u32,
}

impl Progress {
    pub fn pending(&self) -> u32 {
        self.total.saturating_sub(self.succeeded + self.failed)
    }

    pub fn is_done(&self) -> bool {
        self.succeeded + self.failed >= self.total
    }

    /// 100 × finished / total, rounded to one decimal.
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            return 100.0;
        }
        let raw = 100.0 * f64::from(self.succeeded + self.failed) / f64::from(self.total);
        (raw * 10.0).round() / 10.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageStatus {
    Pending,
    Succeeded,
    Failed,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Succeeded, Self::Failed]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// Why an image failed, as reported to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BlockedAddress,
    InvalidUrl,
    HttpStatus,
    Timeout,
    FetchFailed,
    TooLarge,
    NotAnImage,
    UnsupportedFormat,
    TooManyPixels,
    DecodeFailed,
    StorageFailed,
    /// The worker handling the image died on every attempt (e.g. out of memory).
    WorkerCrashed,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        Self::BlockedAddress,
        Self::InvalidUrl,
        Self::HttpStatus,
        Self::Timeout,
        Self::FetchFailed,
        Self::TooLarge,
        Self::NotAnImage,
        Self::UnsupportedFormat,
        Self::TooManyPixels,
        Self::DecodeFailed,
        Self::StorageFailed,
        Self::WorkerCrashed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlockedAddress => "blocked_address",
            Self::InvalidUrl => "invalid_url",
            Self::HttpStatus => "http_status",
            Self::Timeout => "timeout",
            Self::FetchFailed => "fetch_failed",
            Self::TooLarge => "too_large",
            Self::NotAnImage => "not_an_image",
            Self::UnsupportedFormat => "unsupported_format",
            Self::TooManyPixels => "too_many_pixels",
            Self::DecodeFailed => "decode_failed",
            Self::StorageFailed => "storage_failed",
            Self::WorkerCrashed => "worker_crashed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageError {
    pub code: ErrorCode,
    pub message: String,
}

impl ImageError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStatus {
    Pending,
    Delivered,
    Failed,
}

impl WebhookStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookState {
    pub url: String,
    pub status: WebhookStatus,
    pub attempts: u32,
}

/// The request item: everything about a request but its products.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    pub id: Uuid,
    /// `Some` once the request reached its terminal status.
    pub terminal: Option<RequestStatus>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub progress: Progress,
    /// Images queued for processing so far; below `progress.total` while
    /// the request's fan-out is still running.
    pub queued: u32,
    pub product_count: u32,
    pub webhook: Option<WebhookState>,
    pub warnings: Vec<String>,
    /// SHA-256 of what was submitted (CSV and webhook URL), to tell a repeated
    /// submission under the same `Idempotency-Key` from a different one.
    pub fingerprint: String,
    /// The API client that made the request, the only one that may read
    /// it; `None` for requests anyone admitted may read (S3 drops, an API
    /// without tokens).
    pub client_id: Option<String>,
}

impl RequestRecord {
    pub fn status(&self) -> RequestStatus {
        self.terminal
            .unwrap_or_else(|| match RequestStatus::from_progress(&self.progress) {
                // Counters can read "done" for the moment between the last
                // image and the terminal transition: still processing then.
                s if s.is_terminal() => RequestStatus::Processing,
                s => s,
            })
    }
}

/// Where one image sits in its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageKey {
    pub request_id: Uuid,
    /// 0-based position of the product in the CSV.
    pub product: u32,
    /// 1-based position of the image in its row.
    pub image: u32,
    /// 0-based position of the image in the whole request, in input order.
    pub ordinal: u32,
    /// Images in the request: with `ordinal`, names the image's counter shard.
    pub total: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    pub index: u32,
    pub input_url: String,
    pub status: ImageStatus,
    pub output_key: Option<String>,
    pub input_bytes: Option<u64>,
    pub output_bytes: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub original_kept: bool,
    pub error: Option<ImageError>,
}

impl ImageRecord {
    pub fn pending(index: u32, input_url: String) -> Self {
        Self {
            index,
            input_url,
            status: ImageStatus::Pending,
            output_key: None,
            input_bytes: None,
            output_bytes: None,
            width: None,
            height: None,
            original_kept: false,
            error: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductRecord {
    pub position: u32,
    pub serial_number: u64,
    pub product_name: String,
    pub images: Vec<ImageRecord>,
}

/// How an image ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageOutcome {
    Succeeded(Compressed),
    Failed {
        error: ImageError,
        input_bytes: Option<u64>,
    },
}

impl ImageOutcome {
    pub fn status(&self) -> ImageStatus {
        match self {
            Self::Succeeded(_) => ImageStatus::Succeeded,
            Self::Failed { .. } => ImageStatus::Failed,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compressed {
    pub output_key: String,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub width: u32,
    pub height: u32,
    pub original_kept: bool,
}

/// One unit of work on the queue: everything a worker needs to process an
/// image without reading the store first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageJob {
    pub request_id: Uuid,
    pub product: u32,
    pub serial_number: u64,
    pub image: u32,
    pub input_url: String,
    /// See [`ImageKey::ordinal`].
    #[serde(default)]
    pub ordinal: u32,
    /// See [`ImageKey::total`].
    #[serde(default)]
    pub total: u32,
    /// Set on a job sent back to the queue because its host had no free
    /// download slot: a new message, whose deliveries count on from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_wait: Option<HostWait>,
}

/// How long a job has been waiting for a download slot of its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostWait {
    /// Deliveries of the job's earlier messages that were attempts (they
    /// ran, failed transiently or died), so that waiting never uses one up.
    pub attempts: u32,
    /// Times the job found every slot taken.
    pub waits: u32,
    /// When it first found every slot taken (Unix milliseconds).
    pub since_ms: i64,
}

impl ImageJob {
    /// How many attempts this delivery is, counting those of the job's
    /// earlier messages: `receive_count` is the queue's count for this one.
    pub fn attempt(&self, receive_count: u32) -> u32 {
        self.host_wait
            .map_or(0, |w| w.attempts)
            .saturating_add(receive_count)
    }

    pub fn key(&self) -> ImageKey {
        ImageKey {
            request_id: self.request_id,
            product: self.product,
            image: self.image,
            ordinal: self.ordinal,
            total: self.total,
        }
    }

    /// `processed/{request_id}/{serial_number}/{index}.jpg`
    pub fn output_key(&self) -> String {
        format!(
            "processed/{}/{}/{}.jpg",
            self.request_id, self.serial_number, self.image
        )
    }
}

/// How a request's images are split into counter shards: contiguous runs of
/// ordinals, each counted on its own item, so that no single item takes
/// more than about 1 % of a request's writes (and at most 200 of them), and
/// a shard's items sit under their own partition key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shards {
    pub total: u32,
    /// Images per shard (the last one may hold fewer).
    pub size: u32,
}

impl Shards {
    /// At most this many images per shard: keeps a shard's counter item
    /// under 1 KB (one write unit) and its write rate far below one item's limit.
    pub const MAX_SIZE: u32 = 200;
    /// At least this many images per shard, so that a small request does
    /// not pay a shard's fixed writes and reads for every image.
    pub const MIN_SIZE: u32 = 32;
    /// Shards a large request is split into, at least.
    pub const TARGET_COUNT: u32 = 128;

    pub fn of(total: u32) -> Self {
        Self {
            total,
            size: total
                .div_ceil(Self::TARGET_COUNT)
                .clamp(Self::MIN_SIZE, Self::MAX_SIZE),
        }
    }

    pub fn count(&self) -> u32 {
        self.total.div_ceil(self.size)
    }

    /// The shard of image `ordinal`, and the image's offset in it.
    pub fn locate(&self, ordinal: u32) -> (u32, u32) {
        (ordinal / self.size, ordinal % self.size)
    }

    /// Images in shard `shard`.
    pub fn len(&self, shard: u32) -> u32 {
        self.total
            .saturating_sub(shard.saturating_mul(self.size))
            .min(self.size)
    }
}

/// `results/{request_id}.csv`
pub fn results_key(request_id: Uuid) -> String {
    format!("results/{request_id}.csv")
}

/// `results/{request_id}.parts/{part}.csv`: one part of the results CSV,
/// kept while it is assembled in steps (and expiring with the CSV).
pub fn results_part_key(request_id: Uuid, part: u32) -> String {
    format!("results/{request_id}.parts/{part:06}.csv")
}

/// A validated submission, ready to be stored.
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub fingerprint: String,
    /// See [`RequestRecord::client_id`].
    pub client_id: Option<String>,
    pub webhook_url: Option<String>,
    pub warnings: Vec<String>,
    pub products: Vec<crate::domain::csv_input::ParsedProduct>,
}

impl NewRequest {
    pub fn image_count(&self) -> u32 {
        self.products.iter().map(|p| p.urls.len() as u32).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(total: u32, succeeded: u32, failed: u32) -> Progress {
        Progress {
            total,
            succeeded,
            failed,
        }
    }

    #[test]
    fn status_follows_the_counters() {
        assert_eq!(
            RequestStatus::from_progress(&p(3, 0, 0)),
            RequestStatus::Pending
        );
        assert_eq!(
            RequestStatus::from_progress(&p(3, 1, 0)),
            RequestStatus::Processing
        );
        assert_eq!(
            RequestStatus::from_progress(&p(3, 0, 1)),
            RequestStatus::Processing
        );
        assert_eq!(
            RequestStatus::from_progress(&p(3, 3, 0)),
            RequestStatus::Completed
        );
        assert_eq!(
            RequestStatus::from_progress(&p(3, 2, 1)),
            RequestStatus::CompletedWithErrors
        );
        assert_eq!(
            RequestStatus::from_progress(&p(3, 0, 3)),
            RequestStatus::Failed
        );
    }

    #[test]
    fn percent_has_one_decimal() {
        assert_eq!(p(3, 1, 0).percent(), 33.3);
        assert_eq!(p(3, 1, 1).percent(), 66.7);
        assert_eq!(p(8, 8, 0).percent(), 100.0);
        assert_eq!(p(7, 0, 0).percent(), 0.0);
        assert_eq!(p(3, 1, 1).pending(), 1);
    }

    #[test]
    fn a_done_request_reads_processing_until_its_terminal_transition() {
        let now = Utc::now();
        let mut r = RequestRecord {
            id: Uuid::nil(),
            terminal: None,
            created_at: now,
            updated_at: now,
            completed_at: None,
            progress: p(2, 2, 0),
            queued: 2,
            product_count: 1,
            webhook: None,
            warnings: vec![],
            fingerprint: String::new(),
            client_id: None,
        };
        assert_eq!(r.status(), RequestStatus::Processing);
        r.terminal = Some(RequestStatus::Completed);
        assert_eq!(r.status(), RequestStatus::Completed);
    }

    #[test]
    fn enums_round_trip_through_their_names() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        assert_eq!(
            RequestStatus::parse("completed_with_errors"),
            Some(RequestStatus::CompletedWithErrors)
        );
        assert_eq!(ImageStatus::parse("nope"), None);
    }

    #[test]
    fn output_keys_follow_the_contract() {
        let job = ImageJob {
            request_id: Uuid::nil(),
            product: 0,
            serial_number: 42,
            image: 2,
            input_url: "https://example.com/a.jpg".into(),
            ordinal: 7,
            total: 9,
            host_wait: None,
        };
        assert_eq!(
            job.output_key(),
            format!("processed/{}/42/2.jpg", Uuid::nil())
        );
        assert_eq!(
            results_key(Uuid::nil()),
            format!("results/{}.csv", Uuid::nil())
        );
    }

    #[test]
    fn shards_cover_every_image_once_and_stay_small() {
        for total in [
            1, 2, 127, 128, 129, 1000, 5000, 25_600, 25_601, 50_000, 1_000_000,
        ] {
            let shards = Shards::of(total);
            assert!(shards.size >= Shards::MIN_SIZE && shards.size <= Shards::MAX_SIZE);
            let sum: u32 = (0..shards.count()).map(|k| shards.len(k)).sum();
            assert_eq!(sum, total, "{total}");
            assert!((0..shards.count()).all(|k| shards.len(k) >= 1));
            let (last, offset) = shards.locate(total - 1);
            assert_eq!(last, shards.count() - 1);
            assert!(offset < shards.len(last));
            // A request of 5,000 images or more writes no shard more than 1 % of its images.
            if total >= 5000 {
                assert!(shards.size * 100 <= total, "{total}: {}", shards.size);
            }
        }
    }
}
