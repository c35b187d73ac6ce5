//! The command line of the suite: `cargo test --test faults -- [--profile short|long] [--seed N]
//! [--duration 150s] [--faults kind,kind,...] ...`. Also copes with what `cargo test` hands every
//! test binary (libtest flags, name filters), so a plain `cargo test` runs the short profile and
//! `cargo test some_other_test` skips it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::faults::FaultKind;
use crate::stack::Service;

/// Short and long runs differ in length and pace; everything else is the same code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// A few minutes: `make test` and CI.
    Short,
    /// 30 minutes: before a release.
    Long,
    /// The cluster drill (`make cluster-drill`): a private cluster of three brokers, two APIs and
    /// two consumers, taken apart step by step (`drill`); the load lasts until the last step healed
    /// plus a cool-down, `--duration` at most.
    ClusterDrill,
    /// The datacenter drill (`make dc-drill`): two datacenters over MirrorMaker 2 on a private
    /// stack (`scripts/dc.sh` at a port offset), east killed and brought back, MirrorMaker 2
    /// killed and restarted, keys raced in both (`datacenters`); `--duration` at most.
    DcDrill,
}

/// Where the drill's Redis is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DrillRedis {
    /// One node of the private stack (no Redis master kill).
    Single,
    /// A private Redis Cluster (three masters, three replicas) and the Redis master kill.
    Cluster,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "faults",
    about = "Fault-injection suite: a workload against a private stack, faults on a seeded schedule, an independent checker."
)]
pub struct Options {
    /// short (about 150 s of load, for CI), long (30 min, before releases), cluster-drill or
    /// dc-drill.
    #[arg(long, value_enum, default_value = "short", env = "FAULTS_PROFILE")]
    pub profile: Profile,
    /// Seed of the fault schedule and of the workload's choices; random when absent (printed, so a
    /// run can be repeated).
    #[arg(long, env = "FAULTS_SEED")]
    pub seed: Option<u64>,
    /// How long the load runs, e.g. `150s`, `5m`, `30m` (default: 150s short, 30m long; for the
    /// drills the longest it may run: 300s for the cluster drill, 240s for the datacenter drill).
    #[arg(long, value_parser = parse_duration, env = "FAULTS_DURATION")]
    pub duration: Option<Duration>,
    /// The fault mix: `all`, `none`, or a comma-separated list of kinds (see `--list-faults`).
    #[arg(long, default_value = "all", env = "FAULTS_MIX")]
    pub faults: String,
    /// The dependencies proxy faults may hit: a comma-separated subset of kafka, mongo, redis.
    #[arg(long, default_value = "kafka,mongo,redis", env = "FAULTS_TARGETS")]
    pub targets: String,
    /// Print the fault kinds and exit.
    #[arg(long)]
    pub list_faults: bool,
    /// Target rate per second of requests (a batch counts as many as it has activities), all clients
    /// together, retries included.
    #[arg(long)]
    pub rate: Option<u32>,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// The binary that runs the roles (default: the one cargo built with this test).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Where runs keep their logs, stack data and summary (default: target/faults).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The checker's self-test: after the drain, break the stores on purpose; the run passes only if
    /// the checker catches every sabotage.
    #[arg(long)]
    pub sabotage: bool,
    /// Keep the private stack's data after a green run (it is always kept after a red one).
    #[arg(long)]
    pub keep: bool,
    /// The drill's Redis: `cluster` (a Redis Cluster, and a master kill among the steps) or
    /// `single` (one node, no master kill).
    #[arg(long, value_enum, default_value = "cluster", env = "FAULTS_REDIS")]
    pub redis: DrillRedis,
    /// The drill's failover accounting, tested: after the drain, delete this many marks together
    /// with their counts (what a master failover may lose); the run must say so and still pass.
    #[arg(long, default_value_t = 0)]
    pub lose_like_a_failover: usize,
    /// Run only the suite's pure self-checks (also run at the start of every run) and exit.
    #[arg(long)]
    pub self_checks: bool,
}

impl Options {
    pub fn duration(&self) -> Duration {
        self.duration.unwrap_or(match self.profile {
            Profile::Short => Duration::from_secs(150),
            Profile::Long => Duration::from_secs(30 * 60),
            Profile::ClusterDrill => Duration::from_secs(300),
            Profile::DcDrill => Duration::from_secs(240),
        })
    }

    pub fn rate(&self) -> u32 {
        self.rate.unwrap_or(match self.profile {
            Profile::Short => 120,
            Profile::Long => 100,
            // Three brokers, two APIs and three consumers share the two cores with the load.
            Profile::ClusterDrill => 80,
            // Two datacenters (two brokers, two stores, two Redis, four roles) and MirrorMaker 2.
            Profile::DcDrill => 40,
        })
    }

    /// Pause between two faults, in seconds (drawn in this range).
    pub fn gap_secs(&self) -> (u64, u64) {
        match self.profile {
            Profile::Short | Profile::ClusterDrill | Profile::DcDrill => (3, 7),
            Profile::Long => (5, 20),
        }
    }

    pub fn fault_mix(&self) -> anyhow::Result<Vec<FaultKind>> {
        FaultKind::parse_mix(&self.faults)
    }

