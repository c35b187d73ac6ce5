//! The command line: `activity-pipeline [--config FILE]... [--set KEY=VALUE]... <command>`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, Sources};
use crate::kafka::TopicCreation;

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
        /// Replay dead letters that were replayed before, too.
        #[arg(long)]
        again: bool,
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

fn parse_tenant(raw: &str) -> Result<crate::domain::TenantId, String> {
    crate::domain::TenantId::parse(raw).map_err(|error| error.to_string())
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create the main, retry and DLQ topics (kafka.topic, kafka.retry_topic, kafka.dlq_topic) with
    /// kafka.partitions partitions. Idempotent: existing topics are left as they are.
    Create,
}

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
            command: TopicsCommand::Create,
        } => {
            for creation in
                crate::kafka::create_topics(&settings.kafka, &settings.topic_names()).await?
            {
                match creation {
                    TopicCreation::Created { topic, partitions } => {
                        println!("created {topic} ({partitions} partitions)")
                    }
                    TopicCreation::AlreadyExists { topic } => println!("exists  {topic}"),
                }
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
                "kafka.security     = {}",
                settings.kafka.security_protocol.as_librdkafka()
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

async fn run_dlq(command: DlqCommand, settings: &Settings) -> anyhow::Result<()> {
    use crate::ops::dlq::{self, ReplayOutcome};

    match command {
        DlqCommand::List { tenant, limit } => {
            let dead_letters = dlq::list(settings, tenant.as_deref()).await?;
            let skip = dead_letters.len().saturating_sub(limit as usize);
            for view in &dead_letters[skip..] {
                println!("{}", view.summary_line());
            }
            println!(
                "{} dead letter(s) in {}",
                dead_letters.len(),
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
