//! The run's options: the command line (`Options`) and the subjects it names.

use std::path::{Path, PathBuf};

use clap::Parser;

/// The figures `--phases` can name.
pub const PHASES: [&str; 11] = [
    "kafka", "publish", "store", "single", "http", "batch", "drain", "e2e", "reads", "hot",
    "scaling",
];

/// The pipeline bench. Usually run by `make bench` (scripts/bench.sh), which starts a private stack
/// and passes its addresses.
#[derive(Debug, Parser)]
#[command(name = "pipeline-bench")]
pub struct Options {
    /// Given by `cargo bench`; without it the binary only runs its self-checks.
    #[arg(long, hide = true)]
    pub bench: bool,
    /// Runs of every figure; the report gives each and the median.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Measurement window of each load figure, in seconds.
    #[arg(long, default_value_t = 8.0)]
    pub duration: f64,
    /// Warm-up before each window, in seconds (not measured).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Connections of the single-ingest runs (and of the end-to-end run).
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// Connections of the batch-ingest runs.
    #[arg(long, default_value_t = 16)]
    pub batch_connections: usize,
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Records pre-filled for the drain (and documents of the store ceiling).
    #[arg(long, default_value_t = 60_000)]
    pub drain_records: usize,
    /// Records ProducerPerformance sends (the first fifth is its warm-up).
    #[arg(long, default_value_t = 2_000_000)]
    pub kafka_records: u64,
    /// Records each subject of the publish-path phase sends (the first fifth is its warm-up).
    #[arg(long, default_value_t = 300_000)]
    pub publish_records: usize,
    /// Records the publish-path subjects that wait keep in flight (ThreadedProducer's floor is
    /// bounded by the producer queue alone, `kafka.queue_max_messages`).
    #[arg(long, default_value_t = 20_000)]
    pub publish_in_flight: usize,
    /// insert_many calls in flight for the store ceiling; the best is the ceiling.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub store_concurrency: Vec<usize>,
    /// Tenants the load is spread over (the topic is keyed by tenant).
    #[arg(long, default_value_t = 12)]
    pub tenants: usize,
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, default_value = "mongodb://127.0.0.1:27017")]
    pub mongo_uri: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// How the stack was provided, for the report: `private` or `shared`.
    #[arg(long, default_value = "shared")]
    pub stack: String,
    /// Stack processes whose CPU use is reported per phase, as NAME=PID (repeatable).
    #[arg(long = "watch")]
    pub watch: Vec<String>,
    /// Which figures to take.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kafka,publish,store,single,batch,drain,e2e"
    )]
    pub phases: Vec<String>,
    /// What to measure: NAME[@BINARY][+KEY=VALUE...] (repeatable; default: `current`, the binary of
    /// this build). Subjects alternate within each run, so before/after figures come from one run.
    #[arg(long = "subject")]
    pub subjects: Vec<String>,
    /// Configuration overrides for every subject and the ceilings (KEY=VALUE, repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Reads: the big tenant's document counts, measured in turn (each step seeds up to the next).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub read_sizes: Vec<usize>,
    /// Reads: documents of the second, small tenant (seeded before the first step).
    #[arg(long, default_value_t = 1000)]
    pub read_small_documents: usize,
    /// Reads: most requests of each kind at each size (sequential, one client).
    #[arg(long, default_value_t = 100)]
    pub read_requests: u64,
    /// Reads: most seconds spent on each kind at each size (the request under way finishes).
    #[arg(long, default_value_t = 20.0)]
    pub read_seconds: f64,
    /// Hot tenant (`--phases hot`): records of the one tenant pre-filled for each drain.
    #[arg(long, default_value_t = 20_000)]
    pub hot_records: usize,
    /// Hot tenant: consumer instances (processes) draining it, measured in turn.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub hot_consumers: Vec<usize>,
    /// Scaling (`--phases scaling`): the Kafka cluster it runs on (three brokers, RF 3); the other
    /// phases keep `--brokers`. scripts/bench.sh starts a private one and passes it.
    #[arg(long)]
    pub cluster_brokers: Option<String>,
    /// Scaling: the Redis Cluster it runs on, as seed URLs (comma-separated); without it, the
    /// phase uses `--redis-url`, a single node.
    #[arg(long)]
    pub cluster_redis_url: Option<String>,
    /// Scaling: the cluster's processes whose CPU is reported, as NAME=PID (repeatable).
    #[arg(long = "cluster-watch")]
    pub cluster_watch: Vec<String>,
    /// Scaling: instance counts of each role (API instances for ingest, consumers for the drain).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub scaling_instances: Vec<usize>,
    /// Scaling: records pre-filled for each drain.
    #[arg(long, default_value_t = 30_000)]
    pub scaling_records: usize,
    /// End-to-end rate when single ingest or drain was not measured, activities/s.
    #[arg(long, default_value_t = 1000.0)]
    pub e2e_rate: f64,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    pub generator_threads: usize,
    /// Roles to record with `perf record` while they run (`produce`, `consume`): a perf.data next
    /// to each role's log, for `scripts/flamegraph.sh`. Sampling costs CPU: not for figures.
    #[arg(long, value_delimiter = ',')]
    pub perf: Vec<String>,
    /// Where the report goes (default: target/bench/<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One thing measured: a binary and configuration overrides.
#[derive(Debug, Clone)]
pub struct Subject {
    pub name: String,
    pub binary: PathBuf,
    pub sets: Vec<String>,
}

pub fn parse_subject(spec: &str, default_binary: &Path) -> Result<Subject, String> {
    let mut parts = spec.split('+');
    let head = parts.next().unwrap_or_default();
    let (name, binary) = match head.split_once('@') {
        Some((name, binary)) => (name, PathBuf::from(binary)),
        None => (head, default_binary.to_path_buf()),
    };
    let valid_name = (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid_name {
        return Err(format!(
            "subject name {name:?}: 1-20 characters of [a-z0-9_]"
        ));
    }
    let sets: Vec<String> = parts.map(str::to_owned).collect();
    if let Some(bad) = sets.iter().find(|set| !set.contains('=')) {
        return Err(format!("subject {name}: {bad:?} is not KEY=VALUE"));
    }
    Ok(Subject {
        name: name.to_owned(),
        binary,
        sets,
    })
}

pub mod checks {
    use super::*;

    pub fn subjects_are_parsed() {
        let default = Path::new("/bin/ap");
        let subject = parse_subject("current", default).unwrap();
        assert_eq!(
            (subject.name.as_str(), subject.binary.as_path()),
            ("current", default)
        );
        let subject =
            parse_subject("before@/tmp/old+kafka.linger_ms=1+http.workers=2", default).unwrap();
        assert_eq!(subject.binary, Path::new("/tmp/old"));
        assert_eq!(subject.sets, ["kafka.linger_ms=1", "http.workers=2"]);
        assert!(parse_subject("Bad-Name", default).is_err());
        assert!(parse_subject("x+novalue", default).is_err());
    }
}
