use std::path::PathBuf;
use std::time::Duration;

use activity_pipeline::config::{Settings, Sources};
use activity_pipeline::produce::Application;
use mongodb::bson::{doc, Document};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const ACME_KEY: &str = "demo-key-acme";
pub const GLOBEX_KEY: &str = "demo-key-globex";

/// A produce API and a consumer, running in this process against the real stack, isolated from other
/// tests by a unique suffix on every name they touch.
pub struct TestPipeline {
    pub address: String,
    pub settings: Settings,
    pub http: reqwest::Client,
    pub mongo: mongodb::Database,
    pub redis: redis::aio::MultiplexedConnection,
    shutdown: CancellationToken,
    server: actix_web::dev::ServerHandle,
}

/// Settings for one test: the dev profile with unique names, plus `extra` overrides.
pub fn test_settings(extra: &[String]) -> Settings {
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
        "log.filter=warn".to_owned(),
    ];
    overrides.extend_from_slice(extra);
    Settings::load(&Sources {
        files: vec![PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/dev.toml"
        ))],
        environment: false,
        overrides,
    })
    .expect("test settings load")
}

impl TestPipeline {
    /// Creates the topics, then starts the API and the consumer.
    pub async fn spawn() -> TestPipeline {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(extra: &[String]) -> TestPipeline {
        let settings = test_settings(extra);
        activity_pipeline::telemetry::init(&settings.log);
        activity_pipeline::kafka::create_topics(&settings.kafka)
            .await
            .expect("topics are created");

        let application = Application::build(&settings).await.expect("the API starts");
        let address = format!("http://127.0.0.1:{}", application.port());
        let server = application.handle();
        tokio::spawn(application.run_until_stopped());

        let shutdown = CancellationToken::new();
        let consumer_settings = settings.clone();
        let consumer_shutdown = shutdown.clone();
        tokio::spawn(async move {
            activity_pipeline::consume::run(&consumer_settings, consumer_shutdown)
                .await
                .expect("the consumer runs");
        });

        let mongo = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017")
            .await
            .expect("MongoDB client")
            .database(&settings.mongo.database);
        let redis = redis::Client::open("redis://127.0.0.1:6379")
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("Redis is up (make stack-up)");
        TestPipeline {
            address,
            settings,
            http: reqwest::Client::new(),
            mongo,
            redis,
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
        let settings = test_settings(extra);
        activity_pipeline::telemetry::init(&settings.log);
        if create_topics {
            activity_pipeline::kafka::create_topics(&settings.kafka)
                .await
                .expect("topics are created");
        }
        let application = Application::build(&settings).await.expect("the API starts");
        let address = format!("http://127.0.0.1:{}", application.port());
        let shutdown = application.shutdown_token();
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
}
