//! Intake beyond the single happy path: idempotency layer 2, batch semantics, the rate limit, and
//! Redis being down.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use activity_pipeline::domain::TenantId;
use activity_pipeline::produce::{IntakeOutcome, IntakeTally};
use activity_pipeline::store::{RedisKeys, RedisStore, TokensTaken};

use mongodb::bson::doc;
use serde_json::{json, Value};

use crate::helpers::{
    activity, filter, load_settings, metrics_text, test_overrides, TestApi, TestPipeline, ACME_KEY,
    GLOBEX_KEY,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_an_accepted_key_is_answered_as_a_duplicate_without_producing() {
    let pipeline = TestPipeline::spawn().await;
    let first = pipeline
        .post_activity(ACME_KEY, Some("retry-me"), &activity("u1", "login"))
        .await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["duplicate"], false);

    let retry = pipeline
        .post_activity(ACME_KEY, Some("retry-me"), &activity("u1", "login"))
        .await;
    assert_eq!(retry.status(), 202);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["success"], true);
    assert_eq!(retry["idempotencyKey"], "retry-me");
    assert_eq!(retry["duplicate"], true);

    // The marker is the tenant's: the same key from another tenant is a new activity.
    let other: Value = pipeline
        .post_activity(GLOBEX_KEY, Some("retry-me"), &activity("u1", "login"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(other["duplicate"], false);

    // Produced once: the topic holds two records (acme's and globex's), not three. The consumer's
    // own dedupe would hide a second record, so count what reached Kafka through the metrics.
    let metrics = metrics_text(&pipeline.http, &pipeline.address).await;
    assert!(
        metrics.contains("activity_pipeline_produce_duration_seconds_count{outcome=\"acked\"} 2"),
        "{metrics}"
    );
    let marker = pipeline.redis_get("accepted:{acme}:retry-me").await;
    assert!(marker.is_some(), "the accepted marker is set after the ack");
    assert_eq!(
        pipeline.wait_for_count(filter("acme", "retry-me"), 1).await,
        1
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_keys_the_client_chose_get_accepted_markers() {
    let pipeline = TestPipeline::spawn().await;
    let single: Value = pipeline
        .post_activity(ACME_KEY, None, &activity("u1", "login"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(single["duplicate"], false);
    let batch: Value = pipeline
        .post_batch(
            ACME_KEY,
            None,
            &json!({"activities": [
                activity("u2", "login"),
                {"idempotencyKey": "chosen-1", "activity": activity("u3", "login")},
            ]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(batch["accepted"], 2, "{batch}");
    let made_by_server = [
        single["idempotencyKey"].as_str().unwrap().to_owned(),
        batch["results"][0]["idempotencyKey"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    for key in made_by_server
        .iter()
        .map(String::as_str)
        .chain(["chosen-1"])
    {
        assert_eq!(
            pipeline.wait_for_count(filter("acme", key), 1).await,
            1,
            "{key} stored once"
        );
        let marker = pipeline
            .redis_get(&format!("accepted:{{acme}}:{key}"))
            .await;
        assert_eq!(
            marker.is_some(),
            key == "chosen-1",
            "accepted marker of {key}: only a key the client chose can come back in a retry"
        );
    }
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_never_fails_intake() {
    let api = TestApi::spawn(&["redis.url=redis://127.0.0.1:1".to_owned()], true).await;
    for attempt in 0..3 {
        let started = Instant::now();
        let response = api
            .post_activity(ACME_KEY, Some("no-redis"), &activity("u1", "login"))
            .await;
        assert_eq!(response.status(), 202, "attempt {attempt}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["duplicate"], false, "without Redis nothing is known");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "Redis being down costs at most its short timeout"
        );
    }
    let batch = api
        .post_batch(
            ACME_KEY,
            &json!({"activities": [activity("u1", "a"), activity("u2", "b")]}),
        )
        .await;
    assert_eq!(batch.status(), 202);
    // Going without Redis shows in the metrics, per part.
    let metrics = metrics_text(&api.http, &api.address).await;
    for part in ["accepted_markers", "rate_limit"] {
        let series = format!("activity_pipeline_redis_fallbacks_total{{part=\"{part}\"}} ");
        let fallbacks: u64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        assert!(fallbacks >= 1, "{part}: {metrics}");
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_judged_item_by_item() {
    let pipeline = TestPipeline::spawn().await;

    // All valid: 202, keys derived from the batch key or the item's own.
    let response = pipeline
        .post_batch(
            ACME_KEY,
            Some("batch-1"),
            &json!({"activities": [
                activity("u1", "login"),
                {"idempotencyKey": "own-key", "activity": activity("u2", "logout")},
                activity("u3", "login"),
            ]}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["accepted"], 3);
    let keys: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| {
            assert_eq!(result["status"], 202);
            assert_eq!(result["duplicate"], false);
            result["idempotencyKey"].as_str().unwrap()
        })
        .collect();
    assert_eq!(keys, ["batch-1:0", "own-key", "batch-1:2"]);

    // Mixed: 207; the valid items are produced, the invalid ones explained.
    let response = pipeline
        .post_batch(
            GLOBEX_KEY,
            None,
            &json!({"activities": [
                activity("g1", "signup"),
                {"actorId": "g2"},
                {"actorId": "g3", "actorName": "G", "type": "t", "metadata": {"$where": 1}},
            ]}),
        )
        .await;
    assert_eq!(response.status(), 207);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert_eq!(
        (body["accepted"].as_u64(), body["invalid"].as_u64()),
        (Some(1), Some(2))
    );
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], 202);
    let generated = results[0]["idempotencyKey"].as_str().unwrap().to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&generated).unwrap().get_version_num(),
        7
    );
    assert_eq!(results[1]["status"], 400);
    assert_eq!(
        results[1]["error"],
        "Missing required fields: actorName, type"
    );
    assert_eq!(results[2]["status"], 400);
    assert!(results[2]["details"][0]["field"]
        .as_str()
        .unwrap()
        .starts_with("/metadata"));

    // All invalid: 400 with the per-item results.
    let response = pipeline
        .post_batch(ACME_KEY, None, &json!({"activities": [{"actorId": "x"}]}))
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["results"][0]["status"], 400);

    // The same batch retried with the same batch key: every item a duplicate, nothing produced.
    let response = pipeline
        .post_batch(
            ACME_KEY,
            Some("batch-1"),
            &json!({"activities": [
                activity("u1", "login"),
                {"idempotencyKey": "own-key", "activity": activity("u2", "logout")},
                activity("u3", "login"),
            ]}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["duplicates"], 3);

    // Stored: acme's three and globex's one, once each.
    assert_eq!(pipeline.wait_for_count(doc! {}, 4).await, 4);
    for key in ["batch-1:0", "own-key", "batch-1:2"] {
        assert_eq!(pipeline.count(filter("acme", key)).await, 1, "{key}");
    }
    assert_eq!(pipeline.count(filter("globex", &generated)).await, 1);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_oversized_batch_is_refused_whole() {
    let pipeline = TestPipeline::spawn_with(&[
        "intake.batch_max_items=3".to_owned(),
        "intake.batch_max_body_bytes=4096".to_owned(),
    ])
    .await;
    for (body, rule) in [
        (json!([activity("u", "t")]), "type"),
        (json!({"activities": []}), "minItems"),
        (
            json!({"activities": [activity("a", "t"), activity("b", "t"), activity("c", "t"), activity("d", "t")]}),
            "maxItems",
        ),
        (
            json!({"activities": [activity("a", "t")], "extra": 1}),
            "additionalProperties",
        ),
    ] {
        let response = pipeline.post_batch(ACME_KEY, None, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["success"], false);
        assert_eq!(error["details"][0]["rule"], rule, "{error}");
    }
    let big = json!({"activities": [{"actorId": "u", "actorName": "A", "type": "t", "metadata": {"blob": "x".repeat(5000)}}]});
    let response = pipeline.post_batch(ACME_KEY, None, &big).await;
    assert_eq!(response.status(), 413);
    let response = pipeline
        .http
        .post(format!("{}/activities/batch", pipeline.address))
        .bearer_auth(ACME_KEY)
        .header("Content-Type", "text/csv")
        .body("a,b")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let response = pipeline
        .http
        .post(format!("{}/activities/batch", pipeline.address))
        .json(&json!({"activities": [activity("a", "t")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pipeline.count(doc! {}).await,
        0,
        "nothing of a refused batch is stored"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_gets_429_and_others_do_not() {
    let pipeline = TestPipeline::spawn_with(&[
        "rate_limit.per_tenant_per_sec=1".to_owned(),
        "rate_limit.burst=3".to_owned(),
        "intake.batch_max_items=3".to_owned(),
    ])
    .await;
    for index in 0..3 {
        let response = pipeline
            .post_activity(ACME_KEY, None, &activity(&format!("u{index}"), "login"))
            .await;
        assert_eq!(
            response.status(),
            202,
            "request {index} is within the burst"
        );
    }
    let response = pipeline
        .post_activity(ACME_KEY, None, &activity("u9", "login"))
        .await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert!(body["error"].as_str().unwrap().contains("Rate limit"));

    // A batch costs its item count: globex's full burst in one batch passes, one more does not.
    let batch =
        json!({"activities": [activity("g1", "a"), activity("g2", "a"), activity("g3", "a")]});
    assert_eq!(
        pipeline.post_batch(GLOBEX_KEY, None, &batch).await.status(),
        202
    );
    assert_eq!(
        pipeline
            .post_batch(
                GLOBEX_KEY,
                None,
                &json!({"activities": [activity("g4", "a")]})
            )
            .await
            .status(),
        429
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_built_to_fail_gets_an_answer_bounded_per_item_and_in_all() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    // 1,000 items, each with 30 keys MongoDB would refuse: 30,000 failures. Described one by one
    // that was a ~4 MB answer.
    let metadata: serde_json::Map<String, Value> =
        (0..30).map(|n| (format!("${n}"), json!(n))).collect();
    let item = json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": metadata});
    let batch = json!({ "activities": vec![item; 1000] });
    let response = pipeline.post_batch(ACME_KEY, None, &batch).await;
    assert_eq!(response.status(), 400);
    let answer = response.bytes().await.unwrap();
    assert!(answer.len() < 512 * 1024, "a {} byte answer", answer.len());
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["invalid"], 1000);
    let results = answer["results"].as_array().unwrap();
    let described: Vec<usize> = results
        .iter()
        .map(|result| result["details"].as_array().unwrap().len())
        .collect();
    assert!(
        described.iter().all(|count| *count <= 20),
        "limits.max_reported_errors per item"
    );
    assert_eq!(
        described.iter().sum::<usize>(),
        100,
        "intake.batch_max_reported_errors in all"
    );
    for result in results {
        let shown = result["details"].as_array().unwrap().len();
        let omitted = result["detailsOmitted"].as_u64().unwrap_or(0) as usize;
        assert_eq!(shown + omitted, 30, "every failure is counted: {result}");
        assert!(result["error"]
            .as_str()
            .is_some_and(|error| !error.is_empty()));
    }
    pipeline.stop().await;
}

/// Overrides for API instances that share one topic and one Redis prefix (each `test_overrides`
/// call makes names of its own): `settings` and names unique to this call, labelled `label`.
fn shared_by_instances(label: &str, settings: &[&str]) -> Vec<String> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let mut overrides: Vec<String> = settings.iter().map(|&setting| setting.to_owned()).collect();
    overrides.extend([
        format!("kafka.topic=it-{label}-{id}.activities"),
        format!("kafka.retry_topic=it-{label}-{id}.activities.retry"),
        format!("kafka.dlq_topic=it-{label}-{id}.activities.dlq"),
        format!("redis.key_prefix=it:{label}-{id}:"),
    ]);
    overrides
}

/// `rate_limit.shared`: a tenant's bucket lives in Redis, so its limit holds however its requests
/// spread over the API instances; an instance that cannot reach Redis falls back to a bucket of its
/// own (still a limit, never a 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_across_api_instances_and_falls_back_without_redis() {
    let shared = shared_by_instances(
        "shared",
        &[
            "rate_limit.per_tenant_per_sec=1",
            "rate_limit.burst=4",
            "intake.batch_max_items=4",
        ],
    );
    let first = TestApi::spawn(&shared, true).await;
    let second = TestApi::spawn(&shared, false).await;
    let mut statuses = Vec::new();
    for index in 0..6 {
        let api = if index % 2 == 0 { &first } else { &second };
        let response = api
            .post_activity(ACME_KEY, None, &activity(&format!("u{index}"), "login"))
            .await;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(
        statuses,
        [202, 202, 202, 202, 429, 429],
        "one bucket of 4 for both instances, taken alternately"
    );

    let mut without_redis = shared.to_vec();
    without_redis.push("redis.url=redis://127.0.0.1:1".to_owned());
    let alone = TestApi::spawn(&without_redis, false).await;
    let mut statuses = Vec::new();
    for index in 0..5 {
        let response = alone
            .post_activity(ACME_KEY, None, &activity(&format!("a{index}"), "login"))
            .await;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(
        statuses,
        [202, 202, 202, 202, 429],
        "without Redis the instance's own bucket limits"
    );
    for api in [first, second, alone] {
        api.stop().await;
    }
}

/// `rate_limit.lease_ms`: an instance takes a lease from the shared bucket and spends it without
/// asking Redis again, so another instance finds the bucket emptier by what it holds; the limit
/// still holds across both. The bucket's script takes what it holds, between the fewest and the most
/// asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_spends_its_lease_of_the_shared_bucket_and_the_limit_still_holds() {
    // 2 activities/s, a lease of 1 s of that: every call takes 2 while the bucket (4) has them.
    let leased = shared_by_instances(
        "lease",
        &[
            "rate_limit.per_tenant_per_sec=2",
            "rate_limit.burst=4",
            "rate_limit.lease_ms=1000",
            "intake.batch_max_items=4",
        ],
    );
    let first = TestApi::spawn(&leased, true).await;
    let second = TestApi::spawn(&leased, false).await;
    let mut statuses = Vec::new();
    // The first instance takes 2 and spends 1; the second takes the other 2 and spends them; its
    // third request finds the bucket empty (a token comes back after 500 ms); the first instance
    // still holds one.
    for (index, api) in [&first, &second, &second, &second, &first]
        .into_iter()
        .enumerate()
    {
        let response = api
            .post_activity(ACME_KEY, None, &activity(&format!("l{index}"), "login"))
            .await;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(
        statuses,
        [202, 202, 202, 429, 202],
        "leases of 2 from one bucket of 4: {statuses:?}"
    );

    // A refusal is remembered until the bucket could give as much. Globex's bucket, emptied by a
    // lease to each instance: a batch of 4 on the second (which holds 1) misses 3, which come back
    // in 1.5 s, and is refused. With the bucket's state deleted behind the instance's back, the
    // same batch is still refused without asking Redis; a single is served from what the instance
    // holds, and the next, which misses only 1, asks Redis (and so makes the bucket again).
    let batch_of_4 = || {
        let items: Vec<Value> = (0..4)
            .map(|item| activity(&format!("b{item}"), "login"))
            .collect();
        json!({ "activities": items })
    };
    async fn single(api: &TestApi, index: usize) -> reqwest::Response {
        let body = activity(&format!("g{index}"), "login");
        api.post_activity(GLOBEX_KEY, None, &body).await
    }
    assert_eq!(single(&first, 0).await.status(), 202);
    assert_eq!(single(&second, 1).await.status(), 202);
    assert_eq!(
        second.post_batch(GLOBEX_KEY, &batch_of_4()).await.status(),
        429
    );
    let settings = load_settings(&test_overrides(&leased));
    let connection =
        activity_pipeline::store::RedisConnection::prepare(&settings.redis, Duration::from_secs(5))
            .expect("redis settings are valid");
    let bucket = RedisKeys::new(settings.redis.key_prefix.clone())
        .rate_limit(&TenantId::parse("globex").unwrap());
    let exists = || async {
        redis::cmd("EXISTS")
            .arg(&bucket)
            .query_async::<u64>(&mut connection.clone())
            .await
    };
    assert_eq!(exists().await.unwrap(), 1, "the bucket {bucket} exists");
    let _: () = redis::cmd("DEL")
        .arg(&bucket)
        .query_async(&mut connection.clone())
        .await
        .unwrap();
    let again = second.post_batch(GLOBEX_KEY, &batch_of_4()).await;
    assert_eq!(again.status(), 429, "refused from the remembered refusal");
    assert!(again.headers().contains_key("retry-after"));
    assert_eq!(exists().await.unwrap(), 0, "Redis was not asked");
    assert_eq!(single(&second, 2).await.status(), 202, "what it held");
    assert_eq!(exists().await.unwrap(), 0, "Redis was not asked");
    assert_eq!(single(&second, 3).await.status(), 202, "a call for 1");
    assert_eq!(exists().await.unwrap(), 1, "Redis was asked");
    for api in [first, second] {
        api.stop().await;
    }

    let redis = RedisStore::connect(&settings.redis).expect("redis settings are valid");
    // A bucket no API instance above used.
    let initech = TenantId::parse("initech").unwrap();
    let interval = Duration::from_secs(1);
    let tolerance = interval * 4;
    let take = |fewest, most| redis.take_tokens(&initech, fewest, most, interval, tolerance);
    assert_eq!(take(1, 3).await.unwrap(), TokensTaken::Taken(3));
    assert_eq!(
        take(1, 3).await.unwrap(),
        TokensTaken::Taken(1),
        "what is left, fewer than the most"
    );
    match take(1, 1).await.unwrap() {
        TokensTaken::NotBefore(wait) => assert!(
            wait > Duration::ZERO && wait <= interval,
            "the next one comes back within an interval: {wait:?}"
        ),
        taken => panic!("an empty bucket gave {taken:?}"),
    }
}

/// A flush of the intake counts that timed out after its write reached Redis is sent again under
/// the same flush id, and Redis adds it once: the counts do not run high after a slow Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intake_flush_retried_after_it_landed_is_counted_once() {
    let settings = load_settings(&test_overrides(&[]));
    let redis = RedisStore::connect(&settings.redis).expect("redis settings are valid");
    let unreachable = RedisStore::connect(
        &load_settings(&test_overrides(&[
            "redis.url=redis://127.0.0.1:1".to_owned(),
            "redis.op_timeout_ms=200".to_owned(),
        ]))
        .redis,
    )
    .expect("redis settings are valid");
    let acme = TenantId::parse("acme").unwrap();
    let tally = IntakeTally::new(std::slice::from_ref(&acme));
    let counts = || async { redis.intake_counts(&acme).await.expect("intake counts") };

    tally.add(&acme, IntakeOutcome::Accepted, 5);
    tally.add(&acme, IntakeOutcome::RateLimited, 2);
    tally.flush(&unreachable).await;
    let unconfirmed = tally
        .unconfirmed_flush(&acme)
        .expect("a failed flush stays unconfirmed");
    assert!(counts().await.is_empty(), "nothing reached Redis yet");

    // The same flush, as if the failed attempt had reached Redis after all.
    let landed = redis
        .add_intake_counts(&acme, &unconfirmed, &[("accepted", 5), ("rateLimited", 2)])
        .await
        .expect("redis is up");
    assert!(landed);
    tally.add(&acme, IntakeOutcome::Accepted, 1);
    tally.flush(&redis).await;
    assert_eq!(tally.unconfirmed_flush(&acme), None, "confirmed now");
    assert_eq!(
        counts().await,
        BTreeMap::from([("accepted".to_owned(), 5), ("rateLimited".to_owned(), 2)]),
        "the retried flush was not added again; the newer count waits for the next flush"
    );

    tally.flush(&redis).await;
    assert_eq!(
        counts().await,
        BTreeMap::from([("accepted".to_owned(), 6), ("rateLimited".to_owned(), 2)])
    );
    assert_eq!(tally.unconfirmed_flush(&acme), None);
}
