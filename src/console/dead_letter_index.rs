//! The DLQ held in the console's memory, so its dead-letters view does not read the whole topic for
//! every page.
//!
//! A thread follows every partition of the DLQ from its first record (no group, nothing committed)
//! and keeps each record as a [`DeadLetterView`] without its headers (their facts are kept; a
//! record's page reads the whole record by position, an export the whole DLQ). A request first
//! reads the partitions' watermarks and waits until the follower has read up to each high watermark
//! seen then, so an answer includes every dead letter written before the request (as reading the
//! topic did); it drops what is below a low watermark (retention, or a purge that dropped a prefix). Filtering, sorting and paging are
//! then done in memory: milliseconds at 10^5 dead letters instead of seconds.
//!
//! Memory is bounded by `console.dead_letters_memory_mb`. Past it the index lets go of everything it
//! holds and says so ([`Selection::TooLarge`]); the caller then reads the topic as before. A DLQ that
//! large is an incident of its own: replay or purge what is understood.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::kafka::{ConsumedRecord, FollowEvent, TopicFollower, TopicWatermarks};
use crate::ops::dlq::{parse_position, DeadLetterFilter, DeadLetterView};
use crate::store::{ActivityRepository, PurgedDeadLetter, RedisStore};

/// How often the follower looks for partitions added to the DLQ.
const PARTITION_REFRESH: Duration = Duration::from_secs(5);
/// The longest one poll of the follower blocks, so it sees the shutdown promptly.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// What [`DeadLetterIndex::select`] found.
pub enum Selection {
    /// The dead letters the filter selects, in position order.
    Found(Vec<Arc<DeadLetterView>>),
    /// The DLQ is larger than `console.dead_letters_memory_mb`: the index holds nothing.
    TooLarge,
}

/// Orders dead letters newest first: by last failure time (none last), then the later offset, then
/// the higher partition. The index keeps them in this order, so no request sorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Recency(std::cmp::Reverse<(Option<DateTime<Utc>>, i64, i32)>);

impl Recency {
    fn of(view: &DeadLetterView) -> Recency {
        let time = DateTime::parse_from_rfc3339(&view.facts.last_failure_at)
            .ok()
            .map(|at| at.with_timezone(&Utc));
        Recency(std::cmp::Reverse((
            time,
            view.record.offset,
            view.record.partition,
        )))
    }
}

#[derive(Default)]
struct Indexed {
    /// Every dead letter held, newest first.
    views: BTreeMap<Recency, Arc<DeadLetterView>>,
    /// Where each position is in `views`.
    positions: BTreeMap<(i32, i64), Recency>,
    /// Per partition, the offset of the next record the follower will read: everything before it
    /// is in `views` (or was dropped).
    read_up_to: HashMap<i32, i64>,
    bytes: usize,
    too_large: bool,
    /// The follower's last error, for the answer of a request that waited in vain.
    last_error: Option<String>,
}

/// See the module documentation.
pub struct DeadLetterIndex {
    indexed: RwLock<Indexed>,
    /// Woken whenever the follower has read more.
    progress: Notify,
    watermarks: TopicWatermarks,
    max_bytes: usize,
}

impl DeadLetterIndex {
    /// Starts following the DLQ of `settings` on a thread of its own, until `shutdown`.
    pub fn start(
        settings: &Settings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<DeadLetterIndex>> {
        let topic = settings.kafka.dlq_topic.clone();
        let index = Arc::new(DeadLetterIndex {
            indexed: RwLock::new(Indexed::default()),
            progress: Notify::new(),
            watermarks: TopicWatermarks::new(&settings.kafka, &topic, "console-dlq-watermarks")?,
            max_bytes: settings
                .console
                .dead_letters_memory_mb
                .saturating_mul(1024 * 1024),
        });
        let follower = TopicFollower::new(&settings.kafka, &topic, "console-dlq-follower")?;
        let timeout = settings.console.read_timeout();
        let following = Arc::clone(&index);
        std::thread::Builder::new()
            .name("console-dlq".to_owned())
            .spawn(move || following.follow(follower, timeout, &shutdown))?;
        Ok(index)
    }

    /// The follower's loop: read, keep, wake the waiting requests.
    fn follow(&self, mut follower: TopicFollower, timeout: Duration, shutdown: &CancellationToken) {
        let mut partitions_checked: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            if partitions_checked.is_none_or(|at| at.elapsed() >= PARTITION_REFRESH) {
                partitions_checked = Some(Instant::now());
                if let Err(error) = follower.follow_new_partitions(timeout) {
                    self.failed(format!("{error:#}"));
                }
            }
            match follower.poll(POLL_TIMEOUT) {
                Ok(FollowEvent::Idle) => {}
                Ok(FollowEvent::Record(record)) => self.keep(record),
                Ok(FollowEvent::CaughtUp {
                    partition,
                    next_offset,
                }) => {
                    let mut indexed = self.indexed.write().expect("index lock");
                    let read_up_to = indexed.read_up_to.entry(partition).or_default();
                    *read_up_to = (*read_up_to).max(next_offset);
                    drop(indexed);
                    self.progress.notify_waiters();
                }
                Err(error) => {
                    self.failed(format!("{error:#}"));
                    std::thread::sleep(POLL_TIMEOUT);
                }
            }
        }
    }

