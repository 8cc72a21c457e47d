//! A zip written to a local file, hashed on the way: what fetching a source and rebuilding a
//! pushed bundle both produce (its own module, so neither of the two depends on the other's
//! types).

/// A zip fetched (or rebuilt) into a temporary file.
#[derive(Debug)]
pub(super) struct Fetched {
    /// Bytes written.
    pub size: u64,
    /// Lower-case hex SHA-256 of those bytes.
    pub sha256: String,
}
