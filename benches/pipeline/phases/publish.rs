//! Phase 1b: the publish path alone, next to the floors under it. The same envelopes, record size and
//! producer settings as ProducerPerformance (phase 1), each run on a topic of its own, the first fifth
//! of the records a warm-up left out of the figure (as ProducerPerformance's):
//!
//! - `ActivityPublisher::publish_all` with batches of 100, the code the batch endpoint calls
//!   (envelope encoding, four headers, one wake-up per batch), 20,000 records in flight
//!   (`--publish-in-flight`);
//! - `ActivityPublisher::publish`, the code a single POST calls (a batch of one, awaited by the
//!   caller), 20,000 records in flight;
//! - the bare rdkafka `FutureProducer`, the same settings, the envelopes encoded beforehand, the
//!   same four headers: what the binding's future-per-record model costs without our code;
//! - librdkafka through rdkafka's `ThreadedProducer`, the same records, a delivery callback counting
//!   the acks and no future at all: the floor of librdkafka itself on this machine.
//!
//! ProducerPerformance sends the envelope's bytes without headers; the pipeline's records carry four
//! (idempotency key, schema, payload fingerprint, accepting datacenter: ~150 bytes more per record),
//! so the two floors are the fair comparison for our code, and ProducerPerformance the machine's.
//!
//! So `ProducerPerformance / ThreadedProducer` is Java against librdkafka, `ThreadedProducer /
//! FutureProducer` the binding's futures, `FutureProducer / ActivityPublisher` our code.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use activity_pipeline::config::Settings;
use activity_pipeline::domain::{ActivityEnvelope, PayloadFingerprint, ACTIVITY_SCHEMA_ID};
use activity_pipeline::kafka::{create_topics, headers, ActivityPublisher};
use futures::StreamExt as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer as _, ProducerContext,
    ThreadedProducer,
};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext};

use crate::report::PublishPath;
use crate::{workload, Bench};

/// Activities per `publish_all` call: the bench's HTTP batches (phase 3) hold as many.
const BATCH: usize = 100;

impl Bench {
    pub async fn publish_path(&self, round: usize, base: &Settings) -> anyhow::Result<PublishPath> {
        let names = self.names(round, "all", "pub");
        let records = self.options.publish_records;
        let warmup = records / 5;
        let in_flight = self.options.publish_in_flight;
        let envelopes = workload::envelopes(&self.tenants, &names.key_prefix, records);
        let fingerprints: Vec<PayloadFingerprint> = envelopes
            .iter()
            .map(|envelope| PayloadFingerprint::of(&envelope.activity))
            .collect();
        let encoded: Arc<Vec<Encoded>> = Arc::new(
            envelopes
                .iter()
                .zip(&fingerprints)
                .map(|(envelope, fingerprint)| Encoded {
                    key: envelope.tenant_id.as_str().to_owned(),
                    payload: envelope.encode(),
                    idempotency_key: envelope.idempotency_key.as_str().to_owned(),
                    fingerprint: fingerprint.as_str().to_owned(),
                })
                .collect(),
        );

        let topic = |subject: &str| format!("{}-{subject}", names.topic);
        let topics: Vec<String> = ["batches", "publisher", "future", "threaded"]
            .iter()
            .map(|subject| topic(subject))
            .collect();
        let mut settings = base.clone();
        settings.kafka.brokers = self.options.brokers.clone();
        create_topics(&settings.kafka, &topics).await?;
        let outcome = async {
            let publisher_figure = |topic, per_call| {
                activity_publisher(
                    &settings,
                    topic,
                    &envelopes,
                    &fingerprints,
                    warmup,
                    in_flight,
                    per_call,
                )
            };
            let batches_per_s = publisher_figure(&topics[0], BATCH).await?;
            println!(
                "  1b. ActivityPublisher::publish_all, batches of {BATCH}: {batches_per_s:.0}/s"
            );
            let publisher_per_s = publisher_figure(&topics[1], 1).await?;
            println!("  1b. ActivityPublisher::publish: {publisher_per_s:.0} records/s");
            let config = producer_config(&settings);
            let future_per_s =
                future_producer(&config, &topics[2], Arc::clone(&encoded), warmup, in_flight)
                    .await?;
            println!("  1b. rdkafka FutureProducer, bare: {future_per_s:.0} records/s");
            let threaded_per_s =
                threaded_producer(&config, &topics[3], Arc::clone(&encoded), warmup).await?;
            println!(
                "  1b. librdkafka (ThreadedProducer, callback): {threaded_per_s:.0} records/s"
            );
            anyhow::Ok(PublishPath {
                records: records - warmup,
                publisher_per_s,
                publisher_batches_per_s: Some(batches_per_s),
                future_producer_per_s: future_per_s,
                threaded_producer_per_s: threaded_per_s,
            })
        }
        .await;
        self.delete_topics(&self.options.brokers, &topics).await;
        outcome
    }
}

/// A record as `ActivityPublisher::publish` writes it, made beforehand.
struct Encoded {
    key: String,
    payload: Vec<u8>,
    idempotency_key: String,
    fingerprint: String,
}

impl Encoded {
    /// The four headers `ActivityPublisher::publish` writes.
    fn headers(&self) -> OwnedHeaders {
        [
            (headers::IDEMPOTENCY_KEY, self.idempotency_key.as_str()),
            (headers::SCHEMA, ACTIVITY_SCHEMA_ID),
            (headers::PAYLOAD_FINGERPRINT, self.fingerprint.as_str()),
            (headers::ACCEPTED_DC, "local"),
        ]
        .into_iter()
        .fold(OwnedHeaders::new_with_capacity(4), |all, (key, value)| {
            all.insert(Header {
                key,
                value: Some(value),
            })
        })
    }
}

