//! The pipeline on a real Redis Cluster (`make redis-cluster-up`, 127.0.0.1:7001-7006, started by
//! `make test`): every Lua step, transaction and pipeline stays in one tenant's hash slot; the
//! pre-check's MGET spans slots; live events travel by sharded Pub/Sub; several API instances share
//! the consumer's events and the rate limit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use activity_pipeline::config::Settings;
use activity_pipeline::domain::{IdempotencyKey, PayloadFingerprint, TenantId};
use activity_pipeline::produce::Application;
use activity_pipeline::store::{
    open_live_connection, AcceptedState, EffectRequest, RedisConnection, RedisKeys, RedisStore,
    TokensTaken,
};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    activity, eventually, filter, load_settings, test_overrides, TestPipeline, ACME_KEY, GLOBEX_KEY,
};
use crate::services::PrivateRedisCluster;
use crate::sse_client::SseClient;

/// The seeds of the local Redis Cluster: two of its three masters, so the client must learn the
/// third from them.
const CLUSTER_SEEDS: &str = "redis://127.0.0.1:7001,redis://127.0.0.1:7002";
const WAIT: Duration = Duration::from_secs(20);
/// Every node of the local Redis Cluster, masters and replicas.
const CLUSTER_PORTS: std::ops::RangeInclusive<u16> = 7001..=7006;

fn cluster_overrides(extra: &[&str]) -> Vec<String> {
    let mut overrides = vec![
        format!("redis.url={CLUSTER_SEEDS}"),
        "redis.cluster=true".to_owned(),
    ];
    overrides.extend(extra.iter().map(|item| (*item).to_owned()));
    overrides
}

/// A test's settings on the local cluster (its own key prefix), its store, a plain connection for
/// what the store does not offer, and its key names.
fn cluster_store() -> (Settings, RedisStore, RedisConnection, RedisKeys) {
    let settings = load_settings(&test_overrides(&cluster_overrides(&[])));
    let store = RedisStore::connect(&settings.redis).expect("cluster settings are valid");
    let connection =
        RedisConnection::prepare(&settings.redis, Duration::from_secs(5)).expect("connection");
    let keys = RedisKeys::new(settings.redis.key_prefix.clone());
    (settings, store, connection, keys)
}

