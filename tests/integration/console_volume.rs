//! The console's dead letters at volume: 100,000 dead letters in a DLQ topic, and how long the
//! pages that read them take. Ignored (it writes 10^5 records and takes minutes); run by hand:
//!
//! ```text
//! cargo test --test integration console_volume -- --ignored --nocapture
//! CONSOLE_VOLUME_DEAD_LETTERS=1000000 cargo test --test integration console_volume -- --ignored --nocapture
//! ```
//!
//! Past 400,000 dead letters it gives the console 2 GiB (`console.dead_letters_memory_mb=2048`):
//! the default 512 MiB holds some 440,000 of these.
//!
//! It prints one line per measured request; the README's "Dead letters at volume" table holds the
//! numbers. Nothing is asserted about speed: only that every answer is correct.

use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::console::{TestConsole, ADMIN_TOKEN};
use crate::helpers::TestPipeline;

/// How many dead letters the measurement writes, unless `CONSOLE_VOLUME_DEAD_LETTERS` says (a
/// multiple of 100).
const DEAD_LETTERS: usize = 100_000;

fn dead_letters() -> usize {
    std::env::var("CONSOLE_VOLUME_DEAD_LETTERS")
        .ok()
        .and_then(|raw| raw.parse::<usize>().ok())
        .filter(|count| *count > 0 && count % 100 == 0)
        .unwrap_or(DEAD_LETTERS)
}
/// Tenants they are spread over: the configured `acme` and `globex` (the console's tenant pages
/// show only configured tenants) and `volume-02` .. `volume-49`.
const TENANTS: usize = 50;
const CLASSES: [&str; 4] = ["poison", "rejected", "conflict", "transient"];

/// Writes `count` dead letters as the consumer would have, many in flight at once (one producer,
/// deliveries awaited in chunks so memory stays bounded). Dead letter `i` belongs to tenant
/// [`tenant_of`]`(i)`, has class `CLASSES[i % 4]` and idempotency key `volume-key-{i}`.
async fn write_dead_letters(pipeline: &TestPipeline, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &pipeline.settings.kafka.brokers)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let topic = pipeline.settings.kafka.dlq_topic.as_str();
    let now = chrono::Utc::now();
    for chunk_start in (0..count).step_by(5_000) {
        let sends = (chunk_start..(chunk_start + 5_000).min(count)).map(|index| {
            let tenant = tenant_of(index);
            let key = format!("volume-key-{index}");
            let at = (now - chrono::Duration::seconds((count - index) as i64)).to_rfc3339();
            let class = CLASSES[index % CLASSES.len()];
            let error =
                format!("store refused activity #{index}: duplicate key in tenant {tenant}");
            let payload = serde_json::to_vec(&serde_json::json!({
                "schema": "activity.v1",
                "tenantId": tenant,
                "idempotencyKey": key,
                "activity": {"actor": format!("user-{}", index % 997), "type": "page.viewed",
                             "object": format!("/articles/{index}")},
            }))
            .unwrap();
            let producer = &producer;
            async move {
                let headers = [
                    ("idempotency-key", key.as_str()),
                    ("dlq-error", error.as_str()),
                    ("dlq-error-class", class),
                    ("dlq-attempts", "1"),
                    ("dlq-first-failure-at", at.as_str()),
                    ("dlq-last-failure-at", at.as_str()),
                    ("dlq-source-topic", "activities"),
                    ("dlq-source-partition", "0"),
                    ("dlq-source-offset", "7"),
                ]
                .iter()
                .fold(OwnedHeaders::new(), |headers, (name, value)| {
                    headers.insert(Header {
                        key: name,
                        value: Some(*value),
                    })
                });
                producer
                    .send(
                        FutureRecord::to(topic)
                            .key(&tenant)
                            .payload(&payload)
                            .headers(headers),
                        Duration::from_secs(60),
                    )
                    .await
                    .expect("the broker takes the dead letter");
            }
        });
        join_all(sends).await;
    }
}

fn tenant_of(index: usize) -> String {
    match index % TENANTS {
        0 => "acme".to_owned(),
        1 => "globex".to_owned(),
        other => format!("volume-{other:02}"),
    }
}

