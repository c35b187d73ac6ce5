//! The consumer against the real broker. Its pause state across rebalances: a stage that paused during
//! an outage, lost partitions while paused and resumed must fetch from those partitions when they
//! come back. librdkafka keeps a partition's pause flag through revoke and re-assign: without the
//! consumer clearing it, this test fails (the moved partitions are never read again), the state in
//! which the faults suite's long run found both consumers holding lagging partitions for good. And
//! batches taken without a wait (`consumer.batch_max_wait_ms = 0`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use activity_pipeline::config::Settings;
use activity_pipeline::kafka::{create_topics, ActivityConsumer, ConsumerObserver};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::helpers::{load_settings, test_overrides};

const PARTITIONS: i32 = 4;

struct Quiet;

impl ConsumerObserver for Quiet {
    fn committed(&self, _ok: bool) {}
    fn lag(&self, _topic: &str, _partition: i32, _lag: i64) {}
    fn revoked(&self, _topic: &str, _partition: i32) {}
}

/// A fresh topic of `PARTITIONS` partitions (settings for a test of its own) and a producer.
async fn topic_and_producer() -> (Settings, FutureProducer) {
    let settings = load_settings(&test_overrides(&[format!("kafka.partitions={PARTITIONS}")]));
    create_topics(&settings.kafka, std::slice::from_ref(&settings.kafka.topic))
        .await
        .expect("the topic is created");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .create()
        .unwrap();
    (settings, producer)
}

async fn send(producer: &FutureProducer, topic: &str, partition: i32, payload: &str) {
    producer
        .send(
            FutureRecord::<str, str>::to(topic)
                .partition(partition)
                .payload(payload),
            Duration::from_secs(10),
        )
        .await
        .expect("the broker takes the record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_revoked_while_paused_are_fetched_when_assigned_back_after_resume() {
    let (settings, producer) = topic_and_producer().await;
    let topic = settings.kafka.topic.clone();
    let group = settings.kafka.consumer_group.clone();
    let produce_one_per_partition = |round: u32| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            for partition in 0..PARTITIONS {
                send(&producer, &topic, partition, &format!("round {round}")).await;
            }
        }
    };

    // A owns every partition and has read from each.
    let mut a =
        ActivityConsumer::subscribe(&settings.kafka, &group, &[&topic], Arc::new(Quiet)).unwrap();
    produce_one_per_partition(1).await;
    assert_eq!(
        partitions_read(&mut a, Duration::from_secs(60)).await,
        (0..PARTITIONS).collect::<BTreeSet<_>>()
    );

    // An outage: A pauses. B joins and takes some of A's partitions while they are paused.
    a.pause();
    let mut b =
        ActivityConsumer::subscribe(&settings.kafka, &group, &[&topic], Arc::new(Quiet)).unwrap();
    for _ in 0..120 {
        tokio::join!(
            a.keep_alive(Duration::from_millis(250)),
            b.keep_alive(Duration::from_millis(250))
        );
        if !b.assigned_partitions().is_empty()
            && a.assigned_partitions().len() < PARTITIONS as usize
        {
            break;
        }
    }
    let moved = b.assigned_partitions();
    assert!(!moved.is_empty(), "B got partitions from A");

    // The dependency is back: A resumes what it holds. Then B leaves and A gets the rest back.
    a.resume();
    drop(b);
    produce_one_per_partition(2).await;
    let read = partitions_read(&mut a, Duration::from_secs(60)).await;
    assert_eq!(
        read,
        (0..PARTITIONS).collect::<BTreeSet<_>>(),
        "A fetches from every partition again, including {moved:?} that were paused when revoked"
    );
}

/// The partitions `consumer` receives records from within `budget`, until it has seen all of them.
/// Each batch is marked processed, as the stage loop does, so a healthy partition has nothing past
/// its committed offset when the consumer is idle.
async fn partitions_read(consumer: &mut ActivityConsumer, budget: Duration) -> BTreeSet<i32> {
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + budget;
    while seen.len() < PARTITIONS as usize && tokio::time::Instant::now() < deadline {
        // Generous: a record taken but not returned when the future is dropped would be missed.
        if let Ok(batch) = tokio::time::timeout(
            Duration::from_secs(15),
            consumer.next_batch(100, Duration::from_millis(50)),
        )
        .await
        {
            consumer.store_processed(&batch).unwrap();
            seen.extend(batch.iter().map(|record| record.partition));
        }
    }
    seen
}

/// `consumer.batch_max_wait_ms = 0`: after the first record a batch takes what the
/// consumer has already received, without waiting, and the receives it leaves unfinished take no
/// record with them: every record comes exactly once, in partition order, in batches that still
/// group what was there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_without_a_wait_take_what_arrived_and_lose_nothing() {
    const RECORDS: usize = 400;
    let (settings, producer) = topic_and_producer().await;
    let topic = settings.kafka.topic.clone();
    for sequence in 0..RECORDS {
        let partition = (sequence % PARTITIONS as usize) as i32;
        send(&producer, &topic, partition, &sequence.to_string()).await;
    }

    let mut consumer = ActivityConsumer::subscribe(
        &settings.kafka,
        &settings.kafka.consumer_group,
        &[&topic],
        Arc::new(Quiet),
    )
    .unwrap();
    let mut received: Vec<(i32, usize)> = Vec::new();
    let mut largest_batch = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received.len() < RECORDS && tokio::time::Instant::now() < deadline {
        // The first record of a batch is awaited; nothing after it is.
        let batch = consumer.next_batch(50, Duration::ZERO).await;
        assert!(batch.len() <= 50, "a batch of {}", batch.len());
        largest_batch = largest_batch.max(batch.len());
        consumer.store_processed(&batch).unwrap();
        received.extend(batch.iter().map(|record| {
            let payload = std::str::from_utf8(record.payload.as_deref().unwrap()).unwrap();
            (record.partition, payload.parse::<usize>().unwrap())
        }));
    }

    let mut sequences: Vec<usize> = received.iter().map(|(_, sequence)| *sequence).collect();
    sequences.sort_unstable();
    assert_eq!(
        sequences,
        (0..RECORDS).collect::<Vec<_>>(),
        "each record exactly once"
    );
    for partition in 0..PARTITIONS {
        let in_order: Vec<usize> = received
            .iter()
            .filter(|(of, _)| *of == partition)
            .map(|(_, sequence)| *sequence)
            .collect();
        assert!(
            in_order.windows(2).all(|pair| pair[0] < pair[1]),
            "partition {partition} out of order: {in_order:?}"
        );
    }
    assert!(
        largest_batch > 1,
        "records already received are taken into the batch, not one batch each"
    );
}
