//! The live fan-out behind `GET /activities/stream`: one Redis Pub/Sub connection per API instance,
//! subscribed to the channel of each tenant that has at least one open stream here, fanning each
//! event out to that tenant's streams through a `tokio::sync::broadcast` channel. Any instance can
//! serve any client, because the consumer publishes every stored activity to Redis.
//!
//! When the Pub/Sub connection is lost, every open stream is ended rather than left silently missing
//! events: clients (EventSource does this by itself) reconnect with `Last-Event-ID` and the gap is
//! replayed from MongoDB.
//!
//! The console's live tail (`console::tenants`) runs a `Fanout` of its own with this same code, so
//! an operator sees exactly what a tenant's dashboard would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use prometheus::IntGauge;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::RedisSettings;
use crate::domain::TenantId;
use crate::store::{
    open_live_connection, ActivityCursor, LiveMessage, LiveMessages, LiveSubscriptions, RedisKeys,
    StoreOutage,
};

/// Wait between reconnection attempts while Redis is unreachable.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// One stored activity, as published by the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEvent {
    /// The document id: the SSE `id:`.
    pub id: ActivityCursor,
    /// The activity's client JSON (`StoredActivity::to_json`), as published.
    pub json: String,
}

/// Why a stream could not join its tenant's feed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("this tenant already has {limit} open streams on this instance")]
    TooMany { limit: usize },
    #[error(transparent)]
    Unavailable(#[from] StoreOutage),
}

/// The per-instance fan-out. Cheap to clone.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<Inner>,
}

struct Inner {
    feeds: Mutex<HashMap<TenantId, Feed>>,
    commands: mpsc::UnboundedSender<Command>,
    max_per_tenant: usize,
    buffer_events: usize,
}

/// One tenant's live feed on this instance.
struct Feed {
    sender: broadcast::Sender<Arc<LiveEvent>>,
    /// Open streams of this tenant; the channel is unsubscribed when it drops to zero.
    clients: usize,
}

enum Command {
    Subscribe {
        tenant: TenantId,
        done: oneshot::Sender<Result<(), StoreOutage>>,
    },
    Unsubscribe {
        tenant: TenantId,
    },
}

/// A stream's membership in its tenant's feed: the events, and a guard that leaves the feed (and
/// updates the gauge) when the stream is dropped, however it ends.
pub struct LiveFeed {
    pub events: broadcast::Receiver<Arc<LiveEvent>>,
    _membership: Membership,
}

struct Membership {
    inner: Arc<Inner>,
    tenant: TenantId,
    gauge: IntGauge,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.gauge.dec();
        let mut feeds = self.inner.feeds.lock().expect("feeds lock");
        if let Some(feed) = feeds.get_mut(&self.tenant) {
            feed.clients -= 1;
            if feed.clients == 0 {
                feeds.remove(&self.tenant);
                let _ = self.inner.commands.send(Command::Unsubscribe {
                    tenant: self.tenant.clone(),
                });
            }
        }
    }
}

impl Fanout {
    /// Starts the subscriber task; it runs until `shutdown`. The Pub/Sub connection is pinged every
    /// `ping_interval` (the SSE heartbeat), to notice a silently dead connection.
    pub fn start(
        redis: &RedisSettings,
        max_per_tenant: usize,
        buffer_events: usize,
        ping_interval: Duration,
        shutdown: CancellationToken,
    ) -> Fanout {
        let (commands, receiver) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            feeds: Mutex::new(HashMap::new()),
            commands,
            max_per_tenant,
            buffer_events,
        });
        let subscriber = Subscriber {
            inner: Arc::downgrade(&inner),
            settings: redis.clone(),
            keys: RedisKeys::new(redis.key_prefix.clone()),
            commands: receiver,
            ping_interval,
        };
        tokio::spawn(subscriber.run(shutdown));
        Fanout { inner }
    }

    /// Joins the tenant's feed, once its channel is subscribed: events published after this returns
    /// reach the returned feed.
    pub async fn join(&self, tenant: &TenantId, gauge: &IntGauge) -> Result<LiveFeed, JoinError> {
        let feed = {
            let mut feeds = self.inner.feeds.lock().expect("feeds lock");
            let buffer = self.inner.buffer_events;
            let feed = feeds.entry(tenant.clone()).or_insert_with(|| Feed {
                sender: broadcast::channel(buffer).0,
                clients: 0,
            });
            if feed.clients >= self.inner.max_per_tenant {
                return Err(JoinError::TooMany {
                    limit: self.inner.max_per_tenant,
                });
            }
            feed.clients += 1;
            gauge.inc();
            LiveFeed {
                events: feed.sender.subscribe(),
                _membership: Membership {
                    inner: self.inner.clone(),
                    tenant: tenant.clone(),
                    gauge: gauge.clone(),
                },
            }
        };
        // Subscribing an already subscribed channel is a no-op for Redis; asking every time means
        // each stream knows its subscription is live before its response starts.
        let (done, confirmed) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Subscribe {
                tenant: tenant.clone(),
                done,
            })
            .map_err(|_| StoreOutage::redis("the live subscriber has stopped"))?;
        match confirmed.await {
            Ok(Ok(())) => Ok(feed),
            Ok(Err(outage)) => Err(outage.into()),
            Err(_) => Err(StoreOutage::redis("the live subscriber has stopped").into()),
        }
    }
}

