use std::path::PathBuf;
use std::time::Duration;

use activity_pipeline::config::{Settings, Sources};
use activity_pipeline::consume::{ConsumerRuntime, Stages};
use activity_pipeline::produce::Application;
use activity_pipeline::store::RedisConnection;
use mongodb::bson::{doc, oid::ObjectId, DateTime, Document};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const ACME_KEY: &str = "demo-key-acme";
pub const GLOBEX_KEY: &str = "demo-key-globex";
pub const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// A produce API and a consumer, running in this process against the real stack, isolated from other
/// tests by a unique suffix on every name they touch.
pub struct TestPipeline {
    pub address: String,
    pub settings: Settings,
    /// `--set` flags that reproduce `settings` for a subprocess of the binary.
    pub overrides: Vec<String>,
    pub http: reqwest::Client,
    pub mongo: mongodb::Database,
    /// A single server's connection or a cluster's, as the test's settings say.
    pub redis: RedisConnection,
    /// The in-process consumer's metrics port, when it runs one.
    pub consumer_metrics_port: Option<u16>,
    shutdown: CancellationToken,
    server: actix_web::dev::ServerHandle,
}

/// The overrides that give one test its own names, plus `extra`.
pub fn test_overrides(extra: &[String]) -> Vec<String> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let id = &id[id.len() - 12..];
    let mut overrides = vec![
        format!("kafka.topic=it-{id}.activities"),
        format!("kafka.retry_topic=it-{id}.activities.retry"),
        format!("kafka.dlq_topic=it-{id}.activities.dlq"),
        "kafka.partitions=3".to_owned(),
        format!("kafka.consumer_group=it-{id}"),
        format!("mongo.database=it_{id}"),
        format!("redis.key_prefix=it:{id}:"),
        "http.listen=127.0.0.1:0".to_owned(),
        "http.workers=2".to_owned(),
        "consumer.batch_max_wait_ms=20".to_owned(),
        // Parts of a batch applied concurrently (the default is 1): the suite keeps that path, with
        // its partial outages, under test; the faults suite and the bench run the defaults.
        "consumer.partition_parallelism=4".to_owned(),
        "consumer.outage_backoff_max_ms=500".to_owned(),
        "consumer.metrics_listen=127.0.0.1:0".to_owned(),
        "log.filter=warn".to_owned(),
    ];
    overrides.extend_from_slice(extra);
    overrides
}

pub fn dev_config() -> PathBuf {
    PathBuf::from(MANIFEST_DIR).join("config/dev.toml")
}

pub fn load_settings(overrides: &[String]) -> Settings {
    Settings::load(&Sources {
        files: vec![dev_config()],
        environment: false,
        overrides: overrides.to_vec(),
    })
    .expect("test settings load")
}

impl TestPipeline {
    /// Inserts `count` small activities of `tenant` straight into the test's collection (not through
    /// the pipeline, which would take minutes): enough of them make a newest-first query on FerretDB
    /// slower than a small `read.timeout_ms`.
    pub async fn insert_directly(&self, tenant: &str, count: usize) {
        let now = DateTime::now();
        let documents: Vec<Document> = (0..count)
            .map(|index| {
                doc! {
                    "_id": ObjectId::new(),
                    "tenantId": tenant,
                    "idempotencyKey": format!("bulk-{index}"),
                    "actorId": "bulk",
                    "actorName": "Bulk",
                    "type": "bulk.loaded",
                    "metadata": {},
                    "enqueuedAt": now,
                    "createdAt": now,
                }
            })
            .collect();
        for chunk in documents.chunks(5_000) {
            self.activities()
                .insert_many(chunk)
                .await
                .expect("bulk insert");
        }
    }