    pub fn proxy_targets(&self) -> anyhow::Result<Vec<Service>> {
        let mut targets = Vec::new();
        for name in self
            .targets
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            let service = [Service::Kafka, Service::Mongo, Service::Redis]
                .into_iter()
                .find(|service| service.name() == name)
                .ok_or_else(|| {
                    anyhow::anyhow!("unknown proxy target `{name}` (kafka, mongo, redis)")
                })?;
            if !targets.contains(&service) {
                targets.push(service);
            }
        }
        anyhow::ensure!(!targets.is_empty(), "--targets names no dependency");
        Ok(targets)
    }
}

/// What to do with this invocation.
pub enum Invocation {
    Run(Box<Options>),
    /// Nothing to run (a name filter for other tests, `--ignored`, `--list`): print this and exit 0.
    Skip(String),
}

/// libtest flags that take a value, as `cargo test` may pass them to every test binary.
const LIBTEST_FLAGS_WITH_VALUE: &[&str] = &[
    "--test-threads",
    "--color",
    "--format",
    "--logfile",
    "--skip",
    "-Z",
    "--report-time",
    "--shuffle-seed",
];
/// libtest flags without a value.
const LIBTEST_FLAGS: &[&str] = &[
    "--nocapture",
    "--no-capture",
    "--show-output",
    "--quiet",
    "-q",
    "--exact",
    "--include-ignored",
    "--test",
    "--bench",
    "--force-run-in-process",
    "--shuffle",
];

pub fn parse() -> Invocation {
    let mut args = std::env::args();
    let program = args.next().unwrap_or_else(|| "faults".to_owned());
    let mut ours = vec![program];
    let mut filters = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let name = arg.split('=').next().unwrap_or_default();
        if arg == "--list" {
            return Invocation::Skip("faults: test".to_owned());
        } else if arg == "--ignored" {
            return Invocation::Skip("faults: not an ignored test; skipped".to_owned());
        } else if LIBTEST_FLAGS.contains(&arg.as_str()) {
            continue;
        } else if LIBTEST_FLAGS_WITH_VALUE.contains(&name) {
            if !arg.contains('=') {
                args.next();
            }
            continue;
        } else if !arg.starts_with('-') && !ours.last().is_some_and(|last| takes_value(last)) {
            filters.push(arg);
            continue;
        }
        ours.push(arg);
    }
    if !filters.is_empty()
        && !filters
            .iter()
            .any(|filter| "faults".contains(filter.as_str()))
    {
        return Invocation::Skip(format!(
            "faults: skipped (filter {filters:?} names other tests)"
        ));
    }
    let options = Options::parse_from(ours);
    if options.list_faults {
        let kinds: Vec<String> = FaultKind::ALL
            .iter()
            .map(|kind| format!("  {:<18} {}", kind.name(), kind.describe()))
            .collect();
        return Invocation::Skip(format!("fault kinds:\n{}", kinds.join("\n")));
    }
    Invocation::Run(Box::new(options))
}

/// Our options that take a separate value (so the value is not mistaken for a test-name filter).
fn takes_value(arg: &str) -> bool {
    !arg.contains('=')
        && [
            "--profile",
            "--seed",
            "--duration",
            "--faults",
            "--targets",
            "--rate",
            "--clients",
            "--binary",
            "--out",
            "--redis",
            "--lose-like-a-failover",
        ]
        .contains(&arg)
}

/// `150`, `150s`, `5m`, `1h`, `500ms`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = raw
        .find(|c: char| !c.is_ascii_digit())
        .map_or((raw, "s"), |at| raw.split_at(at));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration like 150s, 5m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" | "min" => Ok(Duration::from_secs(value * 60)),
        "h" => Ok(Duration::from_secs(value * 3600)),
        _ => Err(format!("`{raw}`: unknown unit `{unit}` (ms, s, m, h)")),
    }
}

/// The pure parts, run by `--self-checks` and at the start of every run.
pub mod checks {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        Options::try_parse_from(std::iter::once("faults").chain(args.iter().copied()))
            .expect("parses")
    }

    pub fn drill_options_are_parsed() {
        let options = parse(&["--profile", "cluster-drill", "--seed", "42"]);
        assert_eq!(options.profile, Profile::ClusterDrill);
        assert_eq!(options.seed, Some(42));
        assert_eq!(options.redis, DrillRedis::Cluster);
        assert_eq!(options.duration(), Duration::from_secs(300));
        assert_eq!(options.rate(), 80);
        let options = parse(&[
            "--profile=cluster-drill",
            "--redis",
            "single",
            "--duration",
            "4m",
        ]);
        assert_eq!(options.redis, DrillRedis::Single);
        assert_eq!(options.duration(), Duration::from_secs(240));
        assert!(Options::try_parse_from(["faults", "--redis", "sentinel"]).is_err());
        assert!(
            takes_value("--redis"),
            "its value is not a test-name filter"
        );
        let dc = parse(&["--profile", "dc-drill", "--seed", "7", "--duration", "200s"]);
        assert_eq!(dc.profile, Profile::DcDrill);
        assert_eq!(dc.duration(), Duration::from_secs(200));
        assert_eq!(
            parse(&["--profile=dc-drill"]).duration(),
            Duration::from_secs(240)
        );
        assert_eq!(dc.rate(), 40);
        let short = parse(&[]);
        assert_eq!(short.profile, Profile::Short);
        assert_eq!(short.duration(), Duration::from_secs(150));
    }

    pub fn durations_are_parsed() {
        assert_eq!(parse_duration("150"), Ok(Duration::from_secs(150)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
