//! The cluster drill (`make cluster-drill`, `--profile cluster-drill`): the suite's workload,
//! ledger, live clients and checker against the production shape of one datacenter (three brokers
//! with RF 3 and min.insync.replicas 2, two `produce`, two `consume` of one group), while the drill
//! takes it apart one piece at a time, in a fixed order with seeded timings:
//!
//! 1. `broker-kill`: SIGKILL one broker that is not the active controller, restart it;
//! 2. `controller-kill`: SIGKILL the active controller (the KRaft quorum's leader), restart it;
//! 3. `consumer-replace`: SIGKILL one consumer for good and start a third instance;
//! 4. `redis-master-kill` (with the Redis Cluster): SIGKILL a master, wait until its replica is
//!    promoted, restart the old master, which rejoins as a replica;
//! 5. `two-brokers-down`: SIGKILL two brokers at once for a short window (no quorum, no ISR of 2:
//!    the API must answer 503 with Retry-After and acknowledge nothing it could lose), restart both.
//!
//! Each step counts as healed when the cluster is back at full strength: every partition of the
//! topics with a leader and three replicas in sync; the group committed everything that was in the
//! topic when the consumer died; the Redis Cluster has three serving masters again, the old master
//! among the replicas. The summary gives, per step, the time to heal, the p99 of `POST` meanwhile
//! and the 503s.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::clock::Window;
use crate::cluster::KAFKA_NODES;
use crate::env::{Env, DLQ_TOPIC, GROUP, PARTITIONS, RETRY_TOPICS, TOPIC};
use crate::faults::{FaultRecord, Injected};
use crate::ledger::PostSample;

/// How long a heal may take before the step counts as failed.
const HEAL_BUDGET: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DrillKind {
    BrokerKill,
    ControllerKill,
    ConsumerReplace,
    RedisMasterKill,
    TwoBrokersDown,
}

impl DrillKind {
    pub fn name(self) -> &'static str {
        match self {
            DrillKind::BrokerKill => "broker-kill",
            DrillKind::ControllerKill => "controller-kill",
            DrillKind::ConsumerReplace => "consumer-replace",
            DrillKind::RedisMasterKill => "redis-master-kill",
            DrillKind::TwoBrokersDown => "two-brokers-down",
        }
    }
}

/// One step of the drill, its timings drawn from the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillStep {
    pub kind: DrillKind,
    /// Pause before the step, after the previous one healed (or after the load started).
    pub gap: Duration,
    /// How long what was killed stays down (for `redis-master-kill`: after the promotion).
    pub hold: Duration,
    /// A draw that picks the victim among the candidates found at run time (a broker that is not
    /// the controller, a consumer, a master, a pair of brokers).
    pub pick: usize,
}

/// The drill's steps in their fixed order; `redis_failover` adds the Redis master kill.
pub fn plan(seed: u64, redis_failover: bool) -> Vec<DrillStep> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x00C1_0573);
    let mut kinds = vec![
        DrillKind::BrokerKill,
        DrillKind::ControllerKill,
        DrillKind::ConsumerReplace,
    ];
    if redis_failover {
        kinds.push(DrillKind::RedisMasterKill);
    }
    kinds.push(DrillKind::TwoBrokersDown);
    let mut steps = Vec::new();
    for (index, kind) in kinds.into_iter().enumerate() {
        let millis = |rng: &mut StdRng, low: u64, high: u64| {
            Duration::from_millis(rng.random_range(low..=high))
        };
        // The first step waits for the load to settle; later ones for the last heal to settle.
        let gap = if index == 0 {
            millis(&mut rng, 10_000, 15_000)
        } else {
            millis(&mut rng, 4_000, 8_000)
        };
        let hold = match kind {
            DrillKind::BrokerKill | DrillKind::ControllerKill => millis(&mut rng, 3_000, 8_000),
            DrillKind::ConsumerReplace => millis(&mut rng, 500, 3_000),
            DrillKind::RedisMasterKill => millis(&mut rng, 2_000, 5_000),
            // Longer than the API's 5 s wait for the broker, so patient clients see the 503.
            DrillKind::TwoBrokersDown => millis(&mut rng, 8_000, 12_000),
        };
        steps.push(DrillStep {
            kind,
            gap,
            hold,
            pick: rng.random_range(0..1024),
        });
    }
    steps
}