    /// Creates the topics, then starts the API and the consumer.
    pub async fn spawn() -> TestPipeline {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(extra: &[String]) -> TestPipeline {
        Self::start(extra, true).await
    }

    /// The API only: the test runs (or kills) consumers itself.
    pub async fn spawn_api_only(extra: &[String]) -> TestPipeline {
        Self::start(extra, false).await
    }

    async fn start(extra: &[String], with_consumer: bool) -> TestPipeline {
        let overrides = test_overrides(extra);
        let settings = load_settings(&overrides);
        activity_pipeline::telemetry::init(&settings.log);
        activity_pipeline::kafka::create_topics(&settings.kafka, &settings.topic_names())
            .await
            .expect("topics are created");

        let application = Application::build(&settings, CancellationToken::new())
            .await
            .expect("the API starts");
        let address = format!("http://127.0.0.1:{}", application.port());
        let server = application.handle();
        tokio::spawn(application.run_until_stopped());

        let shutdown = CancellationToken::new();
        let consumer_metrics_port = if with_consumer {
            let runtime = ConsumerRuntime::start(&settings, Stages::All, shutdown.clone())
                .await
                .expect("the consumer starts");
            let port = runtime.metrics_port();
            tokio::spawn(async move { runtime.wait().await.expect("the consumer runs") });
            Some(port)
        } else {
            None
        };

        let mongo = mongodb::Client::with_uri_str(settings.mongo.uri.expose_secret())
            .await
            .expect("MongoDB client")
            .database(&settings.mongo.database);
        let redis = RedisConnection::prepare(&settings.redis, Duration::from_secs(5))
            .expect("the test's Redis settings are valid");
        TestPipeline {
            address,
            settings,
            overrides,
            http: reqwest::Client::new(),
            mongo,
            redis,
            consumer_metrics_port,
            shutdown,
            server,
        }
    }

    pub async fn post_activity(
        &self,
        api_key: &str,
        idempotency_key: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/activities", self.address))
            .bearer_auth(api_key)
            .json(body);
        if let Some(key) = idempotency_key {
            request = request.header("X-Idempotency-Key", key);
        }
        request.send().await.expect("the API answers")
    }

    pub fn activities(&self) -> mongodb::Collection<Document> {
        self.mongo.collection(&self.settings.mongo.collection)
    }

    pub async fn count(&self, filter: Document) -> u64 {
        self.activities()
            .count_documents(filter)
            .await
            .expect("count documents")
    }

    /// Polls until `filter` matches `expected` documents; returns the last count seen.
    pub async fn wait_for_count(&self, filter: Document, expected: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let count = self.count(filter.clone()).await;
            if count >= expected || tokio::time::Instant::now() > deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn redis_key(&self, rest: &str) -> String {
        format!("{}{rest}", self.settings.redis.key_prefix)
    }

    /// The value of this pipeline's Redis key `rest` (without the test's prefix), if set.
    pub async fn redis_get(&self, rest: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(self.redis_key(rest))
            .query_async(&mut self.redis.clone())
            .await
            .unwrap()
    }

    pub async fn counters(&self, tenant: &str) -> std::collections::BTreeMap<String, i64> {
        // A fresh connection each time: tests restart their private Redis under the pipeline.
        let mut connection = RedisConnection::prepare(&self.settings.redis, Duration::from_secs(5))
            .expect("the test's Redis settings are valid");
        redis::cmd("HGETALL")
            .arg(self.redis_key(&format!("analytics:{{{tenant}}}")))
            .query_async(&mut connection)
            .await
            .expect("HGETALL")
    }

    /// Writes a record straight into `topic`, bypassing the API (another producer, a replay, a bug).
    pub async fn produce_raw(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.kafka.brokers)
            .create()
            .unwrap();
        let mut record_headers = OwnedHeaders::new();
        for (name, value) in headers {
            record_headers = record_headers.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let mut record = FutureRecord::<str, [u8]>::to(topic).headers(record_headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("the broker takes the record");
    }

    /// The envelope the API would have produced for `activity`.
    pub fn envelope(&self, tenant: &str, key: &str, activity: &Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schema": "activity.v1",
            "tenantId": tenant,
            "idempotencyKey": key,
            "enqueuedAt": chrono::Utc::now().to_rfc3339(),
            "activity": activity,
        }))
        .unwrap()
    }

    /// Offsets the main consumer group has committed, per partition of the main topic (absent: none).
    pub fn committed_offsets(&self) -> Vec<(i32, i64)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.kafka.brokers)
            .set("group.id", &self.settings.kafka.consumer_group)
            .create()
            .unwrap();
        // A loaded broker may answer a partition with a transient error (coordinator loading or
        // moving); ask again rather than read that as "nothing committed".
        for _ in 0..20 {
            let mut partitions = TopicPartitionList::new();
            for partition in 0..self.settings.kafka.partitions {
                partitions.add_partition(&self.settings.kafka.topic, partition);
            }
            let Ok(committed) = consumer.committed_offsets(partitions, Duration::from_secs(10))
            else {
                std::thread::sleep(Duration::from_millis(250));
                continue;
            };
            if committed
                .elements()
                .iter()
                .any(|element| element.error().is_err())
            {
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
            return committed
                .elements()
                .iter()
                .filter_map(|element| match element.offset() {
                    Offset::Offset(offset) => Some((element.partition(), offset)),
                    _ => None,
                })
                .collect();
        }
        panic!(
            "the broker did not answer the committed offsets of {}",
            self.settings.kafka.consumer_group
        );
    }

    /// The records now in the DLQ topic, read directly.
    pub async fn dead_letters(&self) -> Vec<activity_pipeline::kafka::ConsumedRecord> {
        let kafka = self.settings.kafka.clone();
        tokio::task::spawn_blocking(move || {
            activity_pipeline::kafka::read_topic(&kafka, &kafka.dlq_topic, Duration::from_secs(30))
        })
        .await
        .unwrap()
        .expect("the DLQ is readable")
    }

    /// The in-process consumer's `/metrics` text.
    pub async fn consumer_metrics(&self) -> String {
        let port = self
            .consumer_metrics_port
            .expect("this pipeline runs a consumer");
        metrics_text(&self.http, &format!("http://127.0.0.1:{port}")).await
    }

    /// Polls the consumer's metrics until `line` appears; false after 30 s.
    pub async fn wait_for_metric(&self, line: &str) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if self
                .consumer_metrics()
                .await
                .lines()
                .any(|found| found == line)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Stops both roles and drops the test's database and Redis keys.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        self.server.stop(true).await;
        let _ = self.mongo.drop().await;
        let pattern = format!("{}*", self.settings.redis.key_prefix);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut self.redis)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut self.redis)
                .await;
        }
    }
}

