//! A Channel's history: the Bundles it has served as its stable bundle, ordered by semver. It is
//! the path of `updatePath: stepwise` ([`crate::core::update`]): a device is offered the lowest
//! release above its version, so it walks through each one.
//!
//! The controller keeps it in the Channel's status ([`crate::core::channel_status`]); standalone
//! mode keeps it in its device store. Both record with [`record`]: the stable bundle changed
//! (git moved `spec.bundleRef`, or a completed Rollout's candidate became the stable bundle).

use semver::Version;

use crate::api::channel::{HistoryEntry, ServedBundle};

/// The most releases a history keeps (the highest by semver; the CRD's `maxItems`). A device
/// more than this many releases behind starts its walk at the lowest one kept.
pub const HISTORY_LIMIT: usize = 100;

/// `history` with `stable` in it: unchanged when it is there already (or when the channel serves
/// the builtin assets, or a version that is not semver, which no walk can order). A Bundle of
/// the same name or the same version replaces the entry it meets (a Bundle recreated under the
/// same name, or a version rebuilt under a new name). Entries are kept sorted by semver, lowest
/// first, and only the [`HISTORY_LIMIT`] highest are kept.
pub fn record(history: &[HistoryEntry], stable: &ServedBundle) -> Vec<HistoryEntry> {
    let Some(bundle) = stable.bundle.as_deref() else {
        return history.to_vec();
    };
    let Ok(version) = Version::parse(&stable.version) else {
        return history.to_vec();
    };
    if history
        .iter()
        .any(|entry| entry.bundle == bundle && entry.version == stable.version)
    {
        return history.to_vec();
    }
    let mut entries: Vec<(Version, HistoryEntry)> = history
        .iter()
        .filter(|entry| entry.bundle != bundle && entry.version != stable.version)
        .filter_map(|entry| Some((Version::parse(&entry.version).ok()?, entry.clone())))
        .collect();
    entries.push((
        version,
        HistoryEntry {
            bundle: bundle.to_owned(),
            version: stable.version.clone(),
        },
    ));
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let excess = entries.len().saturating_sub(HISTORY_LIMIT);
    entries.into_iter().skip(excess).map(|(_, entry)| entry).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bundle: &str, version: &str) -> HistoryEntry {
        HistoryEntry {
            bundle: bundle.into(),
            version: version.into(),
        }
    }

    fn served(bundle: Option<&str>, version: &str) -> ServedBundle {
        ServedBundle {
            bundle: bundle.map(str::to_owned),
            version: version.into(),
        }
    }

    fn versions(history: &[HistoryEntry]) -> Vec<&str> {
        history.iter().map(|e| e.version.as_str()).collect()
    }

    #[test]
    fn recording_keeps_the_history_sorted_by_semver_without_duplicates() {
        /// The history before (bundle, version), the stable bundle served, the versions after.
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            (Option<&'a str>, &'a str),
            &'a [&'a str],
            &'a str,
        );
        let cases: &[Case<'_>] = &[
            (&[], (Some("a-1.0.0"), "1.0.0"), &["1.0.0"], "the first release"),
            (
                &[("a-1.0.0", "1.0.0")],
                (Some("a-1.1.0"), "1.1.0"),
                &["1.0.0", "1.1.0"],
                "a newer release is appended",
            ),
            (
                &[("a-1.0.0", "1.0.0"), ("a-1.2.0", "1.2.0")],
                (Some("a-1.1.0"), "1.1.0"),
                &["1.0.0", "1.1.0", "1.2.0"],
                "an older release (git moved back then forward) takes its semver place",
            ),
            (
                &[("a-1.0.0", "1.0.0"), ("a-1.1.0", "1.1.0")],
                (Some("a-1.0.0"), "1.0.0"),
                &["1.0.0", "1.1.0"],
                "a release served again is not repeated",
            ),
            (
                &[("a-1.0.0", "1.0.0")],
                (None, "builtin"),
                &["1.0.0"],
                "the builtin assets are no release",
            ),
            (
                &[("a-1.0.0", "1.0.0")],
                (Some("odd"), "not-semver"),
                &["1.0.0"],
                "a version no walk can order is not recorded",
            ),
            (
                &[("a-1.9.0", "1.9.0"), ("a-1.10.0", "1.10.0")],
                (Some("a-1.10.0-rc.1"), "1.10.0-rc.1"),
                &["1.9.0", "1.10.0-rc.1", "1.10.0"],
                "semver order, not text order, pre-releases below their release",
            ),
        ];
        for (history, (bundle, version), expected, why) in cases {
            let history: Vec<HistoryEntry> = history.iter().map(|(b, v)| entry(b, v)).collect();
            let recorded = record(&history, &served(*bundle, version));
            assert_eq!(versions(&recorded), *expected, "{why}");
        }
    }

    #[test]
    fn a_bundle_of_the_same_name_or_version_replaces_its_entry() {
        let history = vec![entry("a-1.0.0", "1.0.0"), entry("a-1.1.0", "1.1.0")];
        let rebuilt = record(&history, &served(Some("a-1.1.0-rebuilt"), "1.1.0"));
        assert_eq!(
            rebuilt,
            vec![entry("a-1.0.0", "1.0.0"), entry("a-1.1.0-rebuilt", "1.1.0")]
        );
        let recreated = record(&history, &served(Some("a-1.1.0"), "1.1.1"));
        assert_eq!(
            recreated,
            vec![entry("a-1.0.0", "1.0.0"), entry("a-1.1.0", "1.1.1")]
        );
    }

    #[test]
    fn the_history_keeps_the_highest_releases_up_to_its_limit() {
        let history: Vec<HistoryEntry> = (0..HISTORY_LIMIT)
            .map(|minor| entry(&format!("a-1.{minor}.0"), &format!("1.{minor}.0")))
            .collect();
        let recorded = record(&history, &served(Some("a-2.0.0"), "2.0.0"));
        assert_eq!(recorded.len(), HISTORY_LIMIT);
        assert_eq!(recorded[0].version, "1.1.0", "the lowest release was dropped");
        assert_eq!(recorded[HISTORY_LIMIT - 1].version, "2.0.0");
        // A release below every kept one would be dropped at once: the history is unchanged.
        assert_eq!(record(&recorded, &served(Some("a-0.1.0"), "0.1.0")), recorded);
    }

    #[test]
    fn the_crd_bounds_the_history_at_the_same_limit() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(crate::api::Channel::crd()).expect("the CRD as JSON");
        let max_items = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
            ["history"]["maxItems"];
        assert_eq!(max_items.as_u64(), u64::try_from(HISTORY_LIMIT).ok());
    }
}
