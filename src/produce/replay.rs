//! The replay part of `GET /activities/stream`: what a client resuming with `Last-Event-ID` missed,
//! read a page at a time and sent before its live events, under three bounds that keep one tenant
//! (or one client that never reads) from holding the instance's memory:
//! - replay slots: at most `sse.max_concurrent_replays` replays at once on the instance, and at most
//!   `sse.max_replays_per_tenant` of them for one tenant, so one tenant cannot take every slot;
//! - pages: the replay holds one page (`sse.replay_page_events` events) in memory, read from the
//!   recent-events stream (XRANGE forward from the resume point) or from MongoDB (by id), and reads
//!   the next page only once its client has taken the last one;
//! - a send deadline (`sse.replay_send_timeout_ms`): a client that has not taken its whole replay by
//!   then loses its slot and its page at once, whether or not the response is polled again, and
//!   its stream ends (it reconnects with the last id it got).

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::fanout::LiveEvent;
use super::shares::{SharePermit, ShareRefusal, TenantShares};
use crate::domain::TenantId;
use crate::store::{ActivityCursor, ActivityRepository, RedisStore, Store, StoreOutage};

/// The replay slots of one instance: `sse.max_concurrent_replays` in all, `sse.max_replays_per_tenant`
/// of them for one tenant, waited for at most `sse.replay_wait_ms`.
pub type ReplaySlots = TenantShares;
/// A replay's place, given back when dropped.
pub type ReplaySlot = SharePermit;
/// Why a resume got no replay slot within `sse.replay_wait_ms`.
pub type SlotRefusal = ShareRefusal;

/// The sentence of the 503 for a resume that got no slot (`ApiError::Busy` takes a fixed one).
pub fn slot_refusal_reason(refusal: SlotRefusal) -> &'static str {
    match refusal {
        ShareRefusal::TenantShare => {
            "this tenant has sse.max_replays_per_tenant SSE clients resuming on this instance"
        }
        ShareRefusal::Instance => "too many SSE clients are resuming on this instance at once",
    }
}

/// Why a replay stopped before it was complete; its stream ends and the client resumes from the last
/// id it received.
#[derive(Debug, thiserror::Error)]
pub enum ReplayBroken {
    #[error("the client did not take its replay within sse.replay_send_timeout_ms")]
    SendDeadline,
    #[error("the recent-events stream was trimmed past the replay's position while it was sent")]
    BufferTrimmed,
    #[error(transparent)]
    Store(#[from] StoreOutage),
    #[error("{store} did not answer within read.timeout_ms")]
    Timeout { store: Store },
}

impl ReplayBroken {
    /// The `reason` label of `sse_replays_cut_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ReplayBroken::SendDeadline => "send_deadline",
            ReplayBroken::BufferTrimmed => "buffer_trimmed",
            ReplayBroken::Store(_) | ReplayBroken::Timeout { .. } => "store",
        }
    }
}

/// Where a replay's pages come from.
pub trait ReplaySource {
    /// Up to `count` events following the last one this source returned (or the resume point),
    /// oldest first; fewer than `count` means there are no more.
    fn next_page(
        &mut self,
        count: usize,
    ) -> impl Future<Output = Result<Vec<LiveEvent>, ReplayBroken>>;
}

/// The stores a replay reads: the tenant's recent-events stream in Redis from a found position, or
/// MongoDB by id for a gap older than that buffer. Each call is bounded by `read.timeout_ms`.
pub enum StoreReplay {
    Recent {
        redis: RedisStore,
        tenant: TenantId,
        /// Entry id of the last event read (at first: of the resume point).
        after_entry: String,
        timeout: Duration,
    },
    Stored {
        repository: ActivityRepository,
        tenant: TenantId,
        /// Id of the last activity read (at first: the client's Last-Event-ID).
        after: ActivityCursor,
        timeout: Duration,
    },
}

