//! Operator tools and alerts: `dlq list|show|replay`, `analytics rebuild`, the webhook, and the
//! command line's answers to garbage.

use std::process::Command;
use std::time::Duration;

use activity_pipeline::ops::dlq::{self, ReplayOutcome};
use mongodb::bson::doc;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{activity, dev_config, eventually, filter, TestPipeline, ACME_KEY};

fn cli(pipeline: &TestPipeline, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_activity-pipeline"));
    command.arg("--config").arg(dev_config());
    for flag in &pipeline.overrides {
        command.arg("--set").arg(flag);
    }
    command.args(args).output().expect("the binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_stores_what_was_lost_and_changes_nothing_already_stored() {
    let pipeline = TestPipeline::spawn().await;
    // One activity stored normally ...
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, Some("stored-before"), &activity("u1", "login"))
            .await
            .status(),
        202
    );
    assert_eq!(
        pipeline
            .wait_for_count(filter("acme", "stored-before"), 1)
            .await,
        1
    );
    eventually("counted", || async {
        pipeline.counters("acme").await.get("login") == Some(&1)
    })
    .await;
    // ... and two dead letters, as an incident would have left them: a copy of the stored one, and
    // one that never made it.
    let dlq_topic = pipeline.settings.kafka.dlq_topic.clone();
    for key in ["stored-before", "lost-in-incident"] {
        let envelope = pipeline.envelope("acme", key, &activity("u1", "login"));
        let headers = [
            ("idempotency-key", key),
            ("dlq-error", "MongoDB was on fire"),
            ("dlq-error-class", "transient"),
            ("dlq-attempts", "4"),
        ];
        pipeline
            .produce_raw(&dlq_topic, Some("acme"), Some(&envelope), &headers)
            .await;
    }

    let listed = cli(&pipeline, &["dlq", "list", "--tenant", "acme"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listing.contains("key=lost-in-incident") && listing.contains("2 dead letter(s)"),
        "{listing}"
    );
    let other_tenant =
        String::from_utf8_lossy(&cli(&pipeline, &["dlq", "list", "--tenant", "globex"]).stdout)
            .into_owned();
    assert!(other_tenant.contains("0 dead letter(s)"), "{other_tenant}");

    let dry = dlq::replay(&pipeline.settings, Some("acme"), true, false)
        .await
        .unwrap();
    assert!(dry
        .iter()
        .all(|(_, outcome)| *outcome == ReplayOutcome::WouldReplay));
    let replayed = dlq::replay(&pipeline.settings, Some("acme"), false, false)
        .await
        .unwrap();
    assert_eq!(replayed.len(), 2);
    assert!(replayed
        .iter()
        .all(|(_, outcome)| *outcome == ReplayOutcome::Replayed));

    assert_eq!(
        pipeline
            .wait_for_count(filter("acme", "lost-in-incident"), 1)
            .await,
        1
    );
    eventually("the replayed one counted", || async {
        pipeline.counters("acme").await.get("login") == Some(&2)
    })
    .await;
    assert_eq!(
        pipeline.count(filter("acme", "stored-before")).await,
        1,
        "replaying a stored activity stores nothing"
    );
    assert_eq!(pipeline.count(doc! {}).await, 2);

    // A second replay skips what was replayed; the log remembers.
    let again = dlq::replay(&pipeline.settings, Some("acme"), false, false)
        .await
        .unwrap();
    assert!(again
        .iter()
        .all(|(_, outcome)| *outcome == ReplayOutcome::AlreadyReplayed));
    let shown = cli(&pipeline, &["dlq", "show", &replayed[0].0.position()]);
    assert!(shown.status.success());
    assert!(String::from_utf8_lossy(&shown.stdout).contains("dlq-error: MongoDB was on fire"));
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_rebuild_restores_the_counters_from_mongodb() {
    let pipeline = TestPipeline::spawn().await;
    for (index, activity_type) in ["view", "view", "edit"].iter().enumerate() {
        let key = format!("rebuild-{index}");
        assert_eq!(
            pipeline
                .post_activity(ACME_KEY, Some(&key), &activity("u1", activity_type))
                .await
                .status(),
            202
        );
    }
    eventually("counted", || async {
        pipeline.counters("acme").await.values().sum::<i64>() == 3
    })
    .await;
    // Redis loses and garbles the counters.
    let key = pipeline.redis_key("analytics:{acme}");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut pipeline.redis.clone())
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("ghost")
        .arg(99)
        .query_async(&mut pipeline.redis.clone())
        .await
        .unwrap();

    let output = cli(&pipeline, &["analytics", "rebuild", "--tenant", "acme"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("acme: 3 activities (edit=1, view=2)"));
    let counters = pipeline.counters("acme").await;
    assert_eq!(
        counters.into_iter().collect::<Vec<_>>(),
        [("edit".to_owned(), 1), ("view".to_owned(), 2)]
    );
    pipeline.stop().await;
}

/// A webhook receiver: every request body, as JSON, into a channel.
async fn webhook() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let read = socket.read(&mut chunk).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&buffer).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|line| {
                                line.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            let _ = sender.send(serde_json::from_str(&body[..length]).unwrap());
                            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_raise_one_grouped_alert_per_class_and_window() {
    let (url, mut alerts) = webhook().await;
    let pipeline = TestPipeline::spawn_with(&[
        format!("alerts.webhook_url={url}"),
        "alerts.window_secs=2".to_owned(),
    ])
    .await;
    let topic = pipeline.settings.kafka.topic.clone();
    for _ in 0..3 {
        pipeline
            .produce_raw(&topic, Some("acme"), Some(b"garbage"), &[])
            .await;
    }
    let first = tokio::time::timeout(Duration::from_secs(20), alerts.recv())
        .await
        .expect("an alert")
        .unwrap();
    let text = first["text"].as_str().unwrap();
    assert!(
        text.contains("a record was dead-lettered (class `poison`)"),
        "{text}"
    );
    let summary = tokio::time::timeout(Duration::from_secs(20), alerts.recv())
        .await
        .expect("a summary")
        .unwrap();
    let text = summary["text"].as_str().unwrap();
    assert!(
        text.contains("2 more record(s) dead-lettered (class `poison`)"),
        "{text}"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(3), alerts.recv())
            .await
            .is_err(),
        "no more messages"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_answers_garbage_with_a_precise_message() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let bad_position = cli(&pipeline, &["dlq", "show", "three:four"]);
    assert_eq!(bad_position.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_position.stderr).contains("is not a non-negative number"));

    let missing = cli(&pipeline, &["dlq", "show", "0:999999"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dead letter at 0:999999"));

    let bad_config = cli(
        &pipeline,
        &["--set", "kafka.partitions=zero", "topics", "create"],
    );
    assert_eq!(bad_config.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_config.stderr).contains("partitions"));

    let bad_stage = cli(&pipeline, &["consume", "--stage", "sideways"]);
    assert_eq!(bad_stage.status.code(), Some(2));

    let bad_tenant = cli(
        &pipeline,
        &["analytics", "rebuild", "--tenant", "Not A Tenant"],
    );
    assert_eq!(bad_tenant.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_tenant.stderr).contains("invalid tenant id"));

    let created = cli(&pipeline, &["topics", "create"]);
    assert!(created.status.success());
    let listing = String::from_utf8_lossy(&created.stdout);
    assert!(
        listing.lines().all(|line| line.starts_with("exists")),
        "topics already exist: {listing}"
    );
    assert_eq!(
        listing.lines().count(),
        5,
        "main, 3 retry steps, DLQ: {listing}"
    );
    pipeline.stop().await;
}

#[test]
fn check_config_refuses_two_tenants_sharing_one_key_naming_both() {
    // The dev profile's acme digest, configured a second time for another tenant.
    let acme_digest = "8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873";
    let output = Command::new(env!("CARGO_BIN_EXE_activity-pipeline"))
        .arg("--config")
        .arg(dev_config())
        .arg("--set")
        .arg(format!("tenants.initech.api_key_sha256={acme_digest}"))
        .arg("check-config")
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tenants.initech.api_key_sha256")
            && stderr.contains("`acme`")
            && stderr.contains("`initech`"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(acme_digest),
        "the digest is not echoed: {stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing was checked as fine");
}
