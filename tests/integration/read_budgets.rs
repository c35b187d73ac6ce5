//! The read side's budgets (issue 16): reads have a bounded place per instance and per tenant, so one
//! tenant's burst of slow reads cannot starve another tenant or the drain. (That a read past its
//! budget stops in the store too is `tests/store_budget.rs`, a binary of its own.)

use std::time::Duration;

use mongodb::bson::doc;

use crate::helpers::{activity, TestPipeline, ACME_KEY, GLOBEX_KEY};

/// One tenant's burst of reads takes at most its share (`read.max_concurrent_per_tenant`) of the
/// instance's reads; the rest queue briefly and are refused with 503 and Retry-After. Another
/// tenant's read still gets its place and answers, and the consumer's writes (their own client and
/// pool) drain meanwhile. Without the bound the burst fills the driver's connection pool and the
/// store, and the other tenant's read waits past its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_burst_of_reads_starves_neither_another_tenant_nor_the_drain() {
    let budget = Duration::from_millis(1_500);
    let pipeline = TestPipeline::spawn_with(&[
        format!("read.timeout_ms={}", budget.as_millis()),
        "read.max_concurrent=4".to_owned(),
        "read.max_concurrent_per_tenant=2".to_owned(),
        "read.queue_wait_ms=100".to_owned(),
    ])
    .await;
    // Enough for each read to take FerretDB a few hundred milliseconds; a burst of 40 of them at
    // once is many seconds of the store's work.
    pipeline.insert_directly("acme", 2_000).await;

    let burst: Vec<_> = (0..40)
        .map(|_| {
            let http = pipeline.http.clone();
            let url = format!("{}/activities", pipeline.address);
            tokio::spawn(async move {
                let response = http.get(url).bearer_auth(ACME_KEY).send().await.unwrap();
                (
                    response.status().as_u16(),
                    response.headers().contains_key("retry-after"),
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;

    for index in 0..3 {
        let response = pipeline
            .post_activity(
                GLOBEX_KEY,
                Some(&format!("during-burst-{index}")),
                &activity("g1", "doc.viewed"),
            )
            .await;
        assert_eq!(response.status(), 202);
    }
    let (status, body) = pipeline.get_json(GLOBEX_KEY, "/activities").await;
    assert_eq!(
        status, 200,
        "globex's read during acme's burst answers: {body}"
    );

    let mut refused = 0;
    for answer in burst {
        let (status, retry_after) = answer.await.unwrap();
        match status {
            200 => {}
            503 => {
                assert!(retry_after, "a refused read says when to retry");
                refused += 1;
            }
            other => panic!("acme's read answered {other}"),
        }
    }
    assert!(
        refused > 0,
        "acme's burst went past its share and was refused in part"
    );
    assert_eq!(
        pipeline
            .wait_for_count(doc! { "tenantId": "globex" }, 3)
            .await,
        3,
        "the consumer stored what was sent during the burst"
    );
    pipeline.stop().await;
}
