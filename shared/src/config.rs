//! Configuration, read once from the environment and validated (SPEC §6).
//! A bad value stops start-up with a message naming the variable.

use std::fmt;
use std::time::Duration;

use crate::domain::csv_input::{CsvLimits, MAX_PRODUCT_NAME_CHARS, MAX_URL_CHARS};

#[derive(Debug, thiserror::Error)]
#[error("configuration: {var} {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One API client: its id (stored with its requests, scoping its
/// idempotency keys) and its bearer token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientToken {
    pub client: String,
    pub token: Secret,
}

/// The client id of the legacy single `API_TOKEN`.
pub const DEFAULT_CLIENT: &str = "default";

/// Shortest token accepted where the API faces the internet (Lambda):
/// 32 characters of a random token are far beyond guessing.
pub const MIN_AWS_TOKEN_CHARS: usize = 32;

/// Shortest `REQUEST_ID_SECRET`: request IDs are only as unguessable as it is.
pub const MIN_REQUEST_ID_SECRET_CHARS: usize = 32;

#[derive(Clone, Debug)]
pub struct Config {
    pub table_name: Option<String>,
    pub queue_url: Option<String>,
    /// Where fan-outs are handed to the `fanout` function; without it the
    /// submitting process fans out itself.
    pub fanout_queue_url: Option<String>,
    /// The image jobs' dead-letter queue (read by the `deadletter` function).
    pub dead_letter_queue_url: Option<String>,
    pub bucket: Option<String>,
    /// Prefix of output URLs; always ends with `/`.
    pub output_base_url: Option<String>,
    /// The base URL clients reach the service at (`PUBLIC_URL`, http or
    /// https, ending with `/`): output URLs are `{public_url}files/{key}`
    /// when `output_base_url` is not set.
    pub public_url: Option<String>,
    /// API clients and their tokens (`API_TOKENS`, and the legacy
    /// `API_TOKEN` as client `default`): when there is one, every `/v1`
    /// call needs a token.
    pub clients: Vec<ClientToken>,
    /// `ALLOW_ANONYMOUS=true`: a Lambda API may run without any token.
    pub allow_anonymous: bool,
    /// The key of the HMAC that turns idempotency keys and S3 drops into
    /// request IDs (`REQUEST_ID_SECRET`); the local runner makes and keeps
    /// one in its data folder when unset.
    pub request_id_secret: Option<Secret>,
    pub webhook_secret: Option<Secret>,
    pub jpeg_quality: u8,
    /// λ of the rate–distortion optimisation of JPEG inputs
    /// (`JPEG_RDO_LAMBDA`, 0 to [`crate::compress::MAX_RDO_LAMBDA`]; 0 turns
    /// it off).
    pub jpeg_rdo_lambda: u16,
    pub max_rows: usize,
    pub max_images: usize,
    pub max_images_per_row: usize,
    pub max_upload_bytes: usize,
    /// The largest CSV the S3 drop reads (`MAX_DROP_BYTES`, by default
    /// [`largest_csv_bytes`] of the CSV limits); larger drops are refused
    /// from their size alone.
    pub max_drop_bytes: u64,
    pub max_download_bytes: u64,
    pub max_pixels: u64,
    /// Memory the images being compressed at once may need together, and
    /// so one image at most, in MiB (`compress::memory`).
    pub max_decode_memory_mb: u64,
    /// CPU time one image may take to decode and encode.
    pub max_image_cpu: Duration,
    pub fetch_timeout: Duration,
    pub max_attempts: u32,
    /// Webhook attempts before giving up: `WEBHOOK_MAX_ATTEMPTS`, by default
    /// one more than the retry schedule has delays.
    pub webhook_max_attempts: u32,
    /// Waits between webhook attempts (`WEBHOOK_RETRY_SCHEDULE`): entry `n`
    /// (0-based) follows failed attempt `n + 1`; the last one repeats.
    pub webhook_retry_schedule: Vec<Duration>,
    pub webhook_timeout: Duration,
    /// The SQS queue of webhook attempts (AWS only).
    pub webhook_queue_url: Option<String>,
    /// First delay of the exponential backoff of image retries and of work
    /// that found the store unavailable.
    pub retry_base_delay: Duration,
    pub allow_private_networks: bool,
    /// Downloads that may run against one origin (scheme, host, port) at
    /// once, across every worker (`MAX_CONCURRENT_PER_HOST`, default 8,
    /// at most [`MAX_CONCURRENT_PER_HOST_LIMIT`]); 0 lifts the cap.
    pub max_concurrent_per_host: u32,
    /// CloudWatch namespace of the metrics the Lambda functions publish.
    pub metrics_namespace: String,
    /// How long DynamoDB keeps items after they are written (its TTL).
    pub record_ttl: Duration,
    /// S3 addressed by path (`host/bucket/key`) rather than by virtual
    /// host: `S3_FORCE_PATH_STYLE=true`, and always when an emulator's
    /// endpoint (`AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3`) is set,
    /// which emulators need.
    pub s3_force_path_style: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            table_name: None,
            queue_url: None,
            fanout_queue_url: None,
            dead_letter_queue_url: None,
            bucket: None,
            output_base_url: None,
            public_url: None,
            clients: Vec::new(),
            allow_anonymous: false,
            request_id_secret: None,
            webhook_secret: None,
            jpeg_quality: 50,
            jpeg_rdo_lambda: crate::compress::DEFAULT_RDO_LAMBDA,
            max_rows: 10_000,
            max_images: 50_000,
            max_images_per_row: 50,
            max_upload_bytes: 4 * 1024 * 1024,
            max_drop_bytes: largest_csv_bytes(&CsvLimits {
                max_rows: 10_000,
                max_images: 50_000,
                max_images_per_row: 50,
            }),
            max_download_bytes: 25 * 1024 * 1024,
            max_pixels: 100_000_000,
            max_decode_memory_mb: DEFAULT_MAX_DECODE_MEMORY_MB,
            max_image_cpu: Duration::from_secs(DEFAULT_MAX_IMAGE_CPU_SECS),
            fetch_timeout: Duration::from_secs(30),
            max_attempts: 3,
            webhook_max_attempts: DEFAULT_WEBHOOK_RETRY_SCHEDULE.len() as u32 + 1,
            webhook_retry_schedule: DEFAULT_WEBHOOK_RETRY_SCHEDULE
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect(),
            webhook_timeout: Duration::from_secs(10),
            webhook_queue_url: None,
            retry_base_delay: Duration::from_secs(1),
            allow_private_networks: false,
            max_concurrent_per_host: 8,
            metrics_namespace: "imgproc".into(),
            record_ttl: Duration::from_secs(DEFAULT_RECORD_TTL_DAYS * DAY_SECS),
            s3_force_path_style: false,
        }
    }
}

