//! The guarded HTTP client: image downloads and webhook deliveries.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, LOCATION};
use url::Url;

use super::guard::{Blocked, GuardedResolver, NameLookup, NetPolicy, SystemLookup};
use crate::domain::ErrorCode;

pub const MAX_REDIRECTS: usize = 5;
const USER_AGENT: &str = concat!("imgproc/", env!("CARGO_PKG_VERSION"));

/// Why a download failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Blocked(String),
    #[error("{0}")]
    InvalidUrl(String),
    #[error("the server answered HTTP {status}")]
    Status { status: u16 },
    #[error("no complete answer within {0} seconds")]
    Timeout(u64),
    #[error("the image is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Failed(String),
}

impl FetchError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Blocked(_) => ErrorCode::BlockedAddress,
            Self::InvalidUrl(_) => ErrorCode::InvalidUrl,
            Self::Status { .. } => ErrorCode::HttpStatus,
            Self::Timeout(_) => ErrorCode::Timeout,
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::Failed(_) => ErrorCode::FetchFailed,
        }
    }

    /// Timeouts, connection failures, 5xx, 408 and 429 may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status } => *status >= 500 || *status == 408 || *status == 429,
            Self::Timeout(_) | Self::Failed(_) => true,
            Self::Blocked(_) | Self::InvalidUrl(_) | Self::TooLarge { .. } => false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

/// The outcome of one webhook POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    Delivered(u16),
    Rejected(u16),
    Failed(String),
}

/// One HTTP client per process, with the network guard built in.
#[derive(Clone)]
pub struct GuardedClient {
    client: reqwest::Client,
    policy: Arc<NetPolicy>,
}

impl GuardedClient {
    pub fn new(policy: NetPolicy) -> Result<Self, String> {
        Self::with_lookup(policy, Arc::new(SystemLookup))
    }

    pub fn with_lookup(policy: NetPolicy, lookup: Arc<dyn NameLookup>) -> Result<Self, String> {
        // reqwest is built without a crypto provider of its own; it takes
        // the process's. An error only says one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            // Proxies from the environment would connect on our behalf and
            // bypass the guard.
            .no_proxy()
            // Redirects are followed by hand so that every hop is checked.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver::new(lookup, policy.clone())))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { client, policy })
    }

    pub fn policy(&self) -> &NetPolicy {
        &self.policy
    }

    /// Downloads `url`, following at most [`MAX_REDIRECTS`] redirects, each
    /// hop checked by the guard, within the size and time limits.
    pub async fn fetch(&self, url: &str, limits: FetchLimits) -> Result<Bytes, FetchError> {
        let url =
            Url::parse(url).map_err(|e| FetchError::InvalidUrl(format!("not a valid URL: {e}")))?;
        match tokio::time::timeout(limits.timeout, self.fetch_following(url, limits.max_bytes))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(limits.timeout.as_secs())),
        }
    }

    async fn fetch_following(&self, mut url: Url, max_bytes: u64) -> Result<Bytes, FetchError> {
        for hop in 0..=MAX_REDIRECTS {
            check_scheme(&url)?;
            self.policy
                .check_ip_literal(&url)
                .map_err(|b| FetchError::Blocked(b.to_string()))?;
            let mut response = self
                .client
                .get(url.clone())
                .send()
                .await
                .map_err(request_error)?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or(FetchError::Status {
                        status: status.as_u16(),
                    })?;
                let next = url.join(location).map_err(|e| {
                    FetchError::InvalidUrl(format!("redirect to an invalid URL: {e}"))
                })?;
                if hop == MAX_REDIRECTS {
                    return Err(FetchError::Failed(format!(
                        "more than {MAX_REDIRECTS} redirects"
                    )));
                }
                url = next;
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Status {
                    status: status.as_u16(),
                });
            }
            let declared = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|len| len > max_bytes) {
                return Err(FetchError::TooLarge { limit: max_bytes });
            }
            // One allocation when the length is declared; the cap holds
            // either way because it is checked on every chunk.
            let mut body =
                Vec::with_capacity(declared.unwrap_or(64 * 1024).min(max_bytes) as usize);
            while let Some(chunk) = response.chunk().await.map_err(request_error)? {
                if body.len() as u64 + chunk.len() as u64 > max_bytes {
                    return Err(FetchError::TooLarge { limit: max_bytes });
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(Bytes::from(body));
        }
        Err(FetchError::Failed(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// POSTs a webhook. Redirects are not followed (a 3xx is a failed
    /// attempt) and the answer's body is never read.
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> PostOutcome {
        let url = match Url::parse(url) {
            Ok(u) => u,
            Err(e) => return PostOutcome::Failed(format!("not a valid URL: {e}")),
        };
        if let Err(e) = check_scheme(&url) {
            return PostOutcome::Failed(e.to_string());
        }
        if let Err(b) = self.policy.check_ip_literal(&url) {
            return PostOutcome::Failed(b.to_string());
        }
        let mut request = self
            .client
            .post(url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => PostOutcome::Delivered(r.status().as_u16()),
            Ok(r) => PostOutcome::Rejected(r.status().as_u16()),
            Err(e) => PostOutcome::Failed(request_error(e).to_string()),
        }
    }
}

fn check_scheme(url: &Url) -> Result<(), FetchError> {
    if matches!(url.scheme(), "http" | "https") && url.host_str().is_some_and(|h| !h.is_empty()) {
        Ok(())
    } else {
        Err(FetchError::InvalidUrl(format!(
            "only http and https URLs can be fetched, not {:?}",
            url.scheme()
        )))
    }
}

/// Classifies a client error, finding the guard's refusal in its causes.
fn request_error(e: reqwest::Error) -> FetchError {
    // reqwest names the URL in its message: image URLs can be presigned and
    // webhook URLs can carry tokens, and the message reaches logs.
    let e = e.without_url();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(blocked) = err.downcast_ref::<Blocked>() {
            return FetchError::Blocked(blocked.to_string());
        }
        source = err.source();
    }
    if e.is_timeout() {
        return FetchError::Timeout(0);
    }
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(err) = source {
        detail = format!("{detail}: {err}");
        source = err.source();
    }
    FetchError::Failed(detail)
}
