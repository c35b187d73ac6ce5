//! Several datacenters on the shared stack: two topics on the one Kafka stand in for a datacenter's
//! local topic and the topic MirrorMaker 2 mirrors into it from another (the two-datacenter stack,
//! `make dc-up`, runs the real MirrorMaker 2; this keeps the consumer's side in `make test`). East is
//! an API whose topic west's consumer reads as mirrored: whatever east accepts must be stored in
//! west once, with east as its origin, next to what west accepted itself.

use mongodb::bson::doc;

use crate::helpers::{activity, eventually, filter, TestApi, TestPipeline, ACME_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_accepted_in_another_datacenter_is_stored_once_with_its_origin() {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let east_topic = format!("it-{}.east.activities", &id[id.len() - 12..]);
    let east = TestApi::spawn(
        &[
            "dc.name=east".to_owned(),
            format!("kafka.topic={east_topic}"),
        ],
        true,
    )
    .await;
    let west = TestPipeline::spawn_with(&[
        "dc.name=west".to_owned(),
        format!(r#"kafka.mirrored_topics=["{east_topic}"]"#),
    ])
    .await;

    let accepted_in_east = activity("u-east", "login");
    let accepted_in_west = activity("u-west", "logout");
    let accepted_in_both = activity("u-both", "share");
    for (response, what) in [
        (
            east.post_activity(ACME_KEY, Some("k-east"), &accepted_in_east)
                .await,
            "east's own",
        ),
        (
            west.post_activity(ACME_KEY, Some("k-west"), &accepted_in_west)
                .await,
            "west's own",
        ),
        // A client that failed over and resent the same activity under the same key.
        (
            east.post_activity(ACME_KEY, Some("k-both"), &accepted_in_both)
                .await,
            "the failed-over one, in east",
        ),
        (
            west.post_activity(ACME_KEY, Some("k-both"), &accepted_in_both)
                .await,
            "the failed-over one, in west",
        ),
    ] {
        assert_eq!(response.status(), 202, "{what}");
    }

    assert_eq!(
        west.wait_for_count(doc! {"tenantId": "acme"}, 3).await,
        3,
        "west stores its own activity, east's, and the one accepted in both once"
    );
    let origin_of = |key: &'static str| {
        let west = &west;
        async move {
            let stored = west
                .activities()
                .find_one(filter("acme", key))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{key} is stored in west"));
            stored
                .get_str("originDc")
                .map(str::to_owned)
                .unwrap_or_else(|_| panic!("{key} has no originDc: {stored}"))
        }
    };
    assert_eq!(origin_of("k-east").await, "east");
    assert_eq!(origin_of("k-west").await, "west");
    let both = origin_of("k-both").await;
    assert!(both == "east" || both == "west", "k-both: {both}");
    assert_eq!(west.count(filter("acme", "k-both")).await, 1);
    // Readers see where each activity was accepted.
    let (status, body) = west.get_json(ACME_KEY, "/activities/k-east").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["activity"]["originDc"], "east", "{body}");

    // Counted once each, whichever datacenter accepted it.
    let counters = west.counters("acme").await;
    for activity_type in ["login", "logout", "share"] {
        assert_eq!(
            counters.get(activity_type),
            Some(&1),
            "{activity_type}: {counters:?}"
        );
    }
    assert!(
        west.dead_letters().await.is_empty(),
        "nothing is a failure here"
    );
    east.stop().await;
    west.stop().await;
}

/// MirrorMaker 2 creates a mirrored topic when it first sees its source, which may be after the
/// consumer subscribed (a new datacenter, or the consumer started first): the consumer must notice
/// it within seconds, not at librdkafka's default metadata refresh (5 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_topic_created_after_the_consumer_subscribed_is_read() {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let east_topic = format!("it-{}.east.activities", &id[id.len() - 12..]);
    let west = TestPipeline::spawn_with(&[
        "dc.name=west".to_owned(),
        format!(r#"kafka.mirrored_topics=["{east_topic}"]"#),
    ])
    .await;
    // Only now does the mirrored topic exist.
    let east = TestApi::spawn(
        &[
            "dc.name=east".to_owned(),
            format!("kafka.topic={east_topic}"),
        ],
        true,
    )
    .await;
    let response = east
        .post_activity(ACME_KEY, Some("k-late"), &activity("u-late", "login"))
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        west.wait_for_count(filter("acme", "k-late"), 1).await,
        1,
        "west reads the mirrored topic that appeared after it subscribed (within 60 s)"
    );
    east.stop().await;
    west.stop().await;
}

/// The console's overview samples each mirrored topic as a backlog of the main stage's group: a
/// mirror that delivers a burst while the consumer is stopped shows there, not hidden in `main`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_backlog_of_each_mirrored_topic() {
    use crate::console::{TestConsole, VIEWER_TOKEN};

    let id = uuid::Uuid::now_v7().simple().to_string();
    let east_topic = format!("it-{}.east.activities", &id[id.len() - 12..]);
    let east = TestApi::spawn(
        &[
            "dc.name=east".to_owned(),
            format!("kafka.topic={east_topic}"),
        ],
        true,
    )
    .await;
    // No consumer runs in west: what east accepts waits in the mirrored topic.
    let west = TestPipeline::spawn_api_only(&[
        "dc.name=west".to_owned(),
        format!(r#"kafka.mirrored_topics=["{east_topic}", "^it-nothing-[0-9]+$"]"#),
    ])
    .await;
    let console = TestConsole::spawn(&west).await;
    for n in 0..5 {
        let response = east
            .post_activity(ACME_KEY, Some(&format!("k-{n}")), &activity("u", "login"))
            .await;
        assert_eq!(response.status(), 202);
    }
    let mirrored_stage = format!("main:{east_topic}");
    let stage_of = |overview: &serde_json::Value, name: &str| {
        overview["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|stage| stage["stage"] == name)
            .cloned()
    };
    eventually("the mirrored topic's backlog reaches 5", || async {
        let (_, overview) = console
            .get(Some(VIEWER_TOKEN), "/console/api/overview")
            .await;
        stage_of(&overview, &mirrored_stage).and_then(|stage| stage["backlog"].as_i64()) == Some(5)
    })
    .await;
    let (_, overview) = console
        .get(Some(VIEWER_TOKEN), "/console/api/overview")
        .await;
    let stages: Vec<&str> = overview["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| stage["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "main",
            mirrored_stage.as_str(),
            "retry.1",
            "retry.2",
            "retry.3",
            "dlq"
        ],
        "a pattern is not sampled"
    );
    let mirrored = stage_of(&overview, &mirrored_stage).unwrap();
    assert_eq!(mirrored["topic"], east_topic.as_str());
    assert_eq!(mirrored["group"], west.settings.kafka.consumer_group);
    assert_eq!(
        stage_of(&overview, "main").unwrap()["backlog"],
        0,
        "west's own topic holds nothing"
    );
    console.stop();
    east.stop().await;
    west.stop().await;
}