/// Days items live before DynamoDB's TTL removes them (`RECORD_TTL_DAYS`).
pub const DEFAULT_RECORD_TTL_DAYS: u64 = 30;
const DAY_SECS: u64 = 24 * 3600;

/// Decode memory when not on Lambda: room for the largest image the default
/// pixel cap admits (100 MP as 4:4:4 JPEG or RGBA PNG needs 600–900 MiB),
/// on any machine that runs the service at all.
pub const DEFAULT_MAX_DECODE_MEMORY_MB: u64 = 1024;

/// CPU seconds an image may take: the largest photographs allowed (100 MP)
/// take 2–5 s on one core, so only a file made to stall the decoder (say, a
/// progressive JPEG of many huge scans) comes near, and it fails well
/// within the process function's 60 s.
pub const DEFAULT_MAX_IMAGE_CPU_SECS: u64 = 20;

/// The part of a Lambda function's memory left to the runtime, the binary,
/// the batch's downloaded bodies (up to ten of `MAX_DOWNLOAD_BYTES`) and
/// their outputs: two fifths. At 1,769 MB that is 708 MB beside a
/// 1,061 MiB decode budget.
const LAMBDA_DECODE_SHARE: (u64, u64) = (3, 5);

/// What a Lambda function must keep for everything but decoding.
const LAMBDA_RESERVED_MB: u64 = 128;

