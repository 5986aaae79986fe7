//! Objects on S3: processed images, result CSVs, rejection reports, and
//! the CSVs dropped under `incoming/`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::error::port_error;
use crate::ports::{ObjectStore, PortError, PortResult};

/// How long a presigned output URL stays valid: 7 days, SigV4's maximum.
pub const PRESIGN_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone, Debug)]
pub struct S3Objects {
    client: Client,
    bucket: String,
    /// `OUTPUT_BASE_URL` (ends with `/`): when set, URLs are this + key.
    base_url: Option<String>,
}

/// An object read whole, with what S3 knows about it.
#[derive(Clone, Debug)]
pub struct FetchedObject {
    pub body: Bytes,
    /// User metadata, keys in lower case without `x-amz-meta-`.
    pub metadata: HashMap<String, String>,
    pub e_tag: Option<String>,
    pub version_id: Option<String>,
}

impl S3Objects {
    pub fn new(client: Client, bucket: impl Into<String>, base_url: Option<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            base_url,
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reads `bucket/key` (any bucket: S3 events name their own), refusing
    /// objects over `max_bytes` before downloading them.
    pub async fn fetch(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> PortResult<Option<FetchedObject>> {
        let out = match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if matches!(e.as_service_error(), Some(GetObjectError::NoSuchKey(_))) => {
                return Ok(None);
            }
            Err(e) => return Err(port_error("S3 GetObject", e)),
        };
        if out.content_length.is_some_and(|n| n as u64 > max_bytes) {
            return Err(PortError::Permanent(format!(
                "object {key} is larger than {max_bytes} bytes"
            )));
        }
        let metadata = out.metadata.clone().unwrap_or_default();
        let (e_tag, version_id) = (out.e_tag.clone(), out.version_id.clone());
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| PortError::Transient(format!("S3 GetObject body: {e}")))?
            .into_bytes();
        Ok(Some(FetchedObject {
            body,
            metadata,
            e_tag,
            version_id,
        }))
    }

    /// Writes `bucket/key`.
    pub async fn put_in(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> PortResult<()> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| port_error("S3 PutObject", e))?;
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for S3Objects {
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> PortResult<()> {
        // One PutObject is atomic: readers see the whole object or none.
        self.put_in(&self.bucket, key, body, content_type).await
    }

    async fn get(&self, key: &str) -> PortResult<Option<Bytes>> {
        Ok(self
            .fetch(&self.bucket, key, u64::MAX)
            .await?
            .map(|o| o.body))
    }

    async fn url(&self, key: &str) -> PortResult<String> {
        if let Some(base) = &self.base_url {
            return Ok(format!("{base}{key}"));
        }
        let config = PresigningConfig::expires_in(PRESIGN_FOR)
            .map_err(|e| PortError::Permanent(format!("presigning: {e}")))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| port_error("S3 presign", e))?;
        Ok(request.uri().to_owned())
    }
}
