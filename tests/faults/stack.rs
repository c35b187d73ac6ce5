//! The suite's own instance of the stack (Kafka, FerretDB, Redis), run by `scripts/stack.sh` in a
//! directory of the run and on free ports, so the shared stack on the default ports is never touched.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;

/// Every port of a run, all picked free on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Ports {
    /// The broker's own listener; its KRaft controller listens on `kafka + 1`.
    pub kafka: u16,
    /// Where the broker tells clients to connect: the Kafka fault proxy.
    pub kafka_proxy: u16,
    pub mongo: u16,
    pub mongo_proxy: u16,
    pub redis: u16,
    pub redis_proxy: u16,
    /// FerretDB's PostgreSQL when the stack runs on that backend (`AP_STORE_BACKEND`); no fault
    /// proxy in front of it: the faults are between the roles and the services they talk to.
    pub postgres: u16,
    pub api: u16,
    /// The cluster drill's second `produce` instance.
    pub second_api: u16,
    pub toxiproxy: u16,
}

impl Ports {
    pub fn pick() -> anyhow::Result<Ports> {
        let mut taken = HashSet::new();
        let mut free = || -> anyhow::Result<u16> {
            for _ in 0..100 {
                let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                if taken.insert(port) {
                    return Ok(port);
                }
            }
            anyhow::bail!("no free port found")
        };
        // The controller needs the next port too.
        let kafka = loop {
            let port = free()?;
            if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                break port;
            }
        };
        Ok(Ports {
            kafka,
            kafka_proxy: free()?,
            mongo: free()?,
            mongo_proxy: free()?,
            redis: free()?,
            redis_proxy: free()?,
            postgres: free()?,
            api: free()?,
            second_api: free()?,
            toxiproxy: free()?,
        })
    }
}

/// One of the three services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Kafka,
    Mongo,
    Redis,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Kafka => "kafka",
            Service::Mongo => "mongo",
            Service::Redis => "redis",
        }
    }
}

/// The private stack: `scripts/stack.sh` with this run's directory and ports.
pub struct PrivateStack {
    pub dir: PathBuf,
    ports: Ports,
    script: PathBuf,
    log: PathBuf,
    running: bool,
}

impl PrivateStack {
    pub fn new(repo: &Path, dir: PathBuf, ports: &Ports, log: PathBuf) -> PrivateStack {
        PrivateStack {
            dir,
            ports: ports.clone(),
            script: repo.join("scripts/stack.sh"),
            log,
            running: false,
        }
    }

    fn command(&self, args: &[&str]) -> anyhow::Result<std::process::Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = std::process::Command::new(&self.script);
        command
            .args(args)
            .env("AP_STACK_DIR", &self.dir)
            .env("AP_STACK_KAFKA_PORT", self.ports.kafka.to_string())
            .env(
                "AP_STACK_KAFKA_ADVERTISED_PORT",
                self.ports.kafka_proxy.to_string(),
            )
            .env("AP_STACK_MONGO_PORT", self.ports.mongo.to_string())
            .env("AP_STACK_REDIS_PORT", self.ports.redis.to_string())
            .env("AP_STACK_POSTGRES_PORT", self.ports.postgres.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(command)
    }

    /// Runs `stack.sh <verb> [service]` and waits for it (`up` waits until the service answers).
    pub async fn run(&mut self, verb: &str, service: Option<Service>) -> anyhow::Result<()> {
        let mut args = vec![verb];
        if let Some(service) = service {
            args.push(service.name());
        }
        let mut command = tokio::process::Command::from(self.command(&args)?);
        let status = command
            .kill_on_drop(true)
            .status()
            .await
            .context("running scripts/stack.sh")?;
        if verb == "up" {
            self.running = true;
        }
        anyhow::ensure!(
            status.success(),
            "scripts/stack.sh {} failed ({status}); see {}",
            args.join(" "),
            self.log.display()
        );
        Ok(())
    }

    pub async fn up(&mut self, service: Option<Service>) -> anyhow::Result<()> {
        self.run("up", service).await
    }

    pub async fn down(&mut self, service: Option<Service>) -> anyhow::Result<()> {
        self.run("down", service).await
    }

    /// SIGKILL of the broker's JVM (a crash, not a shutdown); `up(Some(Kafka))` restarts it.
    pub async fn kill_kafka(&self) -> anyhow::Result<()> {
        kill_and_wait(&read_pid(&self.dir.join("kafka/kafka.pid"))?).await
    }

    /// Stops every service (blocking; also used on the way out after an error).
    pub fn stop_blocking(&mut self) {
        if !self.running {
            return;
        }
        if let Ok(mut command) = self.command(&["down"]) {
            let _ = command.status();
        }
        self.running = false;
    }

    /// Stops everything and deletes the services' data (after a green run).
    pub fn reset_blocking(&mut self) {
        if let Ok(mut command) = self.command(&["reset"]) {
            let _ = command.status();
        }
        self.running = false;
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        self.stop_blocking();
    }
}

/// The pid a service's pid file holds.
pub fn read_pid(pidfile: &Path) -> anyhow::Result<String> {
    let pid = std::fs::read_to_string(pidfile)
        .with_context(|| format!("reading {}", pidfile.display()))?
        .trim()
        .to_owned();
    anyhow::ensure!(
        !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()),
        "bad pid in {}",
        pidfile.display()
    );
    Ok(pid)
}

/// SIGKILL, then wait until the process is gone (so `up` sees a dead pid and restarts it).
pub async fn kill_and_wait(pid: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", pid])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -KILL {pid} failed");
    let stat = PathBuf::from(format!("/proc/{pid}/stat"));
    for _ in 0..100 {
        let alive = std::fs::read_to_string(&stat)
            .map(|stat| {
                let state = stat.rsplit(") ").next().unwrap_or_default();
                !state.starts_with('Z') && !state.starts_with('X')
            })
            .unwrap_or(false);
        if !alive {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("pid {pid} did not die after SIGKILL")
}
