//! Local-disk back end for development. It cannot enforce the per-role
//! permissions that S3 policies do: every binary opens the same directory.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::{ByteRange, Object, StorageError, clamp_range};

#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

fn io_err(e: std::io::Error) -> StorageError {
    match e.kind() {
        std::io::ErrorKind::NotFound => StorageError::NotFound,
        std::io::ErrorKind::PermissionDenied => StorageError::AccessDenied,
        _ => StorageError::Unavailable(e.to_string()),
    }
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        // Keys were checked by `check_key`: relative, no `..`.
        self.root.join(key)
    }

    /// Writes to a temporary file, syncs it, then renames it into place, so
    /// a reader never sees half an object and a success means durable.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let path = self.path(key);
        let dir = path.parent().expect("keys have a parent").to_owned();
        tokio::fs::create_dir_all(&dir).await.map_err(io_err)?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("object"),
            std::process::id()
        ));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err)?;
        file.write_all(&bytes).await.map_err(io_err)?;
        file.sync_all().await.map_err(io_err)?;
        drop(file);
        tokio::fs::rename(&tmp, &path).await.map_err(io_err)?;
        Ok(())
    }

    pub async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Object, StorageError> {
        let mut file = tokio::fs::File::open(self.path(key))
            .await
            .map_err(io_err)?;
        let size = file.metadata().await.map_err(io_err)?.len();
        let (start, len) = clamp_range(size, range)?;
        file.seek(SeekFrom::Start(start)).await.map_err(io_err)?;
        let body = ReaderStream::new(file.take(len)).map(|r| r.map_err(io_err));
        Ok(Object {
            total_size: size,
            start,
            len,
            body: Box::pin(body),
        })
    }

    pub async fn head(&self, key: &str) -> Result<u64, StorageError> {
        let meta = tokio::fs::metadata(self.path(key)).await.map_err(io_err)?;
        if !meta.is_file() {
            return Err(StorageError::NotFound);
        }
        Ok(meta.len())
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &root, &mut out).map_err(io_err)?;
            out.retain(|k| k.starts_with(&prefix));
            out.sort();
            Ok(out)
        })
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))?
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let bytes = tokio::fs::read(self.path(from)).await.map_err(io_err)?;
        self.put(to, bytes.into()).await
    }

    pub async fn ping(&self) -> Result<(), StorageError> {
        tokio::fs::create_dir_all(&self.root).await.map_err(io_err)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue; // temporary files of writes in progress
        }
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (LocalStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("kiroku-local-{}", uuid_like()));
        (LocalStore::new(dir.clone()), dir)
    }

    fn uuid_like() -> String {
        use std::time::{SystemTime, UNIX_EPOCH};
        let n = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("{n:x}-{}", std::process::id())
    }

    #[tokio::test]
    async fn put_get_range_list_delete() {
        let (s, dir) = store();
        s.put("ingest/a/1", Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        s.put("work/b", Bytes::from_static(b"x")).await.unwrap();
        let whole = s
            .get("ingest/a/1", None)
            .await
            .unwrap()
            .into_bytes()
            .await
            .unwrap();
        assert_eq!(whole, b"0123456789");
        let part = s
            .get(
                "ingest/a/1",
                Some(ByteRange {
                    start: 3,
                    end: Some(5),
                }),
            )
            .await
            .unwrap();
        assert_eq!((part.start, part.len, part.total_size), (3, 3, 10));
        assert_eq!(part.into_bytes().await.unwrap(), b"345");
        assert_eq!(s.list("ingest/").await.unwrap(), vec!["ingest/a/1"]);
        assert_eq!(s.list("").await.unwrap().len(), 2);
        s.delete("ingest/a/1").await.unwrap();
        s.delete("ingest/a/1").await.unwrap();
        assert!(matches!(
            s.get("ingest/a/1", None).await,
            Err(StorageError::NotFound)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
