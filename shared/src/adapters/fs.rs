//! Objects as files under one root folder.

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use crate::ports::{Download, ObjectStore, PortError, PortResult};

#[derive(Clone, Debug)]
pub struct FsObjectStore {
    root: PathBuf,
    /// Prefix of public URLs, ending with `/`.
    base_url: String,
}

impl FsObjectStore {
    pub fn new(root: impl Into<PathBuf>, base_url: impl Into<String>) -> Self {
        let mut base_url = base_url.into();
        if !base_url.ends_with('/') {
            base_url.push('/');
        }
        Self {
            root: root.into(),
            base_url,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file for `key`, or `None` when the key would leave the root
    /// (`..`, absolute paths): keys come from URLs in the `/files` route.
    pub fn path_of(&self, key: &str) -> Option<PathBuf> {
        let rel = Path::new(key);
        let safe = !key.is_empty()
            && rel.components().all(|c| matches!(c, Component::Normal(_)))
            && !key.contains('\\');
        safe.then(|| self.root.join(rel))
    }
}

/// The media type of a stored file, from its extension (the store keeps
/// no metadata beside the bytes).
pub fn content_type_of(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "csv" => "text/csv; charset=utf-8",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

fn io_err(e: std::io::Error) -> PortError {
    PortError::Transient(format!("file system: {e}"))
}

#[async_trait]
impl ObjectStore for FsObjectStore {
    async fn put(&self, key: &str, body: Bytes, _content_type: &str) -> PortResult<()> {
        let path = self
            .path_of(key)
            .ok_or_else(|| PortError::Permanent(format!("invalid object key {key:?}")))?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        tokio::fs::create_dir_all(&dir).await.map_err(io_err)?;
        // Write aside, then rename: a reader never sees half an object.
        let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
        tokio::fs::write(&tmp, &body).await.map_err(io_err)?;
        if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io_err(e));
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> PortResult<Option<Bytes>> {
        let Some(path) = self.path_of(key) else {
            return Ok(None);
        };
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            // A folder, or a key running through a file, is no object.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::IsADirectory
                        | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(io_err(e)),
        }
    }

    async fn url(&self, key: &str) -> PortResult<String> {
        Ok(format!("{}{key}", self.base_url))
    }

    async fn download(&self, key: &str) -> PortResult<Option<Download>> {
        let Some(path) = self.path_of(key) else {
            return Ok(None);
        };
        Ok(self.get(key).await?.map(|bytes| Download::Body {
            bytes,
            content_type: content_type_of(&path).to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_leave_the_root() {
        let s = FsObjectStore::new("/data/objects", "http://x/files");
        assert_eq!(
            s.path_of("processed/a/1/1.jpg"),
            Some(PathBuf::from("/data/objects/processed/a/1/1.jpg"))
        );
        for bad in [
            "",
            "../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            "a\\..\\b",
            "./a",
        ] {
            assert_eq!(s.path_of(bad), None, "{bad}");
        }
    }
}
