//! `ingest`: a CSV put under `incoming/` is a submission (SPEC §4). The
//! request ID is an HMAC under `REQUEST_ID_SECRET` of the object (bucket,
//! key, version or ETag), so a repeated S3 event finds the request it
//! already made and nobody can compute the ID from the key. Such requests
//! belong to no API client. A file that is invalid, larger than the
//! largest valid CSV (refused unread) or fails for good gets its problems
//! written to `rejected/{key}.json`, and nothing else.

use aws_lambda_events::event::s3::{S3Event, S3EventRecord};
use bytes::Bytes;
use serde_json::json;
use uuid::Uuid;

use crate::adapters::s3::{Fetched, S3Objects};
use crate::api::error::{error_body, invalid_csv_message};
use crate::domain::csv_input::Issue;
use crate::ports::PortError;
use crate::services::submit::{RequestId, Submission, submit};
use crate::services::{App, ServiceError};

pub const INCOMING_PREFIX: &str = "incoming/";
/// The user metadata key (`x-amz-meta-webhook-url`) that carries the webhook.
pub const WEBHOOK_METADATA: &str = "webhook-url";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum IngestOutcome {
    Accepted {
        request_id: Uuid,
    },
    Rejected {
        report_key: String,
    },
    /// Not a drop (outside `incoming/`), or the object is already gone.
    Skipped,
}

/// Only a backend failure: the invocation fails and S3's asynchronous
/// invocation retries it, which the derived request ID makes harmless.
#[derive(Debug, thiserror::Error)]
#[error("ingesting s3://{bucket}/{key}: {source}")]
pub struct IngestError {
    pub bucket: String,
    pub key: String,
    pub source: PortError,
}

/// `rejected/{key}.json`
pub fn report_key(key: &str) -> String {
    format!("rejected/{key}.json")
}

