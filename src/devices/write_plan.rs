//! The write planner: a batch of writes sorted and merged into the few statements that apply it.

use std::{cmp::Ordering, collections::BTreeMap};

use super::{DeviceSeen, OutcomeReport, Write};

/// A batch sorted for writing: device rows, then failed marks, then counters (summed), each in
/// key order. The sort is stable, so writes of one key keep their order.
pub(super) struct WritePlan<'a> {
    pub(super) device_steps: Vec<DeviceStep<'a>>,
    pub(super) failed_marks: Vec<&'a Write>,
    /// (app, version, device) → the outcomes of the batch merged as the upsert would merge them.
    pub(super) outcomes: BTreeMap<(&'a str, &'a str, &'a str), MergedOutcome<'a>>,
    pub(super) counts: BTreeMap<(&'a str, &'a str, &'a str, i64), i64>,
}

/// A device's outcomes with one version within a batch, merged: failed if any failed, the
/// latest time, and the channel of the latest report (of the last among equally late ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MergedOutcome<'a> {
    pub(super) channel: &'a str,
    pub(super) failed: bool,
    pub(super) at_ms: i64,
}

impl<'a> MergedOutcome<'a> {
    fn of(report: &'a OutcomeReport) -> Self {
        MergedOutcome {
            channel: &report.channel,
            failed: report.failed,
            at_ms: report.at_ms,
        }
    }

    fn then(self, later: &'a OutcomeReport) -> Self {
        let latest = later.at_ms >= self.at_ms;
        MergedOutcome {
            channel: if latest { &later.channel } else { self.channel },
            failed: self.failed || later.failed,
            at_ms: self.at_ms.max(later.at_ms),
        }
    }
}

/// One step of writing device rows, in key order.
pub(super) enum DeviceStep<'a> {
    /// Sightings of distinct devices, one per device, written by multi-row upserts.
    Sightings(Vec<Sighting<'a>>),
    /// Any other device write (a current bundle, an override), written on its own.
    Single(&'a Write),
}

/// The sightings of one device in a batch, merged into the one the database would keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sighting<'a> {
    /// The latest sighting (the last of equal ones).
    pub(super) seen: &'a DeviceSeen,
    /// Its custom id, or the last one an earlier sighting of the batch reported.
    pub(super) custom_id: Option<&'a str>,
    /// Its default channel, or the last one an earlier sighting of the batch reported.
    pub(super) default_channel: Option<&'a str>,
    /// Whether any sighting of the batch may create the device's row.
    pub(super) creates_row: bool,
}

impl<'a> Sighting<'a> {
    fn of(seen: &'a DeviceSeen) -> Self {
        Sighting {
            seen,
            custom_id: seen.custom_id.as_deref(),
            default_channel: seen.default_channel.as_deref(),
            creates_row: seen.creates_row,
        }
    }

    /// The effect of `later` applied after `self`, as the upsert would have it: an older sighting
    /// changes nothing; a newer one (or an equally old one) replaces the reported columns and
    /// keeps the earlier custom id and default channel where it reports none.
    fn then(self, later: &'a DeviceSeen) -> Self {
        let creates_row = self.creates_row || later.creates_row;
        if later.seen_at_ms < self.seen.seen_at_ms {
            return Sighting { creates_row, ..self };
        }
        Sighting {
            seen: later,
            custom_id: later.custom_id.as_deref().or(self.custom_id),
            default_channel: later.default_channel.as_deref().or(self.default_channel),
            creates_row,
        }
    }
}

impl<'a> WritePlan<'a> {
    pub(super) fn of(batch: &'a [Write]) -> Self {
        let mut device_writes = Vec::new();
        let mut plan = WritePlan {
            device_steps: Vec::new(),
            failed_marks: Vec::new(),
            outcomes: BTreeMap::new(),
            counts: BTreeMap::new(),
        };
        for write in batch {
            match write {
                Write::Count {
                    app_id,
                    version,
                    action,
                    day,
                    n,
                } => {
                    let total = plan.counts.entry((app_id, version, action, *day)).or_insert(0);
                    *total = total.saturating_add(*n);
                }
                Write::FailedMark { .. } => plan.failed_marks.push(write),
                Write::Outcome(report) => {
                    let key = (
                        report.app_id.as_str(),
                        report.version.as_str(),
                        report.device_id.as_str(),
                    );
                    plan.outcomes
                        .entry(key)
                        .and_modify(|merged| *merged = merged.then(report))
                        .or_insert_with(|| MergedOutcome::of(report));
                }
                Write::SeenDevice(_)
                | Write::CurrentBundle { .. }
                | Write::SetChannelOverride { .. }
                | Write::ClearChannelOverride { .. } => device_writes.push(write),
            }
        }
        plan.counts.retain(|_, n| *n != 0);
        device_writes.sort_by(|a, b| compare_keys(a, b));
        plan.failed_marks.sort_by(|a, b| compare_keys(a, b));
        plan.device_steps = device_steps(&device_writes);
        plan
    }
}

