//! `topics create` (settings applied, drift reconciled or reported with `--check`) and `dlq purge`.

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::Duration;

use activity_pipeline::kafka::{describe_topic_configs, topic_configs, TopicConfigValue};
use activity_pipeline::ops::dlq::{self, ReplayOutcome};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::helpers::{
    activity, dev_config, eventually, load_settings, test_overrides, TestPipeline,
};

/// Runs the binary with the dev config, `overrides` as `--set` flags, then `args`.
fn cli(overrides: &[String], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_activity-pipeline"));
    command.arg("--config").arg(dev_config());
    for flag in overrides {
        command.arg("--set").arg(flag);
    }
    command.args(args).output().expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn configs(
    settings: &activity_pipeline::config::Settings,
    topic: &str,
) -> HashMap<String, TopicConfigValue> {
    describe_topic_configs(&settings.kafka, topic)
        .await
        .expect("the topic's configs are described")
}

fn value<'a>(configs: &'a HashMap<String, TopicConfigValue>, name: &str) -> (&'a str, bool) {
    let config = &configs[name];
    (config.value.as_deref().unwrap_or("-"), config.set_on_topic)
}

fn partition_count(settings: &activity_pipeline::config::Settings, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0].partitions().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_with_the_configured_retention_and_min_insync_replicas() {
    let overrides = test_overrides(&[
        "kafka.topic_retention_ms=172800000".to_owned(),
        "kafka.retry_topic_retention_ms=7200000".to_owned(),
    ]);
    let settings = load_settings(&overrides);
    let created = cli(&overrides, &["topics", "create"]);
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(
        stdout(&created).contains(&format!(
            "created {} (3 partitions, min.insync.replicas=1, retention.ms=-1)",
            settings.kafka.dlq_topic
        )),
        "{}",
        stdout(&created)
    );

    for (topic, retention) in [
        (settings.kafka.topic.clone(), "172800000"),
        (settings.kafka.retry_topic_for(1), "7200000"),
        (settings.kafka.retry_topic_for(3), "7200000"),
        (settings.kafka.dlq_topic.clone(), "-1"),
    ] {
        let described = configs(&settings, &topic).await;
        // Set on the topic itself, so a broker default changed later does not change them.
        assert_eq!(
            value(&described, topic_configs::RETENTION_MS),
            (retention, true),
            "{topic}"
        );
        assert_eq!(
            value(&described, topic_configs::MIN_INSYNC_REPLICAS),
            ("1", true),
            "{topic}"
        );
    }

    let again = cli(&overrides, &["topics", "create", "--check"]);
    assert_eq!(again.status.code(), Some(0), "{}", stdout(&again));
    assert!(
        stdout(&again).contains("as configured"),
        "{}",
        stdout(&again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_reported_by_check_and_reconciled_by_create_keeping_other_configs() {
    let overrides = test_overrides(&[]);
    let settings = load_settings(&overrides);
    let dlq_topic = settings.kafka.dlq_topic.clone();
    assert!(cli(&overrides, &["topics", "create"]).status.success());

    // Someone (or the broker's defaults, before this existed) left the DLQ at 7 days, and set a
    // config of their own that `topics create` does not own.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .create()
        .unwrap();
    let drifted = AlterConfig::new(ResourceSpecifier::Topic(&dlq_topic))
        .set(topic_configs::RETENTION_MS, "604800000")
        .set(topic_configs::MIN_INSYNC_REPLICAS, "1")
        .set("max.message.bytes", "2000000");
    let results = admin
        .alter_configs(&[drifted], &AdminOptions::new())
        .await
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    eventually("the drift is visible", || async {
        value(
            &configs(&settings, &dlq_topic).await,
            topic_configs::RETENTION_MS,
        )
        .0 == "604800000"
    })
    .await;

    // --check reports the drift (and a partition count it would never change), changes nothing.
    let mut wider = overrides.clone();
    wider.push("kafka.partitions=4".to_owned());
    let check = cli(&wider, &["topics", "create", "--check"]);
    assert_eq!(check.status.code(), Some(3), "{}", stderr(&check));
    let report = stdout(&check);
    assert!(
        report.contains("retention.ms: have 604800000, want -1 (drift)"),
        "{report}"
    );
    assert!(
        report.contains("partitions: have 3, want 4, not changed"),
        "{report}"
    );
    assert!(stderr(&check).contains("differ from the settings"));
    assert_eq!(
        value(
            &configs(&settings, &dlq_topic).await,
            topic_configs::RETENTION_MS
        )
        .0,
        "604800000",
        "--check changes nothing"
    );

    // topics create sets the owned config, keeps the other one, and leaves the partitions.
    let apply = cli(&wider, &["topics", "create"]);
    assert!(apply.status.success(), "{}", stderr(&apply));
    assert!(
        stdout(&apply).contains("retention.ms: have 604800000, want -1 (set)"),
        "{}",
        stdout(&apply)
    );
    eventually("the DLQ keeps dead letters again", || async {
        cli(&overrides, &["topics", "create", "--check"])
            .status
            .code()
            == Some(0)
    })
    .await;
    let described = configs(&settings, &dlq_topic).await;
    assert_eq!(value(&described, topic_configs::RETENTION_MS), ("-1", true));
    assert_eq!(
        value(&described, "max.message.bytes"),
        ("2000000", true),
        "a config topics create does not own survives the reconcile"
    );
    assert_eq!(partition_count(&settings, &settings.kafka.topic), 3);
}

/// A dead letter as the consumer would have written it, failed last at `last_failure_at`.
async fn dead_letter(pipeline: &TestPipeline, tenant: &str, key: &str, last_failure_at: &str) {
    let envelope = pipeline.envelope(tenant, key, &activity("u1", "login"));
    pipeline
        .produce_raw(
            &pipeline.settings.kafka.dlq_topic,
            Some(tenant),
            Some(&envelope),
            &[
                ("idempotency-key", key),
                ("dlq-error", "it broke"),
                ("dlq-error-class", "transient"),
                ("dlq-attempts", "4"),
                ("dlq-last-failure-at", last_failure_at),
            ],
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_purge_hides_skips_and_drops_what_the_operator_selects() {
    // One partition, so the offsets below are the order of the writes.
    let pipeline = TestPipeline::spawn_api_only(&["kafka.partitions=1".to_owned()]).await;
    let overrides = &pipeline.overrides;
    let old = "2026-01-01T00:00:00Z";
    let now = chrono::Utc::now().to_rfc3339();
    for (tenant, key, at) in [
        ("acme", "old-0", old),
        ("acme", "new-1", now.as_str()),
        ("globex", "old-2", old),
        ("acme", "old-3", old),
        ("globex", "new-4", now.as_str()),
    ] {
        dead_letter(&pipeline, tenant, key, at).await;
    }

    // A dry run says what would go and changes nothing.
    let dry = cli(
        overrides,
        &[
            "dlq",
            "purge",
            "--tenant",
            "acme",
            "--older-than",
            "7d",
            "--dry-run",
        ],
    );
    assert!(dry.status.success(), "{}", stderr(&dry));
    let said = stdout(&dry);
    assert!(
        said.contains("0:0 would purge: tenant=acme key=old-0")
            && said.contains("0:3 would purge: tenant=acme key=old-3")
            && !said.contains("new-1")
            && !said.contains("old-2"),
        "{said}"
    );
    assert!(
        said.contains("would drop 1 record(s) before offset 1"),
        "{said}"
    );
    assert!(said.contains("2 dead letter(s) would be purged, 0 already purged"));
    assert_eq!(pipeline.dead_letters().await.len(), 5);
    assert!(stdout(&cli(overrides, &["dlq", "list"])).contains("5 dead letter(s)"));

    // By tenant and age: 0:0 and 0:3 are purged; 0:0 starts the partition, so it is dropped.
    let purged = cli(
        overrides,
        &[
            "dlq",
            "purge",
            "--tenant",
            "acme",
            "--older-than",
            "7d",
            "--reason",
            "fixed upstream",
        ],
    );
    assert!(purged.status.success(), "{}", stderr(&purged));
    let said = stdout(&purged);
    assert!(
        said.contains("0:0 purged: tenant=acme key=old-0")
            && said.contains("0:3 purged: tenant=acme key=old-3")
            && said.contains("dropped 1 record(s) before offset 1"),
        "{said}"
    );
    let offsets: Vec<i64> = pipeline
        .dead_letters()
        .await
        .iter()
        .map(|record| record.offset)
        .collect();
    assert_eq!(offsets, [1, 2, 3, 4], "only the purged prefix left Kafka");
    let listed = stdout(&cli(overrides, &["dlq", "list"]));
    assert!(
        listed.contains("3 dead letter(s)")
            && listed.contains("(1 purged not shown")
            && !listed.contains("old-3"),
        "{listed}"
    );
    let everything = stdout(&cli(overrides, &["dlq", "list", "--include-purged"]));
    assert!(everything.contains("key=old-3") && everything.contains("purged="));
    let shown = stdout(&cli(overrides, &["dlq", "show", "0:3"]));
    assert!(
        shown.contains("by `dlq purge` (tenant=acme older-than=7days): fixed upstream"),
        "{shown}"
    );

    // Replay leaves purged dead letters alone, even with --again.
    let replay = dlq::replay(&pipeline.settings, Some("acme"), true, true)
        .await
        .unwrap();
    let outcomes: Vec<(String, ReplayOutcome)> = replay
        .into_iter()
        .map(|(view, outcome)| (view.position(), outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("0:1".to_owned(), ReplayOutcome::WouldReplay),
            ("0:3".to_owned(), ReplayOutcome::Purged)
        ]
    );
    let replay_cli = stdout(&cli(
        overrides,
        &["dlq", "replay", "--tenant", "acme", "--dry-run"],
    ));
    assert!(
        replay_cli.contains("0:3 skipped (purged with `dlq purge`)"),
        "{replay_cli}"
    );

    // By position (a comma list): with 0:3 purged before, 0:1..0:3 are one purged prefix now.
    let by_position = cli(overrides, &["dlq", "purge", "--position", "0:1,0:2"]);
    assert!(by_position.status.success(), "{}", stderr(&by_position));
    assert!(
        stdout(&by_position).contains("dropped 3 record(s) before offset 4"),
        "{}",
        stdout(&by_position)
    );
    let remaining: Vec<i64> = pipeline
        .dead_letters()
        .await
        .iter()
        .map(|record| record.offset)
        .collect();
    assert_eq!(remaining, [4]);

    // A position that is not (or no longer) there: a precise error, nothing purged.
    let gone = cli(
        overrides,
        &["dlq", "purge", "--position", "0:2", "--position", "0:4"],
    );
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).contains("no dead letter at 0:2") && stderr(&gone).contains("nothing purged"),
        "{}",
        stderr(&gone)
    );
    assert!(stdout(&cli(overrides, &["dlq", "list"])).contains("key=new-4"));
    assert_eq!(pipeline.dead_letters().await.len(), 1, "0:4 is still there");
    pipeline.stop().await;
}

#[test]
fn purge_and_topics_refuse_garbage_with_exit_2() {
    let overrides = test_overrides(&[]);
    for (args, expected) in [
        (&["dlq", "purge"][..], "--tenant"),
        (&["dlq", "purge", "--dry-run"][..], "--older-than"),
        (
            &["dlq", "purge", "--position", "3"][..],
            "<partition>:<offset>",
        ),
        (&["dlq", "purge", "--position", "0:1,x:2"][..], "\"x\""),
        (&["dlq", "purge", "--older-than", "7"][..], "like 7d"),
        (&["dlq", "purge", "--older-than", "0s"][..], "longer than 0"),
        (&["dlq", "purge", "--all", "--tenant", "acme"][..], "--all"),
        (&["dlq", "purge", "--tenant", "Not A Tenant"][..], "tenant"),
        (
            &["dlq", "purge", "--all", "--frobnicate"][..],
            "--frobnicate",
        ),
        (&["topics", "create", "--chek"][..], "--chek"),
    ] {
        let output = cli(&overrides, args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let mut bad = overrides.clone();
    bad.push("kafka.dlq_topic_retention_ms=1000".to_owned());
    let output = cli(&bad, &["topics", "create", "--check"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("kafka.dlq_topic_retention_ms"));
}