/// Replays or purges the newest 10,000 dead letters (those that failed at or after the 10,000th
/// newest's time: dead letter `i` failed `count - i` seconds before the write) as a job, follows it
/// to its end, and prints how long it took and how its progress went.
async fn the_newest_as_a_job(
    console: &TestConsole,
    first_page: &serde_json::Value,
    count: usize,
    action: &str,
) {
    const REPLAYED: usize = 10_000;
    let newest = chrono::DateTime::parse_from_rfc3339(
        first_page["deadLetters"][0]["lastFailureAt"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let from = newest - chrono::Duration::seconds(REPLAYED as i64 - 1);
    let body = serde_json::json!({"from": from.to_rfc3339(), "dryRun": false});
    let started = Instant::now();
    let (status, _, job) = console.act_located(ADMIN_TOKEN, action, &body).await;
    println!(
        "MEASURE {:<40} {:>8.1} ms  (status {status}: the job started, its dead letters listed)",
        format!("{action} of 10,000 as a job: 202"),
        started.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["total"], REPLAYED.min(count), "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut last_report = Instant::now();
    let ended = loop {
        let (status, job) = console
            .get(Some(ADMIN_TOKEN), &format!("/console/api/jobs/{id}"))
            .await;
        assert_eq!(status, 200, "{job}");
        assert!(job["done"].as_u64() <= job["total"].as_u64(), "{job}");
        if job["state"] != "running" {
            break job;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            println!(
                "MEASURE   ... {} of {} after {:.0} s",
                job["done"],
                job["total"],
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the replay job is still running: {job}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "MEASURE {:<40} {:>8.1} s  (state {}, {} of {})",
        format!("{action} of 10,000 as a job: to its end"),
        started.elapsed().as_secs_f64(),
        ended["state"],
        ended["done"],
        ended["total"]
    );
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert_eq!(ended["done"], REPLAYED.min(count), "{ended}");
}

/// This process's resident set, in MiB (Linux).
fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// GETs `path` as the admin and prints how long it took; the JSON body.
async fn timed(console: &TestConsole, what: &str, path: &str) -> serde_json::Value {
    let started = Instant::now();
    let (status, body) = console.get(Some(ADMIN_TOKEN), path).await;
    let took = started.elapsed();
    println!(
        "MEASURE {what:<40} {:>8.1} ms  (status {status})",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(status, 200, "{what}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes 100,000 dead letters and takes minutes; run by hand (see the module doc)"]
async fn console_volume_dead_letters_at_100k() {
    let count = dead_letters();
    let mut overrides = vec!["console.read_timeout_ms=120000".to_owned()];
    if count > 400_000 {
        overrides.push("console.dead_letters_memory_mb=2048".to_owned());
    }
    let pipeline = TestPipeline::spawn_api_only(&overrides).await;
    let started = Instant::now();
    write_dead_letters(&pipeline, count).await;
    println!(
        "MEASURE wrote {count} dead letters in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let rss_before = resident_mib();
    let console = TestConsole::spawn(&pipeline).await;

    let first = timed(
        &console,
        "dead letters, first page",
        "/console/api/dead-letters",
    )
    .await;
    assert_eq!(first["total"], count);
    // The console runs in this process: what its DLQ index added to the resident set, roughly.
    println!(
        "MEASURE resident memory grew by {:.0} MiB while the console read the DLQ",
        resident_mib() - rss_before
    );
    timed(
        &console,
        "dead letters, first page again",
        "/console/api/dead-letters",
    )
    .await;
    let cursor = first["nextCursor"].as_str().unwrap().to_owned();
    timed(
        &console,
        "dead letters, second page",
        &format!("/console/api/dead-letters?cursor={cursor}"),
    )
    .await;
    let filtered = timed(
        &console,
        "dead letters, tenant + class",
        "/console/api/dead-letters?tenant=acme&class=poison",
    )
    .await;
    // acme is i % 50 == 0 and poison i % 4 == 0: the indexes i with i % 100 == 0.
    assert_eq!(filtered["total"], count / 100);
    let text = timed(
        &console,
        "dead letters, text in the payload",
        "/console/api/dead-letters?text=%2Farticles%2F4242%22",
    )
    .await;
    assert_eq!(text["total"], 1, "{text}");
    let tenant = timed(
        &console,
        "tenant page (its counts)",
        "/console/api/tenants/acme",
    )
    .await;
    assert_eq!(tenant["deadLettered"], count / TENANTS, "{tenant}");
    timed(&console, "tenants list", "/console/api/tenants").await;
    // The actions' previews run the `dlq` verbs' code, which reads the topic itself.
    for (action, body) in [
        (
            "replay",
            serde_json::json!({"tenant": "acme", "class": "poison", "dryRun": true}),
        ),
        (
            "purge",
            serde_json::json!({"tenant": "acme", "class": "poison", "dryRun": true}),
        ),
    ] {
        let started = Instant::now();
        let (status, report) = console.act(ADMIN_TOKEN, action, &body).await;
        println!(
            "MEASURE {:<40} {:>8.1} ms  (status {status})",
            format!("{action} preview, tenant + class"),
            started.elapsed().as_secs_f64() * 1e3
        );
        assert_eq!(status, 200, "{report}");
    }
    for action in ["replay", "purge"] {
        the_newest_as_a_job(&console, &first, count, action).await;
    }
    let cookie = console.log_in(ADMIN_TOKEN).await;
    for (what, path) in [
        ("page: dead letters", "/console/dead-letters"),
        (
            "page: dead letters, tenant + class",
            "/console/dead-letters?tenant=acme&class=poison",
        ),
        ("page: tenant", "/console/tenants/acme"),
    ] {
        let started = Instant::now();
        let (status, body) = console.page(&cookie, path).await;
        println!(
            "MEASURE {what:<40} {:>8.1} ms  (status {status})",
            started.elapsed().as_secs_f64() * 1e3
        );
        assert_eq!(status, 200, "{what}: {body}");
    }
    console.stop();
    pipeline.stop().await;
}