    fn keep(&self, record: ConsumedRecord) {
        let position = (record.partition, record.offset);
        let mut view = DeadLetterView::from_record(record);
        // The facts are read out of the headers; the headers themselves would double what a dead
        // letter costs, and only a record's page and an export show them (they read Kafka).
        view.record.headers = Vec::new();
        let view = Arc::new(view);
        let size = record_size(&view);
        let recency = Recency::of(&view);
        let mut indexed = self.indexed.write().expect("index lock");
        let read_up_to = indexed.read_up_to.entry(position.0).or_default();
        *read_up_to = (*read_up_to).max(position.1 + 1);
        if !indexed.too_large {
            if indexed.bytes + size > self.max_bytes {
                tracing::warn!(
                    max_mb = self.max_bytes / (1024 * 1024),
                    "the DLQ outgrew console.dead_letters_memory_mb: the dead-letters view reads \
                     the topic on every request from now on (slow); replay or purge what is \
                     understood, or raise the limit and restart the console"
                );
                indexed.too_large = true;
                indexed.views = BTreeMap::new();
                indexed.positions = BTreeMap::new();
                indexed.bytes = 0;
            } else if indexed.positions.insert(position, recency).is_none() {
                indexed.views.insert(recency, view);
                indexed.bytes += size;
            }
        }
        indexed.last_error = None;
        drop(indexed);
        self.progress.notify_waiters();
    }

    fn failed(&self, error: String) {
        tracing::warn!(%error, "the console's DLQ follower");
        self.indexed.write().expect("index lock").last_error = Some(error);
    }

    /// The dead letters `filter` selects, newest first (by last failure, then the later position),
    /// including every one written before this call, within `timeout`.
    pub async fn select(
        self: &Arc<Self>,
        filter: &DeadLetterFilter,
        timeout: Duration,
    ) -> anyhow::Result<Selection> {
        let deadline = tokio::time::Instant::now() + timeout;
        let watermarks = {
            // A few blocking round trips to the broker, each bounded by `timeout`: off the async
            // workers.
            let index = Arc::clone(self);
            tokio::task::spawn_blocking(move || index.watermarks.read(timeout)).await??
        };
        self.drop_below(&watermarks);
        loop {
            // Registered before the check, so progress made between the check and the wait wakes it.
            let progressed = self.progress.notified();
            {
                let indexed = self.indexed.read().expect("index lock");
                if indexed.too_large {
                    return Ok(Selection::TooLarge);
                }
                let behind = watermarks.iter().any(|&(partition, low, high)| {
                    high > low && indexed.read_up_to.get(&partition).copied().unwrap_or(0) < high
                });
                if !behind {
                    let found = match filter.positions.len() {
                        // A record's page: look the positions up rather than scan.
                        1..=1000 => {
                            let mut found: Vec<(Recency, Arc<DeadLetterView>)> = filter
                                .positions
                                .iter()
                                .filter_map(|position| indexed.positions.get(position))
                                .filter_map(|recency| {
                                    indexed.views.get(recency).map(|view| (*recency, view))
                                })
                                .filter(|(_, view)| filter.matches(view))
                                .map(|(recency, view)| (recency, Arc::clone(view)))
                                .collect();
                            found.sort_by_key(|(recency, _)| *recency);
                            found.into_iter().map(|(_, view)| view).collect()
                        }
                        _ => indexed
                            .views
                            .values()
                            .filter(|view| filter.matches(view))
                            .cloned()
                            .collect(),
                    };
                    return Ok(Selection::Found(found));
                }
            }
            if tokio::time::timeout_at(deadline, progressed).await.is_err() {
                let indexed = self.indexed.read().expect("index lock");
                let read: usize = indexed.views.len();
                let cause = indexed
                    .last_error
                    .as_deref()
                    .map_or_else(String::new, |error| format!(" (last error: {error})"));
                anyhow::bail!(
                    "the console has not read the DLQ up to its end within {} ms ({read} dead \
                     letters read so far){cause}",
                    timeout.as_millis()
                );
            }
        }
    }

    /// Lets go of the records below each partition's low watermark: Kafka dropped them.
    fn drop_below(&self, watermarks: &[(i32, i64, i64)]) {
        let dropped = {
            let indexed = self.indexed.read().expect("index lock");
            watermarks.iter().any(|&(partition, low, _)| {
                indexed
                    .positions
                    .range((partition, i64::MIN)..(partition, low))
                    .next()
                    .is_some()
            })
        };
        if !dropped {
            return;
        }
        let mut indexed = self.indexed.write().expect("index lock");
        for &(partition, low, _) in watermarks {
            let below: Vec<(i32, i64)> = indexed
                .positions
                .range((partition, i64::MIN)..(partition, low))
                .map(|(position, _)| *position)
                .collect();
            for position in below {
                let Some(recency) = indexed.positions.remove(&position) else {
                    continue;
                };
                if let Some(view) = indexed.views.remove(&recency) {
                    indexed.bytes = indexed.bytes.saturating_sub(record_size(&view));
                }
            }
        }
    }
}

