//! Scaling (`--phases scaling`): on the cluster profile (three brokers, topics with RF 3 and
//! `min.insync.replicas` 2), single and batch ingest with the clients spread over 1, then 2 API
//! processes, and a drain by 1, then 2 consumer processes (`--scaling-instances`), with the CPU of
//! every process: the API and consumer instances, each broker, Redis, FerretDB, the bench.
//!
//! On a machine with fewer cores than processes the rates cannot scale; what the phase is for is
//! the CPU each part spends per activity, and which part runs out first.

use std::net::SocketAddr;

use activity_pipeline::kafka::create_topics;
use anyhow::Context as _;

use super::drain::{DrainPlan, DrainStart};
use super::{describe_cpu, max_mib, STOP_GRACE};
use crate::http::{self, Pacing};
use crate::options::Subject;
use crate::processes::{free_port, wait_ready, Role};
use crate::report::{ScaledDrain, ScaledLoad, ScalingResult, SubjectRound};
use crate::{workload, Bench};

impl Bench {
    pub async fn scaling(
        &self,
        round: usize,
        subject: &Subject,
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        let brokers = self.options.cluster_brokers.as_deref().context(
            "--phases scaling runs on a Kafka cluster: pass --cluster-brokers (scripts/bench.sh starts a private one)",
        )?;
        let mut cluster = vec![
            format!("kafka.brokers={brokers}"),
            "kafka.replication_factor=3".to_owned(),
            "kafka.min_insync_replicas=2".to_owned(),
        ];
        let redis = match &self.options.cluster_redis_url {
            Some(seeds) => {
                cluster.push(format!("redis.url={seeds}"));
                cluster.push("redis.cluster=true".to_owned());
                format!("a Redis Cluster (seeds {seeds})")
            }
            None => format!("Redis single node ({})", self.options.redis_url),
        };
        let mut scaling = ScalingResult {
            stack: format!(
                "{} Kafka brokers (topics RF 3, min.insync.replicas 2), {redis}, FerretDB",
                brokers.split(',').count(),
            ),
            ..ScalingResult::default()
        };
        let mut counts = self.options.scaling_instances.clone();
        if round % 2 == 0 {
            counts.reverse();
        }
        for &instances in &counts {
            self.scaled_ingest(round, subject, instances, &cluster, &mut scaling, result)
                .await?;
        }
        for &instances in &counts {
            let names = self.names(round, &subject.name, &format!("sd{instances}"));
            let overrides = self.overrides(Some(subject), &names, &cluster);
            let settings = self.settings(&overrides)?;
            create_topics(&settings.kafka, &settings.topic_names()).await?;
            let plan = DrainPlan {
                label: &format!("scaling-{instances}c"),
                envelopes: workload::envelopes(
                    &self.tenants,
                    &names.key_prefix,
                    self.options.scaling_records,
                ),
                consumers: instances,
                start: DrainStart::BeforePrefill,
                watched: self.cluster_watched(),
            };
            let outcome = self
                .drain_records(round, subject, &names, &settings, &overrides, plan)
                .await;
            self.cleanup(&settings, &names).await;
            let run = outcome?;
            result.consume_peak_rss_mib = max_mib(result.consume_peak_rss_mib, run.peak_rss_kib);
            scaling.drain.push(ScaledDrain {
                instances,
                partitions_used: run.partitions_used,
                batch_partitions_mean: run.batch_partitions_mean,
                batch_records_mean: run.batch_records_mean,
                records_by_consumer: run.records_by_consumer,
                drain: run.drain,
            });
        }
        for figures in [&mut scaling.single, &mut scaling.batch] {
            figures.sort_by_key(|figure| figure.instances);
        }
        scaling.drain.sort_by_key(|drain| drain.instances);
        result.scaling = Some(scaling);
        Ok(())
    }

