use std::collections::BTreeMap;

use futures::StreamExt;
use mongodb::bson::doc;
use serde_json::Value;

use crate::helpers::{activity, filter, TestPipeline, ACME_KEY, GLOBEX_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_of_two_tenants_are_stored_marked_counted_and_published_once() {
    let pipeline = TestPipeline::spawn().await;

    // Listen on acme's live channel before posting, as an SSE endpoint would.
    let mut pubsub = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub
        .subscribe(pipeline.redis_key("activities:{acme}"))
        .await
        .unwrap();

    let mut sent: Vec<(&str, String, &str)> = Vec::new();
    for index in 0..12 {
        let (tenant, api_key) = if index % 2 == 0 {
            ("acme", ACME_KEY)
        } else {
            ("globex", GLOBEX_KEY)
        };
        let activity_type = if index % 3 == 0 {
            "comment.created"
        } else {
            "doc.viewed"
        };
        let key = format!("it-key-{index}");
        let response = pipeline
            .post_activity(
                api_key,
                Some(&key),
                &activity(&format!("user-{index}"), activity_type),
            )
            .await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["success"], true);
        assert_eq!(body["message"], "Activity queued for processing");
        assert_eq!(body["idempotencyKey"], key);
        sent.push((tenant, key, activity_type));
    }

    assert_eq!(pipeline.wait_for_count(doc! {}, 12).await, 12);
    let mut expected_counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (tenant, key, activity_type) in &sent {
        assert_eq!(
            pipeline.count(filter(tenant, key)).await,
            1,
            "{tenant}/{key} stored exactly once"
        );
        let stored = pipeline
            .activities()
            .find_one(filter(tenant, key))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.get_str("type").unwrap(), *activity_type);
        assert_eq!(stored.get_str("entityId").unwrap(), "doc-42");
        assert_eq!(
            stored
                .get_document("metadata")
                .unwrap()
                .get_str("source")
                .unwrap(),
            "integration-test"
        );
        assert!(
            stored.get_datetime("enqueuedAt").is_ok() && stored.get_datetime("createdAt").is_ok()
        );

        let mark = pipeline
            .redis_get(&format!("idempotency:{{{tenant}}}:{key}"))
            .await;
        assert_eq!(
            mark,
            Some(format!(
                "{}:{}",
                stored.get_object_id("_id").unwrap().to_hex(),
                stored.get_str("payloadFingerprint").unwrap()
            )),
            "the mark holds the document id and the payload fingerprint"
        );
        let ttl: i64 = redis::cmd("TTL")
            .arg(pipeline.redis_key(&format!("idempotency:{{{tenant}}}:{key}")))
            .query_async(&mut pipeline.redis.clone())
            .await
            .unwrap();
        assert!(
            (86_000..=86_400).contains(&ttl),
            "mark TTL is 24 h, got {ttl}"
        );
        *expected_counts.entry((tenant, activity_type)).or_default() += 1;
    }
    for tenant in ["acme", "globex"] {
        let counters: BTreeMap<String, i64> = redis::cmd("HGETALL")
            .arg(pipeline.redis_key(&format!("analytics:{{{tenant}}}")))
            .query_async(&mut pipeline.redis.clone())
            .await
            .unwrap();
        let expected: BTreeMap<String, i64> = expected_counts
            .iter()
            .filter(|((counted_tenant, _), _)| *counted_tenant == tenant)
            .map(|((_, activity_type), count)| (activity_type.to_string(), *count))
            .collect();
        assert_eq!(counters, expected, "{tenant} counters");
    }

    // Six acme events, each the stored activity, none of globex's.
    let mut events = pubsub.on_message();
    let mut keys = Vec::new();
    for _ in 0..6 {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
            .await
            .expect("an event within 10 s")
            .unwrap();
        let event: Value = serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        assert_eq!(event["tenantId"], "acme");
        keys.push(event["idempotencyKey"].as_str().unwrap().to_owned());
    }
    keys.sort();
    let mut expected_keys: Vec<String> = sent
        .iter()
        .filter(|(tenant, ..)| *tenant == "acme")
        .map(|(_, key, _)| key.clone())
        .collect();
    expected_keys.sort();
    assert_eq!(keys, expected_keys);
    drop(events);

    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_twice_is_stored_and_counted_once() {
    let pipeline = TestPipeline::spawn().await;
    for _ in 0..2 {
        let response = pipeline
            .post_activity(ACME_KEY, Some("same-key"), &activity("u1", "login"))
            .await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["idempotencyKey"], "same-key");
    }
    // A later, different activity proves the consumer got past both copies before we count.
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, Some("after"), &activity("u1", "logout"))
            .await
            .status(),
        202
    );
    assert_eq!(pipeline.wait_for_count(filter("acme", "after"), 1).await, 1);
    assert_eq!(
        pipeline.wait_for_count(filter("acme", "same-key"), 1).await,
        1
    );
    assert_eq!(pipeline.count(doc! {}).await, 2);
    let login_count: Option<i64> = redis::cmd("HGET")
        .arg(pipeline.redis_key("analytics:{acme}"))
        .arg("login")
        .query_async(&mut pipeline.redis.clone())
        .await
        .unwrap();
    assert_eq!(login_count, Some(1));
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_server_makes_is_a_uuid_v7_and_the_activity_is_stored_under_it() {
    let pipeline = TestPipeline::spawn().await;
    let response = pipeline
        .post_activity(GLOBEX_KEY, None, &activity("u9", "signup"))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let key = body["idempotencyKey"].as_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(&key).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 7);
    assert_eq!(pipeline.wait_for_count(filter("globex", &key), 1).await, 1);
    pipeline.stop().await;
}