/// The task owning the Pub/Sub connection.
struct Subscriber {
    /// Weak, so the task ends once the application (every `Fanout` clone) is gone.
    inner: std::sync::Weak<Inner>,
    settings: RedisSettings,
    keys: RedisKeys,
    commands: mpsc::UnboundedReceiver<Command>,
    ping_interval: Duration,
}

impl Subscriber {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let connection = tokio::select! {
                _ = shutdown.cancelled() => return,
                connection = self.connect() => connection,
            };
            match connection {
                Ok((subscriptions, messages)) => {
                    let reason = self.serve(subscriptions, messages, &shutdown).await;
                    self.end_all_streams();
                    match reason {
                        None => return,
                        Some(outage) => {
                            tracing::warn!(%outage, "live Pub/Sub connection lost; open streams were ended")
                        }
                    }
                }
                Err(outage) => {
                    tracing::warn!(%outage, "cannot open the live Pub/Sub connection; retrying");
                    // Refuse joins while disconnected instead of leaving them waiting.
                    let deadline = tokio::time::sleep(RECONNECT_DELAY);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = &mut deadline => break,
                            command = self.commands.recv() => match command {
                                None => return,
                                Some(Command::Subscribe { done, .. }) => {
                                    let _ = done.send(Err(outage.clone()));
                                }
                                Some(Command::Unsubscribe { .. }) => {}
                            },
                        }
                    }
                }
            }
        }
    }

    /// Connects and subscribes the channels of every tenant with open streams.
    async fn connect(&self) -> Result<(LiveSubscriptions, LiveMessages), StoreOutage> {
        let (mut subscriptions, messages) = open_live_connection(&self.settings).await?;
        let channels: Vec<String> = match self.inner.upgrade() {
            Some(inner) => inner
                .feeds
                .lock()
                .expect("feeds lock")
                .keys()
                .map(|tenant| self.keys.channel(tenant))
                .collect(),
            None => Vec::new(),
        };
        subscriptions.subscribe(&channels).await?;
        Ok((subscriptions, messages))
    }

    /// Serves one connection; `None` when the task should end, `Some` when the connection is lost.
    async fn serve(
        &mut self,
        mut subscriptions: LiveSubscriptions,
        mut messages: LiveMessages,
        shutdown: &CancellationToken,
    ) -> Option<StoreOutage> {
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                command = self.commands.recv() => match command {
                    None => return None,
                    Some(Command::Subscribe { tenant, done }) => {
                        let result = subscriptions.subscribe(&[self.keys.channel(&tenant)]).await;
                        let failed = result.as_ref().err().cloned();
                        let _ = done.send(result);
                        if let Some(outage) = failed {
                            return Some(outage);
                        }
                    }
                    Some(Command::Unsubscribe { tenant }) => {
                        let inner = self.inner.upgrade()?;
                        let rejoined = inner.feeds.lock().expect("feeds lock").contains_key(&tenant);
                        if !rejoined {
                            if let Err(outage) = subscriptions.unsubscribe(&self.keys.channel(&tenant)).await {
                                return Some(outage);
                            }
                        }
                    }
                },
                message = messages.next() => match message {
                    None => return Some(StoreOutage::redis("the Pub/Sub connection closed")),
                    Some(message) => self.deliver(message),
                },
                _ = ping.tick() => {
                    if let Err(outage) = subscriptions.ping().await {
                        return Some(outage);
                    }
                }
            }
        }
    }

    fn deliver(&self, message: LiveMessage) {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Head {
            id: String,
            tenant_id: String,
        }
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let Some(tenant) = self.keys.tenant_of_channel(&message.channel) else {
            return;
        };
        let head = serde_json::from_str::<Head>(&message.payload).ok();
        let Some((id, head)) = head.and_then(|head| Some((ActivityCursor::parse(&head.id)?, head)))
        else {
            tracing::debug!(channel = %message.channel, "ignoring a live message that is not an activity");
            return;
        };
        // Defence in depth: an event is only ever delivered to the tenant it names.
        if head.tenant_id != tenant.as_str() {
            return;
        }
        let feeds = inner.feeds.lock().expect("feeds lock");
        if let Some(feed) = feeds.get(&tenant) {
            // No receiver is fine: the last stream may have just closed.
            let _ = feed.sender.send(Arc::new(LiveEvent {
                id,
                json: message.payload,
            }));
        }
    }

    /// Ends every open stream (their senders are replaced, so receivers see the channel closed);
    /// clients reconnect and replay what they missed from the store.
    fn end_all_streams(&self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut feeds = inner.feeds.lock().expect("feeds lock");
        for feed in feeds.values_mut() {
            feed.sender = broadcast::channel(inner.buffer_events).0;
        }
    }
}