/// `MAX_DECODE_MEMORY_MB`, by default three fifths of the Lambda function's
/// memory (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, set by Lambda) or
/// `DEFAULT_MAX_DECODE_MEMORY_MB` elsewhere. On Lambda it may not leave
/// the function less than `LAMBDA_RESERVED_MB`: decoding would then be
/// killed by the function's limit instead of refused.
fn decode_memory(get: &impl Fn(&str) -> Option<String>) -> Result<u64, ConfigError> {
    let lambda = get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        .map(|_| number(get, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", 0u64, 128, 10_240))
        .transpose()?;
    let (default, max) = match lambda {
        Some(mb) => (
            mb * LAMBDA_DECODE_SHARE.0 / LAMBDA_DECODE_SHARE.1,
            mb - LAMBDA_RESERVED_MB,
        ),
        None => (DEFAULT_MAX_DECODE_MEMORY_MB, 1 << 20),
    };
    number(get, "MAX_DECODE_MEMORY_MB", default, 16, max)
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads every setting through `lookup`; unset or empty means default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let d = Config::default();
        let webhook_retry_schedule = match get("WEBHOOK_RETRY_SCHEDULE") {
            Some(raw) => retry_schedule("WEBHOOK_RETRY_SCHEDULE", &raw)?,
            None => d.webhook_retry_schedule.clone(),
        };
        let limits = CsvLimits {
            max_rows: number(&get, "MAX_ROWS", d.max_rows, 1, 1_000_000)?,
            max_images: number(&get, "MAX_IMAGES", d.max_images, 1, 10_000_000)?,
            max_images_per_row: number(
                &get,
                "MAX_IMAGES_PER_ROW",
                d.max_images_per_row,
                1,
                MAX_IMAGES_PER_ROW_LIMIT,
            )?,
        };
        let largest_csv = largest_csv_bytes(&limits);
        let request_id_secret = get("REQUEST_ID_SECRET").map(Secret);
        if request_id_secret
            .as_ref()
            .is_some_and(|s| s.expose().chars().count() < MIN_REQUEST_ID_SECRET_CHARS)
        {
            return Err(ConfigError {
                var: "REQUEST_ID_SECRET",
                problem: format!(
                    "must be at least {MIN_REQUEST_ID_SECRET_CHARS} characters (e.g. openssl rand -hex 32)"
                ),
            });
        }
        Ok(Self {
            table_name: get("TABLE_NAME"),
            queue_url: get("QUEUE_URL"),
            fanout_queue_url: get("FANOUT_QUEUE_URL"),
            dead_letter_queue_url: get("DEAD_LETTER_QUEUE_URL"),
            bucket: get("BUCKET"),
            output_base_url: get("OUTPUT_BASE_URL")
                .map(|v| base_url("OUTPUT_BASE_URL", &v, &["http", "https", "file"]))
                .transpose()?,
            public_url: get("PUBLIC_URL")
                .map(|v| base_url("PUBLIC_URL", &v, &["http", "https"]))
                .transpose()?,
            clients: clients(get("API_TOKENS").as_deref(), get("API_TOKEN"))?,
            allow_anonymous: boolean(&get, "ALLOW_ANONYMOUS", d.allow_anonymous)?,
            request_id_secret,
            webhook_secret: get("WEBHOOK_SECRET").map(Secret),
            jpeg_quality: number(&get, "JPEG_QUALITY", d.jpeg_quality, 1, 100)?,
            jpeg_rdo_lambda: number(
                &get,
                "JPEG_RDO_LAMBDA",
                d.jpeg_rdo_lambda,
                0,
                crate::compress::MAX_RDO_LAMBDA,
            )?,
            max_rows: limits.max_rows,
            max_images: limits.max_images,
            max_images_per_row: limits.max_images_per_row,
            max_upload_bytes: number(&get, "MAX_UPLOAD_BYTES", d.max_upload_bytes, 1, 1 << 30)?,
            max_drop_bytes: number(&get, "MAX_DROP_BYTES", largest_csv, 1, largest_csv)?,
            max_download_bytes: number(
                &get,
                "MAX_DOWNLOAD_BYTES",
                d.max_download_bytes,
                1,
                1 << 32,
            )?,
            max_pixels: number(&get, "MAX_PIXELS", d.max_pixels, 1, 1 << 32)?,
            max_decode_memory_mb: decode_memory(&get)?,
            max_image_cpu: Duration::from_secs(number(
                &get,
                "MAX_IMAGE_CPU_SECS",
                DEFAULT_MAX_IMAGE_CPU_SECS,
                1,
                900,
            )?),
            fetch_timeout: Duration::from_secs(number(&get, "FETCH_TIMEOUT_SECS", 30, 1, 900)?),
            max_attempts: number(&get, "MAX_ATTEMPTS", d.max_attempts, 1, 100)?,
            webhook_max_attempts: number(
                &get,
                "WEBHOOK_MAX_ATTEMPTS",
                webhook_retry_schedule.len() as u32 + 1,
                1,
                100,
            )?,
            webhook_retry_schedule,
            webhook_timeout: Duration::from_secs(number(&get, "WEBHOOK_TIMEOUT_SECS", 10, 1, 300)?),
            webhook_queue_url: get("WEBHOOK_QUEUE_URL"),
            retry_base_delay: Duration::from_millis(number(
                &get,
                "RETRY_BASE_DELAY_MS",
                1000,
                1,
                600_000,
            )?),
            allow_private_networks: boolean(
                &get,
                "ALLOW_PRIVATE_NETWORKS",
                d.allow_private_networks,
            )?,
            max_concurrent_per_host: number(
                &get,
                "MAX_CONCURRENT_PER_HOST",
                d.max_concurrent_per_host,
                0,
                MAX_CONCURRENT_PER_HOST_LIMIT,
            )?,
            metrics_namespace: get("METRICS_NAMESPACE")
                .map(|v| namespace("METRICS_NAMESPACE", v))
                .transpose()?
                .unwrap_or(d.metrics_namespace),
            record_ttl: Duration::from_secs(
                number(&get, "RECORD_TTL_DAYS", DEFAULT_RECORD_TTL_DAYS, 1, 3650)? * DAY_SECS,
            ),
            s3_force_path_style: boolean(&get, "S3_FORCE_PATH_STYLE", d.s3_force_path_style)?
                || ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
                    .iter()
                    .any(|var| get(var).is_some()),
        })
    }

    /// The prefix of every URL the service hands out for a stored object:
    /// `OUTPUT_BASE_URL` when set, else the service's own `/files/` route.
    /// Such URLs carry no signature, so they last as long as the object.
    pub fn files_base_url(&self) -> Option<String> {
        self.output_base_url
            .clone()
            .or_else(|| self.public_url.as_ref().map(|p| format!("{p}files/")))
    }

    /// For the Lambda functions that serve the API: a deployment without
    /// any token must say so (`ALLOW_ANONYMOUS=true`), and every token is
    /// long enough to face the internet.
    pub fn require_api_auth(&self) -> Result<(), ConfigError> {
        if self.clients.is_empty() && !self.allow_anonymous {
            return Err(ConfigError {
                var: "API_TOKENS",
                problem: "must be set (client:token entries, or API_TOKEN) for the API to start; set ALLOW_ANONYMOUS=true to run it open on purpose".into(),
            });
        }
        if let Some(short) = self
            .clients
            .iter()
            .find(|c| c.token.expose().chars().count() < MIN_AWS_TOKEN_CHARS)
        {
            return Err(ConfigError {
                var: "API_TOKENS",
                problem: format!(
                    "the token of client {:?} must be at least {MIN_AWS_TOKEN_CHARS} characters",
                    short.client
                ),
            });
        }
        Ok(())
    }

    /// For the Lambda functions that create requests: request IDs need
    /// the server secret, and a Lambda function has nowhere to keep one
    /// it would make itself.
    pub fn require_request_id_secret(&self) -> Result<&Secret, ConfigError> {
        self.request_id_secret.as_ref().ok_or(ConfigError {
            var: "REQUEST_ID_SECRET",
            problem: format!(
                "must be set (at least {MIN_REQUEST_ID_SECRET_CHARS} random characters) on the functions that create requests"
            ),
        })
    }

    /// The client whose token this is, comparing in constant time against
    /// every configured token, so neither which token matched nor how
    /// much of one did shows in the time taken.
    pub fn client_of_token(&self, given: &str) -> Option<&str> {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        // Digests make the comparison independent of the tokens' lengths.
        let given = Sha256::digest(given.as_bytes());
        let mut found = None;
        for c in &self.clients {
            let same: bool = given
                .ct_eq(&Sha256::digest(c.token.expose().as_bytes()))
                .into();
            if same {
                found = Some(c.client.as_str());
            }
        }
        found
    }

    pub fn max_decode_bytes(&self) -> u64 {
        self.max_decode_memory_mb << 20
    }

    /// What the engine is told: quality, λ and the per-image limits.
    pub fn engine_settings(&self) -> crate::compress::Settings {
        crate::compress::Settings {
            quality: self.jpeg_quality,
            rdo_lambda: self.jpeg_rdo_lambda,
            max_pixels: self.max_pixels,
            max_decode_bytes: self.max_decode_bytes(),
            max_cpu_time: self.max_image_cpu,
        }
    }

    pub fn csv_limits(&self) -> CsvLimits {
        CsvLimits {
            max_rows: self.max_rows,
            max_images: self.max_images,
            max_images_per_row: self.max_images_per_row,
        }
    }

    /// Delay before retry number `attempt` (1-based): base × 2^(attempt-1), capped at 5 minutes.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.retry_base_delay, attempt, Duration::from_secs(300))
    }

    /// The wait after failed webhook attempt `attempt` (1-based) before the
    /// next one: its entry of the schedule, the last entry past its end.
    pub fn webhook_retry_delay(&self, attempt: u32) -> Duration {
        let i = (attempt.max(1) - 1) as usize;
        self.webhook_retry_schedule
            .get(i)
            .or(self.webhook_retry_schedule.last())
            .copied()
            .unwrap_or_default()
    }
}

