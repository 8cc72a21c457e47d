//! The rollout drive, written once for both shells: read the failure figures the decision needs,
//! decide with the pure core ([`crate::core::rollout::decide`]), record a completing
//! candidate as its Channel's stable bundle, write the status, publish the events, and say when
//! to look again.
//!
//! The shells plug in three ports: a [`FiguresSource`] (the App's update server in a cluster, the
//! device store in standalone mode), a [`MetricSource`] (the Prometheus and web providers of the
//! analysis metrics; the shells are given theirs, as a [`SharedMetricSource`]) and a
//! [`StatusSink`] (the status subresource, the Channel's `status.promoted` and Kubernetes Events
//! in a cluster; rows of the device store and logs in standalone mode). The time is given by the
//! caller, read from its injected [`crate::clock::Clock`].

use std::{future::Future, pin::Pin, sync::Arc};

use k8s_openapi::jiff::Timestamp;

use crate::{
    api::{App, Bundle, Channel, Rollout, RolloutStatus, channel::PromotedBundle},
    core::rollout::{
        FailureCounts, FiguresQuery, RolloutEvent, decide, figures_query,
        measurement::{Measured, MeasurementRequest, MetricValue},
        measurements_due, promotion_of,
    },
};

/// Where the failure figures of a rollout's candidate come from.
pub trait FiguresSource {
    /// The figures `query` asks for `rollout` on `channel`; `None` when they cannot be read (the
    /// source says why in its logs; the analysis waits and says so in status).
    fn figures(
        &mut self,
        rollout: &Rollout,
        channel: &Channel,
        query: &FiguresQuery,
    ) -> impl Future<Output = Option<FailureCounts>> + Send;
}

/// Where the measurements of a rollout's analysis metrics come from (Prometheus and web
/// providers, reached over HTTP by the shell; header values read from Secrets).
pub trait MetricSource {
    /// Takes each measurement `requests` asks for `rollout`, in any order; one [`Measured`] per
    /// request, a provider's failure as its error (never dropped: the core counts errors).
    fn measure(
        &mut self,
        rollout: &Rollout,
        requests: &[MeasurementRequest],
    ) -> impl Future<Output = Vec<Measured>> + Send;
}

/// A [`MetricSource`] that can be shared by concurrent decisions (the controller reconciles
/// several Rollouts at once), so the shells can hold one behind an [`Arc`] given to them when
/// they are built, as they hold their clock.
pub trait SharedMetricSource: Send + Sync + std::fmt::Debug {
    /// As [`MetricSource::measure`].
    fn measure<'a>(
        &'a self,
        rollout: &'a Rollout,
        requests: &'a [MeasurementRequest],
    ) -> Pin<Box<dyn Future<Output = Vec<Measured>> + Send + 'a>>;
}

impl<T: SharedMetricSource + ?Sized> MetricSource for Arc<T> {
    async fn measure(&mut self, rollout: &Rollout, requests: &[MeasurementRequest]) -> Vec<Measured> {
        SharedMetricSource::measure(&**self, rollout, requests).await
    }
}

/// Where a decision's results go.
pub trait StatusSink {
    /// Why a write failed.
    type Error;

    /// Records `promoted` (the completing rollout's candidate) as `channel`'s stable bundle. It
    /// is recorded before the Completed status, so a crash between the two loses nothing.
    fn record_promotion(
        &mut self,
        rollout: &Rollout,
        channel: &Channel,
        promoted: PromotedBundle,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Writes `status`, which differs from `rollout`'s; whether it was written (a sink may
    /// decline, e.g. a replica that is no longer the leader), so the events are published only
    /// with their status.
    fn write_status(
        &mut self,
        rollout: &Rollout,
        status: &RolloutStatus,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Publishes the `sequence`th event of a written decision; `rollout` carries the new status.
    fn publish(
        &mut self,
        rollout: &Rollout,
        event: &RolloutEvent,
        sequence: usize,
        now: Timestamp,
    ) -> impl Future<Output = ()> + Send;
}

/// The objects of a Rollout's namespace that its decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Objects<'a> {
    /// Apps.
    pub apps: &'a [App],
    /// Channels, with their recorded promotions in `status.promoted`.
    pub channels: &'a [Channel],
    /// Bundles, with the status their sync gave them.
    pub bundles: &'a [Bundle],
}

impl Objects<'_> {
    /// The Channel `rollout` names, in its namespace.
    pub fn channel_of(&self, rollout: &Rollout) -> Option<&Channel> {
        let namespace = rollout.metadata.namespace.as_deref();
        self.channels.iter().find(|c| {
            c.metadata.namespace.as_deref() == namespace
                && c.metadata.name.as_deref() == Some(&rollout.spec.channel_ref)
        })
    }
}

/// Which write of a drive failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Recording the completing candidate as the channel's stable bundle (the status was not
    /// written either).
    Promotion,
    /// The status.
    Status,
}

impl Write {
    /// What was written, for messages.
    pub fn what(self) -> &'static str {
        match self {
            Write::Promotion => "the channel's stable bundle",
            Write::Status => "the rollout's status",
        }
    }
}

