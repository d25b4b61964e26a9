//! Object storage for Kiroku.
//!
//! Three areas (`ingest/`, `work/`, `final/v1/`) and three roles. Each
//! binary gets a handle typed for its role ([`IngestWriter`], [`WorkerStore`],
//! [`FinalReader`]) so that code cannot even ask for more than its role
//! allows. On S3 the server enforces the same split with one credential per
//! role; the local-disk back end cannot (any process that can write the
//! directory can read it) and exists for development.

mod config;
mod local;
mod s3;

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use thiserror::Error;

pub use config::{Backend, Role, StorageConfig};

/// A byte stream of an object's contents.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("object not found")]
    NotFound,
    #[error("access denied")]
    AccessDenied,
    #[error("invalid object key")]
    InvalidKey,
    #[error("requested range not satisfiable")]
    InvalidRange,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// The three areas of the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Ingest,
    Work,
    Final,
}

impl Area {
    pub const ALL: [Area; 3] = [Area::Ingest, Area::Work, Area::Final];

    pub fn prefix(self) -> &'static str {
        match self {
            Area::Ingest => "ingest/",
            Area::Work => "work/",
            Area::Final => "final/v1/",
        }
    }

    /// The area a key lies in, if any.
    pub fn of(key: &str) -> Option<Area> {
        Area::ALL.into_iter().find(|a| key.starts_with(a.prefix()))
    }
}

/// Checks an object key: relative, `/`-separated, each segment non-empty,
/// not `.` or `..`, made of `A-Z a-z 0-9 - _ .` only. Keys are built by
/// Kiroku from identifiers, never taken from users, so this is a guard, not
/// a sanitiser.
pub fn check_key(key: &str) -> Result<(), StorageError> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidKey)
    }
}

/// A byte range request, inclusive like HTTP's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    /// `None` means to the end.
    pub end: Option<u64>,
}

/// An object being read.
pub struct Object {
    /// Size of the whole object.
    pub total_size: u64,
    /// The range actually returned (whole object when none was asked).
    pub start: u64,
    pub len: u64,
    pub body: ByteStream,
}

impl Object {
    /// Collects the stream; for small objects only.
    pub async fn into_bytes(mut self) -> Result<Vec<u8>, StorageError> {
        use futures_util::StreamExt;
        let mut out = Vec::with_capacity(self.len as usize);
        while let Some(chunk) = self.body.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }
}

/// Resolves a range against an object's size.
pub(crate) fn clamp_range(size: u64, range: Option<ByteRange>) -> Result<(u64, u64), StorageError> {
    match range {
        None => Ok((0, size)),
        Some(ByteRange { start, end }) => {
            if start >= size {
                return Err(StorageError::InvalidRange);
            }
            let last = end.unwrap_or(size - 1).min(size - 1);
            if last < start {
                return Err(StorageError::InvalidRange);
            }
            Ok((start, last - start + 1))
        }
    }
}

/// The raw store: every operation, with whatever the credential allows.
/// Role handles below narrow it down.
#[derive(Clone)]
pub enum Store {
    Local(local::LocalStore),
    S3(s3::S3Store),
}

impl Store {
    /// Opens the store for `role` as configured.
    pub fn open(config: &StorageConfig, role: Role) -> Result<Store, StorageError> {
        match &config.backend {
            Backend::Local { dir } => Ok(Store::Local(local::LocalStore::new(dir.clone()))),
            Backend::S3(s3) => {
                let creds = config.credentials(role).ok_or_else(|| {
                    StorageError::Unavailable(format!("no S3 credentials for the {role} role"))
                })?;
                Ok(Store::S3(s3::S3Store::new(s3, creds)))
            }
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Store::Local(_))
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        check_key(key)?;
        match self {
            Store::Local(s) => s.put(key, bytes).await,
            Store::S3(s) => s.put(key, bytes).await,
        }
    }

    pub async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Object, StorageError> {
        check_key(key)?;
        match self {
            Store::Local(s) => s.get(key, range).await,
            Store::S3(s) => s.get(key, range).await,
        }
    }

