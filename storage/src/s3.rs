//! S3 back end through `aws-sdk-s3`. One client per role credential; the
//! server's policies decide what each may do.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as AwsStream;
use aws_smithy_http_client::tls;
use bytes::Bytes;

use crate::config::{Credentials, S3Config};
use crate::{ByteRange, Object, StorageError};

#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
}

fn map_err<E>(e: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e.code() {
        Some("AccessDenied" | "Forbidden") => return StorageError::AccessDenied,
        Some("NoSuchKey" | "NotFound" | "NoSuchBucket") => return StorageError::NotFound,
        Some("InvalidRange") => return StorageError::InvalidRange,
        _ => {}
    }
    // HEAD answers carry no error body: fall back to the status code.
    match e.raw_response().map(|r| r.status().as_u16()) {
        Some(403) => StorageError::AccessDenied,
        Some(404) => StorageError::NotFound,
        Some(416) => StorageError::InvalidRange,
        _ => StorageError::Unavailable(aws_sdk_s3::error::DisplayErrorContext(&e).to_string()),
    }
}

impl S3Store {
    pub fn new(cfg: &S3Config, creds: &Credentials) -> Self {
        let credentials = aws_sdk_s3::config::Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.clone(),
            None,
            None,
            "kiroku",
        );
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .endpoint_url(cfg.endpoint.clone())
            .force_path_style(true)
            .credentials_provider(credentials)
            .http_client(http)
            // Plain-HTTP streaming uploads otherwise use signed trailers that
            // some S3 servers refuse.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        S3Store {
            client: Client::from_conf(conf),
            bucket: cfg.bucket.clone(),
        }
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(AwsStream::from(bytes))
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    pub async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Object, StorageError> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(r) = range {
            let end = r.end.map(|e| e.to_string()).unwrap_or_default();
            req = req.range(format!("bytes={}-{end}", r.start));
        }
        let resp = req.send().await.map_err(map_err)?;
        let len = resp.content_length().unwrap_or(0).max(0) as u64;
        let (start, total_size) = match resp.content_range() {
            // "bytes START-END/TOTAL"
            Some(cr) => parse_content_range(cr).ok_or_else(|| {
                StorageError::Unavailable("malformed Content-Range from S3".into())
            })?,
            None => (0, len),
        };
        let body = futures_util::stream::unfold(resp.body, |mut b| async move {
            b.next()
                .await
                .map(|r| (r.map_err(|e| StorageError::Unavailable(e.to_string())), b))
        });
        Ok(Object {
            total_size,
            start,
            len,
            body: Box::pin(body),
        })
    }

    pub async fn head(&self, key: &str) -> Result<u64, StorageError> {
        let resp = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(map_err)?;
        Ok(resp.content_length().unwrap_or(0).max(0) as u64)
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(map_err)?;
            out.extend(
                resp.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match resp.next_continuation_token() {
                Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        out.sort();
        Ok(out)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .copy_source(format!("{}/{from}", self.bucket))
            .key(to)
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// A HEAD of the bucket: answers for any valid credential.
    pub async fn ping(&self) -> Result<(), StorageError> {
        match self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(map_err)
        {
            Ok(_) | Err(StorageError::AccessDenied) | Err(StorageError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (start, _) = span.split_once('-')?;
    Some((start.parse().ok()?, total.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_range_parses() {
        assert_eq!(super::parse_content_range("bytes 2-4/10"), Some((2, 10)));
        assert_eq!(super::parse_content_range("bytes */10"), None);
    }
}
