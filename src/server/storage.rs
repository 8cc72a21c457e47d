//! Each App's storage as the update server uses it: the opened store (for bundle sync and
//! manifests), the download URLs it hands out, and for filesystem storage the folder `/files`
//! serves. Opened once per App and reused while the App's storage spec is unchanged, so object
//! store clients and the cache of presigned URLs survive snapshot rebuilds.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use crate::{
    api::{App, app::StorageSpec},
    storage::{self, Credentials, OpenedStorage, StorageError, StorageUrls, UrlMode},
};

/// One App's storage, ready for serving.
#[derive(Debug)]
pub struct AppStorage {
    /// The opened store and key prefix.
    pub opened: OpenedStorage,
    /// The URLs devices are given.
    pub urls: StorageUrls,
    /// Filesystem storage: the folder keys are relative to (the storage folder joined with the
    /// prefix), which `/files/<app>/<key>` serves. None for object storage.
    pub local_root: Option<PathBuf>,
}

impl AppStorage {
    /// Where `/files/<app>/<key>` sends a device for object storage: the public or presigned
    /// URL of the key. None when the server serves the bytes itself.
    pub async fn redirect_url(&self, app_id: &str, key: &str) -> Option<Result<String, StorageError>> {
        match self.urls.mode() {
            UrlMode::Server => None,
            UrlMode::PublicBaseUrl => Some(Ok(self.urls.url(app_id, key))),
            UrlMode::Presigned => Some(self.urls.presigned_url(key).await),
        }
    }
}

/// Opens Apps' storages and keeps them while their spec is unchanged.
pub struct AppStorages {
    /// Filesystem paths in App specs are relative to this folder.
    base_dir: PathBuf,
    /// Credentials of the object stores (from the environment: the Secret the controller mounts,
    /// or the shell of standalone mode).
    credentials: Credentials,
    /// The update server's public base URL (for its own `/files` URLs).
    server_base: String,
    /// App id → the spec it was opened with and the storage.
    opened: Mutex<HashMap<String, (StorageSpec, Arc<AppStorage>)>>,
}

impl std::fmt::Debug for AppStorages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppStorages")
            .field("base_dir", &self.base_dir)
            .field("server_base", &self.server_base)
            .field("opened", &self.lock().len())
            .finish()
    }
}

impl AppStorages {
    /// Storages resolved against `base_dir`, with `credentials`, for a server reached at
    /// `server_base`.
    pub fn new(base_dir: &Path, credentials: Credentials, server_base: &str) -> Self {
        Self {
            base_dir: base_dir.to_owned(),
            credentials,
            server_base: server_base.trim_end_matches('/').to_owned(),
            opened: Mutex::new(HashMap::new()),
        }
    }

    /// The storage of `app`: the one already open when its spec is unchanged, else opened now
    /// (no network I/O; a wrong endpoint or key shows at the first use).
    pub fn of(&self, app: &App) -> Result<Arc<AppStorage>, StorageError> {
        let spec = &app.spec.storage;
        if let Some((opened_with, storage)) = self.lock().get(&app.spec.app_id)
            && opened_with == spec
        {
            return Ok(Arc::clone(storage));
        }
        let opened = storage::open(spec, &self.base_dir, &self.credentials)?;
        let urls = StorageUrls::new(spec, &opened, &self.server_base)?;
        let local_root = spec.filesystem.as_ref().map(|filesystem| {
            let folder = self.base_dir.join(&filesystem.path);
            let prefix = opened.prefix.as_ref();
            if prefix.is_empty() {
                folder
            } else {
                folder.join(prefix)
            }
        });
        let storage = Arc::new(AppStorage {
            opened,
            urls,
            local_root,
        });
        self.lock()
            .insert(app.spec.app_id.clone(), (spec.clone(), Arc::clone(&storage)));
        Ok(storage)
    }

    /// Forgets the storages of Apps no longer served.
    pub fn retain(&self, app_ids: &std::collections::HashSet<&str>) {
        self.lock().retain(|app_id, _| app_ids.contains(app_id.as_str()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (StorageSpec, Arc<AppStorage>)>> {
        self.opened.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::core::fixtures;

    fn storages(base: &Path) -> AppStorages {
        AppStorages::new(base, Credentials::none(), "https://updates.example.com/")
    }

    #[test]
    fn an_unchanged_spec_reuses_the_storage_and_a_changed_one_reopens_it() {
        let base = tempfile::tempdir().expect("a folder");
        let storages = storages(base.path());
        let app = fixtures::app("shop", "com.example.shop", json!({}));
        let first = storages.of(&app).expect("filesystem storage opens");
        assert!(Arc::ptr_eq(&first, &storages.of(&app).expect("again")));
        assert_eq!(first.urls.mode(), UrlMode::Server);

        let mut moved = app.clone();
        moved.spec.storage.prefix = Some("/tenants/shop/".to_owned());
        let second = storages.of(&moved).expect("reopened");
        assert!(!Arc::ptr_eq(&first, &second));
        let root = second.local_root.as_ref().expect("a folder to serve");
        assert!(root.ends_with("tenants/shop"), "{}", root.display());

        storages.retain(&std::collections::HashSet::new());
        assert_eq!(storages.lock().len(), 0, "Apps no longer served are forgotten");
    }

    #[test]
    fn a_storage_that_cannot_be_opened_is_a_clear_error() {
        let base = tempfile::tempdir().expect("a folder");
        let cases = [
            (json!({"forcePathStyle": true}), "forever", "forever"),
            (json!({}), "1h", "forcePathStyle"),
        ];
        for (s3_patch, ttl, expected) in cases {
            let mut s3 = json!({"bucket": "b", "region": "us-east-1", "endpoint": "http://127.0.0.1:9"});
            fixtures::merge(&mut s3, s3_patch);
            let app = fixtures::app(
                "shop",
                "com.example.shop",
                json!({"storage": {"filesystem": null, "s3": s3, "presignedUrlTtl": ttl}}),
            );
            let error = storages(base.path()).of(&app).expect_err("cannot open");
            assert!(error.to_string().contains(expected), "{error}");
        }
    }
}