/// A write of a drive failed.
#[derive(Debug, thiserror::Error)]
#[error("writing {}: {source}", .write.what())]
pub struct DriveError<E> {
    /// Which write.
    pub write: Write,
    /// The sink's error.
    #[source]
    pub source: E,
    /// When the decision asked to look again (the caller retries no later than that).
    pub requeue_at: Option<Timestamp>,
}

impl<E> DriveError<E> {
    /// The sink's error.
    pub fn into_inner(self) -> E {
        self.source
    }
}

/// What a drive did.
#[derive(Debug, Clone, PartialEq)]
pub struct Driven {
    /// The status the decision gave (written unless it was the rollout's already).
    pub status: RolloutStatus,
    /// When to decide again although nothing changed (`None`: only a change matters).
    pub requeue_at: Option<Timestamp>,
}

/// Drives `rollout` (with its last status) one decision on at `now`: the figures and the
/// measurements due ([`measurements_due`]) are read first, then decided on.
pub async fn drive<F, M, S>(
    rollout: &Rollout,
    objects: Objects<'_>,
    figures: &mut F,
    metrics: &mut M,
    sink: &mut S,
    now: Timestamp,
) -> Result<Driven, DriveError<S::Error>>
where
    F: FiguresSource,
    M: MetricSource,
    S: StatusSink,
{
    let channel = objects.channel_of(rollout);
    // No query: the decision reads no figures.
    let counts = match (
        figures_query(rollout, objects.apps, objects.channels, objects.bundles, now),
        channel,
    ) {
        (Some(query), Some(channel)) => figures.figures(rollout, channel, &query).await,
        _ => None,
    };
    let requests = measurements_due(rollout, objects.channels, objects.bundles, now);
    let measured = match requests.is_empty() {
        true => Vec::new(),
        false => metrics.measure(rollout, &requests).await,
    };
    let plan = decide(rollout, objects.channels, objects.bundles, counts, &measured, now);
    let driven = Driven {
        status: plan.status.clone(),
        requeue_at: plan.requeue_at,
    };
    let failed = |write| {
        move |source| DriveError {
            write,
            source,
            requeue_at: plan.requeue_at,
        }
    };
    // An unchanged status completes nothing ([`promotion_of`]) and has no events.
    if rollout.status.as_ref() == Some(&plan.status) {
        return Ok(driven);
    }
    if let Some(channel) = channel
        && let Some(promoted) = promotion_of(rollout, &plan, channel)
    {
        sink.record_promotion(rollout, channel, promoted)
            .await
            .map_err(failed(Write::Promotion))?;
    }
    let written = sink
        .write_status(rollout, &plan.status)
        .await
        .map_err(failed(Write::Status))?;
    if written && !plan.events.is_empty() {
        let after = Rollout {
            status: Some(plan.status),
            ..rollout.clone()
        };
        for (sequence, event) in plan.events.iter().enumerate() {
            sink.publish(&after, event, sequence, now).await;
        }
    }
    Ok(driven)
}

/// A [`SharedMetricSource`] whose answers a test sets by hand ([`ScriptedMetrics::answer`]), as
/// [`crate::clock::TestClock`] is a clock a test moves: each request is answered with its
/// metric's current answer, measured at the clock's time; a metric given no answer is a
/// provider error. Clones share the answers and the record of requests.
#[derive(Clone, Debug)]
pub struct ScriptedMetrics {
    clock: Arc<dyn crate::clock::Clock>,
    script: Arc<std::sync::Mutex<Script>>,
}

#[derive(Debug, Default)]
struct Script {
    answers: std::collections::BTreeMap<String, Result<MetricValue, String>>,
    asked: Vec<MeasurementRequest>,
}

impl ScriptedMetrics {
    /// A source with no answers, measuring at `clock`'s time.
    pub fn new(clock: Arc<dyn crate::clock::Clock>) -> ScriptedMetrics {
        ScriptedMetrics {
            clock,
            script: Arc::default(),
        }
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        // A test that panicked while holding the lock left plain data: keep using it.
        self.script
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// From now on, measurements of `metric` give `answer`.
    pub fn answer(&self, metric: &str, answer: Result<MetricValue, String>) {
        self.script().answers.insert(metric.to_owned(), answer);
    }

    /// Every request asked so far, oldest first.
    pub fn asked(&self) -> Vec<MeasurementRequest> {
        self.script().asked.clone()
    }
}

impl SharedMetricSource for ScriptedMetrics {
    fn measure<'a>(
        &'a self,
        _rollout: &'a Rollout,
        requests: &'a [MeasurementRequest],
    ) -> Pin<Box<dyn Future<Output = Vec<Measured>> + Send + 'a>> {
        let at = self.clock.now();
        let mut script = self.script();
        script.asked.extend_from_slice(requests);
        let measured = requests
            .iter()
            .map(|request| Measured {
                metric: request.metric.clone(),
                at,
                value: script
                    .answers
                    .get(&request.metric)
                    .cloned()
                    .unwrap_or_else(|| Err(format!("no answer scripted for metric {}", request.metric))),
            })
            .collect();
        Box::pin(std::future::ready(measured))
    }
}
