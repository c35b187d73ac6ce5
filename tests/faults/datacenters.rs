//! The datacenter drill (`make dc-drill`, `--profile dc-drill`): the suite's workload, ledger, live
//! clients and checker against two datacenters, `east` and `west`, active-active over MirrorMaker 2,
//! on a private stack of their own (`scripts/dc.sh` in the run's directory at a free port offset,
//! `AP_DC_DIR` / `AP_DC_PORT_OFFSET`, with the run's settings in `AP_DC_CONFIG`). The phases, their
//! timings drawn from the seed:
//!
//! 1. Load: clients of three tenants, each homed in one datacenter (single and batch posts, with
//!    keys), SSE clients of every tenant in each datacenter. A few keys are raced: posted to both
//!    datacenters at once with different bodies (`race`).
//! 2. `east-down`: SIGKILL of every east process (Kafka, FerretDB, Redis, produce, consume). Clients
//!    that get no answer from east fail over to west and resend with the same keys.
//! 3. East comes back on the same disks (`dc.sh up`: ready once a probe posted in each datacenter is
//!    stored in the other), MirrorMaker 2 catches up, clients return. More keys are raced.
//! 4. `mirror-kill`: SIGKILL of MirrorMaker 2 under load and a restart (at-least-once mirroring:
//!    duplicates in the mirrored topics, none in the stores).
//! 5. After the drain, the checker holds each datacenter's store, Redis and DLQ to the ledger, then
//!    compares the datacenters (every key in both with the same payload, counters equal), checks
//!    the conflict rule on the raced keys, and measures the RPO (what east acknowledged and west did
//!    not have when east died, and when it arrived), the RTO (until east's clients got a 202 from
//!    west) and the replication lag (a document's `createdAt` in the other datacenter minus its
//!    `enqueuedAt`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mongodb::bson::Document;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::checker::{self, Checked, ConflictLetter, Stores, Violations};
use crate::clock::{Clock, Window};
use crate::env::{
    RedisTarget, Tenant, COLLECTION, DATABASE, GROUP, MAX_BODY_BYTES, PARTITIONS, RETRY_TOPICS,
    TENANTS, TOPIC,
};
use crate::ledger::{Outcome, PostSample, SentActivity, WorkloadReport};
use crate::live::{self, LiveClient};
use crate::options::Options;
use crate::roles::UnexpectedExit;
use crate::workload;

pub const EAST: &str = "east";
pub const WEST: &str = "west";
pub const DATACENTERS: [&str; 2] = [EAST, WEST];

/// The profile's ports at offset 0 (scripts/dc.sh), per datacenter: Kafka, its KRaft controller,
/// FerretDB, Redis, the API, the consumer's metrics.
const BASE_PORTS: [[u16; 6]; 2] = [
    [9592, 9593, 27517, 6779, 8581, 9581],
    [9692, 9693, 27617, 6879, 8681, 9781],
];
/// Offsets tried, in this order (times `OFFSET_STEP`): every port stays between 7779 and 32617,
/// below the kernel's ephemeral range (where the other runs' free ports come from); an offset
/// that lands on a port of the default profile or of the shared services is never taken, and every
/// port is checked free before one is.
const OFFSET_CANDIDATES: std::ops::Range<u16> = 10..50;
const OFFSET_STEP: u16 = 100;
/// Ports of services others run on this machine: the shared stack (Kafka and its controller,
/// Redis, FerretDB, its PostgreSQL), `make run`'s API, the Redis Cluster and its buses.
const SHARED_PORTS: [u16; 18] = [
    9092, 9093, 6379, 27017, 5433, 8080, 7001, 7002, 7003, 7004, 7005, 7006, 17001, 17002, 17003,
    17004, 17005, 17006,
];
/// Keys raced in both datacenters, per round (one round before east dies, one after it is back).
const RACED_PER_ROUND: usize = 4;
/// How long the consumers of both datacenters get to drain, and the clients to finish.
const DRAIN_BUDGET: Duration = Duration::from_secs(180);
const CLIENT_DRAIN_BUDGET: Duration = Duration::from_secs(45);
/// The load goes on this long after the last phase (its aftermath).
const COOLDOWN: Duration = Duration::from_secs(12);

fn index(dc: &str) -> usize {
    usize::from(dc == WEST)
}

fn other(dc: &str) -> &'static str {
    if dc == EAST {
        WEST
    } else {
        EAST
    }
}

/// Every port of the profile at `offset`.
pub fn dc_ports(offset: u16) -> Vec<u16> {
    BASE_PORTS
        .iter()
        .flatten()
        .map(|port| port + offset)
        .collect()
}

/// Whether `offset` keeps every port off the default profile's, the shared services' and the
/// ephemeral range.
pub fn offset_is_clear(offset: u16) -> bool {
    let defaults = dc_ports(0);
    dc_ports(offset).iter().all(|port| {
        (1025..32768).contains(port) && !defaults.contains(port) && !SHARED_PORTS.contains(port)
    })
}

/// The first clear candidate offset whose every port is free on 127.0.0.1.
pub fn pick_offset() -> anyhow::Result<u16> {
    OFFSET_CANDIDATES
        .map(|step| step * OFFSET_STEP)
        .filter(|offset| offset_is_clear(*offset))
        .find(|offset| {
            dc_ports(*offset)
                .iter()
                .all(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        })
        .ok_or_else(|| anyhow::anyhow!("no port offset with all the two datacenters' ports free"))
}

/// The drill's private two-datacenter stack: `scripts/dc.sh` with the run's directory, offset,
/// binary and settings.
pub struct DcStack {
    pub dir: PathBuf,
    pub offset: u16,
    repo: PathBuf,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    running: bool,
}

impl DcStack {
    fn new(repo: &Path, binary: &Path, run_dir: &Path, offset: u16) -> anyhow::Result<DcStack> {
        let config = run_dir.join("dc-drill.toml");
        std::fs::write(&config, drill_settings())?;
        Ok(DcStack {
            dir: run_dir.join("dc"),
            offset,
            repo: repo.to_owned(),
            binary: binary.to_owned(),
            config,
            log: run_dir.join("logs/dc.log"),
            running: false,
        })
    }

    fn command(&self, args: &[&str]) -> anyhow::Result<std::process::Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = std::process::Command::new(self.repo.join("scripts/dc.sh"));
        command
            .args(args)
            .env("AP_DC_DIR", &self.dir)
            .env("AP_DC_PORT_OFFSET", self.offset.to_string())
            .env("AP_DC_BIN", &self.binary)
            .env("AP_DC_CONFIG", &self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(command)
    }

    /// `dc.sh <args>` (`up` waits until both datacenters are ready and mirror each other).
    async fn run(&mut self, args: &[&str]) -> anyhow::Result<()> {
        if args.first() == Some(&"up") {
            self.running = true;
        }
        let status = tokio::process::Command::from(self.command(args)?)
            .kill_on_drop(true)
            .status()
            .await
            .context("running scripts/dc.sh")?;
        anyhow::ensure!(
            status.success(),
            "scripts/dc.sh {} failed ({status}); see {}",
            args.join(" "),
            self.log.display()
        );
        Ok(())
    }

    fn port(&self, dc: &str, which: usize) -> u16 {
        BASE_PORTS[index(dc)][which] + self.offset
    }

    pub fn api(&self, dc: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(dc, 4))
    }

    pub fn brokers(&self, dc: &str) -> String {
        format!("127.0.0.1:{}", self.port(dc, 0))
    }

    pub fn stores(&self, dc: &str) -> Stores {
        Stores {
            mongo_uri: format!("mongodb://127.0.0.1:{}", self.port(dc, 2)),
            redis: RedisTarget::Single(format!("redis://127.0.0.1:{}", self.port(dc, 3))),
            brokers: self.brokers(dc),
        }
    }

    fn role_files(&self, dc: &str, role: &str) -> (PathBuf, PathBuf) {
        let app = self.dir.join(dc).join("app");
        (
            app.join(format!("{role}.pid")),
            app.join(format!("{role}.log")),
        )
    }

    /// Stops everything (blocking; also on the way out after an error), deleting the data when
    /// `delete_data`.
    fn stop_blocking(&mut self, delete_data: bool) {
        if !self.running {
            return;
        }
        if let Ok(mut command) = self.command(&[if delete_data { "reset" } else { "down" }]) {
            let _ = command.status();
        }
        self.running = false;
    }
}

impl Drop for DcStack {
    fn drop(&mut self) {
        self.stop_blocking(false);
    }
}

/// The run's settings on top of config/dev.toml and config/dc-<dc>.toml, as the other profiles'
/// roles get them (`env::common_overrides`), plus the third tenant.
fn drill_settings() -> String {
    let initech = hex::encode(Sha256::digest(TENANTS[2].key.as_bytes()));
    format!(
        "# Written by the datacenter drill (tests/faults/datacenters.rs) for this run.\n\
         [kafka]\npartitions = {PARTITIONS}\n\n\
         [http]\nworkers = 2\nmax_body_bytes = {MAX_BODY_BYTES}\n\n\
         [mongo]\nserver_selection_timeout_ms = 3000\n\n\
         [consumer]\noutage_backoff_max_ms = 2000\n\n\
         [log]\nfilter = \"info,rdkafka=warn\"\n\n\
         [tenants.{}]\napi_key_sha256 = \"{initech}\"\n",
        TENANTS[2].id
    )
}

