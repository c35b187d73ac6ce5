//! The console's login sessions in Redis: every console instance of one settings tree reads and
//! writes the same records, so a session opened on one instance works on every other, survives a
//! restart, and ends everywhere at once.
//!
//! This module stores opaque records under a session's digest; what a record says (operator, role,
//! CSRF token, expiry) is `console::auth`'s business. The raw session id never reaches Redis: only
//! its SHA-256, so whoever reads Redis cannot replay a cookie.
//!
//! Every key is under the hash tag `{console}` (see [`RedisKeys::console_session`]): a session's
//! record and its operator's index share one slot, so the scripts and transactions here are valid on
//! a Redis Cluster as well as on a single server.

use std::time::Duration;

use redis::Script;

use super::redis_connection::RedisConnection;
use super::{RedisKeys, StoreOutage};

/// Opens a session and keeps its operator within the bound, atomically. KEYS[1] is the session's
/// record, KEYS[2] the operator's index (a sorted set of session digests scored by their expiry in
/// milliseconds of Redis's clock); ARGV[1] is the record, ARGV[2] its TTL in seconds, ARGV[3] the
/// session's digest, ARGV[4] the operator's bound, ARGV[5] the prefix of every record's key (the
/// records of sessions ended here share KEYS[1]'s hash tag, so they live in its slot). Expired
/// entries leave the index first; past the bound, the sessions closest to expiring end (never the
/// new one). The index lives as long as its longest session. Answers how many sessions it ended.
const OPEN_SESSION_LUA: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl_ms = tonumber(ARGV[2]) * 1000
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
redis.call('ZADD', KEYS[2], now_ms + ttl_ms, ARGV[3])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
local ended = 0
if excess > 0 then
  for _, digest in ipairs(redis.call('ZRANGE', KEYS[2], 0, excess)) do
    if ended < excess and digest ~= ARGV[3] then
      redis.call('DEL', ARGV[5] .. digest)
      redis.call('ZREM', KEYS[2], digest)
      ended = ended + 1
    end
  end
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
return ended
";

/// The console's session records, bounded per call by the console's read budget.
#[derive(Clone)]
pub struct ConsoleSessionStore {
    connection: RedisConnection,
    keys: RedisKeys,
    /// `console.read_timeout_ms`: past it Redis counts as down for this request (503), like every
    /// other read the console makes.
    timeout: Duration,
    open_session: std::sync::Arc<Script>,
}

impl ConsoleSessionStore {
    pub(super) fn new(
        connection: RedisConnection,
        keys: RedisKeys,
        timeout: Duration,
    ) -> ConsoleSessionStore {
        ConsoleSessionStore {
            connection,
            keys,
            timeout,
            open_session: std::sync::Arc::new(Script::new(OPEN_SESSION_LUA)),
        }
    }

    /// Stores `record` as the session `digest` of `operator` for `ttl`, and ends that operator's
    /// sessions closest to expiring past `max_per_operator`. Answers how many it ended.
    pub async fn open(
        &self,
        digest: &str,
        operator: &str,
        record: &str,
        ttl: Duration,
        max_per_operator: usize,
    ) -> Result<usize, StoreOutage> {
        let mut invocation = self.open_session.prepare_invoke();
        invocation
            .key(self.keys.console_session(digest))
            .key(self.keys.console_operator_sessions(operator))
            .arg(record)
            .arg(ttl.as_secs().max(1))
            .arg(digest)
            .arg(max_per_operator.max(1))
            .arg(self.keys.console_session(""));
        self.within(
            "opening a console session",
            invocation.invoke_async(&mut self.connection.clone()),
        )
        .await
    }

    /// The record of the session `digest`, `None` when it expired, ended or never existed.
    pub async fn find(&self, digest: &str) -> Result<Option<String>, StoreOutage> {
        self.within(
            "reading a console session",
            redis::cmd("GET")
                .arg(self.keys.console_session(digest))
                .query_async(&mut self.connection.clone()),
        )
        .await
    }

    /// Ends the session `digest` of `operator` (its record and its place in the operator's index,
    /// in one transaction); ending one that is gone already is not an error.
    pub async fn end(&self, digest: &str, operator: &str) -> Result<(), StoreOutage> {
        let mut transaction = redis::pipe();
        transaction
            .atomic()
            .del(self.keys.console_session(digest))
            .ignore()
            .zrem(self.keys.console_operator_sessions(operator), digest)
            .ignore();
        self.within(
            "ending a console session",
            transaction.query_async::<()>(&mut self.connection.clone()),
        )
        .await
    }

    async fn within<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreOutage> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(StoreOutage::redis),
            Err(_) => Err(StoreOutage::redis(format!(
                "no answer to {what} within console.read_timeout_ms ({} ms)",
                self.timeout.as_millis()
            ))),
        }
    }
}