/// The `/metrics` text served at `address` (the API's, or the consumer's metrics listener).
pub async fn metrics_text(http: &reqwest::Client, address: &str) -> String {
    http.get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub fn activity(actor: &str, activity_type: &str) -> Value {
    serde_json::json!({
        "actorId": actor,
        "actorName": format!("Actor {actor}"),
        "type": activity_type,
        "entityId": "doc-42",
        "metadata": {"source": "integration-test", "nested": {"n": 1}}
    })
}

pub fn filter(tenant: &str, key: &str) -> Document {
    doc! { "tenantId": tenant, "idempotencyKey": key }
}

/// The produce API alone (no consumer), for tests that point it at a broken dependency.
pub struct TestApi {
    pub address: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    stopped: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApi {
    /// Starts the API with the test settings plus `extra`; creates the topics first when asked
    /// (which needs a reachable broker).
    pub async fn spawn(extra: &[String], create_topics: bool) -> TestApi {
        let settings = load_settings(&test_overrides(extra));
        activity_pipeline::telemetry::init(&settings.log);
        if create_topics {
            activity_pipeline::kafka::create_topics(&settings.kafka, &settings.topic_names())
                .await
                .expect("topics are created");
        }
        let shutdown = CancellationToken::new();
        let application = Application::build(&settings, shutdown.clone())
            .await
            .expect("the API starts");
        let address = format!("http://127.0.0.1:{}", application.port());
        let stopped = tokio::spawn(application.run_until_stopped());
        TestApi {
            address,
            http: reqwest::Client::new(),
            shutdown,
            stopped,
        }
    }

    pub async fn post_activity(
        &self,
        api_key: &str,
        idempotency_key: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/activities", self.address))
            .bearer_auth(api_key)
            .json(body);
        if let Some(key) = idempotency_key {
            request = request.header("X-Idempotency-Key", key);
        }
        request.send().await.expect("the API answers")
    }

    pub async fn post_batch(&self, api_key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/activities/batch", self.address))
            .bearer_auth(api_key)
            .json(body)
            .send()
            .await
            .expect("the API answers")
    }

    /// Shuts down as SIGTERM would and waits for the producer flush.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.stopped).await;
    }
}

impl TestPipeline {
    pub async fn post_batch(
        &self,
        api_key: &str,
        batch_key: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/activities/batch", self.address))
            .bearer_auth(api_key)
            .json(body);
        if let Some(key) = batch_key {
            request = request.header("X-Idempotency-Key", key);
        }
        request.send().await.expect("the API answers")
    }

    /// `GET {path}` with `api_key`: the status and the JSON body.
    pub async fn get_json(&self, api_key: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.address))
            .bearer_auth(api_key)
            .send()
            .await
            .expect("the API answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    }

    /// Polls `GET {path}` until `done` holds for the answer; returns the last answer.
    pub async fn wait_for_json(
        &self,
        api_key: &str,
        path: &str,
        done: impl Fn(u16, &Value) -> bool,
    ) -> (u16, Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get_json(api_key, path).await;
            if done(status, &body) || tokio::time::Instant::now() > deadline {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Posts `body` for acme under `key` (expecting 202) and waits until it is stored (so it was
    /// also published).
    pub async fn post_stored(&self, key: &str, body: &Value) {
        assert_eq!(
            self.post_activity(ACME_KEY, Some(key), body).await.status(),
            202
        );
        self.wait_for_json(ACME_KEY, &format!("/activities/{key}"), |status, _| {
            status == 200
        })
        .await;
    }
}

/// Polls `condition` every 100 ms for up to 60 s.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