/// The drill's timings, drawn from the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct DcPlan {
    /// Load before the first race and the kill.
    pub warmup: Duration,
    /// How long east stays dead before `dc.sh up`.
    pub east_hold: Duration,
    /// Load between east's return (and the second race) and the MirrorMaker 2 kill.
    pub settle: Duration,
    /// How long MirrorMaker 2 stays dead.
    pub mirror_hold: Duration,
}

pub fn plan(seed: u64) -> DcPlan {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x00DC_D411);
    let mut millis = |low: u64, high: u64| Duration::from_millis(rng.random_range(low..=high));
    DcPlan {
        warmup: millis(12_000, 18_000),
        east_hold: millis(15_000, 25_000),
        settle: millis(8_000, 12_000),
        mirror_hold: millis(3_000, 8_000),
    }
}

/// One phase of the drill as the summary shows it.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub label: String,
    pub started: f64,
    pub recovered: f64,
    pub error: Option<String>,
    pub notes: Vec<String>,
}

/// What is down on purpose (the watchdog leaves it alone), and what died on its own.
#[derive(Default)]
struct Watch {
    down: HashSet<&'static str>,
    reported: HashSet<String>,
    exits: Vec<UnexpectedExit>,
}

/// Every second: each role and MirrorMaker 2 not down on purpose must be alive (its pid file's
/// process); one that is not is a finding (`dc.sh up` of the next phase, or none, restarts it).
async fn watchdog(stack: Arc<Mutex<DcStack>>, watch: Arc<Mutex<Watch>>, clock: Clock) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let files: Vec<(String, PathBuf, PathBuf)> = {
            let stack = stack.lock().await;
            let mut files = Vec::new();
            for dc in DATACENTERS {
                for role in ["produce", "consume"] {
                    let (pid, log) = stack.role_files(dc, role);
                    files.push((format!("{dc}/{role}"), pid, log));
                }
            }
            let mirror = stack.dir.join("mirrormaker");
            files.push((
                "mirrormaker".to_owned(),
                mirror.join("mirrormaker.pid"),
                mirror.join("server.log"),
            ));
            files
        };
        let mut watch = watch.lock().await;
        for (name, pidfile, log) in files {
            let owner = name.split('/').next().unwrap_or_default();
            if watch.down.iter().any(|down| *down == owner) {
                continue;
            }
            let Ok(pid) = crate::stack::read_pid(&pidfile) else {
                continue;
            };
            let key = format!("{name}:{pid}");
            if alive(&pid) || watch.reported.contains(&key) {
                continue;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            eprintln!(
                "faults: FINDING: {name} (pid {pid}) exited on its own at t={:.1}s",
                clock.secs()
            );
            watch.exits.push(UnexpectedExit {
                role: name,
                at_secs: clock.secs(),
                status: format!("pid {pid} gone"),
                log_tail: tail,
            });
            watch.reported.insert(key);
        }
    }
}

fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit(") ").next().unwrap_or_default();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

/// One raced key: the same tenant and key posted at once to east (body 0) and west (body 1).
#[derive(Debug, Clone)]
pub struct Raced {
    pub tenant: &'static str,
    pub key: String,
    /// The ledger entries of the two bodies: east's, then west's.
    pub sides: [SentActivity; 2],
}

const RACE_TYPES: [&str; 2] = ["race.east", "race.west"];

