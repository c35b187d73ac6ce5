//! Private instances of Redis and FerretDB for the tests that stop and start a dependency: stopping the
//! shared stack's services would break the tests running beside them. Same binaries as the stack
//! (`make stack-up` installs them), each on a free port with its own data directory.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_until<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not come up within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Redis server of the test's own.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let mut redis = PrivateRedis {
            port: free_port(),
            child: None,
        };
        redis.resume().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port (its data is gone: persistence is off, as after a
    /// failover without it).
    pub async fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make stack-up)");
        self.child = Some(child);
        let url = self.url();
        wait_until("private Redis", || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok()
            }
        })
        .await;
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A FerretDB of the test's own, with its SQLite data in a temporary directory that survives restarts.
pub struct PrivateMongo {
    pub port: u16,
    data: tempfile::TempDir,
    child: Option<Child>,
}

fn ferretdb_binary() -> PathBuf {
    let cache = std::env::var_os("AP_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/activity-pipeline")
        });
    cache.join("bin/ferretdb")
}

impl PrivateMongo {
    pub async fn start() -> PrivateMongo {
        let mut mongo = PrivateMongo {
            port: free_port(),
            data: tempfile::tempdir().unwrap(),
            child: None,
        };
        mongo.resume().await;
        mongo
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    pub async fn resume(&mut self) {
        let data = self.data.path().join("data");
        let state = self.data.path().join("state");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let child = Command::new(ferretdb_binary())
            .arg("--handler=sqlite")
            .arg(format!("--sqlite-url=file:{}/", data.display()))
            .arg(format!("--listen-addr=127.0.0.1:{}", self.port))
            .arg(format!("--state-dir={}", state.display()))
            .args(["--debug-addr=-", "--telemetry=disable", "--log-level=error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("FerretDB is built (make stack-up)");
        self.child = Some(child);
        let uri = self.uri();
        wait_until("private FerretDB", || {
            let uri = uri.clone();
            async move {
                let Ok(client) = mongodb::Client::with_uri_str(&uri).await else {
                    return false;
                };
                client
                    .database("admin")
                    .run_command(mongodb::bson::doc! {"ping": 1})
                    .await
                    .is_ok()
            }
        })
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateMongo {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of the test's own (three masters, a replica each), made by the cluster profile's
/// script on ports shifted by `offset` (`AP_CLUSTER_PORT_OFFSET`) in a temporary directory, so a
/// test can kill a master without touching the shared cluster. Stopped and deleted on drop.
pub struct PrivateRedisCluster {
    pub offset: u16,
    directory: PathBuf,
}

impl PrivateRedisCluster {
    pub fn start(offset: u16) -> PrivateRedisCluster {
        let directory = std::env::temp_dir().join(format!(
            "ap-redis-cluster-{}",
            uuid::Uuid::now_v7().simple()
        ));
        let cluster = PrivateRedisCluster { offset, directory };
        let status = cluster
            .script("up")
            .arg("redis")
            .status()
            .expect("scripts/cluster.sh runs");
        assert!(status.success(), "the private Redis Cluster came up");
        cluster
    }

    fn script(&self, command: &str) -> Command {
        let mut script =
            Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh"));
        script
            .arg(command)
            .env("AP_CLUSTER_DIR", &self.directory)
            .env("AP_CLUSTER_PORT_OFFSET", self.offset.to_string())
            .stdout(Stdio::null());
        script
    }

    /// The node that started on `7001 + n`'s port, shifted.
    pub fn port(&self, n: u16) -> u16 {
        7001 + self.offset + n
    }

    /// The three first nodes' URLs, comma-separated (`redis.url` with `redis.cluster`).
    pub fn seeds(&self) -> String {
        (0..3)
            .map(|n| format!("redis://127.0.0.1:{}", self.port(n)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs the node on `port`: no shutdown, no last write to its replica.
    pub fn kill(&self, port: u16) {
        let pid_file = self.directory.join(format!("redis-{port}/redis.pid"));
        let pid = std::fs::read_to_string(&pid_file).expect("the node's pid file");
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "redis-{port} was killed");
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        let _ = self.script("down").status();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}
