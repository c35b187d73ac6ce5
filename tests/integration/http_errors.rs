use serde_json::{json, Value};

use crate::helpers::{activity, TestPipeline, ACME_KEY};

async fn error_of(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("errors are JSON");
    assert_eq!(body["success"], false);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|error| !error.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses_and_the_service_keeps_running() {
    let pipeline = TestPipeline::spawn_with(&["http.max_body_bytes=2048".to_owned()]).await;
    let url = format!("{}/activities", pipeline.address);
    let http = &pipeline.http;

    // 401: no key, malformed header, unknown key.
    let body = error_of(
        http.post(&url)
            .json(&activity("u", "t"))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert!(body["error"].as_str().unwrap().contains("Missing API key"));
    error_of(
        http.post(&url)
            .header("Authorization", "Basic abc")
            .json(&activity("u", "t"))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let body = error_of(
        pipeline
            .post_activity("not-a-key", None, &activity("u", "t"))
            .await,
        401,
    )
    .await;
    assert_eq!(body["error"], "Unknown API key");

    // 403: a tenant header that is not the key's tenant.
    let response = http
        .post(&url)
        .bearer_auth(ACME_KEY)
        .header("X-Tenant-Id", "globex")
        .json(&activity("u", "t"))
        .send()
        .await
        .unwrap();
    error_of(response, 403).await;

    // 400: the seed's missing-fields message, with details per field.
    let body = error_of(
        pipeline
            .post_activity(ACME_KEY, None, &json!({"actorId": "u"}))
            .await,
        400,
    )
    .await;
    assert_eq!(body["error"], "Missing required fields: actorName, type");
    assert_eq!(body["details"].as_array().unwrap().len(), 2);
    let body = error_of(
        pipeline
            .post_activity(
                ACME_KEY,
                None,
                &json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": {"$where": 1}}),
            )
            .await,
        400,
    )
    .await;
    assert!(
        body["details"][0]["field"]
            .as_str()
            .unwrap()
            .starts_with("/metadata"),
        "{body}"
    );
    let response = http
        .post(&url)
        .bearer_auth(ACME_KEY)
        .header("Content-Type", "application/json")
        .body("{\"actorId\": ")
        .send()
        .await
        .unwrap();
    let body = error_of(response, 400).await;
    assert!(body["error"].as_str().unwrap().contains("not valid JSON"));
    let body = error_of(
        pipeline
            .post_activity(ACME_KEY, Some("has space"), &activity("u", "t"))
            .await,
        400,
    )
    .await;
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("X-Idempotency-Key"));

    // 415: not JSON.
    let response = http
        .post(&url)
        .bearer_auth(ACME_KEY)
        .header("Content-Type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    error_of(response, 415).await;

    // 413: over http.max_body_bytes (2048 here).
    let big = json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": {"blob": "x".repeat(4096)}});
    let body = error_of(pipeline.post_activity(ACME_KEY, None, &big).await, 413).await;
    assert!(body["error"].as_str().unwrap().contains("2048"));

    // 404 and 405.
    error_of(
        http.get(format!("{}/nope", pipeline.address))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let response = http.delete(&url).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "POST, GET");
    error_of(response, 405).await;

    // Still serving, and nothing of the above was stored.
    let health: Value = http
        .get(format!("{}/healthz", pipeline.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, Some("the-good-one"), &activity("u", "t"))
            .await
            .status(),
        202
    );
    assert_eq!(pipeline.wait_for_count(mongodb::bson::doc! {}, 1).await, 1);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        pipeline.count(mongodb::bson::doc! {}).await,
        1,
        "only the valid activity is stored"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_published() {
    let pipeline = TestPipeline::spawn().await;
    let response = pipeline
        .http
        .get(format!("{}/schemas/activity.v1.json", pipeline.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let schema: Value = response.json().await.unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["required"], json!(["actorId", "actorName", "type"]));
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_built_to_fail_everywhere_gets_a_small_400_and_the_service_keeps_answering() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let body_with = |metadata: serde_json::Map<String, Value>| json!({"actorId": "u", "actorName": "A", "type": "t", "metadata": metadata});

    // 20,000 values FerretDB would refuse (an array in an array): ~250 KB, under
    // http.max_body_bytes. Walked and described one by one, this was a 400 of ~2.6 MB.
    let metadata = (0..20_000)
        .map(|n| (format!("k{n}"), json!([[n]])))
        .collect();
    let response = pipeline
        .post_activity(ACME_KEY, None, &body_with(metadata))
        .await;
    assert_eq!(response.status(), 400);
    let answer = response.bytes().await.unwrap();
    assert!(answer.len() < 2048, "a {} byte answer", answer.len());
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["details"].as_array().unwrap().len(), 1);
    assert_eq!(answer["details"][0]["rule"], "maxBytes", "{answer}");

    // Under the size limit, 1,000 keys MongoDB would refuse: 20 described, the rest counted.
    let metadata = (0..1000).map(|n| (format!("${n}"), json!(n))).collect();
    let response = pipeline
        .post_activity(ACME_KEY, None, &body_with(metadata))
        .await;
    assert_eq!(response.status(), 400);
    let answer = response.bytes().await.unwrap();
    assert!(answer.len() < 16 * 1024, "a {} byte answer", answer.len());
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["details"].as_array().unwrap().len(), 20, "{answer}");
    assert_eq!(answer["detailsOmitted"], 980, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .ends_with("(and 980 more)"),
        "{answer}"
    );

    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, None, &activity("u", "t"))
            .await
            .status(),
        202,
        "the service keeps answering"
    );
    pipeline.stop().await;
}