/// Posts one body to one datacenter until a 202 or a refusal, a few times at most (no failover:
/// the race is the point).
async fn post_raced(
    http: &reqwest::Client,
    api: &str,
    dc: &'static str,
    tenant: Tenant,
    key: &str,
    body: Value,
    clock: Clock,
) -> SentActivity {
    let mut posts = 0;
    let mut outcome = Outcome::Unanswered;
    let mut acked_at = None;
    while posts < 8 {
        posts += 1;
        let answer = http
            .post(format!("{api}/activities"))
            .bearer_auth(tenant.key)
            .header("X-Idempotency-Key", key)
            .json(&body)
            .timeout(Duration::from_secs(8))
            .send()
            .await;
        match answer.map(|response| response.status().as_u16()) {
            Ok(202) => {
                outcome = Outcome::Acked;
                acked_at = Some(clock.secs());
                break;
            }
            // 422: the other body got here first (mirrored and stored): a refusal, no retry.
            Ok(status) if (400..500).contains(&status) && status != 409 && status != 429 => {
                outcome = Outcome::Refused(status);
                break;
            }
            // 409, 429, 503 or no answer: the same body again, to the same datacenter.
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    SentActivity {
        tenant: tenant.id,
        key: Some(key.to_owned()),
        nonce: key.to_owned(),
        body,
        outcome,
        posts,
        batched: false,
        acked_at,
        acked_dc: acked_at.map(|_| dc),
        conflict: true,
    }
}

/// Races `count` keys: each posted to both datacenters at once, with a body (and type) per side.
async fn race(stack: &Mutex<DcStack>, round: usize, seed: u64, clock: Clock) -> Vec<Raced> {
    let (east, west) = {
        let stack = stack.lock().await;
        (stack.api(EAST), stack.api(WEST))
    };
    let Ok(http) = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
    else {
        return Vec::new();
    };
    let mut rng = StdRng::seed_from_u64(seed ^ (0x0000_ACE0 + round as u64));
    let mut raced = Vec::new();
    for number in 0..RACED_PER_ROUND {
        let tenant = TENANTS[rng.random_range(0..TENANTS.len())];
        let key = format!("race-{seed}-{round}-{number}");
        let body = |side: usize| {
            json!({
                "actorId": format!("racer-{}", DATACENTERS[side]),
                "actorName": format!("Racer in {}", DATACENTERS[side]),
                "type": RACE_TYPES[side],
                "metadata": {"nonce": key, "side": DATACENTERS[side]},
            })
        };
        let (east_side, west_side) = tokio::join!(
            post_raced(&http, &east, EAST, tenant, &key, body(0), clock),
            post_raced(&http, &west, WEST, tenant, &key, body(1), clock),
        );
        raced.push(Raced {
            tenant: tenant.id,
            key,
            sides: [east_side, west_side],
        });
    }
    raced
}

/// Runs the drill: the private stack, the load and the phases, the drain, the checks, the summary.
/// Returns whether it passed.
pub async fn run(
    options: &Options,
    seed: u64,
    repo: &Path,
    binary: &Path,
    run_dir: &Path,
    command: &str,
) -> anyhow::Result<bool> {
    let clock = Clock::start();
    std::fs::create_dir_all(run_dir.join("logs"))?;
    let offset = pick_offset()?;
    let mut stack = DcStack::new(repo, binary, run_dir, offset)?;
    println!(
        "faults: two datacenters in {} at port offset {offset}: east API {}, west API {} (scripts/dc.sh; log {})",
        stack.dir.display(),
        stack.api(EAST),
        stack.api(WEST),
        stack.log.display()
    );
    stack.run(&["up"]).await?;
    println!("faults: both datacenters up after {:.1} s", clock.secs());
    let stack = Arc::new(Mutex::new(stack));
    let outcome = exercise(&stack, options, seed, clock, run_dir, command).await;
    let green = matches!(outcome, Ok(true));
    // The data of a red run is kept for a look.
    let mut stack = stack.lock().await;
    let delete = green && !options.keep;
    tokio::task::block_in_place(|| stack.stop_blocking(delete));
    outcome
}

async fn exercise(
    stack: &Arc<Mutex<DcStack>>,
    options: &Options,
    seed: u64,
    clock: Clock,
    run_dir: &Path,
    command: &str,
) -> anyhow::Result<bool> {
    let apis: Vec<String> = {
        let stack = stack.lock().await;
        DATACENTERS.iter().map(|dc| stack.api(dc)).collect()
    };
    let features = workload::detect_features(&apis[0]).await?;
    println!(
        "faults: batch endpoint {}; live clients {}",
        if features.batch { "present" } else { "absent" },
        if features.sse {
            "over SSE"
        } else {
            "via the Redis stand-in"
        }
    );
    let end = CancellationToken::new();
    // The stand-in (no SSE) would read one datacenter's Redis only; the drill needs the endpoint.
    anyhow::ensure!(
        features.sse,
        "the datacenter drill needs GET /activities/stream"
    );
    let live = live::start(true, true, &apis, "", "", &TENANTS, &end);
    let watch = Arc::new(Mutex::new(Watch::default()));
    let watchdog = tokio::spawn(watchdog(stack.clone(), watch.clone(), clock));

    let load_stop = CancellationToken::new();
    let load_started = clock.secs();
    let load = tokio::spawn(workload::run(
        workload::LoadPlan {
            apis: apis.clone(),
            datacenters: Some(DATACENTERS.to_vec()),
            features,
            seed,
            clients: options.clients,
            rate: options.rate(),
            drain_budget: CLIENT_DRAIN_BUDGET,
        },
        clock,
        load_stop.clone(),
    ));

    let plan = plan(seed);
    println!(
        "faults: plan: warm-up {:.1} s, race {RACED_PER_ROUND} keys, east down {:.1} s, race {RACED_PER_ROUND} keys, settle {:.1} s, MirrorMaker 2 down {:.1} s, cool-down {:.0} s",
        plan.warmup.as_secs_f64(),
        plan.east_hold.as_secs_f64(),
        plan.settle.as_secs_f64(),
        plan.mirror_hold.as_secs_f64(),
        COOLDOWN.as_secs_f64()
    );
    let deadline = load_started + options.duration().as_secs_f64();
    let mut phases: Vec<Phase> = Vec::new();
    let mut raced: Vec<Raced> = Vec::new();

    tokio::time::sleep(plan.warmup).await;
    println!(
        "faults: t={:>6.1}s  racing {RACED_PER_ROUND} keys in both datacenters",
        clock.secs()
    );
    raced.extend(race(stack, 1, seed, clock).await);

    // East dies at once, stays dead, comes back on the same disks.
    let east_down = kill_and_restore(stack, &watch, clock, EAST, plan.east_hold, deadline).await;
    println!(
        "faults: t={:>6.1}s  east-down {}",
        clock.secs(),
        east_down.error.as_deref().unwrap_or("healed")
    );
    phases.push(east_down);

    println!(
        "faults: t={:>6.1}s  racing {RACED_PER_ROUND} keys in both datacenters",
        clock.secs()
    );
    raced.extend(race(stack, 2, seed, clock).await);
    tokio::time::sleep(plan.settle).await;

    let mirror_kill =
        kill_and_restore(stack, &watch, clock, "mirror", plan.mirror_hold, deadline).await;
    println!(
        "faults: t={:>6.1}s  mirror-kill {}",
        clock.secs(),
        mirror_kill.error.as_deref().unwrap_or("healed")
    );
    phases.push(mirror_kill);

    let cooldown_end = (clock.secs() + COOLDOWN.as_secs_f64()).min(deadline);
    if cooldown_end > clock.secs() {
        tokio::time::sleep(Duration::from_secs_f64(cooldown_end - clock.secs())).await;
    }
    println!(
        "faults: t={:>6.1}s  load stops; clients finish what they have in hand",
        clock.secs()
    );
    load_stop.cancel();
    let load_secs = clock.secs() - load_started;
    // A phase that failed may have left something down: bring everything up before the drain.
    if phases.iter().any(|phase| phase.error.is_some()) {
        watch.lock().await.down.clear();
        if let Err(error) = stack.lock().await.run(&["up"]).await {
            println!("faults: restoring the datacenters failed: {error:#}");
        }
    }
    let mut workload = load.await??;
    for pair in &raced {
        workload.activities.extend(pair.sides.iter().cloned());
    }
    let load_stopped = clock.secs();
    println!(
        "faults: t={:>6.1}s  waiting for both datacenters to drain",
        clock.secs()
    );
    let drained = wait_for_drain(stack, clock, DRAIN_BUDGET).await;
    let drain_secs = clock.secs() - load_stopped;
    println!("faults: t={:>6.1}s  drained: {drained}", clock.secs());
    wait_for_live(stack, &live, Duration::from_secs(30)).await;
    end.cancel();
    watchdog.abort();

    let stack = stack.lock().await;
    let sabotaged = if options.sabotage {
        let done = sabotage(&stack, &raced).await?;
        println!("faults: sabotage (the checker must catch each):");
        for step in &done {
            println!("  - {step}");
        }
        true
    } else {
        false
    };
    println!("faults: t={:>6.1}s  checking", clock.secs());
    let east_windows: Vec<Window> = phases
        .iter()
        .filter(|phase| phase.label == "east-down")
        .map(|phase| Window {
            from: phase.started,
            to: phase.recovered,
        })
        .collect();
    let raced_keys: HashSet<(String, String)> = raced
        .iter()
        .map(|pair| (pair.tenant.to_owned(), pair.key.clone()))
        .collect();
    let mut checked: Vec<Checked> = Vec::new();
    let mut facts: Vec<HashMap<(String, String), DocFacts>> = Vec::new();
    for dc in DATACENTERS {
        let own: Vec<LiveClient> = live
            .iter()
            .filter(|client| client.api == stack.api(dc))
            .cloned()
            .collect();
        let inputs = checker::Inputs {
            workload: &workload,
            poison: &[],
            live: &own,
            api_down: &east_windows,
            conflicts: &raced_keys,
        };
        let mut found = checker::check(&stack.stores(dc), inputs).await?;
        if dc == WEST {
            // What only the ledger says (invalid requests, 503s) is counted once, with east.
            found.invalid_wrong_status = Violations::default();
            found.invalid_dropped = Violations::default();
            found.unavailable_without_retry_after = Violations::default();
        }
        checked.push(found);
        facts.push(read_facts(&stack.stores(dc)).await?);
    }
    let counters = [
        read_counters(&stack.stores(EAST)).await?,
        read_counters(&stack.stores(WEST)).await?,
    ];
    let across = compare_datacenters(&facts[0], &facts[1], &raced_keys, &counters);
    let conflicts = check_conflicts(
        &raced,
        [&facts[0], &facts[1]],
        [&checked[0].conflict_letters, &checked[1].conflict_letters],
    );
    let east_down = phases.iter().find(|phase| phase.label == "east-down");
    let rpo = east_down.map(|phase| {
        let arrivals: HashMap<(String, String), f64> = facts[index(WEST)]
            .iter()
            .map(|(key, fact)| (key.clone(), clock.secs_of_wall_millis(fact.created_ms)))
            .collect();
        rpo(
            &workload.activities,
            phase.started,
            phase.recovered,
            &arrivals,
        )
    });
    let rto = east_down.map(|phase| rto(&workload.post_samples, phase.started, phase.recovered));
    let disturbed: Vec<Window> = phases
        .iter()
        .map(|phase| Window {
            from: phase.started,
            to: phase.recovered,
        })
        .collect();
    let lag = replication_lag(&facts, clock, &disturbed);
    let mirrored = {
        let brokers = [stack.brokers(EAST), stack.brokers(WEST)];
        tokio::task::spawn_blocking(move || mirrored_duplicates(&brokers))
            .await?
            .map_err(|error| format!("{error:#}"))
    };
    let exits = watch.lock().await.exits.clone();
    let summary = DcSummary {
        command: command.to_owned(),
        seed,
        load_secs,
        total_secs: clock.secs(),
        rate: options.rate(),
        clients: options.clients,
        workload: &workload,
        phases: &phases,
        checked: &checked,
        across: &across,
        conflicts: &conflicts,
        raced: raced.len(),
        rpo,
        rto,
        lag,
        mirrored,
        drained,
        drain_secs,
        unexpected_exits: &exits,
        run_dir,
    };
    summary.print();
    summary.write_json(&run_dir.join("summary.json"))?;
    if sabotaged {
        let verdict = [
            ("west: lost", checked[1].lost.count),
            ("stored in one datacenter only", across.only_in_one.count),
            (
                "east: counter mismatches",
                checked[0].counter_mismatches.count,
            ),
            ("counters differ", across.counters_differ.count),
            ("payload differs", across.payload_differs.count),
            ("conflict rule", conflicts.violations.count),
        ];
        println!("faults: checker self-test:");
        for (check, count) in &verdict {
            println!(
                "  {check:<30} {}",
                if *count > 0 { "caught" } else { "MISSED" }
            );
        }
        let caught = verdict.iter().all(|(_, count)| *count > 0);
        println!(
            "faults: self-test {}",
            if caught {
                "PASS: every sabotage was caught"
            } else {
                "FAIL: the checker missed a sabotage"
            }
        );
        return Ok(caught);
    }
    Ok(summary.violations() == 0)
}

/// The checker's self-test for the datacenter drill (`--sabotage`): after the drain, damage the
/// stores the way a broken pipeline would, one datacenter at a time; every check named in the
/// verdict must then fire.
async fn sabotage(stack: &DcStack, raced: &[Raced]) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let collection = |dc: &str| {
        let uri = stack.stores(dc).mongo_uri;
        async move {
            anyhow::Ok(
                mongodb::Client::with_uri_str(&uri)
                    .await?
                    .database(DATABASE)
                    .collection::<Document>(COLLECTION),
            )
        }
    };
    // West loses an activity every datacenter acknowledged.
    let west = collection(WEST).await?;
    let victim = west
        .find_one(mongodb::bson::doc! {"idempotencyKey": {"$regex": "^k-"}})
        .await?
        .ok_or_else(|| anyhow::anyhow!("no keyed activity in west to delete"))?;
    let (tenant, key) = (
        victim.get_str("tenantId")?.to_owned(),
        victim.get_str("idempotencyKey")?.to_owned(),
    );
    west.delete_one(mongodb::bson::doc! {"tenantId": &tenant, "idempotencyKey": &key})
        .await?;
    done.push(format!("deleted {tenant}/{key} from west's store"));
    // East counts one activity twice.
    let mut redis = checker::redis(&stack.stores(EAST)).await?;
    let _: i64 = redis::cmd("HINCRBY")
        .arg(format!("analytics:{{{}}}", TENANTS[0].id))
        .arg("login")
        .arg(1)
        .query_async(&mut redis)
        .await?;
    done.push(format!(
        "added one to east's {}/login counter",
        TENANTS[0].id
    ));
    // West keeps the other body of a raced key.
    if let Some(pair) = raced.first() {
        west.update_one(
            mongodb::bson::doc! {"tenantId": pair.tenant, "idempotencyKey": &pair.key},
            mongodb::bson::doc! {"$set": {"payloadFingerprint": "0".repeat(32)}},
        )
        .await?;
        done.push(format!(
            "changed west's fingerprint of the raced key {}/{}",
            pair.tenant, pair.key
        ));
    }
    Ok(done)
}

/// Kills `what` (`east`, `west` or `mirror`) with `dc.sh kill`, holds, brings it back with `dc.sh
/// up` (ready once a probe of each datacenter is stored in the other).
async fn kill_and_restore(
    stack: &Mutex<DcStack>,
    watch: &Mutex<Watch>,
    clock: Clock,
    what: &'static str,
    hold: Duration,
    deadline: f64,
) -> Phase {
    let label = if what == "mirror" {
        "mirror-kill".to_owned()
    } else {
        format!("{what}-down")
    };
    let mut phase = Phase {
        label,
        started: clock.secs(),
        ..Phase::default()
    };
    // The restart alone takes most of a minute: no room left for it means not to start.
    if clock.secs() + hold.as_secs_f64() + 60.0 > deadline {
        phase.error = Some("not run: the load's duration was over".to_owned());
        phase.recovered = phase.started;
        return phase;
    }
    println!("faults: t={:>6.1}s  {} ...", clock.secs(), phase.label);
    watch.lock().await.down.insert(if what == "mirror" {
        "mirrormaker"
    } else {
        what
    });
    let result = async {
        // The window starts when the kill is issued: an acknowledgement after this instant may
        // already be from a datacenter about to die, and none comes after it.
        let mut stack_now = stack.lock().await;
        phase.started = clock.secs();
        stack_now.run(&["kill", what]).await?;
        drop(stack_now);
        phase.notes.push(format!(
            "SIGKILL of {} at t={:.1}s (issued; done {:.1} s later)",
            if what == "mirror" {
                "MirrorMaker 2".to_owned()
            } else {
                format!("every {what} process (Kafka, FerretDB, Redis, produce, consume)")
            },
            phase.started,
            clock.secs() - phase.started
        ));
        tokio::time::sleep(hold).await;
        let restart = clock.secs();
        stack.lock().await.run(&["up"]).await?;
        phase.notes.push(format!(
            "restarted at +{:.1} s (same disks); ready (a probe of each datacenter stored in the other) {:.1} s later",
            restart - phase.started,
            clock.secs() - restart
        ));
        anyhow::Ok(())
    }
    .await;
    watch.lock().await.down.clear();
    phase.recovered = clock.secs();
    phase.error = result.err().map(|error| format!("{error:#}"));
    phase
}

/// Records not yet committed by `group` in `topic` (every partition).
fn group_lag(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<i64> {
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10))?;
    let mut lag = 0;
    for element in committed.elements() {
        let (low, high) =
            consumer.fetch_watermarks(topic, element.partition(), Duration::from_secs(10))?;
        let position = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => low,
        };
        lag += (high - position).max(0);
    }
    Ok(lag)
}

