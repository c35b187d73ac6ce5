//! Phases 1 and 2: the machine's ceilings (Kafka through ProducerPerformance, the store through a raw
//! `insert_many`), each on a topic or database of its own.

use std::path::Path;

use activity_pipeline::config::Settings;
use activity_pipeline::kafka::create_topics;

use super::describe_cores;
use crate::{ceilings, workload, Bench};

impl Bench {
    pub async fn kafka_ceiling(
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

    pub async fn store_ceiling(
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
}
