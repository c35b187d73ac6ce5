//! The read side's budgets (issue 16): every read carries `maxTimeMS` equal to `read.timeout_ms`, so
//! a query the API gave up on stops in the store too; and reads have a bounded place per instance and
//! per tenant, so one tenant's burst of slow reads cannot starve another tenant or the drain.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, oid::ObjectId, DateTime, Document};

use crate::helpers::{activity, TestPipeline, ACME_KEY, GLOBEX_KEY};

/// Inserts `count` small activities of `tenant` straight into the test's collection (not through
/// the pipeline, which would take minutes): enough of them make a newest-first query on FerretDB
/// slower than a small `read.timeout_ms`.
async fn insert_directly(pipeline: &TestPipeline, tenant: &str, count: usize) {
    let now = DateTime::now();
    let documents: Vec<Document> = (0..count)
        .map(|index| {
            doc! {
                "_id": ObjectId::new(),
                "tenantId": tenant,
                "idempotencyKey": format!("bulk-{index}"),
                "actorId": "bulk",
                "actorName": "Bulk",
                "type": "bulk.loaded",
                "metadata": {},
                "enqueuedAt": now,
                "createdAt": now,
            }
        })
        .collect();
    for chunk in documents.chunks(5_000) {
        pipeline
            .activities()
            .insert_many(chunk)
            .await
            .expect("bulk insert");
    }
}

/// CPU time (user + system, in clock ticks of 10 ms) the store has used so far, for the store's
/// idleness: FerretDB v1.24 answers `currentOp` with an empty `inprog` whatever runs, so its process's
/// CPU is the only witness of a query still running after the API gave up.
fn store_cpu_ticks(pid: u32) -> u64 {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the store's /proc stat");
    // Fields after the command name (which is in parentheses and may hold spaces): utime and stime
    // are the 14th and 15th fields of the whole line.
    let after_name = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The pid of the FerretDB process of the test stack.
fn ferretdb_pid() -> u32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "ferretdb")
        })
        .expect("the stack's store is FerretDB (scripts/stack.sh up)")
}

/// Ticks the store burns over one second from now.
async fn store_cpu_over_a_second(pid: u32) -> u64 {
    let before = store_cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    store_cpu_ticks(pid) - before
}

/// A query slower than `read.timeout_ms`: each read path (a page, one activity by key, an SSE
/// replay from MongoDB) answers 503 with Retry-After within the budget, and the store is idle right
/// after it: with `maxTimeMS` it stopped the query too, where without it FerretDB scanned on for
/// seconds for an answer nobody waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_past_its_budget_stops_in_the_store_too() {
    let budget = Duration::from_millis(200);
    let pipeline =
        TestPipeline::spawn_api_only(&[format!("read.timeout_ms={}", budget.as_millis())]).await;
    let store = ferretdb_pid();
    // ~30k documents: a query of this collection takes FerretDB/SQLite seconds (no index is used
    // for tenantId there), far past the budget.
    insert_directly(&pipeline, "acme", 30_000).await;
    let first_id = pipeline
        .activities()
        .find_one(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .unwrap()
        .unwrap()
        .get_object_id("_id")
        .unwrap()
        .to_hex();

    for (what, path, last_event_id) in [
        ("a page", "/activities".to_owned(), None),
        ("one activity", "/activities/no-such-key".to_owned(), None),
        (
            "an SSE replay from MongoDB",
            "/activities/stream".to_owned(),
            Some(first_id.clone()),
        ),
    ] {
        let idle = store_cpu_over_a_second(store).await;
        let mut request = pipeline
            .http
            .get(format!("{}{path}", pipeline.address))
            .bearer_auth(ACME_KEY);
        if let Some(id) = &last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let asked = Instant::now();
        let response = request.send().await.expect("the API answers");
        let waited = asked.elapsed();
        assert_eq!(response.status(), 503, "{what}");
        assert!(
            response.headers().contains_key("retry-after"),
            "{what}: 503 with Retry-After"
        );
        // The budget plus room for a loaded machine; the query alone takes seconds.
        assert!(
            waited < budget + Duration::from_millis(800),
            "{what}: answered after {waited:?}, budget {budget:?}"
        );
        let after = store_cpu_over_a_second(store).await;
        // Half a core above what the store did before: the unstopped query keeps a whole one busy.
        assert!(
            after < idle + 50,
            "{what}: the store was still busy after the 503 ({after} ticks in the next second, \
             {idle} in the second before): the query ran on without the API"
        );
    }
    pipeline.stop().await;
}

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
    insert_directly(&pipeline, "acme", 2_000).await;

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
