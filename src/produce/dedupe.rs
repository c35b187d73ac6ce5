//! Idempotency layer 2 at the API: Redis "accepted" markers, set after the broker acknowledged, so a
//! client retry of an acknowledged key is answered 202 `duplicate: true` without producing again.
//!
//! Never a reason to fail a request: every call is bounded by `intake.dedupe_timeout_ms`, and after a
//! failure the markers are skipped for a short while instead of making every request wait for a
//! Redis that is down. Without them, a retry is produced again and the consumer deduplicates it
//! (layer 3), so correctness never depends on this layer; it saves work.
//!
//! Concurrent requests share round trips (`Coalescer`): their checks go to Redis as one `MGET`, their
//! marks as one pipeline of `SET NX EX`. Under load that is two Redis commands per group of requests
//! instead of two per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::domain::{IdempotencyKey, TenantId};
use crate::store::RedisStore;

/// How long the markers are skipped after Redis failed or was too slow.
const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Round trips of one kind (checks, or marks) out at once; calls that arrive meanwhile wait and go
/// together in a later one.
const ROUND_TRIPS_IN_FLIGHT: usize = 4;
/// Most keys gathered into one round trip (one batch request alone may bring more; it then goes
/// alone).
const MAX_KEYS_PER_ROUND_TRIP: usize = 1024;

pub struct AcceptedMarkers {
    checks: Coalescer,
    marks: Coalescer,
    redis: RedisStore,
    timeout: Duration,
    /// Start of the clock `skip_until_ms` counts from.
    epoch: Instant,
    /// Milliseconds since `epoch` before which Redis is not asked (a tiny circuit breaker).
    skip_until_ms: AtomicU64,
}

impl AcceptedMarkers {
    /// Starts the two coalescing tasks, so it must be called within the Tokio runtime.
    pub fn new(redis: RedisStore, timeout: Duration) -> AcceptedMarkers {
        let checks = Coalescer::start(timeout, {
            let redis = redis.clone();
            move |keys| {
                let redis = redis.clone();
                Box::pin(async move { redis.markers_exist(keys).await.map_err(|e| e.to_string()) })
            }
        });
        let marks = Coalescer::start(timeout, {
            let redis = redis.clone();
            move |keys| {
                let redis = redis.clone();
                Box::pin(async move {
                    let marked = redis.set_accepted(&keys).await;
                    marked.map(|()| Vec::new()).map_err(|e| e.to_string())
                })
            }
        });
        AcceptedMarkers {
            checks,
            marks,
            redis,
            timeout,
            epoch: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
        }
    }

    /// Which of `pairs` were already accepted; all `false` when Redis cannot tell in time.
    pub async fn accepted(&self, pairs: &[(&TenantId, &IdempotencyKey)]) -> Vec<bool> {
        if pairs.is_empty() || self.skipping() {
            return vec![false; pairs.len()];
        }
        let keys = self.redis.accepted_marker_keys(pairs);
        match tokio::time::timeout(self.timeout, self.checks.call(keys)).await {
            Ok(Ok(found)) if found.len() == pairs.len() => found,
            Ok(Ok(_)) => {
                self.fail("a check answered for other keys than asked");
                vec![false; pairs.len()]
            }
            Ok(Err(outage)) => {
                self.fail(&outage);
                vec![false; pairs.len()]
            }
            Err(_) => {
                self.fail("timed out");
                vec![false; pairs.len()]
            }
        }
    }

    /// Marks `pairs` accepted, best effort.
    pub async fn mark(&self, pairs: &[(&TenantId, &IdempotencyKey)]) {
        if pairs.is_empty() || self.skipping() {
            return;
        }
        let keys = self.redis.accepted_marker_keys(pairs);
        match tokio::time::timeout(self.timeout, self.marks.call(keys)).await {
            Ok(Ok(_)) => {}
            Ok(Err(outage)) => self.fail(&outage),
            Err(_) => self.fail("timed out"),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn skipping(&self) -> bool {
        self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed)
    }

    fn fail(&self, why: &str) {
        let until = self.now_ms() + SKIP_AFTER_FAILURE.as_millis() as u64;
        self.skip_until_ms.store(until, Ordering::Relaxed);
        tracing::debug!(
            why,
            "accepted markers unavailable; producing without them for a moment"
        );
    }
}

/// One Redis operation over a list of keys: an answer per key (or none, for writes), or why not.
type RoundTrip = Box<dyn Fn(Vec<String>) -> Pending + Send + Sync>;
type Pending = Pin<Box<dyn Future<Output = Answer> + Send>>;
type Answer = Result<Vec<bool>, String>;

/// The keys of one request, and where its answer goes.
struct Call {
    keys: Vec<String>,
    answer: oneshot::Sender<Answer>,
}

/// Gathers the calls of concurrent requests into shared round trips. While `ROUND_TRIPS_IN_FLIGHT`
/// are out, new calls queue; the next round trip takes every queued call (up to
/// `MAX_KEYS_PER_ROUND_TRIP` keys) and hands each its share of the answer. At low load a call goes
/// out at once, alone.
struct Coalescer {
    calls: mpsc::UnboundedSender<Call>,
}

impl Coalescer {
    fn start(
        timeout: Duration,
        round_trip: impl Fn(Vec<String>) -> Pending + Send + Sync + 'static,
    ) -> Coalescer {
        let round_trip: Arc<RoundTrip> = Arc::new(Box::new(round_trip));
        let (calls, mut queue) = mpsc::unbounded_channel::<Call>();
        tokio::spawn(async move {
            let in_flight = Arc::new(Semaphore::new(ROUND_TRIPS_IN_FLIGHT));
            while let Some(first) = queue.recv().await {
                let Ok(slot) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let mut group = vec![first];
                let mut keys = group[0].keys.len();
                while keys < MAX_KEYS_PER_ROUND_TRIP {
                    match queue.try_recv() {
                        Ok(call) => {
                            keys += call.keys.len();
                            group.push(call);
                        }
                        Err(_) => break,
                    }
                }
                let round_trip = round_trip.clone();
                tokio::spawn(async move {
                    let counts: Vec<usize> = group.iter().map(|call| call.keys.len()).collect();
                    let keys: Vec<String> = group
                        .iter_mut()
                        .flat_map(|call| std::mem::take(&mut call.keys))
                        .collect();
                    // Bounded here too, so a Redis that stopped answering cannot hold the slots.
                    let answer = tokio::time::timeout(timeout, round_trip(keys))
                        .await
                        .unwrap_or_else(|_| Err("timed out".to_owned()));
                    drop(slot);
                    share(answer, &counts, group);
                });
            }
        });
        Coalescer { calls }
    }

