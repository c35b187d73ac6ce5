//! The conflict rule between datacenters: one key accepted in two datacenters with different
//! bodies ends as the same stored activity in both (the one accepted first, then by datacenter name),
//! the other a `conflict` dead letter in each, counted nowhere, whichever order each consumer met
//! the two in. Two topics on the shared Kafka stand in for a datacenter's own topic and the one
//! MirrorMaker 2 mirrors into it (as in `datacenters.rs`).

use std::collections::BTreeMap;

use activity_pipeline::domain::{NewActivity, PayloadFingerprint};
use activity_pipeline::kafka::ConsumedRecord;
use chrono::{DateTime, Duration as TimeDelta, Utc};
use mongodb::bson::{doc, Document};
use serde_json::Value;

use crate::helpers::{activity, eventually, filter, TestPipeline, ACME_KEY};

fn header<'a>(record: &'a ConsumedRecord, name: &str) -> &'a str {
    record.header(name).unwrap_or_default()
}

fn fingerprint_of(body: &Value) -> String {
    let activity: NewActivity = serde_json::from_value(body.clone()).unwrap();
    PayloadFingerprint::of(&activity).as_str().to_owned()
}

/// An envelope as an API of `dc` would have written it, accepted at `accepted_at`.
fn envelope(key: &str, body: &Value, accepted_at: DateTime<Utc>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "activity.v1",
        "tenantId": "acme",
        "idempotencyKey": key,
        "enqueuedAt": accepted_at.to_rfc3339(),
        "activity": body,
    }))
    .unwrap()
}

/// What two datacenters must agree on for a key: the payload kept, where and when it was accepted.
fn kept(document: &Document) -> (String, String, i64) {
    (
        document.get_str("payloadFingerprint").unwrap().to_owned(),
        document.get_str("originDc").unwrap().to_owned(),
        document
            .get_datetime("enqueuedAt")
            .unwrap()
            .timestamp_millis(),
    )
}

async fn stored(pipeline: &TestPipeline, key: &str) -> Option<Document> {
    pipeline
        .activities()
        .find_one(filter("acme", key))
        .await
        .unwrap()
}

