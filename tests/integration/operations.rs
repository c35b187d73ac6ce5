//! Operations endpoints: readiness, Prometheus metrics (linted by promtool), the OpenAPI document
//! held to the registered routes, and graceful shutdown of the real binary.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{activity, load_settings, test_overrides, TestPipeline, ACME_KEY};
use crate::sse_client::SseClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let pipeline = TestPipeline::spawn().await;
    let (status, body) = pipeline.get_json("", "/healthz").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = pipeline.get_json("", "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(
        body["checks"],
        json!({"kafka": "ok", "redis": "ok", "mongodb": "ok"})
    );
    pipeline.stop().await;
}

/// promtool, from PATH or where scripts/install-promtool.sh puts it. Missing is a failure, not a
/// skip: `make test` installs it.
fn promtool() -> PathBuf {
    if let Ok(path) = std::env::var("AP_PROMTOOL") {
        return PathBuf::from(path);
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|candidate| candidate.is_file())
    }) {
        return found;
    }
    let cache = std::env::var("AP_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME is set"))
                .join(".cache/activity-pipeline")
        });
    let cached = cache.join("bin/promtool");
    assert!(
        cached.is_file(),
        "promtool is missing: run scripts/install-build-deps.sh (or set AP_PROMTOOL)"
    );
    cached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_count_what_happened() {
    let pipeline = TestPipeline::spawn().await;
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, None, &activity("u", "login"))
            .await
            .status(),
        202
    );
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, None, &json!({"actorId": "u"}))
            .await
            .status(),
        400
    );
    let (status, _) = pipeline.get_json(ACME_KEY, "/activities/some-key").await;
    assert_eq!(status, 404);
    let (status, _) = pipeline.get_json(ACME_KEY, "/no/such/path").await;
    assert_eq!(status, 404);
    let stream = SseClient::open(&pipeline.address, ACME_KEY, None).await;

    let response = pipeline
        .http
        .get(format!("{}/metrics", pipeline.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    for expected in [
        "activity_pipeline_http_requests_total{method=\"POST\",route=\"/activities\",status=\"202\"} 1",
        "activity_pipeline_http_requests_total{method=\"POST\",route=\"/activities\",status=\"400\"} 1",
        "activity_pipeline_http_requests_total{method=\"GET\",route=\"/activities/{idempotencyKey}\",status=\"404\"} 1",
        "activity_pipeline_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1",
        "activity_pipeline_http_request_duration_seconds_count{method=\"POST\",route=\"/activities\",status=\"202\"} 1",
        "activity_pipeline_produce_duration_seconds_count{outcome=\"acked\"} 1",
        "activity_pipeline_rejected_total{reason=\"invalid\"} 1",
        "activity_pipeline_sse_clients 1",
        "activity_pipeline_producer_queue_depth ",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    drop(stream);

    let mut lint = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = lint.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes_and_every_operation_answers() {
    let pipeline = TestPipeline::spawn().await;
    let (status, document) = pipeline.get_json("", "/openapi.json").await;
    assert_eq!(status, 200);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(document, activity_pipeline::produce::openapi_document());

    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, operations)| {
            operations
                .as_object()
                .unwrap()
                .keys()
                .map(move |method| (path.clone(), method.to_uppercase()))
        })
        .collect();
    let registered: BTreeSet<(String, String)> = activity_pipeline::produce::registered_routes()
        .into_iter()
        .flat_map(|(path, methods)| {
            methods
                .into_iter()
                .map(move |method| (path.clone(), method))
        })
        .collect();
    assert_eq!(documented, registered, "the document and the routes agree");

    // Every documented operation is served: neither 404 for the path nor 405 for the method.
    for (path, method) in &documented {
        let url = format!(
            "{}{}",
            pipeline.address,
            path.replace("{idempotencyKey}", "probe")
        );
        let request = pipeline
            .http
            .request(method.parse().unwrap(), &url)
            .bearer_auth(ACME_KEY)
            .json(&json!({"activities": [activity("u", "t")]}));
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        assert_ne!(status, 405, "{method} {path}");
        if status == 404 {
            let body: Value = response.json().await.unwrap();
            assert_ne!(body["error"], "Not found", "{method} {path} is not routed");
        }
    }

    // The activity body is the JSON Schema itself, with its definitions resolvable in the document.
    let activity_schema = &document["components"]["schemas"]["Activity"];
    assert_eq!(
        activity_schema["required"],
        json!(["actorId", "actorName", "type"])
    );
    assert_eq!(
        activity_schema["properties"]["metadata"]["propertyNames"]["$ref"],
        "#/components/schemas/storableKey"
    );
    assert!(document["components"]["schemas"]["storableKey"].is_object());
    assert_eq!(
        document["paths"]["/activities"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/Activity"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_on_read_routes_get_405_with_allow() {
    let pipeline = TestPipeline::spawn().await;
    for (method, path, allow) in [
        ("DELETE", "/activities", "POST, GET"),
        ("PUT", "/activities/some-key", "GET"),
        ("GET", "/activities/batch", "POST"),
        ("POST", "/activities/stream", "GET"),
        ("POST", "/analytics", "GET"),
        ("POST", "/metrics", "GET"),
        ("DELETE", "/openapi.json", "GET"),
    ] {
        let response = pipeline
            .http
            .request(
                method.parse().unwrap(),
                format!("{}{path}", pipeline.address),
            )
            .bearer_auth(ACME_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["success"], false);
    }
    pipeline.stop().await;
}

/// The real binary: SIGTERM ends open streams, lets an in-flight request finish, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_cleanly() {
    let (mut child, port) = spawn_produce_binary().await;
    let address = format!("http://127.0.0.1:{port}");
    let mut stream = SseClient::open(&address, ACME_KEY, None).await;
    let (mut connection, tail) = start_in_flight_request(port).await;

    send_sigterm(&child);
    assert!(
        stream.ends_within(Duration::from_secs(10)).await,
        "SIGTERM ends open streams"
    );

    connection.write_all(tail.as_bytes()).unwrap();
    let mut answer = String::new();
    connection
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    connection.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 202"),
        "the in-flight request finished: {answer}"
    );

    let (status, log) = wait_for_exit(&mut child).await;
    assert!(status.success(), "exit status {status}: {log}");
}

/// The real binary: a second SIGTERM while the first one's drain waits for an in-flight request
/// exits at once with 130, as `consume` does (the request was never answered 202, so nothing
/// acknowledged is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_the_binary_without_waiting_for_the_drain() {
    let (mut child, port) = spawn_produce_binary().await;
    let address = format!("http://127.0.0.1:{port}");
    let mut stream = SseClient::open(&address, ACME_KEY, None).await;
    // Never completed: the graceful drain would wait for it until `http.shutdown_timeout_secs`.
    let (_connection, _tail) = start_in_flight_request(port).await;

    send_sigterm(&child);
    // The streams end once the first signal was handled, so the second is not taken for it.
    assert!(
        stream.ends_within(Duration::from_secs(10)).await,
        "SIGTERM ends open streams"
    );
    send_sigterm(&child);

    let (status, log) = wait_for_exit(&mut child).await;
    assert_eq!(
        status.code(),
        Some(130),
        "the second signal exits at once: {status}: {log}"
    );
}

