//! The faults: what each kind does, a schedule drawn from the seed, and the executor that applies one
//! fault and undoes it.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::drill::DrillKind;
use crate::env::Env;
use crate::stack::Service;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    ConsumerKill,
    ApiKill,
    KafkaKill,
    RedisStop,
    MongoStop,
    Latency,
    Bandwidth,
    Stall,
    Blackhole,
    Reset,
    Partition,
}

impl FaultKind {
    pub const ALL: [FaultKind; 11] = [
        FaultKind::ConsumerKill,
        FaultKind::ApiKill,
        FaultKind::KafkaKill,
        FaultKind::RedisStop,
        FaultKind::MongoStop,
        FaultKind::Latency,
        FaultKind::Bandwidth,
        FaultKind::Stall,
        FaultKind::Blackhole,
        FaultKind::Reset,
        FaultKind::Partition,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::ConsumerKill => "consumer-kill",
            FaultKind::ApiKill => "api-kill",
            FaultKind::KafkaKill => "kafka-kill",
            FaultKind::RedisStop => "redis-stop",
            FaultKind::MongoStop => "mongo-stop",
            FaultKind::Latency => "latency",
            FaultKind::Bandwidth => "bandwidth",
            FaultKind::Stall => "stall",
            FaultKind::Blackhole => "blackhole",
            FaultKind::Reset => "reset",
            FaultKind::Partition => "partition",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            FaultKind::ConsumerKill => "SIGKILL one of the two consumers, restart it after a pause",
            FaultKind::ApiKill => {
                "SIGKILL the API, restart it after a pause (clients retry what got no answer)"
            }
            FaultKind::KafkaKill => {
                "SIGKILL the broker, restart it (the API must answer 503 meanwhile)"
            }
            FaultKind::RedisStop => "stop Redis (SIGTERM), start it again after a pause",
            FaultKind::MongoStop => "stop FerretDB (SIGTERM), start it again after a pause",
            FaultKind::Latency => "proxy: add latency with jitter to a dependency's connections",
            FaultKind::Bandwidth => "proxy: throttle a dependency's connections to a few KB/s",
            FaultKind::Stall => "proxy: stop all data, close each connection after a timeout",
            FaultKind::Blackhole => "proxy: drop all data, keep connections open, until removed",
            FaultKind::Reset => "proxy: reset connections (TCP RST) right away or after a delay",
            FaultKind::Partition => {
                "proxy: disable the proxy (connections closed, new ones refused)"
            }
        }
    }

    /// Faults that go through a proxy, and so pick a dependency.
    pub fn is_proxy(self) -> bool {
        matches!(
            self,
            FaultKind::Latency
                | FaultKind::Bandwidth
                | FaultKind::Stall
                | FaultKind::Blackhole
                | FaultKind::Reset
                | FaultKind::Partition
        )
    }

    pub fn parse_mix(raw: &str) -> anyhow::Result<Vec<FaultKind>> {
        let raw = raw.trim();
        if raw.is_empty() || raw == "none" {
            return Ok(Vec::new());
        }
        if raw == "all" {
            return Ok(FaultKind::ALL.to_vec());
        }
        let mut kinds = Vec::new();
        for name in raw
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            let kind = if name == "proxy" {
                FaultKind::ALL
                    .iter()
                    .copied()
                    .filter(|kind| kind.is_proxy())
                    .collect()
            } else {
                vec![FaultKind::ALL
                    .iter()
                    .copied()
                    .find(|kind| kind.name() == name)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "unknown fault kind `{name}` (known: all, none, proxy, {})",
                            FaultKind::ALL.map(FaultKind::name).join(", ")
                        )
                    })?]
            };
            for kind in kind {
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
        }
        Ok(kinds)
    }
}

