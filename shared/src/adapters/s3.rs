//! Objects on S3: processed images, result CSVs, rejection reports, and
//! the CSVs dropped under `incoming/`.

pub mod rows;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};

use super::port_error;
use crate::api::files::csv_file_name;
use crate::ports::{Download, ObjectStore, PortError, PortResult};

pub use rows::RowsBucket;

/// How long the presigned URL of a `/files` redirect stays valid. Clients
/// follow a redirect at once, and every request for the lasting URL signs
/// afresh, so this only needs to cover the start of one download. (A URL
/// signed with a role's temporary credentials also dies with them.)
pub const REDIRECT_VALID_FOR: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub struct S3Objects {
    client: Client,
    bucket: String,
    /// Prefix of the lasting URLs handed out ([`Config::files_base_url`],
    /// ending with `/`): URLs are this + key.
    ///
    /// [`Config::files_base_url`]: crate::config::Config::files_base_url
    base_url: String,
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

/// What [`S3Objects::fetch_limited`] found.
#[derive(Clone, Debug)]
pub enum Fetched {
    Found(FetchedObject),
    Missing,
    /// Over the limit: `size` when S3 announced it, `None` when the body
    /// turned out longer than announced.
    TooLarge {
        size: Option<u64>,
    },
}

impl S3Objects {
    pub fn new(client: Client, bucket: impl Into<String>, base_url: impl Into<String>) -> Self {
        let mut base_url = base_url.into();
        if !base_url.ends_with('/') {
            base_url.push('/');
        }
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
    /// objects over `max_bytes` (as a permanent error).
    pub async fn fetch(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> PortResult<Option<FetchedObject>> {
        match self.fetch_limited(bucket, key, max_bytes).await? {
            Fetched::Found(object) => Ok(Some(object)),
            Fetched::Missing => Ok(None),
            Fetched::TooLarge { .. } => Err(PortError::Permanent(format!(
                "object {key} is larger than {max_bytes} bytes"
            ))),
        }
    }

    /// Reads `bucket/key` into memory, never holding more than
    /// `max_bytes` of it: an object whose `Content-Length` is larger is
    /// refused before its body is read, and the body is read chunk by
    /// chunk into a buffer of the announced size, stopping as soon as it
    /// would pass the limit.
    pub async fn fetch_limited(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> PortResult<Fetched> {
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
                return Ok(Fetched::Missing);
            }
            Err(e) => return Err(port_error("S3 GetObject", e)),
        };
        let declared = out.content_length.map(|n| n.max(0) as u64);
        if let Some(size) = declared.filter(|&n| n > max_bytes) {
            // Dropping the response closes it with the body unread.
            return Ok(Fetched::TooLarge { size: Some(size) });
        }
        let metadata = out.metadata.clone().unwrap_or_default();
        let (e_tag, version_id) = (out.e_tag.clone(), out.version_id.clone());
        let capacity = declared.unwrap_or(0).min(max_bytes);
        let mut buffer = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
        let mut body = out.body;
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| PortError::Transient(format!("S3 GetObject body: {e}")))?;
            if (buffer.len() + chunk.len()) as u64 > max_bytes {
                return Ok(Fetched::TooLarge { size: None });
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(Fetched::Found(FetchedObject {
            body: buffer.freeze(),
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
        Ok(format!("{}{key}", self.base_url))
    }

    async fn download(&self, key: &str) -> PortResult<Option<Download>> {
        // A redirect to a missing object would show S3's own XML error:
        // look first, so the client gets the service's 404 instead.
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if matches!(e.as_service_error(), Some(HeadObjectError::NotFound(_))) => {
                return Ok(None);
            }
            // Without s3:ListBucket, S3 answers 403 for a missing key too.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => {
                tracing::warn!(
                    key,
                    "S3 HeadObject forbidden: missing, or s3:GetObject not granted"
                );
                return Ok(None);
            }
            Err(e) => return Err(port_error("S3 HeadObject", e)),
        }
        let config = PresigningConfig::expires_in(REDIRECT_VALID_FOR)
            .map_err(|e| PortError::Permanent(format!("presigning: {e}")))?;
        let mut get = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(name) = csv_file_name(key) {
            // A result CSV followed as a link is saved, not shown.
            get = get.response_content_disposition(format!("attachment; filename=\"{name}\""));
        }
        let request = get
            .presigned(config)
            .await
            .map_err(|e| port_error("S3 presign", e))?;
        Ok(Some(Download::Redirect(request.uri().to_owned())))
    }
}