/// Starts `activity-pipeline produce` on a free port with this test's topic, database and prefix,
/// and waits until it serves.
async fn spawn_produce_binary() -> (std::process::Child, u16) {
    let settings = load_settings(&test_overrides(&[]));
    activity_pipeline::kafka::create_topics(&settings.kafka, &settings.topic_names())
        .await
        .expect("topics are created");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_activity-pipeline"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/dev.toml"),
        ])
        .args(["--set", &format!("kafka.topic={}", settings.kafka.topic)])
        .args([
            "--set",
            &format!("mongo.database={}", settings.mongo.database),
        ])
        .args([
            "--set",
            &format!("redis.key_prefix={}", settings.redis.key_prefix),
        ])
        .args(["--set", "log.filter=warn", "--set", "http.workers=1"])
        .args(["produce", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let address = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{address}/healthz")).await.is_err() {
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the binary never served");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, port)
}

/// An in-flight request: headers and half the body sent. Returns the connection and the rest of the
/// body, once the server has the request.
async fn start_in_flight_request(port: u16) -> (std::net::TcpStream, String) {
    let body = activity("u", "login").to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let mut connection = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        connection,
        "POST /activities HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ACME_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
        body.len()
    )
    .unwrap();
    connection.flush().unwrap();
    // The server has the request once it answers anything on another connection after it.
    assert_eq!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    (connection, tail.to_owned())
}

fn send_sigterm(child: &std::process::Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

/// Waits for the binary to exit (killing it if it does not within 30 s) and returns its status and
/// its standard error.
async fn wait_for_exit(child: &mut std::process::Child) -> (std::process::ExitStatus, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the binary did not exit");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    (status, log)
}