/// Object keys arrive URL-encoded in S3 events, spaces as `+`.
pub fn decode_key(raw: &str) -> String {
    url::form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| {
            if v.is_empty() {
                k.into_owned()
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

pub async fn handle(
    app: &App,
    objects: &S3Objects,
    event: S3Event,
) -> Result<Vec<IngestOutcome>, IngestError> {
    let mut outcomes = Vec::with_capacity(event.records.len());
    for record in &event.records {
        outcomes.push(handle_record(app, objects, record).await?);
    }
    Ok(outcomes)
}

pub async fn handle_record(
    app: &App,
    objects: &S3Objects,
    record: &S3EventRecord,
) -> Result<IngestOutcome, IngestError> {
    let bucket = record.s3.bucket.name.clone().unwrap_or_default();
    let key = match (&record.s3.object.url_decoded_key, &record.s3.object.key) {
        (Some(decoded), _) => decoded.clone(),
        (None, Some(raw)) => decode_key(raw),
        (None, None) => String::new(),
    };
    let fail = |source: PortError| IngestError {
        bucket: bucket.clone(),
        key: key.clone(),
        source,
    };
    if bucket.is_empty() || !key.starts_with(INCOMING_PREFIX) {
        tracing::info!(bucket, key, "not a drop under incoming/; ignored");
        return Ok(IngestOutcome::Skipped);
    }
    let limit = app.config.max_drop_bytes;
    let object = match objects.fetch_limited(&bucket, &key, limit).await {
        Ok(Fetched::Found(object)) => object,
        Ok(Fetched::Missing) => {
            tracing::info!(bucket, key, "the dropped object is gone; nothing to do");
            return Ok(IngestOutcome::Skipped);
        }
        Ok(Fetched::TooLarge { size }) => {
            let size = size.map_or("more than that".into(), |s| format!("{s} bytes"));
            let message = format!(
                "the file ({size}) is larger than {limit} bytes, the largest CSV the service's limits allow; nothing was read or stored: split it into several files"
            );
            return reject(objects, &bucket, &key, "payload_too_large", &message, &[])
                .await
                .map_err(fail);
        }
        Err(PortError::Permanent(why)) => {
            let issue = Issue {
                line: None,
                column: None,
                message: why,
            };
            return reject(
                objects,
                &bucket,
                &key,
                "invalid_csv",
                "the file cannot be read",
                &[issue],
            )
            .await
            .map_err(fail);
        }
        Err(e) => return Err(fail(e)),
    };
    // The event names the exact version that was written; an ETag stands in
    // when the bucket is not versioned (a new upload under the same key has
    // new content, so a new ETag and a new request).
    let version = record
        .s3
        .object
        .version_id
        .clone()
        .filter(|v| !v.is_empty() && v != "null")
        .or(object.version_id.clone().filter(|v| v != "null"))
        .map(|v| format!("version={v}"))
        .or(record
            .s3
            .object
            .e_tag
            .clone()
            .or(object.e_tag.clone())
            .map(|e| format!("etag={}", e.trim_matches('"'))))
        .unwrap_or_default();
    let webhook_url = object
        .metadata
        .get(WEBHOOK_METADATA)
        .cloned()
        .filter(|u| !u.trim().is_empty());
    let submission = Submission {
        csv: &object.body,
        webhook_url,
        id: RequestId::Derived(format!("s3://{bucket}/{key}?{version}")),
        client: None,
    };
    match submit(app, submission).await {
        Ok(accepted) => {
            tracing::info!(bucket, key, request_id = %accepted.request_id, "drop accepted");
            Ok(IngestOutcome::Accepted {
                request_id: accepted.request_id,
            })
        }
        Err(ServiceError::InvalidCsv(issues)) => {
            let message = invalid_csv_message(issues.len());
            reject(objects, &bucket, &key, "invalid_csv", &message, &issues)
                .await
                .map_err(fail)
        }
        Err(ServiceError::InvalidRequest(m)) => {
            reject(objects, &bucket, &key, "invalid_request", &m, &[])
                .await
                .map_err(fail)
        }
        Err(ServiceError::Conflict(m)) => reject(objects, &bucket, &key, "conflict", &m, &[])
            .await
            .map_err(fail),
        // Worth another try: the invocation fails and S3 retries it.
        Err(ServiceError::Backend(e)) if e.is_transient() => Err(fail(e)),
        // Would fail again: the uploader learns it from the report.
        Err(other) => {
            tracing::error!(bucket, key, error = %other, "drop failed");
            let message = "the file could not be stored because of a service failure; upload it again, or ask the operator if it keeps failing";
            reject(objects, &bucket, &key, "internal", message, &[])
                .await
                .map_err(fail)
        }
    }
}

/// Writes the problems, in the API's error shape, next to nothing else.
async fn reject(
    objects: &S3Objects,
    bucket: &str,
    key: &str,
    code: &str,
    message: &str,
    details: &[Issue],
) -> Result<IngestOutcome, PortError> {
    let mut body = error_body(code, message, details);
    body["bucket"] = json!(bucket);
    body["key"] = json!(key);
    let report_key = report_key(key);
    let bytes = serde_json::to_vec_pretty(&body)
        .map_err(|e| PortError::Permanent(format!("encoding the report: {e}")))?;
    objects
        .put_in(bucket, &report_key, Bytes::from(bytes), "application/json")
        .await?;
    tracing::info!(bucket, key, report_key, code, "drop rejected");
    Ok(IngestOutcome::Rejected { report_key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_are_url_decoded() {
        assert_eq!(
            decode_key("incoming/my+file%282%29.csv"),
            "incoming/my file(2).csv"
        );
        assert_eq!(decode_key("incoming/a%26b%3Dc.csv"), "incoming/a&b=c.csv");
        assert_eq!(decode_key("incoming/plain.csv"), "incoming/plain.csv");
    }

    #[test]
    fn reports_sit_under_rejected() {
        assert_eq!(
            report_key("incoming/batch.csv"),
            "rejected/incoming/batch.csv.json"
        );
    }

    #[test]
    fn the_fixture_is_an_incoming_csv() {
        let event: S3Event =
            serde_json::from_str(include_str!("../../../../infra/events/ingest.json")).unwrap();
        let key = event.records[0]
            .s3
            .object
            .key
            .as_deref()
            .map(decode_key)
            .unwrap();
        assert!(key.starts_with(INCOMING_PREFIX) && key.ends_with(".csv"));
    }
}
