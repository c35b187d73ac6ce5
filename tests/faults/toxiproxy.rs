//! Toxiproxy (Shopify's TCP fault proxy), run by the suite and driven through its HTTP API: one proxy
//! per dependency between the roles and Kafka, MongoDB and Redis, and toxics (latency, bandwidth,
//! stalls, resets) or a disabled proxy (a partition) on the fault schedule.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use crate::stack::Service;

pub struct Toxiproxy {
    api: String,
    http: reqwest::Client,
    child: tokio::process::Child,
}

impl Toxiproxy {
    /// Installs the server if needed (`scripts/install-toxiproxy.sh`), starts it on `port` and waits
    /// for its API. `seed` seeds its own randomness (toxicity), for reproducible runs.
    pub async fn start(repo: &Path, port: u16, seed: u64, log: &Path) -> anyhow::Result<Toxiproxy> {
        let install = tokio::process::Command::new(repo.join("scripts/install-toxiproxy.sh"))
            .stderr(Stdio::inherit())
            .output()
            .await
            .context("running scripts/install-toxiproxy.sh")?;
        anyhow::ensure!(
            install.status.success(),
            "scripts/install-toxiproxy.sh failed"
        );
        let binary = String::from_utf8(install.stdout)?.trim().to_owned();
        let log = std::fs::File::create(log)?;
        let child = tokio::process::Command::new(&binary)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .args(["-seed", &(seed & (i64::MAX as u64)).to_string()])
            .env("LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let toxiproxy = Toxiproxy {
            api: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            child,
        };
        for _ in 0..100 {
            if toxiproxy
                .http
                .get(format!("{}/version", toxiproxy.api))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success())
            {
                return Ok(toxiproxy);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("toxiproxy-server did not answer on port {port}")
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<()> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.api));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("toxiproxy {method} {path}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            anyhow::bail!("toxiproxy {method} {path}: {status} {text}");
        }
        Ok(())
    }

    pub async fn create_proxy(
        &self,
        service: Service,
        listen: u16,
        upstream: u16,
    ) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            "/proxies",
            Some(json!({
                "name": service.name(),
                "listen": format!("127.0.0.1:{listen}"),
                "upstream": format!("127.0.0.1:{upstream}"),
                "enabled": true,
            })),
        )
        .await
    }

    /// Adds a toxic on both directions (`<name>_up`, `<name>_down`) or one.
    pub async fn add_toxic(
        &self,
        service: Service,
        name: &str,
        kind: &str,
        stream: &str,
        attributes: Value,
    ) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/proxies/{}/toxics", service.name()),
            Some(json!({
                "name": name,
                "type": kind,
                "stream": stream,
                "toxicity": 1.0,
                "attributes": attributes,
            })),
        )
        .await
    }

    pub async fn remove_toxic(&self, service: Service, name: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/proxies/{}/toxics/{name}", service.name()),
            None,
        )
        .await
    }

    /// Disabling a proxy closes its connections and refuses new ones: a network partition.
    pub async fn set_enabled(&self, service: Service, enabled: bool) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/proxies/{}", service.name()),
            Some(json!({ "enabled": enabled })),
        )
        .await
    }

    /// Every proxy enabled, every toxic removed.
    pub async fn reset(&self) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/reset", None).await
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
