//! The environment of one run: its directory, ports, Toxiproxy, the private stack and the role
//! processes, started in order and stopped in reverse.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::clock::Clock;
use crate::roles::{Role, Roles};
use crate::stack::{Ports, PrivateStack, Service};
use crate::toxiproxy::Toxiproxy;

/// A tenant of the workload and its API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenant {
    pub id: &'static str,
    pub key: &'static str,
}

/// The two demo tenants of config/dev.toml, and one the suite configures itself (`--set
/// tenants.initech.api_key_sha256=...`), as a deployment adds tenants.
pub const TENANTS: [Tenant; 3] = [
    Tenant {
        id: "acme",
        key: "demo-key-acme",
    },
    Tenant {
        id: "globex",
        key: "demo-key-globex",
    },
    Tenant {
        id: "initech",
        key: "faults-key-initech",
    },
];

/// Names the roles use in the private stack (the defaults: it is a stack of its own).
pub const TOPIC: &str = "activities";
pub const DLQ_TOPIC: &str = "activities.dlq";
pub const RETRY_TOPICS: [&str; 3] = [
    "activities.retry.1",
    "activities.retry.2",
    "activities.retry.3",
];
pub const GROUP: &str = "activity-pipeline";
pub const DATABASE: &str = "activity_pipeline";
pub const COLLECTION: &str = "activities";
pub const PARTITIONS: i32 = 6;
/// `http.max_body_bytes` of the run: small, so the 413 case is cheap to send.
pub const MAX_BODY_BYTES: usize = 65536;

pub struct Env {
    pub clock: Clock,
    pub ports: Ports,
    pub api_url: String,
    pub toxiproxy: Toxiproxy,
    pub stack: Mutex<PrivateStack>,
    pub roles: Mutex<Roles>,
    http: reqwest::Client,
}

impl Env {
    /// Starts Toxiproxy, the private stack behind it, the topics and the roles; returns once the API
    /// answers.
    pub async fn start(
        repo: &Path,
        binary: &Path,
        dir: PathBuf,
        seed: u64,
        clock: Clock,
    ) -> anyhow::Result<Env> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let ports = Ports::pick()?;
        println!(
            "faults: ports: kafka {} (proxy {}), mongo {} (proxy {}), redis {} (proxy {}), api {}, toxiproxy {}",
            ports.kafka, ports.kafka_proxy, ports.mongo, ports.mongo_proxy, ports.redis,
            ports.redis_proxy, ports.api, ports.toxiproxy
        );
        let toxiproxy =
            Toxiproxy::start(repo, ports.toxiproxy, seed, &dir.join("logs/toxiproxy.log")).await?;
        toxiproxy
            .create_proxy(Service::Kafka, ports.kafka_proxy, ports.kafka)
            .await?;
        toxiproxy
            .create_proxy(Service::Mongo, ports.mongo_proxy, ports.mongo)
            .await?;
        toxiproxy
            .create_proxy(Service::Redis, ports.redis_proxy, ports.redis)
            .await?;

        let mut stack =
            PrivateStack::new(repo, dir.join("stack"), &ports, dir.join("logs/stack.log"));
        println!(
            "faults: starting the private stack in {}",
            stack.dir.display()
        );
        stack.up(None).await?;

        let config = repo.join("config/dev.toml");
        let overrides = role_overrides(&ports);
        let mut base_args = vec!["--config".to_owned(), config.display().to_string()];
        for flag in &overrides {
            base_args.push("--set".to_owned());
            base_args.push(flag.clone());
        }
        create_topics(binary, &base_args, &dir).await?;

        let role = |name: &str, command: &[&str]| {
            let mut args = base_args.clone();
            args.extend(command.iter().map(|arg| (*arg).to_owned()));
            Role::new(name, binary, args, dir.join(format!("logs/{name}.log")))
        };
        let mut roles = Roles {
            api: role("api", &["produce"]),
            consumers: vec![
                role("consumer-1", &["consume", "--stage", "all"]),
                role("consumer-2", &["consume", "--stage", "all"]),
            ],
            unexpected_exits: Vec::new(),
        };
        for role in roles.all_mut() {
            role.start(&clock)?;
        }
        let env = Env {
            clock,
            api_url: format!("http://127.0.0.1:{}", ports.api),
            ports,
            toxiproxy,
            stack: Mutex::new(stack),
            roles: Mutex::new(roles),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
        };
        env.wait_for_api(Duration::from_secs(60)).await?;
        Ok(env)
    }

    /// Polls `GET /healthz` until it answers 200.
    pub async fn wait_for_api(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self
                .http
                .get(format!("{}/healthz", self.api_url))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success())
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("the API did not answer /healthz within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Undoes whatever a fault may have left (a failed step): every proxy clean, every service and
    /// role up.
    pub async fn restore(&self) -> anyhow::Result<()> {
        self.toxiproxy.reset().await?;
        self.stack.lock().await.up(None).await?;
        let mut roles = self.roles.lock().await;
        for role in roles.all_mut() {
            if role.pid().is_none() {
                role.start(&self.clock)?;
            }
        }
        drop(roles);
        self.wait_for_api(Duration::from_secs(60)).await
    }

    pub fn mongo_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.ports.mongo)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports.redis)
    }

    /// The broker advertises the proxy's port, so every Kafka client goes through it.
    pub fn kafka_brokers(&self) -> String {
        format!("127.0.0.1:{}", self.ports.kafka_proxy)
    }

    /// Stops the roles, Toxiproxy and the stack; deletes the stack's data when `delete_data`.
    pub async fn stop(self, delete_data: bool) {
        self.roles.lock().await.terminate_all().await;
        self.toxiproxy.stop().await;
        let mut stack = self.stack.into_inner();
        if delete_data {
            stack.reset_blocking();
        } else {
            stack.stop_blocking();
        }
    }
}

/// The settings every role of the run gets, on top of config/dev.toml.
fn role_overrides(ports: &Ports) -> Vec<String> {
    let initech = hex::encode(Sha256::digest(TENANTS[2].key.as_bytes()));
    vec![
        format!("kafka.brokers=127.0.0.1:{}", ports.kafka_proxy),
        format!("kafka.partitions={PARTITIONS}"),
        format!("mongo.uri=mongodb://127.0.0.1:{}", ports.mongo_proxy),
        "mongo.server_selection_timeout_ms=3000".to_owned(),
        format!("redis.url=redis://127.0.0.1:{}", ports.redis_proxy),
        format!("http.listen=127.0.0.1:{}", ports.api),
        "http.workers=2".to_owned(),
        format!("http.max_body_bytes={MAX_BODY_BYTES}"),
        "consumer.metrics_listen=127.0.0.1:0".to_owned(),
        "consumer.outage_backoff_max_ms=2000".to_owned(),
        "log.filter=info,rdkafka=warn".to_owned(),
        format!("tenants.{}.api_key_sha256={initech}", TENANTS[2].id),
    ]
}

/// `activity-pipeline topics create`, retried while the broker settles.
async fn create_topics(binary: &Path, base_args: &[String], dir: &Path) -> anyhow::Result<()> {
    let log = dir.join("logs/topics.log");
    for attempt in 1..=20 {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let status = tokio::process::Command::new(binary)
            .args(base_args)
            .args(["topics", "create"])
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .await
            .context("running topics create")?;
        if status.success() {
            return Ok(());
        }
        if attempt == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    anyhow::bail!("topics create kept failing; see {}", log.display())
}
