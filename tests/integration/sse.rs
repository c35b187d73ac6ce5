//! `GET /activities/stream`: live events reach the client, resume with Last-Event-ID replays from the
//! recent-events buffer (or MongoDB for an older gap), tenants never see each other's events, and the
//! per-tenant cap holds.

use std::time::Duration;

use activity_pipeline::domain::TenantId;
use activity_pipeline::store::{RecentEvent, RedisStore};
use serde_json::Value;

use crate::helpers::{activity, metrics_text, TestPipeline, ACME_KEY, GLOBEX_KEY};
use crate::sse_client::SseClient;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_reach_the_tenants_own_stream_only() {
    let pipeline = TestPipeline::spawn_with(&["sse.heartbeat_secs=1".to_owned()]).await;
    let mut acme = SseClient::open(&pipeline.address, ACME_KEY, None).await;
    let mut globex = SseClient::open(&pipeline.address, GLOBEX_KEY, None).await;
    // Idle for a few heartbeats first: the live connection is pinged at that interval while
    // subscribed, and must survive it.
    assert!(acme.next_event(Duration::from_millis(2500)).await.is_none());

    // globex's activity first, fully processed (counted and published) before acme's is sent.
    assert_eq!(
        pipeline
            .post_activity(GLOBEX_KEY, Some("g-live"), &activity("g", "signup"))
            .await
            .status(),
        202
    );
    let globex_event = globex.next_event(WAIT).await.expect("globex's own event");
    assert_eq!(globex_event.json()["idempotencyKey"], "g-live");
    assert_eq!(
        globex_event.id.as_deref(),
        globex_event.json()["id"].as_str()
    );

    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, Some("a-live"), &activity("a", "login"))
            .await
            .status(),
        202
    );
    let event = acme.next_event(WAIT).await.expect("acme's event");
    let data: Value = event.json();
    assert_eq!(
        data["idempotencyKey"], "a-live",
        "acme never sees globex's event"
    );
    assert_eq!(data["tenantId"], "acme");
    assert_eq!(data["type"], "login");
    assert_eq!(
        event.event, None,
        "unnamed, so EventSource.onmessage gets it"
    );
    assert_eq!(event.id.as_deref(), data["id"].as_str());
    let (_, stored) = pipeline.get_json(ACME_KEY, "/activities/a-live").await;
    assert_eq!(stored["activity"], data, "the event is the stored activity");

    assert!(
        globex
            .next_event(Duration::from_millis(1500))
            .await
            .is_none(),
        "globex never sees acme's event"
    );
    assert!(globex.comments >= 1, "heartbeats arrive on an idle stream");
    drop(acme);
    drop(globex);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_replays_what_was_missed_then_continues_live() {
    let pipeline = TestPipeline::spawn_with(&["sse.replay_max_events=2".to_owned()]).await;
    let mut first = SseClient::open(&pipeline.address, ACME_KEY, None).await;
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, Some("e0"), &activity("u", "t"))
            .await
            .status(),
        202
    );
    let seen = first.next_event(WAIT).await.expect("the first event");
    let last_id = seen.id.clone().unwrap();
    drop(first);

    // Missed while disconnected: three, one more than the replay bound.
    post_stored(&pipeline, &["e1", "e2", "e3"]).await;
    let mut resumed = SseClient::open(&pipeline.address, ACME_KEY, Some(&last_id)).await;
    let replayed: Vec<String> = vec![
        resumed.next_event(WAIT).await.unwrap(),
        resumed.next_event(WAIT).await.unwrap(),
    ]
    .into_iter()
    .map(|event| event.json()["idempotencyKey"].as_str().unwrap().to_owned())
    .collect();
    assert_eq!(
        replayed,
        ["e1", "e2"],
        "the oldest missed, in order, bounded"
    );
    let notice = resumed.next_event(WAIT).await.unwrap();
    assert_eq!(notice.event.as_deref(), Some("replay-truncated"));
    assert_eq!(notice.json()["replayed"], 2);

    // Then live.
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, Some("e4"), &activity("u", "t"))
            .await
            .status(),
        202
    );
    let live = resumed.next_event(WAIT).await.unwrap();
    assert_eq!(live.json()["idempotencyKey"], "e4");
    assert_eq!(
        (
            sse_replays(&pipeline, "redis").await,
            sse_replays(&pipeline, "mongodb").await
        ),
        (1, 0),
        "a recent gap is replayed from the recent-events buffer, without a MongoDB query"
    );

    // A Last-Event-ID this service did not make is refused.
    let response = SseClient::request(&pipeline.address, ACME_KEY, Some("garbage")).await;
    assert_eq!(response.status(), 400);
    drop(resumed);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_slot_is_freed_once_the_replay_is_sent_not_when_the_stream_ends() {
    // One slot on the instance: a second resume gets it only if the first gave it back after its
    // replay, while its stream stays open for live events. A slot held for the whole stream would
    // make the second resume wait 2 s and get 503.
    let pipeline = TestPipeline::spawn_with(&[
        "sse.max_concurrent_replays=1".to_owned(),
        "sse.max_replays_per_tenant=1".to_owned(),
        "sse.replay_wait_ms=2000".to_owned(),
    ])
    .await;
    let mut first = SseClient::open(&pipeline.address, ACME_KEY, None).await;
    post_stored(&pipeline, &["slot-0"]).await;
    let last_id = first.next_event(WAIT).await.unwrap().id.unwrap();
    drop(first);
    post_stored(&pipeline, &["slot-1"]).await;

    let mut resumed = Vec::new();
    for _ in 0..3 {
        let mut client = SseClient::open(&pipeline.address, ACME_KEY, Some(&last_id)).await;
        let replayed = client.next_event(WAIT).await.expect("the replay");
        assert_eq!(replayed.json()["idempotencyKey"], "slot-1");
        resumed.push(client);
    }
    // All three still live.
    post_stored(&pipeline, &["slot-2"]).await;
    for client in &mut resumed {
        let live = client.next_event(WAIT).await.expect("a live event");
        assert_eq!(live.json()["idempotencyKey"], "slot-2");
    }
    drop(resumed);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_longer_than_a_page_arrives_whole_and_in_order_from_either_store() {
    // Pages of 2 events: a 5-event gap takes three reads of the recent-events buffer (and, once the
    // buffer is gone, three MongoDB queries), each sent before the next is read.
    let pipeline = TestPipeline::spawn_with(&["sse.replay_page_events=2".to_owned()]).await;
    let mut first = SseClient::open(&pipeline.address, ACME_KEY, None).await;
    post_stored(&pipeline, &["p0"]).await;
    let last_id = first.next_event(WAIT).await.unwrap().id.unwrap();
    drop(first);
    let missed = ["p1", "p2", "p3", "p4", "p5"];
    post_stored(&pipeline, &missed).await;

    let mut from_redis = SseClient::open(&pipeline.address, ACME_KEY, Some(&last_id)).await;
    assert_eq!(replayed_keys(&mut from_redis, missed.len()).await, missed);
    post_stored(&pipeline, &["p6"]).await;
    let live = from_redis.next_event(WAIT).await.unwrap();
    assert_eq!(
        live.json()["idempotencyKey"],
        "p6",
        "live after the replay, nothing repeated"
    );
    drop(from_redis);

    let _: i64 = redis::cmd("DEL")
        .arg(pipeline.redis_key("recent:{acme}"))
        .query_async(&mut pipeline.redis.clone())
        .await
        .unwrap();
    let mut from_mongodb = SseClient::open(&pipeline.address, ACME_KEY, Some(&last_id)).await;
    assert_eq!(
        replayed_keys(&mut from_mongodb, missed.len() + 1).await,
        ["p1", "p2", "p3", "p4", "p5", "p6"]
    );
    assert!(
        from_mongodb
            .next_event(Duration::from_millis(500))
            .await
            .is_none(),
        "nothing after the replay but live events"
    );
    assert_eq!(
        (
            sse_replays(&pipeline, "redis").await,
            sse_replays(&pipeline, "mongodb").await
        ),
        (1, 1)
    );
    drop(from_mongodb);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_buffer_is_read_forward_in_pages_and_notices_a_trim_past_its_position() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let store = RedisStore::connect(&pipeline.settings.redis).unwrap();
    let acme = TenantId::parse("acme").unwrap();
    let key = pipeline.redis_key("recent:{acme}");
    let mut redis = pipeline.redis.clone();
    let document_id = |n: usize| format!("{n:024x}");
    let mut entries = Vec::new();
    for n in 0..5 {
        let entry: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("id")
            .arg(document_id(n))
            .arg("event")
            .arg(format!("{{\"n\":{n}}}"))
            .query_async(&mut redis)
            .await
            .unwrap();
        entries.push(entry);
    }
    let page_ids = |page: Option<Vec<(String, RecentEvent)>>| {
        page.map(|page| {
            page.into_iter()
                .map(|(_, event)| event.document_id)
                .collect::<Vec<_>>()
        })
    };

    let position = store.recent_position(&acme, &document_id(0)).await.unwrap();
    assert_eq!(position.as_ref(), Some(&entries[0]));
    assert_eq!(
        store.recent_position(&acme, &document_id(9)).await.unwrap(),
        None
    );
    let first = store.recent_page(&acme, &entries[0], 2).await.unwrap();
    assert_eq!(page_ids(first), Some(vec![document_id(1), document_id(2)]));
    let second = store.recent_page(&acme, &entries[2], 2).await.unwrap();
    assert_eq!(page_ids(second), Some(vec![document_id(3), document_id(4)]));
    let end = store.recent_page(&acme, &entries[4], 2).await.unwrap();
    assert_eq!(page_ids(end), Some(vec![]));

    // Trimmed to the newest two while a replay stood at entry 2: what followed it may be gone, and
    // the read says so instead of going on from whatever is left.
    let _: i64 = redis::cmd("XTRIM")
        .arg(&key)
        .arg("MAXLEN")
        .arg(2)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        store.recent_page(&acme, &entries[2], 2).await.unwrap(),
        None
    );
    let after_three = store.recent_page(&acme, &entries[3], 2).await.unwrap();
    assert_eq!(page_ids(after_three), Some(vec![document_id(4)]));
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        store.recent_page(&acme, &entries[3], 2).await.unwrap(),
        None
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_the_recent_events_buffer_no_longer_holds_is_replayed_from_mongodb() {
    let pipeline = TestPipeline::spawn().await;
    let mut first = SseClient::open(&pipeline.address, ACME_KEY, None).await;
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, Some("m0"), &activity("u", "t"))
            .await
            .status(),
        202
    );
    let last_id = first.next_event(WAIT).await.unwrap().id.unwrap();
    drop(first);
    post_stored(&pipeline, &["m1", "m2"]).await;
    // The consumer keeps the tenant's newest events in a capped stream that expires when idle.
    let buffer = pipeline.redis_key("recent:{acme}");
    let mut redis = pipeline.redis.clone();
    let length: i64 = redis::cmd("XLEN")
        .arg(&buffer)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(length, 3, "one entry per stored activity");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&buffer)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 3600,
        "the buffer expires when idle (TTL {ttl})"
    );

    // As if trimmed or lost with Redis: the resume point is no longer in the buffer.
    let _: i64 = redis::cmd("DEL")
        .arg(&buffer)
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut resumed = SseClient::open(&pipeline.address, ACME_KEY, Some(&last_id)).await;
    let replayed: Vec<String> = vec![
        resumed.next_event(WAIT).await.unwrap(),
        resumed.next_event(WAIT).await.unwrap(),
    ]
    .into_iter()
    .map(|event| event.json()["idempotencyKey"].as_str().unwrap().to_owned())
    .collect();
    assert_eq!(replayed, ["m1", "m2"]);
    assert_eq!(
        (
            sse_replays(&pipeline, "redis").await,
            sse_replays(&pipeline, "mongodb").await
        ),
        (0, 1)
    );
    drop(resumed);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_capped_per_tenant_and_freed_on_disconnect() {
    let pipeline = TestPipeline::spawn_with(&[
        "sse.max_connections_per_tenant=1".to_owned(),
        "sse.heartbeat_secs=1".to_owned(),
    ])
    .await;
    let first = SseClient::open(&pipeline.address, ACME_KEY, None).await;
    let refused = SseClient::request(&pipeline.address, ACME_KEY, None).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["success"], false);
    // The cap is per tenant.
    let other = SseClient::open(&pipeline.address, GLOBEX_KEY, None).await;
    assert_eq!(sse_clients(&pipeline).await, 2);

    // A client that goes away frees its place (noticed at the latest at the next heartbeat).
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let reopened = loop {
        let response = SseClient::request(&pipeline.address, ACME_KEY, None).await;
        if response.status() == 200 {
            break response;
        }
        assert_eq!(response.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(reopened);
    drop(other);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while sse_clients(&pipeline).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams were not cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_needs_a_key() {
    let pipeline = TestPipeline::spawn().await;
    let response = pipeline
        .http
        .get(format!("{}/activities/stream", pipeline.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = SseClient::request(&pipeline.address, "wrong-key", None).await;
    assert_eq!(response.status(), 401);
    pipeline.stop().await;
}

async fn sse_clients(pipeline: &TestPipeline) -> i64 {
    metric(pipeline, "activity_pipeline_sse_clients")
        .await
        .expect("the gauge is exported")
}

/// `sse_replays_total` of the API for `source`, 0 before the first.
async fn sse_replays(pipeline: &TestPipeline, source: &str) -> i64 {
    let series = format!("activity_pipeline_sse_replays_total{{source=\"{source}\"}}");
    metric(pipeline, &series).await.unwrap_or(0)
}

/// The value of one series (name and labels, as exported) of the API's metrics, if exported.
async fn metric(pipeline: &TestPipeline, series: &str) -> Option<i64> {
    let metrics = metrics_text(&pipeline.http, &pipeline.address).await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
}

/// The idempotency keys of the next `count` events of `client`.
async fn replayed_keys(client: &mut SseClient, count: usize) -> Vec<String> {
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let event = client.next_event(WAIT).await.expect("a replayed event");
        keys.push(event.json()["idempotencyKey"].as_str().unwrap().to_owned());
    }
    keys
}

/// Posts one activity per key for acme and waits until each is stored (so it was published).
async fn post_stored(pipeline: &TestPipeline, keys: &[&str]) {
    for key in keys {
        pipeline.post_stored(key, &activity("u", "t")).await;
    }
}
