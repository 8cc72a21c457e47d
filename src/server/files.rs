//! Serving bundle bytes (zips and content-addressed files) from filesystem storage, with Range
//! requests, Content-Length, an ETag of the content hash and immutable caching.

use std::path::{Component, Path, PathBuf};

use axum::{
    body::Body,
    http::{HeaderValue, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use tower::ServiceExt;
use tower_http::services::ServeFile;

pub use crate::storage::content_hash;
use crate::storage::{IMMUTABLE_CACHE_CONTROL as IMMUTABLE, NO_TRANSFORM_CACHE_CONTROL};

/// The file under `root` for a storage key, or None when the key could leave `root`.
pub fn resolve(root: &Path, key: &str) -> Option<PathBuf> {
    let relative = Path::new(key);
    let safe = !key.is_empty()
        && !key.contains('\\')
        && relative.components().all(|c| matches!(c, Component::Normal(_)));
    safe.then(|| root.join(relative))
}

/// Whether an `If-None-Match` value names `etag` (RFC 9110 13.1.2: `*`, or a list of tags
/// compared weakly, so `W/"x"` matches `"x"`).
fn none_match_hits(sent: &[u8], etag: &str) -> bool {
    let Ok(sent) = std::str::from_utf8(sent) else {
        return false;
    };
    sent.trim() == "*"
        || sent
            .split(',')
            .map(|tag| tag.trim())
            .any(|tag| tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// Serves one stored object, honouring Range and conditional headers.
pub async fn serve(path: PathBuf, key: &str, request: Request<Body>) -> Response {
    if !tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
        return (StatusCode::NOT_FOUND, "no such object\n").into_response();
    }
    let etag = content_hash(key).map(|hash| format!("\"{hash}\""));
    if let (Some(etag), Some(sent)) = (&etag, request.headers().get(header::IF_NONE_MATCH))
        && none_match_hits(sent.as_bytes(), etag)
    {
        // RFC 9110 15.4.5: a 304 carries the ETag and Cache-Control a 200 would.
        let mut headers = axum::http::HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(etag) {
            headers.insert(header::ETAG, value);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let response = match ServeFile::new(&path).oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot read a stored object");
            return (StatusCode::INTERNAL_SERVER_ERROR, "cannot read the object\n").into_response();
        }
    };
    let (mut parts, body) = response.into_parts();
    // Raw bytes: never announce an encoding, whatever the file name suggests.
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        parts.headers.insert(header::ETAG, etag);
        parts
            .headers
            .insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    } else {
        parts.headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(NO_TRANSFORM_CACHE_CONTROL),
        );
    }
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_takes_star_lists_and_weak_tags() {
        let etag = "\"ab12\"";
        for sent in [
            "\"ab12\"",
            "W/\"ab12\"",
            "\"x\", W/\"ab12\"",
            " * ",
            "\"x\",\"ab12\"",
        ] {
            assert!(none_match_hits(sent.as_bytes(), etag), "{sent}");
        }
        for sent in ["\"ab1\"", "ab12", "W/ab12", "", "\"x\", \"y\"", "\u{fffd}"] {
            assert!(!none_match_hits(sent.as_bytes(), etag), "{sent}");
        }
        assert!(!none_match_hits(&[0xff, 0xfe], etag));
    }

    #[test]
    fn keys_cannot_leave_the_root() {
        let root = Path::new("/srv/storage");
        assert_eq!(
            resolve(root, "files/abc"),
            Some(PathBuf::from("/srv/storage/files/abc"))
        );
        for bad in [
            "",
            "../etc/passwd",
            "files/../../x",
            "/etc/passwd",
            "files\\..\\x",
            "./files/abc",
        ] {
            assert_eq!(resolve(root, bad), None, "{bad}");
        }
    }

    #[test]
    fn content_hashes_come_from_content_addressed_keys() {
        let sha = "a".repeat(64);
        assert_eq!(content_hash(&format!("files/{sha}")), Some(sha.as_str()));
        assert_eq!(content_hash(&format!("files/{sha}.br")), Some(sha.as_str()));
        assert_eq!(content_hash(&format!("shop/zips/{sha}.zip")), Some(sha.as_str()));
        assert_eq!(content_hash("manifests/x.json"), None);
        // A manifest is named by its bundle's zip and may be rewritten: never immutable.
        assert_eq!(content_hash(&format!("manifests/{sha}.json")), None);
        assert_eq!(content_hash(&format!("shop/manifests/{sha}.br.json")), None);
        assert_eq!(
            crate::storage::cache_control_for(&format!("shop/manifests/{sha}.json")),
            "no-transform"
        );
    }
}
