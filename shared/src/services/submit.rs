//! Submitting a CSV: validate everything, store the request, queue its images.

use chrono::Utc;
use sha2::{Digest, Sha256};
use tracing::Instrument;
use uuid::Uuid;

use super::{App, ServiceError, fanout};
use crate::domain::csv_input::{self, check_url_syntax};
use crate::domain::{NewRequest, RequestRecord};
use crate::metrics::Event;
use crate::ports::CreateOutcome;

/// Request IDs derived from a name (an `Idempotency-Key`, an S3 object) live
/// in this namespace, so the same name always gives the same ID.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x5b1e_4f0c_9a7d_4c3e_8f21_6d0a_b7c4_e913);

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

pub struct Submission<'a> {
    pub csv: &'a [u8],
    pub webhook_url: Option<String>,
    pub id: RequestId,
}

/// Where the new request's ID comes from.
pub enum RequestId {
    Random,
    /// From the client's `Idempotency-Key`: a repeat finds the first request.
    IdempotencyKey(String),
    /// From a name the caller derived (e.g. bucket, key and version of an S3 object).
    Derived(String),
}

impl RequestId {
    fn resolve(&self) -> Uuid {
        match self {
            Self::Random => Uuid::new_v4(),
            Self::IdempotencyKey(key) => {
                Uuid::new_v5(&ID_NAMESPACE, format!("idempotency-key:{key}").as_bytes())
            }
            Self::Derived(name) => {
                Uuid::new_v5(&ID_NAMESPACE, format!("derived:{name}").as_bytes())
            }
        }
    }
}

/// The answer to a submission; a repeat gets the first answer again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub request_id: Uuid,
    pub products: u32,
    pub images: u32,
    pub warnings: Vec<String>,
}

impl Accepted {
    fn of(r: &RequestRecord) -> Self {
        Self {
            request_id: r.id,
            products: r.product_count,
            images: r.progress.total,
            warnings: r.warnings.clone(),
        }
    }
}

/// Checks an `Idempotency-Key` header value: 1–255 printable ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<(), ServiceError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && key.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters without spaces"
        )))
    }
}

/// Checks a webhook URL: absolute http(s), and not a literal private address
/// while the network guard is on (names are checked when delivering).
pub fn check_webhook_url(app: &App, raw: &str) -> Result<(), ServiceError> {
    let url = check_url_syntax(raw)
        .map_err(|why| ServiceError::InvalidRequest(format!("webhook_url {why}")))?;
    app.http.policy().check_ip_literal(&url).map_err(|blocked| {
        ServiceError::InvalidRequest(format!("webhook_url is refused: {blocked}"))
    })
}

fn fingerprint(csv: &[u8], webhook_url: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(csv);
    h.update([0]);
    h.update(webhook_url.unwrap_or("").as_bytes());
    hex::encode(h.finalize())
}

pub async fn submit(app: &App, sub: Submission<'_>) -> Result<Accepted, ServiceError> {
    if let RequestId::IdempotencyKey(key) = &sub.id {
        check_idempotency_key(key)?;
    }
    if let Some(url) = sub.webhook_url.as_deref() {
        check_webhook_url(app, url)?;
    }
    let parsed =
        csv_input::parse(sub.csv, &app.config.csv_limits()).map_err(ServiceError::InvalidCsv)?;
    let new = NewRequest {
        id: sub.id.resolve(),
        created_at: Utc::now(),
        fingerprint: fingerprint(sub.csv, sub.webhook_url.as_deref()),
        webhook_url: sub.webhook_url,
        warnings: parsed.warnings,
        products: parsed.products,
    };

    let span = tracing::info_span!("submit", request_id = %new.id);
    store_and_queue(app, new).instrument(span).await
}

/// Stores `new` and starts queueing its images, or answers a repeat with
/// the first answer. The answer does not wait for the images to be queued.
async fn store_and_queue(app: &App, new: NewRequest) -> Result<Accepted, ServiceError> {
    fanout::ask(app, new.id).await?;
    match app.store.create_request(&new).await? {
        CreateOutcome::Created => {
            fanout::run_inline(app, new.id).await?;
            tracing::info!(
                products = new.products.len(),
                images = new.image_count(),
                "request accepted"
            );
            app.metrics.record(&Event::RequestAccepted {
                request_id: new.id,
                images: new.image_count(),
            });
            Ok(Accepted {
                request_id: new.id,
                products: new.products.len() as u32,
                images: new.image_count(),
                warnings: new.warnings,
            })
        }
        CreateOutcome::Existing(existing) if existing.fingerprint == new.fingerprint => {
            // The first attempt may have stored the request and died before
            // its fan-out ran: the ask above restarts it on AWS; locally run
            // it (a running one is not disturbed, a finished one does nothing).
            if existing.queued < existing.progress.total {
                fanout::run_inline(app, existing.id).await?;
            }
            Ok(Accepted::of(&existing))
        }
        CreateOutcome::Existing(_) => Err(ServiceError::Conflict(
            "this Idempotency-Key was already used for a different submission".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_key_gives_the_same_id_and_kinds_do_not_collide() {
        let a = RequestId::IdempotencyKey("k1".into()).resolve();
        assert_eq!(a, RequestId::IdempotencyKey("k1".into()).resolve());
        assert_ne!(a, RequestId::IdempotencyKey("k2".into()).resolve());
        assert_ne!(a, RequestId::Derived("k1".into()).resolve());
        assert_ne!(RequestId::Random.resolve(), RequestId::Random.resolve());
    }

    #[test]
    fn idempotency_keys_are_bounded_printable_ascii() {
        assert!(check_idempotency_key("order-42_retry.1").is_ok());
        assert!(check_idempotency_key(&"k".repeat(255)).is_ok());
        for bad in ["", "has space", "é", &"k".repeat(256)] {
            assert!(check_idempotency_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_fingerprint_covers_the_webhook() {
        assert_eq!(fingerprint(b"a", None), fingerprint(b"a", Some("")));
        assert_ne!(
            fingerprint(b"a", None),
            fingerprint(b"a", Some("https://h.example/"))
        );
        assert_ne!(fingerprint(b"a", None), fingerprint(b"b", None));
    }
}
