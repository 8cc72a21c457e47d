//! A cloud store whose `Debug` output cannot show credentials, and whose objects carry the
//! headers devices need.
//!
//! object_store's clients derive `Debug` through their whole configuration; some credential
//! types print their key material (Azure's decoded account key, for one). [`Redacted`] forwards
//! every call of [`ObjectStore`] and [`Signer`] to the client and prints only its `Display`
//! (the kind of store and the bucket).
//!
//! Devices download from cloud storage directly (presigned or CDN URLs), so what the update
//! server's own `/files` route sets must be stored with each object: `Cache-Control`
//! ([`super::cache_control_for`]: immutable for content-addressed keys, `no-transform` always)
//! and `Content-Type: application/octet-stream`. A caller's own attributes win.

use std::{fmt, ops::Range, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::{
    Attribute, Attributes, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
    path::Path,
    signer::{Method, SignedUrlOptions, Signer, Url},
};

/// Adds the headers a device's download needs, unless the caller set them.
fn with_download_headers(location: &Path, attributes: &mut Attributes) {
    if attributes.get(&Attribute::CacheControl).is_none() {
        attributes.insert(
            Attribute::CacheControl,
            super::cache_control_for(location.as_ref()).into(),
        );
    }
    if attributes.get(&Attribute::ContentType).is_none() {
        attributes.insert(Attribute::ContentType, "application/octet-stream".into());
    }
}

/// A store and signer that forwards to `T` and hides `T`'s `Debug`.
pub(super) struct Redacted<T>(pub(super) T);

impl<T: fmt::Display> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (credentials redacted)", self.0)
    }
}

impl<T: fmt::Display> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[async_trait]
impl<T: ObjectStore> ObjectStore for Redacted<T> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> Result<PutResult> {
        with_download_headers(location, &mut opts.attributes);
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        mut opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        with_download_headers(location, &mut opts.attributes);
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.0.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.0.rename_opts(from, to, options).await
    }
}

#[async_trait]
impl<T: Signer + fmt::Display> Signer for Redacted<T> {
    async fn signed_url(&self, method: Method, path: &Path, expires_in: Duration) -> Result<Url> {
        self.0.signed_url(method, path, expires_in).await
    }

    async fn signed_url_opts(
        &self,
        method: Method,
        path: &Path,
        expires_in: Duration,
        options: &SignedUrlOptions,
    ) -> Result<Url> {
        self.0.signed_url_opts(method, path, expires_in, options).await
    }

    async fn signed_urls(&self, method: Method, paths: &[Path], expires_in: Duration) -> Result<Vec<Url>> {
        self.0.signed_urls(method, paths, expires_in).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::{ObjectStoreExt, WriteMultipart, memory::InMemory};

    use super::*;

    /// The attributes an object was stored with (object_store's in-memory store keeps them, as
    /// the cloud stores do).
    async fn stored_attributes(store: &Redacted<InMemory>, key: &str) -> Attributes {
        store.get(&Path::from(key)).await.expect("stored").attributes
    }

    #[tokio::test]
    async fn objects_are_stored_with_the_headers_devices_need_unless_the_caller_set_them() {
        let store = Redacted(InMemory::new());
        let sha = "a".repeat(64);
        let immutable = format!("files/{sha}.br");
        store
            .put(&Path::from(immutable.as_str()), PutPayload::from_static(b"x"))
            .await
            .expect("put");
        let mut upload = WriteMultipart::new(
            store
                .put_multipart(&Path::from(format!("zips/{sha}.zip").as_str()))
                .await
                .expect("an upload"),
        );
        upload.write(b"zip bytes");
        upload.finish().await.expect("the upload completes");
        store
            .put(&Path::from("notes/readme"), PutPayload::from_static(b"x"))
            .await
            .expect("put");
        let mut own = Attributes::new();
        own.insert(Attribute::CacheControl, "private".into());
        store
            .put_opts(
                &Path::from(format!("files/{sha}").as_str()),
                PutPayload::from_static(b"x"),
                PutOptions {
                    attributes: own,
                    ..Default::default()
                },
            )
            .await
            .expect("put");

        for (key, cache_control) in [
            (immutable.clone(), super::super::IMMUTABLE_CACHE_CONTROL),
            (format!("zips/{sha}.zip"), super::super::IMMUTABLE_CACHE_CONTROL),
            ("notes/readme".to_owned(), "no-transform"),
            (format!("files/{sha}"), "private"),
        ] {
            let attributes = stored_attributes(&store, &key).await;
            assert_eq!(
                attributes.get(&Attribute::CacheControl).map(|v| v.as_ref()),
                Some(cache_control),
                "{key}"
            );
            assert_eq!(
                attributes.get(&Attribute::ContentType).map(|v| v.as_ref()),
                Some("application/octet-stream"),
                "{key}"
            );
        }
    }
}
