//! Newest-first pages served from the tenant's recent-pages set in Redis (issue 16): the same
//! activities in the same order as the plain MongoDB query, page after page, whatever the filter and
//! page size, including an activity published late with an old id and after the set was lost.

use std::time::{SystemTime, UNIX_EPOCH};

use activity_pipeline::domain::{IdempotencyKey, TenantId};
use activity_pipeline::store::{EffectRequest, RedisStore, StoredActivity};
use futures::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, DateTime, Document};
use serde_json::{json, Value};

use crate::helpers::{metrics_text, TestPipeline, ACME_KEY, GLOBEX_KEY};

const ACME_ACTIVITIES: usize = 160;
/// Shorter than the tenant's activities, so pages cross the set's floor.
const SET_LENGTH: usize = 40;

fn varied_activity(index: usize) -> Value {
    let activity_type = ["doc.viewed", "doc.edited", "doc.shared"][index % 3];
    json!({
        "actorId": format!("u{}", index % 4),
        "actorName": format!("User {}", index % 4),
        "type": activity_type,
        "entityId": format!("e{}", index % 5),
        "metadata": { "index": index, "ratio": index as f64 / 7.0, "tags": ["a", index.to_string()] }
    })
}

/// Every page of `GET /activities?{query}` with `limit`, in order, concatenated.
async fn every_page(pipeline: &TestPipeline, query: &str, limit: usize) -> Vec<Value> {
    let mut activities = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/activities?limit={limit}");
        if !query.is_empty() {
            path.push('&');
            path.push_str(query);
        }
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, body) = pipeline.get_json(ACME_KEY, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let page = body["activities"].as_array().expect("activities").clone();
        assert!(
            page.len() <= limit,
            "{path} answered {} activities",
            page.len()
        );
        activities.extend(page);
        match body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return activities,
        }
    }
}

/// The plain query, as a store with indexes answers it: every matching activity, newest first.
async fn plain_query(pipeline: &TestPipeline, filter: Document) -> Vec<Value> {
    let mut query = doc! { "tenantId": "acme" };
    query.extend(filter);
    pipeline
        .mongo
        .collection::<StoredActivity>(&pipeline.settings.mongo.collection)
        .find(query)
        .sort(doc! { "_id": -1 })
        .await
        .expect("find")
        .try_collect::<Vec<_>>()
        .await
        .expect("documents")
        .iter()
        .map(StoredActivity::to_json)
        .collect()
}

async fn compare_every_case(pipeline: &TestPipeline) {
    let filters: [(&str, Document); 5] = [
        ("", doc! {}),
        ("type=doc.edited", doc! { "type": "doc.edited" }),
        ("actorId=u2", doc! { "actorId": "u2" }),
        ("entityId=e3", doc! { "entityId": "e3" }),
        (
            "type=doc.shared&actorId=u1",
            doc! { "type": "doc.shared", "actorId": "u1" },
        ),
    ];
    for (query, filter) in filters {
        let expected = plain_query(pipeline, filter).await;
        assert!(!expected.is_empty(), "{query} matches something");
        for limit in [1, 3, 7, SET_LENGTH - 1, SET_LENGTH, SET_LENGTH + 1, 500] {
            let paged = every_page(pipeline, query, limit).await;
            assert_eq!(
                paged.len(),
                expected.len(),
                "?{query} with limit {limit}: as many activities as the plain query"
            );
            assert!(
                paged == expected,
                "?{query} with limit {limit}: the same activities in the same order"
            );
        }
    }
}

