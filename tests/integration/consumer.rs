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
    // MongoDB writes of the batch in hand go on (the unique key dedupes), but no offset moves without
    // the Redis step; the partitions are paused, so later records wait in Kafka.
    assert!(pipeline.wait_for_count(doc! {}, 1).await >= 1);
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
    // The last consumer may not even own the partition yet: it joins once the broker expires the
    // killed member (kafka.session_timeout_ms), and what the killed members processed in their last
    // second was never committed. One more activity, stored, shows it owns the partition and has
    // gone through everything before it (all of acme's records are in one partition, in order).
    let response = pipeline
        .post_activity(ACME_KEY, Some("kill-last"), &activity("u1", "even"))
        .await;
    assert_eq!(response.status(), 202);
    eventually("the restarted consumer processes", || async {
        pipeline.count(doc! {}).await == total as u64 + 1
    })
    .await;
    // SIGTERM: the consumer finishes, commits everything it processed and exits cleanly.
    let terminated = std::process::Command::new("kill")
        .args(["-TERM", &consumer.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let status = consumer.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    let committed = pipeline.committed_offsets();
    assert_eq!(
        committed.iter().map(|(_, offset)| offset).sum::<i64>(),
        total + 1,
        "everything processed is committed on shutdown: {committed:?}"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_consumer_joining_and_leaving_the_group_loses_and_doubles_nothing() {
    // Eight tenants, so the records spread over every partition (the topic is keyed by tenant).
    let tenants: Vec<String> = (0..8).map(|index| format!("tenant-{index}")).collect();
    let mut extra = vec!["consumer.batch_max_records=10".to_owned()];
    for tenant in &tenants {
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!(
            "key-{tenant}"
        )));
        extra.push(format!("tenants.{tenant}.api_key_sha256={digest}"));
    }
    let pipeline = TestPipeline::spawn_with(&extra).await;
    let total: i64 = 320;
    let poster = {
        let http = pipeline.http.clone();
        let url = format!("{}/activities", pipeline.address);
        let tenants = tenants.clone();
        tokio::spawn(async move {
            for index in 0..total {
                let response = http
                    .post(&url)
                    .bearer_auth(format!("key-{}", tenants[index as usize % tenants.len()]))
                    .header("X-Idempotency-Key", format!("rebalance-{index}"))
                    .json(&activity("u1", "rebalance"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                // Paced, so the stream is still flowing while members join and leave.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // A second member joins mid-stream (partitions move to it), then leaves (they move back).
    eventually("progress before the join", || async {
        pipeline.count(doc! {}).await >= 40
    })
    .await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let second = activity_pipeline::consume::ConsumerRuntime::start(
        &pipeline.settings,
        activity_pipeline::consume::Stages::Main,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let inserted_by_second = || {
        second
            .metrics()
            .render()
            .lines()
            .find_map(|line| {
                line.strip_prefix("activity_pipeline_consumer_records_total{outcome=\"inserted\"} ")
                    .map(str::to_owned)
            })
            .and_then(|count| count.parse::<u64>().ok())
            .unwrap_or(0)
    };
    eventually(
        "the second member took partitions and processed records",
        || async { inserted_by_second() > 0 },
    )
    .await;
    shutdown.cancel();
    second.wait().await.unwrap();
    poster.await.unwrap();
    eventually("everything stored", || async {
        pipeline.count(doc! {}).await >= total as u64
    })
    .await;
    for tenant in &tenants {
        let per_tenant = total / tenants.len() as i64;
        eventually("everything counted", || async {
            pipeline.counters(tenant).await.get("rebalance") == Some(&per_tenant)
        })
        .await;
    }
    assert_eq!(pipeline.count(doc! {}).await, total as u64);
    for index in 0..total {
        let tenant = &tenants[index as usize % tenants.len()];
        assert_eq!(
            pipeline
                .count(filter(tenant, &format!("rebalance-{index}")))
                .await,
            1
        );
    }
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_metrics_report_outcomes_lag_commits_and_latency() {
    let pipeline = TestPipeline::spawn().await;
    for index in 0..5 {
        let key = format!("metrics-{index}");
        assert_eq!(
            pipeline
                .post_activity(ACME_KEY, Some(&key), &activity("u1", "seen"))
                .await
                .status(),
            202
        );
    }
    assert_eq!(pipeline.wait_for_count(doc! {}, 5).await, 5);
    assert!(
        pipeline
            .wait_for_metric("activity_pipeline_consumer_records_total{outcome=\"inserted\"} 5")
            .await
    );
    let topic = pipeline.settings.kafka.topic.clone();
    // Lag comes from librdkafka's statistics (every 5 s) and commits from the auto-commit (every 1 s).
    eventually("lag and commits reported", || async {
        let metrics = pipeline.consumer_metrics().await;
        let lag_reported = metrics.lines().any(|line| {
            line.starts_with("activity_pipeline_consumer_lag_records{")
                && line.contains(&format!("topic=\"{topic}\""))
        });
        let committed = metrics.lines().any(|line| {
            line.starts_with("activity_pipeline_consumer_commits_total{result=\"ok\"}")
        });
        lag_reported && committed
    })
    .await;
    let metrics = pipeline.consumer_metrics().await;
    assert!(
        metrics.contains("activity_pipeline_end_to_end_latency_seconds_count 5"),
        "{metrics}"
    );
    assert!(metrics.contains("activity_pipeline_consumer_breaker_open{stage=\"main\"} 0"));
    assert!(metrics.contains("activity_pipeline_consumer_breaker_open{stage=\"retry.3\"} 0"));
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_the_mark_expired_is_not_counted_again() {
    let pipeline = TestPipeline::spawn_with(&["redis.idempotency_ttl_secs=1".to_owned()]).await;
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, Some("old-one"), &activity("u1", "login"))
            .await
            .status(),
        202
    );
    assert_eq!(
        pipeline.wait_for_count(filter("acme", "old-one"), 1).await,
        1
    );
    eventually("counted", || async {
        pipeline.counters("acme").await.get("login") == Some(&1)
    })
    .await;
    let mark = pipeline.redis_key("idempotency:{acme}:old-one");
    eventually("the mark expired", || async {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&mark)
            .query_async(&mut pipeline.redis.clone())
            .await
            .unwrap();
        !exists
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // the document is now older than the mark's TTL
                                                           // The same activity arrives again (a replay of an old dead letter, a client retry a day later).
    let again = pipeline.envelope("acme", "old-one", &activity("u1", "login"));
    let topic = pipeline.settings.kafka.topic.clone();
    pipeline
        .produce_raw(&topic, Some("acme"), Some(&again), &[])
        .await;
    let marker = pipeline.envelope("acme", "marker", &activity("u1", "logout"));
    pipeline
        .produce_raw(&topic, Some("acme"), Some(&marker), &[])
        .await;
    assert_eq!(
        pipeline.wait_for_count(filter("acme", "marker"), 1).await,
        1
    );
    assert_eq!(pipeline.count(filter("acme", "old-one")).await, 1);
    assert_eq!(
        pipeline.counters("acme").await.get("login"),
        Some(&1),
        "not counted twice"
    );
    pipeline.stop().await;
}