/// What one step did, beyond its record: the victims and the phases' times, for the summary.
#[derive(Debug, Clone, Default)]
pub struct StepNotes {
    /// The step with its victim, e.g. `broker-kill(kafka-3)`, once the victim is known.
    label: Option<String>,
    pub lines: Vec<String>,
    /// Run-clock time of the (first) kill: the step's window starts there, not when the drill
    /// began looking for its victim (asking the quorum for its leader takes a JVM's start).
    killed_at: Option<f64>,
}

impl StepNotes {
    fn killed(&mut self, env: &Env) {
        self.killed_at = Some(env.clock.secs());
    }

    /// Seconds since the kill.
    fn since(&self, env: &Env) -> f64 {
        env.clock.secs() - self.killed_at.unwrap_or_else(|| env.clock.secs())
    }
}

/// Runs one step: the kill, the hold, the restart, and the wait for full strength.
pub async fn execute(env: &Env, step: &DrillStep) -> (FaultRecord, StepNotes) {
    let looked_up = env.clock.secs();
    let mut notes = StepNotes::default();
    let result = apply(env, step, &mut notes).await;
    let started = notes.killed_at.unwrap_or(looked_up);
    let record = FaultRecord {
        label: notes
            .label
            .clone()
            .unwrap_or_else(|| step.kind.name().to_owned()),
        kind: Injected::Drill(step.kind),
        started,
        recovered: env.clock.secs(),
        error: result.err().map(|error| format!("{error:#}")),
    };
    (record, notes)
}

