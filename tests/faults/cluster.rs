//! The drill's own cluster: `scripts/cluster.sh` (three KRaft brokers, and the Redis Cluster) in a
//! directory of the run and at a port offset of its own (`AP_CLUSTER_DIR`,
//! `AP_CLUSTER_PORT_OFFSET`), so the shared cluster on the default ports is never touched. Knows
//! where each node's pid file is, so the drill can SIGKILL one, and asks the KRaft quorum which
//! node is the active controller.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::stack::{kill_and_wait, read_pid};
use anyhow::Context;

/// The three KRaft nodes of the profile (each broker and controller).
pub const KAFKA_NODES: [u8; 3] = [1, 2, 3];
/// Redis Cluster ports before the offset: masters 7001-7003 and their replicas 7004-7006 as
/// `redis-cli --cluster create` pairs them at creation (roles change with every failover).
const REDIS_BASE_PORTS: [u16; 6] = [7001, 7002, 7003, 7004, 7005, 7006];
/// Offsets tried for a private cluster, in this order: every port, the Redis buses (+10000)
/// included, lands between 18001 and 32606, clear of the shared services' ports and below the
/// kernel's ephemeral range (32768 and up), where the other runs' free ports come from; every port
/// is still checked free before an offset is taken (a bench may run a private cluster too).
const OFFSET_CANDIDATES: std::ops::Range<u16> = 110..157;
const OFFSET_STEP: u16 = 100;

/// Every port the cluster would bind at `offset`: brokers, controllers, Redis nodes and their
/// cluster buses (port + 10000).
pub fn cluster_ports(offset: u16) -> Vec<u16> {
    let mut ports = Vec::new();
    for node in KAFKA_NODES {
        ports.push(9191 + offset + u16::from(node));
        ports.push(9291 + offset + u16::from(node));
    }
    for port in REDIS_BASE_PORTS {
        ports.push(port + offset);
        ports.push(port + offset + 10000);
    }
    ports
}

/// The first candidate offset whose every port is free on 127.0.0.1.
pub fn pick_offset() -> anyhow::Result<u16> {
    OFFSET_CANDIDATES
        .map(|step| step * OFFSET_STEP)
        .find(|offset| {
            cluster_ports(*offset)
                .iter()
                .all(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        })
        .ok_or_else(|| anyhow::anyhow!("no port offset with all the cluster's ports free"))
}

/// The leader of the KRaft quorum in `MetadataQuorumCommand describe --status` output
/// (`LeaderId:              2`).
pub fn parse_quorum_leader(output: &str) -> Option<u8> {
    output.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == "LeaderId")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// The masters of `CLUSTER NODES` output that hold slots, as ports, with the node ids of their
/// replicas' masters resolved: `(master port, [replica ports])`.
pub fn parse_cluster_nodes(output: &str) -> Vec<(u16, Vec<u16>)> {
    struct Node<'a> {
        id: &'a str,
        port: u16,
        master_of: Option<&'a str>,
        serving: bool,
    }
    let nodes: Vec<Node> = output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let id = *fields.first()?;
            // `127.0.0.1:7001@17001` (the bus port after `@`, a hostname after `,`).
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let port = address.rsplit(':').next()?.parse().ok()?;
            let flags = fields.get(2)?;
            let failed = flags.contains("fail") && !flags.contains("fail?");
            let master_of = fields.get(3).filter(|master| **master != "-").copied();
            Some(Node {
                id,
                port,
                master_of: if flags.contains("slave") {
                    master_of
                } else {
                    None
                },
                serving: flags.contains("master") && !failed && fields.len() > 8,
            })
        })
        .collect();
    let mut masters: Vec<(u16, Vec<u16>)> = nodes
        .iter()
        .filter(|node| node.serving)
        .map(|master| {
            let replicas = nodes
                .iter()
                .filter(|node| node.master_of == Some(master.id))
                .map(|node| node.port)
                .collect();
            (master.port, replicas)
        })
        .collect();
    masters.sort();
    masters
}

/// The private cluster of one drill run.
pub struct PrivateCluster {
    pub dir: PathBuf,
    pub offset: u16,
    repo: PathBuf,
    log: PathBuf,
    running: bool,
}

impl PrivateCluster {
    pub fn new(repo: &Path, dir: PathBuf, offset: u16, log: PathBuf) -> PrivateCluster {
        PrivateCluster {
            dir,
            offset,
            repo: repo.to_owned(),
            log,
            running: false,
        }
    }

    pub fn kafka_port(&self, node: u8) -> u16 {
        9191 + self.offset + u16::from(node)
    }

    pub fn controller_port(&self, node: u8) -> u16 {
        9291 + self.offset + u16::from(node)
    }