/// The hash slot of `key`, as the cluster computes it.
async fn slot(connection: &mut RedisConnection, key: &str) -> i64 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(connection)
        .await
        .expect("CLUSTER KEYSLOT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_pre_check_and_reads_stay_in_each_tenants_slot_on_a_real_cluster() {
    let (settings, store, mut connection, keys) = cluster_store();

    // Twelve tenants: their slots spread over the three masters, so one consumer batch spans nodes.
    let tenants: Vec<TenantId> = (0..12)
        .map(|n| TenantId::parse(&format!("tenant-{n}")).unwrap())
        .collect();
    let key_names: Vec<IdempotencyKey> = (0..250)
        .map(|n| IdempotencyKey::parse(&format!("key-{n}")).unwrap())
        .collect();
    let fingerprint = PayloadFingerprint::parse(&"f".repeat(32)).unwrap();

    // Every key of a tenant that one script or transaction touches shares the tenant's slot.
    let mut slots = BTreeSet::new();
    for tenant in &tenants {
        let tenant_slot = slot(&mut connection, &keys.channel(tenant)).await;
        for name in [
            keys.analytics(tenant),
            keys.recent_events(tenant),
            keys.recent_pages(tenant),
            keys.recent_pages_floor(tenant),
            keys.rate_limit(tenant),
            keys.idempotency(tenant, &key_names[0]),
            keys.accepted(tenant, &key_names[0]),
        ] {
            assert_eq!(slot(&mut connection, &name).await, tenant_slot, "{name}");
        }
        slots.insert(tenant_slot);
    }
    assert!(slots.len() > 1, "the tenants' slots differ: {slots:?}");

    // One batch: tenant-0 with more activities than one script call takes (so its calls must stay
    // in order), then two of each other tenant, interleaved.
    let (mut live_subscriptions, mut live) = open_live_connection(&settings.redis)
        .await
        .expect("sharded Pub/Sub connects");
    live_subscriptions
        .subscribe(&[keys.channel(&tenants[0]), keys.channel(&tenants[5])])
        .await
        .expect("SSUBSCRIBE");
    let mut pairs: Vec<(usize, usize)> = (0..230).map(|k| (0, k)).collect();
    for k in 0..2 {
        for t in 1..tenants.len() {
            pairs.push((t, k));
        }
    }
    let document_id = |t: usize, k: usize| format!("{:08x}{:016x}", 0x6700_0000 + t, k);
    let requests: Vec<EffectRequest<'_>> = pairs
        .iter()
        .map(|&(t, k)| EffectRequest {
            tenant: &tenants[t],
            key: &key_names[k],
            document_id: document_id(t, k),
            fingerprint: Some(&fingerprint),
            activity_type: if k % 2 == 0 { "even" } else { "odd" },
            event: json!({"id": document_id(t, k), "tenantId": tenants[t].as_str()}).to_string(),
            supersedes: None,
        })
        .collect();
    let first = store.apply_effects(&requests).await.expect("effects apply");
    assert!(first.iter().all(|&marked| marked), "every mark is new");
    let again = store.apply_effects(&requests).await.expect("effects apply");
    assert!(
        again.iter().all(|&marked| !marked),
        "a redelivered batch changes nothing"
    );

    // The pre-check: one MGET over keys of every slot.
    let mut check: Vec<(&TenantId, &IdempotencyKey)> = pairs
        .iter()
        .map(|&(t, k)| (&tenants[t], &key_names[k]))
        .collect();
    check.push((&tenants[3], &key_names[200]));
    let marks = store.already_marked(&check).await.expect("MGET");
    for (index, &(t, k)) in pairs.iter().enumerate() {
        let mark = marks[index].as_ref().expect("marked");
        assert_eq!(mark.document_id, document_id(t, k));
        assert!(mark.matches(&fingerprint));
    }
    assert!(marks[pairs.len()].is_none(), "an unknown key has no mark");

    // Counters exact, once per activity.
    assert_eq!(
        store.analytics(&tenants[0]).await.unwrap(),
        BTreeMap::from([("even".to_owned(), 115), ("odd".to_owned(), 115)])
    );
    for tenant in &tenants[1..] {
        assert_eq!(
            store.analytics(tenant).await.unwrap(),
            BTreeMap::from([("even".to_owned(), 1), ("odd".to_owned(), 1)])
        );
    }

    // Live events: each once, on its tenant's shard channel, tenant-0's in order.
    let mut seen: Vec<(String, String)> = Vec::new();
    while seen.len() < 232 {
        let message = tokio::time::timeout(WAIT, live.next())
            .await
            .expect("live events arrive")
            .expect("the connection stays up");
        let event: Value = serde_json::from_str(&message.payload).unwrap();
        seen.push((message.channel, event["id"].as_str().unwrap().to_owned()));
    }
    let tenant_0: Vec<String> = seen
        .iter()
        .filter(|(channel, _)| *channel == keys.channel(&tenants[0]))
        .map(|(_, id)| id.clone())
        .collect();
    let expected: Vec<String> = (0..230).map(|k| document_id(0, k)).collect();
    assert_eq!(tenant_0, expected, "tenant-0's events once each, in order");
    assert_eq!(seen.len() - tenant_0.len(), 2, "tenant-5's two events");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), live.next())
            .await
            .is_err(),
        "no second copy, nothing of unsubscribed tenants"
    );

    // The reads: pages set, replay stream (each a transaction in the tenant's slot).
    let slice = store
        .recent_pages_below(&tenants[0], None, 3)
        .await
        .expect("pages");
    assert!(slice.floor.is_some());
    let newest: Vec<&str> = slice
        .events
        .iter()
        .map(|event| event.document_id.as_str())
        .collect();
    assert_eq!(
        newest,
        [
            document_id(0, 229),
            document_id(0, 228),
            document_id(0, 227)
        ]
    );
    let position = store
        .recent_position(&tenants[0], &document_id(0, 10))
        .await
        .unwrap()
        .expect("in the stream");
    let page = store
        .recent_page(&tenants[0], &position, 2)
        .await
        .unwrap()
        .expect("the anchor is there");
    let replayed: Vec<&str> = page
        .iter()
        .map(|(_, event)| event.document_id.as_str())
        .collect();
    assert_eq!(replayed, [document_id(0, 11), document_id(0, 12)]);

    // The counters' rebuild (a transaction) and the shared bucket (a script).
    store
        .replace_analytics(&tenants[1], &BTreeMap::from([("rebuilt".to_owned(), 7)]))
        .await
        .expect("MULTI/EXEC in one slot");
    assert_eq!(
        store.analytics(&tenants[1]).await.unwrap(),
        BTreeMap::from([("rebuilt".to_owned(), 7)])
    );
    let interval = Duration::from_millis(100);
    assert_eq!(
        store
            .take_tokens(&tenants[2], 1, 1, interval, interval)
            .await
            .unwrap(),
        TokensTaken::Taken(1)
    );
    assert!(matches!(
        store
            .take_tokens(&tenants[2], 5, 5, interval, interval)
            .await
            .unwrap(),
        TokensTaken::NotBefore(_)
    ));

    // The API's markers of one request: a pipeline in its tenant's slot.
    let marker = [(&tenants[4], &key_names[7], &fingerprint)];
    store
        .reserve_accepted(&marker, Duration::from_secs(5))
        .await
        .unwrap();
    store.mark_accepted(&marker).await.unwrap();
    store.release_accepted(&marker).await.unwrap();
    store.ping().await.expect("PING");

    delete_prefix(&mut connection, &settings.redis.key_prefix).await;
}

