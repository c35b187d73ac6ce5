//! Phases 3 and 4: single and batch ingest against one produce process, each at its maximum (closed
//! loop) and then at half of it (open loop).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use activity_pipeline::kafka::create_topics;

use super::{describe_cpu, max_mib, Names, STOP_GRACE};
use crate::http::{self, LoadResult, Pacing};
use crate::options::Subject;
use crate::processes::{free_port, metric_sum, wait_ready};
use crate::report::SubjectRound;
use crate::{workload, Bench};

impl Bench {
    /// Single and batch ingest against one produce process.
    pub async fn ingest(
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
        const FALLBACKS: &str = "activity_pipeline_redis_fallbacks_total";
        result.produce_redis_fallbacks = self
            .scrape(&format!("http://{address}/metrics"))
            .await
            .filter(|text| text.contains(FALLBACKS))
            .map(|text| metric_sum(&text, FALLBACKS));
        if let Some(fallbacks) = result.produce_redis_fallbacks.filter(|count| *count > 0.0) {
            println!(
                "  [{}] {fallbacks} of produce's Redis calls failed or passed their budget (each skips that part for up to 1 s)",
                subject.name
            );
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
