//! Kafka that cannot take records: 503 with Retry-After within the configured time, never 202.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{activity, metrics_text, TestApi, ACME_KEY};

fn unreachable_broker(extra: &[&str]) -> Vec<String> {
    let mut settings = vec![
        // Nothing listens on port 1: the broker never acknowledges.
        "kafka.brokers=127.0.0.1:1".to_owned(),
        "kafka.delivery_timeout_ms=1000".to_owned(),
        "readiness.timeout_ms=1000".to_owned(),
    ];
    settings.extend(extra.iter().map(|setting| setting.to_string()));
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_gets_503_with_retry_after_and_never_202() {
    let api = TestApi::spawn(&unreachable_broker(&[]), false).await;

    let started = Instant::now();
    let response = api
        .post_activity(ACME_KEY, Some("never-acked"), &activity("u1", "login"))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(
        elapsed < Duration::from_secs(10),
        "answered within the delivery timeout plus margin, took {elapsed:?}"
    );
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], false);
    assert!(body["error"].as_str().unwrap().contains("Kafka"), "{body}");

    // A retry is not mistaken for a duplicate: no marker was set for an unacknowledged record.
    let retry = api
        .post_activity(ACME_KEY, Some("never-acked"), &activity("u1", "login"))
        .await;
    assert_eq!(retry.status(), 503);

    // A batch: no item accepted, so 503, each item saying why.
    let response = api
        .post_batch(
            ACME_KEY,
            &json!({"activities": [activity("u1", "a"), activity("u2", "b"), {"actorId": "bad"}]}),
        )
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["unavailable"], 2);
    assert_eq!(body["invalid"], 1);
    let statuses: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| result["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 503, 400]);

    // Readiness names Kafka.
    let response = api
        .http
        .get(format!("{}/readyz", api.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "not ready: kafka", "{body}");
    assert_eq!(body["checks"]["redis"], "ok");
    assert_eq!(body["checks"]["mongodb"], "ok");

    // Metrics saw it: no record acknowledged, three not.
    let metrics = metrics_text(&api.http, &api.address).await;
    assert!(!metrics.contains("outcome=\"acked\""), "{metrics}");
    assert!(metrics.contains(
        "activity_pipeline_produce_duration_seconds_count{outcome=\"not_acknowledged\"} 4"
    ));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_is_refused_at_once() {
    let api = TestApi::spawn(
        &unreachable_broker(&[
            "kafka.queue_max_messages=1",
            "kafka.delivery_timeout_ms=5000",
        ]),
        false,
    )
    .await;
    // The first item takes the only place in the queue and waits for an ack that never comes; the
    // others find the queue full.
    let started = Instant::now();
    let response = api
        .post_batch(
            ACME_KEY,
            &json!({"activities": [activity("u1", "a"), activity("u2", "a"), activity("u3", "a")]}),
        )
        .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    let errors: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| result["error"].as_str().unwrap())
        .collect();
    assert!(!errors[0].contains("queue is full"), "{errors:?}");
    assert!(errors[1].contains("queue is full") && errors[2].contains("queue is full"));

    // Two single requests at once: one takes the place and waits out the delivery timeout, the
    // other finds the queue full and is refused at once.
    let ask = |actor: &'static str| {
        let address = api.address.clone();
        tokio::spawn(async move {
            let asked = Instant::now();
            let response = reqwest::Client::new()
                .post(format!("{address}/activities"))
                .bearer_auth(ACME_KEY)
                .json(&activity(actor, "a"))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (
                status,
                body["error"].as_str().unwrap().to_owned(),
                asked.elapsed(),
            )
        })
    };
    let (first, second) = (ask("u4"), ask("u5"));
    let mut answers = vec![first.await.unwrap(), second.await.unwrap()];
    answers.sort_by_key(|(_, _, elapsed)| *elapsed);
    assert!(
        answers.iter().all(|(status, ..)| *status == 503),
        "{answers:?}"
    );
    let (_, error, quick) = &answers[0];
    assert!(error.contains("queue is full"), "{answers:?}");
    assert!(
        *quick < Duration::from_secs(2),
        "queue full answered in {quick:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    api.stop().await;
}
