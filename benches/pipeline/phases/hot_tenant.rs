//! Hot tenant (`--phases hot`): one tenant's records alone in the topic, drained by 1, then 2
//! consumer processes (`--hot-consumers`). Run it with one subject per spread, e.g.
//! `--subject spread1 --subject spread4+tenants.bench00.partition_spread=4`: the pre-fill places the
//! records as the API would with the subject's settings, so the subjects compare the spread.

use activity_pipeline::kafka::create_topics;

use super::drain::{DrainPlan, DrainStart};
use super::max_mib;
use crate::options::Subject;
use crate::report::{HotTenantResult, ScaledDrain, SubjectRound};
use crate::{workload, Bench};

impl Bench {
    pub async fn hot_tenant(
        &self,
        round: usize,
        subject: &Subject,
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        let tenant = &self.tenants.ids[0];
        let mut hot = HotTenantResult {
            tenant: tenant.to_string(),
            records: self.options.hot_records,
            drains: Vec::new(),
        };
        // Alternate the instance counts' order from round to round, as the subjects alternate.
        let mut counts = self.options.hot_consumers.clone();
        if round % 2 == 0 {
            counts.reverse();
        }
        for consumers in counts {
            let names = self.names(round, &subject.name, &format!("hot{consumers}"));
            let overrides = self.overrides(Some(subject), &names, &[]);
            let settings = self.settings(&overrides)?;
            create_topics(&settings.kafka, &settings.topic_names()).await?;
            let plan = DrainPlan {
                label: &format!("hot-{consumers}c"),
                // Seeded bodies: thousands of entities, so a spread tenant's buckets all fill.
                envelopes: workload::seeded_envelopes(
                    tenant,
                    &names.key_prefix,
                    0..self.options.hot_records,
                ),
                consumers,
                start: DrainStart::BeforePrefill,
                watched: self.watched.clone(),
            };
            let outcome = self
                .drain_records(round, subject, &names, &settings, &overrides, plan)
                .await;
            self.cleanup(&settings, &names).await;
            let run = outcome?;
            result.consume_peak_rss_mib = max_mib(result.consume_peak_rss_mib, run.peak_rss_kib);
            hot.drains.push(ScaledDrain {
                instances: consumers,
                partitions_used: run.partitions_used,
                batch_partitions_mean: run.batch_partitions_mean,
                batch_records_mean: run.batch_records_mean,
                records_by_consumer: run.records_by_consumer,
                drain: run.drain,
            });
        }
        hot.drains.sort_by_key(|drain| drain.instances);
        result.hot = Some(hot);
        Ok(())
    }
}