/// The producer settings of `ActivityPublisher::new`, for the bare subjects.
fn producer_config(settings: &Settings) -> ClientConfig {
    let kafka = &settings.kafka;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", kafka.linger_ms.to_string())
        .set("compression.type", kafka.compression.as_librdkafka())
        .set("message.timeout.ms", kafka.delivery_timeout_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            kafka.queue_max_messages.to_string(),
        );
    config
}

/// Records per second of `ActivityPublisher` over the records after `warmup`: `publish` when
/// `per_call` is 1 (a single POST's path), else `publish_all` with `per_call` records a call (the
/// batch endpoint's).
async fn activity_publisher(
    settings: &Settings,
    topic: &str,
    envelopes: &[ActivityEnvelope],
    fingerprints: &[PayloadFingerprint],
    warmup: usize,
    in_flight: usize,
    per_call: usize,
) -> anyhow::Result<f64> {
    let mut kafka = settings.kafka.clone();
    kafka.topic = topic.to_owned();
    let publisher = ActivityPublisher::new(&kafka)?;
    let activities: Vec<_> = envelopes.iter().zip(fingerprints).collect();
    let publish_range = |range: std::ops::Range<usize>| {
        let (publisher, activities, end) = (&publisher, &activities, range.end);
        futures::stream::iter(range.step_by(per_call))
            .map(move |start| async move {
                let calls = &activities[start..(start + per_call).min(end)];
                if let [(envelope, fingerprint)] = calls {
                    usize::from(publisher.publish(envelope, fingerprint).await.is_err())
                } else {
                    let outcomes = publisher.publish_all(calls).await;
                    outcomes.iter().filter(|outcome| outcome.is_err()).count()
                }
            })
            .buffer_unordered((in_flight / per_call).max(1))
            .fold(0, |failed, in_call| {
                futures::future::ready(failed + in_call)
            })
    };
    let failed = publish_range(0..warmup).await;
    let started = Instant::now();
    let failed = failed + publish_range(warmup..activities.len()).await;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        failed == 0,
        "ActivityPublisher, {per_call} a call: {failed} records not acknowledged"
    );
    Ok((envelopes.len() - warmup) as f64 / elapsed)
}

/// Records per second of a bare `FutureProducer` over the records after `warmup`.
async fn future_producer(
    config: &ClientConfig,
    topic: &str,
    encoded: Arc<Vec<Encoded>>,
    warmup: usize,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let producer: FutureProducer = config.create()?;
    let send_all = |range: std::ops::Range<usize>| {
        let (producer, encoded) = (&producer, &encoded);
        futures::stream::iter(range)
            .map(move |index| async move {
                let record = &encoded[index];
                producer
                    .send(
                        FutureRecord::to(topic)
                            .key(&record.key)
                            .payload(&record.payload)
                            .headers(record.headers()),
                        Timeout::Never,
                    )
                    .await
            })
            .buffer_unordered(in_flight.max(1))
            .filter(|outcome| futures::future::ready(outcome.is_err()))
            .count()
    };
    let failed = send_all(0..warmup).await;
    let started = Instant::now();
    let failed = failed + send_all(warmup..encoded.len()).await;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        failed == 0,
        "FutureProducer: {failed} records not acknowledged"
    );
    Ok((encoded.len() - warmup) as f64 / elapsed)
}

/// Counts delivery reports; nothing waits on a record.
#[derive(Default)]
struct CountingContext {
    delivered: AtomicUsize,
    failed: AtomicUsize,
}

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() {
            &self.delivered
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records per second of librdkafka through a `ThreadedProducer` over the records after `warmup`:
/// every record handed over as fast as the queue takes it, then the acknowledgements awaited.
async fn threaded_producer(
    config: &ClientConfig,
    topic: &str,
    encoded: Arc<Vec<Encoded>>,
    warmup: usize,
) -> anyhow::Result<f64> {
    let config = config.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<CountingContext> =
            config.create_with_context(CountingContext::default())?;
        let send_all = |range: std::ops::Range<usize>| -> anyhow::Result<()> {
            for index in range.clone() {
                let encoded = &encoded[index];
                let mut record = BaseRecord::to(&topic)
                    .key(&encoded.key)
                    .payload(&encoded.payload)
                    .headers(encoded.headers());
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err((error, _)) => anyhow::bail!("ThreadedProducer: {error}"),
                    }
                }
            }
            let context = producer.context();
            let deadline = Instant::now() + Duration::from_secs(120);
            while context.delivered.load(Ordering::Relaxed) + context.failed.load(Ordering::Relaxed)
                < range.end
            {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "ThreadedProducer: not every record acknowledged within 120 s"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        };
        send_all(0..warmup)?;
        let started = Instant::now();
        send_all(warmup..encoded.len())?;
        let elapsed = started.elapsed().as_secs_f64();
        producer.flush(Duration::from_secs(10))?;
        let failed = producer.context().failed.load(Ordering::Relaxed);
        anyhow::ensure!(
            failed == 0,
            "ThreadedProducer: {failed} records not acknowledged"
        );
        Ok((encoded.len() - warmup) as f64 / elapsed)
    })
    .await?
}