/// A datacenter's consumer lag: its own topic and the mirrored one (the main group), and the retry
/// topics (their groups).
fn datacenter_lag(brokers: &str, dc: &str) -> anyhow::Result<i64> {
    let mirrored = format!("{}.{TOPIC}", other(dc));
    let mut stages = vec![
        (TOPIC.to_owned(), GROUP.to_owned()),
        (mirrored, GROUP.to_owned()),
    ];
    for (step, topic) in RETRY_TOPICS.iter().enumerate() {
        stages.push(((*topic).to_owned(), format!("{GROUP}.retry.{}", step + 1)));
    }
    let mut total = 0;
    for (topic, group) in stages {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", &group)
            .set("log_level", "3")
            .create()?;
        total += group_lag(&consumer, &topic)?;
    }
    Ok(total)
}

/// Stored documents (probes included) and the sum of the counters of one datacenter.
async fn store_and_counters(stores: &Stores) -> anyhow::Result<(i64, i64)> {
    let client = mongodb::Client::with_uri_str(&stores.mongo_uri).await?;
    let stored = client
        .database(DATABASE)
        .collection::<Document>(COLLECTION)
        .count_documents(mongodb::bson::doc! {})
        .await? as i64;
    let mut connection = checker::redis(stores).await?;
    let mut counted = 0;
    for tenant in TENANTS {
        counted += checker::counters(&mut connection, tenant.id)
            .await?
            .values()
            .sum::<i64>();
    }
    Ok((stored, counted))
}