async fn apply(env: &Env, step: &DrillStep, notes: &mut StepNotes) -> anyhow::Result<()> {
    match step.kind {
        DrillKind::BrokerKill | DrillKind::ControllerKill => {
            let controller = env.cluster()?.lock().await.active_controller().await?;
            let node = if step.kind == DrillKind::ControllerKill {
                controller
            } else {
                let others: Vec<u8> = KAFKA_NODES
                    .into_iter()
                    .filter(|node| *node != controller)
                    .collect();
                others[step.pick % others.len()]
            };
            notes.label = Some(format!("{}(kafka-{node})", step.kind.name()));
            env.cluster()?.lock().await.kill_kafka(node).await?;
            notes.killed(env);
            notes.lines.push(format!(
                "kafka-{node} killed (the active controller was kafka-{controller})"
            ));
            tokio::time::sleep(step.hold).await;
            restart_kafka(env, notes).await?;
            if step.kind == DrillKind::ControllerKill {
                let elected = env.cluster()?.lock().await.active_controller().await?;
                notes
                    .lines
                    .push(format!("the quorum's leader is now kafka-{elected}"));
            }
        }
        DrillKind::TwoBrokersDown => {
            let first = step.pick % KAFKA_NODES.len();
            let second = (first + 1 + (step.pick / 3) % 2) % KAFKA_NODES.len();
            let pair = [KAFKA_NODES[first], KAFKA_NODES[second]];
            notes.label = Some(format!(
                "{}(kafka-{},kafka-{})",
                step.kind.name(),
                pair[0],
                pair[1]
            ));
            {
                let cluster = env.cluster()?.lock().await;
                for node in pair {
                    cluster.kill_kafka(node).await?;
                    if notes.killed_at.is_none() {
                        notes.killed(env);
                    }
                }
            }
            tokio::time::sleep(step.hold).await;
            notes
                .lines
                .push(format!("both down for {:.1} s", notes.since(env)));
            restart_kafka(env, notes).await?;
        }
        DrillKind::ConsumerReplace => {
            let (victim, newcomer) = {
                let mut roles = env.roles.lock().await;
                let which = step.pick % roles.consumers.len();
                let mut victim = roles.consumers.remove(which);
                victim.kill().await;
                notes.killed(env);
                let name = victim.name.clone();
                roles.retired.push(victim);
                let number = roles.consumers.len() + roles.retired.len() + 1;
                (name, format!("consumer-{number}"))
            };
            notes.label = Some(format!("{}({victim} -> {newcomer})", step.kind.name()));
            tokio::time::sleep(step.hold).await;
            // Healed when everything in the topic by now is committed: what arrived in the dead
            // consumer's partitions meanwhile is only processed once the group has given them to
            // another member (after the session timeout, as nothing told it the member died).
            let brokers = env.kafka_brokers();
            let snapshot =
                tokio::task::spawn_blocking(move || high_watermarks(&brokers, TOPIC)).await??;
            {
                let mut roles = env.roles.lock().await;
                let mut role =
                    env.role_template
                        .role(&newcomer, &["consume", "--stage", "all"], &[]);
                role.start(&env.clock)?;
                roles.consumers.push(role);
            }
            notes.lines.push(format!(
                "{victim} killed for good; {newcomer} started at +{:.1} s",
                notes.since(env)
            ));
            wait_until(
                HEAL_BUDGET,
                "the group to commit what was in the topic",
                || {
                    let brokers = env.kafka_brokers();
                    let snapshot = snapshot.clone();
                    async move {
                        tokio::task::spawn_blocking(move || caught_up(&brokers, TOPIC, &snapshot))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .unwrap_or(false)
                    }
                },
            )
            .await?;
            notes.lines.push(format!(
                "everything in the topic when {newcomer} started committed at +{:.1} s",
                notes.since(env)
            ));
        }
        DrillKind::RedisMasterKill => {
            let ports = env.cluster()?.lock().await.redis_ports();
            let masters = env.cluster()?.lock().await.redis_masters(&ports).await?;
            anyhow::ensure!(
                masters.len() == 3,
                "the Redis Cluster has {} serving masters, not 3",
                masters.len()
            );
            let (master, replicas) = masters[step.pick % masters.len()].clone();
            notes.label = Some(format!("{}(redis-{master})", step.kind.name()));
            env.cluster()?.lock().await.kill_redis(master).await?;
            notes.killed(env);
            let others: Vec<u16> = ports
                .iter()
                .copied()
                .filter(|port| *port != master)
                .collect();
            wait_until(HEAL_BUDGET, "a replica to be promoted", || async {
                let Ok(cluster) = env.cluster() else {
                    return false;
                };
                let masters = cluster.lock().await.redis_masters(&others).await;
                masters.is_ok_and(|masters| {
                    masters.len() == 3 && masters.iter().all(|(port, _)| *port != master)
                })
            })
            .await?;
            notes.lines.push(format!(
                "redis-{master} killed (replicas {replicas:?}); a replica promoted at +{:.1} s",
                notes.since(env)
            ));
            tokio::time::sleep(step.hold).await;
            env.cluster()?.lock().await.up("redis").await?;
            wait_until(
                HEAL_BUDGET,
                "the old master to rejoin as a replica",
                || async {
                    let Ok(cluster) = env.cluster() else {
                        return false;
                    };
                    let masters = cluster.lock().await.redis_masters(&others).await;
                    masters.is_ok_and(|masters| {
                        masters.len() == 3
                            && masters
                                .iter()
                                .any(|(_, replicas)| replicas.contains(&master))
                    })
                },
            )
            .await?;
            notes.lines.push(format!(
                "redis-{master} restarted, a replica again at +{:.1} s",
                notes.since(env)
            ));
        }
    }
    Ok(())
}

/// Restarts the brokers that are down and waits until every partition of the run's topics has a
/// leader and three replicas in sync.
async fn restart_kafka(env: &Env, notes: &mut StepNotes) -> anyhow::Result<()> {
    let at = notes.since(env);
    let restart = env.clock.secs();
    env.cluster()?.lock().await.up("kafka").await?;
    notes.lines.push(format!(
        "restarted at +{at:.1} s, all brokers answering {:.1} s later",
        env.clock.secs() - restart
    ));
    wait_until(HEAL_BUDGET, "every partition back to three in sync", || {
        let brokers = env.kafka_brokers();
        async move {
            tokio::task::spawn_blocking(move || full_isr(&brokers))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false)
        }
    })
    .await?;
    notes.lines.push(format!(
        "every partition three in sync {:.1} s after the restart",
        env.clock.secs() - restart
    ));
    Ok(())
}