    /// The object's size.
    pub async fn head(&self, key: &str) -> Result<u64, StorageError> {
        check_key(key)?;
        match self {
            Store::Local(s) => s.head(key).await,
            Store::S3(s) => s.head(key).await,
        }
    }

    /// Keys under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        match self {
            Store::Local(s) => s.list(prefix).await,
            Store::S3(s) => s.list(prefix).await,
        }
    }

    /// Deletes `key`; deleting a missing key succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        check_key(key)?;
        match self {
            Store::Local(s) => s.delete(key).await,
            Store::S3(s) => s.delete(key).await,
        }
    }

    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        check_key(from)?;
        check_key(to)?;
        match self {
            Store::Local(s) => s.copy(from, to).await,
            Store::S3(s) => s.copy(from, to).await,
        }
    }

    /// Whether the backing service answers at all (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StorageError> {
        match self {
            Store::Local(s) => s.ping().await,
            Store::S3(s) => s.ping().await,
        }
    }
}

fn require_area(key: &str, area: Area) -> Result<(), StorageError> {
    if key.starts_with(area.prefix()) {
        Ok(())
    } else {
        Err(StorageError::AccessDenied)
    }
}

/// The app's handle: put under `ingest/`, nothing else.
#[derive(Clone)]
pub struct IngestWriter(Store);

impl IngestWriter {
    pub fn new(store: Store) -> Self {
        IngestWriter(store)
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        require_area(key, Area::Ingest)?;
        self.0.put(key, bytes).await
    }

    /// Readiness probe. A put-only credential can do nothing else, so this
    /// writes a tiny marker object under `ingest/`.
    pub async fn ping(&self) -> Result<(), StorageError> {
        match &self.0 {
            Store::Local(s) => s.ping().await,
            Store::S3(_) => {
                self.put("ingest/_probe/ready", Bytes::from_static(b"ok"))
                    .await
            }
        }
    }
}

/// The workers' handle: every operation in the three areas.
#[derive(Clone)]
pub struct WorkerStore(pub Store);

impl std::ops::Deref for WorkerStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.0
    }
}

/// The export service's handle: get and head under `final/v1/`.
#[derive(Clone)]
pub struct FinalReader(Store);

impl FinalReader {
    pub fn new(store: Store) -> Self {
        FinalReader(store)
    }

    pub async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Object, StorageError> {
        require_area(key, Area::Final)?;
        self.0.get(key, range).await
    }

    pub async fn head(&self, key: &str) -> Result<u64, StorageError> {
        require_area(key, Area::Final)?;
        self.0.head(key).await
    }

    /// Readiness probe: a get of a key that does not exist must answer
    /// "not found" (not "denied" and not a connection error).
    pub async fn ping(&self) -> Result<(), StorageError> {
        match self.0.get("final/v1/_probe/missing", None).await {
            Err(StorageError::NotFound) => Ok(()),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_relative_paths() {
        assert!(check_key("ingest/u/p/chunk-000001").is_ok());
        for bad in [
            "", "/abs", "a//b", "a/../b", "a/./b", "a/b/", "a\\b", "a%2e", "a b",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn areas_are_found_by_prefix() {
        assert_eq!(Area::of("final/v1/x"), Some(Area::Final));
        assert_eq!(Area::of("final/v2/x"), None);
        assert_eq!(Area::of("work/x"), Some(Area::Work));
    }

    #[test]
    fn ranges_clamp_like_http() {
        assert_eq!(clamp_range(10, None).unwrap(), (0, 10));
        let r = |start, end| Some(ByteRange { start, end });
        assert_eq!(clamp_range(10, r(2, Some(4))).unwrap(), (2, 3));
        assert_eq!(clamp_range(10, r(2, None)).unwrap(), (2, 8));
        assert_eq!(clamp_range(10, r(2, Some(99))).unwrap(), (2, 8));
        assert!(clamp_range(10, r(10, None)).is_err());
        assert!(clamp_range(10, r(5, Some(4))).is_err());
        assert!(clamp_range(0, r(0, None)).is_err());
    }
}