/// Groups the sorted device writes into steps that keep key order: each device's sightings merge
/// into one, and runs of merged sightings become one step. A device's other writes follow its
/// sighting; they touch other columns, so the order between the two kinds does not matter, while
/// writes of one kind keep their order.
pub(super) fn device_steps<'a>(sorted: &[&'a Write]) -> Vec<DeviceStep<'a>> {
    let mut steps = Vec::new();
    let mut sightings: Vec<Sighting<'a>> = Vec::new();
    for group in sorted.chunk_by(|a, b| row_key(a) == row_key(b)) {
        let merged = group
            .iter()
            .filter_map(|write| match write {
                Write::SeenDevice(seen) => Some(seen),
                _ => None,
            })
            .fold(None, |merged: Option<Sighting<'a>>, seen| {
                Some(merged.map_or_else(|| Sighting::of(seen), |merged| merged.then(seen)))
            });
        sightings.extend(merged);
        let mut others = group
            .iter()
            .filter(|write| !matches!(write, Write::SeenDevice(_)))
            .peekable();
        if others.peek().is_some() {
            if !sightings.is_empty() {
                steps.push(DeviceStep::Sightings(std::mem::take(&mut sightings)));
            }
            steps.extend(others.map(|write| DeviceStep::Single(write)));
        }
    }
    if !sightings.is_empty() {
        steps.push(DeviceStep::Sightings(sightings));
    }
    steps
}

/// Rows per multi-row upsert, largest first: a batch is cut into the fewest statements of these
/// few shapes, so each connection prepares at most four of them (14 parameters a row keeps the
/// largest under both SQLite's and PostgreSQL's parameter limits).
pub(super) const SIGHTING_CHUNK_ROWS: [usize; 4] = [256, 32, 4, 1];

/// Cuts sightings into chunks of the sizes of [`SIGHTING_CHUNK_ROWS`], in order; each chunk
/// comes with the index of its size.
pub(super) fn sighting_chunks<'s, 'a>(sightings: &'s [Sighting<'a>]) -> Vec<(usize, &'s [Sighting<'a>])> {
    row_chunks(sightings)
}

/// Cuts rows into chunks of the sizes of [`SIGHTING_CHUNK_ROWS`] (also used for outcomes), in
/// order; each chunk comes with the index of its size.
pub(super) fn row_chunks<T>(mut rows: &[T]) -> Vec<(usize, &[T])> {
    let mut chunks = Vec::new();
    for (shape, size) in SIGHTING_CHUNK_ROWS.into_iter().enumerate() {
        while rows.len() >= size {
            let (chunk, rest) = rows.split_at(size);
            chunks.push((shape, chunk));
            rows = rest;
        }
    }
    chunks
}

/// The row a device write or failed mark touches: (app, device, version).
pub(super) fn row_key(write: &Write) -> (&str, &str, &str) {
    match write {
        Write::SeenDevice(seen) => (&seen.app_id, &seen.device_id, ""),
        Write::CurrentBundle {
            app_id, device_id, ..
        }
        | Write::SetChannelOverride {
            app_id, device_id, ..
        }
        | Write::ClearChannelOverride { app_id, device_id } => (app_id, device_id, ""),
        Write::FailedMark {
            app_id,
            device_id,
            version,
            ..
        } => (app_id, device_id, version),
        Write::Count {
            app_id,
            version,
            action,
            ..
        } => (app_id, version, action),
        Write::Outcome(report) => (&report.app_id, &report.device_id, &report.version),
    }
}