    /// The stack's processes for the scaling phase: the cluster's (brokers, and the Redis
    /// Cluster's nodes when it runs on one) instead of the single node's, and FerretDB.
    fn cluster_watched(&self) -> Vec<(String, u32)> {
        let on_redis_cluster = self.options.cluster_redis_url.is_some();
        let mut watched = self.cluster_watched.clone();
        watched.extend(
            self.watched
                .iter()
                .filter(|(name, _)| name != "kafka" && !(on_redis_cluster && name == "redis"))
                .cloned(),
        );
        watched
    }

    /// Single, then batch ingest at the maximum rate (closed loop) with the connections spread over
    /// `instances` produce processes.
    async fn scaled_ingest(
        &self,
        round: usize,
        subject: &Subject,
        instances: usize,
        cluster: &[String],
        scaling: &mut ScalingResult,
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        let names = self.names(round, &subject.name, &format!("si{instances}"));
        let overrides = self.overrides(Some(subject), &names, cluster);
        let settings = self.settings(&overrides)?;
        create_topics(&settings.kafka, &settings.topic_names()).await?;
        let mut roles: Vec<Role> = Vec::new();
        let mut addresses: Vec<SocketAddr> = Vec::new();
        let outcome = async {
            for index in 0..instances {
                let port = free_port()?;
                let address: SocketAddr = format!("127.0.0.1:{port}").parse()?;
                let mut role_overrides = overrides.clone();
                role_overrides.push(format!("http.listen={address}"));
                let name = if instances == 1 {
                    "produce".to_owned()
                } else {
                    format!("produce-{}", index + 1)
                };
                let mut produce = self.spawn_role(
                    &name,
                    subject,
                    &role_overrides,
                    &["produce"],
                    self.out.join(format!(
                        "r{round}-{}-scaling-{instances}api-{name}.log",
                        subject.name
                    )),
                )?;
                let ready = wait_ready(
                    &self.http,
                    &mut produce,
                    &format!("http://{address}/healthz"),
                    std::time::Duration::from_secs(30),
                )
                .await;
                roles.push(produce);
                ready?;
                addresses.push(address);
            }
            let observed = {
                let mut observed: Vec<(String, u32)> = roles
                    .iter()
                    .map(|role| (role.name.clone(), role.pid))
                    .collect();
                observed.push(("bench".to_owned(), std::process::id()));
                observed.extend(self.cluster_watched());
                observed
            };
            let mut single = self.plan(
                addresses[0],
                self.options.connections,
                Pacing::Closed,
                1,
                self.single_maker(format!("{}-smax", names.key_prefix)),
                observed.clone(),
                None,
            );
            single.addresses = addresses.clone();
            let single = http::run(single).await;
            print_scaled("single", subject, instances, &single);
            scaling.single.push(ScaledLoad {
                instances,
                load: single,
            });
            let mut batch = self.plan(
                addresses[0],
                self.options.batch_connections,
                Pacing::Closed,
                self.options.batch_size,
                self.batch_maker(format!("{}-bmax", names.key_prefix)),
                observed,
                None,
            );
            batch.addresses = addresses.clone();
            let batch = http::run(batch).await;
            print_scaled("batch", subject, instances, &batch);
            scaling.batch.push(ScaledLoad {
                instances,
                load: batch,
            });
            for role in &mut roles {
                role.ensure_running()?;
            }
            anyhow::Ok(())
        }
        .await;
        for role in roles {
            let peak = role.stop(STOP_GRACE).await;
            result.produce_peak_rss_mib = max_mib(result.produce_peak_rss_mib, peak);
        }
        self.cleanup(&settings, &names).await;
        outcome
    }
}

fn print_scaled(kind: &str, subject: &Subject, instances: usize, load: &http::LoadResult) {
    let failures = if load.failures.is_empty() {
        String::new()
    } else {
        format!(", failures {:?}", load.failures)
    };
    println!(
        "  S. [{}] {kind}, {instances} API instance(s): {:.0} req/s ({:.0} activities/s), p50 {:.2} ms, p99 {:.2} ms{failures} [cores: {}]",
        subject.name,
        load.requests_per_s,
        load.items_per_s,
        load.latency.p50_ms,
        load.latency.p99_ms,
        describe_cpu(load),
    );
}