/// Seconds between webhook attempts by default: 11 attempts over 31 h 42 m.
/// Quick retries for a blip, then hourly-scale ones, and a day and more of
/// reach for a receiver that is down, in line with the common practice of
/// webhook senders (Stripe retries for up to three days, Svix's schedule
/// spans about 27 hours, both backing off to hours between attempts).
pub const DEFAULT_WEBHOOK_RETRY_SCHEDULE: [u64; 10] = [
    30,
    2 * 60,
    10 * 60,
    30 * 60,
    3600,
    2 * 3600,
    4 * 3600,
    8 * 3600,
    8 * 3600,
    8 * 3600,
];

/// The longest wait one schedule entry may ask for.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 3600);
const MAX_RETRY_ENTRIES: usize = 99;

/// A comma-separated list of delays such as `30s,2m,1h`: a whole number
/// followed by `ms`, `s`, `m` or `h`, each at most 24 hours, 1 to 99 entries.
fn retry_schedule(var: &'static str, raw: &str) -> Result<Vec<Duration>, ConfigError> {
    let bad = |problem: String| ConfigError { var, problem };
    let entries: Vec<&str> = raw.split(',').map(str::trim).collect();
    if entries.len() > MAX_RETRY_ENTRIES {
        return Err(bad(format!(
            "must have at most {MAX_RETRY_ENTRIES} delays, got {}",
            entries.len()
        )));
    }
    entries
        .into_iter()
        .map(|entry| {
            let digits = entry.find(|c: char| !c.is_ascii_digit()).unwrap_or(entry.len());
            let (value, unit) = entry.split_at(digits);
            let value: u64 = value.parse().map_err(|_| {
                bad(format!(
                    "must be delays like 30s,2m,1h (a whole number and ms, s, m or h), got {entry:?} in {raw:?}"
                ))
            })?;
            let delay = match unit {
                "ms" => Duration::from_millis(value),
                "s" => Duration::from_secs(value),
                "m" => Duration::from_secs(value.saturating_mul(60)),
                "h" => Duration::from_secs(value.saturating_mul(3600)),
                _ => {
                    return Err(bad(format!(
                        "must be delays like 30s,2m,1h (a whole number and ms, s, m or h), got {entry:?} in {raw:?}"
                    )));
                }
            };
            if delay > MAX_RETRY_DELAY {
                return Err(bad(format!(
                    "delays must be at most 24h, got {entry:?}"
                )));
            }
            Ok(delay)
        })
        .collect()
}

/// The one exponential backoff: before retry number `attempt` (1-based),
/// wait `base` × 2^(attempt-1), never more than `cap`.
pub fn backoff(base: Duration, attempt: u32, cap: Duration) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(cap)
}

fn number<T>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let Some(raw) = get(var) else {
        return Ok(default);
    };
    match raw.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(ConfigError {
            var,
            problem: format!("must be a whole number from {min} to {max}, got {raw:?}"),
        }),
    }
}

fn boolean(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    let Some(raw) = get(var) else {
        return Ok(default);
    };
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError {
            var,
            problem: format!("must be true or false, got {raw:?}"),
        }),
    }
}

