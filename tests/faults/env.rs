//! The environment of one run: its directory, ports, Toxiproxy, the private stack and the role
//! processes, started in order and stopped in reverse. The cluster drill's environment has no
//! Toxiproxy, a private cluster (`cluster`) for Kafka and the Redis Cluster, FerretDB (and with
//! `--redis single` Redis) of the private stack, and two `produce` instances.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::clock::Clock;
use crate::cluster::PrivateCluster;
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
    /// The first API instance (the suite's only one).
    pub api_url: String,
    /// Every API instance; clients and live clients spread over them.
    pub api_urls: Vec<String>,
    /// The fault proxy of the suite; the drill kills processes and needs none.
    pub toxiproxy: Option<Toxiproxy>,
    /// FerretDB and Redis, and the single broker of the suite (the drill's brokers are `cluster`).
    pub stack: Mutex<PrivateStack>,
    /// The drill's three brokers (and its Redis Cluster).
    pub cluster: Option<Mutex<PrivateCluster>>,
    pub roles: Mutex<Roles>,
    /// What the roles are started with, so the drill can start another instance of one.
    pub role_template: RoleTemplate,
    kafka_brokers: String,
    redis: RedisTarget,
    http: reqwest::Client,
}

/// Where the run's Redis is: one node, or the seed nodes of a Redis Cluster.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
}

/// The binary and the arguments every role of the run gets.
pub struct RoleTemplate {
    binary: PathBuf,
    base_args: Vec<String>,
    logs: PathBuf,
}

