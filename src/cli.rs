//! The command line: `activity-pipeline [--config FILE]... [--set KEY=VALUE]... <command>`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, Sources};
use crate::kafka::{TopicMode, TopicReport, TopicState};

/// The exit code of `topics create --check` when a topic differs from the settings, apart from 1
/// (the check itself failed, e.g. Kafka unreachable) and 2 (configuration error), so a deploy script
/// can tell "drift" from "could not look".
pub const EXIT_TOPIC_DRIFT: u8 = 3;

/// Kafka-native activity ingestion: an HTTP API that publishes to Kafka (`produce`) and a
/// consumer-group runtime that stores each activity exactly once in MongoDB and Redis (`consume`).
#[derive(Debug, Parser)]
#[command(name = "activity-pipeline", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where configuration comes from. Precedence, lowest first: the compiled-in defaults
/// (config/default.toml), `--config` files in order, `AP_SECTION__KEY` environment variables, `--set`.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// A TOML file layered over the defaults (repeatable; also AP_CONFIG, comma-separated).
    #[arg(
        long = "config",
        short = 'c',
        global = true,
        env = "AP_CONFIG",
        value_delimiter = ','
    )]
    pub files: Vec<PathBuf>,
    /// Override one key, e.g. `--set kafka.brokers=10.0.0.1:9092` (repeatable; wins over everything).
    #[arg(long = "set", short = 's', global = true, value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API: POST /activities validates, authenticates and publishes to Kafka, answering
    /// 202 once the broker acknowledged.
    Produce {
        /// Address to listen on (overrides http.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Run the consumer-group runtime: Kafka -> MongoDB -> Redis (mark, count, publish) -> commit.
    /// Failed records go to the retry topics (one per backoff step) and then the DLQ.
    /// SIGTERM/SIGINT finish the batch in hand, commit and leave the group; a second signal exits now.
    Consume {
        /// Consumer group to join (overrides kafka.consumer_group; retry stages use <group>.retry.<n>).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Which topics to consume: the main topic, the retry topics, or both.
        #[arg(long, value_enum, default_value = "all")]
        stage: crate::consume::Stages,
    },
    /// Run the operators' console: web pages and a JSON API (/console/api/) showing each stage's
    /// backlog with an hour of lag history, and the dead letters, with replay, purge and export.
    /// Operators log in with tokens configured under [operators.<name>].
    Console {
        /// Address to listen on (overrides console.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Inspect and replay the dead-letter topic (kafka.dlq_topic).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Maintain the per-tenant counters in Redis.
    Analytics {
        #[command(subcommand)]
        command: AnalyticsCommand,
    },
    /// Manage the Kafka topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Print the effective configuration's non-secret summary and exit (checks that it loads).
    CheckConfig,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter: position, tenant, key, error class, attempts, source, error.
    List {
        /// Only this tenant's dead letters (the record key).
        #[arg(long)]
        tenant: Option<String>,
        /// Show at most this many (the newest).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Also list dead letters purged with `dlq purge` (marked `purged=<time>`).
        #[arg(long)]
        include_purged: bool,
    },
    /// Everything about one dead letter: headers and value.
    Show {
        /// `<partition>:<offset>` in the DLQ topic, as `dlq list` prints it.
        #[arg(value_parser = parse_position)]
        position: (i32, i64),
    },
    /// Republish dead letters to the main topic under their original idempotency key (so a replay of
    /// something already stored changes nothing). Each replay is recorded; a dead letter already
    /// replayed is skipped unless --again.
    Replay {
        /// Only this tenant's dead letters.
        #[arg(long)]
        tenant: Option<String>,
        /// Print what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replay dead letters that were replayed before, too (purged ones never are).
        #[arg(long)]
        again: bool,
    },
    /// Declare dead letters done: they are recorded in the purge log, hidden from `dlq list` and
    /// never replayed; each partition's longest all-purged prefix is deleted from the topic (Kafka
    /// can only delete a prefix). Criteria combine (all must hold); at least one, or --all.
    #[command(group(
        clap::ArgGroup::new("selection")
            .args(["tenant", "older_than", "position", "all"])
            .required(true)
            .multiple(true)
    ))]
    Purge {
        /// Only this tenant's dead letters (the record key).
        #[arg(long, value_parser = parse_tenant)]
        tenant: Option<crate::domain::TenantId>,
        /// Only dead letters whose last failure is at least this old: 7d, 12h, 30m, `1h 30m`.
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<std::time::Duration>,
        /// Only these `<partition>:<offset>` positions, as `dlq list` prints them (repeatable, or a
        /// comma-separated list).
        #[arg(long, value_name = "P:O", value_parser = parse_position, value_delimiter = ',')]
        position: Vec<(i32, i64)>,
        /// Every dead letter in the DLQ.
        #[arg(long, conflicts_with_all = ["tenant", "older_than", "position"])]
        all: bool,
        /// Why, kept in the purge log with the selection.
        #[arg(long)]
        reason: Option<String>,
        /// Print what would be purged and dropped, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AnalyticsCommand {
    /// Recompute the Redis counters from MongoDB (the source of truth), for one tenant or all.
    Rebuild {
        #[arg(long, value_parser = parse_tenant)]
        tenant: Option<crate::domain::TenantId>,
    },
}

