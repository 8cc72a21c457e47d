//! A Bundle's lifecycle as pure decisions: whether to sync it now, what its status says after a
//! sync, and what deleting it may remove from storage.
//!
//! No I/O and no clock: the caller passes `now` (milliseconds since the Unix epoch), the objects
//! it observed and what it read from storage, and gets data back. Conditions are returned as
//! [`DesiredCondition`]s, merged into the stored ones by [`crate::core::conditions`].
//!
//! Retries of transient failures follow an exponential backoff ([`RETRY_BASE_MS`] doubling up to
//! [`RETRY_CAP_MS`]) with a jitter of ±[`RETRY_JITTER_PERCENT`]% drawn from the Bundle's uid and
//! the attempt number, so the same bundle always gets the same schedule (and tests can check it)
//! while many bundles failing together spread their retries.

mod deletion;
mod status;
mod sync_decision;

pub use self::{deletion::*, status::*, sync_decision::*};

#[cfg(test)]
mod tests;