async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "waited {within:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// Every partition of the run's topics has a leader and three replicas in sync.
fn full_isr(brokers: &str) -> anyhow::Result<bool> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(5))?;
    let mut topics = vec![TOPIC, DLQ_TOPIC];
    topics.extend(RETRY_TOPICS);
    let mut seen = 0;
    for topic in metadata.topics() {
        if !topics.contains(&topic.name()) {
            continue;
        }
        seen += 1;
        let states: Vec<(i32, usize)> = topic
            .partitions()
            .iter()
            .map(|partition| (partition.leader(), partition.isr().len()))
            .collect();
        if !at_full_strength(&states, PARTITIONS as usize, 3) {
            return Ok(false);
        }
    }
    Ok(seen == topics.len())
}

/// `(leader, in-sync replicas)` of each partition: all `partitions` there, each led, each with
/// `replicas` in sync.
pub fn at_full_strength(states: &[(i32, usize)], partitions: usize, replicas: usize) -> bool {
    states.len() == partitions
        && states
            .iter()
            .all(|(leader, isr)| *leader >= 0 && *isr == replicas)
}

fn high_watermarks(brokers: &str, topic: &str) -> anyhow::Result<HashMap<i32, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create()?;
    let mut marks = HashMap::new();
    for partition in 0..PARTITIONS {
        let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        marks.insert(partition, high);
    }
    Ok(marks)
}

/// The main group has committed every partition of `topic` up to `snapshot`.
fn caught_up(brokers: &str, topic: &str, snapshot: &HashMap<i32, i64>) -> anyhow::Result<bool> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", GROUP)
        .set("log_level", "3")
        .create()?;
    let mut query = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        query.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(query, Duration::from_secs(10))?;
    let committed: HashMap<i32, i64> = committed
        .elements()
        .iter()
        .map(|element| {
            let offset = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => 0,
            };
            (element.partition(), offset)
        })
        .collect();
    Ok(committed_past(&committed, snapshot))
}

/// Every partition's committed offset is at or past the snapshot's.
pub fn committed_past(committed: &HashMap<i32, i64>, snapshot: &HashMap<i32, i64>) -> bool {
    snapshot
        .iter()
        .all(|(partition, high)| committed.get(partition).copied().unwrap_or(0) >= *high)
}

/// The posts of one step's window, summed up.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowStats {
    pub posts: usize,
    pub accepted: usize,
    pub unavailable: usize,
    /// 503s without a `Retry-After`: a violation.
    pub unavailable_without_retry_after: usize,
    pub no_answer: usize,
    /// The p99 of the answer time, in seconds (for a request without an answer: until the client
    /// gave up).
    pub p99_secs: f64,
}

/// Sums up the posts sent during `window`.
pub fn window_stats(samples: &[PostSample], window: Window) -> WindowStats {
    let inside: Vec<&PostSample> = samples
        .iter()
        .filter(|sample| window.contains(sample.at, 0.0))
        .collect();
    let mut times: Vec<f64> = inside.iter().map(|sample| sample.secs).collect();
    times.sort_by(f64::total_cmp);
    let p99_secs = if times.is_empty() {
        0.0
    } else {
        let rank = ((times.len() as f64) * 0.99).ceil() as usize;
        times[rank.clamp(1, times.len()) - 1]
    };
    let count = |answer: &str| {
        inside
            .iter()
            .filter(|sample| sample.answer == answer)
            .count()
    };
    WindowStats {
        posts: inside.len(),
        accepted: count("202"),
        unavailable: count("503"),
        unavailable_without_retry_after: inside
            .iter()
            .filter(|sample| sample.answer == "503" && !sample.retry_after)
            .count(),
        no_answer: count("timeout") + count("no-connection"),
        p99_secs,
    }
}

