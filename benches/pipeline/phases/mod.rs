//! The phases of a run, one file each, as `Bench` methods the driver (`main.rs`) sequences; this file
//! holds what every phase uses: names unique to a phase, the roles' overrides and settings, load
//! plans and request makers, spawning roles, scraping, cleanup.
//! - `ceilings`: 1. Kafka (ProducerPerformance) and 2. store (raw `insert_many`);
//! - `ingest`: 3. single and 4. batch ingest against one produce process;
//! - `drain`: 5. a consumer process draining a pre-filled topic (and `drain_records`, the drain by
//!   one or several consumer processes that `hot_tenant` and `scaling` use);
//! - `end_to_end`: 6. 202 -> live event through both roles;
//! - `reads`: 8. the read API at growing sizes of one tenant (`--phases reads`, not a default);
//! - `hot_tenant`: one tenant's drain by 1 and 2 consumers (`--phases hot`, not a default);
//! - `scaling`: ingest by 1 and 2 API instances, drain by 1 and 2 consumers, on the cluster profile,
//!   with the CPU of every process (`--phases scaling`, not a default).

mod ceilings;
mod drain;
mod end_to_end;
mod hot_tenant;
mod ingest;
mod publish;
mod reads;
mod scaling;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use activity_pipeline::config::{Settings, Sources};
use activity_pipeline::store::RedisConnection;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use crate::http::{self, LoadPlan, LoadResult, Pacing, RequestMaker};
use crate::options::Subject;
use crate::processes::Role;
use crate::workload;
use crate::Bench;

const STOP_GRACE: Duration = Duration::from_secs(20);

/// Names unique to one phase of one run.
pub struct Names {
    pub topic: String,
    pub database: String,
    pub prefix: String,
    pub key_prefix: String,
}

impl Bench {
    pub fn phase(&self, name: &str) -> bool {
        self.options.phases.iter().any(|phase| phase == name)
    }

    pub fn names(&self, round: usize, subject: &str, phase: &str) -> Names {
        let run = &self.run_id;
        Names {
            topic: format!("bench-{run}-r{round}-{subject}-{phase}"),
            database: format!("bench_{run}_r{round}_{subject}_{phase}"),
            prefix: format!("bench:{run}:r{round}:{subject}:{phase}:"),
            key_prefix: format!("{run}-r{round}-{subject}-{phase}"),
        }
    }

    /// The `--set` flags of a role (or the in-process clients) for `names`.
    pub fn overrides(
        &self,
        subject: Option<&Subject>,
        names: &Names,
        extra: &[String],
    ) -> Vec<String> {
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

    pub fn settings(&self, overrides: &[String]) -> anyhow::Result<Settings> {
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
            addresses: vec![address],
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

    /// Activities counted in the tenants' Redis counters of `settings` (its Redis, single node or
    /// cluster, and its key prefix).
    async fn counted(&self, settings: &Settings) -> anyhow::Result<i64> {
        let mut connection = RedisConnection::prepare(&settings.redis, Duration::from_secs(5))?;
        let prefix = &settings.redis.key_prefix;
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
        // A Redis Cluster is only ever the private one of the scaling phase, deleted after the run;
        // SCAN and multi-key UNLINK would have to go node by node and slot by slot there.
        if settings.redis.cluster {
            return;
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