impl RoleTemplate {
    /// Runs the binary once with the run's settings and `command` (an operator's verb), its output
    /// appended to `logs/<log>.log`; fails unless it exits 0.
    pub async fn run_once(&self, command: &[&str], log: &str) -> anyhow::Result<()> {
        let path = self.logs.join(format!("{log}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let status = tokio::process::Command::new(&self.binary)
            .args(&self.base_args)
            .args(command)
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .status()
            .await
            .with_context(|| format!("running {}", command.join(" ")))?;
        anyhow::ensure!(
            status.success(),
            "{} failed ({status}); see {}",
            command.join(" "),
            path.display()
        );
        Ok(())
    }

    /// The run's roles, all started: `apis`, and the two consumers every run has (each running
    /// every stage).
    pub fn start_roles(&self, apis: Vec<Role>, clock: &Clock) -> anyhow::Result<Roles> {
        let mut roles = Roles {
            apis,
            consumers: vec![
                self.role("consumer-1", &["consume", "--stage", "all"], &[]),
                self.role("consumer-2", &["consume", "--stage", "all"], &[]),
            ],
            retired: Vec::new(),
            unexpected_exits: Vec::new(),
        };
        for role in roles.all_mut() {
            role.start(clock)?;
        }
        Ok(roles)
    }

    /// A role `name` running `command`, with `extra` settings on top of the run's (`--set`).
    pub fn role(&self, name: &str, command: &[&str], extra: &[String]) -> Role {
        let mut args = self.base_args.clone();
        for flag in extra {
            args.push("--set".to_owned());
            args.push(flag.clone());
        }
        args.extend(command.iter().map(|arg| (*arg).to_owned()));
        Role::new(
            name,
            &self.binary,
            args,
            self.logs.join(format!("{name}.log")),
        )
    }
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

        let kafka_brokers = format!("127.0.0.1:{}", ports.kafka_proxy);
        let mut overrides = common_overrides();
        overrides.extend([
            format!("kafka.brokers={kafka_brokers}"),
            format!("mongo.uri=mongodb://127.0.0.1:{}", ports.mongo_proxy),
            format!("redis.url=redis://127.0.0.1:{}", ports.redis_proxy),
            format!("http.listen=127.0.0.1:{}", ports.api),
        ]);
        let template = RoleTemplate::new(repo, binary, &overrides, &dir);
        create_topics(binary, &template.base_args, &dir).await?;

        let roles = template.start_roles(vec![template.role("api", &["produce"], &[])], &clock)?;
        let api_url = format!("http://127.0.0.1:{}", ports.api);
        let env = Env {
            clock,
            api_urls: vec![api_url.clone()],
            api_url,
            redis: RedisTarget::Single(format!("redis://127.0.0.1:{}", ports.redis)),
            ports,
            toxiproxy: Some(toxiproxy),
            stack: Mutex::new(stack),
            cluster: None,
            roles: Mutex::new(roles),
            role_template: template,
            kafka_brokers,
            http: http_client()?,
        };
        env.wait_for_api(Duration::from_secs(60)).await?;
        Ok(env)
    }

    /// The cluster drill's environment: FerretDB (and Redis, unless `redis_cluster`) of a private
    /// stack on free ports, a private cluster of three brokers (and a Redis Cluster) at a free port
    /// offset, the topics replicated three ways, and the roles talking to them directly: two
    /// `produce`, two `consume` of one group.
    pub async fn start_cluster(
        repo: &Path,
        binary: &Path,
        dir: PathBuf,
        clock: Clock,
        redis_cluster: bool,
    ) -> anyhow::Result<Env> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let ports = Ports::pick()?;
        let second_api = ports.second_api;
        let offset = crate::cluster::pick_offset()?;
        let mut cluster = PrivateCluster::new(
            repo,
            dir.join("cluster"),
            offset,
            dir.join("logs/cluster.log"),
        );
        println!(
            "faults: ports: kafka {} (controllers {}-{}), redis {}, mongo {}, api {} and {}",
            cluster.bootstrap(),
            cluster.controller_port(1),
            cluster.controller_port(3),
            if redis_cluster {
                cluster.redis_seed_urls()
            } else {
                ports.redis.to_string()
            },
            ports.mongo,
            ports.api,
            second_api
        );
        let mut stack =
            PrivateStack::new(repo, dir.join("stack"), &ports, dir.join("logs/stack.log"));
        println!(
            "faults: starting the private cluster in {} (port offset {offset}) and FerretDB in {}",
            cluster.dir.display(),
            stack.dir.display()
        );
        stack.up(Some(Service::Mongo)).await?;
        if redis_cluster {
            cluster.up("redis").await?;
        } else {
            stack.up(Some(Service::Redis)).await?;
        }
        cluster.up("kafka").await?;

        let kafka_brokers = cluster.bootstrap();
        let redis = if redis_cluster {
            RedisTarget::Cluster(
                cluster
                    .redis_ports()
                    .iter()
                    .map(|port| format!("redis://127.0.0.1:{port}"))
                    .collect(),
            )
        } else {
            RedisTarget::Single(format!("redis://127.0.0.1:{}", ports.redis))
        };
        let mut overrides = common_overrides();
        overrides.extend([
            format!("kafka.brokers={kafka_brokers}"),
            "kafka.replication_factor=3".to_owned(),
            "kafka.min_insync_replicas=2".to_owned(),
            format!("mongo.uri=mongodb://127.0.0.1:{}", ports.mongo),
        ]);
        match &redis {
            RedisTarget::Single(url) => overrides.push(format!("redis.url={url}")),
            RedisTarget::Cluster(_) => overrides.extend([
                format!("redis.url={}", cluster.redis_seed_urls()),
                "redis.cluster=true".to_owned(),
            ]),
        }
        let template = RoleTemplate::new(repo, binary, &overrides, &dir);
        create_topics(binary, &template.base_args, &dir).await?;

        let api_urls: Vec<String> = [ports.api, second_api]
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect();
        let api = |name: &str, port: u16| {
            template.role(
                name,
                &["produce"],
                &[format!("http.listen=127.0.0.1:{port}")],
            )
        };
        let roles = template.start_roles(
            vec![api("api-1", ports.api), api("api-2", second_api)],
            &clock,
        )?;
        let env = Env {
            clock,
            api_url: api_urls[0].clone(),
            api_urls,
            redis,
            ports,
            toxiproxy: None,
            stack: Mutex::new(stack),
            cluster: Some(Mutex::new(cluster)),
            roles: Mutex::new(roles),
            role_template: template,
            kafka_brokers,
            http: http_client()?,
        };
        env.wait_for_api(Duration::from_secs(60)).await?;
        Ok(env)
    }