/// A CloudWatch namespace: 1–255 of the characters CloudWatch allows, not
/// starting with `AWS/` (reserved for AWS's own metrics).
fn namespace(var: &'static str, raw: String) -> Result<String, ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c);
    if raw.len() > 255 || !raw.chars().all(allowed) || raw.starts_with("AWS/") {
        return Err(ConfigError {
            var,
            problem: format!(
                "must be 1 to 255 letters, digits or . - _ / # : and not start with AWS/, got {raw:?}"
            ),
        });
    }
    Ok(raw)
}

/// The highest per-host cap: every slot of a host is one item of a single
/// partition on DynamoDB, read at once when a download looks for a free one.
pub const MAX_CONCURRENT_PER_HOST_LIMIT: u32 = 1000;

/// The size of the largest CSV the limits admit, counting each field at
/// its longest: a serial number of 20 digits, a product name of
/// `MAX_PRODUCT_NAME_CHARS` four-byte characters quoted, URLs of
/// `MAX_URL_CHARS` (ASCII, as URLs are sent percent-encoded) with a
/// separator and a space each, line ends and a header. Padding beyond that
/// (unknown columns, blank lines) is not needed by any valid file, so the
/// S3 drop reads no more than this, and its function's memory is sized
/// from it.
pub fn largest_csv_bytes(limits: &CsvLimits) -> u64 {
    const HEADER: u64 = 1024;
    let row = 20 + 1 + (MAX_PRODUCT_NAME_CHARS as u64 * 4 + 2) + 1 + 2 + 2;
    let image = MAX_URL_CHARS as u64 + 2;
    HEADER + limits.max_rows as u64 * row + limits.max_images as u64 * image
}

/// `API_TOKENS` (`client:token` entries separated by commas or newlines)
/// and the legacy `API_TOKEN` (client `default`). Problems name the entry,
/// never a token.
fn clients(list: Option<&str>, legacy: Option<String>) -> Result<Vec<ClientToken>, ConfigError> {
    let var = "API_TOKENS";
    let bad = |problem: String| ConfigError { var, problem };
    let mut clients: Vec<ClientToken> = Vec::new();
    let entries = list
        .unwrap_or("")
        .split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty());
    for (i, entry) in entries.enumerate() {
        let n = i + 1;
        let Some((client, token)) = entry.split_once(':') else {
            return Err(bad(format!(
                "entry {n} must be client:token (client ids are lower-case letters, digits, - and _)"
            )));
        };
        let (client, token) = (client.trim(), token.trim());
        if !valid_client_id(client) {
            return Err(bad(format!(
                "entry {n}: the client id must be 1 to 64 of a-z, 0-9, - and _, starting with a letter or digit"
            )));
        }
        if token.is_empty() || !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(bad(format!(
                "entry {n} (client {client:?}): the token must be printable ASCII without spaces"
            )));
        }
        clients.push(ClientToken {
            client: client.to_owned(),
            token: Secret::new(token),
        });
    }
    if let Some(token) = legacy {
        if !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ConfigError {
                var: "API_TOKEN",
                problem: "must be printable ASCII without spaces".into(),
            });
        }
        clients.push(ClientToken {
            client: DEFAULT_CLIENT.into(),
            token: Secret(token),
        });
    }
    for (i, c) in clients.iter().enumerate() {
        let earlier = &clients[..i];
        if earlier.iter().any(|e| e.client == c.client) {
            return Err(bad(format!(
                "client {:?} is listed twice (API_TOKEN is client \"default\")",
                c.client
            )));
        }
        if earlier.iter().any(|e| e.token == c.token) {
            return Err(bad(format!(
                "client {:?} has the same token as another client; every client needs its own",
                c.client
            )));
        }
    }
    Ok(clients)
}

/// `[a-z0-9][a-z0-9_-]{0,63}`
pub fn valid_client_id(id: &str) -> bool {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    matches!(id.as_bytes().first(), Some(&b) if ok(b))
        && id.len() <= 64
        && id.bytes().all(|b| ok(b) || b == b'-' || b == b'_')
}

/// The most images one row may be configured to hold: a product is never
/// split across status pages, so its JSON alone must fit the platform's
/// response limit (`services::status` proves the worst case under it).
pub const MAX_IMAGES_PER_ROW_LIMIT: usize = 500;

/// Longest accepted base URL: every output URL repeats it, and the status
/// answer's size bound (`services::status`) counts on it.
pub const MAX_BASE_URL_CHARS: usize = 1024;

