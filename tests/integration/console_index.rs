//! The console's dead letters held in memory (`console::dead_letter_index`): an answer includes every
//! dead letter written before the request, a partition added to the DLQ is followed, records Kafka
//! dropped are let go, and a DLQ larger than `console.dead_letters_memory_mb` is still listed right
//! (read from the topic).

use std::time::Duration;

use activity_pipeline::kafka::delete_records_before;
use activity_pipeline::ops::dlq::{parse_position, DeadLetterFilter};
use activity_pipeline::ops::dlq_purge::{self, PurgeSelection};
use activity_pipeline::ops::progress::Progress;
use activity_pipeline::store::ActivityRepository;
use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;

use crate::console::{dead_letter, positions, TestConsole, ADMIN_TOKEN, VIEWER_TOKEN};
use crate::helpers::TestPipeline;

fn producer(pipeline: &TestPipeline) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &pipeline.settings.kafka.brokers)
        .create()
        .unwrap()
}

/// Writes a dead letter of `tenant` to one partition of the DLQ; its position.
async fn dead_letter_in(
    producer: &FutureProducer,
    pipeline: &TestPipeline,
    partition: i32,
    tenant: &str,
    key: &str,
    payload: &[u8],
) -> String {
    let now = chrono::Utc::now().to_rfc3339();
    let headers = [
        ("idempotency-key", key),
        ("dlq-error", "store refused it"),
        ("dlq-error-class", "rejected"),
        ("dlq-attempts", "1"),
        ("dlq-first-failure-at", now.as_str()),
        ("dlq-last-failure-at", now.as_str()),
    ]
    .iter()
    .fold(OwnedHeaders::new(), |headers, (name, value)| {
        headers.insert(Header {
            key: name,
            value: Some(*value),
        })
    });
    let delivery = producer
        .send(
            FutureRecord::to(&pipeline.settings.kafka.dlq_topic)
                .partition(partition)
                .key(tenant)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .expect("the broker takes the dead letter");
    format!("{}:{}", delivery.partition, delivery.offset)
}

async fn total(console: &TestConsole, query: &str) -> Value {
    let (status, page) = console
        .get(
            Some(VIEWER_TOKEN),
            &format!("/console/api/dead-letters{query}"),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_answers_with_every_dead_letter_written_before_the_request() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console = TestConsole::spawn(&pipeline).await;
    assert_eq!(total(&console, "").await["total"], 0);

    // No waiting between a write and the request: the answer waits for the index instead.
    for round in 1..=5 {
        dead_letter(
            &pipeline,
            "acme",
            &format!("written-{round}"),
            "poison",
            "not JSON",
            b"{nope",
        )
        .await;
        let page = total(&console, "").await;
        assert_eq!(page["total"], round, "{page}");
        assert_eq!(
            page["deadLetters"][0]["idempotencyKey"],
            format!("written-{round}"),
            "newest first: {page}"
        );
    }

    // A partition added to the DLQ is followed from its first record.
    let partitions = pipeline.settings.kafka.partitions;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &pipeline.settings.kafka.brokers)
        .create()
        .unwrap();
    let added = admin
        .create_partitions(
            &[NewPartitions::new(
                &pipeline.settings.kafka.dlq_topic,
                partitions as usize + 1,
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(added.iter().all(Result::is_ok), "{added:?}");
    let in_new_partition = dead_letter_in(
        &producer(&pipeline),
        &pipeline,
        partitions,
        "globex",
        "in-new-partition",
        b"{}",
    )
    .await;
    let page = total(&console, "?tenant=globex").await;
    assert_eq!(positions(&page), [in_new_partition.as_str()], "{page}");
    let (status, record) = console
        .get(
            Some(VIEWER_TOKEN),
            &format!("/console/api/dead-letters/{in_new_partition}"),
        )
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["idempotencyKey"], "in-new-partition");

    // A purge by another process (`dlq purge`, here its code) is seen at once: it announces itself
    // in Redis, and the console reloads its copy of the purge log.
    let written_2 = total(&console, "?text=written-2").await;
    let position = positions(&written_2)[0].clone();
    let repository = ActivityRepository::connect(&pipeline.settings.mongo)
        .await
        .unwrap();
    let (partition, offset) = parse_position(&position).unwrap();
    let report = dlq_purge::purge(
        &pipeline.settings,
        &repository,
        &PurgeSelection {
            filter: DeadLetterFilter {
                positions: [(partition, offset)].into(),
                ..DeadLetterFilter::default()
            },
            older_than: None,
            all: false,
        },
        Some("seen by the console at once"),
        false,
        &Progress::unwatched(),
    )
    .await
    .unwrap();
    assert_eq!(report.outcomes.len(), 1);
    let after_purge = total(&console, "").await;
    assert_eq!(after_purge["total"], 5, "{after_purge}");
    assert!(
        !positions(&after_purge).contains(&position),
        "{after_purge}"
    );
    let with_purged = total(&console, "?includePurged=true&text=written-2").await;
    assert!(
        with_purged["deadLetters"][0]["purgedAt"].is_string(),
        "{with_purged}"
    );

    // Records Kafka dropped (retention, or a purge's prefix drop) leave the view too.
    let every = total(&console, "?limit=500&includePurged=true").await;
    assert_eq!(every["total"], 6);
    let dropped = delete_records_before(
        &pipeline.settings.kafka,
        &pipeline.settings.kafka.dlq_topic,
        &high_watermarks(&pipeline, partitions + 1),
    )
    .await
    .unwrap();
    assert!(!dropped.is_empty());
    let page = total(&console, "?includePurged=true").await;
    assert_eq!(page["total"], 0, "{page}");
    let (status, gone) = console
        .get(
            Some(VIEWER_TOKEN),
            &format!("/console/api/dead-letters/{in_new_partition}"),
        )
        .await;
    assert_eq!(status, 404, "{gone}");

    // And the view goes on following: a dead letter written after the drop is listed.
    dead_letter(
        &pipeline,
        "acme",
        "after-drop",
        "poison",
        "not JSON",
        b"{nope",
    )
    .await;
    let page = total(&console, "").await;
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["deadLetters"][0]["idempotencyKey"], "after-drop");
    console.stop();
    pipeline.stop().await;
}

/// Each of the DLQ's `partitions` with its high watermark: "drop everything there now".
fn high_watermarks(pipeline: &TestPipeline, partitions: i32) -> Vec<(i32, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &pipeline.settings.kafka.brokers)
        .set("group.id", "console-index-test")
        .create()
        .unwrap();
    (0..partitions)
        .map(|partition| {
            let (_, high) = consumer
                .fetch_watermarks(
                    &pipeline.settings.kafka.dlq_topic,
                    partition,
                    Duration::from_secs(10),
                )
                .unwrap();
            (partition, high)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_larger_than_the_memory_budget_is_still_listed_right() {
    // 1 MiB of budget; 1,500 dead letters of ~1 KiB (plus their headers and the per-record
    // overhead) do not fit, so the view reads the topic instead.
    let pipeline =
        TestPipeline::spawn_api_only(&["console.dead_letters_memory_mb=1".to_owned()]).await;
    let console = TestConsole::spawn(&pipeline).await;
    let filler = "x".repeat(1_000);
    let producer = producer(&pipeline);
    for chunk in (0..1_500).collect::<Vec<usize>>().chunks(100) {
        join_all(chunk.iter().map(|index| {
            let payload = format!(r#"{{"n":{index},"filler":"{filler}"}}"#);
            let tenant = if index % 3 == 0 { "globex" } else { "acme" };
            let (pipeline, producer) = (&pipeline, &producer);
            async move {
                dead_letter_in(
                    producer,
                    pipeline,
                    (*index % 3) as i32,
                    tenant,
                    &format!("big-{index}"),
                    payload.as_bytes(),
                )
                .await
            }
        }))
        .await;
    }
    let page = total(&console, "").await;
    assert_eq!(page["total"], 1_500, "{}", page["total"]);
    assert_eq!(total(&console, "?tenant=globex").await["total"], 500);
    let one = total(&console, "?text=%22n%22%3A1234%2C").await;
    assert_eq!(one["total"], 1, "{one}");
    assert_eq!(one["deadLetters"][0]["idempotencyKey"], "big-1234");
    // Paging still walks all of them, newest first, each once.
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            None => "?limit=500".to_owned(),
            Some(cursor) => format!("?limit=500&cursor={cursor}"),
        };
        let page = total(&console, &query).await;
        for position in positions(&page) {
            assert!(seen.insert(position), "listed twice");
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 1_500);
    // The tenants' dead-lettered counts come from the same selection.
    let (status, acme) = console
        .get(Some(ADMIN_TOKEN), "/console/api/tenants/acme")
        .await;
    assert_eq!(status, 200, "{acme}");
    assert_eq!(acme["deadLettered"], 1_000, "{acme}");
    console.stop();
    pipeline.stop().await;
}