    pub fn toxiproxy(&self) -> anyhow::Result<&Toxiproxy> {
        self.toxiproxy
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this run has no fault proxy (the cluster drill)"))
    }

    /// The drill's cluster.
    pub fn cluster(&self) -> anyhow::Result<&Mutex<PrivateCluster>> {
        self.cluster
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this run has no private cluster"))
    }

    /// Polls `GET /healthz` of every API instance until each answers 200.
    pub async fn wait_for_api(&self, within: Duration) -> anyhow::Result<()> {
        for api in &self.api_urls {
            self.wait_for_healthz(api, within).await?;
        }
        Ok(())
    }

    async fn wait_for_healthz(&self, api: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self
                .http
                .get(format!("{api}/healthz"))
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
        if let Some(toxiproxy) = &self.toxiproxy {
            toxiproxy.reset().await?;
        }
        match &self.cluster {
            None => self.stack.lock().await.up(None).await?,
            Some(cluster) => {
                let mut stack = self.stack.lock().await;
                stack.up(Some(Service::Mongo)).await?;
                let mut cluster = cluster.lock().await;
                match self.redis {
                    RedisTarget::Single(_) => stack.up(Some(Service::Redis)).await?,
                    RedisTarget::Cluster(_) => cluster.up("redis").await?,
                }
                cluster.up("kafka").await?;
            }
        }
        let mut roles = self.roles.lock().await;
        for role in roles.all_mut() {
            if role.pid().is_none() {
                role.start(&self.clock)?;
            }
        }
        drop(roles);
        self.wait_for_api(Duration::from_secs(60)).await
    }

    /// The run's stores, as the checker reads them.
    pub fn stores(&self) -> crate::checker::Stores {
        crate::checker::Stores {
            mongo_uri: self.mongo_uri(),
            redis: self.redis.clone(),
            brokers: self.kafka_brokers(),
        }
    }

    pub fn mongo_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.ports.mongo)
    }

    /// A Redis node to connect to (for a Redis Cluster, the first seed node).
    pub fn redis_url(&self) -> String {
        match &self.redis {
            RedisTarget::Single(url) => url.clone(),
            RedisTarget::Cluster(seeds) => seeds[0].clone(),
        }
    }

    /// The suite's broker advertises the proxy's port, so every Kafka client goes through it; the
    /// drill's clients talk to its three brokers.
    pub fn kafka_brokers(&self) -> String {
        self.kafka_brokers.clone()
    }

    /// Stops the roles, Toxiproxy and the stack; deletes the stack's data when `delete_data`.
    pub async fn stop(self, delete_data: bool) {
        self.roles.lock().await.terminate_all().await;
        if let Some(toxiproxy) = self.toxiproxy {
            toxiproxy.stop().await;
        }
        if let Some(cluster) = self.cluster {
            cluster.into_inner().stop_blocking(delete_data);
        }
        let mut stack = self.stack.into_inner();
        if delete_data {
            stack.reset_blocking();
        } else {
            stack.stop_blocking();
        }
    }
}

impl RoleTemplate {
    fn new(repo: &Path, binary: &Path, overrides: &[String], dir: &Path) -> RoleTemplate {
        let config = repo.join("config/dev.toml");
        let mut base_args = vec!["--config".to_owned(), config.display().to_string()];
        for flag in overrides {
            base_args.push("--set".to_owned());
            base_args.push(flag.clone());
        }
        RoleTemplate {
            binary: binary.to_owned(),
            base_args,
            logs: dir.join("logs"),
        }
    }
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?)
}

/// The settings every role of the run gets, on top of config/dev.toml (the addresses of the
/// services come on top of these).
fn common_overrides() -> Vec<String> {
    let initech = hex::encode(Sha256::digest(TENANTS[2].key.as_bytes()));
    vec![
        format!("kafka.partitions={PARTITIONS}"),
        "mongo.server_selection_timeout_ms=3000".to_owned(),
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