fn base_url(var: &'static str, raw: &str, schemes: &[&str]) -> Result<String, ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| ConfigError {
        var,
        problem: format!("must be an absolute URL ({e}), got {raw:?}"),
    })?;
    if !schemes.contains(&url.scheme()) {
        return Err(ConfigError {
            var,
            problem: format!("must be a {} URL, got {raw:?}", schemes.join(" or ")),
        });
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError {
            var,
            problem: format!(
                "must have no query or fragment (keys are appended to it), got {raw:?}"
            ),
        });
    }
    if url.as_str().len() > MAX_BASE_URL_CHARS {
        return Err(ConfigError {
            var,
            problem: format!("must be at most {MAX_BASE_URL_CHARS} characters"),
        });
    }
    let mut s = url.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = from(&[]).unwrap();
        assert_eq!(c.jpeg_quality, 50);
        assert_eq!(c.jpeg_rdo_lambda, 7);
        assert_eq!(
            (c.max_rows, c.max_images, c.max_images_per_row),
            (10_000, 50_000, 50)
        );
        assert_eq!(c.max_upload_bytes, 4 << 20);
        assert_eq!(c.max_download_bytes, 25 << 20);
        assert_eq!(c.max_pixels, 100_000_000);
        assert_eq!(c.max_decode_memory_mb, 1024);
        assert_eq!(c.max_image_cpu, Duration::from_secs(20));
        assert_eq!(c.fetch_timeout, Duration::from_secs(30));
        assert_eq!((c.max_attempts, c.webhook_max_attempts), (3, 11));
        let span: Duration = c.webhook_retry_schedule.iter().sum();
        assert!(
            span >= Duration::from_secs(24 * 3600),
            "the default schedule spans at least a day: {span:?}"
        );
        assert!(!c.allow_private_networks);
        assert_eq!(c.metrics_namespace, "imgproc");
        assert_eq!(c.record_ttl, Duration::from_secs(30 * 24 * 3600));
        assert!(!c.s3_force_path_style);
    }

    #[test]
    fn the_record_ttl_is_in_days() {
        let c = from(&[("RECORD_TTL_DAYS", " 7 ")]).unwrap();
        assert_eq!(c.record_ttl, Duration::from_secs(7 * 24 * 3600));
        let c = from(&[("RECORD_TTL_DAYS", "3650")]).unwrap();
        assert_eq!(c.record_ttl, Duration::from_secs(3650 * 24 * 3600));
    }

    #[test]
    fn s3_uses_path_style_when_asked_or_on_an_emulator() {
        assert!(
            from(&[("S3_FORCE_PATH_STYLE", "true")])
                .unwrap()
                .s3_force_path_style
        );
        assert!(
            !from(&[("S3_FORCE_PATH_STYLE", "false")])
                .unwrap()
                .s3_force_path_style
        );
        for var in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"] {
            assert!(
                from(&[(var, "http://127.0.0.1:5000")])
                    .unwrap()
                    .s3_force_path_style
            );
            // An emulator needs path style whatever the variable says.
            assert!(
                from(&[
                    (var, "http://127.0.0.1:5000"),
                    ("S3_FORCE_PATH_STYLE", "false")
                ])
                .unwrap()
                .s3_force_path_style
            );
            assert!(!from(&[(var, "  ")]).unwrap().s3_force_path_style);
        }
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (var, value) in [
            ("JPEG_QUALITY", "0"),
            ("JPEG_QUALITY", "101"),
            ("MAX_ROWS", "ten"),
            ("ALLOW_PRIVATE_NETWORKS", "maybe"),
            ("OUTPUT_BASE_URL", "cdn/images"),
            ("OUTPUT_BASE_URL", "https://cdn.example.com/?v=1"),
            ("PUBLIC_URL", "api.example.com"),
            ("PUBLIC_URL", "file:///srv/imgproc/"),
            ("PUBLIC_URL", "https://api.example.com/#top"),
            ("MAX_IMAGES_PER_ROW", "501"),
            ("METRICS_NAMESPACE", "AWS/Lambda"),
            ("METRICS_NAMESPACE", "imgproc!"),
            ("WEBHOOK_RETRY_SCHEDULE", "30s,2x"),
            ("WEBHOOK_RETRY_SCHEDULE", "30s,,1m"),
            ("WEBHOOK_RETRY_SCHEDULE", "-1s"),
            ("WEBHOOK_RETRY_SCHEDULE", "1.5s"),
            ("WEBHOOK_RETRY_SCHEDULE", "25h"),
            ("WEBHOOK_RETRY_SCHEDULE", "s"),
            ("WEBHOOK_RETRY_SCHEDULE", "99999999999999999999s"),
            ("WEBHOOK_MAX_ATTEMPTS", "0"),
            ("MAX_DECODE_MEMORY_MB", "8"),
            ("MAX_IMAGE_CPU_SECS", "0"),
            ("JPEG_RDO_LAMBDA", "-1"),
            ("JPEG_RDO_LAMBDA", "101"),
            ("JPEG_RDO_LAMBDA", "7.5"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "lots"),
            ("RECORD_TTL_DAYS", "0"),
            ("RECORD_TTL_DAYS", "3651"),
            ("RECORD_TTL_DAYS", "1.5"),
            ("S3_FORCE_PATH_STYLE", "sometimes"),
        ] {
            let err = from(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().contains(var));
        }
    }

    #[test]
    fn values_are_read() {
        let c = from(&[
            ("JPEG_QUALITY", "80"),
            ("JPEG_RDO_LAMBDA", "0"),
            ("ALLOW_PRIVATE_NETWORKS", "TRUE"),
            ("OUTPUT_BASE_URL", "https://cdn.example.com/img"),
            ("API_TOKEN", "s3cret"),
        ])
        .unwrap();
        assert_eq!(c.jpeg_quality, 80);
        assert_eq!(c.jpeg_rdo_lambda, 0);
        let engine = c.engine_settings();
        assert_eq!((engine.quality, engine.rdo_lambda), (80, 0));
        assert_eq!(engine.max_decode_bytes, c.max_decode_bytes());
        assert!(c.allow_private_networks);
        assert_eq!(
            c.output_base_url.as_deref(),
            Some("https://cdn.example.com/img/")
        );
        assert_eq!(c.clients.len(), 1);
        assert_eq!(c.clients[0].client, DEFAULT_CLIENT);
        assert_eq!(c.clients[0].token.expose(), "s3cret");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "secrets never reach Debug output"
        );
    }

    #[test]
    fn output_urls_use_the_output_base_else_the_public_files_route() {
        let public = from(&[(
            "PUBLIC_URL",
            "https://abc.execute-api.eu-west-1.amazonaws.com",
        )])
        .unwrap();
        assert_eq!(
            public.public_url.as_deref(),
            Some("https://abc.execute-api.eu-west-1.amazonaws.com/")
        );
        assert_eq!(
            public.files_base_url().as_deref(),
            Some("https://abc.execute-api.eu-west-1.amazonaws.com/files/")
        );
        let prefixed = from(&[("PUBLIC_URL", "https://example.com/imgproc/")]).unwrap();
        assert_eq!(
            prefixed.files_base_url().as_deref(),
            Some("https://example.com/imgproc/files/")
        );
        let both = from(&[
            ("PUBLIC_URL", "https://api.example.com/"),
            ("OUTPUT_BASE_URL", "https://cdn.example.com/img"),
        ])
        .unwrap();
        assert_eq!(
            both.files_base_url().as_deref(),
            Some("https://cdn.example.com/img/")
        );
        assert_eq!(from(&[]).unwrap().files_base_url(), None);
        let long = format!("https://example.com/{}", "a".repeat(MAX_BASE_URL_CHARS));
        assert_eq!(
            from(&[("PUBLIC_URL", &long)]).unwrap_err().var,
            "PUBLIC_URL"
        );
    }

    #[test]
    fn the_webhook_schedule_is_read_and_its_last_delay_repeats() {
        let c = from(&[("WEBHOOK_RETRY_SCHEDULE", " 0s, 1s ,250ms,2m,1h ")]).unwrap();
        assert_eq!(
            c.webhook_retry_schedule,
            [0, 1000, 250, 120_000, 3_600_000].map(Duration::from_millis)
        );
        assert_eq!(c.webhook_max_attempts, 6, "one attempt more than delays");
        assert_eq!(c.webhook_retry_delay(1), Duration::ZERO);
        assert_eq!(c.webhook_retry_delay(3), Duration::from_millis(250));
        assert_eq!(c.webhook_retry_delay(5), Duration::from_secs(3600));
        assert_eq!(c.webhook_retry_delay(9), Duration::from_secs(3600));
        // WEBHOOK_MAX_ATTEMPTS bounds the count either way.
        let c = from(&[
            ("WEBHOOK_RETRY_SCHEDULE", "1s,2s"),
            ("WEBHOOK_MAX_ATTEMPTS", "7"),
        ])
        .unwrap();
        assert_eq!(c.webhook_max_attempts, 7);
        assert_eq!(c.webhook_retry_delay(6), Duration::from_secs(2));
        let c = from(&[("WEBHOOK_MAX_ATTEMPTS", "2")]).unwrap();
        assert_eq!(c.webhook_max_attempts, 2);
        assert_eq!(c.webhook_retry_delay(1), Duration::from_secs(30));
    }

    #[test]
    fn decode_memory_follows_the_lambda_function_size() {
        let c = from(&[("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1769")]).unwrap();
        assert_eq!(c.max_decode_memory_mb, 1061);
        assert_eq!(c.max_decode_bytes(), 1061 << 20);
        let c = from(&[
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1769"),
            ("MAX_DECODE_MEMORY_MB", "1500"),
        ])
        .unwrap();
        assert_eq!(c.max_decode_memory_mb, 1500);
        // A budget the function cannot hold is refused, not killed later.
        let err = from(&[
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1769"),
            ("MAX_DECODE_MEMORY_MB", "1700"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "MAX_DECODE_MEMORY_MB");
        assert!(err.to_string().contains("1641"), "{err}");
        let c = from(&[("MAX_DECODE_MEMORY_MB", "4096")]).unwrap();
        assert_eq!(c.max_decode_memory_mb, 4096);
    }

    const LONG_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-1";
    const LONG_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-2";

    #[test]
    fn client_tokens_are_read_from_commas_newlines_and_the_legacy_token() {
        let list = format!(" acme:{LONG_A} ,\n globex_2:{LONG_B}\r\n,");
        let c = from(&[("API_TOKENS", &list), ("API_TOKEN", "legacy-token")]).unwrap();
        let ids: Vec<&str> = c.clients.iter().map(|c| c.client.as_str()).collect();
        assert_eq!(ids, ["acme", "globex_2", "default"]);
        assert_eq!(c.clients[1].token.expose(), LONG_B);
        assert_eq!(c.client_of_token(LONG_A), Some("acme"));
        assert_eq!(c.client_of_token("legacy-token"), Some("default"));
        assert_eq!(c.client_of_token(&LONG_A[1..]), None);
        assert_eq!(c.client_of_token(""), None);
        let debug = format!("{c:?}");
        for token in [LONG_A, LONG_B, "legacy-token"] {
            assert!(!debug.contains(token), "tokens never reach Debug output");
        }
        assert!(from(&[]).unwrap().clients.is_empty());
    }

    #[test]
    fn bad_client_lists_are_refused_without_showing_a_token() {
        for (list, legacy, why) in [
            ("acme", None, "client:token"),
            ("Acme:tok", None, "client id"),
            ("-acme:tok", None, "client id"),
            (":tok", None, "client id"),
            ("acme:", None, "printable"),
            ("acme:has space", None, "printable"),
            ("acme:tok-1,acme:tok-2", None, "twice"),
            ("acme:same-tok,globex:same-tok", None, "same token"),
            ("default:tok-1", Some("tok-2"), "twice"),
            ("acme:tok-1", Some("tok-1"), "same token"),
        ] {
            let mut env = vec![("API_TOKENS", list)];
            if let Some(t) = legacy {
                env.push(("API_TOKEN", t));
            }
            let err = from(&env).unwrap_err();
            assert_eq!(err.var, "API_TOKENS", "{list}");
            assert!(err.problem.contains(why), "{list}: {err}");
            for secret in ["tok-1", "tok-2", "same-tok"] {
                assert!(!err.to_string().contains(secret), "{err}");
            }
        }
        let long_id = format!("{}:tok", "a".repeat(65));
        assert_eq!(
            from(&[("API_TOKENS", &long_id)]).unwrap_err().var,
            "API_TOKENS"
        );
        assert!(valid_client_id(&"a".repeat(64)));
    }

    #[test]
    fn the_lambda_api_needs_long_tokens_or_an_explicit_opt_out() {
        let err = from(&[]).unwrap().require_api_auth().unwrap_err();
        assert_eq!(err.var, "API_TOKENS");
        assert!(err.problem.contains("ALLOW_ANONYMOUS=true"), "{err}");
        let open = from(&[("ALLOW_ANONYMOUS", "true")]).unwrap();
        assert!(open.require_api_auth().is_ok());
        let short = from(&[("API_TOKENS", "acme:short-token")]).unwrap();
        let err = short.require_api_auth().unwrap_err();
        assert!(
            err.problem.contains("\"acme\"") && err.problem.contains("32"),
            "{err}"
        );
        assert!(!err.to_string().contains("short-token"));
        let list = format!("acme:{LONG_A}");
        assert!(
            from(&[("API_TOKENS", &list)])
                .unwrap()
                .require_api_auth()
                .is_ok()
        );
        assert!(
            from(&[("API_TOKEN", LONG_B)])
                .unwrap()
                .require_api_auth()
                .is_ok()
        );
        assert_eq!(
            from(&[("ALLOW_ANONYMOUS", "perhaps")]).unwrap_err().var,
            "ALLOW_ANONYMOUS"
        );
    }

    #[test]
    fn the_request_id_secret_is_long_and_required_where_requests_are_made() {
        let err = from(&[]).unwrap().require_request_id_secret().unwrap_err();
        assert_eq!(err.var, "REQUEST_ID_SECRET");
        let err = from(&[("REQUEST_ID_SECRET", "short")]).unwrap_err();
        assert_eq!(err.var, "REQUEST_ID_SECRET");
        assert!(!err.to_string().contains("short\""));
        let c = from(&[("REQUEST_ID_SECRET", LONG_A)]).unwrap();
        assert_eq!(c.require_request_id_secret().unwrap().expose(), LONG_A);
        assert!(!format!("{c:?}").contains(LONG_A));
    }

    #[test]
    fn the_drop_limit_follows_from_the_largest_valid_csv() {
        let c = from(&[]).unwrap();
        // 10,000 rows of the longest name, 50,000 of the longest URL.
        assert_eq!(c.max_drop_bytes, largest_csv_bytes(&c.csv_limits()));
        assert!(
            (100 << 20..128 << 20).contains(&c.max_drop_bytes),
            "{}",
            c.max_drop_bytes
        );
        let small = from(&[("MAX_ROWS", "10"), ("MAX_IMAGES", "20")]).unwrap();
        assert!(small.max_drop_bytes < 100_000, "{}", small.max_drop_bytes);
        let lowered = from(&[("MAX_DROP_BYTES", "1000000")]).unwrap();
        assert_eq!(lowered.max_drop_bytes, 1_000_000);
        let above = (c.max_drop_bytes + 1).to_string();
        assert_eq!(
            from(&[("MAX_DROP_BYTES", &above)]).unwrap_err().var,
            "MAX_DROP_BYTES"
        );
    }

    #[test]
    fn the_per_host_cap_defaults_to_eight_and_is_bounded() {
        assert_eq!(from(&[]).unwrap().max_concurrent_per_host, 8);
        let c = from(&[("MAX_CONCURRENT_PER_HOST", "3")]).unwrap();
        assert_eq!(c.max_concurrent_per_host, 3);
        assert_eq!(
            from(&[("MAX_CONCURRENT_PER_HOST", "0")])
                .unwrap()
                .max_concurrent_per_host,
            0
        );
        for bad in ["-1", "1001", "eight", "2.5"] {
            let err = from(&[("MAX_CONCURRENT_PER_HOST", bad)]).unwrap_err();
            assert_eq!(err.var, "MAX_CONCURRENT_PER_HOST", "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let c = from(&[("RETRY_BASE_DELAY_MS", "100")]).unwrap();
        assert_eq!(c.backoff(1), Duration::from_millis(100));
        assert_eq!(c.backoff(3), Duration::from_millis(400));
        assert_eq!(c.backoff(40), Duration::from_secs(300));
    }
}