    /// Sends `keys` with the next round trip and waits for their answer.
    async fn call(&self, keys: Vec<String>) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.calls
            .send(Call { keys, answer })
            .map_err(|_| "the coalescing task ended".to_owned())?;
        answered
            .await
            .map_err(|_| "the round trip was dropped".to_owned())?
    }
}

/// Hands each call of a round trip its part: `counts[i]` answers for call `i` in order (none for a
/// write), or the round trip's error.
fn share(answer: Answer, counts: &[usize], group: Vec<Call>) {
    match answer {
        Ok(values) => {
            let mut values = values.into_iter();
            for (call, &count) in group.into_iter().zip(counts) {
                let part: Vec<bool> = values.by_ref().take(count).collect();
                // A caller that timed out no longer listens: nothing to do.
                let _ = call.answer.send(Ok(part));
            }
        }
        Err(error) => {
            for call in group {
                let _ = call.answer.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The key groups a test round trip was called with.
    type Seen = Arc<Mutex<Vec<Vec<String>>>>;

    /// A round trip that answers `key.ends_with('!')` per key and records the groups it saw; it
    /// waits `delay` first, so calls made meanwhile queue.
    fn recording(delay: Duration) -> (Seen, impl Fn(Vec<String>) -> Pending + Send + Sync) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let round_trip = {
            let seen = seen.clone();
            move |keys: Vec<String>| {
                let seen = seen.clone();
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    let answer = keys.iter().map(|key| key.ends_with('!')).collect();
                    seen.lock().unwrap().push(keys);
                    Ok(answer)
                }) as Pending
            }
        };
        (seen, round_trip)
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[tokio::test]
    async fn each_call_gets_the_answers_for_its_own_keys() {
        let (_, round_trip) = recording(Duration::from_millis(5));
        let coalescer = Arc::new(Coalescer::start(Duration::from_secs(5), round_trip));
        let calls: Vec<_> = (0..40)
            .map(|n| {
                let coalescer = coalescer.clone();
                tokio::spawn(async move {
                    let mine = keys(&[&format!("a{n}"), &format!("b{n}!"), &format!("c{n}")]);
                    (n, coalescer.call(mine).await)
                })
            })
            .collect();
        for call in calls {
            let (n, answer) = call.await.unwrap();
            assert_eq!(answer, Ok(vec![false, true, false]), "call {n}");
        }
    }

    #[tokio::test]
    async fn calls_made_while_round_trips_are_out_share_the_next_one() {
        let (seen, round_trip) = recording(Duration::from_millis(50));
        let coalescer = Arc::new(Coalescer::start(Duration::from_secs(5), round_trip));
        let calls: Vec<_> = (0..ROUND_TRIPS_IN_FLIGHT + 20)
            .map(|n| {
                let coalescer = coalescer.clone();
                tokio::spawn(async move { coalescer.call(keys(&[&format!("k{n}")])).await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), Ok(vec![false]));
        }
        let seen = seen.lock().unwrap();
        let total: usize = seen.iter().map(Vec::len).sum();
        assert_eq!(total, ROUND_TRIPS_IN_FLIGHT + 20, "every key asked once");
        assert!(
            seen.len() < ROUND_TRIPS_IN_FLIGHT + 20,
            "some calls shared a round trip: {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_or_slow_round_trip_answers_every_call_with_an_error() {
        let coalescer = Coalescer::start(Duration::from_secs(5), |_keys| {
            Box::pin(async { Err("Redis is unavailable".to_owned()) })
        });
        assert_eq!(
            coalescer.call(keys(&["a"])).await,
            Err("Redis is unavailable".to_owned())
        );

        let (_, hanging) = recording(Duration::from_secs(3600));
        let coalescer = Coalescer::start(Duration::from_millis(20), hanging);
        assert_eq!(
            coalescer.call(keys(&["a"])).await,
            Err("timed out".to_owned())
        );
        // The slot of the hung round trip is free again: the next call is answered (timed out
        // too), not left waiting behind it.
        for _ in 0..ROUND_TRIPS_IN_FLIGHT + 1 {
            assert!(coalescer.call(keys(&["b"])).await.is_err());
        }
    }
}
