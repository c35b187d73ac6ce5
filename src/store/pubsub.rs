//! Redis Pub/Sub for the live side: one dedicated connection per API instance, subscribed to the
//! channels of the tenants that have open streams on it. The SSE fan-out (`produce::fanout`) decides
//! what to subscribe to; this module only speaks the protocol.
//!
//! On a single server: classic `SUBSCRIBE` (the consumer `PUBLISH`es). On a Redis Cluster: sharded
//! Pub/Sub (`SSUBSCRIBE`; the consumer `SPUBLISH`es from its effects script), because a classic
//! `PUBLISH` on a cluster is broadcast over the cluster bus to every node, so every node pays for
//! every event, while a shard channel's events stay on the shard that owns the tenant's slot. The
//! cluster client keeps one connection per shard that holds a subscribed channel.
//!
//! A lost connection ends the messages (the fan-out ends every open stream, whose clients resume
//! with `Last-Event-ID`): on a cluster, a node's connection closing, or the server dropping a
//! subscription this side did not drop (its slot moved), counts as lost, because events published
//! meanwhile were not delivered.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind};
use secrecy::ExposeSecret;
use tokio::sync::mpsc::UnboundedReceiver;

use super::redis_connection::cluster_client;
use super::StoreOutage;
use crate::config::RedisSettings;

/// How long connecting, subscribing or a ping may take before the connection counts as lost.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// One message from a subscribed channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMessage {
    pub channel: String,
    pub payload: String,
}

/// Subscribes and unsubscribes channels of one Pub/Sub connection.
#[derive(Clone)]
pub enum LiveSubscriptions {
    Single(PubSubSink),
    Cluster {
        connection: ClusterConnection,
        /// Channels this side asked to drop and whose confirmation has not come yet: any other
        /// `sunsubscribe` from the server means the subscription was lost.
        dropping: Arc<Mutex<HashSet<String>>>,
    },
}

/// The messages of one Pub/Sub connection; it ends when the connection is lost.
pub enum LiveMessages {
    Single(PubSubStream),
    Cluster {
        pushes: UnboundedReceiver<PushInfo>,
        dropping: Arc<Mutex<HashSet<String>>>,
        lost: bool,
    },
}

/// Opens a dedicated Pub/Sub connection (to each shard as channels are subscribed, on a cluster).
pub async fn open_live_connection(
    settings: &RedisSettings,
) -> Result<(LiveSubscriptions, LiveMessages), StoreOutage> {
    if settings.cluster {
        let (sender, pushes) = tokio::sync::mpsc::unbounded_channel();
        let client = cluster_client(settings)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(sender)
            .connection_timeout(COMMAND_TIMEOUT)
            .response_timeout(COMMAND_TIMEOUT)
            .build()
            .map_err(StoreOutage::redis)?;
        let connection = tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_connection())
            .await
            .map_err(|_| StoreOutage::redis("connecting to the cluster for Pub/Sub timed out"))?
            .map_err(StoreOutage::redis)?;
        let dropping = Arc::new(Mutex::new(HashSet::new()));
        return Ok((
            LiveSubscriptions::Cluster {
                connection,
                dropping: dropping.clone(),
            },
            LiveMessages::Cluster {
                pushes,
                dropping,
                lost: false,
            },
        ));
    }
    let client = redis::Client::open(settings.url.expose_secret()).map_err(StoreOutage::redis)?;
    let pubsub = tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| StoreOutage::redis("connecting for Pub/Sub timed out"))?
        .map_err(StoreOutage::redis)?;
    let (sink, stream) = pubsub.split();
    Ok((
        LiveSubscriptions::Single(sink),
        LiveMessages::Single(stream),
    ))
}

/// Bounds one Pub/Sub command by `COMMAND_TIMEOUT`.
async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreOutage> {
    tokio::time::timeout(COMMAND_TIMEOUT, call)
        .await
        .map_err(|_| StoreOutage::redis(format!("{what} timed out")))?
        .map_err(StoreOutage::redis)
}

