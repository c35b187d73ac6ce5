//! The operators' console (`activity-pipeline console`) against the real stack: who gets in, what
//! the overview shows while no consumer runs, the dead letters' filter, preview, replay and purge
//! (through the `dlq` verbs' code) as jobs followed to their end, escaping of tenants' payloads, and
//! precise 400s for garbage.

use std::sync::Arc;
use std::time::Duration;

use activity_pipeline::console::Console;
use mongodb::bson::doc;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::{activity, eventually, filter, load_settings, TestPipeline, ACME_KEY};
use crate::sse_client::SseClient;

pub const ADMIN_TOKEN: &str = "dev-operator-admin";
pub const VIEWER_TOKEN: &str = "dev-operator-viewer";

/// A console on port 0 over a test pipeline's topics, group and database.
pub struct TestConsole {
    pub address: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    /// Held for writing, it keeps the console's jobs before their next dead letter.
    pub job_hold: Arc<tokio::sync::RwLock<()>>,
    /// The console's run, ended once it has stopped (and its jobs have).
    stopped: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestConsole {
    pub async fn spawn(pipeline: &TestPipeline) -> TestConsole {
        TestConsole::spawn_with(pipeline, &[]).await
    }

    /// A console over the pipeline's settings with `extra` overrides (its own operators, a Redis
    /// that is not there, ...).
    pub async fn spawn_with(pipeline: &TestPipeline, extra: &[String]) -> TestConsole {
        let mut overrides = pipeline.overrides.clone();
        overrides.extend([
            "console.listen=127.0.0.1:0".to_owned(),
            "console.lag_sample_interval_secs=1".to_owned(),
            "console.lag_history_secs=120".to_owned(),
        ]);
        overrides.extend_from_slice(extra);
        let settings = load_settings(&overrides);
        let shutdown = CancellationToken::new();
        let console = Console::build(&settings, shutdown.clone())
            .await
            .expect("the console starts");
        let address = format!("http://127.0.0.1:{}", console.port());
        let job_hold = console.job_hold();
        let stopped = tokio::spawn(console.run_until_stopped());
        TestConsole {
            address,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            shutdown,
            job_hold,
            stopped,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// GET with a bearer token (or none): status and JSON body.
    pub async fn get(&self, token: Option<&str>, path: &str) -> (u16, Value) {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the console answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The CSRF token of a bearer token.
    pub async fn csrf(&self, token: &str) -> String {
        let (status, session) = self.get(Some(token), "/console/api/session").await;
        assert_eq!(status, 200, "{session}");
        session["csrfToken"].as_str().unwrap().to_owned()
    }

    /// POSTs a JSON action as the operator of `token`, with its CSRF token.
    pub async fn act(&self, token: &str, action: &str, body: &Value) -> (u16, Value) {
        let (status, _, body) = self.act_located(token, action, body).await;
        (status, body)
    }

    /// [`Self::act`], with the answer's Location (a started job's).
    pub async fn act_located(
        &self,
        token: &str,
        action: &str,
        body: &Value,
    ) -> (u16, Option<String>, Value) {
        let csrf = self.csrf(token).await;
        let response = self
            .http
            .post(self.url(&format!("/console/api/dead-letters/{action}")))
            .bearer_auth(token)
            .header("X-CSRF-Token", csrf)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|value| value.to_str().unwrap().to_owned());
        (
            status,
            location,
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// Runs a real replay or purge: 202 and a job, followed until it ended; the ended job.
    async fn act_as_job(&self, action: &str, body: &Value) -> Value {
        let (status, location, job) = self.act_located(ADMIN_TOKEN, action, body).await;
        assert_eq!(status, 202, "{action} {body}: {job}");
        let id = job["id"].as_str().expect("a job id").to_owned();
        assert_eq!(
            location.as_deref(),
            Some(format!("/console/api/jobs/{id}").as_str())
        );
        self.follow_job(&id).await
    }

    /// Polls a job until it is no longer running (checking its progress stays in bounds); the
    /// ended job.
    async fn follow_job(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, job) = self
                .get(Some(VIEWER_TOKEN), &format!("/console/api/jobs/{id}"))
                .await;
            assert_eq!(status, 200, "{job}");
            if let Some(total) = job["total"].as_u64() {
                assert!(job["done"].as_u64().unwrap() <= total, "{job}");
            }
            if job["state"] != "running" {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} still running: {job}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens the login page like a browser: its pre-login cookie (`name=value`) and the form's CSRF
    /// token.
    pub async fn login_challenge(&self) -> (String, String) {
        let response = self
            .http
            .get(self.url("/console/login"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let cookie = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|value| value.to_str().unwrap().to_owned())
            .find(|value| value.starts_with("ap_console_login="))
            .expect("a pre-login cookie");
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let page = response.text().await.unwrap();
        let token = page
            .split("name=\"csrfToken\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the login form's CSRF token")
            .to_owned();
        (cookie.split(';').next().unwrap().to_owned(), token)
    }

    /// POSTs the login form with the given pre-login cookie and CSRF field (each may be absent).
    pub async fn post_login(
        &self,
        cookie: Option<&str>,
        csrf: Option<&str>,
        token: &str,
    ) -> reqwest::Response {
        let mut fields = vec![("token", token)];
        if let Some(csrf) = csrf {
            fields.push(("csrfToken", csrf));
        }
        let mut request = self.http.post(self.url("/console/login")).form(&fields);
        if let Some(cookie) = cookie {
            request = request.header("Cookie", cookie);
        }
        request.send().await.unwrap()
    }

    /// Logs in like a browser: the session cookie (`name=value`).
    pub async fn log_in(&self, token: &str) -> String {
        let (login_cookie, csrf) = self.login_challenge().await;
        let response = self
            .post_login(Some(&login_cookie), Some(&csrf), token)
            .await;
        assert_eq!(response.status().as_u16(), 303);
        let set_cookie = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|value| value.to_str().unwrap().to_owned())
            .find(|value| value.starts_with("ap_console_session="))
            .expect("a session cookie");
        assert!(
            set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
            "{set_cookie}"
        );
        set_cookie.split(';').next().unwrap().to_owned()
    }

    pub async fn page(&self, cookie: &str, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(self.url(path))
            .header("Cookie", cookie)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    async fn audit(&self) -> Vec<Value> {
        let (status, body) = self.get(Some(ADMIN_TOKEN), "/console/api/audit").await;
        assert_eq!(status, 200, "{body}");
        body["entries"].as_array().unwrap().clone()
    }

    pub fn stop(self) {
        self.shutdown.cancel();
    }

    /// Stops the console and waits until it has (its jobs included).
    async fn stop_and_wait(self) {
        self.shutdown.cancel();
        self.stopped
            .await
            .expect("the console's task")
            .expect("the console stops cleanly");
    }
}

/// Writes a dead letter into the pipeline's DLQ, as the consumer would have.
pub async fn dead_letter(
    pipeline: &TestPipeline,
    tenant: &str,
    key: &str,
    class: &str,
    error: &str,
    payload: &[u8],
) {
    let dlq_topic = pipeline.settings.kafka.dlq_topic.clone();
    let now = chrono::Utc::now().to_rfc3339();
    let headers = [
        ("idempotency-key", key),
        ("dlq-error", error),
        ("dlq-error-class", class),
        ("dlq-attempts", "1"),
        ("dlq-first-failure-at", now.as_str()),
        ("dlq-last-failure-at", now.as_str()),
        ("dlq-source-topic", "activities"),
        ("dlq-source-partition", "0"),
        ("dlq-source-offset", "7"),
    ];
    pipeline
        .produce_raw(&dlq_topic, Some(tenant), Some(payload), &headers)
        .await;
}

pub fn positions(page: &Value) -> Vec<String> {
    page["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|dead| dead["position"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_get_in_and_only_admins_with_a_csrf_token_act() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console = TestConsole::spawn(&pipeline).await;

    let (status, body) = console.get(None, "/console/api/overview").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = console.get(Some(ACME_KEY), "/console/api/overview").await;
    assert_eq!(
        status, 401,
        "a tenant's API key never opens the console: {body}"
    );
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("tenants' API keys"));
    let (status, _) = console
        .get(Some(VIEWER_TOKEN), "/console/api/overview")
        .await;
    assert_eq!(status, 200);

    // Pages send the unauthenticated to the login form; a tenant's key does not log in.
    let response = console
        .http
        .get(console.url("/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(response.headers()["location"], "/console/login");
    let (login_cookie, csrf) = console.login_challenge().await;
    let response = console
        .post_login(Some(&login_cookie), Some(&csrf), ACME_KEY)
        .await;
    assert_eq!(response.status().as_u16(), 401);
    assert!(!opened_a_session(&response));

    // A viewer is refused an action, and the refusal is audited.
    let everything = json!({"all": true, "dryRun": true});
    let (status, body) = console.act(VIEWER_TOKEN, "replay", &everything).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("viewer"), "{body}");

    // An admin without, or with someone else's, CSRF token is refused too.
    let response = console
        .http
        .post(console.url("/console/api/dead-letters/replay"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&everything)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("CSRF"), "{body}");
    let viewer_csrf = console.csrf(VIEWER_TOKEN).await;
    let response = console
        .http
        .post(console.url("/console/api/dead-letters/purge"))
        .bearer_auth(ADMIN_TOKEN)
        .header("X-CSRF-Token", viewer_csrf)
        .json(&everything)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);

    // With a session: the cookie opens the pages, and a form POST needs the page's CSRF token.
    let cookie = console.log_in(ADMIN_TOKEN).await;
    let (status, overview) = console.page(&cookie, "/console").await;
    assert_eq!(status, 200);
    assert!(overview.contains("dev-admin"), "{overview}");
    let response = console
        .http
        .post(console.url("/console/dead-letters/replay"))
        .header("Cookie", &cookie)
        .form(&[("all", "true"), ("dryRun", "true")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let (status, _) = console.act(ADMIN_TOKEN, "replay", &everything).await;
    assert_eq!(status, 200);

    let audit = console.audit().await;
    let actions: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|entry| {
            (
                entry["operator"].as_str().unwrap(),
                entry["action"].as_str().unwrap(),
                entry["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        actions
            .iter()
            .any(|(who, action, outcome)| *who == "dev-viewer"
                && *action == "replay-preview"
                && outcome.starts_with("refused")),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|(who, action, outcome)| *who == "-"
            && *action == "login"
            && outcome.starts_with("refused")),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|(who, action, outcome)| *who == "dev-admin"
                && *action == "replay-preview"
                && outcome.starts_with("ok")),
        "{actions:?}"
    );
    console.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_the_lag_grow_while_no_consumer_runs() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console = TestConsole::spawn(&pipeline).await;
    let main_backlog = |overview: &Value| {
        overview["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|stage| stage["stage"] == "main")
            .and_then(|stage| stage["backlog"].as_i64())
            .unwrap_or(-1)
    };

    for (batch, expected) in [(3, 3), (4, 7)] {
        for _ in 0..batch {
            assert_eq!(
                pipeline
                    .post_activity(ACME_KEY, None, &activity("u1", "login"))
                    .await
                    .status(),
                202
            );
        }
        eventually(&format!("the main backlog reaches {expected}"), || async {
            main_backlog(
                &console
                    .get(Some(VIEWER_TOKEN), "/console/api/overview")
                    .await
                    .1,
            ) == expected
        })
        .await;
    }
    let (_, overview) = console
        .get(Some(VIEWER_TOKEN), "/console/api/overview")
        .await;
    let stages: Vec<&str> = overview["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| stage["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["main", "retry.1", "retry.2", "retry.3", "dlq"]);
    let main = &overview["stages"][0];
    assert_eq!(main["group"], pipeline.settings.kafka.consumer_group);
    let per_partition: i64 = main["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|partition| partition["lag"].as_i64().unwrap())
        .sum();
    assert_eq!(per_partition, 7);
    // The history saw it grow: earlier samples are lower, and none is higher than now.
    let history: Vec<i64> = overview["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|point| point["backlogs"][0].as_i64())
        .collect();
    assert!(history.len() >= 2, "{history:?}");
    assert!(history.first() < history.last(), "{history:?}");
    assert!(
        history.windows(2).all(|pair| pair[0] <= pair[1]),
        "{history:?}"
    );

    let cookie = console.log_in(VIEWER_TOKEN).await;
    let (status, page) = console.page(&cookie, "/console").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<svg") && page.contains("<polyline"),
        "{page}"
    );
    console.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_ingest_and_processed_rates_from_its_own_samples() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console = TestConsole::spawn(&pipeline).await;
    let group = pipeline.settings.kafka.consumer_group.clone();
    let topic = pipeline.settings.kafka.topic.clone();
    let overview = || async {
        console
            .get(Some(VIEWER_TOKEN), "/console/api/overview")
            .await
            .1
    };
    // The main stage's rates at each point of the history (index 0 is the main stage).
    let main_rates = |overview: &Value, field: &str| -> Vec<Option<f64>> {
        overview["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|point| point[field][0].as_f64())
            .collect()
    };
    eventually("a first sample", || async {
        !overview().await["history"].as_array().unwrap().is_empty()
    })
    .await;
    let first = &overview().await["history"][0];
    assert!(
        first["appendedPerSec"][0].is_null() && first["processedPerSec"][0].is_null(),
        "no rate from a single sample: {first}"
    );

    for _ in 0..5 {
        assert_eq!(
            pipeline
                .post_activity(ACME_KEY, None, &activity("u1", "login"))
                .await
                .status(),
            202
        );
    }
    eventually(
        "the main stage's appended rate shows the 5 records",
        || async {
            let overview = overview().await;
            let appended: f64 = main_rates(&overview, "appendedPerSec")
                .iter()
                .flatten()
                .sum();
            // Each point is records / seconds between samples, ~1 s apart: their sum is about 5.
            appended > 0.0 && overview["stages"][0]["backlog"] == 5
        },
    )
    .await;
    let before_commit = overview().await;
    assert!(
        main_rates(&before_commit, "processedPerSec")
            .iter()
            .flatten()
            .all(|rate| *rate == 0.0),
        "nothing was processed yet: {before_commit}"
    );
    // The DLQ has no group: no processed rate, ever.
    let dlq = before_commit["stages"].as_array().unwrap().last().unwrap();
    assert_eq!(dlq["stage"], "dlq");
    assert!(dlq["processedPerSec"].is_null(), "{dlq}");
    assert!(dlq["appendedPerSec"].as_f64().is_some(), "{dlq}");

    // The group commits the end of every partition, as the stage's consumer would.
    for partition in before_commit["stages"][0]["partitions"].as_array().unwrap() {
        let high = partition["high"].as_i64().unwrap();
        if high > 0 {
            commit_offset(
                &pipeline,
                &group,
                &topic,
                partition["partition"].as_i64().unwrap() as i32,
                high,
            );
        }
    }
    eventually(
        "the main stage's processed rate shows the commit",
        || async {
            let overview = overview().await;
            let processed: f64 = main_rates(&overview, "processedPerSec")
                .iter()
                .flatten()
                .sum();
            processed > 0.0 && overview["stages"][0]["backlog"] == 0
        },
    )
    .await;
    let after = overview().await;
    let stage = &after["stages"][0];
    assert!(stage["appendedPerSec"].as_f64().is_some(), "{stage}");
    assert!(stage["processedPerSec"].as_f64().is_some(), "{stage}");

    let cookie = console.log_in(VIEWER_TOKEN).await;
    let (status, page) = console.page(&cookie, "/console").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Processed/s") && page.contains("id=\"rate-chart\""),
        "{page}"
    );
    assert!(page.contains("main processed/s"), "{page}");
    console.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_filtered_previewed_replayed_once_and_purged() {
    let pipeline = TestPipeline::spawn().await;
    let console = TestConsole::spawn(&pipeline).await;
    let lost = pipeline.envelope("acme", "lost-in-incident", &activity("u1", "login"));
    dead_letter(
        &pipeline,
        "acme",
        "lost-in-incident",
        "transient",
        "MongoDB was on fire",
        &lost,
    )
    .await;
    dead_letter(
        &pipeline, "acme", "bad-json", "poison", "not JSON", b"{nope",
    )
    .await;
    dead_letter(
        &pipeline,
        "globex",
        "globex-poison",
        "poison",
        "schema violation",
        b"{}",
    )
    .await;

    eventually("three dead letters listed", || async {
        console
            .get(Some(VIEWER_TOKEN), "/console/api/dead-letters")
            .await
            .1["total"]
            == 3
    })
    .await;
    let (status, acme_poison) = console
        .get(
            Some(VIEWER_TOKEN),
            "/console/api/dead-letters?tenant=acme&class=poison",
        )
        .await;
    assert_eq!(status, 200, "{acme_poison}");
    assert_eq!(acme_poison["total"], 1);
    assert_eq!(acme_poison["deadLetters"][0]["idempotencyKey"], "bad-json");
    let (_, by_text) = console
        .get(
            Some(VIEWER_TOKEN),
            "/console/api/dead-letters?text=ON%20FIRE",
        )
        .await;
    assert_eq!(by_text["total"], 1);
    let lost_position = positions(&by_text)[0].clone();
    let (_, future) = console
        .get(
            Some(VIEWER_TOKEN),
            "/console/api/dead-letters?from=2099-01-01T00:00:00Z",
        )
        .await;
    assert_eq!(future["total"], 0);
    // Paged: one at a time, newest first, the cursor leading through all three.
    let (_, first) = console
        .get(Some(VIEWER_TOKEN), "/console/api/dead-letters?limit=2")
        .await;
    let cursor = first["nextCursor"].as_str().unwrap().to_owned();
    let (_, second) = console
        .get(
            Some(VIEWER_TOKEN),
            &format!("/console/api/dead-letters?limit=2&cursor={cursor}"),
        )
        .await;
    assert_eq!(positions(&first).len() + positions(&second).len(), 3);
    assert!(second["nextCursor"].is_null());

    // The record's page: headers and the payload pretty-printed.
    let (status, record) = console
        .get(
            Some(VIEWER_TOKEN),
            &format!("/console/api/dead-letters/{lost_position}"),
        )
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["errorClass"], "transient");
    assert!(record["payload"]
        .as_str()
        .unwrap()
        .contains("\n  \"idempotencyKey\""));

    // Dry run, then replay: stored once; a second preview says it was replayed already.
    let one = json!({"position": lost_position, "dryRun": true});
    let (status, preview) = console.act(ADMIN_TOKEN, "replay", &one).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(
        (preview["matched"].as_u64(), preview["wouldReplay"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        pipeline.count(doc! {}).await,
        0,
        "a dry run changes nothing"
    );
    let job = console
        .act_as_job(
            "replay",
            &json!({"position": lost_position, "dryRun": false}),
        )
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        (job["total"].as_u64(), job["done"].as_u64()),
        (Some(1), Some(1))
    );
    let replayed = &job["report"];
    assert_eq!(replayed["replayed"], 1, "{job}");
    assert_eq!(
        pipeline
            .wait_for_count(filter("acme", "lost-in-incident"), 1)
            .await,
        1
    );
    let (_, again) = console
        .act(
            ADMIN_TOKEN,
            "replay",
            &json!({"tenant": "acme", "dryRun": true}),
        )
        .await;
    assert_eq!(again["skippedAlreadyReplayed"], 1, "{again}");
    assert_eq!(
        again["wouldReplay"], 1,
        "the poison one was never replayed: {again}"
    );
    let replayed_again = console
        .act_as_job(
            "replay",
            &json!({"position": lost_position, "dryRun": false}),
        )
        .await;
    assert_eq!(replayed_again["report"]["replayed"], 0, "{replayed_again}");
    assert_eq!(
        replayed_again["report"]["skippedAlreadyReplayed"], 1,
        "{replayed_again}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pipeline.count(filter("acme", "lost-in-incident")).await, 1);

    // Purge globex's: preview, purge, gone from the listing (and its prefix dropped).
    let globex = json!({"tenant": "globex", "dryRun": true, "reason": "bad deploy"});
    let (status, preview) = console.act(ADMIN_TOKEN, "purge", &globex).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["wouldPurge"], 1);
    let job = console
        .act_as_job("purge", &json!({"tenant": "globex", "dryRun": false}))
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let purged = &job["report"];
    assert_eq!(purged["purged"], 1, "{job}");
    let (_, globex_left) = console
        .get(
            Some(VIEWER_TOKEN),
            "/console/api/dead-letters?tenant=globex",
        )
        .await;
    assert_eq!(globex_left["total"], 0);
    let (_, with_purged) = console
        .get(
            Some(VIEWER_TOKEN),
            "/console/api/dead-letters?tenant=globex&includePurged=true",
        )
        .await;
    // Kafka drops a purged record only with its partition's whole prefix: either it is gone, or it
    // is still listed on request, marked purged.
    if purged["dropped"].as_array().unwrap().is_empty() {
        assert!(
            !with_purged["deadLetters"][0]["purgedAt"].is_null(),
            "{with_purged}"
        );
    } else {
        assert_eq!(with_purged["total"], 0, "{with_purged}");
    }

    // Export: JSON lines of what is left.
    let export = console
        .http
        .get(console.url("/console/api/dead-letters/export?tenant=acme"))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status().as_u16(), 200);
    let lines: Vec<Value> = export
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);

    let audit = console.audit().await;
    let done: Vec<(String, String)> = audit
        .iter()
        .map(|entry| {
            (
                entry["action"].as_str().unwrap().to_owned(),
                entry["filter"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (action, filter) in [
        ("replay", format!("position={lost_position}")),
        ("purge", "tenant=globex".to_owned()),
        ("purge-preview", "tenant=globex".to_owned()),
        ("export", "tenant=acme".to_owned()),
    ] {
        assert!(
            done.contains(&(action.to_owned(), filter.clone())),
            "{action} {filter}: {done:?}"
        );
    }
    assert!(
        audit.iter().all(|entry| entry["outcome"] != "started"),
        "{audit:?}"
    );
    console.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_markup_payload_renders_as_text() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console = TestConsole::spawn(&pipeline).await;
    dead_letter(
        &pipeline,
        "acme",
        "<b>key</b>",
        "poison",
        "<img src=x onerror=alert(1)>",
        b"<script>alert('pwned')</script>",
    )
    .await;
    let cookie = console.log_in(VIEWER_TOKEN).await;
    eventually("the dead letter listed", || async {
        console
            .page(&cookie, "/console/dead-letters")
            .await
            .1
            .contains("&lt;b&gt;key&lt;/b&gt;")
    })
    .await;
    let listing = console.page(&cookie, "/console/dead-letters").await.1;
    assert!(
        !listing.contains("<b>key</b>") && !listing.contains("<img src=x"),
        "{listing}"
    );
    let response = console
        .http
        .get(console.url("/console/dead-letters/0:0"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    let response = if response.status().as_u16() == 404 {
        // The record landed in another partition: find its position from the API.
        let (_, page) = console
            .get(Some(VIEWER_TOKEN), "/console/api/dead-letters")
            .await;
        console
            .http
            .get(console.url(&format!("/console/dead-letters/{}", positions(&page)[0])))
            .header("Cookie", &cookie)
            .send()
            .await
            .unwrap()
    } else {
        response
    };
    assert_eq!(response.status().as_u16(), 200);
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    let record = response.text().await.unwrap();
    assert!(
        record.contains("&lt;script&gt;alert('pwned')&lt;/script&gt;"),
        "{record}"
    );
    assert!(!record.contains("<script"), "{record}");
    assert!(!record.contains("<img src=x"), "{record}");
    console.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_a_precise_400() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console = TestConsole::spawn(&pipeline).await;
    dead_letter(&pipeline, "acme", "k-1", "poison", "bad", b"{}").await;
    eventually("the dead letter listed", || async {
        console
            .get(Some(VIEWER_TOKEN), "/console/api/dead-letters")
            .await
            .1["total"]
            == 1
    })
    .await;
    for (query, expected) in [
        (
            "class=exploded",
            "`class`: unknown error class \"exploded\"",
        ),
        ("tenant=Not%20A%20Tenant", "`tenant`"),
        (
            "from=yesterday",
            "`from`: \"yesterday\" is not an RFC 3339 time",
        ),
        (
            "from=2026-12-02T10:00:00Z&until=2026-12-01T10:00:00Z",
            "`from` must be before `until`",
        ),
        ("limit=0", "`limit`: \"0\" is not a number from 1 to 500"),
        ("limit=lots", "`limit`"),
        ("cursor=garbage", "`cursor`: expected <partition>:<offset>"),
        (
            "cursor=2:999999",
            "`cursor`: 2:999999 is not a dead letter of this listing",
        ),
        ("position=1:x", "`position`"),
        ("colour=red", "unknown field `colour`"),
        ("includePurged=maybe", "invalid query"),
    ] {
        let (status, body) = console
            .get(
                Some(VIEWER_TOKEN),
                &format!("/console/api/dead-letters?{query}"),
            )
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(expected), "{query}: {message}");
    }
    let (status, body) = console
        .get(Some(VIEWER_TOKEN), "/console/api/dead-letters/nope")
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = console
        .get(Some(VIEWER_TOKEN), "/console/api/dead-letters/0:999999")
        .await;
    assert_eq!(status, 404);

    let csrf = console.csrf(ADMIN_TOKEN).await;
    for (body, expected) in [
        ("{not json", "invalid JSON body"),
        (
            "{\"dryRun\": true, \"tenant\": \"acme\", \"colour\": 1}",
            "unknown field `colour`",
        ),
        ("{\"tenant\": \"acme\"}", "missing field `dryRun`"),
        ("{\"dryRun\": \"yes\", \"all\": true}", "invalid JSON body"),
        ("{\"dryRun\": true}", "choose dead letters"),
        (
            "{\"dryRun\": true, \"all\": true, \"tenant\": \"acme\"}",
            "`all` cannot be combined",
        ),
        ("{\"dryRun\": true, \"class\": \"exploded\"}", "`class`"),
        ("[1, 2]", "invalid JSON body"),
    ] {
        for action in ["replay", "purge"] {
            let response = console
                .http
                .post(console.url(&format!("/console/api/dead-letters/{action}")))
                .bearer_auth(ADMIN_TOKEN)
                .header("X-CSRF-Token", &csrf)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 400, "{action} {body}");
            let answer: Value = response.json().await.unwrap();
            let message = answer["error"].as_str().unwrap();
            assert!(message.contains(expected), "{action} {body}: {message}");
        }
    }
    let (status, body) = console
        .act(
            ADMIN_TOKEN,
            "purge",
            &json!({"position": "0:999999", "dryRun": true}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no dead letter at 0:999999"),
        "{body}"
    );
    // A real purge of it fails the request too (the job checks before it is announced), and
    // leaves no job behind.
    let (status, body) = console
        .act(
            ADMIN_TOKEN,
            "purge",
            &json!({"position": "0:999999", "dryRun": false}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no dead letter at 0:999999"),
        "{body}"
    );
    let (status, jobs) = console.get(Some(VIEWER_TOKEN), "/console/api/jobs").await;
    assert_eq!(status, 200, "{jobs}");
    assert_eq!(jobs["jobs"], json!([]), "{jobs}");
    for (id, status, expected) in [
        ("garbage", 400, "`id`: \"garbage\" is not a job id"),
        ("0193a4e2-7c1d-7b3e-9f00", 400, "is not a job id"),
        (
            "0193a4e2-7c1d-7b3e-9f00-1a2b3c4d5e6f",
            404,
            "no job 0193a4e2-7c1d-7b3e-9f00-1a2b3c4d5e6f",
        ),
    ] {
        let (answered, body) = console
            .get(Some(VIEWER_TOKEN), &format!("/console/api/jobs/{id}"))
            .await;
        assert_eq!(answered, status, "{id}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(expected),
            "{id}: {body}"
        );
    }
    let cookie = console.log_in(VIEWER_TOKEN).await;
    let (status, page) = console.page(&cookie, "/console/jobs/%3Cb%3Enope").await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("&lt;b&gt;nope"), "{page}");
    console.stop();
    pipeline.stop().await;
}

/// `count` dead letters of `tenant` whose payloads are valid envelopes (keys `{prefix}-{i}`).
async fn replayable_dead_letters(
    pipeline: &TestPipeline,
    tenant: &str,
    prefix: &str,
    count: usize,
) {
    for i in 0..count {
        let key = format!("{prefix}-{i}");
        let payload = pipeline.envelope(tenant, &key, &activity("u1", "login"));
        dead_letter(
            pipeline,
            tenant,
            &key,
            "transient",
            "MongoDB was on fire",
            &payload,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_runs_as_a_job_that_shows_progress_refuses_a_second_and_ends_in_the_audit_log() {
    let pipeline = TestPipeline::spawn().await;
    let console = TestConsole::spawn(&pipeline).await;
    replayable_dead_letters(&pipeline, "acme", "job", 5).await;
    dead_letter(&pipeline, "globex", "g-1", "poison", "bad", b"{}").await;
    eventually("six dead letters listed", || async {
        console
            .get(Some(VIEWER_TOKEN), "/console/api/dead-letters")
            .await
            .1["total"]
            == 6
    })
    .await;

    // A viewer may not start one.
    let acme = json!({"tenant": "acme", "dryRun": false});
    let (status, body) = console.act(VIEWER_TOKEN, "replay", &acme).await;
    assert_eq!(status, 403, "{body}");

    // Held before its first dead letter: the job is running, its total known, nothing done.
    let held = Arc::clone(&console.job_hold).write_owned().await;
    let (status, location, job) = console.act_located(ADMIN_TOKEN, "replay", &acme).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(location, Some(format!("/console/api/jobs/{id}")));
    assert_eq!(
        (
            &job["action"],
            &job["filter"],
            &job["operator"],
            &job["state"]
        ),
        (
            &json!("replay"),
            &json!("tenant=acme"),
            &json!("dev-admin"),
            &json!("running")
        ),
        "{job}"
    );
    assert_eq!(
        (job["total"].as_u64(), job["done"].as_u64()),
        (Some(5), Some(0)),
        "{job}"
    );
    assert!(
        job["finishedAt"].is_null() && job["report"].is_null(),
        "{job}"
    );
    let (status, seen) = console
        .get(Some(VIEWER_TOKEN), &format!("/console/api/jobs/{id}"))
        .await;
    assert_eq!(status, 200, "a viewer follows a job: {seen}");
    assert_eq!(seen["state"], "running");

    // A second one, of the same selection or any other, is refused, naming the running one.
    for (action, body) in [
        ("replay", acme.clone()),
        ("purge", json!({"tenant": "globex", "dryRun": false})),
    ] {
        let (status, refused) = console.act(ADMIN_TOKEN, action, &body).await;
        assert_eq!(status, 409, "{action}: {refused}");
        let message = refused["error"].as_str().unwrap();
        assert!(
            message.contains(&id) && message.contains("replay of tenant=acme"),
            "{action}: {message}"
        );
    }
    // Previews still answer at once.
    let (status, preview) = console
        .act(
            ADMIN_TOKEN,
            "replay",
            &json!({"tenant": "acme", "dryRun": true}),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["wouldReplay"], 5, "{preview}");

    drop(held);
    let ended = console.follow_job(&id).await;
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert_eq!(
        (ended["total"].as_u64(), ended["done"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(ended["report"]["replayed"], 5, "{ended}");
    assert_eq!(ended["report"]["items"].as_array().unwrap().len(), 5);
    assert!(ended["finishedAt"].is_string(), "{ended}");
    assert!(
        ended["outcome"]
            .as_str()
            .unwrap()
            .starts_with("ok: matched 5, replayed 5"),
        "{ended}"
    );
    for i in 0..5 {
        assert_eq!(
            pipeline
                .wait_for_count(filter("acme", &format!("job-{i}")), 1)
                .await,
            1
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        pipeline.count(doc! {"tenantId": "acme"}).await,
        5,
        "each replayed activity is stored once"
    );

    // The audit log: the refusals, and the job's entry with its outcome (no longer `started`).
    let audit = console.audit().await;
    let replays: Vec<&str> = audit
        .iter()
        .filter(|entry| entry["action"] == "replay" && entry["filter"] == "tenant=acme")
        .map(|entry| entry["outcome"].as_str().unwrap())
        .collect();
    assert!(
        replays
            .iter()
            .any(|outcome| outcome.starts_with("ok: matched 5, replayed 5")),
        "{replays:?}"
    );
    assert!(
        replays
            .iter()
            .any(|outcome| outcome.starts_with("refused: one replay or purge runs at a time")),
        "{replays:?}"
    );
    assert!(
        replays
            .iter()
            .any(|outcome| outcome.starts_with("refused") && outcome.contains("viewer")),
        "{replays:?}"
    );
    assert!(
        audit.iter().all(|entry| entry["outcome"] != "started"),
        "{audit:?}"
    );

    // A purge job, then the list, newest first.
    let purged = console
        .act_as_job(
            "purge",
            &json!({"tenant": "acme", "dryRun": false, "reason": "replayed"}),
        )
        .await;
    assert_eq!(purged["state"], "succeeded", "{purged}");
    assert_eq!(
        (purged["total"].as_u64(), purged["done"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(purged["report"]["purged"], 5, "{purged}");
    let (_, jobs) = console.get(Some(VIEWER_TOKEN), "/console/api/jobs").await;
    let listed: Vec<(&str, &str)> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            (
                job["action"].as_str().unwrap(),
                job["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [("purge", "succeeded"), ("replay", "succeeded")]);

    // The form redirects to the job's page.
    let admin = console.log_in(ADMIN_TOKEN).await;
    let session: Value = console
        .http
        .get(console.url("/console/api/session"))
        .header("Cookie", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = console
        .http
        .post(console.url("/console/dead-letters/replay"))
        .header("Cookie", &admin)
        .form(&[
            ("tenant", "globex"),
            ("dryRun", "false"),
            ("csrfToken", session["csrfToken"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    let job_page = response.headers()["location"].to_str().unwrap().to_owned();
    let form_job = job_page
        .strip_prefix("/console/jobs/")
        .expect("the job's page");
    let ended = console.follow_job(form_job).await;
    assert_eq!(
        (&ended["filter"], &ended["state"]),
        (&json!("tenant=globex"), &json!("succeeded")),
        "{ended}"
    );

    // The job's page: progress and the report, escaped like every page.
    let cookie = console.log_in(VIEWER_TOKEN).await;
    let (status, page) = console.page(&cookie, &format!("/console/jobs/{id}")).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("succeeded") && page.contains("5 / 5"),
        "{page}"
    );
    assert!(page.contains("5 replayed"), "{page}");
    let (status, list) = console.page(&cookie, "/console/jobs").await;
    assert_eq!(status, 200);
    assert!(list.contains(&format!("/console/jobs/{id}")), "{list}");
    console.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stops_between_dead_letters_when_the_console_shuts_down_and_says_so() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console = TestConsole::spawn(&pipeline).await;
    replayable_dead_letters(&pipeline, "acme", "stop", 3).await;
    eventually("three dead letters listed", || async {
        console
            .get(Some(VIEWER_TOKEN), "/console/api/dead-letters")
            .await
            .1["total"]
            == 3
    })
    .await;
    let _held = Arc::clone(&console.job_hold).write_owned().await;
    let (status, job) = console
        .act(
            ADMIN_TOKEN,
            "replay",
            &json!({"tenant": "acme", "dryRun": false}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["total"], 3, "{job}");
    // The console stops while the job waits before its first dead letter: it stops there, and
    // its audit entry says so before the console is gone.
    console.stop_and_wait().await;
    let after = TestConsole::spawn(&pipeline).await;
    let entry = after
        .audit()
        .await
        .into_iter()
        .find(|entry| entry["action"] == "replay" && entry["filter"] == "tenant=acme")
        .expect("the job's audit entry");
    let outcome = entry["outcome"].as_str().unwrap();
    assert!(
        outcome.starts_with("stopped: stopped after 0 of 3 dead letter(s)"),
        "{outcome}"
    );
    after.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_shows_the_stores_counts_and_a_live_tail_of_the_types_asked_for() {
    let pipeline = TestPipeline::spawn().await;
    let console = TestConsole::spawn(&pipeline).await;
    for (key, activity_type) in [
        ("t-login-1", "login"),
        ("t-login-2", "login"),
        ("t-comment-1", "comment.created"),
    ] {
        let response = pipeline
            .post_activity(ACME_KEY, Some(key), &activity("u1", activity_type))
            .await;
        assert_eq!(response.status(), 202);
    }
    assert_eq!(
        pipeline.wait_for_count(doc! {"tenantId": "acme"}, 3).await,
        3
    );
    dead_letter(&pipeline, "acme", "t-dead", "poison", "bad", b"{}").await;

    let wanted = json!({
        "tenant": "acme",
        "accepted": 3,
        "duplicate": 0,
        "rateLimited": 0,
        "stored": 3,
        "counted": 3,
        "deadLettered": 1,
        "types": [
            {"type": "comment.created", "stored": 1, "counted": 1},
            {"type": "login", "stored": 2, "counted": 2},
        ],
    });
    eventually("acme's counts", || async {
        console
            .get(Some(VIEWER_TOKEN), "/console/api/tenants/acme")
            .await
            .1
            == wanted
    })
    .await;
    let (status, all) = console
        .get(Some(VIEWER_TOKEN), "/console/api/tenants")
        .await;
    assert_eq!(status, 200, "{all}");
    let tenants: Vec<&str> = all["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tenant| tenant["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["acme", "globex"]);
    assert_eq!(all["tenants"][0], wanted);
    assert_eq!(all["tenants"][1]["stored"], 0);

    // The live tail, filtered to comments: a login posted first never shows, the comment does.
    let response = console
        .http
        .get(console.url("/console/api/tenants/acme/tail?type=comment.created"))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    let mut tail = SseClient::from_response(response);
    // Another tenant's event and another type's are not this tail's.
    pipeline
        .post_activity(
            crate::helpers::GLOBEX_KEY,
            Some("g-comment"),
            &activity("u9", "comment.created"),
        )
        .await;
    pipeline
        .post_activity(ACME_KEY, Some("live-login"), &activity("u2", "login"))
        .await;
    pipeline
        .post_activity(
            ACME_KEY,
            Some("live-comment"),
            &activity("u2", "comment.created"),
        )
        .await;
    let event = tail
        .next_event(Duration::from_secs(15))
        .await
        .expect("the comment arrives on the tail");
    let json = event.json();
    assert_eq!(json["idempotencyKey"], "live-comment", "{json}");
    assert_eq!(json["tenantId"], "acme");
    assert_eq!(event.id.as_deref(), json["id"].as_str());

    // The page: the counts, and the tail wired to the same filter.
    let cookie = console.log_in(VIEWER_TOKEN).await;
    let (status, page) = console
        .page(&cookie, "/console/tenants/acme?type=comment.created")
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(r#"data-source="/console/api/tenants/acme/tail?type=comment.created""#),
        "{page}"
    );
    assert!(
        page.contains(r#"<script src="/console/assets/tail.js""#),
        "{page}"
    );
    let (status, listing) = console.page(&cookie, "/console/tenants").await;
    assert_eq!(status, 200);
    assert!(
        listing.contains(r#"href="/console/tenants/globex""#),
        "{listing}"
    );
    let script = console
        .http
        .get(console.url("/console/assets/tail.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        script.contains("textContent") && !script.contains("innerHTML"),
        "events are added as text"
    );

    // Garbage: a precise status for each.
    for (path, status, expected) in [
        ("/console/api/tenants/nobody", 404, "no tenant `nobody`"),
        (
            "/console/api/tenants/nobody/tail",
            404,
            "no tenant `nobody`",
        ),
        ("/console/api/tenants/Not%20A%20Tenant", 400, "`tenant`"),
        (
            "/console/api/tenants/acme/tail?type=%3Cscript%3E",
            400,
            "`type`: \"<script>\"",
        ),
        (
            "/console/api/tenants/acme/tail?type=login,",
            400,
            "`type`: \"\"",
        ),
        (
            "/console/api/tenants/acme/tail?colour=red",
            400,
            "unknown field `colour`",
        ),
    ] {
        let (got, body) = console.get(Some(VIEWER_TOKEN), path).await;
        assert_eq!(got, status, "{path}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(expected), "{path}: {message}");
    }
    let (status, _) = console.get(None, "/console/api/tenants/acme/tail").await;
    assert_eq!(status, 401);
    let (status, _) = console
        .get(Some(ACME_KEY), "/console/api/tenants/acme/tail")
        .await;
    assert_eq!(status, 401, "a tenant's key does not open its tail here");
    let (status, page) = console
        .page(&cookie, "/console/tenants/acme?type=%3Cb%3Ex")
        .await;
    assert_eq!(status, 400);
    assert!(
        page.contains("&lt;b&gt;x") && !page.contains("<b>x"),
        "{page}"
    );
    let (status, _) = console.page(&cookie, "/console/tenants/nobody").await;
    assert_eq!(status, 404);
    console.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retries_view_shows_what_waits_and_when_the_head_is_due() {
    // No consumer: nothing takes the retry records, so they wait.
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console = TestConsole::spawn(&pipeline).await;
    let retry_topic = pipeline.settings.kafka.retry_topic_for(1);
    let due_later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let overdue = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    for (key, due_at) in [
        ("retry-head", due_later.as_str()),
        ("retry-second", overdue.as_str()),
    ] {
        let envelope = pipeline.envelope("acme", key, &activity("u1", "login"));
        pipeline
            .produce_raw(
                &retry_topic,
                Some("acme"),
                Some(&envelope),
                &[
                    ("idempotency-key", key),
                    ("retry-attempts", "1"),
                    ("retry-due-at", due_at),
                    ("retry-error", "MongoDB timed out"),
                ],
            )
            .await;
    }
    let retries = || async {
        console
            .get(Some(VIEWER_TOKEN), "/console/api/retries")
            .await
    };
    eventually("two records waiting in step 1", || async {
        retries().await.1["steps"][0]["waiting"] == 2
    })
    .await;
    let (status, view) = retries().await;
    assert_eq!(status, 200, "{view}");
    let steps = view["steps"].as_array().unwrap();
    assert_eq!(steps.len(), pipeline.settings.retry.delays_ms.len());
    assert_eq!(steps[0]["topic"], retry_topic.as_str());
    assert_eq!(
        steps[0]["group"],
        format!("{}.retry.1", pipeline.settings.kafka.consumer_group)
    );
    assert!(steps[1..].iter().all(|step| step["waiting"] == 0), "{view}");
    let waiting: Vec<&Value> = steps[0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|partition| partition["waiting"] != 0)
        .collect();
    assert_eq!(waiting.len(), 1, "one tenant, one partition: {view}");
    let partition = waiting[0];
    assert_eq!(partition["waiting"], 2);
    assert!(partition["committed"].is_null());
    // The head is the older record (the group reads it next), due in about an hour.
    let head = &partition["head"];
    assert_eq!(head["idempotencyKey"], "retry-head", "{view}");
    assert_eq!(head["tenant"], "acme");
    assert_eq!(head["dueAt"], due_later.as_str());
    assert_eq!(head["attempts"], "1");
    let due_in_ms = head["dueInMs"].as_i64().unwrap();
    assert!((3_000_000..=3_600_000).contains(&due_in_ms), "{due_in_ms}");

    let cookie = console.log_in(VIEWER_TOKEN).await;
    let (status, page) = console.page(&cookie, "/console/retries").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("retry-head") && page.contains("in 3"),
        "{page}"
    );
    assert!(
        !page.contains("retry-second"),
        "only the head is shown: {page}"
    );

    // The step's group commits past the first record: one waits, and the head is the overdue one.
    let group = format!("{}.retry.1", pipeline.settings.kafka.consumer_group);
    let partition_id = i32::try_from(partition["partition"].as_i64().unwrap()).unwrap();
    commit_offset(&pipeline, &group, &retry_topic, partition_id, 1);
    eventually("one record waiting in step 1", || async {
        retries().await.1["steps"][0]["waiting"] == 1
    })
    .await;
    let (_, view) = retries().await;
    let partition = view["steps"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|found| found["partition"] == partition_id)
        .unwrap()
        .clone();
    assert_eq!(partition["committed"], 1, "{view}");
    assert_eq!(
        partition["head"]["idempotencyKey"], "retry-second",
        "{view}"
    );
    assert!(
        partition["head"]["dueInMs"].as_i64().unwrap() < -290_000,
        "{view}"
    );
    let (_, page) = console.page(&cookie, "/console/retries").await;
    assert!(
        page.contains("retry-second") && page.contains("overdue by"),
        "{page}"
    );
    let (status, _) = console.get(None, "/console/api/retries").await;
    assert_eq!(status, 401);
    console.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_export_selects_what_the_json_lines_do_and_round_trips_payloads() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console = TestConsole::spawn(&pipeline).await;
    let awkward = "{\"note\": \"commas, \\\"quotes\\\" and\\nescapes\"}\nthen a raw line, \"quoted\"\r\nand CRLF";
    dead_letter(
        &pipeline,
        "acme",
        "csv-awkward",
        "poison",
        "not JSON, \"really\"\nat all",
        awkward.as_bytes(),
    )
    .await;
    dead_letter(&pipeline, "acme", "csv-plain", "poison", "bad", b"{}").await;
    dead_letter(&pipeline, "globex", "csv-other", "poison", "bad", b"{}").await;
    eventually("three dead letters listed", || async {
        console
            .get(Some(VIEWER_TOKEN), "/console/api/dead-letters")
            .await
            .1["total"]
            == 3
    })
    .await;

    let export = |query: &'static str| {
        let request = console
            .http
            .get(console.url(&format!("/console/api/dead-letters/export?{query}")))
            .bearer_auth(VIEWER_TOKEN);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|value| value.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status, content_type, response.text().await.unwrap())
        }
    };
    let (status, content_type, csv_body) = export("tenant=acme&format=csv").await;
    assert_eq!(status, 200, "{csv_body}");
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let mut reader = csv::Reader::from_reader(csv_body.as_bytes());
    let columns: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let column = |name: &str| columns.iter().position(|column| column == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2, "{csv_body}");
    let row = rows
        .iter()
        .find(|row| &row[column("idempotencyKey")] == "csv-awkward")
        .expect("the awkward one is exported");
    assert_eq!(&row[column("payload")], awkward, "the payload round-trips");
    assert_eq!(&row[column("error")], "not JSON, \"really\"\nat all");
    assert_eq!(&row[column("tenant")], "acme");
    let headers: Vec<(String, Option<String>)> =
        serde_json::from_str(&row[column("headers")]).unwrap();
    assert!(headers.contains(&("dlq-error-class".to_owned(), Some("poison".to_owned()))));

    // The same selection as the JSON lines export, in the same order.
    let (status, content_type, lines) = export("tenant=acme").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/x-ndjson"));
    let json_positions: Vec<String> = lines
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["position"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let csv_positions: Vec<String> = rows
        .iter()
        .map(|row| row[column("position")].to_owned())
        .collect();
    assert_eq!(json_positions, csv_positions);

    for (query, expected) in [
        ("format=xml", "`format`: \"xml\" is not an export format"),
        ("format=csv&class=exploded", "`class`"),
        ("format=csv&colour=red", "unknown field `colour`"),
    ] {
        let (status, body) = console
            .get(
                Some(VIEWER_TOKEN),
                &format!("/console/api/dead-letters/export?{query}"),
            )
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(expected),
            "{query}: {body}"
        );
    }
    let audit = console.audit().await;
    assert!(
        audit.iter().any(|entry| entry["action"] == "export"
            && entry["filter"] == "tenant=acme"
            && entry["outcome"] == "ok: 2 dead letter(s) as csv"),
        "{audit:?}"
    );
    let cookie = console.log_in(VIEWER_TOKEN).await;
    let (_, page) = console
        .page(&cookie, "/console/dead-letters?tenant=acme")
        .await;
    assert!(
        page.contains("/console/api/dead-letters/export?tenant=acme&amp;format=csv"),
        "{page}"
    );
    console.stop();
    pipeline.stop().await;
}

/// Commits `offset` for `group` on one partition, as the stage's consumer would have.
fn commit_offset(pipeline: &TestPipeline, group: &str, topic: &str, partition: i32, offset: i64) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &pipeline.settings.kafka.brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))
        .unwrap();
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_shows_what_the_api_accepted_answered_as_duplicate_and_rate_limited() {
    let pipeline = TestPipeline::spawn_api_only(&[
        "rate_limit.per_tenant_per_sec=1".to_owned(),
        "rate_limit.burst=2".to_owned(),
        "intake.batch_max_items=2".to_owned(),
    ])
    .await;
    let console = TestConsole::spawn(&pipeline).await;
    let login = activity("u1", "login");
    let first = pipeline.post_activity(ACME_KEY, Some("k-1"), &login).await;
    assert_eq!(first.status(), 202);
    let again = pipeline.post_activity(ACME_KEY, Some("k-1"), &login).await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["duplicate"], true, "{again}");
    let over = pipeline.post_activity(ACME_KEY, Some("k-2"), &login).await;
    assert_eq!(over.status(), 429);
    let globex = pipeline
        .post_activity(crate::helpers::GLOBEX_KEY, Some("g-1"), &login)
        .await;
    assert_eq!(globex.status(), 202);

    // Each API instance adds its counts to Redis every second.
    let intake = |tenant: &Value| {
        (
            tenant["accepted"].as_i64(),
            tenant["duplicate"].as_i64(),
            tenant["rateLimited"].as_i64(),
        )
    };
    eventually("acme's intake counts", || async {
        intake(
            &console
                .get(Some(VIEWER_TOKEN), "/console/api/tenants/acme")
                .await
                .1,
        ) == (Some(1), Some(1), Some(1))
    })
    .await;
    let (_, all) = console
        .get(Some(VIEWER_TOKEN), "/console/api/tenants")
        .await;
    assert_eq!(
        intake(&all["tenants"][1]),
        (Some(1), Some(0), Some(0)),
        "{all}"
    );
    let cookie = console.log_in(VIEWER_TOKEN).await;
    let (_, page) = console.page(&cookie, "/console/tenants/acme").await;
    assert!(
        page.contains(r#"<dd class="rate-limited">1</dd>"#),
        "{page}"
    );
    console.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_each_consumer_instance_its_partitions_breaker_and_last_commit() {
    use activity_pipeline::consume::{ConsumerRuntime, Stages};
    let blackhole = crate::blackhole::ReplyBlackhole::start(27017).await;
    // The driver's monitor checks the server every 60 s: only the calls' own deadline notices the
    // swallowed replies, as in `deadlines.rs`.
    let pipeline = TestPipeline::spawn_api_only(&[
        format!(
            "mongo.uri=mongodb://127.0.0.1:{}/?heartbeatFrequencyMS=60000",
            blackhole.port()
        ),
        "mongo.op_timeout_ms=1000".to_owned(),
        "consumer.instance_report_interval_secs=1".to_owned(),
    ])
    .await;
    let console = TestConsole::spawn(&pipeline).await;
    let group = pipeline.settings.kafka.consumer_group.clone();
    let consumers = || async {
        let (status, body) = console
            .get(Some(VIEWER_TOKEN), "/console/api/consumers")
            .await;
        assert_eq!(status, 200, "{body}");
        body
    };
    let main_stage = |view: &Value| view["stages"][0].clone();

    // Garbage in the group's hash, and a report of an instance that died a minute ago.
    let hash = pipeline.redis_key(&format!("instances:{{consumers}}:{group}"));
    let dead = json!({
        "instance": "gone-host:1:00000001", "host": "gone-host", "pid": 1,
        "startedAt": "2026-01-01T00:00:00Z",
        "updatedAt": (chrono::Utc::now() - chrono::Duration::seconds(60)).to_rfc3339(),
        "stage": "main", "partitions": [0, 1], "breakerOpen": false, "breakerSince": null,
        "lastErrorClass": null, "lastCommitAt": null, "recordsProcessed": 0
    });
    redis::cmd("HSET")
        .arg(&hash)
        .arg("<b>not-a-report</b>")
        .arg("{<script>alert(1)</script>")
        .arg("gone-host:1:00000001")
        .arg(dead.to_string())
        .query_async::<()>(&mut pipeline.redis.clone())
        .await
        .unwrap();
    let before = main_stage(&consumers().await);
    assert_eq!(before["stage"], "main");
    assert_eq!(before["group"], group.as_str());
    assert_eq!(
        before["unreadable"],
        json!(["<b>not-a-report</b>"]),
        "{before}"
    );
    assert_eq!(before["instances"].as_array().unwrap().len(), 1, "{before}");
    assert_eq!(before["instances"][0]["stale"], true, "{before}");

    // Records wait and nobody (fresh) owns their partitions: flagged.
    for _ in 0..3 {
        assert_eq!(
            pipeline
                .post_activity(ACME_KEY, None, &activity("u1", "login"))
                .await
                .status(),
            202
        );
    }
    eventually("partitions with lag flagged as unowned", || async {
        !main_stage(&consumers().await)["unownedWithLag"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;

    // A consumer in this process: its instance appears with every partition, a commit and the
    // records it processed.
    let shutdown = CancellationToken::new();
    let runtime = ConsumerRuntime::start(&pipeline.settings, Stages::All, shutdown.clone())
        .await
        .expect("the consumer starts");
    let running = tokio::spawn(runtime.wait());
    let partitions = pipeline.settings.kafka.partitions as usize;
    let fresh = |stage: &Value| -> Option<Value> {
        stage["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|instance| instance["stale"] == false)
            .cloned()
    };
    eventually(
        "the instance owns every partition, committed and processed 3",
        || async {
            let stage = main_stage(&consumers().await);
            fresh(&stage).is_some_and(|instance| {
                instance["partitions"].as_array().unwrap().len() == partitions
                    && instance["lastCommitAt"].is_string()
                    && instance["recordsProcessed"].as_u64() >= Some(3)
            }) && stage["unownedWithLag"] == json!([])
        },
    )
    .await;
    let view = consumers().await;
    let instance = fresh(&main_stage(&view)).unwrap();
    assert_eq!(instance["pid"], std::process::id());
    assert_eq!(instance["breakerOpen"], false, "{instance}");
    assert!(instance["secondsSinceCommit"].as_i64().unwrap() >= 0);
    let stages: Vec<&str> = view["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| stage["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["main", "retry.1", "retry.2", "retry.3"]);
    // Every stage of the process reports, under the process's one instance id.
    for stage in view["stages"].as_array().unwrap() {
        let reported = fresh(stage).unwrap_or_else(|| panic!("no instance: {stage}"));
        assert_eq!(reported["instance"], instance["instance"], "{stage}");
    }
    let cookie = console.log_in(VIEWER_TOKEN).await;
    let (status, page) = console.page(&cookie, "/console").await;
    assert_eq!(status, 200);
    let id = instance["instance"].as_str().unwrap();
    assert!(
        page.contains(id) && page.contains("id=\"consumers\""),
        "{page}"
    );
    assert!(page.contains("&lt;b&gt;not-a-report&lt;/b&gt;"), "{page}");

    // MongoDB stops answering: the breaker opens, and says why.
    blackhole.swallow(true);
    assert_eq!(
        pipeline
            .post_activity(ACME_KEY, None, &activity("u1", "login"))
            .await
            .status(),
        202
    );
    eventually("the breaker shows open, for MongoDB", || async {
        fresh(&main_stage(&consumers().await)).is_some_and(|instance| {
            instance["breakerOpen"] == true && instance["lastErrorClass"] == "mongodb"
        })
    })
    .await;
    let (_, page) = console.page(&cookie, "/console").await;
    assert!(
        page.contains("open") && page.contains("(mongodb)"),
        "{page}"
    );
    blackhole.swallow(false);
    eventually("the breaker closes again", || async {
        fresh(&main_stage(&consumers().await)).is_some_and(|instance| {
            instance["breakerOpen"] == false && instance["breakerSince"].is_string()
        })
    })
    .await;

    // A clean stop removes the instance: only the long-dead one is left, stale.
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let stage = main_stage(&consumers().await);
    let left: Vec<&str> = stage["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|instance| instance["instance"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["gone-host:1:00000001"], "{stage}");

    // Only operators: no credentials, or a tenant's key with garbage, get 401.
    let (status, _) = console.get(None, "/console/api/consumers").await;
    assert_eq!(status, 401);
    let (status, _) = console
        .get(Some(ACME_KEY), "/console/api/consumers?stage=%00garbage")
        .await;
    assert_eq!(status, 401);
    console.stop();
    pipeline.stop().await;
}

/// Whether a response set a session cookie.
fn opened_a_session(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|value| {
            value.to_str().unwrap().starts_with("ap_console_session=")
                && !value.to_str().unwrap().starts_with("ap_console_session=;")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_login_post_is_refused_and_opens_no_session() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
    let console = TestConsole::spawn(&pipeline).await;
    let (cookie, csrf) = console.login_challenge().await;
    let (other_cookie, other_csrf) = console.login_challenge().await;
    assert_ne!(csrf, other_csrf);

    // Another site's form: a valid operator token, but no cookie of ours, or no token, or another
    // browser's token, or garbage.
    let forged: [(Option<&str>, Option<&str>); 7] = [
        (None, None),
        (None, Some(&csrf)),
        (Some(&cookie), None),
        (Some(&cookie), Some("")),
        (Some(&cookie), Some(&other_csrf)),
        (Some(&other_cookie), Some(&csrf)),
        (Some("ap_console_login=<script>%00"), Some("%00'\"garbage")),
    ];
    for (cookie, token) in forged {
        let response = console.post_login(cookie, token, ADMIN_TOKEN).await;
        assert_eq!(
            response.status().as_u16(),
            403,
            "cookie {cookie:?}, token {token:?}"
        );
        assert!(
            !opened_a_session(&response),
            "cookie {cookie:?}, token {token:?}"
        );
        let page = response.text().await.unwrap();
        assert!(
            page.contains("CSRF") || page.contains("login cookie"),
            "{page}"
        );
    }
    // Not JSON, not a form: a precise 400, no session.
    let response = console
        .http
        .post(console.url("/console/login"))
        .header("Cookie", &cookie)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("token=a&csrfToken=b&surprise=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(!opened_a_session(&response));
    // The refusals are audited.
    let refusals = console
        .audit()
        .await
        .iter()
        .filter(|entry| {
            entry["action"] == "login" && entry["outcome"].as_str().unwrap().contains("CSRF")
        })
        .count();
    assert!(refusals >= 4, "{refusals}");

    // The login page's own form, in the same browser, logs in (and spends the pre-login cookie).
    let response = console
        .post_login(Some(&cookie), Some(&csrf), ADMIN_TOKEN)
        .await;
    assert_eq!(response.status().as_u16(), 303);
    assert!(opened_a_session(&response));
    let spent = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|value| value.to_str().unwrap().starts_with("ap_console_login=;"));
    assert!(spent, "{:?}", response.headers());
    console.stop();
    pipeline.stop().await;
}