fn page_count(metrics: &str, source: &str) -> u64 {
    let prefix = format!("activity_pipeline_activity_pages_total{{source=\"{source}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |value| value.trim().parse().expect("a count"))
}

/// Publishes a document the way a record retried after its store step does: long after its id was
/// made, so its id sits below most of the set's.
async fn publish_late(pipeline: &TestPipeline, seconds_ago: u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let id = ObjectId::from_parts((now - seconds_ago) as u32, [7; 5], [0, 0, 1]);
    let document = doc! {
        "_id": id,
        "tenantId": "acme",
        "idempotencyKey": format!("late-{seconds_ago}"),
        "actorId": "u2",
        "actorName": "User 2",
        "type": "doc.edited",
        "entityId": "e3",
        "metadata": {},
        "enqueuedAt": DateTime::now(),
        "createdAt": DateTime::now(),
    };
    pipeline
        .activities()
        .insert_one(&document)
        .await
        .expect("insert");
    let stored: StoredActivity = mongodb::bson::from_document(document).expect("a stored activity");
    let redis = RedisStore::connect(&pipeline.settings.redis).expect("redis");
    let tenant = TenantId::parse("acme").unwrap();
    let key = IdempotencyKey::parse(&format!("late-{seconds_ago}")).unwrap();
    let published = redis
        .apply_effects(&[EffectRequest {
            tenant: &tenant,
            key: &key,
            document_id: id.to_hex(),
            fingerprint: None,
            activity_type: "doc.edited",
            event: stored.to_json().to_string(),
            supersedes: None,
        }])
        .await
        .expect("the effects step");
    assert_eq!(published, vec![true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_from_the_recent_set_are_the_plain_querys_pages() {
    let pipeline =
        TestPipeline::spawn_with(&[format!("redis.recent_pages_per_tenant={SET_LENGTH}")]).await;
    // The set as a long-running deployment has it: its floor below every activity of this test. (A
    // set created now starts with its floor a minute ahead of Redis's clock, so for the first minute
    // a new tenant's pages come from MongoDB.)
    let floor_key = pipeline.redis_key("pagesfloor:{acme}");
    redis::cmd("SET")
        .arg(&floor_key)
        .arg("000000000000000000000000")
        .query_async::<()>(&mut pipeline.redis.clone())
        .await
        .unwrap();

    for chunk in (0..ACME_ACTIVITIES).collect::<Vec<_>>().chunks(40) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|&index| {
                json!({ "idempotencyKey": format!("page-{index}"), "activity": varied_activity(index) })
            })
            .collect();
        let response = pipeline
            .post_batch(ACME_KEY, None, &json!({ "activities": items }))
            .await;
        assert_eq!(response.status(), 202);
    }
    let globex: Vec<Value> = (0..10)
        .map(|index| json!({ "activity": varied_activity(index) }))
        .collect();
    assert_eq!(
        pipeline
            .post_batch(GLOBEX_KEY, None, &json!({ "activities": globex }))
            .await
            .status(),
        202
    );
    crate::helpers::eventually("every acme activity is stored and published", || async {
        pipeline.counters("acme").await.values().sum::<i64>() == ACME_ACTIVITIES as i64
    })
    .await;
    publish_late(&pipeline, 30).await;
    publish_late(&pipeline, 3_600).await;

    compare_every_case(&pipeline).await;
    let metrics = metrics_text(&pipeline.http, &pipeline.address).await;
    assert!(page_count(&metrics, "redis") > 0, "pages came from the set");
    assert!(
        page_count(&metrics, "both") > 0,
        "pages crossed the set's floor"
    );

    // The set lost (Redis restarted without persistence, or expired): pages come from MongoDB,
    // the same ones; the next publish starts a new set whose floor is ahead of every id so far.
    redis::cmd("DEL")
        .arg(pipeline.redis_key("pages:{acme}"))
        .arg(&floor_key)
        .query_async::<()>(&mut pipeline.redis.clone())
        .await
        .unwrap();
    publish_late(&pipeline, 5).await;
    let floor: String = redis::cmd("GET")
        .arg(&floor_key)
        .query_async(&mut pipeline.redis.clone())
        .await
        .unwrap();
    let newest_id = plain_query(&pipeline, doc! {}).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        floor > newest_id,
        "a new set's floor ({floor}) is above every id made before it ({newest_id})"
    );
    let from_mongodb_before = page_count(&metrics, "mongodb");
    compare_every_case(&pipeline).await;
    let metrics = metrics_text(&pipeline.http, &pipeline.address).await;
    assert!(page_count(&metrics, "mongodb") > from_mongodb_before);

    pipeline.stop().await;
}

/// With the set turned off, the consumer deletes a set an earlier setting kept: that set would
/// otherwise serve first pages without the activities published since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_turned_off_is_deleted_so_no_stale_set_serves_a_page() {
    let pipeline = TestPipeline::spawn_with(&["redis.recent_pages_per_tenant=0".to_owned()]).await;
    pipeline
        .post_stored("before-the-switch", &varied_activity(1))
        .await;
    let stale_id = plain_query(&pipeline, doc! {}).await[0].clone();
    let set_key = pipeline.redis_key("pages:{acme}");
    let floor_key = pipeline.redis_key("pagesfloor:{acme}");
    // What a consumer with the set on left behind: the one activity then stored, a floor below it.
    redis::pipe()
        .cmd("ZADD")
        .arg(&set_key)
        .arg(0)
        .arg(format!("{} {}", stale_id["id"].as_str().unwrap(), stale_id))
        .ignore()
        .cmd("SET")
        .arg(&floor_key)
        .arg("000000000000000000000000")
        .ignore()
        .query_async::<()>(&mut pipeline.redis.clone())
        .await
        .unwrap();

    pipeline
        .post_stored("after-the-switch", &varied_activity(2))
        .await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&set_key)
        .arg(&floor_key)
        .query_async(&mut pipeline.redis.clone())
        .await
        .unwrap();
    assert_eq!(exists, 0, "the stale set and its floor are gone");
    assert_eq!(
        every_page(&pipeline, "", 1).await,
        plain_query(&pipeline, doc! {}).await
    );
    pipeline.stop().await;
}

/// Reads take a shortcut through Redis (the recent-pages set, the idempotency mark) only within a
/// quarter of their budget: a Redis that accepts connections and never answers costs a read that
/// much, then MongoDB answers, and the next reads skip Redis for a moment. Without the bound, the
/// shortcut takes the whole budget and the read answers 503 while MongoDB is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_wait_for_a_redis_that_does_not_answer() {
    let pipeline = TestPipeline::spawn().await;
    pipeline
        .post_stored("before-redis-hangs", &varied_activity(1))
        .await;
    let blackhole = crate::blackhole::ReplyBlackhole::start(6379).await;
    blackhole.swallow(true);
    let mut overrides = pipeline.overrides.clone();
    overrides.push(format!("redis.url=redis://127.0.0.1:{}", blackhole.port()));
    let api = crate::helpers::TestApi::spawn(&overrides, false).await;
    for path in [
        "/activities",
        "/activities/before-redis-hangs",
        "/activities?limit=1",
    ] {
        let response = api
            .http
            .get(format!("{}{path}", api.address))
            .bearer_auth(ACME_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path} answered from MongoDB");
        let body: Value = response.json().await.unwrap();
        let found = body["activities"]
            .get(0)
            .unwrap_or(&body["activity"])
            .clone();
        assert_eq!(found["idempotencyKey"], "before-redis-hangs", "{path}");
    }
    api.stop().await;
    pipeline.stop().await;
}