/// Waits until, in both datacenters, the consumers committed everything, the counters add up to
/// the store, and both stores hold as many documents (twice in a row), or `within` passes.
async fn wait_for_drain(stack: &Mutex<DcStack>, clock: Clock, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut calm = 0;
    let mut last_print = tokio::time::Instant::now();
    while tokio::time::Instant::now() < deadline {
        let mut states = Vec::new();
        for dc in DATACENTERS {
            let (brokers, stores) = {
                let stack = stack.lock().await;
                (stack.brokers(dc), stack.stores(dc))
            };
            let lag = tokio::task::spawn_blocking(move || datacenter_lag(&brokers, dc))
                .await
                .ok()
                .and_then(Result::ok);
            let balance = if lag == Some(0) {
                store_and_counters(&stores).await.ok()
            } else {
                None
            };
            states.push((lag, balance));
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = tokio::time::Instant::now();
            println!(
                "faults: t={:>6.1}s  draining: east lag {:?} (stored, counted) {:?}; west lag {:?} (stored, counted) {:?}",
                clock.secs(),
                states[0].0,
                states[0].1,
                states[1].0,
                states[1].1
            );
        }
        let settled = match (states[0].1, states[1].1) {
            (Some((east_stored, east_counted)), Some((west_stored, west_counted))) => {
                east_stored == east_counted
                    && west_stored == west_counted
                    && east_stored == west_stored
            }
            _ => false,
        };
        calm = if settled { calm + 1 } else { 0 };
        if calm >= 2 {
            return true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    false
}

/// Gives each datacenter's live clients time to receive that datacenter's last events.
async fn wait_for_live(stack: &Mutex<DcStack>, live: &[LiveClient], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let mut complete = true;
        for dc in DATACENTERS {
            let (stores, api) = {
                let stack = stack.lock().await;
                (stack.stores(dc), stack.api(dc))
            };
            let Ok(stored) = checker::read_ids(&stores).await else {
                complete = false;
                continue;
            };
            complete &= live
                .iter()
                .filter(|client| client.api == api)
                .all(|client| {
                    let seen = client.seen.lock().expect("seen");
                    stored
                        .iter()
                        .filter(|(tenant, _)| tenant == client.tenant.id)
                        .all(|(_, id)| seen.ids.contains(id))
                });
        }
        if complete {
            return;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// What the cross-datacenter checks need of a stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct DocFacts {
    pub fingerprint: Option<String>,
    pub origin: Option<String>,
    pub enqueued_ms: i64,
    pub created_ms: i64,
    pub actor_id: String,
    pub activity_type: String,
}

/// The facts of every stored activity of one datacenter by (tenant, key), probes left out.
async fn read_facts(stores: &Stores) -> anyhow::Result<HashMap<(String, String), DocFacts>> {
    let documents = checker::read_activities(stores).await?;
    let mut facts = HashMap::new();
    for document in documents {
        let key = document.get_str("idempotencyKey").unwrap_or_default();
        if checker::is_probe(key) {
            continue;
        }
        let millis = |field: &str| {
            document
                .get_datetime(field)
                .map(|at| at.timestamp_millis())
                .unwrap_or_default()
        };
        facts.insert(
            (
                document.get_str("tenantId").unwrap_or_default().to_owned(),
                key.to_owned(),
            ),
            DocFacts {
                fingerprint: document
                    .get_str("payloadFingerprint")
                    .ok()
                    .map(str::to_owned),
                origin: document.get_str("originDc").ok().map(str::to_owned),
                enqueued_ms: millis("enqueuedAt"),
                created_ms: millis("createdAt"),
                actor_id: document.get_str("actorId").unwrap_or_default().to_owned(),
                activity_type: document.get_str("type").unwrap_or_default().to_owned(),
            },
        );
    }
    Ok(facts)
}

type Counters = BTreeMap<(String, String), i64>;

async fn read_counters(stores: &Stores) -> anyhow::Result<Counters> {
    let mut connection = checker::redis(stores).await?;
    let mut counters = BTreeMap::new();
    for tenant in TENANTS {
        for (kind, count) in checker::counters(&mut connection, tenant.id).await? {
            counters.insert((tenant.id.to_owned(), kind), count);
        }
    }
    Ok(counters)
}

/// How the two datacenters compare.
#[derive(Debug, Default)]
pub struct AcrossDatacenters {
    /// Keys stored in one datacenter only.
    pub only_in_one: Violations,
    /// Keys stored in both with different payloads (fingerprints).
    pub payload_differs: Violations,
    /// Raced keys whose stored documents name different origins or acceptance times.
    pub raced_differs: Violations,
    /// Per tenant and type, counters that differ between the datacenters.
    pub counters_differ: Violations,
    /// Keys stored in both with the same payload but another origin or acceptance time: a key a
    /// client resent to the other datacenter after no answer, accepted by both (see the report).
    pub same_payload_other_origin: usize,
    pub examples_other_origin: Vec<String>,
}

impl AcrossDatacenters {
    pub fn checks(&self) -> Vec<(&'static str, &Violations)> {
        vec![
            ("stored in one datacenter only", &self.only_in_one),
            ("payload differs between datacenters", &self.payload_differs),
            ("raced key stored differently", &self.raced_differs),
            ("counters differ between datacenters", &self.counters_differ),
        ]
    }
}

/// Holds the two datacenters' stores and counters to each other.
pub fn compare_datacenters(
    east: &HashMap<(String, String), DocFacts>,
    west: &HashMap<(String, String), DocFacts>,
    raced: &HashSet<(String, String)>,
    counters: &[Counters; 2],
) -> AcrossDatacenters {
    let mut across = AcrossDatacenters::default();
    let mut keys: Vec<&(String, String)> = east.keys().chain(west.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let name = format!("{}/{}", key.0, key.1);
        let (Some(in_east), Some(in_west)) = (east.get(key), west.get(key)) else {
            across.only_in_one.add(format!(
                "{name}: stored in {} only",
                if east.contains_key(key) { EAST } else { WEST }
            ));
            continue;
        };
        if in_east.fingerprint != in_west.fingerprint {
            across.payload_differs.add(format!(
                "{name}: east {:?} ({:?}, {}), west {:?} ({:?}, {})",
                in_east.fingerprint,
                in_east.origin,
                in_east.activity_type,
                in_west.fingerprint,
                in_west.origin,
                in_west.activity_type
            ));
            continue;
        }
        let same_acceptance =
            in_east.origin == in_west.origin && in_east.enqueued_ms == in_west.enqueued_ms;
        if same_acceptance {
            continue;
        }
        if raced.contains(key) {
            across.raced_differs.add(format!(
                "{name}: east from {:?} at {}, west from {:?} at {}",
                in_east.origin, in_east.enqueued_ms, in_west.origin, in_west.enqueued_ms
            ));
        } else {
            across.same_payload_other_origin += 1;
            if across.examples_other_origin.len() < 3 {
                across.examples_other_origin.push(format!(
                    "{name}: east keeps {}'s acceptance, west {}'s",
                    in_east.origin.as_deref().unwrap_or("-"),
                    in_west.origin.as_deref().unwrap_or("-")
                ));
            }
        }
    }
    let mut kinds: Vec<&(String, String)> = counters[0].keys().chain(counters[1].keys()).collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        let (in_east, in_west) = (
            counters[0].get(kind).copied().unwrap_or(0),
            counters[1].get(kind).copied().unwrap_or(0),
        );
        if in_east != in_west {
            across.counters_differ.add(format!(
                "{}/{}: east counts {in_east}, west {in_west}",
                kind.0, kind.1
            ));
        }
    }
    across
}

/// The conflict rule on the raced keys.
#[derive(Debug, Default)]
pub struct ConflictCheck {
    /// Raced keys both datacenters accepted (202 from each).
    pub contested: usize,
    /// Of those, won by east's body and by west's.
    pub won: [usize; 2],
    /// Raced keys only one datacenter accepted (no rank to check).
    pub uncontested: usize,
    /// Conflict dead letters beyond one per contested key and datacenter: the loser delivered
    /// again (MirrorMaker 2 copies at least once) and dead-lettered again.
    pub repeated_letters: usize,
    pub violations: Violations,
}

/// The rank of the conflict rule: the smaller wins.
type Rank = (i64, String, String);

/// Each contested key: stored in both datacenters as the same body, the one its `originDc`
/// accepted; the other body a `conflict` dead letter in each datacenter (at least once: a
/// redelivered loser is dead-lettered again; never the winner's body); and the stored one the
/// smaller by (enqueuedAt in ms, originDc, payloadFingerprint).
pub fn check_conflicts(
    raced: &[Raced],
    facts: [&HashMap<(String, String), DocFacts>; 2],
    letters: [&[ConflictLetter]; 2],
) -> ConflictCheck {
    let mut check = ConflictCheck::default();
    for pair in raced {
        let name = format!("{}/{}", pair.tenant, pair.key);
        let key = (pair.tenant.to_owned(), pair.key.clone());
        if !pair.sides.iter().all(|side| side.outcome == Outcome::Acked) {
            check.uncontested += 1;
            continue;
        }
        check.contested += 1;
        let (Some(east), Some(west)) = (facts[0].get(&key), facts[1].get(&key)) else {
            check
                .violations
                .add(format!("{name}: not stored in both datacenters"));
            continue;
        };
        if east.fingerprint != west.fingerprint || east.origin != west.origin {
            check.violations.add(format!(
                "{name}: east stores {:?}'s body ({:?}), west {:?}'s ({:?})",
                east.origin, east.fingerprint, west.origin, west.fingerprint
            ));
            continue;
        }
        let Some(winner) = east
            .origin
            .as_deref()
            .and_then(|origin| DATACENTERS.iter().position(|dc| *dc == origin))
        else {
            check.violations.add(format!(
                "{name}: stored without a known originDc ({:?})",
                east.origin
            ));
            continue;
        };
        let stored_body = &pair.sides[winner].body;
        if stored_body["actorId"].as_str() != Some(east.actor_id.as_str())
            || stored_body["type"].as_str() != Some(east.activity_type.as_str())
        {
            check.violations.add(format!(
                "{name}: stored as accepted in {} but with another body ({} {})",
                DATACENTERS[winner], east.actor_id, east.activity_type
            ));
            continue;
        }
        check.won[winner] += 1;
        let loser = &pair.sides[1 - winner].body;
        let winner_rank: Rank = (
            east.enqueued_ms,
            DATACENTERS[winner].to_owned(),
            east.fingerprint.clone().unwrap_or_default(),
        );
        for (at, dc) in DATACENTERS.iter().enumerate() {
            let of_key: Vec<&ConflictLetter> = letters[at]
                .iter()
                .filter(|letter| letter.tenant == pair.tenant && letter.key == pair.key)
                .collect();
            let Some(letter) = of_key.first() else {
                check.violations.add(format!(
                    "{name}: no conflict dead letter in {dc}'s DLQ (expected the loser)"
                ));
                continue;
            };
            check.repeated_letters += of_key.len() - 1;
            if let Some(other) = of_key.iter().find(|letter| {
                letter.activity["actorId"] != loser["actorId"]
                    || letter.activity["type"] != loser["type"]
            }) {
                check.violations.add(format!(
                    "{name}: a conflict dead letter in {dc}'s DLQ holds {} {}, not the loser's body",
                    other.activity["actorId"], other.activity["type"]
                ));
                continue;
            }
            let Some(loser_at) = letter.enqueued_at_millis else {
                check.violations.add(format!(
                    "{name}: {dc}'s conflict dead letter has no enqueuedAt to rank"
                ));
                continue;
            };
            let loser_rank: Rank = (
                loser_at,
                letter
                    .accepted_dc
                    .clone()
                    .unwrap_or_else(|| DATACENTERS[1 - winner].to_owned()),
                letter.fingerprint.clone().unwrap_or_default(),
            );
            if winner_rank >= loser_rank {
                check.violations.add(format!(
                    "{name}: {dc} stores {winner_rank:?}, not smaller than the dead-lettered {loser_rank:?}"
                ));
            }
        }
    }
    check
}

/// The RPO window of east's death.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rpo {
    /// Activities east acknowledged (first 202) before it died.
    pub acked_by_east: usize,
    /// Of those, not in west's store when east died.
    pub at_risk: usize,
    /// Of those, stored in west while east was still down (mirrored before the kill).
    pub arrived_while_down: usize,
    /// ... after east was back.
    pub arrived_after_back: usize,
    /// ... never (a loss: also a `lost` violation in west).
    pub never: usize,
    /// The longest time from the kill until one arrived in west, in seconds.
    pub max_after_kill: Option<f64>,
    /// The longest time from east's return until one arrived in west.
    pub max_after_back: Option<f64>,
}

/// From the ledger (first 202 and its datacenter) and when each key was stored in west
/// (run-clock seconds).
pub fn rpo(
    activities: &[SentActivity],
    killed_at: f64,
    back_at: f64,
    west_arrivals: &HashMap<(String, String), f64>,
) -> Rpo {
    let mut report = Rpo::default();
    for activity in activities {
        let (Some(key), Some(acked_at), Some(EAST)) =
            (&activity.key, activity.acked_at, activity.acked_dc)
        else {
            continue;
        };
        if activity.outcome != Outcome::Acked || acked_at > killed_at {
            continue;
        }
        report.acked_by_east += 1;
        let arrival = west_arrivals
            .get(&(activity.tenant.to_owned(), key.clone()))
            .copied();
        match arrival {
            Some(at) if at <= killed_at => continue,
            Some(at) => {
                report.at_risk += 1;
                if at <= back_at {
                    report.arrived_while_down += 1;
                } else {
                    report.arrived_after_back += 1;
                    report.max_after_back =
                        Some(report.max_after_back.unwrap_or(0.0).max(at - back_at));
                }
                report.max_after_kill =
                    Some(report.max_after_kill.unwrap_or(0.0).max(at - killed_at));
            }
            None => {
                report.at_risk += 1;
                report.never += 1;
            }
        }
    }
    report
}

/// The RTO of east's death: how long east's clients took to get a 202 from west.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rto {
    /// Clients that sent to east before it died.
    pub clients: usize,
    /// Of those, clients that got a 202 from west while east was down.
    pub recovered: usize,
    /// From the kill to the first and to the last of those first 202s, in seconds.
    pub first_secs: Option<f64>,
    pub last_secs: Option<f64>,
    /// Of those clients, how many got a 202 from east again after it was back (they returned).
    pub returned: usize,
}

