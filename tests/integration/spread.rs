//! Hot tenants (`tenants.<id>.partition_spread`): one tenant's records spread over several
//! partitions by entity, each entity's on one partition and in order, every activity stored and
//! counted once; a tenant without a spread stays on the partition Kafka's partitioner gives its key.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use serde_json::json;

use crate::helpers::{TestPipeline, ACME_KEY, GLOBEX_KEY};

const ENTITIES: usize = 6;
const PER_ENTITY: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_tenant_uses_its_partitions_keeps_each_entitys_order_and_loses_nothing() {
    // The test's topic has 3 partitions: acme spreads over all of them.
    let pipeline = TestPipeline::spawn_with(&["tenants.acme.partition_spread=3".to_owned()]).await;
    for seq in 0..PER_ENTITY {
        for entity in 0..ENTITIES {
            let body = json!({
                "actorId": format!("u{}", (seq + entity) % 4),
                "actorName": "User",
                "type": "doc.edited",
                "entityId": format!("e{entity}"),
                "metadata": { "seq": seq },
            });
            let response = pipeline
                .post_activity(ACME_KEY, Some(&format!("spread-{entity}-{seq}")), &body)
                .await;
            assert_eq!(response.status(), 202);
        }
    }
    for seq in 0..3 {
        let body = json!({"actorId": "g", "actorName": "G", "type": "t", "metadata": {"seq": seq}});
        let response = pipeline
            .post_activity(GLOBEX_KEY, Some(&format!("plain-{seq}")), &body)
            .await;
        assert_eq!(response.status(), 202);
    }
    let total = (ENTITIES * PER_ENTITY) as u64;
    assert_eq!(
        pipeline
            .wait_for_count(doc! { "tenantId": "acme" }, total)
            .await,
        total
    );
    assert_eq!(
        pipeline
            .wait_for_count(doc! { "tenantId": "globex" }, 3)
            .await,
        3
    );
    crate::helpers::eventually("acme's counter is exact", || async {
        pipeline.counters("acme").await.get("doc.edited") == Some(&(total as i64))
    })
    .await;

    // Where the records went: the main topic, read back.
    let kafka = pipeline.settings.kafka.clone();
    let records = tokio::task::spawn_blocking(move || {
        activity_pipeline::kafka::read_topic(&kafka, &kafka.topic, Duration::from_secs(20))
    })
    .await
    .unwrap()
    .expect("the main topic reads");
    let mut partitions_of_entity: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    let mut globex_partitions = BTreeSet::new();
    for record in &records {
        let tenant =
            String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
        let value: serde_json::Value =
            serde_json::from_slice(record.payload.as_deref().unwrap_or_default()).unwrap();
        match tenant.as_str() {
            "acme" => {
                let entity = value["activity"]["entityId"].as_str().unwrap().to_owned();
                partitions_of_entity
                    .entry(entity)
                    .or_default()
                    .insert(record.partition);
            }
            "globex" => {
                globex_partitions.insert(record.partition);
            }
            other => panic!("a record keyed {other:?}"),
        }
    }
    assert_eq!(partitions_of_entity.len(), ENTITIES);
    for (entity, partitions) in &partitions_of_entity {
        assert_eq!(
            partitions.len(),
            1,
            "{entity}'s records share one partition"
        );
    }
    let used: BTreeSet<i32> = partitions_of_entity.values().flatten().copied().collect();
    assert!(
        used.len() > 1,
        "acme's records spread over more than one partition: {used:?}"
    );
    // librdkafka's default partitioner: CRC-32 of the key modulo the partition count, the base
    // partition PartitionSpread starts from.
    let expected_globex = (crc32fast::hash(b"globex") % 3) as i32;
    assert_eq!(globex_partitions, BTreeSet::from([expected_globex]));

    // Each entity's activities were stored in the order they were posted.
    let stored: Vec<Document> = pipeline
        .activities()
        .find(doc! { "tenantId": "acme" })
        .sort(doc! { "_id": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut seqs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for document in &stored {
        let seq = document.get_document("metadata").unwrap();
        let seq = seq
            .get_i32("seq")
            .map(i64::from)
            .or_else(|_| seq.get_i64("seq"))
            .unwrap();
        seqs.entry(document.get_str("entityId").unwrap().to_owned())
            .or_default()
            .push(seq);
    }
    for (entity, order) in &seqs {
        assert_eq!(
            order,
            &(0..PER_ENTITY as i64).collect::<Vec<_>>(),
            "{entity} stored in posting order"
        );
    }
    pipeline.stop().await;
}