impl ReplaySource for StoreReplay {
    async fn next_page(&mut self, count: usize) -> Result<Vec<LiveEvent>, ReplayBroken> {
        match self {
            StoreReplay::Recent {
                redis,
                tenant,
                after_entry,
                timeout,
            } => {
                let page =
                    tokio::time::timeout(*timeout, redis.recent_page(tenant, after_entry, count))
                        .await
                        .map_err(|_| ReplayBroken::Timeout {
                            store: Store::Redis,
                        })??
                        .ok_or(ReplayBroken::BufferTrimmed)?;
                if let Some((last, _)) = page.last() {
                    *after_entry = last.clone();
                }
                // An entry that is not an activity (written by something else) is skipped, as the
                // live fan-out skips such messages.
                Ok(page
                    .into_iter()
                    .filter_map(|(_, event)| {
                        Some(LiveEvent {
                            id: ActivityCursor::parse(&event.document_id)?,
                            json: event.event,
                        })
                    })
                    .collect())
            }
            StoreReplay::Stored {
                repository,
                tenant,
                after,
                timeout,
            } => {
                let stored = tokio::time::timeout(
                    *timeout,
                    repository.stored_after(tenant, *after, count, *timeout),
                )
                .await
                .map_err(|_| ReplayBroken::Timeout {
                    store: Store::MongoDB,
                })??;
                if let Some(last) = stored.last() {
                    *after = ActivityCursor::of(last);
                }
                Ok(stored
                    .iter()
                    .map(|activity| LiveEvent {
                        id: ActivityCursor::of(activity),
                        json: activity.to_json().to_string(),
                    })
                    .collect())
            }
        }
    }
}

/// What the next step of a replay gives the stream.
#[derive(Debug)]
pub enum ReplayStep {
    Event(LiveEvent),
    /// `sse.replay_max_events` were sent and more were missed: send `replay-truncated` with the count.
    Truncated {
        replayed: usize,
    },
    /// Everything was sent: the ids sent, so live events the replay already delivered are skipped.
    /// The slot has been given back.
    Complete(HashSet<ActivityCursor>),
    /// The replay cannot go on; the stream ends.
    Broken(ReplayBroken),
}

/// One client's replay: the current page, its slot, and the watchdog that enforces the send deadline.
pub struct PagedReplay<S> {
    source: S,
    held: Arc<Mutex<Held>>,
    max_events: usize,
    page_events: usize,
    sent: usize,
    replayed: HashSet<ActivityCursor>,
    end: Option<PageEnd>,
    /// Stops the watchdog once the replay is over (complete, broken or dropped).
    _watchdog: tokio_util::sync::DropGuard,
}

/// What the send deadline takes away: shared with the watchdog, which empties it when the deadline
/// passes even if the response is never polled again (a client that does not read).
struct Held {
    slot: Option<ReplaySlot>,
    page: VecDeque<LiveEvent>,
    expired: bool,
}

/// Why no more pages are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageEnd {
    /// The source has nothing more.
    Exhausted,
    /// `max_events` are in hand and the source has more.
    Truncated,
}

impl<S: ReplaySource> PagedReplay<S> {
    /// Starts the replay: the send deadline runs from here.
    pub fn start(
        source: S,
        slot: ReplaySlot,
        max_events: usize,
        page_events: usize,
        send_timeout: Duration,
    ) -> PagedReplay<S> {
        let held = Arc::new(Mutex::new(Held {
            slot: Some(slot),
            page: VecDeque::new(),
            expired: false,
        }));
        let stop = CancellationToken::new();
        tokio::spawn(enforce_deadline(
            Arc::downgrade(&held),
            send_timeout,
            stop.clone(),
        ));
        PagedReplay {
            source,
            held,
            max_events,
            page_events: page_events.max(1),
            sent: 0,
            replayed: HashSet::new(),
            end: None,
            _watchdog: stop.drop_guard(),
        }
    }

    /// The next step. A page is read only when the previous one was all taken.
    pub async fn next(&mut self) -> ReplayStep {
        loop {
            {
                let mut held = self.held.lock().expect("replay lock");
                if held.expired {
                    return ReplayStep::Broken(ReplayBroken::SendDeadline);
                }
                if let Some(event) = held.page.pop_front() {
                    self.sent += 1;
                    self.replayed.insert(event.id);
                    return ReplayStep::Event(event);
                }
                match self.end {
                    Some(PageEnd::Truncated) => {
                        self.end = Some(PageEnd::Exhausted);
                        return ReplayStep::Truncated {
                            replayed: self.sent,
                        };
                    }
                    Some(PageEnd::Exhausted) => {
                        held.slot = None;
                        return ReplayStep::Complete(std::mem::take(&mut self.replayed));
                    }
                    None => {}
                }
            }
            if let Err(broken) = self.read_page().await {
                return ReplayStep::Broken(broken);
            }
        }
    }

