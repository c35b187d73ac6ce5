//! A reused idempotency key: the same key with the same payload is a retry (202 `duplicate`), with
//! another payload a conflict: 422 at the API (layer 2), a `conflict` dead letter at the consumer
//! (layer 3, when the API could not tell). Never silently dropped, never stored twice.

use std::time::Duration;

use mongodb::bson::doc;
use serde_json::{json, Value};

use crate::helpers::{activity, eventually, filter, TestApi, TestPipeline, ACME_KEY};

fn header<'a>(record: &'a activity_pipeline::kafka::ConsumedRecord, name: &str) -> &'a str {
    record.header(name).unwrap_or("-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_payload_is_refused_with_422_and_the_first_activity_stays() {
    let pipeline = TestPipeline::spawn().await;
    let first = activity("u1", "login");
    let other = activity("u2", "logout");

    let response = pipeline
        .post_activity(ACME_KEY, Some("order-42"), &first)
        .await;
    assert_eq!(response.status(), 202);
    // The same payload with its keys in another order is the same activity: a duplicate.
    let reordered: Value =
        serde_json::from_str(r#"{"metadata":{"nested":{"n":1},"source":"integration-test"},"entityId":"doc-42","type":"login","actorName":"Actor u1","actorId":"u1"}"#).unwrap();
    assert_eq!(
        reordered, first,
        "the helper's activity is what this test reorders"
    );
    let retry = pipeline
        .post_activity(ACME_KEY, Some("order-42"), &reordered)
        .await;
    assert_eq!(retry.status(), 202);
    assert_eq!(retry.json::<Value>().await.unwrap()["duplicate"], true);

    let reused = pipeline
        .post_activity(ACME_KEY, Some("order-42"), &other)
        .await;
    assert_eq!(reused.status(), 422);
    let body: Value = reused.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert_eq!(body["idempotencyKey"], "order-42");
    assert!(
        body["error"].as_str().unwrap().contains("order-42"),
        "{body}"
    );

    assert_eq!(
        pipeline.wait_for_count(filter("acme", "order-42"), 1).await,
        1
    );
    // Still refused once stored; and what is stored is the first payload.
    let again = pipeline
        .post_activity(ACME_KEY, Some("order-42"), &other)
        .await;
    assert_eq!(again.status(), 422);
    let stored = pipeline
        .activities()
        .find_one(filter("acme", "order-42"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_str("actorId").unwrap(), "u1");
    assert_eq!(
        stored.get_str("payloadFingerprint").unwrap().len(),
        32,
        "{stored}"
    );
    assert_eq!(pipeline.counters("acme").await.get("login"), Some(&1));
    assert_eq!(pipeline.counters("acme").await.get("logout"), None);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_batch_key_refuses_each_item_whose_payload_differs() {
    let pipeline = TestPipeline::spawn().await;
    let items = json!({"activities": [activity("a", "t"), activity("b", "t"), activity("c", "t")]});
    let response = pipeline.post_batch(ACME_KEY, Some("batch-1"), &items).await;
    assert_eq!(response.status(), 202);

    // A later batch [D] with the same key gives D the key batch-1:0, which is A's.
    let reused = pipeline
        .post_batch(
            ACME_KEY,
            Some("batch-1"),
            &json!({"activities": [activity("d", "t")]}),
        )
        .await;
    assert_eq!(reused.status(), 422);
    let body: Value = reused.json().await.unwrap();
    assert_eq!(body["conflicts"], 1);
    assert_eq!(body["results"][0]["status"], 422);
    assert_eq!(body["results"][0]["idempotencyKey"], "batch-1:0");

    // Item by item: A again is a duplicate, X in B's place is refused.
    let mixed = pipeline
        .post_batch(
            ACME_KEY,
            Some("batch-1"),
            &json!({"activities": [activity("a", "t"), activity("x", "t")]}),
        )
        .await;
    assert_eq!(mixed.status(), 207);
    let body: Value = mixed.json().await.unwrap();
    assert_eq!(body["results"][0]["status"], 202);
    assert_eq!(body["results"][0]["duplicate"], true);
    assert_eq!(body["results"][1]["status"], 422);
    assert_eq!(
        (body["accepted"].clone(), body["conflicts"].clone()),
        (json!(1), json!(1))
    );

    assert_eq!(
        pipeline.wait_for_count(doc! {"tenantId": "acme"}, 3).await,
        3
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let actors: Vec<String> = {
        use futures::TryStreamExt;
        let documents: Vec<mongodb::bson::Document> = pipeline
            .activities()
            .find(doc! {"tenantId": "acme"})
            .sort(doc! {"idempotencyKey": 1})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        documents
            .iter()
            .map(|document| document.get_str("actorId").unwrap().to_owned())
            .collect()
    };
    assert_eq!(actors, ["a", "b", "c"], "D and X were never stored");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_flight_is_answered_409_and_a_refused_record_gives_its_key_back() {
    // A reservation another request holds: the same payload waits (409), another payload is 422.
    let pipeline = TestPipeline::spawn().await;
    let body = activity("u1", "login");
    let new_activity: activity_pipeline::domain::NewActivity =
        serde_json::from_value(body.clone()).unwrap();
    let fingerprint = activity_pipeline::domain::PayloadFingerprint::of(&new_activity);
    let _: () = redis::cmd("SET")
        .arg(pipeline.redis_key("accepted:{acme}:busy"))
        .arg(format!("pending:{fingerprint}"))
        .arg("PX")
        .arg(30_000)
        .query_async(&mut pipeline.redis.clone())
        .await
        .unwrap();
    let waiting = pipeline.post_activity(ACME_KEY, Some("busy"), &body).await;
    assert_eq!(waiting.status(), 409);
    assert_eq!(waiting.headers()["retry-after"], "1");
    assert_eq!(
        waiting.json::<Value>().await.unwrap()["idempotencyKey"],
        "busy"
    );
    let other = pipeline
        .post_activity(ACME_KEY, Some("busy"), &activity("u9", "other"))
        .await;
    assert_eq!(other.status(), 422);
    pipeline.stop().await;

    // A broker that never acknowledges: the reservation is given back, so the retry is produced
    // (503 again here), not told 409.
    let api = TestApi::spawn(
        &[
            "kafka.brokers=127.0.0.1:1".to_owned(),
            "kafka.delivery_timeout_ms=1000".to_owned(),
            "readiness.timeout_ms=1000".to_owned(),
        ],
        false,
    )
    .await;
    for _ in 0..2 {
        let response = api.post_activity(ACME_KEY, Some("refused"), &body).await;
        assert_eq!(response.status(), 503);
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_dead_letters_a_reused_key_as_a_conflict_on_every_path() {
    // Records straight into the topic, as when the API could not ask Redis (layer 2 skipped).
    let pipeline = TestPipeline::spawn().await;
    let topic = pipeline.settings.kafka.topic.clone();
    let produce = |key: &'static str, actor: &'static str| {
        let envelope = pipeline.envelope("acme", key, &activity(actor, "login"));
        let pipeline = &pipeline;
        let topic = topic.clone();
        async move {
            pipeline
                .produce_raw(
                    &topic,
                    Some("acme"),
                    Some(&envelope),
                    &[("idempotency-key", key)],
                )
                .await
        }
    };

    // 1. Back to back, different payloads (one batch or two): the first is stored.
    produce("back-to-back", "first").await;
    produce("back-to-back", "second").await;
    // 2. After the first is stored and marked in Redis: the pre-check sees the mark.
    produce("marked", "first").await;
    assert_eq!(
        pipeline.wait_for_count(filter("acme", "marked"), 1).await,
        1
    );
    produce("marked", "second").await;
    eventually("two conflicts dead-lettered", || async {
        pipeline.dead_letters().await.len() >= 2
    })
    .await;
    assert_eq!(
        pipeline.counters("acme").await.get("login"),
        Some(&2),
        "a conflict is never counted"
    );
    // 3. The mark gone (Redis lost it): the stored document's fingerprint decides. (The stored
    // document is announced again, as after a crash between MongoDB and Redis: its mark is back.)
    produce("stored", "first").await;
    assert_eq!(
        pipeline.wait_for_count(filter("acme", "stored"), 1).await,
        1
    );
    eventually("the mark of `stored` is set", || async {
        pipeline
            .redis_get("idempotency:{acme}:stored")
            .await
            .is_some()
    })
    .await;
    let _: () = redis::cmd("DEL")
        .arg(pipeline.redis_key("idempotency:{acme}:stored"))
        .query_async(&mut pipeline.redis.clone())
        .await
        .unwrap();
    produce("stored", "second").await;
    // And a true redelivery of the same payload is still a plain duplicate.
    produce("stored", "first").await;

    let mut dead = Vec::new();
    for _ in 0..120 {
        dead = pipeline.dead_letters().await;
        if dead.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut keys: Vec<&str> = dead
        .iter()
        .map(|record| header(record, "idempotency-key"))
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["back-to-back", "marked", "stored"], "{dead:?}");
    for record in &dead {
        assert_eq!(header(record, "dlq-error-class"), "conflict", "{record:?}");
        assert!(
            header(record, "dlq-error").contains("different payload"),
            "{record:?}"
        );
        assert_eq!(
            header(record, "dlq-attempts"),
            "1",
            "conflicts are not retried"
        );
        let value: Value = serde_json::from_slice(record.payload.as_deref().unwrap()).unwrap();
        assert_eq!(
            value["activity"]["actorId"], "second",
            "the original payload is kept"
        );
    }
    for key in ["back-to-back", "marked", "stored"] {
        let stored = pipeline
            .activities()
            .find_one(filter("acme", key))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.get_str("actorId").unwrap(), "first", "{key}");
        assert_eq!(pipeline.count(filter("acme", key)).await, 1, "{key}");
    }
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_document_under_a_key_is_a_dead_letter_not_an_outage() {
    let pipeline = TestPipeline::spawn().await;
    // Written by hand under (acme, broken): no actor, a type that is not a string.
    pipeline
        .activities()
        .insert_one(doc! {"tenantId": "acme", "idempotencyKey": "broken", "type": 7})
        .await
        .unwrap();
    let topic = pipeline.settings.kafka.topic.clone();
    let envelope = pipeline.envelope("acme", "broken", &activity("u1", "login"));
    pipeline
        .produce_raw(
            &topic,
            Some("acme"),
            Some(&envelope),
            &[("idempotency-key", "broken")],
        )
        .await;
    // The records after it are not held up by a breaker that thinks MongoDB is down.
    let after = pipeline
        .post_activity(ACME_KEY, Some("after-broken"), &activity("u2", "login"))
        .await;
    assert_eq!(after.status(), 202);
    assert_eq!(
        pipeline
            .wait_for_count(filter("acme", "after-broken"), 1)
            .await,
        1
    );
    eventually(
        "the record after it is counted (its batch completed)",
        || async { pipeline.counters("acme").await.get("login") == Some(&1) },
    )
    .await;
    eventually("the record of the corrupt key is dead-lettered", || async {
        !pipeline.dead_letters().await.is_empty()
    })
    .await;
    let dead = pipeline.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(header(&dead[0], "dlq-error-class"), "rejected");
    assert!(
        header(&dead[0], "dlq-error").contains("corrupt"),
        "{dead:?}"
    );
    pipeline.stop().await;
}
