//! The console as a person uses it, in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/install-chromium.sh`, which `make test` runs), driven over
//! WebDriver with fantoccini, against the real stack: log in, watch a stopped consumer's lag grow, a
//! viewer refused an action, filter dead letters by tenant and class, open one, preview and replay it
//! (a job, followed on its page to "succeeded") and see the activity stored once, purge one (a job
//! too), the jobs list, and a markup payload rendered as text; and a tenant's live tail showing a
//! posted activity (markup in it as text, other types filtered out).
//!
//! It saves screenshots of the overview, the dead letters, a record's page, a job's page and a
//! tenant's page in
//! `target/console-screenshots/` (or `$CONSOLE_SCREENSHOTS_DIR`); the README's are copies of them.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use activity_pipeline::consume::{ConsumerRuntime, Stages};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::console::{dead_letter, TestConsole, ADMIN_TOKEN, VIEWER_TOKEN};
use crate::helpers::{activity, eventually, filter, TestPipeline, ACME_KEY, MANIFEST_DIR};

/// A chromedriver process and one headless Chromium session through it.
struct Browser {
    driver: Child,
    client: Client,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // In a process group of its own, so that dropping the browser ends Chromium too, even when
        // a failing test never closed the session (Chromium is chromedriver's child).
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver runs (scripts/install-chromium.sh installs Debian's chromium-driver)",
            );
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // As root (CI) Chromium needs --no-sandbox; /dev/shm may be small in containers.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900"]
            }
        });
        let capabilities = capabilities.as_object().unwrap().clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::native()
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no WebDriver session from chromedriver: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Browser { driver, client }
    }

    /// Waits (30 s at most) until the page at `path` is loaded: a click or a submit returns before
    /// the navigation it starts has finished.
    async fn wait_for_path(&self, path: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.client.current_url().await.unwrap();
            let ready = self
                .client
                .execute("return document.readyState", vec![])
                .await
                .unwrap();
            if now.path() == path && ready == "complete" {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still at {now}, waiting for {path}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (30 s at most) until the text of `css` starts with `expected`; returns the text.
    async fn wait_for_text(&self, css: &str, expected: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                if let Ok(text) = element.text().await {
                    if text.starts_with(expected) {
                        return text;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} never started with {expected:?}; the page: {}",
                self.client.source().await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text_of(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("{css} on the page: {error}"))
            .text()
            .await
            .unwrap()
    }

    async fn log_in(&self, console: &TestConsole, token: &str) {
        self.client.goto(&console.url("/console")).await.unwrap();
        assert_eq!(
            self.client.current_url().await.unwrap().path(),
            "/console/login"
        );
        let form = self.client.form(Locator::Css("main form")).await.unwrap();
        form.set_by_name("token", token).await.unwrap();
        form.submit().await.unwrap();
        self.wait_for_path("/console").await;
    }

    async fn log_out(&self, console: &TestConsole) {
        self.client.goto(&console.url("/console")).await.unwrap();
        self.client
            .find(Locator::Css("form.logout button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait_for_path("/console/login").await;
    }

    async fn screenshot(&self, name: &str) {
        let directory = std::env::var_os("CONSOLE_SCREENSHOTS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(MANIFEST_DIR).join("target/console-screenshots"));
        std::fs::create_dir_all(&directory).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(directory.join(format!("{name}.png")), png).unwrap();
    }

    /// Ends the session (Chromium quits); dropping the browser then stops chromedriver.
    async fn stop(self) {
        let _ = self.client.clone().close().await;
    }
}

/// A failing test unwinds past `stop`: chromedriver must not outlive it either way.
impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

/// The main stage's backlog as the overview page shows it.
async fn main_backlog(browser: &Browser, console: &TestConsole) -> i64 {
    browser.client.goto(&console.url("/console")).await.unwrap();
    browser
        .text_of("tr[data-stage='main'] td.backlog")
        .await
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_uses_the_console_in_a_browser() {
    let pipeline = TestPipeline::spawn_api_only(&[]).await;
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
    dead_letter(
        &pipeline,
        "acme",
        "markup",
        "poison",
        "<img src=x onerror=alert(1)>",
        b"<script>alert('pwned')</script>",
    )
    .await;
    let browser = Browser::start().await;

    // A viewer logs in and watches the lag of the stopped consumer grow.
    browser.log_in(&console, VIEWER_TOKEN).await;
    for _ in 0..3 {
        assert_eq!(
            pipeline
                .post_activity(ACME_KEY, None, &activity("u1", "login"))
                .await
                .status(),
            202
        );
    }
    eventually("the overview shows a backlog of 3", || async {
        main_backlog(&browser, &console).await == 3
    })
    .await;
    for _ in 0..4 {
        pipeline
            .post_activity(ACME_KEY, None, &activity("u1", "login"))
            .await;
    }
    eventually("the overview shows the backlog grown to 7", || async {
        main_backlog(&browser, &console).await == 7
    })
    .await;
    assert!(browser
        .client
        .find(Locator::Css("svg.chart polyline"))
        .await
        .is_ok());
    browser.screenshot("console-overview").await;

    // The viewer sees no action buttons, and an action posted from the page anyway is refused.
    browser
        .client
        .goto(&console.url("/console/dead-letters"))
        .await
        .unwrap();
    assert!(browser.text_of("main").await.contains("Viewers look"));
    let csrf = browser
        .client
        .find(Locator::Css("form.logout input[name=csrfToken]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    browser
        .client
        .execute(
            "const form = document.createElement('form');
             form.method = 'post'; form.action = '/console/dead-letters/replay';
             for (const [name, value] of [['all', 'true'], ['dryRun', 'false'], ['csrfToken', arguments[0]]]) {
                 const input = document.createElement('input');
                 input.type = 'hidden'; input.name = name; input.value = value; form.appendChild(input);
             }
             document.body.appendChild(form); form.submit();",
            vec![json!(csrf)],
        )
        .await
        .unwrap();
    eventually("the refusal page", || async {
        browser.text_of("main").await.contains("is a viewer")
    })
    .await;
    browser.wait_for_text("h1", "403").await;
    browser.log_out(&console).await;

    // An admin filters the dead letters by tenant and class, and opens the one left.
    browser.log_in(&console, ADMIN_TOKEN).await;
    browser
        .client
        .goto(&console.url("/console/dead-letters"))
        .await
        .unwrap();
    eventually("four dead letters listed", || async {
        browser
            .text_of("main")
            .await
            .contains("4 dead letter(s) match")
    })
    .await;
    browser.screenshot("console-dead-letters").await;
    let form = browser
        .client
        .form(Locator::Css("form.filter"))
        .await
        .unwrap();
    form.set_by_name("tenant", "acme").await.unwrap();
    browser
        .client
        .find(Locator::Css("select[name=class]"))
        .await
        .unwrap()
        .select_by_value("transient")
        .await
        .unwrap();
    form.submit_with(Locator::Css("form.filter button"))
        .await
        .unwrap();
    browser
        .wait_for_text("main p", "1 dead letter(s) match")
        .await;
    let rows = browser
        .client
        .find_all(Locator::Css("#dead-letters tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].text().await.unwrap().contains("lost-in-incident"));
    rows[0]
        .find(Locator::Css("a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_text("h1", "Dead letter ").await;
    assert!(browser
        .text_of("#payload")
        .await
        .contains("\"idempotencyKey\": \"lost-in-incident\""));
    browser.screenshot("console-dead-letter").await;

    // Preview, then replay: with a consumer running, the activity is stored once.
    let shutdown = CancellationToken::new();
    let runtime = ConsumerRuntime::start(&pipeline.settings, Stages::All, shutdown.clone())
        .await
        .expect("the consumer starts");
    tokio::spawn(async move { runtime.wait().await.expect("the consumer runs") });
    browser
        .client
        .find(Locator::XPath("//button[text()='Preview replay']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_text("h1", "Replay preview").await;
    browser
        .wait_for_text("p.counts", "1 selected: 1 would be replayed")
        .await;
    // The replay runs as a job: the browser lands on its page, which follows it to the end. Held
    // before its dead letter, the page shows it running; released, the page's script sees it
    // succeed and shows the report.
    let held = std::sync::Arc::clone(&console.job_hold).write_owned().await;
    browser
        .client
        .find(Locator::XPath("//button[text()='Replay these 1']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_text("h1", "Replay job").await;
    let job_page = browser.client.current_url().await.unwrap();
    assert!(job_page.path().starts_with("/console/jobs/"), "{job_page}");
    browser.wait_for_text("#job-state", "running").await;
    assert!(browser.text_of("#job-count").await.starts_with("0 / 1"));
    drop(held);
    browser.wait_for_text("#job-state", "succeeded").await;
    browser
        .wait_for_text("p.counts", "1 selected: 1 replayed")
        .await;
    assert!(browser.text_of("#job-count").await.starts_with("1 / 1"));
    browser.screenshot("console-job").await;
    assert_eq!(
        pipeline
            .wait_for_count(filter("acme", "lost-in-incident"), 1)
            .await,
        1
    );
    eventually("the stopped consumer's backlog drained", || async {
        main_backlog(&browser, &console).await == 0
    })
    .await;
    assert_eq!(pipeline.count(filter("acme", "lost-in-incident")).await, 1);

    // Purge globex's dead letter: preview, purge, gone from the list.
    browser
        .client
        .goto(&console.url("/console/dead-letters?tenant=globex"))
        .await
        .unwrap();
    browser
        .client
        .find(Locator::XPath("//button[text()='Preview purge']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for_text("p.counts", "1 selected: 1 would be purged")
        .await;
    browser
        .client
        .find(Locator::XPath("//button[text()='Purge these 1']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_text("h1", "Purge job").await;
    browser.wait_for_text("#job-state", "succeeded").await;
    browser
        .wait_for_text("p.counts", "1 selected: 1 purged")
        .await;
    // The jobs list, linked from the navigation, has both, newest first.
    browser
        .client
        .find(Locator::LinkText("Jobs"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_text("h1", "Jobs").await;
    let jobs = browser.text_of("#jobs tbody").await;
    assert!(
        jobs.find("purge").unwrap() < jobs.find("replay").unwrap(),
        "{jobs}"
    );
    browser
        .client
        .goto(&console.url("/console/dead-letters?tenant=globex"))
        .await
        .unwrap();
    assert!(browser
        .text_of("main")
        .await
        .contains("0 dead letter(s) match"));

    // The markup payload is text on the page: no element was made of it, and no dialog opened.
    browser
        .client
        .goto(&console.url("/console/dead-letters?text=pwned"))
        .await
        .unwrap();
    browser
        .client
        .find(Locator::Css("#dead-letters tbody tr a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_text("h1", "Dead letter ").await;
    assert_eq!(
        browser.text_of("#payload").await,
        "<script>alert('pwned')</script>"
    );
    assert!(browser
        .client
        .find_all(Locator::Css("#payload *"))
        .await
        .unwrap()
        .is_empty());
    assert!(
        browser.client.get_alert_text().await.is_err(),
        "no alert opened"
    );
    assert!(browser
        .text_of("dd.error-text")
        .await
        .contains("<img src=x onerror=alert(1)>"));

    browser.stop().await;
    shutdown.cancel();
    console.stop();
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_tail_shows_a_posted_activity_as_text() {
    let pipeline = TestPipeline::spawn().await;
    let console = TestConsole::spawn(&pipeline).await;
    let browser = Browser::start().await;
    browser.log_in(&console, VIEWER_TOKEN).await;
    browser
        .client
        .goto(&console.url("/console/tenants/acme?type=comment.created"))
        .await
        .unwrap();
    // The script ran (the CSP lets the console's own script run) and the stream is open.
    browser.wait_for_text("#tail-status", "live").await;

    let response = pipeline
        .post_activity(ACME_KEY, Some("tail-login"), &activity("u1", "login"))
        .await;
    assert_eq!(response.status(), 202);
    let mut comment = activity("u1", "comment.created");
    comment["actorName"] = json!("<img src=x onerror=alert(1)>");
    let response = pipeline
        .post_activity(ACME_KEY, Some("tail-comment"), &comment)
        .await;
    assert_eq!(response.status(), 202);
    let line = browser.wait_for_text("#tail li", "{").await;
    assert!(
        line.contains("\"idempotencyKey\":\"tail-comment\""),
        "{line}"
    );
    assert!(
        line.contains("<img src=x onerror=alert(1)>"),
        "the markup shows as text: {line}"
    );
    assert!(
        browser
            .client
            .find(Locator::Css("#tail img"))
            .await
            .is_err(),
        "no element was made from the event"
    );
    let lines = browser
        .client
        .find_all(Locator::Css("#tail li"))
        .await
        .unwrap();
    assert_eq!(lines.len(), 1, "the login is filtered out");
    // The README's screenshot shows the tail with its event.
    browser
        .client
        .execute(
            "document.querySelector('h2:last-of-type').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
    browser.screenshot("console-tenant").await;
    browser.stop().await;
    console.stop();
    pipeline.stop().await;
}
