//! Each `consume` stage tells the console who it is and how it is doing: this process's instance
//! (a stable id, host, pid, start time), the partitions the stage owns now, its breaker, when it
//! last committed and how many records it processed. A background task writes it every
//! `consumer.instance_report_interval_secs` into the group's Redis hash (one field per instance,
//! see `RedisKeys::consumer_instances`) and removes the field on a clean shutdown.
//!
//! The hot path only touches atomics (`StageStatus::processed`); the partitions change in the
//! rebalance callbacks and the breaker on its transitions. The reporter reads them on its own
//! timer, so a slow or absent Redis never holds up a batch.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::ConsumerMetrics;
use crate::kafka::ConsumerObserver;
use crate::store::RedisStore;

/// Reports older than this are removed by the next instance of the group that reports: the
/// instance crashed long ago; until then the console shows it as stale.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// What one instance's stage writes into its group's hash, and what the console reads back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    /// `<host>:<pid>:<random>`: stable for the life of the process, new for the next one.
    pub instance: String,
    pub host: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    /// When this report was written: the console calls the instance stale when it gets old.
    pub updated_at: DateTime<Utc>,
    /// `main` or `retry.<n>`.
    pub stage: String,
    /// The partitions of the stage's own topic it owns now, ascending.
    pub partitions: Vec<i32>,
    /// The partitions of mirrored topics it owns now (the main stage of a datacenter that reads
    /// other datacenters' topics, `kafka.mirrored_topics`), as `<topic>:<partition>`, ascending.
    #[serde(default)]
    pub mirrored_partitions: Vec<String>,
    pub breaker_open: bool,
    /// When the breaker last opened or closed; null if it never opened.
    pub breaker_since: Option<DateTime<Utc>>,
    /// The dependency of the last outage (`mongodb`, `redis`, `kafka`); null if none yet.
    pub last_error_class: Option<String>,
    /// The last offset commit the broker confirmed; null before the first.
    pub last_commit_at: Option<DateTime<Utc>>,
    /// Records whose offsets the stage stored since it started.
    pub records_processed: u64,
}

/// This process, as every stage reports it.
#[derive(Debug, Clone)]
pub struct InstanceIdentity {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
}

impl InstanceIdentity {
    /// The running process. The random suffix tells apart two processes that got the same pid
    /// (containers on one host name, a restart).
    pub fn of_this_process() -> InstanceIdentity {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown-host".to_owned());
        let pid = std::process::id();
        let suffix: u32 = rand::random();
        InstanceIdentity {
            id: format!("{host}:{pid}:{suffix:08x}"),
            host,
            pid,
            started_at: Utc::now(),
        }
    }
}

/// One stage's live state, shared by the stage loop, the consumer's callbacks and the reporter.
#[derive(Debug, Default)]
pub struct StageStatus {
    /// Topic and partition: the main stage may read mirrored topics next to its own, and their
    /// partition numbers overlap.
    partitions: Mutex<BTreeSet<(String, i32)>>,
    breaker_open: AtomicBool,
    /// Milliseconds since the epoch; 0: never opened.
    breaker_since_ms: AtomicI64,
    last_error_class: Mutex<Option<&'static str>>,
    /// Milliseconds since the epoch; 0: no commit yet.
    last_commit_ms: AtomicI64,
    records_processed: AtomicU64,
}

impl StageStatus {
    /// The breaker opened because `class` is down.
    pub fn breaker_opened(&self, class: &'static str) {
        *self.last_error_class.lock().expect("error class lock") = Some(class);
        self.breaker_since_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        self.breaker_open.store(true, Ordering::Relaxed);
    }

    pub fn breaker_closed(&self) {
        self.breaker_since_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        self.breaker_open.store(false, Ordering::Relaxed);
    }

    /// `records` more had their offsets stored.
    pub fn processed(&self, records: usize) {
        self.records_processed
            .fetch_add(records as u64, Ordering::Relaxed);
    }

    /// The report of this stage, whose own topic is `topic`.
    fn report(&self, identity: &InstanceIdentity, stage: &str, topic: &str) -> InstanceReport {
        let at = |millis: i64| {
            if millis > 0 {
                Utc.timestamp_millis_opt(millis).single()
            } else {
                None
            }
        };
        let (own, mirrored): (Vec<_>, Vec<_>) = self
            .partitions
            .lock()
            .expect("partitions lock")
            .iter()
            .cloned()
            .partition(|(owner_topic, _)| owner_topic == topic);
        InstanceReport {
            instance: identity.id.clone(),
            host: identity.host.clone(),
            pid: identity.pid,
            started_at: identity.started_at,
            updated_at: Utc::now(),
            stage: stage.to_owned(),
            partitions: own.into_iter().map(|(_, partition)| partition).collect(),
            mirrored_partitions: mirrored
                .into_iter()
                .map(|(topic, partition)| format!("{topic}:{partition}"))
                .collect(),
            breaker_open: self.breaker_open.load(Ordering::Relaxed),
            breaker_since: at(self.breaker_since_ms.load(Ordering::Relaxed)),
            last_error_class: self
                .last_error_class
                .lock()
                .expect("error class lock")
                .map(str::to_owned),
            last_commit_at: at(self.last_commit_ms.load(Ordering::Relaxed)),
            records_processed: self.records_processed.load(Ordering::Relaxed),
        }
    }
}

/// The consumer's observer for one stage: the process's metrics, plus the stage's own partitions
/// and commits.
pub struct StageObserver {
    pub metrics: Arc<ConsumerMetrics>,
    pub status: Arc<StageStatus>,
}

