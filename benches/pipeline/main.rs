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
//! 7. peak RSS (VmHWM) of the produce and consume processes;
//! 8. reads (only when `--phases` names `reads`): one tenant seeded to 10^4, 10^5, 10^6 documents as
//!    the consumer leaves them, and at each size the latency of the read API's pages, lookups by key
//!    and SSE resumes, with the store's `explain` of its page queries;
//! 9. hot tenant (only with `--phases hot`): one tenant's records alone, drained by 1 and by 2
//!    consumer processes; subjects compare `tenants.<id>.partition_spread`;
//! 10. scaling (only with `--phases scaling`, on a Kafka cluster): ingest with the clients spread
//!     over 1 and 2 API processes, drain by 1 and 2 consumers, CPU per activity of every process.
//!
//! The roles run as separate processes of the release binary. Every topic, consumer group, database
//! and Redis key prefix is unique to the run and removed afterwards, so the bench can share a stack;
//! `make bench` starts a private one (see scripts/bench.sh and BENCHMARKS.md).
//!
//! Run without `--bench` (as `cargo test --all-targets` does), it only runs its self-checks.
//!
//! # Layout
//! - `main.rs`: the driver: sets the run up and sequences the phases, round by round;
//! - `options`: the command line and the subjects it names;
//! - `phases`: one file per phase (`ceilings`, `ingest`, `drain`, `end_to_end`, `reads`) and what
//!   they share;
//! - `workload`: tenants, bodies, requests, envelopes;
//! - `http`: the load generator (keep-alive client, closed/open loop) and SSE decoding;
//! - `latency`: HdrHistogram recording, coordinated-omission correction, medians;
//! - `ceilings`: ProducerPerformance and the raw store insert;
//! - `e2e`: pairing 202s with live events;
//! - `processes`: role processes, peak RSS, CPU, metrics;
//! - `report`: the JSON and Markdown report, targets.

// The service's allocator (src/main.rs): the publish-path phase runs the API's code in this process,
// and should allocate as the API does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod ceilings;
mod e2e;
mod http;
mod latency;
mod options;
mod phases;
mod processes;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use activity_pipeline::config::Settings;
use anyhow::Context as _;
use clap::Parser;

use crate::options::{parse_subject, Options, Subject, PHASES};
use crate::processes::load_average;
use crate::report::{Report, Round, SubjectRound};
use crate::workload::Tenants;
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
            "workload: seeded activities",
            workload::checks::seeded_activities_are_varied,
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
            "processes: children's CPU",
            processes::checks::children_cpu_is_counted,
        ),
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
        ("report: reads", report::checks::reads_are_tabulated),
        (
            "report: scaling",
            report::checks::scaling_is_tabulated_per_process_group,
        ),
        ("options: subjects", options::checks::subjects_are_parsed),
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
    /// NAME=PID of the cluster's brokers (`--cluster-watch`), for the scaling phase's breakdown.
    cluster_watched: Vec<(String, u32)>,
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
    let name_pid = |spec: &String| {
        let (name, pid) = spec.split_once('=')?;
        Some((name.to_owned(), pid.parse().ok()?))
    };
    let watched = options.watch.iter().filter_map(name_pid).collect();
    let cluster_watched = options.cluster_watch.iter().filter_map(name_pid).collect();
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
        cluster_watched,
        options,
    };
    bench.run(started_at).await
}

impl Bench {
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
                publish: None,
                store: None,
                subjects: Vec::new(),
            };
            if self.phase("kafka") {
                round.kafka = Some(self.kafka_ceiling(index, &base, &payload_file).await?);
            }
            if self.phase("publish") {
                round.publish = Some(self.publish_path(index, &base).await?);
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
                if self.phase("reads") {
                    self.reads(index, subject, &mut result).await?;
                }
                if self.phase("hot") {
                    self.hot_tenant(index, subject, &mut result).await?;
                }
                if self.phase("scaling") {
                    self.scaling(index, subject, &mut result).await?;
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
