//! Console login sessions kept in Redis: shared by every console instance of one settings tree,
//! surviving a restart, ended everywhere by a logout, checked against the operator directory on
//! every request, bounded per operator, and a 503 (not a 401) for a cookie while Redis is away,
//! when bearer tokens still work.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use activity_pipeline::store::RedisStore;

use crate::console::{TestConsole, ADMIN_TOKEN, VIEWER_TOKEN};
use crate::helpers::{eventually, load_settings, test_overrides, TestPipeline};

const PREVIEW_EVERYTHING: &str = r#"{"all": true, "dryRun": true}"#;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in through the JSON API: the session cookie (`name=value`) and the session's CSRF token.
async fn json_log_in(console: &TestConsole, token: &str) -> (String, String) {
    let response = client()
        .post(console.url("/console/api/session"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let cookie = session_cookie_of(&response).expect("a session cookie");
    let body: Value = response.json().await.unwrap();
    (cookie, body["csrfToken"].as_str().unwrap().to_owned())
}

/// The `ap_console_session=<id>` a response set, if it set one.
fn session_cookie_of(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap())
        .find(|value| value.starts_with("ap_console_session=") && !value.contains("=;"))
        .map(|value| value.split(';').next().unwrap().to_owned())
}

/// `GET /console/api/session` with a session cookie: status and body.
async fn session_of(console: &TestConsole, cookie: &str) -> (u16, Value) {
    let response = client()
        .get(console.url("/console/api/session"))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A replay preview of everything with a session cookie and a CSRF token: status and body.
async fn preview_with_session(console: &TestConsole, cookie: &str, csrf: &str) -> (u16, Value) {
    let response = client()
        .post(console.url("/console/api/dead-letters/replay"))
        .header("Cookie", cookie)
        .header("X-CSRF-Token", csrf)
        .header("Content-Type", "application/json")
        .body(PREVIEW_EVERYTHING)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A replay preview of everything with a bearer token and a CSRF token.
async fn preview_with_bearer(console: &TestConsole, token: &str, csrf: &str) -> (u16, Value) {
    let response = client()
        .post(console.url("/console/api/dead-letters/replay"))
        .bearer_auth(token)
        .header("X-CSRF-Token", csrf)
        .header("Content-Type", "application/json")
        .body(PREVIEW_EVERYTHING)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The Redis key (without the test's prefix) of the session whose cookie is `cookie`.
fn session_key(cookie: &str) -> String {
    let id = cookie.strip_prefix("ap_console_session=").unwrap();
    format!(
        "console:session:{{console}}:{}",
        hex::encode(Sha256::digest(id.as_bytes()))
    )
}

fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The overrides that configure operator `itop` with `role` and the token `token`.
fn test_operator(role: &str, token: &str) -> Vec<String> {
    vec![
        format!("operators.itop.token_sha256={}", sha256_hex(token)),
        format!("operators.itop.role={role}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_on_one_console_works_on_another_and_a_logout_ends_it_on_both() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console_a = TestConsole::spawn(&pipeline).await;
    let console_b = TestConsole::spawn(&pipeline).await;

    // The login form fetched from A is posted to B: its CSRF token is valid there too.
    let (login_cookie, login_csrf) = console_a.login_challenge().await;
    let response = console_b
        .post_login(Some(&login_cookie), Some(&login_csrf), ADMIN_TOKEN)
        .await;
    assert_eq!(response.status().as_u16(), 303);
    let cookie = session_cookie_of(&response).expect("B opened a session");

    // Both instances know the session and give it the same CSRF token.
    let (status, on_b) = session_of(&console_b, &cookie).await;
    assert_eq!(status, 200, "{on_b}");
    assert_eq!(on_b["operator"], "dev-admin");
    assert_eq!(on_b["role"], "admin");
    let (status, on_a) = session_of(&console_a, &cookie).await;
    assert_eq!(status, 200, "{on_a}");
    assert_eq!(on_a["csrfToken"], on_b["csrfToken"]);
    let csrf = on_a["csrfToken"].as_str().unwrap().to_owned();
    let (status, page) = console_a.page(&cookie, "/console").await;
    assert_eq!(status, 200);
    assert!(page.contains(&csrf), "the page embeds the session's token");

    // A POST on B with the token A gave: accepted. Another session's token: refused.
    let (status, body) = preview_with_session(&console_b, &cookie, &csrf).await;
    assert_eq!(status, 200, "{body}");
    let (_, other_csrf) = json_log_in(&console_a, ADMIN_TOKEN).await;
    assert_ne!(other_csrf, csrf);
    let (status, body) = preview_with_session(&console_b, &cookie, &other_csrf).await;
    assert_eq!(status, 403, "{body}");

    // A bearer token's CSRF token is the same on every instance.
    let bearer_csrf = console_a.csrf(ADMIN_TOKEN).await;
    assert_eq!(console_b.csrf(ADMIN_TOKEN).await, bearer_csrf);
    let (status, body) = preview_with_bearer(&console_b, ADMIN_TOKEN, &bearer_csrf).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(bearer_csrf, csrf);

    // Redis holds the session under the id's digest, for the session's TTL, and never the id.
    let key = pipeline.redis_key(&session_key(&cookie));
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut pipeline.redis.clone())
        .await
        .unwrap();
    let configured = pipeline.settings.console.session_ttl_secs as i64;
    assert!(ttl > configured - 60 && ttl <= configured, "{ttl}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", pipeline.settings.redis.key_prefix))
        .query_async(&mut pipeline.redis.clone())
        .await
        .unwrap();
    let id = cookie.strip_prefix("ap_console_session=").unwrap();
    assert!(keys.contains(&key), "{keys:?}");
    assert!(keys.iter().all(|key| !key.contains(id)), "{keys:?}");
    let record = pipeline.redis_get(&session_key(&cookie)).await.unwrap();
    assert!(!record.contains(id), "{record}");

    // Logging out on B ends the session on A at once.
    let response = client()
        .delete(console_b.url("/console/api/session"))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let (status, body) = session_of(&console_a, &cookie).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = preview_with_session(&console_a, &cookie, &csrf).await;
    assert_eq!(status, 401);
    assert_eq!(pipeline.redis_get(&session_key(&cookie)).await, None);

    console_a.stop();
    console_b.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_console_restart() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console = TestConsole::spawn(&pipeline).await;
    let cookie = console.log_in(VIEWER_TOKEN).await;
    let (status, before) = session_of(&console, &cookie).await;
    assert_eq!(status, 200, "{before}");
    console.stop();

    // A new process of the same settings: the same session, the same CSRF token.
    let restarted = TestConsole::spawn(&pipeline).await;
    let (status, after) = session_of(&restarted, &cookie).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after, before);
    let (status, page) = restarted.page(&cookie, "/console/dead-letters").await;
    assert_eq!(status, 200);
    assert!(page.contains("dev-viewer"), "{page}");

    restarted.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_unknown_and_garbage_session_cookies_get_401() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console = TestConsole::spawn(&pipeline).await;

    let unknown = format!("ap_console_session={}", "ab".repeat(32));
    let garbage = [
        "ap_console_session=".to_owned(),
        "ap_console_session=x".to_owned(),
        format!("ap_console_session={}", "a".repeat(63)),
        format!("ap_console_session={}", "A".repeat(64)),
        format!("ap_console_session={}", "g".repeat(64)),
        "ap_console_session=<script>alert(1)</script>".to_owned(),
        "ap_console_session=%00%ff'\"".to_owned(),
        format!("ap_console_session={}", "ab".repeat(4096)),
    ];
    let (status, body) = session_of(&console, &unknown).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("expired or is unknown"),
        "{body}"
    );
    for cookie in &garbage {
        let (status, body) = session_of(&console, cookie).await;
        assert_eq!(status, 401, "{cookie}: {body}");
    }
    // Pages send an unknown session to the login form.
    let response = client()
        .get(console.url("/console"))
        .header("Cookie", &unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(response.headers()["location"], "/console/login");

    // A record past its expiry is refused even while Redis still holds it.
    let (cookie, _) = json_log_in(&console, ADMIN_TOKEN).await;
    assert_eq!(session_of(&console, &cookie).await.0, 200);
    let key = pipeline.redis_key(&session_key(&cookie));
    let mut record: Value =
        serde_json::from_str(&pipeline.redis_get(&session_key(&cookie)).await.unwrap()).unwrap();
    record["expiresAt"] = json!(1);
    redis::cmd("SET")
        .arg(&key)
        .arg(record.to_string())
        .arg("KEEPTTL")
        .query_async::<()>(&mut pipeline.redis.clone())
        .await
        .unwrap();
    let (status, body) = session_of(&console, &cookie).await;
    assert_eq!(status, 401, "{body}");

    // A session whose record Redis expired is refused.
    let (cookie, _) = json_log_in(&console, ADMIN_TOKEN).await;
    assert_eq!(session_of(&console, &cookie).await.0, 200);
    redis::cmd("PEXPIRE")
        .arg(pipeline.redis_key(&session_key(&cookie)))
        .arg(1)
        .query_async::<()>(&mut pipeline.redis.clone())
        .await
        .unwrap();
    eventually("the expired session is refused", || async {
        session_of(&console, &cookie).await.0 == 401
    })
    .await;

    // A record that is not one (damaged, or written by something else) is refused too.
    let (cookie, _) = json_log_in(&console, ADMIN_TOKEN).await;
    redis::cmd("SET")
        .arg(pipeline.redis_key(&session_key(&cookie)))
        .arg("{\"operator\": \"dev-admin\"}")
        .query_async::<()>(&mut pipeline.redis.clone())
        .await
        .unwrap();
    assert_eq!(session_of(&console, &cookie).await.0, 401);

    console.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_operator_or_a_changed_token_ends_the_power_of_a_session_and_a_demoted_one_views()
{
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let token = format!("it-operator-{}", uuid::Uuid::now_v7());
    let configured = TestConsole::spawn_with(&pipeline, &test_operator("admin", &token)).await;
    let (cookie, csrf) = json_log_in(&configured, &token).await;
    let (status, body) = preview_with_session(&configured, &cookie, &csrf).await;
    assert_eq!(status, 200, "{body}");

    // Another instance where the operator is a viewer now: the session acts as a viewer.
    let demoted = TestConsole::spawn_with(&pipeline, &test_operator("viewer", &token)).await;
    let (status, body) = session_of(&demoted, &cookie).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "viewer");
    let (status, body) = preview_with_session(&demoted, &cookie, &csrf).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("viewer"), "{body}");

    // Where the operator is not configured, or has another token: refused.
    let removed = TestConsole::spawn(&pipeline).await;
    let rotated = TestConsole::spawn_with(
        &pipeline,
        &test_operator("admin", &format!("{token}-rotated")),
    )
    .await;
    for console in [&removed, &rotated] {
        let (status, body) = session_of(console, &cookie).await;
        assert_eq!(status, 401, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("operator `itop` is no longer configured"),
            "{body}"
        );
        let (status, _) = preview_with_session(console, &cookie, &csrf).await;
        assert_eq!(status, 401);
    }
    // Refused there, not ended: where the operator is configured, the session still works.
    assert_eq!(session_of(&configured, &cookie).await.0, 200);

    for console in [configured, demoted, removed, rotated] {
        console.stop();
    }
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operator_keeps_at_most_max_sessions_and_a_login_past_it_ends_the_oldest() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console = TestConsole::spawn_with(&pipeline, &["console.max_sessions=2".to_owned()]).await;
    let (viewer, _) = json_log_in(&console, VIEWER_TOKEN).await;
    let mut admin = Vec::new();
    for _ in 0..3 {
        admin.push(json_log_in(&console, ADMIN_TOKEN).await.0);
        // Distinct expiries to the millisecond, so "the oldest" is one session.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, body) = session_of(&console, &admin[0]).await;
    assert_eq!(status, 401, "the oldest admin session ended: {body}");
    assert_eq!(pipeline.redis_get(&session_key(&admin[0])).await, None);
    for cookie in [&admin[1], &admin[2], &viewer] {
        let (status, body) = session_of(&console, cookie).await;
        assert_eq!(status, 200, "{body}");
    }
    let indexed: i64 = redis::cmd("ZCARD")
        .arg(pipeline.redis_key("console:sessions:{console}:dev-admin"))
        .query_async(&mut pipeline.redis.clone())
        .await
        .unwrap();
    assert_eq!(indexed, 2);

    console.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_session_cookie_gets_503_and_a_bearer_token_still_works() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    // A healthy console opens a session in the pipeline's Redis.
    let healthy = TestConsole::spawn(&pipeline).await;
    let (cookie, csrf) = json_log_in(&healthy, ADMIN_TOKEN).await;
    healthy.stop();

    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let console = TestConsole::spawn_with(
        &pipeline,
        &[
            format!("redis.url=redis://127.0.0.1:{closed_port}"),
            "console.read_timeout_ms=3000".to_owned(),
        ],
    )
    .await;

    // Bearer tokens need no Redis: reads and a POST action work.
    let bearer_csrf = console.csrf(ADMIN_TOKEN).await;
    let (status, body) = preview_with_bearer(&console, ADMIN_TOKEN, &bearer_csrf).await;
    assert_eq!(status, 200, "{body}");

    // A session cookie: 503 saying why and what still works, never 401.
    let (status, body) = session_of(&console, &cookie).await;
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("Redis") && error.contains("Bearer"),
        "{error}"
    );
    let (status, _) = preview_with_session(&console, &cookie, &csrf).await;
    assert_eq!(status, 503);
    let (status, page) = console.page(&cookie, "/console").await;
    assert_eq!(status, 503, "a page says so rather than asking to log in");
    assert!(page.contains("Redis"), "{page}");
    // A garbage cookie is refused without asking Redis.
    let (status, _) = session_of(&console, "ap_console_session=garbage").await;
    assert_eq!(status, 401);

    // Logging in cannot open a session: 503, through the API and through the form.
    let response = client()
        .post(console.url("/console/api/session"))
        .json(&json!({ "token": ADMIN_TOKEN }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(session_cookie_of(&response), None);
    let (login_cookie, login_csrf) = console.login_challenge().await;
    let response = console
        .post_login(Some(&login_cookie), Some(&login_csrf), ADMIN_TOKEN)
        .await;
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(session_cookie_of(&response), None);

    console.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_store_keeps_its_bound_and_ends_sessions_on_a_real_redis_cluster() {
    // The local Redis Cluster (`make redis-cluster-up`): the bound's script deletes records it was
    // not handed as keys, which a cluster allows only within the slot of its keys (`{console}`).
    let settings = load_settings(&test_overrides(&[
        "redis.url=redis://127.0.0.1:7001,redis://127.0.0.1:7002".to_owned(),
        "redis.cluster=true".to_owned(),
    ]));
    let store = RedisStore::connect(&settings.redis)
        .expect("cluster settings are valid")
        .console_sessions(Duration::from_secs(10));
    let ttl = Duration::from_secs(60);
    let digests: Vec<String> = (0..3)
        .map(|n| sha256_hex(&format!("session-{n}")))
        .collect();
    let mut ended = Vec::new();
    for digest in &digests {
        ended.push(
            store
                .open(digest, "ada", &format!("record of {digest}"), ttl, 2)
                .await
                .expect("opened on the cluster"),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ended, [0, 0, 1]);
    assert_eq!(store.find(&digests[0]).await.unwrap(), None);
    assert_eq!(
        store.find(&digests[2]).await.unwrap(),
        Some(format!("record of {}", digests[2]))
    );
    store.end(&digests[2], "ada").await.expect("ended");
    assert_eq!(store.find(&digests[2]).await.unwrap(), None);
    assert!(store.find(&digests[1]).await.unwrap().is_some());
    store.end(&digests[1], "ada").await.unwrap();
    // Ending a session that is gone already is not an error.
    store.end(&digests[1], "ada").await.unwrap();
}

/// A Redis that accepts and never answers costs a session cookie `console.read_timeout_ms`, not
/// the connection's longer `redis.op_timeout_ms`: then 503. Bearer tokens do not wait at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_does_not_answer_costs_a_session_the_console_read_budget() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let healthy = TestConsole::spawn(&pipeline).await;
    let (cookie, _) = json_log_in(&healthy, ADMIN_TOKEN).await;
    healthy.stop();

    let blackhole = crate::blackhole::ReplyBlackhole::start(6379).await;
    blackhole.swallow(true);
    let console = TestConsole::spawn_with(
        &pipeline,
        &[
            format!("redis.url=redis://127.0.0.1:{}", blackhole.port()),
            "redis.op_timeout_ms=60000".to_owned(),
            "console.read_timeout_ms=1000".to_owned(),
        ],
    )
    .await;
    let started = std::time::Instant::now();
    let (status, body) = session_of(&console, &cookie).await;
    let waited = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("console.read_timeout_ms"),
        "{body}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let started = std::time::Instant::now();
    let (status, _) = console.get(Some(ADMIN_TOKEN), "/console/api/session").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_millis(500));

    console.stop();
    pipeline.stop().await;
}