/// A batch's reservations stay on their master (not in the AOF, not on the replica), while the
/// mark that replaces one once the broker acknowledged reaches the replica: a batch's reservations
/// cost Redis no persistence, and the marks keep it. A single request's reservation is a plain
/// `SET`, replicated like the mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batchs_reservations_stay_on_the_master_and_marks_reach_its_replica() {
    let (settings, store, mut connection, keys) = cluster_store();
    let tenant = TenantId::parse("replicated").unwrap();
    let only_reserved = IdempotencyKey::parse("only-reserved").unwrap();
    let marked = IdempotencyKey::parse("marked").unwrap();
    let single = IdempotencyKey::parse("single").unwrap();
    let fingerprint = PayloadFingerprint::parse(&"c".repeat(32)).unwrap();

    let both = [
        (&tenant, &only_reserved, &fingerprint),
        (&tenant, &marked, &fingerprint),
    ];
    assert_eq!(
        store
            .reserve_accepted(&both, Duration::from_secs(60))
            .await
            .unwrap(),
        [AcceptedState::Reserved, AcceptedState::Reserved]
    );
    assert_eq!(
        store
            .reserve_accepted(&[(&tenant, &single, &fingerprint)], Duration::from_secs(60))
            .await
            .unwrap(),
        [AcceptedState::Reserved]
    );
    store
        .mark_accepted(&[(&tenant, &marked, &fingerprint)])
        .await
        .unwrap();

    // The replica serving the tenant's slot: the one that answers a read of it instead of MOVED.
    let marked_key = keys.accepted(&tenant, &marked);
    let mut replica = None;
    for port in CLUSTER_PORTS {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut node = client
            .get_multiplexed_async_connection()
            .await
            .expect("a cluster node");
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut node).await.unwrap();
        if role.first() != Some(&redis::Value::BulkString(b"slave".to_vec())) {
            continue;
        }
        let _: () = redis::cmd("READONLY").query_async(&mut node).await.unwrap();
        let read: redis::RedisResult<Option<String>> = redis::cmd("GET")
            .arg(&marked_key)
            .query_async(&mut node)
            .await;
        if read.is_ok() {
            replica = Some(node);
            break;
        }
    }
    let replica = replica.expect("a replica serves the tenant's slot");
    let get = |key: String| {
        let mut replica = replica.clone();
        async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut replica)
                .await
                .unwrap()
        }
    };
    // Replication is asynchronous: the mark arrives, and with it everything written before it.
    eventually("the mark reaches the replica", || {
        let read = get(marked_key.clone());
        let expected = fingerprint.as_str().to_owned();
        async move { read.await.as_deref() == Some(expected.as_str()) }
    })
    .await;
    assert_eq!(
        get(keys.accepted(&tenant, &only_reserved)).await,
        None,
        "a batch's reservation is not replicated"
    );
    assert_eq!(
        get(keys.accepted(&tenant, &single)).await,
        Some(format!("pending:{}", fingerprint.as_str())),
        "a single request's reservation is replicated"
    );
    // The master holds it all the same: a second request with the key finds it in flight.
    assert_eq!(
        store
            .reserve_accepted(
                &[(&tenant, &only_reserved, &fingerprint)],
                Duration::from_secs(60)
            )
            .await
            .unwrap(),
        [AcceptedState::InFlight(fingerprint.clone())]
    );
    delete_prefix(&mut connection, &settings.redis.key_prefix).await;
}