/// One fault of the schedule, fully drawn from the seed.
#[derive(Debug, Clone)]
pub struct PlannedFault {
    /// Seconds after the load started.
    pub at: f64,
    pub kind: FaultKind,
    /// The dependency a proxy fault affects.
    pub target: Option<Service>,
    /// Which consumer a consumer kill hits.
    pub which: usize,
    /// How long the fault lasts (for kills and stops: how long the process stays down).
    pub hold: Duration,
    /// Toxic parameters, as the toxic wants them.
    pub attributes: serde_json::Value,
}

impl PlannedFault {
    pub fn label(&self) -> String {
        match (self.kind, self.target) {
            (FaultKind::ConsumerKill, _) => format!("consumer-kill(consumer-{})", self.which + 1),
            (kind, Some(target)) => format!("{}({})", kind.name(), target.name()),
            (kind, None) => kind.name().to_owned(),
        }
    }

    /// A rough time the fault takes from start to recovery, for planning.
    fn cost(&self) -> f64 {
        self.hold.as_secs_f64()
            + match self.kind {
                FaultKind::KafkaKill => 15.0,
                FaultKind::ApiKill | FaultKind::ConsumerKill => 1.0,
                FaultKind::RedisStop | FaultKind::MongoStop => 1.5,
                _ => 0.2,
            }
    }
}

/// Draws the schedule: every kind of the mix in turn (a shuffled bag, refilled when empty), so even a
/// short run sees each kind; durations, targets and parameters from the seed; faults only start when
/// they can end `cooldown` seconds before the load does.
pub fn plan(
    seed: u64,
    mix: &[FaultKind],
    targets: &[Service],
    load: Duration,
    gap_secs: (u64, u64),
) -> Vec<PlannedFault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x00FA_0175);
    let warmup = 8.0;
    let cooldown = 10.0;
    let end = load.as_secs_f64() - cooldown;
    let mut bag: Vec<FaultKind> = Vec::new();
    let mut planned = Vec::new();
    let mut at = warmup;
    if mix.is_empty() {
        return planned;
    }
    let mut misses = 0;
    while at < end && misses < mix.len() * 2 {
        if bag.is_empty() {
            bag = mix.to_vec();
            bag.shuffle(&mut rng);
        }
        let kind = bag.pop().expect("refilled");
        let fault = draw(&mut rng, kind, targets, at);
        if at + fault.cost() > end {
            // Too long for what is left (a broker kill near the end): try the next kind.
            misses += 1;
            continue;
        }
        misses = 0;
        at += fault.cost() + rng.random_range(gap_secs.0..=gap_secs.1) as f64;
        planned.push(fault);
    }
    planned
}

fn draw(rng: &mut StdRng, kind: FaultKind, targets: &[Service], at: f64) -> PlannedFault {
    let millis =
        |rng: &mut StdRng, low: u64, high: u64| Duration::from_millis(rng.random_range(low..=high));
    let target = kind
        .is_proxy()
        .then(|| targets[rng.random_range(0..targets.len())]);
    let (hold, attributes) = match kind {
        FaultKind::ConsumerKill => (millis(rng, 500, 4000), json!({})),
        FaultKind::ApiKill => (millis(rng, 300, 3000), json!({})),
        FaultKind::KafkaKill => (millis(rng, 500, 5000), json!({})),
        FaultKind::RedisStop | FaultKind::MongoStop => (millis(rng, 1000, 8000), json!({})),
        FaultKind::Latency => (
            millis(rng, 5000, 12000),
            json!({"latency": rng.random_range(100..=1500), "jitter": rng.random_range(0..=300)}),
        ),
        FaultKind::Bandwidth => (
            millis(rng, 5000, 12000),
            json!({"rate": rng.random_range(4..=64)}),
        ),
        FaultKind::Stall => (
            millis(rng, 4000, 10000),
            json!({"timeout": rng.random_range(500..=4000)}),
        ),
        FaultKind::Blackhole => (millis(rng, 3000, 8000), json!({"timeout": 0})),
        FaultKind::Reset => (
            millis(rng, 3000, 8000),
            json!({"timeout": rng.random_range(0..=1000)}),
        ),
        FaultKind::Partition => (millis(rng, 3000, 10000), json!({})),
    };
    PlannedFault {
        at,
        kind,
        target,
        which: rng.random_range(0..2),
        hold,
        attributes,
    }
}

