//! A read past its budget stops in the store too: every read carries `maxTimeMS` equal to
//! `read.timeout_ms` (issue 16). A test binary of its own because it measures the store's CPU: cargo
//! runs test binaries one after another, so no other test's queries run on the shared FerretDB
//! meanwhile (inside the integration binary, tests run in parallel).

use std::time::{Duration, Instant};

use mongodb::bson::doc;

use crate::helpers::{TestPipeline, ACME_KEY, MANIFEST_DIR};

// The integration tests' helpers; this binary uses a few of them.
#[allow(dead_code)]
#[path = "integration/helpers.rs"]
mod helpers;

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

/// The pid of the FerretDB process of the test stack: from `scripts/stack.sh`'s pid file when this
/// checkout started the stack, else the one process called `ferretdb` (the stack of another checkout
/// on this machine, which `stack.sh up` found answering and left alone).
fn ferretdb_pid() -> u32 {
    let stack = std::env::var("AP_STACK_DIR").unwrap_or_else(|_| format!("{MANIFEST_DIR}/.stack"));
    let from_pidfile = std::fs::read_to_string(format!("{stack}/mongo/ferretdb.pid"))
        .ok()
        .and_then(|pid| pid.trim().parse().ok());
    if let Some(pid) = from_pidfile {
        return pid;
    }
    let running: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "ferretdb")
        })
        .collect();
    match running.as_slice() {
        [pid] => *pid,
        other => panic!("expected one FerretDB process (scripts/stack.sh up), found {other:?}"),
    }
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
    pipeline.insert_directly("acme", 30_000).await;
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
