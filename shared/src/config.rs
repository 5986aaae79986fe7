//! Configuration, read once from the environment and validated (SPEC §6).
//! A bad value stops start-up with a message naming the variable.

use std::fmt;
use std::time::Duration;

use crate::domain::csv_input::CsvLimits;

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
    pub api_token: Option<Secret>,
    pub webhook_secret: Option<Secret>,
    pub jpeg_quality: u8,
    pub max_rows: usize,
    pub max_images: usize,
    pub max_images_per_row: usize,
    pub max_upload_bytes: usize,
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
            api_token: None,
            webhook_secret: None,
            jpeg_quality: 50,
            max_rows: 10_000,
            max_images: 50_000,
            max_images_per_row: 50,
            max_upload_bytes: 4 * 1024 * 1024,
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
            api_token: get("API_TOKEN").map(Secret),
            webhook_secret: get("WEBHOOK_SECRET").map(Secret),
            jpeg_quality: number(&get, "JPEG_QUALITY", d.jpeg_quality, 1, 100)?,
            max_rows: number(&get, "MAX_ROWS", d.max_rows, 1, 1_000_000)?,
            max_images: number(&get, "MAX_IMAGES", d.max_images, 1, 10_000_000)?,
            max_images_per_row: number(
                &get,
                "MAX_IMAGES_PER_ROW",
                d.max_images_per_row,
                1,
                MAX_IMAGES_PER_ROW_LIMIT,
            )?,
            max_upload_bytes: number(&get, "MAX_UPLOAD_BYTES", d.max_upload_bytes, 1, 1 << 30)?,
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

    pub fn max_decode_bytes(&self) -> u64 {
        self.max_decode_memory_mb << 20
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
            ("ALLOW_PRIVATE_NETWORKS", "TRUE"),
            ("OUTPUT_BASE_URL", "https://cdn.example.com/img"),
            ("API_TOKEN", "s3cret"),
        ])
        .unwrap();
        assert_eq!(c.jpeg_quality, 80);
        assert!(c.allow_private_networks);
        assert_eq!(
            c.output_base_url.as_deref(),
            Some("https://cdn.example.com/img/")
        );
        assert_eq!(c.api_token.as_ref().map(Secret::expose), Some("s3cret"));
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

    #[test]
    fn backoff_doubles_and_is_capped() {
        let c = from(&[("RETRY_BASE_DELAY_MS", "100")]).unwrap();
        assert_eq!(c.backoff(1), Duration::from_millis(100));
        assert_eq!(c.backoff(3), Duration::from_millis(400));
        assert_eq!(c.backoff(40), Duration::from_secs(300));
    }
}
