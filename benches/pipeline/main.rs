//! The pipeline bench (`make bench`): our figures side by side with this machine's ceilings, in one
//! run, on one stack, with the same ~300-byte activities and the same producer settings.
//!
//! Per run (`--rounds`, default 3; the report gives every run and the medians):
//! 1. Kafka ceiling: ProducerPerformance into the same broker;
//! 2. store ceiling: raw `insert_many` of the same documents, same indexes;
//! 3. single ingest: `POST /activities`, closed loop at max rate, then open loop at 50% of it;
//! 4. batch ingest: `POST /activities/batch` of 100 (n/a while the endpoint is missing);
//! 5. drain: a consumer process on a pre-filled topic, to MongoDB + Redis;
//! 6. end to end: 202 -> live event (SSE when the API has it, else the Redis channel feeding it) at
//!    50% of the sustainable rate;
//! 7. peak RSS (VmHWM) of the produce and consume processes.
//!
//! The roles run as separate processes of the release binary. Every topic, consumer group, database
//! and Redis key prefix is unique to the run and removed afterwards, so the bench can share a stack;
//! `make bench` starts a private one (see scripts/bench.sh and BENCHMARKS.md).
//!
//! Run without `--bench` (as `cargo test --all-targets` does), it only runs its self-checks.
//!
//! # Layout
//! - `workload`: tenants, bodies, requests, envelopes;
//! - `http`: the load generator (keep-alive client, closed/open loop) and SSE decoding;
//! - `latency`: HdrHistogram recording, coordinated-omission correction, medians;
//! - `ceilings`: ProducerPerformance and the raw store insert;
//! - `e2e`: pairing 202s with live events;
//! - `processes`: role processes, peak RSS, CPU, metrics;
//! - `report`: the JSON and Markdown report, targets.

mod ceilings;
mod e2e;
mod http;
mod latency;
mod processes;
mod report;
mod workload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use activity_pipeline::config::{Settings, Sources};
use activity_pipeline::domain::PayloadFingerprint;
use activity_pipeline::kafka::{create_topics, ActivityPublisher};
use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt as _;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use crate::http::{LoadPlan, LoadResult, Pacing, RequestMaker};
use crate::processes::{free_port, load_average, wait_ready, Role};
use crate::report::{DrainResult, PublisherFigure, Report, Round, SubjectRound};
use crate::workload::Tenants;

const PHASES: [&str; 7] = ["kafka", "store", "single", "http", "batch", "drain", "e2e"];
const STOP_GRACE: Duration = Duration::from_secs(20);

/// The pipeline bench. Usually run by `make bench` (scripts/bench.sh), which starts a private stack
/// and passes its addresses.
#[derive(Debug, Parser)]
#[command(name = "pipeline-bench")]
struct Options {
    /// Given by `cargo bench`; without it the binary only runs its self-checks.
    #[arg(long, hide = true)]
    bench: bool,
    /// Runs of every figure; the report gives each and the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measurement window of each load figure, in seconds.
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// Warm-up before each window, in seconds (not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Connections of the single-ingest runs (and of the end-to-end run).
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Connections of the batch-ingest runs.
    #[arg(long, default_value_t = 16)]
    batch_connections: usize,
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Records pre-filled for the drain (and documents of the store ceiling).
    #[arg(long, default_value_t = 60_000)]
    drain_records: usize,
    /// Records ProducerPerformance sends (the first fifth is its warm-up).
    #[arg(long, default_value_t = 2_000_000)]
    kafka_records: u64,
    /// insert_many calls in flight for the store ceiling; the best is the ceiling.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    store_concurrency: Vec<usize>,
    /// Tenants the load is spread over (the topic is keyed by tenant).
    #[arg(long, default_value_t = 12)]
    tenants: usize,
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "mongodb://127.0.0.1:27017")]
    mongo_uri: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// How the stack was provided, for the report: `private` or `shared`.
    #[arg(long, default_value = "shared")]
    stack: String,
    /// Stack processes whose CPU use is reported per phase, as NAME=PID (repeatable).
    #[arg(long = "watch")]
    watch: Vec<String>,
    /// Which figures to take.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kafka,store,single,batch,drain,e2e"
    )]
    phases: Vec<String>,
    /// What to measure: NAME[@BINARY][+KEY=VALUE...] (repeatable; default: `current`, the binary of
    /// this build). Subjects alternate within each run, so before/after figures come from one run.
    #[arg(long = "subject")]
    subjects: Vec<String>,
    /// Configuration overrides for every subject and the ceilings (KEY=VALUE, repeatable).
    #[arg(long = "set")]
    sets: Vec<String>,
    /// End-to-end rate when single ingest or drain was not measured, activities/s.
    #[arg(long, default_value_t = 1000.0)]
    e2e_rate: f64,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    generator_threads: usize,
    /// Roles to record with `perf record` while they run (`produce`, `consume`): a perf.data next
    /// to each role's log, for `scripts/flamegraph.sh`. Sampling costs CPU: not for figures.
    #[arg(long, value_delimiter = ',')]
    perf: Vec<String>,
    /// Where the report goes (default: target/bench/<time>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One thing measured: a binary and configuration overrides.
