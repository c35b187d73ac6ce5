//! Idempotency layer 2 at the API: Redis "accepted" markers of client-chosen keys. Before producing,
//! a request reserves its key for its payload fingerprint; after the broker acknowledged, the marker
//! holds the fingerprint for `redis.idempotency_ttl_secs`. So, following the IETF draft "The
//! Idempotency-Key HTTP Header Field": a retry with the same payload is answered 202 `duplicate: true`
//! without producing again; the same key with another payload is refused (422); and a request whose
//! key another request is still producing is answered 409 (retry shortly) instead of being produced
//! twice.
//!
//! Never a reason to fail a request: every call is bounded by `intake.dedupe_timeout_ms`, and after a
//! failure the markers are skipped for a short while instead of making every request wait for a
//! Redis that is down. Without them, every request is produced and the consumer deduplicates it, and
//! sends a reused key to the DLQ as a `conflict` (layer 3), so correctness never depends on this
//! layer: it saves work and tells the client about a reused key at once.

use std::time::Duration;

use super::skip::SkipAfterFailure;
use crate::domain::{IdempotencyKey, PayloadFingerprint, TenantId};
use crate::store::{AcceptedState, RedisStore};
/// How much longer than the delivery timeout a reservation lives.
const RESERVATION_SLACK: Duration = Duration::from_secs(1);

/// What to do with one item whose key the client chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVerdict {
    /// Produce it; `reserved` when this request holds the key's reservation (and so must mark or
    /// release it), `false` when Redis could not tell (the consumer deduplicates).
    Produce { reserved: bool },
    /// The same payload was already accepted: answer 202 `duplicate: true`, produce nothing.
    Duplicate,
    /// Another request with this key and this payload is being produced now: 409, retry shortly.
    InFlight,
    /// The key was accepted, or is being produced, for another payload: 422.
    Conflict,
}

impl KeyVerdict {
    fn of(state: AcceptedState, fingerprint: &PayloadFingerprint) -> KeyVerdict {
        match state {
            AcceptedState::Reserved => KeyVerdict::Produce { reserved: true },
            AcceptedState::InFlight(other) if other == *fingerprint => KeyVerdict::InFlight,
            AcceptedState::Accepted(None) => KeyVerdict::Duplicate,
            AcceptedState::Accepted(Some(other)) if other == *fingerprint => KeyVerdict::Duplicate,
            AcceptedState::InFlight(_) | AcceptedState::Accepted(Some(_)) => KeyVerdict::Conflict,
        }
    }
}

pub struct AcceptedMarkers {
    redis: RedisStore,
    timeout: Duration,
    /// How long a reservation lives if it is neither marked nor released (this process died, or
    /// Redis failed after the reservation).
    pending_ttl: Duration,
    /// Redis is not asked for a moment after it failed or was too slow.
    skip: SkipAfterFailure,
}

impl AcceptedMarkers {
    /// `delivery_timeout` is the longest the broker may take to answer: a reservation outlives it, so
    /// it cannot expire while its record is still being produced.
    pub fn new(
        redis: RedisStore,
        timeout: Duration,
        delivery_timeout: Duration,
        fallbacks: prometheus::IntCounter,
    ) -> AcceptedMarkers {
        AcceptedMarkers {
            redis,
            timeout,
            pending_ttl: delivery_timeout + RESERVATION_SLACK,
            skip: SkipAfterFailure::new(
                "accepted markers unavailable; producing without them for a moment",
                fallbacks,
            ),
        }
    }

    /// Reserves each client-chosen key for its payload and says what to do with each item.
    pub async fn reserve(
        &self,
        items: &[(&TenantId, &IdempotencyKey, &PayloadFingerprint)],
    ) -> Vec<KeyVerdict> {
        let unknown = || vec![KeyVerdict::Produce { reserved: false }; items.len()];
        if items.is_empty() || self.skipping() {
            return unknown();
        }
        let call = self.redis.reserve_accepted(items, self.pending_ttl);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(states)) => states
                .into_iter()
                .zip(items)
                .map(|(state, (_, _, fingerprint))| KeyVerdict::of(state, fingerprint))
                .collect(),
            Ok(Err(outage)) => {
                self.fail(&outage.to_string());
                unknown()
            }
            Err(_) => {
                self.fail("timed out");
                unknown()
            }
        }
    }

    /// After the broker answered: marks the reserved keys whose records it acknowledged, and gives
    /// back those it did not (so the client's retry is produced, not told 409). Best effort; a
    /// reservation left behind expires after the delivery timeout.
    pub async fn settle(
        &self,
        acknowledged: &[(&TenantId, &IdempotencyKey, &PayloadFingerprint)],
        refused: &[(&TenantId, &IdempotencyKey, &PayloadFingerprint)],
    ) {
        if (acknowledged.is_empty() && refused.is_empty()) || self.skipping() {
            return;
        }
        let calls = async {
            self.redis.mark_accepted(acknowledged).await?;
            self.redis.release_accepted(refused).await
        };
        match tokio::time::timeout(self.timeout, calls).await {
            Ok(Ok(())) => {}
            Ok(Err(outage)) => self.fail(&outage.to_string()),
            Err(_) => self.fail("timed out"),
        }
    }

    fn skipping(&self) -> bool {
        self.skip.skipping()
    }

    fn fail(&self, why: &str) {
        self.skip.failed(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_idempotency_key_draft() {
        let mine = PayloadFingerprint::parse(&"a".repeat(32)).unwrap();
        let other = PayloadFingerprint::parse(&"b".repeat(32)).unwrap();
        let verdict = |state| KeyVerdict::of(state, &mine);
        assert_eq!(
            verdict(AcceptedState::Reserved),
            KeyVerdict::Produce { reserved: true }
        );
        assert_eq!(
            verdict(AcceptedState::Accepted(Some(mine.clone()))),
            KeyVerdict::Duplicate
        );
        assert_eq!(
            verdict(AcceptedState::Accepted(None)),
            KeyVerdict::Duplicate
        );
        assert_eq!(
            verdict(AcceptedState::Accepted(Some(other.clone()))),
            KeyVerdict::Conflict
        );
        assert_eq!(
            verdict(AcceptedState::InFlight(mine.clone())),
            KeyVerdict::InFlight
        );
        assert_eq!(
            verdict(AcceptedState::InFlight(other)),
            KeyVerdict::Conflict
        );
    }
}
