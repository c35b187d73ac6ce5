//! A TCP proxy that can swallow the replies of a dependency while keeping every connection open:
//! the client's request reaches the server, and its answer never comes back. That is what a dropped
//! reply looks like to a client (a blackholed route, a middlebox that lost the connection's state):
//! nothing fails, nothing closes, the client waits.
//!
//! Toxiproxy's `timeout` toxic (the fault suite's tool) was tried first and does not do this here:
//! lifting it closed the proxied connections, so the waiting client got an end of file and
//! recovered without any deadline of its own (seen with the deadline disabled).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub struct ReplyBlackhole {
    port: u16,
    /// While set, bytes from the server are read and thrown away.
    swallowing: Arc<AtomicBool>,
    /// The accept loop; aborting it drops (and so aborts) every connection's tasks.
    accept: tokio::task::JoinHandle<()>,
}

impl ReplyBlackhole {
    /// Proxies 127.0.0.1:`port()` to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> ReplyBlackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let port = listener.local_addr().unwrap().port();
        let swallowing = Arc::new(AtomicBool::new(false));
        let flag = swallowing.clone();
        let accept = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                connections.spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let flag = flag.clone();
                connections.spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    loop {
                        let read = match server_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => read,
                        };
                        if !flag.load(Ordering::SeqCst)
                            && client_write.write_all(&buffer[..read]).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        ReplyBlackhole {
            port,
            swallowing,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Swallow the server's replies from now on (`true`), or pass them again (`false`). Replies
    /// swallowed are gone for good: their requests are never answered.
    pub fn swallow(&self, on: bool) {
        self.swallowing.store(on, Ordering::SeqCst);
    }
}

impl Drop for ReplyBlackhole {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