/// What a kept dead letter costs: the view and its map entries, and each heap block it owns (the
/// record's key, payload and headers, and the header values the view copies out), each rounded up
/// as an allocator does. An estimate, but of what is really held: it decides when the budget is
/// spent.
fn record_size(view: &DeadLetterView) -> usize {
    /// One heap block: its length rounded up to 16 bytes, plus the allocator's own 16.
    fn block(len: usize) -> usize {
        if len == 0 {
            0
        } else {
            len.div_ceil(16) * 16 + 16
        }
    }
    let record = &view.record;
    let headers: usize = record
        .headers
        .iter()
        .map(|(name, value)| {
            block(name.len()) + value.as_ref().map_or(0, |value| block(value.len()))
        })
        .sum::<usize>()
        + block(record.headers.len() * std::mem::size_of::<(String, Option<Vec<u8>>)>());
    let facts = &view.facts;
    let copies: usize = [
        facts.error.len(),
        facts.class.len(),
        facts.attempts.len(),
        facts.first_failure_at.len(),
        facts.last_failure_at.len(),
        facts.source.len(),
        view.tenant.as_ref().map_or(0, String::len),
        view.idempotency_key.as_ref().map_or(0, String::len),
        record.topic.len(),
    ]
    .into_iter()
    .map(block)
    .sum();
    // The view behind its Arc, and one entry in each of the two maps (B-tree nodes are about
    // two-thirds full).
    let entries = block(std::mem::size_of::<DeadLetterView>() + 16)
        + 3 * (std::mem::size_of::<(Recency, Arc<DeadLetterView>)>()
            + std::mem::size_of::<((i32, i64), Recency)>())
            / 2;
    block(record.key.as_ref().map_or(0, Vec::len))
        + block(record.payload.as_ref().map_or(0, Vec::len))
        + headers
        + copies
        + entries
}

/// How long the console trusts its copy of the purge log without a change announced in Redis: a
/// purge whose announcement failed (Redis down at the time) shows within this.
const PURGE_LOG_RELOAD_AFTER: Duration = Duration::from_secs(60);

type PurgedByPosition = HashMap<(i32, i64), PurgedDeadLetter>;

/// The console's copy of the purge log, by position, reloaded only when the log's generation in
/// Redis moved (every purge bumps it, `ops::dlq_purge`) or after a minute: on FerretDB each read of
/// that log reads all of it (0.9 s at 10^4 entries), which a page must not pay.
#[derive(Default)]
pub struct PurgeLogCopy {
    held: std::sync::Mutex<Option<HeldPurges>>,
}

struct HeldPurges {
    generation: u64,
    read_at: Instant,
    purged: Arc<PurgedByPosition>,
}

impl PurgeLogCopy {
    /// The purged dead letters of `dlq_topic`, by position: the copy, or the log read again if it
    /// changed (or Redis cannot say whether it did).
    pub async fn current(
        &self,
        redis: &RedisStore,
        repository: &ActivityRepository,
        dlq_topic: &str,
        timeout: Duration,
    ) -> anyhow::Result<Arc<PurgedByPosition>> {
        let generation = tokio::time::timeout(timeout, redis.purge_log_generation())
            .await
            .ok()
            .and_then(Result::ok);
        if let Some(generation) = generation {
            let held = self.held.lock().expect("purge log copy lock");
            if let Some(held) = held.as_ref() {
                if held.generation == generation && held.read_at.elapsed() < PURGE_LOG_RELOAD_AFTER
                {
                    return Ok(Arc::clone(&held.purged));
                }
            }
        }
        let log = tokio::time::timeout(timeout, repository.purge_log().purged())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "reading the purge log took longer than console.read_timeout_ms ({} ms)",
                    timeout.as_millis()
                )
            })?
            .map_err(|error| anyhow::anyhow!("reading the purge log: {error}"))?;
        // Keyed by position rather than `topic:partition:offset` text, so the 10^5 dead letters of
        // a listing are not each formatted to be looked up.
        let topic_prefix = format!("{dlq_topic}:");
        let purged: Arc<PurgedByPosition> = Arc::new(
            log.into_iter()
                .filter_map(|(log_id, purge)| {
                    let position = parse_position(log_id.strip_prefix(&topic_prefix)?).ok()?;
                    Some((position, purge))
                })
                .collect(),
        );
        if let Some(generation) = generation {
            *self.held.lock().expect("purge log copy lock") = Some(HeldPurges {
                generation,
                read_at: Instant::now(),
                purged: Arc::clone(&purged),
            });
        }
        Ok(purged)
    }
}
