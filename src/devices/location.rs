//! Where the device store lives: parsing its URL, the URL handed to sqlx, and keeping
//! passwords out of messages.

use std::path::{Path, PathBuf};

use super::StoreError;

/// The backend and place a store URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Location {
    /// An SQLite database file (created if missing; its folder must exist).
    SqliteFile {
        /// The path as written in the URL.
        path: PathBuf,
    },
    /// A private in-memory SQLite database, gone when the store is dropped.
    SqliteMemory,
    /// A PostgreSQL database; the URL is passed to the driver unchanged.
    Postgres {
        /// The URL as given.
        url: String,
    },
}

impl Location {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:` or `postgres://...`
    /// (`postgresql://` too). Schemes are case-insensitive.
    pub(super) fn parse(url: &str) -> Result<Self, StoreError> {
        let unsupported = |reason: &str| StoreError::UnsupportedUrl {
            url: redact_url(url),
            reason: reason.to_owned(),
        };
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once(':') else {
            return Err(unsupported("it has no scheme"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {
                let rest = rest.strip_prefix("//").unwrap_or(rest);
                if rest == ":memory:" {
                    return Ok(Location::SqliteMemory);
                }
                if rest.contains(['?', '#']) {
                    return Err(unsupported("SQLite URLs take no query parameters"));
                }
                let path = PathBuf::from(rest);
                if rest.is_empty() || path.file_name().is_none() {
                    return Err(unsupported("it names no SQLite file"));
                }
                Ok(Location::SqliteFile { path })
            }
            "postgres" | "postgresql" => {
                if !rest.starts_with("//") {
                    return Err(unsupported("a PostgreSQL URL starts with postgres://"));
                }
                Ok(Location::Postgres { url: url.to_owned() })
            }
            "" => Err(unsupported("it has no scheme")),
            _ => Err(unsupported(&format!("unknown scheme '{scheme}'"))),
        }
    }

    /// Whether this is an SQLite database (a file or in memory).
    pub(super) fn is_sqlite(&self) -> bool {
        !matches!(self, Location::Postgres { .. })
    }

    /// The URL for sqlx's `Any` driver. For a file this checks that its folder exists, and names
    /// the file by its canonical absolute path with `mode=rwc` (create when missing).
    pub(super) fn driver_url(&self) -> Result<String, StoreError> {
        match self {
            Location::SqliteMemory => Ok("sqlite::memory:".to_owned()),
            Location::Postgres { url } => Ok(url.clone()),
            Location::SqliteFile { path } => {
                let absolute = sqlite_file_path(path)?;
                let Some(text) = absolute.to_str() else {
                    return Err(StoreError::UnsupportedUrl {
                        url: path.display().to_string(),
                        reason: "the path is not valid UTF-8".to_owned(),
                    });
                };
                Ok(format!("sqlite://{}?mode=rwc", percent_encode_path(text)))
            }
        }
    }
}

/// The canonical absolute path of an SQLite file: its folder must exist, and the path must not
/// be a folder.
fn sqlite_file_path(path: &Path) -> Result<PathBuf, StoreError> {
    let unsupported = |reason: String| StoreError::UnsupportedUrl {
        url: path.display().to_string(),
        reason,
    };
    let absolute = std::path::absolute(path)
        .map_err(|error| unsupported(format!("cannot make the path absolute: {error}")))?;
    let (Some(folder), Some(file_name)) = (absolute.parent(), absolute.file_name()) else {
        return Err(unsupported("it names no SQLite file".to_owned()));
    };
    if !folder.is_dir() {
        return Err(StoreError::MissingFolder {
            path: path.to_path_buf(),
            folder: folder.to_path_buf(),
        });
    }
    let folder = std::fs::canonicalize(folder)
        .map_err(|error| unsupported(format!("cannot resolve the folder {}: {error}", folder.display())))?;
    let file = folder.join(file_name);
    if file.is_dir() {
        return Err(unsupported(format!(
            "{} is a folder, not a database file",
            file.display()
        )));
    }
    Ok(file)
}

/// Percent-encodes a path for a URL: every byte but unreserved characters and `/`.
fn percent_encode_path(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Decodes `%XX` escapes (invalid escapes are kept as they are).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escape {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// What stands in for a password.
const REDACTED: &str = "****";

/// Whether a query parameter carries a secret (`password=`, `sslpassword=`, ...).
fn is_secret_parameter(key: &str) -> bool {
    key.to_ascii_lowercase().contains("password")
}

/// The byte range of a URL's authority (`user:password@host:port`): after `scheme://` when
/// there is one, else from the start, up to the first `/`, `?` or `#`.
fn authority_range(url: &str) -> (usize, usize) {
    let start = url.find("://").map_or(0, |index| index + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |index| start + index);
    (start, end)
}

/// The URL with the password of its user info and the values of password query parameters
/// replaced by `****`. Works on malformed URLs too (it never fails).
pub(super) fn redact_url(url: &str) -> String {
    let (start, end) = authority_range(url);
    let mut redacted = String::with_capacity(url.len());
    redacted.push_str(&url[..start]);
    let authority = &url[start..end];
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            match user_info.split_once(':') {
                Some((user, _password)) => {
                    redacted.push_str(user);
                    redacted.push(':');
                    redacted.push_str(REDACTED);
                }
                None => redacted.push_str(user_info),
            }
            redacted.push('@');
            redacted.push_str(host);
        }
        None => redacted.push_str(authority),
    }
    let tail = &url[end..];
    let Some(query_start) = tail.find('?') else {
        redacted.push_str(tail);
        return redacted;
    };
    redacted.push_str(&tail[..=query_start]);
    let query_and_fragment = &tail[query_start + 1..];
    let (query, fragment) = match query_and_fragment.find('#') {
        Some(index) => query_and_fragment.split_at(index),
        None => (query_and_fragment, ""),
    };
    let parameters: Vec<String> = query
        .split('&')
        .map(|parameter| match parameter.split_once('=') {
            Some((key, _value)) if is_secret_parameter(&percent_decode(key)) => {
                format!("{key}={REDACTED}")
            }
            _ => parameter.to_owned(),
        })
        .collect();
    redacted.push_str(&parameters.join("&"));
    redacted.push_str(fragment);
    redacted
}

/// The secrets of a URL (its password, percent-encoded as written and decoded), to scrub them
/// from messages that might repeat them.
#[derive(Debug, Clone, Default)]
pub(super) struct UrlSecrets {
    secrets: Vec<String>,
}

impl UrlSecrets {
    /// Secrets shorter than this are not scrubbed: replacing every `a` of a message would make
    /// it unreadable, and drivers do not repeat passwords anyway (this is defence in depth).
    const MIN_SCRUBBED_LEN: usize = 4;

    /// The secrets of `url`.
    pub(super) fn of(url: &str) -> Self {
        let mut raw = Vec::new();
        let (start, end) = authority_range(url);
        if let Some((user_info, _host)) = url[start..end].rsplit_once('@')
            && let Some((_user, password)) = user_info.split_once(':')
        {
            raw.push(password.to_owned());
        }
        if let Some((_, query)) = url[end..].split_once('?') {
            let query = query.split('#').next().unwrap_or_default();
            for parameter in query.split('&') {
                if let Some((key, value)) = parameter.split_once('=')
                    && is_secret_parameter(&percent_decode(key))
                {
                    raw.push(value.to_owned());
                }
            }
        }
        let mut secrets = Vec::new();
        for secret in raw {
            let decoded = percent_decode(&secret);
            secrets.push(secret);
            secrets.push(decoded);
        }
        secrets.retain(|secret| secret.len() >= Self::MIN_SCRUBBED_LEN);
        // Longest first, so a secret that contains another is scrubbed whole.
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets.dedup();
        UrlSecrets { secrets }
    }

    /// `text` with every secret replaced by `****`.
    pub(super) fn scrub(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |text, secret| {
            text.replace(secret.as_str(), REDACTED)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_locations() {
        assert_eq!(
            Location::parse("sqlite::memory:").ok(),
            Some(Location::SqliteMemory)
        );
        assert_eq!(
            Location::parse("sqlite://:memory:").ok(),
            Some(Location::SqliteMemory)
        );
        assert_eq!(
            Location::parse("sqlite:///var/lib/ota/devices.db").ok(),
            Some(Location::SqliteFile {
                path: "/var/lib/ota/devices.db".into()
            })
        );
        assert_eq!(
            Location::parse("SQLite:devices.db").ok(),
            Some(Location::SqliteFile {
                path: "devices.db".into()
            })
        );
        assert!(matches!(
            Location::parse("postgresql://u:p@db:5432/ota"),
            Ok(Location::Postgres { .. })
        ));
        for bad in [
            "mysql://root:pw@db/ota",
            "devices.db",
            "sqlite://",
            "sqlite:///",
            "sqlite://a.db?mode=ro",
            "",
        ] {
            assert!(
                matches!(Location::parse(bad), Err(StoreError::UnsupportedUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://ota:s3cr%40t@db:5432/ota?sslmode=require"),
            "postgres://ota:****@db:5432/ota?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://ota@db/ota?password=hunter2&sslpassword=x#f"),
            "postgres://ota@db/ota?password=****&sslpassword=****#f"
        );
        assert_eq!(redact_url("user:secret@host/db"), "user:****@host/db");
        assert_eq!(
            redact_url("sqlite:///data/devices.db"),
            "sqlite:///data/devices.db"
        );
        assert_eq!(redact_url("postgres://db/ota"), "postgres://db/ota");
    }

    #[test]
    fn secrets_are_scrubbed_encoded_and_decoded() {
        let secrets = UrlSecrets::of("postgres://ota:s3cr%40t@db/ota?password=hunter22");
        assert_eq!(
            secrets.scrub("bad s3cr%40t, s3cr@t, hunter22, fine"),
            "bad ****, ****, ****, fine"
        );
        assert_eq!(UrlSecrets::of("postgres://ota:ab@db/x").scrub("ab cab"), "ab cab");
    }

    #[test]
    fn paths_are_percent_encoded() {
        assert_eq!(percent_encode_path("/a b/c?d#e%f.db"), "/a%20b/c%3Fd%23e%25f.db");
        assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
    }
}