impl ConsumerObserver for StageObserver {
    fn committed(&self, ok: bool) {
        self.metrics.committed(ok);
        if ok {
            self.status
                .last_commit_ms
                .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        }
    }

    fn lag(&self, topic: &str, partition: i32, lag: i64) {
        self.metrics.lag(topic, partition, lag);
    }

    fn revoked(&self, topic: &str, partition: i32) {
        self.metrics.revoked(topic, partition);
        self.status
            .partitions
            .lock()
            .expect("partitions lock")
            .remove(&(topic.to_owned(), partition));
    }

    fn assigned(&self, topic: &str, partition: i32) {
        self.metrics.assigned(topic, partition);
        self.status
            .partitions
            .lock()
            .expect("partitions lock")
            .insert((topic.to_owned(), partition));
    }
}

/// One stage the reporter reports.
pub struct ReportedStage {
    pub label: String,
    /// The stage's own topic (its partitions are `partitions` in the report; any other topic's are
    /// `mirroredPartitions`).
    pub topic: String,
    pub group: String,
    pub status: Arc<StageStatus>,
}

/// Writes every stage's report every `interval` until `shutdown`, then removes them. Redis
/// failures are logged and the next tick tries again: the reports are for people, the pipeline
/// does not wait on them.
pub async fn report_until_stopped(
    redis: RedisStore,
    identity: InstanceIdentity,
    stages: Vec<ReportedStage>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    // Long enough that a group's hash outlives short pauses of all its instances, short enough
    // that a group nobody runs any more goes away.
    let keep = (interval * 30).max(FORGET_AFTER);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        for stage in &stages {
            let report = stage.status.report(&identity, &stage.label, &stage.topic);
            let json = serde_json::to_string(&report).expect("a report serializes");
            if let Err(outage) = redis
                .write_instance_report(&stage.group, &identity.id, &json, keep)
                .await
            {
                tracing::debug!(stage = %stage.label, %outage, "instance report not written");
            }
        }
        // Now and then, forget instances that stopped reporting long ago (crashed, never removed
        // their field).
        if ticks % 30 == 0 {
            forget_long_gone(&redis, &stages).await;
        }
        ticks += 1;
    }
    // All at once: with Redis down, shutdown waits one redis.op_timeout_ms, not one per stage.
    let removals = stages.iter().map(|stage| async {
        if let Err(outage) = redis
            .remove_instance_reports(&stage.group, &[identity.id.as_str()])
            .await
        {
            tracing::warn!(stage = %stage.label, %outage, "instance report not removed; the console will show it stale");
        }
    });
    futures::future::join_all(removals).await;
}

async fn forget_long_gone(redis: &RedisStore, stages: &[ReportedStage]) {
    let groups: Vec<&str> = stages.iter().map(|stage| stage.group.as_str()).collect();
    let Ok(reports) = redis.instance_reports(&groups).await else {
        return;
    };
    let now = Utc::now();
    for (group, fields) in groups.iter().zip(reports) {
        let gone: Vec<&str> = fields
            .iter()
            .filter(|(_, value)| {
                serde_json::from_str::<InstanceReport>(value).is_ok_and(|report| {
                    (now - report.updated_at).to_std().unwrap_or_default() > FORGET_AFTER
                })
            })
            .map(|(field, _)| field.as_str())
            .collect();
        if let Err(outage) = redis.remove_instance_reports(group, &gone).await {
            tracing::debug!(%group, %outage, "old instance reports not removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_follows_assignments_the_breaker_and_commits() {
        let status = Arc::new(StageStatus::default());
        let observer = StageObserver {
            metrics: Arc::new(ConsumerMetrics::new()),
            status: status.clone(),
        };
        let identity = InstanceIdentity::of_this_process();
        let fresh = status.report(&identity, "main", "t");
        assert!(fresh.partitions.is_empty() && !fresh.breaker_open);
        assert_eq!(fresh.last_commit_at, None);
        assert_eq!(fresh.breaker_since, None);

        observer.assigned("t", 3);
        observer.assigned("t", 1);
        observer.revoked("t", 3);
        observer.assigned("t", 0);
        // A mirrored topic's partition 1 is not the own topic's partition 1.
        observer.assigned("east.t", 1);
        observer.assigned("east.t", 2);
        observer.revoked("east.t", 2);
        observer.committed(false);
        status.processed(5);
        status.breaker_opened("mongodb");
        let report = status.report(&identity, "main", "t");
        assert_eq!(report.partitions, [0, 1]);
        assert_eq!(report.mirrored_partitions, ["east.t:1"]);
        observer.revoked("east.t", 1);
        let report = status.report(&identity, "main", "t");
        assert_eq!(
            report.partitions,
            [0, 1],
            "revoking a mirrored partition keeps the own one"
        );
        assert!(report.mirrored_partitions.is_empty());
        assert!(report.breaker_open);
        assert_eq!(report.last_error_class.as_deref(), Some("mongodb"));
        assert!(report.breaker_since.is_some());
        assert_eq!(report.last_commit_at, None, "a failed commit is no commit");
        assert_eq!(report.records_processed, 5);

        observer.committed(true);
        status.breaker_closed();
        let report = status.report(&identity, "main", "t");
        assert!(!report.breaker_open);
        assert!(report.last_commit_at.is_some());
        // The class of the last outage stays, to say what it was.
        assert_eq!(report.last_error_class.as_deref(), Some("mongodb"));
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            serde_json::from_str::<InstanceReport>(&json).unwrap(),
            report
        );
    }
}