pub fn rto(samples: &[PostSample], killed_at: f64, back_at: f64) -> Rto {
    let east_clients: HashSet<usize> = samples
        .iter()
        .filter(|sample| sample.dc == Some(EAST) && sample.at < killed_at)
        .map(|sample| sample.client)
        .collect();
    let mut firsts: HashMap<usize, f64> = HashMap::new();
    for sample in samples {
        if sample.dc != Some(WEST)
            || sample.answer != "202"
            || !east_clients.contains(&sample.client)
            || sample.at < killed_at
            || sample.at > back_at
        {
            continue;
        }
        let answered = sample.at + sample.secs - killed_at;
        let first = firsts.entry(sample.client).or_insert(answered);
        *first = first.min(answered);
    }
    let times: Vec<f64> = firsts.values().copied().collect();
    let returned: HashSet<usize> = samples
        .iter()
        .filter(|sample| {
            sample.dc == Some(EAST)
                && sample.answer == "202"
                && sample.at > back_at
                && east_clients.contains(&sample.client)
        })
        .map(|sample| sample.client)
        .collect();
    Rto {
        clients: east_clients.len(),
        recovered: times.len(),
        first_secs: times.iter().copied().reduce(f64::min),
        last_secs: times.iter().copied().reduce(f64::max),
        returned: returned.len(),
    }
}

/// Replication lag: for each document stored in a datacenter other than the one that accepted
/// it, its `createdAt` there minus its `enqueuedAt`, in seconds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Lag {
    /// Accepted outside the drill's phases (each widened by 2 s).
    pub steady: Vec<f64>,
    /// Accepted during a phase (east dead, MirrorMaker 2 dead).
    pub disturbed: Vec<f64>,
}

impl Lag {
    /// (count, p50, p99, max) of `values`.
    pub fn summary(values: &[f64]) -> Option<(usize, f64, f64, f64)> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |quantile: f64| {
            let at = ((sorted.len() as f64) * quantile).ceil() as usize;
            sorted[at.clamp(1, sorted.len()) - 1]
        };
        (!sorted.is_empty()).then(|| {
            (
                sorted.len(),
                rank(0.5),
                rank(0.99),
                sorted[sorted.len() - 1],
            )
        })
    }
}

pub fn replication_lag(
    facts: &[HashMap<(String, String), DocFacts>],
    clock: Clock,
    disturbed: &[Window],
) -> Lag {
    let mut lag = Lag::default();
    for (at, dc) in DATACENTERS.iter().enumerate() {
        for fact in facts[at].values() {
            if fact.origin.as_deref().is_none_or(|origin| origin == *dc) {
                continue;
            }
            let secs = (fact.created_ms - fact.enqueued_ms) as f64 / 1000.0;
            let accepted = clock.secs_of_wall_millis(fact.enqueued_ms);
            if disturbed
                .iter()
                .any(|window| window.contains(accepted, 2.0))
            {
                lag.disturbed.push(secs);
            } else {
                lag.steady.push(secs);
            }
        }
    }
    lag
}

/// MirrorMaker 2's at-least-once copies: per direction, records of the mirrored topic whose
/// idempotency key appears more often there than in the source topic.
#[derive(Debug, Clone, Default)]
pub struct Mirrored {
    /// (direction, records in the source, records in the copy, extra copies).
    pub directions: Vec<(String, usize, usize, usize)>,
}

fn mirrored_duplicates(brokers: &[String; 2]) -> anyhow::Result<Mirrored> {
    let mut mirrored = Mirrored::default();
    for (from, to) in [(0, 1), (1, 0)] {
        let source = count_keys(&brokers[from], TOPIC)?;
        let copy = count_keys(&brokers[to], &format!("{}.{TOPIC}", DATACENTERS[from]))?;
        let extra = copy
            .iter()
            .map(|(key, count)| count.saturating_sub(source.get(key).copied().unwrap_or(0)))
            .sum();
        mirrored.directions.push((
            format!("{} -> {}", DATACENTERS[from], DATACENTERS[to]),
            source.values().sum(),
            copy.values().sum(),
            extra,
        ));
    }
    Ok(mirrored)
}

/// Records of `topic` by (message key, idempotency-key header).
fn count_keys(brokers: &str, topic: &str) -> anyhow::Result<HashMap<String, usize>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "dc-drill-checker")
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for partition in 0..PARTITIONS {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
            remaining.insert(partition, high);
        }
    }
    let mut counts = HashMap::new();
    if remaining.is_empty() {
        return Ok(counts);
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let header = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == "idempotency-key")
                .and_then(|header| header.value)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        });
        let tenant = message
            .key()
            .map(|key| String::from_utf8_lossy(key).into_owned());
        *counts.entry(format!("{tenant:?}/{header:?}")).or_insert(0) += 1;
        if let Some(high) = remaining.get(&message.partition()) {
            if message.offset() + 1 >= *high {
                remaining.remove(&message.partition());
            }
        }
    }
    anyhow::ensure!(remaining.is_empty(), "reading {topic} timed out");
    Ok(counts)
}

/// The drill's summary, in the form of the suite's.
pub struct DcSummary<'a> {
    pub command: String,
    pub seed: u64,
    pub load_secs: f64,
    pub total_secs: f64,
    pub rate: u32,
    pub clients: usize,
    pub workload: &'a WorkloadReport,
    pub phases: &'a [Phase],
    /// East's, then west's.
    pub checked: &'a [Checked],
    pub across: &'a AcrossDatacenters,
    pub conflicts: &'a ConflictCheck,
    pub raced: usize,
    pub rpo: Option<Rpo>,
    pub rto: Option<Rto>,
    pub lag: Lag,
    pub mirrored: Result<Mirrored, String>,
    pub drained: bool,
    pub drain_secs: f64,
    pub unexpected_exits: &'a [UnexpectedExit],
    pub run_dir: &'a Path,
}