pub(super) fn compare_keys(a: &Write, b: &Write) -> Ordering {
    row_key(a).cmp(&row_key(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{device_store::Backend, dialect::seen_devices_sql};

    fn count(version: &str, action: &str, day: i64, n: i64) -> Write {
        Write::Count {
            app_id: "app".into(),
            version: version.into(),
            action: action.into(),
            day,
            n,
        }
    }

    fn override_of(device: &str, channel: Option<&str>) -> Write {
        match channel {
            Some(channel) => Write::SetChannelOverride {
                app_id: "app".into(),
                device_id: device.into(),
                channel: channel.into(),
            },
            None => Write::ClearChannelOverride {
                app_id: "app".into(),
                device_id: device.into(),
            },
        }
    }

    fn seen(device: &str, at_ms: i64, custom_id: Option<&str>, channel: Option<&str>) -> Write {
        Write::SeenDevice(DeviceSeen {
            app_id: "app".into(),
            device_id: device.into(),
            platform: "ios".into(),
            plugin_version: "8.0.0".into(),
            native_version: "1.0.0".into(),
            version_name: format!("at-{at_ms}"),
            custom_id: custom_id.map(str::to_owned),
            default_channel: channel.map(str::to_owned),
            is_prod: true,
            is_emulator: false,
            seen_at_ms: at_ms,
            creates_row: true,
        })
    }

    /// The steps of a plan as (kind, device, detail) triples, to compare whole plans at once.
    fn steps(plan: &WritePlan<'_>) -> Vec<String> {
        plan.device_steps
            .iter()
            .map(|step| match step {
                DeviceStep::Sightings(sightings) => {
                    let rows: Vec<String> = sightings
                        .iter()
                        .map(|s| {
                            format!(
                                "{}@{}/{:?}/{:?}",
                                s.seen.device_id, s.seen.seen_at_ms, s.custom_id, s.default_channel
                            )
                        })
                        .collect();
                    format!("sightings [{}]", rows.join(", "))
                }
                DeviceStep::Single(write) => format!("single {write:?}"),
            })
            .collect()
    }

    #[test]
    fn a_plan_sums_counters_and_keeps_the_order_of_each_device() {
        let batch = vec![
            count("1.0.0", "set", 10, 1),
            override_of("d2", Some("beta")),
            override_of("d1", Some("beta")),
            count("1.0.0", "set", 10, 2),
            override_of("d2", None),
            count("1.0.0", "get", 10, 1),
            count("1.0.0", "get", 10, -1),
            override_of("d1", Some("alpha")),
        ];
        let plan = WritePlan::of(&batch);
        assert_eq!(plan.counts.len(), 1);
        assert_eq!(plan.counts.get(&("app", "1.0.0", "set", 10)), Some(&3));
        let expected: Vec<String> = [&batch[2], &batch[7], &batch[1], &batch[4]]
            .iter()
            .map(|write| format!("single {write:?}"))
            .collect();
        assert_eq!(
            steps(&plan),
            expected,
            "sorted by device, in order within a device"
        );
    }

    #[test]
    fn sightings_of_one_device_merge_as_the_upsert_would_apply_them() {
        let batch = vec![
            seen("d1", 5, Some("first"), Some("beta")),
            seen("d1", 7, None, None),
            // Older than the one before: changes nothing.
            seen("d1", 6, Some("stale"), Some("stale")),
            // As old as the latest: the later one wins.
            seen("d1", 7, None, Some("prod")),
            seen("d0", 1, None, None),
        ];
        let plan = WritePlan::of(&batch);
        assert_eq!(
            steps(&plan),
            vec![r#"sightings [d0@1/None/None, d1@7/Some("first")/Some("prod")]"#]
        );
        let Write::SeenDevice(last) = &batch[3] else {
            unreachable!()
        };
        let DeviceStep::Sightings(sightings) = &plan.device_steps[0] else {
            panic!("one step of sightings")
        };
        assert!(
            std::ptr::eq(sightings[1].seen, last),
            "the latest sighting's columns are kept"
        );
    }

    #[test]
    fn other_device_writes_cut_the_sightings_in_key_order() {
        let batch = vec![
            seen("d3", 1, None, None),
            override_of("d2", Some("beta")),
            seen("d1", 1, None, None),
            seen("d2", 1, None, None),
        ];
        let plan = WritePlan::of(&batch);
        assert_eq!(
            steps(&plan),
            vec![
                "sightings [d1@1/None/None, d2@1/None/None]".to_owned(),
                format!("single {:?}", batch[1]),
                "sightings [d3@1/None/None]".to_owned(),
            ]
        );
    }

    #[test]
    fn sightings_are_cut_into_few_statement_shapes() {
        let batch: Vec<Write> = (0..300)
            .map(|i| seen(&format!("d{i:03}"), 1, None, None))
            .collect();
        let plan = WritePlan::of(&batch);
        let DeviceStep::Sightings(sightings) = &plan.device_steps[0] else {
            panic!("one step of sightings")
        };
        let shapes: Vec<(usize, usize)> = sighting_chunks(sightings)
            .iter()
            .map(|(shape, chunk)| (*shape, chunk.len()))
            .collect();
        // 300 = 256 + 32 + 3 × 4.
        assert_eq!(shapes, vec![(0, 256), (1, 32), (2, 4), (2, 4), (2, 4)]);
        assert!(sighting_chunks(&[]).is_empty());
        let sql = seen_devices_sql(Backend::Postgres, 2);
        assert_eq!(sql.matches("), (").count(), 3, "four rows of values");
        assert!(sql.contains("$56)") && !sql.contains("$57"), "{sql}");
        let sql = seen_devices_sql(Backend::Sqlite, 2);
        assert_eq!(sql.matches('?').count(), 56, "{sql}");
        assert!(!sql.contains('$'), "{sql}");
    }
}
