//! Every consumer call to a dependency has a deadline: a reply that never comes costs a stage
//! `mongo.op_timeout_ms` and a retry in place, not its batch and its place in the group.

use std::time::{Duration, Instant};

use mongodb::bson::doc;

use crate::blackhole::ReplyBlackhole;
use crate::helpers::{activity, TestPipeline, ACME_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_mongodb_costs_a_stage_its_op_timeout_not_its_batch() {
    let blackhole = ReplyBlackhole::start(27017).await;
    // The driver's monitor checks the server every 60 s here, so a blackhole of a few seconds is
    // shorter than its heartbeat: nothing but the call's own deadline notices the lost reply.
    let pipeline = TestPipeline::spawn_with(&[
        format!(
            "mongo.uri=mongodb://127.0.0.1:{}/?heartbeatFrequencyMS=60000",
            blackhole.port()
        ),
        "mongo.op_timeout_ms=2000".to_owned(),
    ])
    .await;
    let post = |key: String| {
        let pipeline = &pipeline;
        async move {
            let response = pipeline
                .post_activity(ACME_KEY, Some(&key), &activity("u1", "login"))
                .await;
            assert_eq!(response.status(), 202, "{key}");
        }
    };
    for n in 0..5 {
        post(format!("before-{n}")).await;
    }
    assert_eq!(
        pipeline.wait_for_count(doc! {"tenantId": "acme"}, 5).await,
        5
    );

    // MongoDB's replies vanish (the connections stay open, nothing answers), while more arrive.
    blackhole.swallow(true);
    for n in 0..20 {
        post(format!("during-{n}")).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    blackhole.swallow(false);
    let lifted = Instant::now();

    // Within the deadline plus the outage backoff (capped at 500 ms in tests) and slack, every
    // activity is stored, once. Without a deadline, the insert whose reply was dropped waits
    // for a reply forever (the driver has no socket timeout) and the stage with it.
    let deadline = lifted + Duration::from_secs(20);
    let mut stored = 0;
    while Instant::now() < deadline {
        stored = pipeline.count(doc! {"tenantId": "acme"}).await;
        if stored >= 25 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        stored, 25,
        "stored {stored} of 25 within 20 s of the blackhole's end"
    );
    for n in 0..20 {
        let key = format!("during-{n}");
        assert_eq!(
            pipeline
                .count(doc! {"tenantId": "acme", "idempotencyKey": &key})
                .await,
            1,
            "{key}"
        );
    }
    let metrics = pipeline.consumer_metrics().await;
    assert!(
        metrics.contains("activity_pipeline_consumer_breaker_open{stage=\"main\"} 0"),
        "the breaker closed again:\n{metrics}"
    );
    assert!(
        pipeline.dead_letters().await.is_empty(),
        "an outage is not a record failure"
    );
    pipeline.stop().await;
}