impl DcSummary<'_> {
    /// Every check that can fail the run, with the datacenter it is about.
    fn all_checks(&self) -> Vec<(String, &Violations)> {
        let mut all = Vec::new();
        for (at, checked) in self.checked.iter().enumerate() {
            for (name, found) in checked.checks() {
                all.push((format!("{}: {name}", DATACENTERS[at]), found));
            }
        }
        for (name, found) in self.across.checks() {
            all.push((name.to_owned(), found));
        }
        all.push(("conflict rule".to_owned(), &self.conflicts.violations));
        all
    }

    fn harness_errors(&self) -> Vec<String> {
        let mut errors: Vec<String> = self
            .phases
            .iter()
            .filter_map(|phase| {
                phase
                    .error
                    .as_ref()
                    .map(|error| format!("{} at t={:.1}s: {error}", phase.label, phase.started))
            })
            .collect();
        if let Err(error) = &self.mirrored {
            errors.push(format!("reading the mirrored topics: {error}"));
        }
        errors
    }

    pub fn violations(&self) -> usize {
        self.all_checks()
            .iter()
            .map(|(_, found)| found.count)
            .sum::<usize>()
            + self.workload.unexpected.len()
            + self.unexpected_exits.len()
            + self.harness_errors().len()
            + usize::from(!self.drained)
    }

    pub fn print(&self) {
        let workload = self.workload;
        let line = |name: &str, value: String| println!("  {name:<34} {value}");
        let count = |outcome: &Outcome| {
            workload
                .activities
                .iter()
                .filter(|activity| &activity.outcome == outcome)
                .count()
        };
        let answers: Vec<String> = workload
            .answers
            .iter()
            .map(|(answer, count)| format!("{answer}={count}"))
            .collect();
        let by_dc = |dc: &str| {
            workload
                .activities
                .iter()
                .filter(|activity| activity.acked_dc == Some(dc))
                .count()
        };
        println!();
        println!("==== dc drill: summary ====");
        line("command", self.command.clone());
        line(
            "seed / profile / load",
            format!(
                "{} / dc-drill / {:.0} s at {} req/s from {} clients, half homed in each datacenter (whole run {:.0} s)",
                self.seed, self.load_secs, self.rate, self.clients, self.total_secs
            ),
        );
        line(
            "requests sent",
            format!("{} ({})", workload.requests, answers.join(", ")),
        );
        line(
            "activities",
            format!(
                "{} (202: {} (first from east {}, from west {}), never answered: {}; in batches {}, batches {})",
                workload.activities.len(),
                count(&Outcome::Acked),
                by_dc(EAST),
                by_dc(WEST),
                count(&Outcome::Unanswered),
                workload.activities.iter().filter(|activity| activity.batched).count(),
                workload.batches
            ),
        );
        line(
            "client retries with the same key",
            format!(
                "{} after no answer/503 (failed over to the other datacenter {} times), {} re-sends after a 202, {} concurrent pairs; {} answered duplicate:true",
                workload.same_key_retries,
                workload.failovers,
                workload.resends_after_ack,
                workload.concurrent_sends,
                workload.duplicate_answers
            ),
        );
        line(
            "invalid requests",
            format!(
                "{} ({} with a wrong status)",
                workload.invalid.len(),
                self.checked
                    .first()
                    .map_or(0, |checked| checked.invalid_wrong_status.count)
            ),
        );
        println!("  phases:");
        for phase in self.phases {
            println!(
                "    {:<12} {}",
                phase.label,
                match &phase.error {
                    None => format!("healed {:>5.1} s", phase.recovered - phase.started),
                    Some(error) => format!("FAILED: {error}"),
                }
            );
            for note in &phase.notes {
                println!("      {note}");
            }
        }
        match &self.rpo {
            Some(rpo) => line(
                "RPO (east's death)",
                format!(
                    "{} acknowledged by east before the kill, {} of them not yet in west; {} arrived while east was down, {} after it was back, {} never; the last {} after the kill{}",
                    rpo.acked_by_east,
                    rpo.at_risk,
                    rpo.arrived_while_down,
                    rpo.arrived_after_back,
                    rpo.never,
                    secs(rpo.max_after_kill),
                    rpo.max_after_back.map_or_else(String::new, |after| format!(
                        " ({after:.1} s after east was back)"
                    ))
                ),
            ),
            None => line("RPO (east's death)", "east was not killed".to_owned()),
        }
        if let Some(rto) = &self.rto {
            line(
                "RTO (east's clients to west)",
                format!(
                    "{} of {} clients of east got a 202 from west while east was down: the first {} after the kill, the last {}; {} returned to east after it was back",
                    rto.recovered,
                    rto.clients,
                    secs(rto.first_secs),
                    secs(rto.last_secs),
                    rto.returned
                ),
            );
        }
        let lag = |values: &[f64]| match Lag::summary(values) {
            Some((count, p50, p99, max)) => {
                format!("p50 {p50:.2} s, p99 {p99:.2} s, max {max:.2} s over {count} documents")
            }
            None => "no documents".to_owned(),
        };
        line(
            "replication lag",
            "from the 202 in one datacenter to the document in the other (mirror + consumer)"
                .to_owned(),
        );
        line("  steady", lag(&self.lag.steady));
        line(
            "  accepted during a phase",
            format!(
                "{} (includes what waited for east's return or MirrorMaker 2's restart)",
                lag(&self.lag.disturbed)
            ),
        );
        match &self.mirrored {
            Ok(mirrored) => {
                for (direction, source, copy, extra) in &mirrored.directions {
                    line(
                        &format!("mirrored {direction}"),
                        format!(
                            "{copy} records for {source} in the source: {extra} extra copies (at-least-once)"
                        ),
                    );
                }
            }
            Err(error) => line("mirrored topics", format!("not read: {error}")),
        }
        line(
            "raced keys (conflict rule)",
            format!(
                "{} raced, {} accepted by both: east's body won {}, west's {}; {} accepted by one only; {} conflict dead letters repeated (the loser redelivered)",
                self.raced,
                self.conflicts.contested,
                self.conflicts.won[0],
                self.conflicts.won[1],
                self.conflicts.uncontested,
                self.conflicts.repeated_letters
            ),
        );
        for (at, checked) in self.checked.iter().enumerate() {
            line(
                DATACENTERS[at],
                format!(
                    "stored {} (+{} probes; {} never answered), lost {}, duplicated {}, counter mismatches {}, DLQ {} ({} conflict), live events {} received, {} missed, {} leaks",
                    checked.stored,
                    checked.probes,
                    checked.stored_unanswered,
                    checked.lost.count,
                    checked.duplicated.count,
                    checked.counter_mismatches.count,
                    checked.dlq_entries,
                    checked.conflict_letters.len(),
                    checked.live_events,
                    checked.live_missed.count,
                    checked.live_leaks.count
                ),
            );
        }
        line(
            "between the datacenters",
            format!(
                "{} keys in one only, {} with another payload, counters differ {}; {} keys with the same payload from another origin (resent after no answer)",
                self.across.only_in_one.count,
                self.across.payload_differs.count,
                self.across.counters_differ.count,
                self.across.same_payload_other_origin
            ),
        );
        line(
            "time to drain after the load",
            if self.drained {
                format!("{:.1} s", self.drain_secs)
            } else {
                format!("did not drain within {:.0} s", self.drain_secs)
            },
        );
        line(
            "unexpected process exits",
            self.unexpected_exits.len().to_string(),
        );
        let violations = self.violations();
        line(
            "violations",
            format!(
                "{violations} -> {}",
                if violations == 0 { "PASS" } else { "FAIL" }
            ),
        );
        if violations > 0 {
            println!();
            println!("  violations:");
            for (name, found) in self.all_checks() {
                if found.count > 0 {
                    println!("    {name}: {}", found.count);
                    for example in &found.examples {
                        println!("      - {example}");
                    }
                }
            }
            for example in workload.unexpected.iter().take(8) {
                println!("    unexpected answer: {example}");
            }
            for exit in self.unexpected_exits {
                println!(
                    "    {} exited on its own at t={:.1}s ({}); last lines:\n{}",
                    exit.role, exit.at_secs, exit.status, exit.log_tail
                );
            }
            for error in self.harness_errors() {
                println!("    harness: {error}");
            }
            if !self.drained {
                println!("    the datacenters did not drain (lag, counters or store counts never settled)");
            }
        }
        if !self.across.examples_other_origin.is_empty() {
            println!("  same payload, another origin (e.g.):");
            for example in &self.across.examples_other_origin {
                println!("    {example}");
            }
        }
        println!(
            "  logs, stack data and summary.json: {}",
            self.run_dir.display()
        );
        println!();
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let checks: serde_json::Map<String, Value> = self
            .all_checks()
            .into_iter()
            .map(|(name, found)| {
                (
                    name,
                    json!({"count": found.count, "examples": found.examples}),
                )
            })
            .collect();
        let phases: Vec<Value> = self
            .phases
            .iter()
            .map(|phase| {
                json!({"phase": phase.label, "started": phase.started, "recovered": phase.recovered, "error": phase.error, "notes": phase.notes})
            })
            .collect();
        let summary = json!({
            "command": self.command,
            "seed": self.seed,
            "profile": "dc-drill",
            "loadSecs": self.load_secs,
            "totalSecs": self.total_secs,
            "requests": self.workload.requests,
            "answers": self.workload.answers,
            "activities": self.workload.activities.len(),
            "acked": self.workload.acked(),
            "failovers": self.workload.failovers,
            "phases": phases,
            "rpo": self.rpo.as_ref().map(|rpo| json!({
                "ackedByEast": rpo.acked_by_east, "atRisk": rpo.at_risk,
                "arrivedWhileDown": rpo.arrived_while_down, "arrivedAfterBack": rpo.arrived_after_back,
                "never": rpo.never, "maxAfterKillSecs": rpo.max_after_kill, "maxAfterBackSecs": rpo.max_after_back,
            })),
            "rto": self.rto.as_ref().map(|rto| json!({
                "clients": rto.clients, "recovered": rto.recovered,
                "firstSecs": rto.first_secs, "lastSecs": rto.last_secs, "returned": rto.returned,
            })),
            "lagSteady": Lag::summary(&self.lag.steady),
            "lagDisturbed": Lag::summary(&self.lag.disturbed),
            "mirrored": self.mirrored.as_ref().ok().map(|mirrored| mirrored.directions.clone()),
            "raced": self.raced,
            "contested": self.conflicts.contested,
            "stored": self.checked.iter().map(|checked| checked.stored).collect::<Vec<_>>(),
            "samePayloadOtherOrigin": self.across.same_payload_other_origin,
            "drained": self.drained,
            "drainSecs": self.drain_secs,
            "unexpectedExits": self.unexpected_exits.len(),
            "unexpectedAnswers": self.workload.unexpected,
            "checks": checks,
            "violations": self.violations(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)?;
        Ok(())
    }
}

fn secs(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |secs| format!("{secs:.1} s"))
}

/// The pure parts, run by `--self-checks` and at the start of every run.
pub mod checks {
    use super::*;