/// Two API instances and one consumer on the cluster: streams on either instance get each event
/// once, whichever instance accepted it; a stream resumed on the other instance replays from the
/// shared buffer; the tenant's rate limit is one bucket for both instances; stream slots are per
/// instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_instances_share_live_events_replays_and_the_rate_limit_on_a_cluster() {
    let extra = cluster_overrides(&[
        "sse.heartbeat_secs=1",
        "sse.max_connections_per_tenant=1",
        "rate_limit.per_tenant_per_sec=1",
        "rate_limit.burst=8",
        "intake.batch_max_items=4",
    ]);
    let pipeline = TestPipeline::spawn_with(&extra).await;
    let second = Application::build(&pipeline.settings, CancellationToken::new())
        .await
        .expect("a second API instance starts");
    let second_address = format!("http://127.0.0.1:{}", second.port());
    let second_server = second.handle();
    tokio::spawn(second.run_until_stopped());

    let mut on_first = SseClient::open(&pipeline.address, ACME_KEY, None).await;
    let mut on_second = SseClient::open(&second_address, ACME_KEY, None).await;
    // Stream slots are per instance: acme's one slot is taken on each, and each refuses a second.
    assert_eq!(
        SseClient::request(&pipeline.address, ACME_KEY, None)
            .await
            .status(),
        429
    );
    assert_eq!(
        SseClient::request(&second_address, ACME_KEY, None)
            .await
            .status(),
        429
    );

    let http = reqwest::Client::new();
    for (n, address) in [&pipeline.address, &second_address, &pipeline.address]
        .into_iter()
        .enumerate()
    {
        let status = http
            .post(format!("{address}/activities"))
            .bearer_auth(ACME_KEY)
            .header("X-Idempotency-Key", format!("c-{n}"))
            .json(&activity("a", "login"))
            .send()
            .await
            .unwrap();
        assert_eq!(status.status(), 202, "{:?}", status.text().await);
    }
    let batch = json!({"activities": [activity("a", "view"), activity("a", "view")]});
    let status = http
        .post(format!("{second_address}/activities/batch"))
        .bearer_auth(ACME_KEY)
        .header("X-Idempotency-Key", "c-batch")
        .json(&batch)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);

    let mut first_ids = Vec::new();
    let mut second_ids = Vec::new();
    for _ in 0..5 {
        let event = on_first
            .next_event(WAIT)
            .await
            .expect("an event on the first");
        first_ids.push(event.id.clone().unwrap());
        let event = on_second
            .next_event(WAIT)
            .await
            .expect("an event on the second");
        second_ids.push(event.id.clone().unwrap());
    }
    assert_eq!(
        first_ids, second_ids,
        "both instances deliver the same events"
    );
    assert_eq!(
        first_ids.iter().collect::<BTreeSet<_>>().len(),
        5,
        "each once"
    );
    assert!(on_first
        .next_event(Duration::from_millis(1500))
        .await
        .is_none());

    // Resume on the other instance from the second event: the shared buffer replays the rest.
    drop(on_second);
    // (The closed stream's slot is freed at its next heartbeat at the latest.)
    let mut resumed = loop {
        let response = SseClient::request(&second_address, ACME_KEY, Some(&first_ids[1])).await;
        if response.status() == 200 {
            break SseClient::from_response(response);
        }
        assert_eq!(response.status(), 429);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut replayed = Vec::new();
    for _ in 0..3 {
        let event = resumed.next_event(WAIT).await.expect("replayed");
        replayed.push(event.id.unwrap());
    }
    assert_eq!(replayed, first_ids[2..]);

    let (_, analytics) = pipeline.get_json(ACME_KEY, "/analytics").await;
    assert_eq!(analytics["counts"]["login"], 3, "{analytics}");
    assert_eq!(analytics["counts"]["view"], 2, "{analytics}");

    // globex's bucket (burst 8, 1/s) is one bucket across both instances: alternating between
    // them, the first 8 pass and the bucket is then empty (a bucket per instance would pass all 10).
    let mut statuses = Vec::new();
    for n in 0..10 {
        let address = if n % 2 == 0 {
            &pipeline.address
        } else {
            &second_address
        };
        let response = http
            .post(format!("{address}/activities"))
            .bearer_auth(GLOBEX_KEY)
            .json(&activity("g", "signup"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert!(
        statuses[..8].iter().all(|&status| status == 202)
            && statuses[8..].contains(&429)
            && statuses
                .iter()
                .all(|&status| status == 202 || status == 429),
        "one shared bucket: {statuses:?}"
    );

    drop(on_first);
    drop(resumed);
    second_server.stop(true).await;
    pipeline.stop().await;
}

/// A master killed under load (SIGKILL, its replica promoted after the cluster's node timeout): the
/// consumer retries its effects in place until the new master answers, so every activity is stored
/// once, counted once and published once; the API keeps accepting (its Redis markers are best
/// effort); SSE streams on the dead master's shard end and resume from the replay buffer; client
/// retries store nothing twice. (Writes the dead master acknowledged but had not yet replicated
/// would be lost together, mark and counter from one script: `make cluster-drill` reports that case.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_stores_counts_and_publishes_each_activity_once() {
    let cluster = PrivateRedisCluster::start(12000);
    let pipeline = TestPipeline::spawn_with(&[
        format!("redis.url={}", cluster.seeds()),
        "redis.cluster=true".to_owned(),
        "sse.heartbeat_secs=1".to_owned(),
    ])
    .await;
    let key = |n: usize| format!("f-{n}");
    for n in 0..10 {
        assert_eq!(
            pipeline
                .post_activity(ACME_KEY, Some(&key(n)), &activity("a", "login"))
                .await
                .status(),
            202
        );
    }
    assert_eq!(
        pipeline
            .wait_for_count(mongodb::bson::doc! {"tenantId": "acme"}, 10)
            .await,
        10
    );
    let (_, last) = pipeline
        .wait_for_json(ACME_KEY, &format!("/activities/{}", key(9)), |status, _| {
            status == 200
        })
        .await;
    let mut last_id = last["activity"]["id"].as_str().unwrap().to_owned();
    let mut stream = SseClient::open(&pipeline.address, ACME_KEY, Some(&last_id)).await;

    // Kill the master that owns acme's slot: the one that takes SPUBLISH on its channel.
    let channel = pipeline.redis_key("activities:{acme}");
    let mut owner = None;
    for n in 0..3 {
        let port = cluster.port(n);
        let mut node = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let answer: redis::RedisResult<i64> = redis::cmd("SPUBLISH")
            .arg(&channel)
            .arg("probe")
            .query_async(&mut node)
            .await;
        if answer.is_ok() {
            owner = Some(port);
        }
    }
    let owner = owner.expect("a master owns acme's slot");
    cluster.kill(owner);

    for n in 10..20 {
        assert_eq!(
            pipeline
                .post_activity(ACME_KEY, Some(&key(n)), &activity("a", "login"))
                .await
                .status(),
            202,
            "the API accepts while the master is down"
        );
    }

    // Live: every event after the 10th, across the stream ending and resuming; within one stream,
    // none twice. (Across streams an event may come twice: a resume while Redis fails over replays
    // from MongoDB, which has the document before the consumer's Redis step published it; the
    // event then also arrives live on a later stream. Its id is the same: clients dedupe by id.)
    let mut streams: Vec<Vec<String>> = vec![Vec::new()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let unique =
        |streams: &Vec<Vec<String>>| streams.iter().flatten().collect::<BTreeSet<_>>().len();
    while unique(&streams) < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "live events missing: {streams:?}"
        );
        match stream.next_event(Duration::from_secs(3)).await {
            Some(event) => {
                streams
                    .last_mut()
                    .unwrap()
                    .push(event.json()["idempotencyKey"].as_str().unwrap().to_owned());
                last_id = event.id.unwrap();
            }
            // Reconnect as EventSource does: when the stream ends (here, when its shard's master
            // died), with the last id it got; refusals (503 while the cluster fails over) are retried.
            None if stream.ended => {
                let response =
                    SseClient::request(&pipeline.address, ACME_KEY, Some(&last_id)).await;
                if response.status() == 200 {
                    stream = SseClient::from_response(response);
                    streams.push(Vec::new());
                } else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            None => {}
        }
    }
    let expected: BTreeSet<String> = (10..20).map(key).collect();
    let delivered: BTreeSet<String> = streams.iter().flatten().cloned().collect();
    assert_eq!(delivered, expected, "every event");
    for events in &streams {
        let once: BTreeSet<&String> = events.iter().collect();
        assert_eq!(
            once.len(),
            events.len(),
            "none twice in one stream: {events:?}"
        );
    }

    eventually("the counters count every activity once", || async {
        pipeline.counters("acme").await.get("login") == Some(&20)
    })
    .await;

    // Client retries of every key: nothing stored or counted twice.
    for n in 0..20 {
        let status = pipeline
            .post_activity(ACME_KEY, Some(&key(n)), &activity("a", "login"))
            .await
            .status();
        assert!(status.is_success(), "a retry of {} got {status}", key(n));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in 0..20 {
        assert_eq!(
            pipeline.count(filter("acme", &key(n))).await,
            1,
            "{}",
            key(n)
        );
    }
    assert_eq!(pipeline.counters("acme").await.get("login"), Some(&20));
    drop(stream);
    pipeline.stop().await;
    drop(cluster);
}

async fn delete_prefix(connection: &mut RedisConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(connection)
        .await
        .unwrap_or_default();
    for key in keys {
        let _: Result<(), _> = redis::cmd("DEL").arg(&key).query_async(connection).await;
    }
}