    /// Reads the first page now, before the response starts, so a store that cannot answer is a
    /// 503 (or, for the recent-events buffer, a reason to switch to MongoDB) rather than an empty
    /// stream.
    pub async fn prefetch(&mut self) -> Result<(), ReplayBroken> {
        self.read_page().await
    }

    /// Replaces the source before anything was read from it (after a failed `prefetch`).
    pub fn switch_source(&mut self, source: S) {
        self.source = source;
        self.end = None;
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    async fn read_page(&mut self) -> Result<(), ReplayBroken> {
        // One more than still fits, to learn whether the replay is truncated.
        let room = self.max_events - self.sent;
        let wanted = self.page_events.min(room + 1);
        let mut page = self.source.next_page(wanted).await?;
        if page.len() > room {
            page.truncate(room);
            self.end = Some(PageEnd::Truncated);
        } else if page.len() < wanted {
            self.end = Some(PageEnd::Exhausted);
        }
        let mut held = self.held.lock().expect("replay lock");
        if held.expired {
            return Err(ReplayBroken::SendDeadline);
        }
        held.page.extend(page);
        Ok(())
    }
}

/// Frees the slot and the page of a replay not sent by `timeout`, unless `stop` comes first.
async fn enforce_deadline(held: Weak<Mutex<Held>>, timeout: Duration, stop: CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(timeout) => {
            let Some(held) = held.upgrade() else { return };
            let mut held = held.lock().expect("replay lock");
            held.expired = true;
            held.slot = None;
            held.page = VecDeque::new();
            tracing::info!(
                "an SSE client did not take its replay within sse.replay_send_timeout_ms; its replay \
                 slot is freed and its stream ends"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    const NO_WAIT: Duration = Duration::from_millis(20);
    const NO_DEADLINE: Duration = Duration::from_secs(3600);

    fn tenant(name: &str) -> TenantId {
        TenantId::parse(name).unwrap()
    }

    fn event(n: u8) -> LiveEvent {
        LiveEvent {
            id: ActivityCursor::parse(&format!("{n:024x}")).unwrap(),
            json: format!("{{\"n\":{n}}}"),
        }
    }

    /// Serves `events` in pages, recording the size of each page asked for.
    struct Listed {
        events: VecDeque<LiveEvent>,
        asked: Arc<Mutex<Vec<usize>>>,
    }

    impl Listed {
        fn new(count: u8) -> (Listed, Arc<Mutex<Vec<usize>>>) {
            let asked = Arc::new(Mutex::new(Vec::new()));
            let listed = Listed {
                events: (1..=count).map(event).collect(),
                asked: asked.clone(),
            };
            (listed, asked)
        }
    }

    impl ReplaySource for Listed {
        async fn next_page(&mut self, count: usize) -> Result<Vec<LiveEvent>, ReplayBroken> {
            self.asked.lock().unwrap().push(count);
            let count = count.min(self.events.len());
            Ok(self.events.drain(..count).collect())
        }
    }

    async fn run<S: ReplaySource>(replay: &mut PagedReplay<S>) -> (Vec<u8>, Option<usize>) {
        let mut numbers = Vec::new();
        let mut truncated = None;
        loop {
            match replay.next().await {
                ReplayStep::Event(event) => numbers.push(
                    serde_json::from_str::<serde_json::Value>(&event.json).unwrap()["n"]
                        .as_u64()
                        .unwrap() as u8,
                ),
                ReplayStep::Truncated { replayed } => truncated = Some(replayed),
                ReplayStep::Complete(ids) => {
                    assert_eq!(ids.len(), numbers.len(), "every sent id is remembered");
                    return (numbers, truncated);
                }
                ReplayStep::Broken(broken) => panic!("broken: {broken}"),
            }
        }
    }

    #[tokio::test]
    async fn a_tenant_gets_at_most_its_share_while_another_still_gets_a_slot() {
        let slots = ReplaySlots::new(3, 2, NO_WAIT);
        let first = slots.take(&tenant("acme")).await.unwrap();
        let _second = slots.take(&tenant("acme")).await.unwrap();
        assert_eq!(
            slots.take(&tenant("acme")).await.unwrap_err(),
            SlotRefusal::TenantShare,
            "a third acme replay is over acme's share"
        );
        let globex = slots
            .take(&tenant("globex"))
            .await
            .expect("the instance still has a slot for another tenant");
        assert_eq!(
            slots.take(&tenant("initech")).await.unwrap_err(),
            SlotRefusal::Instance,
            "all three of the instance's slots are taken"
        );
        drop(globex);
        drop(first);
        assert!(
            slots.take(&tenant("acme")).await.is_ok(),
            "freed slots return"
        );
    }

    #[tokio::test]
    async fn a_resume_waits_for_a_slot_to_free() {
        let slots = Arc::new(ReplaySlots::new(1, 1, Duration::from_secs(10)));
        let slot = slots.take(&tenant("acme")).await.unwrap();
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take(&tenant("acme")).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "waits while the slot is taken");
        drop(slot);
        assert!(waiting.await.unwrap(), "gets the slot once it frees");
    }

    #[tokio::test]
    async fn a_replay_is_read_in_pages_and_arrives_whole_and_in_order() {
        let slots = ReplaySlots::new(1, 1, NO_WAIT);
        let (source, asked) = Listed::new(7);
        let slot = slots.take(&tenant("acme")).await.unwrap();
        let mut replay = PagedReplay::start(source, slot, 100, 3, NO_DEADLINE);
        assert_eq!(run(&mut replay).await, ((1..=7).collect(), None));
        assert_eq!(
            *asked.lock().unwrap(),
            [3, 3, 3],
            "pages of 3, the last short"
        );
        assert!(
            slots.take(&tenant("acme")).await.is_ok(),
            "the slot is back"
        );
    }

    #[tokio::test]
    async fn a_replay_over_the_bound_is_truncated_after_max_events() {
        let slots = ReplaySlots::new(1, 1, NO_WAIT);
        let (source, asked) = Listed::new(9);
        let slot = slots.take(&tenant("acme")).await.unwrap();
        let mut replay = PagedReplay::start(source, slot, 5, 3, NO_DEADLINE);
        assert_eq!(run(&mut replay).await, ((1..=5).collect(), Some(5)));
        // 3, then the 2 that still fit plus one to learn there are more.
        assert_eq!(*asked.lock().unwrap(), [3, 3]);
        let (exact, _) = Listed::new(5);
        let mut replay = PagedReplay::start(
            exact,
            slots.take(&tenant("acme")).await.unwrap(),
            5,
            3,
            NO_DEADLINE,
        );
        assert_eq!(
            run(&mut replay).await,
            ((1..=5).collect(), None),
            "exactly the bound is complete"
        );
    }

    #[tokio::test]
    async fn the_send_deadline_frees_the_slot_of_a_client_that_stopped_reading() {
        // A real socket cannot be made to stall reliably here; what matters is that the slot and
        // the page go at the deadline without the response being polled again, which this shows.
        let slots = ReplaySlots::new(1, 1, NO_WAIT);
        let (source, _) = Listed::new(10);
        let slot = slots.take(&tenant("acme")).await.unwrap();
        let mut replay = PagedReplay::start(source, slot, 100, 4, Duration::from_millis(100));
        assert!(matches!(replay.next().await, ReplayStep::Event(_)));
        assert!(
            slots.take(&tenant("acme")).await.is_err(),
            "held while the replay is being sent"
        );
        // The client stops reading: nothing polls the replay any more.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            slots.take(&tenant("acme")).await.is_ok(),
            "the deadline gave the slot back"
        );
        assert!(
            replay.held.lock().unwrap().page.is_empty(),
            "and dropped the page"
        );
        assert!(matches!(
            replay.next().now_or_never(),
            Some(ReplayStep::Broken(ReplayBroken::SendDeadline))
        ));
    }

    #[tokio::test]
    async fn a_client_that_leaves_mid_replay_frees_its_slot() {
        let slots = ReplaySlots::new(1, 1, NO_WAIT);
        let (source, _) = Listed::new(10);
        let slot = slots.take(&tenant("acme")).await.unwrap();
        let mut replay = PagedReplay::start(source, slot, 100, 4, NO_DEADLINE);
        assert!(matches!(replay.next().await, ReplayStep::Event(_)));
        drop(replay);
        assert!(slots.take(&tenant("acme")).await.is_ok());
    }
}
