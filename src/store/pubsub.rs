//! Redis Pub/Sub for the live side: one dedicated connection per API instance, subscribed to the
//! channels of the tenants that have open streams on it. The SSE fan-out (`produce::live`) decides
//! what to subscribe to; this module only speaks the protocol.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use redis::aio::{PubSubSink, PubSubStream};
use secrecy::ExposeSecret;

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
pub struct LiveSubscriptions {
    sink: PubSubSink,
}

/// The messages of one Pub/Sub connection; it ends when the connection is lost.
pub struct LiveMessages {
    stream: PubSubStream,
}

/// Opens a dedicated Pub/Sub connection.
pub async fn open_live_connection(
    settings: &RedisSettings,
) -> Result<(LiveSubscriptions, LiveMessages), StoreOutage> {
    let client = redis::Client::open(settings.url.expose_secret()).map_err(StoreOutage::redis)?;
    let pubsub = tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| StoreOutage::redis("connecting for Pub/Sub timed out"))?
        .map_err(StoreOutage::redis)?;
    let (sink, stream) = pubsub.split();
    Ok((LiveSubscriptions { sink }, LiveMessages { stream }))
}

impl LiveSubscriptions {
    pub async fn subscribe(&mut self, channels: &[String]) -> Result<(), StoreOutage> {
        if channels.is_empty() {
            return Ok(());
        }
        tokio::time::timeout(COMMAND_TIMEOUT, self.sink.subscribe(channels))
            .await
            .map_err(|_| StoreOutage::redis("SUBSCRIBE timed out"))?
            .map_err(StoreOutage::redis)
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> Result<(), StoreOutage> {
        tokio::time::timeout(COMMAND_TIMEOUT, self.sink.unsubscribe(channel))
            .await
            .map_err(|_| StoreOutage::redis("UNSUBSCRIBE timed out"))?
            .map_err(StoreOutage::redis)
    }

    /// Proves the connection still answers (a silently dead TCP connection delivers nothing). Any
    /// answer will do: in subscribed mode Redis answers PING with an array, not `PONG`.
    pub async fn ping(&mut self) -> Result<(), StoreOutage> {
        tokio::time::timeout(COMMAND_TIMEOUT, self.sink.ping::<redis::Value>())
            .await
            .map_err(|_| StoreOutage::redis("PING timed out"))?
            .map(|_| ())
            .map_err(StoreOutage::redis)
    }
}

impl Stream for LiveMessages {
    type Item = LiveMessage;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<LiveMessage>> {
        loop {
            return match Pin::new(&mut self.stream).poll_next(context) {
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
        }
    }
}