impl LiveSubscriptions {
    pub async fn subscribe(&mut self, channels: &[String]) -> Result<(), StoreOutage> {
        if channels.is_empty() {
            return Ok(());
        }
        match self {
            LiveSubscriptions::Single(sink) => bounded("SUBSCRIBE", sink.subscribe(channels)).await,
            // One SSUBSCRIBE per channel: the channels of one command must share a slot.
            LiveSubscriptions::Cluster { connection, .. } => {
                futures::future::try_join_all(channels.iter().map(|channel| {
                    let mut connection = connection.clone();
                    async move { bounded("SSUBSCRIBE", connection.ssubscribe(channel)).await }
                }))
                .await
                .map(|_| ())
            }
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> Result<(), StoreOutage> {
        match self {
            LiveSubscriptions::Single(sink) => {
                bounded("UNSUBSCRIBE", sink.unsubscribe(channel)).await
            }
            LiveSubscriptions::Cluster {
                connection,
                dropping,
            } => {
                dropping
                    .lock()
                    .expect("dropping lock")
                    .insert(channel.to_owned());
                bounded("SUNSUBSCRIBE", connection.sunsubscribe(channel)).await
            }
        }
    }

    /// Proves the connection still answers (a silently dead TCP connection delivers nothing). Any
    /// answer will do: in subscribed mode Redis answers PING with an array, not `PONG`.
    pub async fn ping(&mut self) -> Result<(), StoreOutage> {
        match self {
            LiveSubscriptions::Single(sink) => bounded("PING", sink.ping::<redis::Value>())
                .await
                .map(|_| ()),
            // Every primary answers: a shard that stopped answering is the one whose events would
            // stop.
            LiveSubscriptions::Cluster { connection, .. } => bounded(
                "PING",
                redis::cmd("PING").query_async::<redis::Value>(connection),
            )
            .await
            .map(|_| ()),
        }
    }
}

impl Stream for LiveMessages {
    type Item = LiveMessage;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<LiveMessage>> {
        match &mut *self {
            LiveMessages::Single(stream) => loop {
                return match Pin::new(&mut *stream).poll_next(context) {
                    Poll::Ready(Some(message)) => {
                        let Ok(payload) = message.get_payload::<String>() else {
                            // Not text: nothing this service publishes; skip it.
                            continue;
                        };
                        Poll::Ready(Some(LiveMessage {
                            channel: message.get_channel_name().to_owned(),
                            payload,
                        }))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                };
            },
            LiveMessages::Cluster {
                pushes,
                dropping,
                lost,
            } => loop {
                if *lost {
                    return Poll::Ready(None);
                }
                let Some(push) = std::task::ready!(pushes.poll_recv(context)) else {
                    return Poll::Ready(None);
                };
                match cluster_push(push, &mut dropping.lock().expect("dropping lock")) {
                    ClusterPush::Message(message) => return Poll::Ready(Some(message)),
                    ClusterPush::Lost => *lost = true,
                    ClusterPush::Other => {}
                }
            },
        }
    }
}

/// What one push of the cluster connection means for the live side.
#[derive(Debug, PartialEq, Eq)]
enum ClusterPush {
    Message(LiveMessage),
    /// Events may have been missed: a node's connection closed, or the server dropped a
    /// subscription this side still wants.
    Lost,
    /// Confirmations and anything this service does not publish.
    Other,
}

fn cluster_push(push: PushInfo, dropping: &mut HashSet<String>) -> ClusterPush {
    let text = |value: &redis::Value| redis::from_redis_value_ref::<String>(value).ok();
    match push.kind {
        PushKind::SMessage => match (
            push.data.first().and_then(text),
            push.data.get(1).and_then(text),
        ) {
            (Some(channel), Some(payload)) => {
                ClusterPush::Message(LiveMessage { channel, payload })
            }
            _ => ClusterPush::Other,
        },
        PushKind::Disconnection => ClusterPush::Lost,
        PushKind::SUnsubscribe => match push.data.first().and_then(text) {
            Some(channel) if dropping.remove(&channel) => ClusterPush::Other,
            _ => ClusterPush::Lost,
        },
        _ => ClusterPush::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(kind: PushKind, data: &[&str]) -> PushInfo {
        PushInfo {
            kind,
            data: data
                .iter()
                .map(|item| redis::Value::BulkString(item.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn cluster_pushes_are_messages_losses_or_nothing() {
        let mut dropping = HashSet::from(["activities:{gone}".to_owned()]);
        assert_eq!(
            cluster_push(
                push(PushKind::SMessage, &["activities:{acme}", "{}"]),
                &mut dropping
            ),
            ClusterPush::Message(LiveMessage {
                channel: "activities:{acme}".to_owned(),
                payload: "{}".to_owned(),
            })
        );
        assert_eq!(
            cluster_push(push(PushKind::Disconnection, &[]), &mut dropping),
            ClusterPush::Lost
        );
        assert_eq!(
            cluster_push(
                push(PushKind::SSubscribe, &["activities:{acme}"]),
                &mut dropping
            ),
            ClusterPush::Other
        );
        // Asked for: a confirmation. Not asked for (the slot moved): the subscription is lost.
        assert_eq!(
            cluster_push(
                push(PushKind::SUnsubscribe, &["activities:{gone}"]),
                &mut dropping
            ),
            ClusterPush::Other
        );
        assert!(dropping.is_empty());
        assert_eq!(
            cluster_push(
                push(PushKind::SUnsubscribe, &["activities:{acme}"]),
                &mut dropping
            ),
            ClusterPush::Lost
        );
        assert_eq!(
            cluster_push(push(PushKind::SMessage, &["only-a-channel"]), &mut dropping),
            ClusterPush::Other
        );
    }
}