fn parse_position(raw: &str) -> Result<(i32, i64), String> {
    crate::ops::dlq::parse_position(raw)
}

fn parse_age(raw: &str) -> Result<std::time::Duration, String> {
    crate::ops::dlq_purge::parse_age(raw)
}

fn parse_tenant(raw: &str) -> Result<crate::domain::TenantId, String> {
    crate::domain::TenantId::parse(raw).map_err(|error| error.to_string())
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create the main, retry and DLQ topics (kafka.topic, kafka.retry_topic, kafka.dlq_topic) with
    /// kafka.partitions partitions, their retention (kafka.*_retention_ms) and min.insync.replicas.
    /// On existing topics, set those configs where they differ; partition counts and replication
    /// factors are only reported. Idempotent.
    Create {
        /// Change nothing: print every difference and exit 3 if there is any (0 if none).
        #[arg(long)]
        check: bool,
    },
}

/// `topics create --check` found a difference; the report has been printed.
#[derive(Debug, thiserror::Error)]
#[error("{0} topic(s) differ from the settings (`topics create` applies what it can)")]
struct TopicDrift(usize);

/// Runs the parsed command line; the exit code is 0 on success, 2 for configuration errors, 1 for
/// everything else.
pub fn run(cli: Cli) -> ExitCode {
    let mut overrides = cli.config.overrides.clone();
    match &cli.command {
        Command::Produce {
            listen: Some(listen),
        } => overrides.push(format!("http.listen={listen}")),
        Command::Consume {
            group: Some(group), ..
        } => overrides.push(format!("kafka.consumer_group={group}")),
        Command::Console {
            listen: Some(listen),
        } => overrides.push(format!("console.listen={listen}")),
        _ => {}
    }
    let settings = match Settings::load(&Sources {
        files: cli.config.files.clone(),
        environment: true,
        overrides,
    }) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<TopicDrift>() => {
            eprintln!("{error}");
            ExitCode::from(EXIT_TOPIC_DRIFT)
        }
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "failed");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Produce { .. } => {
            // Listening before the server starts: a signal from then on is a graceful shutdown,
            // never the default action (which would kill the process mid-request).
            let signals = ShutdownSignals::listen()?;
            let shutdown = CancellationToken::new();
            let application =
                crate::produce::Application::build(&settings, shutdown.clone()).await?;
            tokio::spawn(signals.cancel_on_signal(
                shutdown,
                "ending the SSE streams and finishing in-flight requests",
            ));
            application.run_until_stopped().await
        }
        Command::Consume { stage, .. } => {
            let signals = ShutdownSignals::listen()?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signals.cancel_on_signal(shutdown.clone(), "finishing the batch in hand"));
            crate::consume::run(&settings, stage, shutdown).await
        }
        Command::Console { .. } => {
            let signals = ShutdownSignals::listen()?;
            let shutdown = CancellationToken::new();
            let console = crate::console::Console::build(&settings, shutdown.clone()).await?;
            tokio::spawn(signals.cancel_on_signal(shutdown, "finishing in-flight requests"));
            console.run_until_stopped().await
        }
        Command::Dlq { command } => run_dlq(command, &settings).await,
        Command::Analytics {
            command: AnalyticsCommand::Rebuild { tenant },
        } => {
            let rebuilt = crate::ops::analytics::rebuild(&settings, tenant.as_ref()).await?;
            if rebuilt.is_empty() {
                println!("no stored activities: nothing to rebuild");
            }
            for (tenant, counts) in rebuilt {
                let total: i64 = counts.values().sum();
                let types: Vec<String> = counts
                    .iter()
                    .map(|(kind, count)| format!("{kind}={count}"))
                    .collect();
                println!("{tenant}: {total} activities ({})", types.join(", "));
            }
            Ok(())
        }
        Command::Topics {
            command: TopicsCommand::Create { check },
        } => {
            let mode = if check {
                TopicMode::Check
            } else {
                TopicMode::Apply
            };
            let reports =
                crate::kafka::reconcile_topics(&settings.kafka, &settings.topic_names(), mode)
                    .await?;
            for report in &reports {
                print!("{}", describe_topic_report(report, mode));
            }
            let drifted = reports.iter().filter(|report| report.has_drift()).count();
            if check && drifted > 0 {
                return Err(TopicDrift(drifted).into());
            }
            Ok(())
        }
        Command::CheckConfig => {
            println!("http.listen        = {}", settings.http.listen);
            println!("kafka.brokers      = {}", settings.kafka.brokers);
            println!(
                "kafka.topics       = {}, {}, {}",
                settings.kafka.topic, settings.kafka.retry_topic, settings.kafka.dlq_topic
            );
            println!(
                "kafka.retention_ms = {} (main), {} (retry), {} (dlq); min.insync.replicas = {}",
                settings.kafka.topic_retention_ms,
                settings.kafka.retry_topic_retention_ms,
                settings.kafka.dlq_topic_retention_ms,
                settings.kafka.effective_min_insync_replicas()
            );
            println!(
                "kafka.security     = {}",
                settings.kafka.security_protocol.as_librdkafka()
            );
            println!("console.listen     = {}", settings.console.listen);
            println!(
                "operators          = {}",
                settings
                    .operators
                    .iter()
                    .map(|(name, operator)| format!("{name} ({})", operator.role))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!(
                "mongo              = {}.{}",
                settings.mongo.database, settings.mongo.collection
            );
            println!(
                "tenants            = {}",
                settings
                    .tenants
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
    }
}

/// The lines `topics create` prints for one topic.
fn describe_topic_report(report: &TopicReport, mode: TopicMode) -> String {
    let topic = &report.spec.topic;
    let configs: Vec<String> = report
        .spec
        .configs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    let mut out = match report.state {
        TopicState::Created => format!(
            "created {topic} ({} partitions, {})\n",
            report.spec.partitions,
            configs.join(", ")
        ),
        TopicState::Missing => format!("missing {topic}\n"),
        TopicState::Existed if !report.has_drift() => {
            format!("exists  {topic}: as configured ({})\n", configs.join(", "))
        }
        TopicState::Existed => format!("exists  {topic}:\n"),
    };
    let verdict = match mode {
        TopicMode::Apply => "set",
        TopicMode::Check => "drift",
    };
    for drift in &report.config_drift {
        out.push_str(&format!("  {drift} ({verdict})\n"));
    }
    for drift in &report.layout_drift {
        out.push_str(&format!("  {drift}\n"));
    }
    out
}

async fn run_dlq(command: DlqCommand, settings: &Settings) -> anyhow::Result<()> {
    use crate::ops::dlq::{self, ReplayOutcome};

    match command {
        DlqCommand::List {
            tenant,
            limit,
            include_purged,
        } => {
            let dead_letters = dlq::list(settings, tenant.as_deref()).await?;
            let purged = dead_letters
                .iter()
                .filter(|view| view.purged.is_some())
                .count();
            let shown: Vec<_> = dead_letters
                .iter()
                .filter(|view| include_purged || view.purged.is_none())
                .collect();
            let skip = shown.len().saturating_sub(limit as usize);
            for view in &shown[skip..] {
                println!("{}", view.summary_line());
            }
            let hidden = if include_purged || purged == 0 {
                String::new()
            } else {
                format!(" ({purged} purged not shown; --include-purged lists them)")
            };
            println!(
                "{} dead letter(s) in {}{hidden}",
                dead_letters.len() - purged,
                settings.kafka.dlq_topic
            );
        }
        DlqCommand::Show {
            position: (partition, offset),
        } => print!(
            "{}",
            dlq::show(settings, partition, offset).await?.details()
        ),
        DlqCommand::Replay {
            tenant,
            dry_run,
            again,
        } => {
            let outcomes = dlq::replay(settings, tenant.as_deref(), dry_run, again).await?;
            let mut replayed = 0;
            for (view, outcome) in &outcomes {
                let verb = match outcome {
                    ReplayOutcome::Replayed => {
                        replayed += 1;
                        "replayed"
                    }
                    ReplayOutcome::WouldReplay => "would replay",
                    ReplayOutcome::AlreadyReplayed => {
                        "skipped (replayed before; --again to repeat)"
                    }
                    ReplayOutcome::Purged => "skipped (purged with `dlq purge`)",
                };
                println!(
                    "{} {verb}: tenant={} key={}",
                    view.position(),
                    view.tenant.as_deref().unwrap_or("-"),
                    view.idempotency_key.as_deref().unwrap_or("-")
                );
            }
            println!(
                "{replayed} of {} dead letter(s) replayed to {}",
                outcomes.len(),
                settings.kafka.topic
            );
        }
        DlqCommand::Purge {
            tenant,
            older_than,
            position,
            all,
            reason,
            dry_run,
        } => {
            use crate::ops::dlq_purge::{self, PurgeOutcome, PurgeSelection};

            let selection = PurgeSelection {
                filter: crate::ops::dlq::DeadLetterFilter {
                    tenant,
                    positions: position.into_iter().collect(),
                    ..Default::default()
                },
                older_than,
                all,
            };
            let repository = crate::store::ActivityRepository::connect(&settings.mongo).await?;
            let report = dlq_purge::purge(
                settings,
                &repository,
                &selection,
                reason.as_deref(),
                dry_run,
                &crate::ops::progress::Progress::unwatched(),
            )
            .await?;
            let (mut newly, mut before) = (0, 0);
            for (view, outcome) in &report.outcomes {
                let verb = match outcome {
                    PurgeOutcome::Purged => {
                        newly += 1;
                        "purged".to_owned()
                    }
                    PurgeOutcome::WouldPurge => {
                        newly += 1;
                        "would purge".to_owned()
                    }
                    PurgeOutcome::AlreadyPurged => {
                        before += 1;
                        let at = view
                            .purged
                            .as_ref()
                            .map(|purged| purged.purged_at.to_rfc3339())
                            .unwrap_or_default();
                        format!("already purged ({at})")
                    }
                };
                println!(
                    "{} {verb}: tenant={} key={}",
                    view.position(),
                    view.tenant.as_deref().unwrap_or("-"),
                    view.idempotency_key.as_deref().unwrap_or("-")
                );
            }
            let drop_verb = if dry_run { "would drop" } else { "dropped" };
            for drop in &report.dropped {
                println!(
                    "{drop_verb} {} record(s) before offset {} of {}[{}] (all purged)",
                    drop.records, drop.before_offset, settings.kafka.dlq_topic, drop.partition
                );
            }
            let purge_verb = if dry_run { "would be purged" } else { "purged" };
            println!(
                "{newly} dead letter(s) {purge_verb}, {before} already purged, in {}",
                settings.kafka.dlq_topic
            );
        }
    }
    Ok(())
}

/// SIGTERM and SIGINT, turned into the roles' shutdown trigger here so the roles themselves never
/// handle signals (they take a `CancellationToken`, as mini-redis's `run(listener, shutdown)` does).
struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    /// Starts listening: from now on these signals are delivered here instead of ending the process.
    fn listen() -> anyhow::Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    /// First signal: cancels `shutdown`, a graceful shutdown (`draining` says what the role finishes
    /// first). Second: exits at once; nothing acknowledged is lost by that (a request not yet
    /// answered 202 is retried by its client, an uncommitted record is redelivered).
    async fn cancel_on_signal(mut self, shutdown: CancellationToken, draining: &'static str) {
        self.recv().await;
        tracing::info!("shutdown requested: {draining} (signal again to stop at once)");
        shutdown.cancel();
        self.recv().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
