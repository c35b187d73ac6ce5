use crate::domain::{IdempotencyKey, TenantId};

/// Names one flush of one API instance's intake counts (see [`RedisKeys::intake_flush`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntakeFlushId {
    /// Random per API process.
    pub instance: uuid::Uuid,
    /// Counts up with each flush of that process.
    pub sequence: u64,
}

/// The names of every Redis key and channel, in one place. A configurable prefix lets several
/// deployments (or parallel test runs) share one Redis without seeing each other.
///
/// Each name embeds the tenant inside `{...}`, a Redis Cluster hash tag: all of one tenant's keys and
/// its channel hash to the same slot, so the per-record Lua step (mark, count, publish) is valid on a
/// cluster too.
#[derive(Debug, Clone, Default)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    pub fn new(prefix: impl Into<String>) -> RedisKeys {
        RedisKeys {
            prefix: prefix.into(),
        }
    }

    /// Set (NX, 24 h) by the consumer once an activity is stored; its value is
    /// `<document id>:<payload fingerprint>` (just the document id for documents stored before
    /// fingerprints), see `IdempotencyMark`.
    pub fn idempotency(&self, tenant: &TenantId, key: &IdempotencyKey) -> String {
        format!("{}idempotency:{{{tenant}}}:{key}", self.prefix)
    }

    /// Hash of activity type -> count for one tenant.
    pub fn analytics(&self, tenant: &TenantId) -> String {
        format!("{}analytics:{{{tenant}}}", self.prefix)
    }

    /// Hash of the API's intake counts for one tenant (`accepted`, `duplicate`, `rateLimited`),
    /// added to by every API instance (`produce::IntakeTally`), read by the console.
    pub fn intake(&self, tenant: &TenantId) -> String {
        format!("{}intake:{{{tenant}}}", self.prefix)
    }

    /// Set (NX, with an expiry) by the flush of one API instance's intake counts, named by the
    /// instance and the flush's sequence number: a flush retried after a timeout that had in fact
    /// reached Redis finds it and adds nothing again.
    pub fn intake_flush(&self, tenant: &TenantId, flush: &IntakeFlushId) -> String {
        format!(
            "{}intakeflush:{{{tenant}}}:{}:{}",
            self.prefix, flush.instance, flush.sequence
        )
    }

    /// Capped stream of the tenant's newest live events (fields `id`, `event`): the SSE replay buffer.
    pub fn recent_events(&self, tenant: &TenantId) -> String {
        format!("{}recent:{{{tenant}}}", self.prefix)
    }

    /// Sorted set of the tenant's newest stored activities ordered by document id (members
    /// `<document id> <event JSON>`, all score 0, so a lexicographic range is an id range): the
    /// newest-first pages of `GET /activities`, served without asking MongoDB to sort. Capped like
    /// the recent-events stream; see `recent_pages_floor`.
    pub fn recent_pages(&self, tenant: &TenantId) -> String {
        format!("{}pages:{{{tenant}}}", self.prefix)
    }

    /// The document id at and below which `recent_pages` is not complete: the largest id it ever
    /// trimmed, or, when the set was (re)created, an id a margin after Redis's clock at that moment.
    pub fn recent_pages_floor(&self, tenant: &TenantId) -> String {
        format!("{}pagesfloor:{{{tenant}}}", self.prefix)
    }

    /// The tenant's shared rate-limit bucket: its theoretical arrival time in microseconds (GCRA),
    /// so every API instance takes from one bucket.
    pub fn rate_limit(&self, tenant: &TenantId) -> String {
        format!("{}ratelimit:{{{tenant}}}", self.prefix)
    }

    /// Pub/Sub channel carrying the tenant's newly stored activities to the SSE endpoints.
    pub fn channel(&self, tenant: &TenantId) -> String {
        format!("{}activities:{{{tenant}}}", self.prefix)
    }

    /// The tenant whose channel `channel` is, if it is one of this prefix's tenant channels.
    pub fn tenant_of_channel(&self, channel: &str) -> Option<TenantId> {
        let tenant = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("activities:{")?
            .strip_suffix('}')?;
        TenantId::parse(tenant).ok()
    }

    /// Hash of the running consumer instances of one group: field = instance id, value = the
    /// instance's JSON report (its partitions, breaker, last commit, updated-at), written every
    /// `consumer.instance_report_interval_secs` by each `consume` stage and read by the console.
    /// Every group's hash has the hash tag `{consumers}`: they share one slot on a Redis Cluster,
    /// so the console reads them all with one pipeline.
    pub fn consumer_instances(&self, group: &str) -> String {
        format!("{}instances:{{consumers}}:{group}", self.prefix)
    }

    /// A console login session's record, named by the SHA-256 (hex) of the session id (never the id
    /// itself), living as long as the session. Every console key has the hash tag `{console}`, so a
    /// record and its operator's index share a slot (`store::ConsoleSessionStore`).
    pub fn console_session(&self, session_digest: &str) -> String {
        format!(
            "{}console:session:{{console}}:{session_digest}",
            self.prefix
        )
    }

    /// Sorted set of one operator's live sessions (their digests, scored by expiry): what bounds the
    /// sessions of an operator (`console.max_sessions`).
    pub fn console_operator_sessions(&self, operator: &str) -> String {
        format!("{}console:sessions:{{console}}:{operator}", self.prefix)
    }

    /// A counter `dlq purge` (and the console's purges) bump after recording purges: the console
    /// reloads its copy of the purge log only when it moved (on FerretDB every query of that log
    /// reads all of it).
    pub fn purge_log_generation(&self) -> String {
        format!("{}dlq:purge-log-generation", self.prefix)
    }

    /// The API's marker of a client-chosen key (the queue-level layer of idempotency): reserved as
    /// `pending:<fingerprint>` before the record is produced, `<fingerprint>` once the broker
    /// acknowledged it (`1` from versions before fingerprints), see `AcceptedState`.
    pub fn accepted(&self, tenant: &TenantId, key: &IdempotencyKey) -> String {
        format!("{}accepted:{{{tenant}}}:{key}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_formats_are_stable() {
        let tenant = TenantId::parse("acme").unwrap();
        let key = IdempotencyKey::parse("order-42").unwrap();
        let keys = RedisKeys::new("");
        assert_eq!(
            keys.idempotency(&tenant, &key),
            "idempotency:{acme}:order-42"
        );
        assert_eq!(keys.analytics(&tenant), "analytics:{acme}");
        assert_eq!(keys.channel(&tenant), "activities:{acme}");
        assert_eq!(keys.recent_events(&tenant), "recent:{acme}");
        assert_eq!(keys.recent_pages(&tenant), "pages:{acme}");
        assert_eq!(keys.recent_pages_floor(&tenant), "pagesfloor:{acme}");
        assert_eq!(keys.rate_limit(&tenant), "ratelimit:{acme}");
        assert_eq!(keys.accepted(&tenant, &key), "accepted:{acme}:order-42");
        assert_eq!(
            keys.consumer_instances("activity-pipeline.retry.1"),
            "instances:{consumers}:activity-pipeline.retry.1"
        );
        assert_eq!(
            keys.console_session("ab12"),
            "console:session:{console}:ab12"
        );
        assert_eq!(
            keys.console_operator_sessions("ada"),
            "console:sessions:{console}:ada"
        );
        let prefixed = RedisKeys::new("test-1:");
        assert_eq!(prefixed.analytics(&tenant), "test-1:analytics:{acme}");
        assert_eq!(
            prefixed.tenant_of_channel(&prefixed.channel(&tenant)),
            Some(tenant.clone())
        );
        assert_eq!(prefixed.tenant_of_channel("activities:{acme}"), None);
        assert_eq!(keys.tenant_of_channel("activities:{Not Valid}"), None);
    }

    #[test]
    fn tenants_cannot_collide_through_keys() {
        // Idempotency keys may contain ':' but tenant ids may not, and the tenant is fenced by braces:
        // no (tenant, key) pair can spell another pair's Redis key.
        let keys = RedisKeys::new("");
        let a = keys.idempotency(
            &TenantId::parse("a").unwrap(),
            &IdempotencyKey::parse("b:c").unwrap(),
        );
        let b = keys.idempotency(
            &TenantId::parse("a-b").unwrap(),
            &IdempotencyKey::parse("c").unwrap(),
        );
        assert_ne!(a, b);
    }
}