/// One step as the summary shows it.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub record: FaultRecord,
    pub notes: StepNotes,
    pub stats: WindowStats,
}

impl StepReport {
    /// What the drill holds against a step beyond the checker's findings (which include a 503
    /// without Retry-After anywhere in the run): with two brokers down the API must have said 503
    /// at least once.
    pub fn violation(&self) -> Option<String> {
        (self.record.kind == Injected::Drill(DrillKind::TwoBrokersDown)
            && self.record.error.is_none()
            && self.stats.unavailable == 0)
            .then(|| {
                format!(
                    "{}: no POST got 503 while two brokers were down ({} posts: {} accepted, {} without an answer)",
                    self.record.label, self.stats.posts, self.stats.accepted, self.stats.no_answer
                )
            })
    }
}

/// The pure parts, run by `--self-checks` and at the start of every run.
pub mod checks {
    use super::*;

    pub fn plan_is_seeded_and_ordered() {
        let plan = super::plan(7, true);
        assert_eq!(plan, super::plan(7, true), "the same seed, the same plan");
        assert_ne!(plan, super::plan(8, true), "another seed, other timings");
        let kinds: Vec<DrillKind> = plan.iter().map(|step| step.kind).collect();
        assert_eq!(
            kinds,
            [
                DrillKind::BrokerKill,
                DrillKind::ControllerKill,
                DrillKind::ConsumerReplace,
                DrillKind::RedisMasterKill,
                DrillKind::TwoBrokersDown
            ]
        );
        assert!(!super::plan(7, false)
            .iter()
            .any(|step| step.kind == DrillKind::RedisMasterKill));
        let two_down = plan.last().expect("steps");
        assert!(
            two_down.hold > Duration::from_secs(5),
            "two brokers stay down past the API's 5 s broker wait"
        );
    }

    pub fn full_strength_needs_every_partition_led_and_in_sync() {
        assert!(at_full_strength(&[(1, 3), (2, 3)], 2, 3));
        assert!(!at_full_strength(&[(1, 3), (2, 2)], 2, 3));
        assert!(!at_full_strength(&[(1, 3), (-1, 3)], 2, 3));
        assert!(!at_full_strength(&[(1, 3)], 2, 3));
    }

    pub fn catching_up_compares_every_partition() {
        let snapshot = HashMap::from([(0, 10), (1, 5)]);
        assert!(committed_past(&HashMap::from([(0, 10), (1, 7)]), &snapshot));
        assert!(!committed_past(&HashMap::from([(0, 9), (1, 7)]), &snapshot));
        assert!(!committed_past(&HashMap::from([(0, 10)]), &snapshot));
    }

    pub fn window_stats_count_and_rank() {
        let sample = |at: f64, secs: f64, answer: &str, retry_after: bool| PostSample {
            at,
            secs,
            answer: answer.to_owned(),
            retry_after,
            dc: None,
            client: 0,
        };
        let mut samples: Vec<PostSample> = (0..100)
            .map(|index| sample(10.0 + f64::from(index) * 0.01, 0.01, "202", false))
            .collect();
        samples.push(sample(11.5, 5.0, "503", true));
        samples.push(sample(11.6, 5.0, "503", false));
        samples.push(sample(11.7, 3.0, "timeout", false));
        samples.push(sample(30.0, 9.0, "202", false));
        let stats = window_stats(
            &samples,
            Window {
                from: 10.0,
                to: 12.0,
            },
        );
        assert_eq!(stats.posts, 103);
        assert_eq!(stats.accepted, 100);
        assert_eq!(stats.unavailable, 2);
        assert_eq!(stats.unavailable_without_retry_after, 1);
        assert_eq!(stats.no_answer, 1);
        // 103 samples: the 99th percentile is the 102nd smallest, one of the two 5 s answers.
        assert_eq!(stats.p99_secs, 5.0);
        let empty = window_stats(&[], Window { from: 0.0, to: 1.0 });
        assert_eq!(empty.posts, 0);
        assert_eq!(empty.p99_secs, 0.0);
    }
}