/// The stored activities' counts per type, the source of truth the Redis counters must equal.
async fn stored_counts(pipeline: &TestPipeline) -> BTreeMap<String, i64> {
    use futures::TryStreamExt;
    let documents: Vec<Document> = pipeline
        .activities()
        .find(doc! {"tenantId": "acme"})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut counts = BTreeMap::new();
    for document in documents {
        *counts
            .entry(document.get_str("type").unwrap().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// Both arrival orders, one key each, in one datacenter (west): the activity accepted first in east
/// arrives through the mirrored topic after (or before) the one accepted later in west. The end is
/// the same: east's activity stored, west's a `conflict` dead letter, one count of east's type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_activity_accepted_first_is_kept_whichever_arrives_first() {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let east_topic = format!("it-{}.east.activities", &id[id.len() - 12..]);
    let west = TestPipeline::spawn_with(&[
        "dc.name=west".to_owned(),
        format!(r#"kafka.mirrored_topics=["{east_topic}"]"#),
    ])
    .await;
    activity_pipeline::kafka::create_topics(
        &west.settings.kafka,
        std::slice::from_ref(&east_topic),
    )
    .await
    .unwrap();
    let west_topic = west.settings.kafka.topic.clone();
    // The recent-pages set as a long-running deployment has it, its floor below every activity here
    // (a new set's floor is a minute ahead, and its pages come from MongoDB until then): the newest
    // page below is served from the set, which must hold the kept activity in the replaced one's place.
    redis::cmd("SET")
        .arg(west.redis_key("pagesfloor:{acme}"))
        .arg("000000000000000000000000")
        .query_async::<()>(&mut west.redis.clone())
        .await
        .unwrap();
    let accepted_in_east = activity("u-east", "east.kept");
    let accepted_in_west = activity("u-west", "west.given.up");
    let (east_at, west_at) = (Utc::now() - TimeDelta::seconds(2), Utc::now());
    let send = |topic: &str, key: &'static str, dc: &'static str| {
        let (body, at) = if dc == "east" {
            (&accepted_in_east, east_at)
        } else {
            (&accepted_in_west, west_at)
        };
        let value = envelope(key, body, at);
        let fingerprint = fingerprint_of(body);
        let topic = topic.to_owned();
        let west = &west;
        async move {
            // The headers the API writes.
            west.produce_raw(
                &topic,
                Some("acme"),
                Some(&value),
                &[
                    ("idempotency-key", key),
                    ("payload-fingerprint", &fingerprint),
                    ("accepted-dc", dc),
                ],
            )
            .await;
        }
    };
    let counted = |key: &'static str, activity_type: &'static str| {
        let west = &west;
        async move {
            eventually(&format!("{key} is stored and counted"), || async {
                west.count(filter("acme", key)).await == 1
                    && west
                        .redis_get(&format!("idempotency:{{acme}}:{key}"))
                        .await
                        .is_some()
                    && west.counters("acme").await.contains_key(activity_type)
            })
            .await;
        }
    };

    // The winner second: west's own activity is stored and counted, then east's replaces it.
    send(&west_topic, "winner-second", "west").await;
    counted("winner-second", "west.given.up").await;
    let loser_id = stored(&west, "winner-second")
        .await
        .unwrap()
        .get_object_id("_id")
        .unwrap();
    send(&east_topic, "winner-second", "east").await;
    // The winner first: west's later activity finds it stored.
    send(&east_topic, "winner-first", "east").await;
    counted("winner-first", "east.kept").await;
    send(&west_topic, "winner-first", "west").await;

    eventually("two conflicts dead-lettered", || async {
        west.dead_letters().await.len() >= 2
    })
    .await;
    eventually("the counts moved to the activity kept", || async {
        !west.counters("acme").await.contains_key("west.given.up")
    })
    .await;
    let east_fingerprint = fingerprint_of(&accepted_in_east);
    let west_fingerprint = fingerprint_of(&accepted_in_west);
    for key in ["winner-second", "winner-first"] {
        let document = stored(&west, key).await.unwrap();
        assert_eq!(
            kept(&document),
            (
                east_fingerprint.clone(),
                "east".to_owned(),
                east_at.timestamp_millis()
            ),
            "{key}: {document}"
        );
        assert_eq!(document.get_str("actorId").unwrap(), "u-east", "{key}");
        assert_eq!(west.count(filter("acme", key)).await, 1, "{key}");
        let mark = west
            .redis_get(&format!("idempotency:{{acme}}:{key}"))
            .await
            .unwrap();
        assert_eq!(
            mark,
            format!(
                "{}:{east_fingerprint}",
                document.get_object_id("_id").unwrap().to_hex()
            ),
            "{key}: the mark names the activity kept"
        );
    }
    assert_eq!(
        stored(&west, "winner-second")
            .await
            .unwrap()
            .get_object_id("_id")
            .unwrap(),
        loser_id,
        "the activity kept takes the replaced one's place (its id: pages and event ids stay put)"
    );
    let counters = west.counters("acme").await;
    assert_eq!(
        counters,
        BTreeMap::from([("east.kept".to_owned(), 2)]),
        "one count per key, of the type kept"
    );
    // The newest page, served from the recent-pages set, shows the kept activity, once.
    let (status, page) = west.get_json(ACME_KEY, "/activities?limit=10").await;
    assert_eq!(status, 200, "{page}");
    let listed: Vec<(&str, &str)> = page["activities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["idempotencyKey"].as_str().unwrap(),
                item["actorId"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [("winner-first", "u-east"), ("winner-second", "u-east")],
        "{page}"
    );
    // What replaced another says so (a live client that saw the replaced event under this id).
    let activities = page["activities"].as_array().unwrap();
    assert_eq!(activities[0]["supersedes"], Value::Null, "{page}");
    assert_eq!(
        activities[1]["supersedes"],
        serde_json::json!({"type": "west.given.up"}),
        "{page}"
    );

    let dead = west.dead_letters().await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let mut keys: Vec<&str> = dead
        .iter()
        .map(|record| header(record, "idempotency-key"))
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["winner-first", "winner-second"]);
    for record in &dead {
        let key = header(record, "idempotency-key");
        assert_eq!(header(record, "dlq-error-class"), "conflict", "{record:?}");
        assert_eq!(header(record, "accepted-dc"), "west", "{key}");
        assert_eq!(
            header(record, "payload-fingerprint"),
            west_fingerprint,
            "{key}"
        );
        let value: Value = serde_json::from_slice(record.payload.as_deref().unwrap()).unwrap();
        assert_eq!(value["activity"]["actorId"], "u-west", "{key}: {value}");
        assert_eq!(value["activity"]["type"], "west.given.up", "{key}");
        // The dead letter rebuilt from the replaced document is a record the API could have
        // written: its payload has the fingerprint it claims.
        assert_eq!(
            fingerprint_of(&value["activity"]),
            west_fingerprint,
            "{key}: {value}"
        );
    }
    west.stop().await;
}

/// A crash after the document was replaced but before the Redis step: the mark still holds the
/// replaced activity's fingerprint, its count is still there. The redelivered winner finds itself
/// stored and must finish the move, not take the mark for a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_a_crash_mid_replacement_moves_the_mark_and_the_count() {
    let west = TestPipeline::spawn_with(&["dc.name=west".to_owned()]).await;
    let topic = west.settings.kafka.topic.clone();
    let loser = activity("u-late", "given.up");
    let winner = activity("u-early", "kept");
    let (winner_at, loser_at) = (Utc::now() - TimeDelta::seconds(5), Utc::now());
    // Key `k` of acme straight into the topic, as accepted at `at`.
    let redeliver = |body: &Value, at: DateTime<Utc>| {
        let value = envelope("k", body, at);
        let (west, topic) = (&west, &topic);
        async move {
            west.produce_raw(
                topic,
                Some("acme"),
                Some(&value),
                &[("idempotency-key", "k")],
            )
            .await;
        }
    };
    redeliver(&loser, loser_at).await;
    eventually("the later activity is stored and counted", || async {
        west.counters("acme").await.get("given.up") == Some(&1)
    })
    .await;
    let stored_loser = stored(&west, "k").await.unwrap();
    // What the batch that superseded it had written to MongoDB when the process died.
    let created_at = stored_loser.get_datetime("createdAt").unwrap();
    let replaced = west
        .activities()
        .update_one(
            doc! {"_id": stored_loser.get_object_id("_id").unwrap()},
            doc! {"$set": {
                "payloadFingerprint": fingerprint_of(&winner),
                "actorId": "u-early",
                "actorName": "Actor u-early",
                "type": "kept",
                "enqueuedAt": mongodb::bson::DateTime::from_millis(winner_at.timestamp_millis()),
                "supersedes": {
                    "payloadFingerprint": fingerprint_of(&loser),
                    "type": "given.up",
                    "createdAt": created_at,
                },
            }},
        )
        .await
        .unwrap();
    assert_eq!(replaced.modified_count, 1);

    redeliver(&winner, winner_at).await;
    eventually("the count moved to the activity kept", || async {
        west.counters("acme").await.get("kept") == Some(&1)
    })
    .await;
    assert_eq!(
        west.counters("acme").await,
        BTreeMap::from([("kept".to_owned(), 1)])
    );
    assert_eq!(
        west.redis_get("idempotency:{acme}:k").await.unwrap(),
        format!(
            "{}:{}",
            stored_loser.get_object_id("_id").unwrap().to_hex(),
            fingerprint_of(&winner)
        )
    );
    // A redelivery of the replaced activity is a conflict; one of the kept one changes nothing.
    redeliver(&loser, loser_at).await;
    redeliver(&winner, winner_at).await;
    eventually("the replaced one is dead-lettered", || async {
        !west.dead_letters().await.is_empty()
    })
    .await;
    assert!(
        west.wait_for_metric("activity_pipeline_consumer_records_total{outcome=\"duplicate\"} 2")
            .await,
        "the kept one's second redelivery is a duplicate"
    );
    assert_eq!(
        west.counters("acme").await,
        BTreeMap::from([("kept".to_owned(), 1)])
    );
    assert_eq!(west.dead_letters().await.len(), 1);
    west.stop().await;
}

/// Two datacenters, each reading its own topic and the other's (as MirrorMaker 2 would mirror it);
/// clients race: every key is posted to east and to west at once with different bodies. Both must
/// end with the same activity per key, the one accepted first (then by datacenter name), the other a
/// conflict dead letter in each, and counters equal to the stores' counts and to each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_raced_into_two_datacenters_with_different_bodies_ends_the_same_in_both() {
    const KEYS: usize = 20;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let id = &id[id.len() - 12..];
    let (east_topic, west_topic) = (
        format!("it-{id}.east.activities"),
        format!("it-{id}.west.activities"),
    );
    let east = TestPipeline::spawn_with(&[
        "dc.name=east".to_owned(),
        format!("kafka.topic={east_topic}"),
        format!(r#"kafka.mirrored_topics=["{west_topic}"]"#),
    ])
    .await;
    let west = TestPipeline::spawn_with(&[
        "dc.name=west".to_owned(),
        format!("kafka.topic={west_topic}"),
        format!(r#"kafka.mirrored_topics=["{east_topic}"]"#),
    ])
    .await;

    let keys: Vec<String> = (0..KEYS).map(|n| format!("race-{n}")).collect();
    let races = keys.iter().map(|key| {
        let (east, west) = (&east, &west);
        async move {
            let (east_body, west_body) = (
                activity(&format!("e-{key}"), "east"),
                activity(&format!("w-{key}"), "west"),
            );
            let (in_east, in_west) = tokio::join!(
                east.post_activity(ACME_KEY, Some(key), &east_body),
                west.post_activity(ACME_KEY, Some(key), &west_body),
            );
            assert_eq!(in_east.status(), 202, "{key} in east");
            assert_eq!(in_west.status(), 202, "{key} in west");
        }
    });
    futures::future::join_all(races).await;

    let converged = || async {
        let (mut east_kept, mut west_kept) = (Vec::new(), Vec::new());
        for key in &keys {
            east_kept.push(stored(&east, key).await.map(|document| kept(&document)));
            west_kept.push(stored(&west, key).await.map(|document| kept(&document)));
        }
        east_kept.iter().all(Option::is_some)
            && east_kept == west_kept
            && east.counters("acme").await == stored_counts(&east).await
            && west.counters("acme").await == stored_counts(&west).await
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    while !converged().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the datacenters did not converge within 90 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }

    let counts = stored_counts(&east).await;
    assert_eq!(counts.values().sum::<i64>(), KEYS as i64, "{counts:?}");
    assert_eq!(east.counters("acme").await, west.counters("acme").await);
    for (name, dc) in [("east", &east), ("west", &west)] {
        let mut dead = Vec::new();
        for _ in 0..120 {
            dead = dc.dead_letters().await;
            if dead.len() >= KEYS {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        assert_eq!(dead.len(), KEYS, "{name}: one dead letter per key");
        for record in &dead {
            let key = header(record, "idempotency-key");
            assert_eq!(
                header(record, "dlq-error-class"),
                "conflict",
                "{name} {key}"
            );
            let value: Value = serde_json::from_slice(record.payload.as_deref().unwrap()).unwrap();
            let loser_at = DateTime::parse_from_rfc3339(value["enqueuedAt"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
            let loser = (
                loser_at,
                header(record, "accepted-dc").to_owned(),
                fingerprint_of(&value["activity"]),
            );
            let (fingerprint, origin, at) = kept(&stored(dc, key).await.unwrap());
            assert_ne!(
                fingerprint, loser.2,
                "{name} {key}: the dead letter is the other body"
            );
            assert!(
                (at, origin.clone(), fingerprint.clone()) < loser,
                "{name} {key}: kept ({at}, {origin}, {fingerprint}) must be accepted before the \
                 dead letter {loser:?}"
            );
        }
    }
    east.stop().await;
    west.stop().await;
}

/// The Redis step of a superseding activity when the key has no mark at all: the replaced
/// activity's step never ran (count the kept one as new), or ran so long ago that its mark expired
/// (its count is there: move it). Either way, the step run again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_mark_the_count_moves_only_when_the_replaced_one_was_counted_long_ago() {
    use activity_pipeline::domain::{IdempotencyKey, TenantId};
    use activity_pipeline::store::{EffectRequest, RedisStore, SupersededActivity};

    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let redis = RedisStore::connect(&pipeline.settings.redis).expect("redis");
    let tenant = TenantId::parse("acme").unwrap();
    let kept_fingerprint = PayloadFingerprint::try_from("a".repeat(32)).unwrap();
    let day = pipeline.settings.redis.idempotency_ttl_secs as i64 * 1000;
    let now = Utc::now().timestamp_millis();
    for (key, replaced_at, expected) in [
        (
            "never-counted",
            now - 1000,
            BTreeMap::from([("kept".to_owned(), 1)]),
        ),
        (
            "counted-long-ago",
            now - day - 60_000,
            BTreeMap::from([("kept".to_owned(), 2)]),
        ),
    ] {
        let replaced = SupersededActivity {
            payload_fingerprint: PayloadFingerprint::try_from("b".repeat(32)).unwrap(),
            activity_type: "given.up".to_owned(),
            created_at: mongodb::bson::DateTime::from_millis(replaced_at),
        };
        if key == "counted-long-ago" {
            // Its count from a day ago; its mark expired since.
            let _: i64 = redis::cmd("HINCRBY")
                .arg(pipeline.redis_key("analytics:{acme}"))
                .arg("given.up")
                .arg(1)
                .query_async(&mut pipeline.redis.clone())
                .await
                .unwrap();
        }
        let idempotency_key = IdempotencyKey::parse(key).unwrap();
        let request = EffectRequest {
            tenant: &tenant,
            key: &idempotency_key,
            document_id: "0123456789abcdef01234567".to_owned(),
            fingerprint: Some(&kept_fingerprint),
            activity_type: "kept",
            event: "{}".to_owned(),
            supersedes: Some(&replaced),
        };
        for attempt in ["first", "again"] {
            redis
                .apply_effects(std::slice::from_ref(&request))
                .await
                .expect("the effects step");
            assert_eq!(
                pipeline.counters("acme").await,
                expected,
                "{key}, {attempt}"
            );
        }
    }
    pipeline.stop().await;
}
