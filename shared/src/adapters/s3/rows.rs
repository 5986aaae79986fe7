//! The stored rows of requests (`requests/{id}/rows-….jsonl`, see
//! [`crate::domain::rows`]) on S3: written once at submission, read by
//! byte range.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use crate::adapters::port_error;
use crate::ports::{PortError, PortResult};

#[derive(Clone, Debug)]
pub struct RowsBucket {
    client: Client,
    bucket: String,
}

impl RowsBucket {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }

    pub async fn put(&self, key: &str, body: Vec<u8>) -> PortResult<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/x-ndjson")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| port_error("S3 PutObject (rows)", e))?;
        Ok(())
    }

    /// Bytes `start..end` of `key`.
    pub async fn read(&self, key: &str, start: u64, end: u64) -> PortResult<Bytes> {
        if end <= start {
            return Ok(Bytes::new());
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .map_err(|e| port_error("S3 GetObject (rows)", e))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| PortError::Transient(format!("S3 GetObject (rows) body: {e}")))?
            .into_bytes();
        if body.len() as u64 != end - start {
            return Err(PortError::Permanent(format!(
                "stored rows {key}: asked for {} bytes, got {}",
                end - start,
                body.len()
            )));
        }
        Ok(body)
    }
}
