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
    pub fetch_timeout: Duration,
    pub max_attempts: u32,
    pub webhook_max_attempts: u32,
    pub webhook_timeout: Duration,
    /// First delay of the exponential backoff used for image and webhook retries.
    pub retry_base_delay: Duration,
    pub allow_private_networks: bool,
    /// CloudWatch namespace of the metrics the Lambda functions publish.
    pub metrics_namespace: String,
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
            fetch_timeout: Duration::from_secs(30),
            max_attempts: 3,
            webhook_max_attempts: 5,
            webhook_timeout: Duration::from_secs(10),
            retry_base_delay: Duration::from_secs(1),
            allow_private_networks: false,
            metrics_namespace: "imgproc".into(),
        }
    }
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
            fetch_timeout: Duration::from_secs(number(&get, "FETCH_TIMEOUT_SECS", 30, 1, 900)?),
            max_attempts: number(&get, "MAX_ATTEMPTS", d.max_attempts, 1, 100)?,
            webhook_max_attempts: number(
                &get,
                "WEBHOOK_MAX_ATTEMPTS",
                d.webhook_max_attempts,
                1,
                100,
            )?,
            webhook_timeout: Duration::from_secs(number(&get, "WEBHOOK_TIMEOUT_SECS", 10, 1, 300)?),
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
        assert_eq!(c.fetch_timeout, Duration::from_secs(30));
        assert_eq!((c.max_attempts, c.webhook_max_attempts), (3, 5));
        assert!(!c.allow_private_networks);
        assert_eq!(c.metrics_namespace, "imgproc");
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
    fn backoff_doubles_and_is_capped() {
        let c = from(&[("RETRY_BASE_DELAY_MS", "100")]).unwrap();
        assert_eq!(c.backoff(1), Duration::from_millis(100));
        assert_eq!(c.backoff(3), Duration::from_millis(400));
        assert_eq!(c.backoff(40), Duration::from_secs(300));
    }
}