/// What a record is of: a kind of the suite's mix, or a step of the cluster drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    Fault(FaultKind),
    Drill(DrillKind),
}

impl Injected {
    pub fn name(self) -> &'static str {
        match self {
            Injected::Fault(kind) => kind.name(),
            Injected::Drill(kind) => kind.name(),
        }
    }
}

/// What happened when a fault ran.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub label: String,
    pub kind: Injected,
    /// Run-clock seconds: when the fault began, and when everything it broke answered again.
    pub started: f64,
    pub recovered: f64,
    /// Set if applying or undoing the fault failed (a harness problem, reported as such).
    pub error: Option<String>,
}

/// Applies `fault`, holds it, undoes it, and waits until what it broke answers again.
pub async fn execute(env: &Env, fault: &PlannedFault) -> FaultRecord {
    let started = env.clock.secs();
    let result = apply(env, fault).await;
    FaultRecord {
        label: fault.label(),
        kind: Injected::Fault(fault.kind),
        started,
        recovered: env.clock.secs(),
        error: result.err().map(|error| format!("{error:#}")),
    }
}

async fn apply(env: &Env, fault: &PlannedFault) -> anyhow::Result<()> {
    match fault.kind {
        FaultKind::ConsumerKill => {
            env.roles.lock().await.consumers[fault.which].kill().await;
            tokio::time::sleep(fault.hold).await;
            env.roles.lock().await.consumers[fault.which].start(&env.clock)?;
        }
        FaultKind::ApiKill => {
            env.roles.lock().await.apis[0].kill().await;
            tokio::time::sleep(fault.hold).await;
            env.roles.lock().await.apis[0].start(&env.clock)?;
            env.wait_for_api(Duration::from_secs(60)).await?;
        }
        FaultKind::KafkaKill => {
            env.stack.lock().await.kill_kafka().await?;
            tokio::time::sleep(fault.hold).await;
            env.stack.lock().await.up(Some(Service::Kafka)).await?;
        }
        FaultKind::RedisStop | FaultKind::MongoStop => {
            let service = if fault.kind == FaultKind::RedisStop {
                Service::Redis
            } else {
                Service::Mongo
            };
            env.stack.lock().await.down(Some(service)).await?;
            tokio::time::sleep(fault.hold).await;
            env.stack.lock().await.up(Some(service)).await?;
        }
        FaultKind::Partition => {
            let target = fault.target.expect("proxy faults have a target");
            env.toxiproxy()?.set_enabled(target, false).await?;
            tokio::time::sleep(fault.hold).await;
            env.toxiproxy()?.set_enabled(target, true).await?;
        }
        kind => {
            let target = fault.target.expect("proxy faults have a target");
            let toxic = match kind {
                FaultKind::Latency => "latency",
                FaultKind::Bandwidth => "bandwidth",
                FaultKind::Stall | FaultKind::Blackhole => "timeout",
                FaultKind::Reset => "reset_peer",
                _ => unreachable!("handled above"),
            };
            // Both directions: requests and answers are both slowed, stalled or cut.
            let mut added = Vec::new();
            let mut outcome = Ok(());
            for stream in ["upstream", "downstream"] {
                let name = format!("{}_{stream}", kind.name());
                match env
                    .toxiproxy()?
                    .add_toxic(target, &name, toxic, stream, fault.attributes.clone())
                    .await
                {
                    Ok(()) => added.push(name),
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                }
            }
            if outcome.is_ok() {
                tokio::time::sleep(fault.hold).await;
            }
            for name in added {
                env.toxiproxy()?.remove_toxic(target, &name).await?;
            }
            outcome?;
        }
    }
    Ok(())
}

/// Faults per kind, for the summary.
pub fn count_by_kind(records: &[FaultRecord]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for record in records {
        *counts.entry(record.kind.name().to_owned()).or_default() += 1;
    }
    counts
}
