//! The project's roles as separate processes of the real binary: one `produce` (two in the cluster
//! drill) and two `consume` (one consumer group, so killing one rebalances its partitions onto the
//! other; the drill replaces one with a third).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::clock::Clock;

/// One role process, restartable.
pub struct Role {
    pub name: String,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// Set while the suite has this role down on purpose: an exit then is no finding.
    pub down_on_purpose: bool,
    pub starts: u32,
}

/// A role that exited without being told to: always a finding.
#[derive(Debug, Clone)]
pub struct UnexpectedExit {
    pub role: String,
    pub at_secs: f64,
    pub status: String,
    pub log_tail: String,
}

impl Role {
    pub fn new(name: &str, binary: &Path, args: Vec<String>, log: PathBuf) -> Role {
        Role {
            name: name.to_owned(),
            binary: binary.to_owned(),
            args,
            log,
            child: None,
            down_on_purpose: false,
            starts: 0,
        }
    }

    pub fn start(&mut self, clock: &Clock) -> anyhow::Result<()> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        writeln!(
            log,
            "==== faults: start #{} of {} at t={:.1}s",
            self.starts + 1,
            self.name,
            clock.secs()
        )?;
        let child = Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.binary.display()))?;
        self.child = Some(child);
        self.starts += 1;
        self.down_on_purpose = false;
        Ok(())
    }

    /// SIGKILL: a crash. The role stays down until `start`.
    pub async fn kill(&mut self) {
        self.down_on_purpose = true;
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, then SIGKILL after `grace`: the end of the run.
    pub async fn terminate(&mut self, grace: Duration) {
        self.down_on_purpose = true;
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }

    /// If the process exited on its own, how; `None` while it runs (or is down on purpose).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.down_on_purpose {
            return None;
        }
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The last lines of the role's log, for a finding.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Every role of the run.
pub struct Roles {
    /// The `produce` instances: one, or two in the cluster drill (clients spread over them).
    pub apis: Vec<Role>,
    pub consumers: Vec<Role>,
    /// Consumers the drill killed for good (replaced by a new instance): never restarted, and
    /// their exit is no finding.
    pub retired: Vec<Role>,
    pub unexpected_exits: Vec<UnexpectedExit>,
}

impl Roles {
    pub fn all_mut(&mut self) -> impl Iterator<Item = &mut Role> {
        self.apis.iter_mut().chain(self.consumers.iter_mut())
    }

    /// Restarts any role that died on its own and records it as a finding.
    pub fn watch(&mut self, clock: &Clock) {
        let mut exits = Vec::new();
        for role in self.all_mut() {
            if let Some(status) = role.exited() {
                exits.push(UnexpectedExit {
                    role: role.name.clone(),
                    at_secs: clock.secs(),
                    status: status.to_string(),
                    log_tail: role.log_tail(15),
                });
                if let Err(error) = role.start(clock) {
                    eprintln!("faults: restarting {} failed: {error:#}", role.name);
                }
            }
        }
        for exit in &exits {
            eprintln!(
                "faults: FINDING: {} exited on its own at t={:.1}s ({}); restarted",
                exit.role, exit.at_secs, exit.status
            );
        }
        self.unexpected_exits.extend(exits);
    }

    pub async fn terminate_all(&mut self) {
        for role in self.all_mut() {
            role.terminate(Duration::from_secs(15)).await;
        }
    }
}