    /// `127.0.0.1:<broker 1>,...`: the roles' and the checker's bootstrap list.
    pub fn bootstrap(&self) -> String {
        KAFKA_NODES
            .iter()
            .map(|node| format!("127.0.0.1:{}", self.kafka_port(*node)))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn redis_ports(&self) -> Vec<u16> {
        REDIS_BASE_PORTS
            .iter()
            .map(|port| port + self.offset)
            .collect()
    }

    /// The seed nodes of the Redis Cluster as the roles' `redis.url` takes them.
    pub fn redis_seed_urls(&self) -> String {
        self.redis_ports()[..3]
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn script(&self, args: &[&str]) -> anyhow::Result<tokio::process::Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = tokio::process::Command::new(self.repo.join("scripts/cluster.sh"));
        command
            .args(args)
            .env("AP_CLUSTER_DIR", &self.dir)
            .env("AP_CLUSTER_PORT_OFFSET", self.offset.to_string())
            // Two cores, four agents: three brokers with less heap start and restart as well.
            .env("AP_CLUSTER_KAFKA_HEAP", "384m")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        Ok(command)
    }

    /// `cluster.sh up <part>`: starts what is not running and waits for the part's readiness (all
    /// three brokers with complete ISRs; `cluster_state:ok` on every Redis node).
    pub async fn up(&mut self, part: &str) -> anyhow::Result<()> {
        self.running = true;
        let status = self
            .script(&["up", part])?
            .status()
            .await
            .context("running scripts/cluster.sh")?;
        anyhow::ensure!(
            status.success(),
            "scripts/cluster.sh up {part} failed ({status}); see {}",
            self.log.display()
        );
        Ok(())
    }

    /// SIGKILL of one broker's JVM (a crash); `up("kafka")` restarts it.
    pub async fn kill_kafka(&self, node: u8) -> anyhow::Result<()> {
        let pid = read_pid(&self.dir.join(format!("kafka-{node}/kafka.pid")))?;
        kill_and_wait(&pid).await
    }

    /// SIGKILL of one Redis node; `up("redis")` restarts it (it rejoins from its nodes.conf).
    pub async fn kill_redis(&self, port: u16) -> anyhow::Result<()> {
        let pid = read_pid(&self.dir.join(format!("redis-{port}/redis.pid")))?;
        kill_and_wait(&pid).await
    }

    /// The node that leads the KRaft quorum: the active controller.
    pub async fn active_controller(&self) -> anyhow::Result<u8> {
        let query = tokio::process::Command::new(self.repo.join("scripts/kafka-class.sh"))
            .args([
                "org.apache.kafka.tools.MetadataQuorumCommand",
                "--bootstrap-server",
                &self.bootstrap(),
                "describe",
                "--status",
            ])
            .env("AP_KAFKA_JAVA_OPTS", "-Xmx128m")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        // A JVM's start on a loaded machine takes seconds; a quorum that cannot answer, forever.
        let output = tokio::time::timeout(Duration::from_secs(90), query)
            .await
            .context("MetadataQuorumCommand did not answer within 90 s")?
            .context("running MetadataQuorumCommand")?;
        let text = String::from_utf8_lossy(&output.stdout);
        parse_quorum_leader(&text).ok_or_else(|| {
            anyhow::anyhow!(
                "MetadataQuorumCommand named no leader ({}): {text} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    /// `CLUSTER NODES` asked of the first node in `ports` that answers.
    pub async fn redis_masters(&self, ports: &[u16]) -> anyhow::Result<Vec<(u16, Vec<u16>)>> {
        for port in ports {
            let output = tokio::process::Command::new("redis-cli")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "cluster",
                    "nodes",
                ])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output();
            if let Ok(Ok(output)) = tokio::time::timeout(Duration::from_secs(5), output).await {
                if output.status.success() && !output.stdout.is_empty() {
                    return Ok(parse_cluster_nodes(&String::from_utf8_lossy(
                        &output.stdout,
                    )));
                }
            }
        }
        anyhow::bail!("no Redis node of {ports:?} answered CLUSTER NODES")
    }

    /// Stops every node (blocking; also on the way out after an error), deleting the data when
    /// `delete_data`.
    pub fn stop_blocking(&mut self, delete_data: bool) {
        if !self.running {
            return;
        }
        let verb = if delete_data { "reset" } else { "down" };
        let _ = std::process::Command::new(self.repo.join("scripts/cluster.sh"))
            .arg(verb)
            .env("AP_CLUSTER_DIR", &self.dir)
            .env("AP_CLUSTER_PORT_OFFSET", self.offset.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop_blocking(false);
    }
}

/// The pure parts, run by `--self-checks` and at the start of every run.
pub mod checks {
    use super::*;

    pub fn quorum_leader_is_parsed() {
        let output =
            "ClusterId:              abc\nLeaderId:               2\nLeaderEpoch:            7\n\
                      HighWatermark:          1234\nCurrentVoters:          [{\"id\": 1}]\n";
        assert_eq!(parse_quorum_leader(output), Some(2));
        assert_eq!(parse_quorum_leader("LeaderId: -1\n"), None);
        assert_eq!(parse_quorum_leader("nothing here"), None);
    }

    pub fn cluster_nodes_are_parsed() {
        let output = "\
a1 127.0.0.1:27001@37001 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:27002@37002 master - 0 1 2 connected 5461-10922
a3 127.0.0.1:27003@37003 master,fail - 0 1 3 connected
a4 127.0.0.1:27004@37004 slave a2 0 1 2 connected
a5 127.0.0.1:27005@37005 master - 0 1 7 connected 10923-16383
a6 127.0.0.1:27006@37006 slave a1 0 1 1 connected
";
        assert_eq!(
            parse_cluster_nodes(output),
            vec![(27001, vec![27006]), (27002, vec![27004]), (27005, vec![])]
        );
    }

    pub fn offsets_keep_ports_in_range() {
        assert_eq!(cluster_ports(0).len(), 18);
        assert!(cluster_ports(11000).contains(&20192));
        assert!(cluster_ports(11000).contains(&28006), "a Redis bus port");
        let shared: Vec<u16> = cluster_ports(0)
            .into_iter()
            .chain([9092, 9093, 6379, 27017, 5433])
            .collect();
        for offset in OFFSET_CANDIDATES.map(|step| step * OFFSET_STEP) {
            assert!(offset <= 40000, "cluster.sh refuses offsets over 40000");
            for port in cluster_ports(offset) {
                assert!(
                    (1025..32768).contains(&port),
                    "offset {offset}: port {port} outside 1025-32767"
                );
                assert!(
                    !shared.contains(&port),
                    "offset {offset}: port {port} is a shared service's"
                );
            }
        }
    }
}
