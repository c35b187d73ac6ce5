//! The consumer runtime against the real stack: exactly-once effects, poison, retries, outages.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::doc;
use mongodb::options::IndexOptions;
use mongodb::IndexModel;
use serde_json::{json, Value};

use crate::helpers::{activity, eventually, filter, TestPipeline, ACME_KEY};
use crate::services::{PrivateMongo, PrivateRedis};

fn header<'a>(record: &'a activity_pipeline::kafka::ConsumedRecord, name: &str) -> &'a str {
    record
        .header(name)
        .unwrap_or_else(|| panic!("header {name} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_produced_twice_into_kafka_is_stored_counted_and_published_once() {
    let pipeline = TestPipeline::spawn().await;
    let mut pubsub = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub
        .subscribe(pipeline.redis_key("activities:{acme}"))
        .await
        .unwrap();

    let topic = pipeline.settings.kafka.topic.clone();
    for _ in 0..2 {
        let envelope = pipeline.envelope("acme", "twice", &activity("u1", "login"));
        pipeline
            .produce_raw(&topic, Some("acme"), Some(&envelope), &[])
            .await;
    }
    let marker = pipeline.envelope("acme", "marker", &activity("u1", "logout"));
    pipeline
        .produce_raw(&topic, Some("acme"), Some(&marker), &[])
        .await;

    assert_eq!(
        pipeline.wait_for_count(filter("acme", "marker"), 1).await,
        1
    );
    assert_eq!(pipeline.count(filter("acme", "twice")).await, 1);
    assert_eq!(pipeline.counters("acme").await.get("login"), Some(&1));

    let mut events = pubsub.on_message();
    let mut keys = Vec::new();
    while keys.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("events")
            .unwrap();
        let event: Value = serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        keys.push(event["idempotencyKey"].as_str().unwrap().to_owned());
    }
    // Nothing more arrives: the second copy published nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), events.next())
            .await
            .is_err()
    );
    keys.sort();
    assert_eq!(keys, ["marker", "twice"]);
    drop(events);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dlq_with_their_error_and_the_records_after_them_are_processed() {
    let pipeline = TestPipeline::spawn().await;
    let topic = pipeline.settings.kafka.topic.clone();
    // All on one partition (same key), so "after" is well defined.
    let wrong_schema = serde_json::to_vec(&json!({"schema": "activity.v9", "tenantId": "acme", "idempotencyKey": "k", "enqueuedAt": "2026-01-01T00:00:00Z", "activity": {}})).unwrap();
    let dollar_key = pipeline.envelope("acme", "dollar", &json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": {"$set": {"admin": true}}}));
    let poison: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("not json", Some(b"{not json".to_vec())),
        ("wrong schema", Some(wrong_schema)),
        ("dollar key", Some(dollar_key)),
        ("no value", None),
    ];
    for (_, payload) in &poison {
        pipeline
            .produce_raw(
                &topic,
                Some("acme"),
                payload.as_deref(),
                &[("idempotency-key", "poison")],
            )
            .await;
    }
    let after = pipeline.envelope("acme", "after-poison", &activity("u1", "login"));
    pipeline
        .produce_raw(&topic, Some("acme"), Some(&after), &[])
        .await;

    assert_eq!(
        pipeline
            .wait_for_count(filter("acme", "after-poison"), 1)
            .await,
        1
    );
    assert_eq!(
        pipeline.count(doc! {}).await,
        1,
        "no poison reached MongoDB"
    );

    let dead = pipeline.dead_letters().await;
    assert_eq!(dead.len(), 4, "{dead:?}");
    let errors: Vec<&str> = dead
        .iter()
        .map(|record| header(record, "dlq-error"))
        .collect();
    assert!(errors[0].contains("not a valid envelope"), "{errors:?}");
    assert!(
        errors[1].contains("unsupported envelope schema"),
        "{errors:?}"
    );
    assert!(
        errors[2].contains("/activity/metadata") || errors[2].contains("metadata"),
        "{errors:?}"
    );
    assert!(errors[3].contains("no value"), "{errors:?}");
    for (record, (_, payload)) in dead.iter().zip(&poison) {
        assert_eq!(header(record, "dlq-error-class"), "poison");
        assert_eq!(header(record, "dlq-attempts"), "1");
        assert_eq!(header(record, "dlq-source-topic"), topic);
        assert_eq!(
            header(record, "idempotency-key"),
            "poison",
            "original headers are kept"
        );
        assert_eq!(
            record.key.as_deref(),
            Some(&b"acme"[..]),
            "original key is kept"
        );
        assert_eq!(&record.payload, payload, "original value is kept");
        assert!(header(record, "dlq-source-offset").parse::<i64>().is_ok());
    }
    assert!(
        pipeline
            .wait_for_metric(
                "activity_pipeline_consumer_records_total{outcome=\"dead_lettered\"} 4"
            )
            .await
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_mongodb_keeps_refusing_is_retried_on_the_schedule_then_dead_lettered() {
    let pipeline =
        TestPipeline::spawn_api_only(&["retry.delays_ms=[100, 200, 400]".to_owned()]).await;
    // A second unique index makes MongoDB refuse one record only: the second activity of an actor.
    pipeline
        .activities()
        .create_index(
            IndexModel::builder()
                .keys(doc! {"actorId": 1})
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name("one_per_actor".to_owned())
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let runtime = activity_pipeline::consume::ConsumerRuntime::start(
        &pipeline.settings,
        activity_pipeline::consume::Stages::All,
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, Some("first"), &activity("same-actor", "t"))
            .await
            .status(),
        202
    );
    assert_eq!(pipeline.wait_for_count(filter("acme", "first"), 1).await, 1);
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, Some("refused"), &activity("same-actor", "t"))
            .await
            .status(),
        202
    );
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, Some("fine"), &activity("other-actor", "t"))
            .await
            .status(),
        202
    );
    assert_eq!(
        pipeline.wait_for_count(filter("acme", "fine"), 1).await,
        1,
        "records after it are not held up"
    );

    let dead = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let dead = pipeline.dead_letters().await;
            if !dead.is_empty() {
                break dead;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the refused record never reached the DLQ"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let record = &dead[0];
    assert_eq!(header(record, "dlq-error-class"), "transient");
    assert_eq!(
        header(record, "dlq-attempts"),
        "4",
        "the first attempt and three retries"
    );
    assert_eq!(header(record, "idempotency-key"), "refused");
    assert_eq!(
        header(record, "dlq-source-topic"),
        pipeline.settings.kafka.topic,
        "source is the main topic, not a retry topic"
    );
    let first =
        chrono::DateTime::parse_from_rfc3339(header(record, "dlq-first-failure-at")).unwrap();
    let last = chrono::DateTime::parse_from_rfc3339(header(record, "dlq-last-failure-at")).unwrap();
    assert!(
        last - first >= chrono::Duration::milliseconds(700),
        "waited 100 + 200 + 400 ms between attempts: {first} .. {last}"
    );
    assert_eq!(pipeline.count(filter("acme", "refused")).await, 0);
    let metrics = runtime.metrics().render();
    assert!(
        metrics.contains("activity_pipeline_consumer_records_total{outcome=\"retried\"} 3"),
        "{metrics}"
    );
    shutdown.cancel();
    runtime.wait().await.unwrap();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_holds_the_offsets_and_loses_or_doubles_nothing() {
    let mut redis = PrivateRedis::start().await;
    let pipeline = TestPipeline::spawn_with(&[format!("redis.url={}", redis.url())]).await;
    redis.stop();

    let keys: Vec<String> = (0..10)
        .map(|index| format!("during-redis-outage-{index}"))
        .collect();
    for key in &keys {
        assert_eq!(
            pipeline
                .post_activity(ACME_KEY, Some(key), &activity("u1", "comment"))
                .await
                .status(),
            202
        );
    }
    // MongoDB writes go on (the unique key dedupes), but no offset moves without the Redis step.
    assert_eq!(pipeline.wait_for_count(doc! {}, 10).await, 10);
    assert!(
        pipeline
            .wait_for_metric("activity_pipeline_consumer_breaker_open{stage=\"main\"} 1")
            .await
    );
    assert_eq!(
        pipeline.committed_offsets(),
        [],
        "nothing committed while Redis is down"
    );

    redis.resume().await;
    eventually("counters after Redis came back", || async {
        pipeline.counters("acme").await.get("comment") == Some(&10)
    })
    .await;
    eventually("offsets committed after Redis came back", || async {
        pipeline
            .committed_offsets()
            .iter()
            .map(|(_, offset)| offset)
            .sum::<i64>()
            == 10
    })
    .await;
    for key in &keys {
        assert_eq!(pipeline.count(filter("acme", key)).await, 1);
    }
    assert!(
        pipeline
            .wait_for_metric("activity_pipeline_consumer_breaker_open{stage=\"main\"} 0")
            .await
    );
    assert!(
        pipeline.dead_letters().await.is_empty(),
        "an outage is not poison"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_outage_holds_the_offsets_and_fills_no_dlq() {
    let mut mongo = PrivateMongo::start().await;
    let pipeline = TestPipeline::spawn_with(&[
        format!("mongo.uri={}", mongo.uri()),
        "mongo.server_selection_timeout_ms=500".to_owned(),
    ])
    .await;
    // The consumer created its indexes; now MongoDB goes away.
    eventually("indexes created", || async {
        pipeline
            .activities()
            .list_index_names()
            .await
            .is_ok_and(|names| names.len() >= 3)
    })
    .await;
    mongo.stop();

    let keys: Vec<String> = (0..10)
        .map(|index| format!("during-mongo-outage-{index}"))
        .collect();
    for key in &keys {
        assert_eq!(
            pipeline
                .post_activity(ACME_KEY, Some(key), &activity("u1", "share"))
                .await
                .status(),
            202
        );
    }
    assert!(
        pipeline
            .wait_for_metric("activity_pipeline_consumer_breaker_open{stage=\"main\"} 1")
            .await
    );
    assert_eq!(
        pipeline.committed_offsets(),
        [],
        "nothing committed while MongoDB is down"
    );

    mongo.resume().await;
    eventually("all stored after MongoDB came back", || async {
        pipeline.count(doc! {}).await == 10
    })
    .await;
    eventually("counters after MongoDB came back", || async {
        pipeline.counters("acme").await.get("share") == Some(&10)
    })
    .await;
    eventually("offsets committed", || async {
        pipeline
            .committed_offsets()
            .iter()
            .map(|(_, offset)| offset)
            .sum::<i64>()
            == 10
    })
    .await;
    for key in &keys {
        assert_eq!(pipeline.count(filter("acme", key)).await, 1);
    }
    assert!(
        pipeline.dead_letters().await.is_empty(),
        "an outage is not poison"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_and_restarted_leaves_every_activity_once() {
    let pipeline =
        TestPipeline::spawn_api_only(&["consumer.batch_max_records=20".to_owned()]).await;
    let mut pubsub = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub
        .subscribe(pipeline.redis_key("activities:{acme}"))
        .await
        .unwrap();
    let spawn_consumer = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_activity-pipeline"));
        command.arg("--config").arg(crate::helpers::dev_config());
        for flag in &pipeline.overrides {
            command.arg("--set").arg(flag);
        }
        command
            .args(["consume"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the binary starts")
    };

    let total: i64 = 300;
    let mut consumer = spawn_consumer();
    let poster = {
        let http = pipeline.http.clone();
        let url = format!("{}/activities", pipeline.address);
        tokio::spawn(async move {
            for index in 0..total {
                let activity_type = if index % 2 == 0 { "even" } else { "odd" };
                let response = http
                    .post(&url)
                    .bearer_auth(ACME_KEY)
                    .header("X-Idempotency-Key", format!("kill-{index}"))
                    .json(&activity("u1", activity_type))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
            }
        })
    };
    // Kill twice mid-stream, each time once more has been stored since the last start.
    for threshold in [60, 160] {
        eventually("progress before the kill", || async {
            pipeline.count(doc! {}).await >= threshold
        })
        .await;
        consumer.kill().unwrap(); // SIGKILL
        consumer.wait().unwrap();
        consumer = spawn_consumer();
    }
    poster.await.unwrap();
    eventually("every acknowledged activity stored", || async {
        pipeline.count(doc! {}).await >= total as u64
    })
    .await;
    eventually("counters complete", || async {
        let counters = pipeline.counters("acme").await;
        counters.get("even") == Some(&(total / 2)) && counters.get("odd") == Some(&(total / 2))
    })
    .await;
    assert_eq!(pipeline.count(doc! {}).await, total as u64, "no duplicates");
    let mut events: HashMap<String, usize> = HashMap::new();
    let mut stream = pubsub.on_message();
    while events.values().sum::<usize>() < total as usize {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("events")
            .unwrap();
        let event: Value = serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        *events
            .entry(event["idempotencyKey"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err(),
        "no event twice"
    );
    assert_eq!(events.len(), total as usize);
    assert!(events.values().all(|count| *count == 1));
    drop(stream);
    consumer.kill().unwrap();
    consumer.wait().unwrap();
    pipeline.stop().await;
}