    fn activity(key: &str, acked: Option<(f64, &'static str)>) -> SentActivity {
        SentActivity {
            tenant: "acme",
            key: Some(key.to_owned()),
            nonce: key.to_owned(),
            body: json!({"actorId": "u", "type": "t"}),
            outcome: if acked.is_some() {
                Outcome::Acked
            } else {
                Outcome::Unanswered
            },
            posts: 1,
            batched: false,
            acked_at: acked.map(|(at, _)| at),
            acked_dc: acked.map(|(_, dc)| dc),
            conflict: false,
        }
    }

    fn fact(origin: &str, fingerprint: &str, enqueued_ms: i64, created_ms: i64) -> DocFacts {
        DocFacts {
            fingerprint: Some(fingerprint.to_owned()),
            origin: Some(origin.to_owned()),
            enqueued_ms,
            created_ms,
            actor_id: format!("racer-{origin}"),
            activity_type: format!("race.{origin}"),
        }
    }

    fn key(name: &str) -> (String, String) {
        ("acme".to_owned(), name.to_owned())
    }

    pub fn offsets_keep_ports_clear() {
        assert_eq!(dc_ports(0).len(), 12);
        assert!(!offset_is_clear(0), "the default profile's own ports");
        assert!(
            !offset_is_clear(1000),
            "east's API would take the default east consumer's metrics port 9581"
        );
        let clear: Vec<u16> = OFFSET_CANDIDATES
            .map(|step| step * OFFSET_STEP)
            .filter(|offset| offset_is_clear(*offset))
            .collect();
        assert!(clear.len() >= 10, "enough candidates: {clear:?}");
        for offset in clear {
            for port in dc_ports(offset) {
                assert!(
                    (1025..32768).contains(&port),
                    "offset {offset}: port {port}"
                );
                assert!(!SHARED_PORTS.contains(&port) && !dc_ports(0).contains(&port));
            }
        }
    }

    pub fn plan_is_seeded() {
        assert_eq!(plan(7), plan(7), "the same seed, the same plan");
        assert_ne!(plan(7), plan(8), "another seed, other timings");
        for seed in 0..50 {
            let plan = plan(seed);
            assert!(plan.east_hold >= Duration::from_secs(15));
            assert!(
                plan.warmup + plan.east_hold + plan.settle + plan.mirror_hold
                    < Duration::from_secs(75)
            );
        }
    }

    pub fn rpo_counts_the_window() {
        let activities = vec![
            activity("in-west-before", Some((5.0, EAST))),
            activity("mirrored-while-down", Some((9.0, EAST))),
            activity("after-back", Some((9.5, EAST))),
            activity("never", Some((9.8, EAST))),
            activity("acked-by-west", Some((9.0, WEST))),
            activity("acked-after-kill", Some((12.0, EAST))),
            activity("unanswered", None),
        ];
        let arrivals = HashMap::from([
            (key("in-west-before"), 6.0),
            (key("mirrored-while-down"), 11.0),
            (key("after-back"), 40.0),
            (key("acked-by-west"), 9.1),
            (key("acked-after-kill"), 35.0),
        ]);
        let report = rpo(&activities, 10.0, 30.0, &arrivals);
        assert_eq!(
            report,
            Rpo {
                acked_by_east: 4,
                at_risk: 3,
                arrived_while_down: 1,
                arrived_after_back: 1,
                never: 1,
                max_after_kill: Some(30.0),
                max_after_back: Some(10.0),
            }
        );
    }

    pub fn rto_times_east_clients() {
        let sample = |client: usize, at: f64, dc: &'static str, answer: &str| PostSample {
            at,
            secs: 0.5,
            answer: answer.to_owned(),
            retry_after: false,
            dc: Some(dc),
            client,
        };
        let samples = vec![
            sample(0, 5.0, EAST, "202"),
            sample(2, 6.0, EAST, "202"),
            sample(1, 6.0, WEST, "202"),
            sample(0, 10.5, EAST, "no-connection"),
            sample(0, 11.0, WEST, "202"),
            sample(0, 12.0, WEST, "202"),
            sample(2, 10.2, EAST, "timeout"),
            sample(2, 14.0, WEST, "503"),
            sample(2, 16.0, WEST, "202"),
            sample(1, 11.0, WEST, "202"),
            sample(3, 12.0, WEST, "202"),
            sample(0, 31.0, EAST, "202"),
            sample(1, 31.0, EAST, "202"),
            sample(2, 29.0, EAST, "202"),
        ];
        assert_eq!(
            rto(&samples, 10.0, 30.0),
            Rto {
                clients: 2,
                recovered: 2,
                first_secs: Some(1.5),
                last_secs: Some(6.5),
                returned: 1,
            }
        );
        assert_eq!(
            rto(&samples, 10.0, 13.0).recovered,
            1,
            "client 2 only after east was back"
        );
    }

    pub fn datacenters_are_compared() {
        let east = HashMap::from([
            (key("same"), fact(EAST, "f1", 1, 2)),
            (key("only-east"), fact(EAST, "f2", 1, 2)),
            (key("other-payload"), fact(EAST, "f3", 1, 2)),
            (key("resent"), fact(EAST, "f4", 1, 2)),
            (key("raced"), fact(EAST, "f5", 1, 2)),
        ]);
        let west = HashMap::from([
            (key("same"), fact(EAST, "f1", 1, 3)),
            (key("other-payload"), fact(EAST, "f9", 1, 3)),
            (key("resent"), fact(WEST, "f4", 4, 5)),
            (key("raced"), fact(WEST, "f5", 1, 3)),
        ]);
        let counters = [
            BTreeMap::from([(key("login"), 3), (key("share"), 1)]),
            BTreeMap::from([(key("login"), 3), (key("share"), 2)]),
        ];
        let raced = HashSet::from([key("raced")]);
        let across = compare_datacenters(&east, &west, &raced, &counters);
        assert_eq!(across.only_in_one.count, 1);
        assert_eq!(across.payload_differs.count, 1);
        assert_eq!(across.raced_differs.count, 1);
        assert_eq!(across.same_payload_other_origin, 1);
        assert_eq!(across.counters_differ.count, 1);
        let agreeing = compare_datacenters(
            &east,
            &east,
            &raced,
            &[counters[0].clone(), counters[0].clone()],
        );
        assert!(agreeing.checks().iter().all(|(_, found)| found.count == 0));
    }

    pub fn conflicts_follow_the_rule() {
        let side = |dc: &'static str| {
            let mut sent = activity("k", Some((1.0, dc)));
            sent.body = json!({"actorId": format!("racer-{dc}"), "type": format!("race.{dc}")});
            sent.conflict = true;
            sent
        };
        let raced = vec![Raced {
            tenant: "acme",
            key: "k".to_owned(),
            sides: [side(EAST), side(WEST)],
        }];
        let letter = |enqueued: i64| ConflictLetter {
            tenant: "acme".to_owned(),
            key: "k".to_owned(),
            enqueued_at_millis: Some(enqueued),
            accepted_dc: Some(WEST.to_owned()),
            fingerprint: Some("fw".to_owned()),
            activity: json!({"actorId": "racer-west", "type": "race.west"}),
        };
        // East's body accepted at 100, west's at 101: east's wins everywhere.
        let stored = HashMap::from([(key("k"), fact(EAST, "fe", 100, 200))]);
        let letters = vec![letter(101)];
        let check = check_conflicts(&raced, [&stored, &stored], [&letters, &letters]);
        assert_eq!(
            (check.contested, check.won, check.violations.count),
            (1, [1, 0], 0)
        );
        // The same millisecond: the datacenter name decides (east < west).
        let tie = vec![letter(100)];
        assert_eq!(
            check_conflicts(&raced, [&stored, &stored], [&tie, &tie])
                .violations
                .count,
            0
        );
        // ... so west's body stored at the same millisecond as east's breaks the rule.
        let west_stored = HashMap::from([(key("k"), fact(WEST, "fw", 100, 200))]);
        let mut east_letter = letter(100);
        east_letter.accepted_dc = Some(EAST.to_owned());
        east_letter.activity = json!({"actorId": "racer-east", "type": "race.east"});
        let east_lost = vec![east_letter];
        assert_eq!(
            check_conflicts(
                &raced,
                [&west_stored, &west_stored],
                [&east_lost, &east_lost]
            )
            .violations
            .count,
            2
        );
        // The later body stored: the rule broken, in both datacenters.
        let earlier = vec![letter(99)];
        assert_eq!(
            check_conflicts(&raced, [&stored, &stored], [&earlier, &earlier])
                .violations
                .count,
            2
        );
        // The datacenters disagree.
        let west_kept = HashMap::from([(key("k"), fact(WEST, "fw", 101, 200))]);
        assert_eq!(
            check_conflicts(&raced, [&stored, &west_kept], [&letters, &letters])
                .violations
                .count,
            1
        );
        // No dead letter of the loser in one datacenter; the loser twice in the other is a
        // redelivery, not a violation.
        let none: Vec<ConflictLetter> = Vec::new();
        let twice = vec![letter(101), letter(101)];
        let check = check_conflicts(&raced, [&stored, &stored], [&none, &twice]);
        assert_eq!((check.violations.count, check.repeated_letters), (1, 1));
        // The winner's body dead-lettered.
        let mut winner = letter(101);
        winner.activity = json!({"actorId": "racer-east", "type": "race.east"});
        let wrong = vec![letter(101), winner];
        assert_eq!(
            check_conflicts(&raced, [&stored, &stored], [&wrong, &letters])
                .violations
                .count,
            1
        );
        // Only one body accepted: nothing to rank.
        let mut one_sided = raced.clone();
        one_sided[0].sides[1].outcome = Outcome::Unanswered;
        let check = check_conflicts(&one_sided, [&stored, &stored], [&none, &none]);
        assert_eq!(
            (check.contested, check.uncontested, check.violations.count),
            (0, 1, 0)
        );
    }

    pub fn lag_is_split_and_ranked() {
        let clock = Clock::start();
        let at = |secs: i64| clock.wall_millis_of_secs(secs as f64);
        let east = HashMap::from([
            (key("own"), fact(EAST, "a", at(1), at(2))),
            (key("from-west"), fact(WEST, "b", at(1), at(3))),
        ]);
        let west = HashMap::from([
            (key("from-east"), fact(EAST, "c", at(5), at(6))),
            (key("while-down"), fact(EAST, "d", at(20), at(60))),
        ]);
        let lag = replication_lag(
            &[east, west],
            clock,
            &[Window {
                from: 15.0,
                to: 30.0,
            }],
        );
        assert_eq!(lag.steady.len(), 2);
        assert_eq!(lag.disturbed, vec![40.0]);
        assert_eq!(Lag::summary(&[1.0, 3.0, 2.0]), Some((3, 2.0, 3.0, 3.0)));
        assert_eq!(Lag::summary(&[]), None);
    }
}
