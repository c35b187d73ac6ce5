//! The command line: `activity-pipeline [--config FILE]... [--set KEY=VALUE]... <command>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
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
    /// SIGTERM/SIGINT finish the batch in hand, commit and leave the group; a second signal exits now.
    Consume {
        /// Consumer group to join (overrides kafka.consumer_group).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
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
        Command::Consume { group: Some(group) } => {
            overrides.push(format!("kafka.consumer_group={group}"))
        }
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
            let application = crate::produce::Application::build(&settings).await?;
            application.run_until_stopped().await
        }
        Command::Consume { .. } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signals(shutdown.clone()));
            crate::consume::run(&settings, shutdown).await
        }
        Command::Topics {
            command: TopicsCommand::Create,
        } => {
            for creation in crate::kafka::create_topics(&settings.kafka).await? {
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

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once (redelivery covers the rest).
async fn cancel_on_signals(shutdown: CancellationToken) {
    wait_for_signal().await;
    tracing::info!(
        "shutdown requested: finishing the batch in hand (signal again to stop at once)"
    );
    shutdown.cancel();
    wait_for_signal().await;
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

/// Resolves on the first SIGTERM or SIGINT received after it is called.
pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
