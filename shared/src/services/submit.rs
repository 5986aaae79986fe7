//! Submitting a CSV: validate everything, store the request, queue its images.

use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tracing::Instrument;
use uuid::Uuid;

use super::{App, ServiceError, fanout};
use crate::config::Secret;
use crate::domain::csv_input::{self, check_url_syntax};
use crate::domain::{NewRequest, RequestRecord};
use crate::metrics::Event;
use crate::ports::{CreateOutcome, PortError};

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

pub struct Submission<'a> {
    pub csv: &'a [u8],
    pub webhook_url: Option<String>,
    pub id: RequestId,
    /// The API client submitting (`None` for the S3 drop and an API
    /// without tokens): it scopes the idempotency key and owns the request.
    pub client: Option<String>,
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
    /// A random UUID, or for a key or a name an HMAC-SHA256 under the
    /// server's `secret` of the kind, the client and the key, as a UUID
    /// (version 8): the same client repeating a key gets the same ID, two
    /// clients never share one, and without the secret nobody can compute
    /// an ID from a key.
    pub fn resolve(
        &self,
        secret: Option<&Secret>,
        client: Option<&str>,
    ) -> Result<Uuid, ServiceError> {
        let (kind, name) = match self {
            Self::Random => return Ok(Uuid::new_v4()),
            Self::IdempotencyKey(key) => (b"idempotency-key", key),
            Self::Derived(name) => (b"derived:s3-drop", name),
        };
        let secret = secret.ok_or_else(|| {
            ServiceError::Backend(PortError::Permanent(
                "REQUEST_ID_SECRET is not set: request IDs cannot be derived".into(),
            ))
        })?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
            .map_err(|e| ServiceError::Backend(PortError::Permanent(format!("HMAC key: {e}"))))?;
        // Length-prefixed fields, so no two (kind, client, key) triples
        // feed the MAC the same bytes.
        for field in [&kind[..], client.unwrap_or("").as_bytes(), name.as_bytes()] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac.update(&[u8::from(client.is_some())]);
        let digest = mac.finalize().into_bytes();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Ok(uuid::Builder::from_custom_bytes(bytes).into_uuid())
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
    let id = sub
        .id
        .resolve(app.config.request_id_secret.as_ref(), sub.client.as_deref())?;
    let new = NewRequest {
        id,
        created_at: Utc::now(),
        fingerprint: fingerprint(sub.csv, sub.webhook_url.as_deref()),
        client_id: sub.client,
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

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn id(kind: RequestId, secret: &str, client: Option<&str>) -> Uuid {
        kind.resolve(Some(&Secret::new(secret)), client).unwrap()
    }

    fn key(k: &str) -> RequestId {
        RequestId::IdempotencyKey(k.into())
    }

    #[test]
    fn keys_are_scoped_to_their_client_and_kinds_do_not_collide() {
        let a = id(key("k1"), SECRET, Some("acme"));
        assert_eq!(
            a,
            id(key("k1"), SECRET, Some("acme")),
            "a repeat finds its request"
        );
        assert_ne!(
            a,
            id(key("k1"), SECRET, Some("globex")),
            "two clients, one key"
        );
        assert_ne!(a, id(key("k1"), SECRET, None));
        assert_ne!(a, id(key("k2"), SECRET, Some("acme")));
        assert_ne!(a, id(RequestId::Derived("k1".into()), SECRET, Some("acme")));
        // Length prefixes: moving bytes between client and key changes the ID.
        assert_ne!(
            id(key("bc"), SECRET, Some("a")),
            id(key("c"), SECRET, Some("ab"))
        );
        assert_eq!(a.get_version_num(), 8);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        let r = RequestId::Random.resolve(None, None).unwrap();
        assert_ne!(r, RequestId::Random.resolve(None, None).unwrap());
        assert_eq!(r.get_version_num(), 4);
    }

    #[test]
    fn an_id_cannot_be_computed_from_its_key() {
        let a = id(key("order-42"), SECRET, None);
        // The ID the key gave before: a UUIDv5 in a namespace in the source.
        let namespace = Uuid::from_u128(0x5b1e_4f0c_9a7d_4c3e_8f21_6d0a_b7c4_e913);
        assert_ne!(a, Uuid::new_v5(&namespace, b"idempotency-key:order-42"));
        assert_ne!(
            a,
            id(key("order-42"), "another-secret-of-at-least-32-chars", None)
        );
        assert!(matches!(
            key("order-42").resolve(None, None),
            Err(ServiceError::Backend(PortError::Permanent(_)))
        ));
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