#[derive(Debug, Clone)]
struct Subject {
    name: String,
    binary: PathBuf,
    sets: Vec<String>,
}

fn parse_subject(spec: &str, default_binary: &Path) -> Result<Subject, String> {
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

fn main() -> ExitCode {
    if !std::env::args().skip(1).any(|arg| arg == "--bench") {
        return self_checks();
    }
    let options = Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.generator_threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `cargo test --all-targets` runs: the bench's pure parts, so they cannot rot unnoticed.
fn self_checks() -> ExitCode {
    let checks: &[(&str, fn())] = &[
        (
            "latency: median",
            latency::checks::median_handles_odd_even_and_empty,
        ),
        (
            "latency: percentiles",
            latency::checks::percentiles_of_a_known_distribution,
        ),
        (
            "latency: coordinated omission",
            latency::checks::coordinated_omission_correction_backfills_stalls,
        ),
        ("http: response heads", http::checks::heads_are_parsed),
        (
            "http: chunked SSE",
            http::checks::chunked_sse_is_decoded_across_splits,
        ),
        (
            "workload: bodies",
            workload::checks::bodies_are_valid_and_sized,
        ),
        (
            "workload: requests",
            workload::checks::requests_are_well_formed,
        ),
        (
            "ceilings: ProducerPerformance output",
            ceilings::checks::producer_performance_summary_is_parsed,
        ),
        (
            "e2e: pairing",
            e2e::checks::events_are_matched_to_acceptances,
        ),
        ("processes: /proc", processes::checks::proc_files_are_parsed),
        (
            "processes: metrics",
            processes::checks::metrics_are_summed_over_labels,
        ),
        (
            "processes: histograms",
            processes::checks::histograms_are_read_and_subtracted,
        ),
        (
            "report: medians and ratios",
            report::checks::summary_takes_medians_of_values_and_ratios,
        ),
        (
            "report: formatting",
            report::checks::values_are_formatted_for_humans,
        ),
        ("main: subjects", subjects_are_parsed),
    ];
    for (name, check) in checks {
        check();
        println!("pipeline bench self-check {name} ... ok");
    }
    println!(
        "pipeline bench: {} self-checks passed (the bench itself: `make bench`)",
        checks.len()
    );
    ExitCode::SUCCESS
}

fn subjects_are_parsed() {
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

/// Names unique to one phase of one run.
struct Names {
    topic: String,
    database: String,
    prefix: String,
    key_prefix: String,
}

struct Bench {
    options: Options,
    run_id: String,
    out: PathBuf,
    repo_root: PathBuf,
    config_path: PathBuf,
    tenants: Tenants,
    http: reqwest::Client,
    subjects: Vec<Subject>,
    mongo: mongodb::Client,
    /// NAME=PID of the stack's processes, for the CPU breakdown.
    watched: Vec<(String, u32)>,
}

async fn run(options: Options) -> anyhow::Result<()> {
    for phase in &options.phases {
        anyhow::ensure!(
            PHASES.contains(&phase.as_str()),
            "unknown phase {phase:?} (known: {})",
            PHASES.join(",")
        );
    }
    anyhow::ensure!(options.rounds >= 1, "--rounds must be at least 1");
    for role in &options.perf {
        anyhow::ensure!(
            role == "produce" || role == "consume",
            "--perf {role:?}: the roles are produce and consume"
        );
    }
    let repo_root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_activity-pipeline"));
    let specs = if options.subjects.is_empty() {
        vec!["current".to_owned()]
    } else {
        options.subjects.clone()
    };
    let subjects = specs
        .iter()
        .map(|spec| parse_subject(spec, &binary).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for subject in &subjects {
        anyhow::ensure!(
            subject.binary.is_file(),
            "subject {}: no binary at {:?}",
            subject.name,
            subject.binary
        );
    }
    let started_at = chrono::Utc::now();
    let run_id = {
        let uuid = uuid::Uuid::now_v7().simple().to_string();
        format!("{}{}", started_at.format("%H%M%S"), &uuid[uuid.len() - 3..])
    };
    let out = options.out.clone().unwrap_or_else(|| {
        repo_root
            .join("target/bench")
            .join(started_at.format("%Y%m%dT%H%M%SZ").to_string())
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {out:?}"))?;
    let tenants = Tenants::new(options.tenants);
    let config_path = out.join("bench.toml");
    std::fs::write(&config_path, tenants.config_toml())?;
    let mongo = mongodb::Client::with_uri_str(&options.mongo_uri).await?;
    let watched = options
        .watch
        .iter()
        .filter_map(|spec| {
            let (name, pid) = spec.split_once('=')?;
            Some((name.to_owned(), pid.parse().ok()?))
        })
        .collect();
    let bench = Bench {
        run_id,
        out,
        repo_root,
        config_path,
        tenants,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
        subjects,
        mongo,
        watched,
        options,
    };
    bench.run(started_at).await
}

impl Bench {
    fn phase(&self, name: &str) -> bool {
        self.options.phases.iter().any(|phase| phase == name)
    }

    fn names(&self, round: usize, subject: &str, phase: &str) -> Names {
        let run = &self.run_id;
        Names {
            topic: format!("bench-{run}-r{round}-{subject}-{phase}"),
            database: format!("bench_{run}_r{round}_{subject}_{phase}"),
            prefix: format!("bench:{run}:r{round}:{subject}:{phase}:"),
            key_prefix: format!("{run}-r{round}-{subject}-{phase}"),
        }
    }

    /// The `--set` flags of a role (or the in-process clients) for `names`.
    fn overrides(&self, subject: Option<&Subject>, names: &Names, extra: &[String]) -> Vec<String> {
        let mut overrides = vec![
            format!("kafka.brokers={}", self.options.brokers),
            format!("mongo.uri={}", self.options.mongo_uri),
            format!("redis.url={}", self.options.redis_url),
            format!("kafka.topic={}", names.topic),
            format!("kafka.retry_topic={}.retry", names.topic),
            format!("kafka.dlq_topic={}.dlq", names.topic),
            format!("kafka.consumer_group={}", names.topic),
            format!("mongo.database={}", names.database),
            format!("redis.key_prefix={}", names.prefix),
        ];
        overrides.extend(self.options.sets.iter().cloned());
        if let Some(subject) = subject {
            overrides.extend(subject.sets.iter().cloned());
        }
        overrides.extend_from_slice(extra);
        overrides
    }

    fn settings(&self, overrides: &[String]) -> anyhow::Result<Settings> {
        Settings::load(&Sources {
            files: vec![self.config_path.clone()],
            environment: false,
            overrides: overrides.to_vec(),
        })
        .map_err(|error| anyhow::anyhow!("bench settings: {error}"))
    }

    fn observed(&self, roles: &[&Role]) -> Vec<(String, u32)> {
        let mut observed: Vec<(String, u32)> = roles
            .iter()
            .map(|role| (role.name.clone(), role.pid))
            .collect();
        observed.push(("bench".to_owned(), std::process::id()));
        observed.extend(self.watched.iter().cloned());
        observed
    }

    async fn run(&self, started_at: chrono::DateTime<chrono::Utc>) -> anyhow::Result<()> {
        let base = self.settings(&self.overrides(None, &self.names(0, "base", "x"), &[]))?;
        let payload_envelopes =
            workload::envelopes(&self.tenants, &format!("{}-pp", self.run_id), 10_000);
        let payload_file = self.out.join("payloads.txt");
        ceilings::write_payload_file(&payload_file, &payload_envelopes)?;
        let envelope_bytes = workload::mean_envelope_bytes(&payload_envelopes);
        println!(
            "bench {}: {} run(s), subjects {:?}, phases {:?}; envelopes {envelope_bytes:.0} bytes; report in {:?}",
            self.run_id,
            self.options.rounds,
            self.subjects.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            self.options.phases,
            self.out
        );
        let mut rounds = Vec::new();
        for index in 1..=self.options.rounds {
            let load_before = load_average();
            println!(
                "\n== run {index}/{} (load {load_before:.2})",
                self.options.rounds
            );
            let mut round = Round {
                index,
                load_before,
                load_after: f64::NAN,
                kafka: None,
                store: None,
                subjects: Vec::new(),
            };
            if self.phase("kafka") {
                round.kafka = Some(self.kafka_ceiling(index, &base, &payload_file).await?);
            }
            if self.phase("store") {
                round.store = Some(self.store_ceiling(index, &base).await?);
            }
            // Alternate the subjects' order from run to run, so none always goes first.
            let mut order: Vec<&Subject> = self.subjects.iter().collect();
            let subjects = order.len();
            order.rotate_left((index - 1) % subjects);
            for subject in order {
                let mut result = SubjectRound {
                    subject: subject.name.clone(),
                    ..SubjectRound::default()
                };
                if self.phase("single") || self.phase("batch") {
                    self.ingest(index, subject, &mut result).await?;
                }
                if self.phase("drain") {
                    self.drain(index, subject, &mut result).await?;
                }
                if self.phase("e2e") {
                    self.end_to_end(index, subject, &mut result).await?;
                }
                round.subjects.push(result);
            }
            round.subjects.sort_by_key(|s| {
                self.subjects
                    .iter()
                    .position(|subject| subject.name == s.subject)
            });
            round.load_after = load_average();
            rounds.push(round);
            // Keep what we have, should a later run fail.
            self.write_report(started_at, &base, envelope_bytes, &rounds)?;
        }
        let report = self.write_report(started_at, &base, envelope_bytes, &rounds)?;
        println!("\n{}", report::markdown(&report));
        println!(
            "report: {:?} (JSON) and {:?}",
            self.out.join("report.json"),
            self.out.join("report.md")
        );
        Ok(())
    }

    fn write_report(
        &self,
        started_at: chrono::DateTime<chrono::Utc>,
        base: &Settings,
        envelope_bytes: f64,
        rounds: &[Round],
    ) -> anyhow::Result<Report> {
        let report = Report {
            started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            machine: machine(),
            setup: report::Setup {
                stack: self.options.stack.clone(),
                rounds: rounds.len(),
                duration_s: self.options.duration,
                warmup_s: self.options.warmup,
                connections: self.options.connections,
                batch_connections: self.options.batch_connections,
                batch_size: self.options.batch_size,
                drain_records: self.options.drain_records,
                kafka_records: self.options.kafka_records,
                tenants: self.options.tenants,
                partitions: base.kafka.partitions,
                envelope_bytes,
                producer_props: ceilings::producer_props(base),
                subjects: self
                    .subjects
                    .iter()
                    .map(|s| {
                        let mut text = s.name.clone();
                        if s.binary != Path::new(env!("CARGO_BIN_EXE_activity-pipeline")) {
                            text.push_str(&format!("@{}", s.binary.display()));
                        }
                        for set in &s.sets {
                            text.push_str(&format!("+{set}"));
                        }
                        text
                    })
                    .collect(),
                phases: self.options.phases.clone(),
            },
            summary: self
                .subjects
                .iter()
                .map(|subject| report::summarize(rounds, &subject.name))
                .collect(),
            rounds: rounds.to_vec(),
        };
        std::fs::write(
            self.out.join("report.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(self.out.join("report.md"), report::markdown(&report))?;
        Ok(report)
    }

    async fn kafka_ceiling(
        &self,
        round: usize,
        base: &Settings,
        payload_file: &Path,
    ) -> anyhow::Result<ceilings::KafkaCeiling> {
        let names = self.names(round, "all", "pp");
        let settings = self.settings(&self.overrides(None, &names, &[]))?;
        create_topics(&settings.kafka, std::slice::from_ref(&names.topic)).await?;
        let result = ceilings::kafka(
            &self.repo_root,
            &self.options.brokers,
            &names.topic,
            payload_file,
            self.options.kafka_records,
            self.options.kafka_records / 5,
            self.tenants.len(),
            ceilings::producer_props(base),
            &self.out.join(format!("r{round}-producer-performance.log")),
        )
        .await;
        self.delete_topics(&settings.kafka.brokers, std::slice::from_ref(&names.topic))
            .await;
        let ceiling = result?;
        println!(
            "  1. Kafka ceiling (ProducerPerformance): {:.0} records/s ({:.1} MB/s), p99 {} ms",
            ceiling.records_per_s, ceiling.mb_per_s, ceiling.p99_latency_ms
        );
        Ok(ceiling)
    }

    async fn store_ceiling(
        &self,
        round: usize,
        base: &Settings,
    ) -> anyhow::Result<ceilings::StoreCeiling> {
        let names = self.names(round, "all", "st");
        let settings = self.settings(&self.overrides(None, &names, &[]))?;
        let envelopes =
            workload::envelopes(&self.tenants, &names.key_prefix, self.options.drain_records);
        let result = ceilings::store(
            &settings,
            &names.database,
            &envelopes,
            base.consumer.batch_max_records,
            &self.options.store_concurrency,
            &self.observed(&[]),
        )
        .await;
        for concurrency in &self.options.store_concurrency {
            let _ = self
                .mongo
                .database(&format!("{}_c{concurrency}", names.database))
                .drop()
                .await;
        }
        let ceiling = result?;
        println!(
            "  2. Store ceiling (insert_many x{}): {:.0} docs/s (tried {:?}) [cores: {}]",
            ceiling.batch_size,
            ceiling.documents_per_s,
            ceiling.tried,
            describe_cores(&ceiling.cpu_cores)
        );
        Ok(ceiling)
    }

    fn single_maker(&self, key_prefix: String) -> Arc<RequestMaker> {
        let bodies: Vec<Vec<u8>> = (0..workload::BODY_VARIANTS)
            .map(|n| workload::activity_body(n).into_bytes())
            .collect();
        let api_keys = self.tenants.api_keys.clone();
        Arc::new(move |connection, seq| {
            let key = format!("{key_prefix}-{connection}-{seq}");
            let body = &bodies[(connection * 7 + seq as usize) % bodies.len()];
            let api_key = &api_keys[connection % api_keys.len()];
            (
                workload::post_request("/activities", api_key, &key, body),
                key,
            )
        })
    }

    fn batch_maker(&self, key_prefix: String) -> Arc<RequestMaker> {
        let size = self.options.batch_size;
        let bodies: Vec<Vec<u8>> = (0..8)
            .map(|n| workload::batch_body(n * 13, size).into_bytes())
            .collect();
        let api_keys = self.tenants.api_keys.clone();
        Arc::new(move |connection, seq| {
            let key = format!("{key_prefix}-{connection}-{seq}");
            let body = &bodies[(connection + seq as usize) % bodies.len()];
            let api_key = &api_keys[connection % api_keys.len()];
            (
                workload::post_request("/activities/batch", api_key, &key, body),
                key,
            )
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        address: SocketAddr,
        connections: usize,
        pacing: Pacing,
        items_per_request: usize,
        make_request: Arc<RequestMaker>,
        observed: Vec<(String, u32)>,
        on_accepted: Option<Arc<http::AcceptObserver>>,
    ) -> LoadPlan {
        LoadPlan {
            address,
            connections,
            warmup: Duration::from_secs_f64(self.options.warmup),
            duration: Duration::from_secs_f64(self.options.duration),
            pacing,
            items_per_request,
            make_request,
            on_accepted,
            observed,
        }
    }

    /// Single and batch ingest against one produce process.
    async fn ingest(
        &self,
        round: usize,
        subject: &Subject,
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        let names = self.names(round, &subject.name, "in");
        let port = free_port()?;
        let overrides = self.overrides(
            Some(subject),
            &names,
            &[format!("http.listen=127.0.0.1:{port}")],
        );
        let settings = self.settings(&overrides)?;
        create_topics(&settings.kafka, &settings.topic_names()).await?;
        let outcome = self
            .ingest_against(round, subject, &names, port, &overrides, result)
            .await;
        self.cleanup(&settings, &names).await;
        outcome
    }

    async fn ingest_against(
        &self,
        round: usize,
        subject: &Subject,
        names: &Names,
        port: u16,
        overrides: &[String],
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        let address: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut produce = self.spawn_role(
            "produce",
            subject,
            overrides,
            &["produce"],
            self.out
                .join(format!("r{round}-{}-ingest-produce.log", subject.name)),
        )?;
        wait_ready(
            &self.http,
            &mut produce,
            &format!("http://{address}/healthz"),
            Duration::from_secs(30),
        )
        .await?;
        let observed = self.observed(&[&produce]);
        if self.phase("single") {
            let max = http::run(self.plan(
                address,
                self.options.connections,
                Pacing::Closed,
                1,
                self.single_maker(format!("{}-smax", names.key_prefix)),
                observed.clone(),
                None,
            ))
            .await;
            print_load(&format!("3. [{}] single, max", subject.name), &max);
            let half_rate = max.requests_per_s * 0.5;
            result.single_max = Some(max);
            if half_rate > 0.0 {
                let half = http::run(self.plan(
                    address,
                    self.options.connections,
                    Pacing::Open { rate: half_rate },
                    1,
                    self.single_maker(format!("{}-shalf", names.key_prefix)),
                    observed.clone(),
                    None,
                ))
                .await;
                print_load(&format!("3. [{}] single, 50%", subject.name), &half);
                result.single_half = Some(half);
                if self.phase("http") {
                    let floor = http::run(self.plan(
                        address,
                        self.options.connections,
                        Pacing::Open { rate: half_rate },
                        1,
                        Arc::new(|_, seq| (workload::get_request("/healthz"), seq.to_string())),
                        observed.clone(),
                        None,
                    ))
                    .await;
                    print_load(
                        &format!("   [{}] GET /healthz at the same rate", subject.name),
                        &floor,
                    );
                    result.http_floor = Some(floor);
                }
            }
            produce.ensure_running()?;
        }
        if self.phase("batch") {
            match self.batch_endpoint(address, &names.key_prefix).await? {
                Err(reason) => {
                    println!("  4. [{}] batch: {reason}", subject.name);
                    result.batch_missing = Some(reason);
                }
                Ok(()) => {
                    let size = self.options.batch_size;
                    let max = http::run(self.plan(
                        address,
                        self.options.batch_connections,
                        Pacing::Closed,
                        size,
                        self.batch_maker(format!("{}-bmax", names.key_prefix)),
                        observed.clone(),
                        None,
                    ))
                    .await;
                    print_load(&format!("4. [{}] batch, max", subject.name), &max);
                    let half_rate = max.requests_per_s * 0.5;
                    result.batch_max = Some(max);
                    if half_rate > 0.0 {
                        let half = http::run(self.plan(
                            address,
                            self.options.batch_connections.max(8) * 2,
                            Pacing::Open { rate: half_rate },
                            size,
                            self.batch_maker(format!("{}-bhalf", names.key_prefix)),
                            observed.clone(),
                            None,
                        ))
                        .await;
                        print_load(&format!("4. [{}] batch, 50%", subject.name), &half);
                        result.batch_half = Some(half);
                    }
                }
            }
        }
        let peak = produce.stop(STOP_GRACE).await;
        result.produce_peak_rss_mib = max_mib(result.produce_peak_rss_mib, peak);
        Ok(())
    }

    /// Whether `POST /activities/batch` exists: `Err(reason)` when it does not.
    async fn batch_endpoint(
        &self,
        address: SocketAddr,
        key_prefix: &str,
    ) -> anyhow::Result<Result<(), String>> {
        let mut connection = http::Connection::new(address);
        let body = workload::batch_body(0, 1);
        let request = workload::post_request(
            "/activities/batch",
            &self.tenants.api_keys[0],
            &format!("{key_prefix}-probe"),
            body.as_bytes(),
        );
        let answer = connection.exchange(&request).await?;
        Ok(match answer.status {
            202 => Ok(()),
            404 | 405 => Err(format!("n/a: endpoint missing ({})", answer.status)),
            status => Err(format!(
                "n/a: probe answered {status}: {}",
                String::from_utf8_lossy(&answer.body)
            )),
        })
    }

    /// Pre-fills a topic (timed: the in-process publisher figure), then times a consumer process
    /// draining it into MongoDB and Redis.
    async fn drain(
        &self,
        round: usize,
        subject: &Subject,
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        let names = self.names(round, &subject.name, "dr");
        let metrics_port = free_port()?;
        let overrides = self.overrides(
            Some(subject),
            &names,
            &[format!("consumer.metrics_listen=127.0.0.1:{metrics_port}")],
        );
        let settings = self.settings(&overrides)?;
        create_topics(&settings.kafka, &settings.topic_names()).await?;
        let outcome = self
            .drain_topic(
                round,
                subject,
                &names,
                &settings,
                &overrides,
                metrics_port,
                result,
            )
            .await;
        self.cleanup(&settings, &names).await;
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn drain_topic(
        &self,
        round: usize,
        subject: &Subject,
        names: &Names,
        settings: &Settings,
        overrides: &[String],
        metrics_port: u16,
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        let records = self.options.drain_records;
        let envelopes = workload::envelopes(&self.tenants, &names.key_prefix, records);
        let publisher = ActivityPublisher::new(&settings.kafka)?;
        let started = Instant::now();
        let failures = futures::stream::iter(envelopes.iter())
            .map(|envelope| {
                let publisher = &publisher;
                let fingerprint = PayloadFingerprint::of(&envelope.activity);
                async move { publisher.publish(envelope, &fingerprint).await }
            })
            .buffer_unordered(20_000)
            .filter(|outcome| futures::future::ready(outcome.is_err()))
            .count()
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            failures == 0,
            "pre-fill: {failures} records not acknowledged"
        );
        drop(publisher);
        let publisher = PublisherFigure {
            records,
            records_per_s: records as f64 / elapsed,
        };
        println!(
            "  +  [{}] pre-fill through ActivityPublisher (in-process, no HTTP): {:.0} records/s",
            subject.name, publisher.records_per_s
        );
        result.publisher = Some(publisher);

        let mut consume = self.spawn_role(
            "consume",
            subject,
            overrides,
            &["consume"],
            self.out
                .join(format!("r{round}-{}-drain-consume.log", subject.name)),
        )?;
        let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
        wait_ready(
            &self.http,
            &mut consume,
            &format!("http://127.0.0.1:{metrics_port}/healthz"),
            Duration::from_secs(30),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        let observed = self.observed(&[&consume]);
        let mut first: Option<(Instant, f64, Vec<Option<f64>>)> = None;
        let finished = loop {
            consume.ensure_running()?;
            let text = self.http.get(&metrics_url).send().await?.text().await?;
            let now = Instant::now();
            let processed =
                processes::metric_sum(&text, "activity_pipeline_consumer_records_total");
            if first.is_none() && processed > 0.0 {
                first = Some((now, processed, processes::cpu_of(&observed)));
            }
            if processed >= records as f64 {
                break now;
            }
            anyhow::ensure!(
                now < deadline,
                "drain: {processed} of {records} records processed after 300 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let (started, processed_at_start, cpu_start) = first.expect("set before finishing");
        let seconds = finished.duration_since(started).as_secs_f64().max(1e-3);
        let cpu_cores =
            processes::cores_since(&observed, &cpu_start, finished.duration_since(started));
        let peak = consume.stop(STOP_GRACE).await;
        result.consume_peak_rss_mib = max_mib(result.consume_peak_rss_mib, peak);
        let stored = self
            .mongo
            .database(&names.database)
            .collection::<mongodb::bson::Document>(&settings.mongo.collection)
            .count_documents(mongodb::bson::doc! {})
            .await?;
        let drain = DrainResult {
            records,
            records_per_s: (records as f64 - processed_at_start) / seconds,
            seconds,
            stored,
            consumer_cores: cpu_cores
                .iter()
                .find(|(name, _)| name == "consume")
                .map_or(0.0, |(_, cores)| *cores),
            cpu_cores,
        };
        println!(
            "  5. [{}] drain: {:.0} activities/s ({} records in {:.2} s; {} stored) [cores: {}]",
            subject.name,
            drain.records_per_s,
            records,
            drain.seconds,
            stored,
            describe_cores(&drain.cpu_cores)
        );
        anyhow::ensure!(
            stored as usize == records,
            "drain: {stored} documents stored, {records} expected"
        );
        let counted = self.counted(&names.prefix).await?;
        anyhow::ensure!(
            counted as usize == records,
            "drain: the Redis counters hold {counted} activities, {records} expected"
        );
        result.drain = Some(drain);
        Ok(())
    }

    /// 202 -> live event, at 50% of the sustainable rate (the lower of single max and drain).
    async fn end_to_end(
        &self,
        round: usize,
        subject: &Subject,
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        let sustainable = match (&result.single_max, &result.drain) {
            (Some(single), Some(drain)) => Some(single.requests_per_s.min(drain.records_per_s)),
            (Some(single), None) => Some(single.requests_per_s),
            (None, Some(drain)) => Some(drain.records_per_s),
            (None, None) => None,
        };
        let rate = sustainable.map_or(self.options.e2e_rate, |rate| rate * 0.5);
        let names = self.names(round, &subject.name, "e2");
        let port = free_port()?;
        let metrics_port = free_port()?;
        let overrides = self.overrides(
            Some(subject),
            &names,
            &[
                format!("http.listen=127.0.0.1:{port}"),
                format!("consumer.metrics_listen=127.0.0.1:{metrics_port}"),
            ],
        );
        let settings = self.settings(&overrides)?;
        create_topics(&settings.kafka, &settings.topic_names()).await?;
        let outcome = self
            .end_to_end_at(
                round,
                subject,
                &names,
                port,
                metrics_port,
                &overrides,
                rate,
                result,
            )
            .await;
        self.cleanup(&settings, &names).await;
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn end_to_end_at(
        &self,
        round: usize,
        subject: &Subject,
        names: &Names,
        port: u16,
        metrics_port: u16,
        overrides: &[String],
        rate: f64,
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        let address: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = |role: &str| {
            self.out
                .join(format!("r{round}-{}-e2e-{role}.log", subject.name))
        };
        let mut consume =
            self.spawn_role("consume", subject, overrides, &["consume"], log("consume"))?;
        let mut produce =
            self.spawn_role("produce", subject, overrides, &["produce"], log("produce"))?;
        wait_ready(
            &self.http,
            &mut consume,
            &format!("http://127.0.0.1:{metrics_port}/healthz"),
            Duration::from_secs(30),
        )
        .await?;
        wait_ready(
            &self.http,
            &mut produce,
            &format!("http://{address}/healthz"),
            Duration::from_secs(30),
        )
        .await?;
        let tracker = e2e::Tracker::new();
        let stop = tokio_util::sync::CancellationToken::new();
        let source = e2e::listen(
            address,
            &self.tenants.api_keys,
            &self.options.redis_url,
            &format!("{}activities:*", names.prefix),
            tracker.clone(),
            stop.clone(),
        )
        .await?;
        let observer: Arc<http::AcceptObserver> = {
            let tracker = tracker.clone();
            Arc::new(move |key: &str, at: Instant| tracker.accepted(key, at))
        };
        // Warm-up: the consumer joins its group and the first events flow before measuring.
        let warmup = LoadPlan {
            address,
            connections: 16,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(2),
            pacing: Pacing::Open { rate: 200.0 },
            items_per_request: 1,
            make_request: self.single_maker(format!("{}-warm", names.key_prefix)),
            on_accepted: Some(observer.clone()),
            observed: vec![],
        };
        http::run(warmup).await;
        wait_matched(&tracker, Duration::from_secs(60))
            .await
            .with_context(|| {
                format!(
                "end to end: the warm-up's events did not all arrive ({source}); consumer log {:?}",
                log("consume")
            )
            })?;
        tracker.reset();
        let mut plan = self.plan(
            address,
            self.options.connections,
            Pacing::Open { rate },
            1,
            self.single_maker(format!("{}-e2e", names.key_prefix)),
            self.observed(&[&produce, &consume]),
            Some(observer),
        );
        plan.warmup = Duration::ZERO;
        let consumer_metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
        let metrics_before = self.scrape(&consumer_metrics).await;
        let load = http::run(plan).await;
        let _ = wait_matched(&tracker, Duration::from_secs(15)).await;
        let metrics_after = self.scrape(&consumer_metrics).await;
        stop.cancel();
        let mut e2e = tracker.result(source, rate);
        e2e.breakdown = match (metrics_before, metrics_after) {
            (Some(before), Some(after)) => e2e::ConsumerBreakdown::between(&before, &after),
            _ => None,
        };
        println!(
            "  6. [{}] end to end at {:.0}/s via {source}: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} matched, {} missing; HTTP p99 {:.2} ms; cpu {})",
            subject.name,
            rate,
            e2e.latency.p50_ms,
            e2e.latency.p99_ms,
            e2e.latency.p999_ms,
            e2e.latency.max_ms,
            e2e.matched,
            e2e.missing,
            load.latency.p99_ms,
            describe_cpu(&load),
        );
        if let Some(breakdown) = &e2e.breakdown {
            println!(
                "     consumer: enqueued -> store step mean {:.1} ms (p50 <= {}, p99 <= {}); {:.0} batches of {:.0} records, applied in {:.1} ms mean (p99 <= {})",
                breakdown.to_store_mean_ms,
                describe_bound(breakdown.to_store_p50_bound_ms),
                describe_bound(breakdown.to_store_p99_bound_ms),
                breakdown.batches,
                breakdown.records_per_batch,
                breakdown.apply_mean_ms,
                describe_bound(breakdown.apply_p99_bound_ms),
            );
        }
        result.e2e = Some(e2e);
        let produce_peak = produce.stop(STOP_GRACE).await;
        let consume_peak = consume.stop(STOP_GRACE).await;
        result.produce_peak_rss_mib = max_mib(result.produce_peak_rss_mib, produce_peak);
        result.consume_peak_rss_mib = max_mib(result.consume_peak_rss_mib, consume_peak);
        Ok(())
    }

    /// Starts a role of `subject`, to be recorded by perf once ready when `--perf` names it.
    fn spawn_role(
        &self,
        name: &str,
        subject: &Subject,
        overrides: &[String],
        args: &[&str],
        log: PathBuf,
    ) -> anyhow::Result<Role> {
        let mut role = Role::spawn(
            name,
            &subject.binary,
            &self.config_path,
            overrides,
            args,
            log,
        )?;
        role.profile_when_ready = self.options.perf.iter().any(|wanted| wanted == name);
        Ok(role)
    }

    /// A `/metrics` text, or `None` (with a note) if it could not be read.
    async fn scrape(&self, url: &str) -> Option<String> {
        let response = async { self.http.get(url).send().await?.text().await };
        match response.await {
            Ok(text) => Some(text),
            Err(error) => {
                eprintln!("bench: could not read {url}: {error}");
                None
            }
        }
    }

    /// Activities counted in the tenants' Redis counters under `prefix`.
    async fn counted(&self, prefix: &str) -> anyhow::Result<i64> {
        let client = redis::Client::open(self.options.redis_url.as_str())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let mut total = 0;
        for tenant in &self.tenants.ids {
            let counts: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
                .arg(format!("{prefix}analytics:{{{tenant}}}"))
                .query_async(&mut connection)
                .await?;
            total += counts.values().sum::<i64>();
        }
        Ok(total)
    }

    /// Removes what a phase made: its topics, database and Redis keys. Failures are reported, not
    /// fatal.
    async fn cleanup(&self, settings: &Settings, names: &Names) {
        self.delete_topics(&settings.kafka.brokers, &settings.topic_names())
            .await;
        if let Err(error) = self.mongo.database(&names.database).drop().await {
            eprintln!("cleanup: dropping {}: {error}", names.database);
        }
        if let Err(error) = delete_keys(&self.options.redis_url, &names.prefix).await {
            eprintln!("cleanup: Redis keys {}*: {error}", names.prefix);
        }
    }

    async fn delete_topics(&self, brokers: &str, topics: &[String]) {
        let admin: AdminClient<DefaultClientContext> = match ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
        {
            Ok(admin) => admin,
            Err(error) => {
                eprintln!("cleanup: admin client: {error}");
                return;
            }
        };
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        if let Err(error) = admin.delete_topics(&names, &options).await {
            eprintln!("cleanup: deleting topics {names:?}: {error}");
        }
    }
}

async fn delete_keys(redis_url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut connection)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut connection)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// A histogram bucket bound in milliseconds, or `?` past the last finite bucket.
fn describe_bound(bound_ms: Option<f64>) -> String {
    bound_ms.map_or_else(|| "?".to_owned(), |ms| format!("{ms:.0} ms"))
}

async fn wait_matched(tracker: &e2e::Tracker, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (accepted, matched) = tracker.counts();
        if accepted > 0 && matched >= accepted {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{matched} of {accepted} events arrived within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn max_mib(current: Option<f64>, peak_kib: Option<u64>) -> Option<f64> {
    let peak = peak_kib.map(|kib| kib as f64 / 1024.0);
    match (current, peak) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn describe_cores(cores: &[(String, f64)]) -> String {
    cores
        .iter()
        .map(|(name, cores)| format!("{name} {cores:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_cpu(load: &LoadResult) -> String {
    let mut parts: Vec<String> = vec![describe_cores(&load.cpu_cores)];
    if let Some(busy) = load.cpu_busy_percent {
        parts.insert(0, format!("machine {busy:.0}% busy"));
    }
    parts.join(", ")
}

fn print_load(label: &str, load: &LoadResult) {
    let failures = if load.failures.is_empty() {
        String::new()
    } else {
        format!(", failures {:?}", load.failures)
    };
    println!(
        "  {label}: {:.0} req/s ({:.0} activities/s), p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms{} [cores: {}]",
        load.requests_per_s,
        load.items_per_s,
        load.latency.p50_ms,
        load.latency.p99_ms,
        load.latency.p999_ms,
        failures,
        describe_cpu(load),
    );
}

fn machine() -> report::Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib = processes::status_field_kib(&meminfo, "MemTotal:").unwrap_or(0);
    report::Machine {
        cpu_model,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: memory_kib as f64 / 1024.0 / 1024.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}
