use redis::Script;

use super::redis_connection::RedisConnection;
use super::{IntakeFlushId, RedisKeys, StoreOutage, StoredActivity, SupersededActivity};
use crate::config::RedisSettings;
use crate::domain::{IdempotencyKey, PayloadFingerprint, TenantId};

/// The consumer's Redis step for several activities of one tenant, atomic and idempotent per
/// activity: mark its key (NX, with TTL) and, only if this call set the mark, count the activity,
/// publish it and keep it in the tenant's recent-events buffer: the stream in publish order (the SSE
/// replay buffer) and the sorted set by document id (the newest-first pages). A redelivered record
/// finds the mark and changes nothing, so a crash anywhere leaves one count and one live event per
/// key.
///
/// The sorted set is trimmed exactly to its length from its lowest ids, and its floor key keeps the
/// largest id ever trimmed, so every document with an id above the floor whose event was published
/// is in the set. A set (re)created (a new tenant, expired, lost with Redis) starts with a floor a
/// margin after Redis's clock: documents published before that were created before it.
///
/// With the set turned off (length 0) the step deletes the set and its floor: a set an earlier
/// setting kept would otherwise serve pages without the activities published since.
///
/// KEYS[1] is the tenant's counter hash, KEYS[2] its recent-events stream, KEYS[3] its recent-pages
/// set, KEYS[4] that set's floor and KEYS[5..] the activities' marks (all in the tenant's hash
/// slot); ARGV[1] is the marks' TTL, ARGV[2] the tenant's channel, ARGV[3] the stream's length (0:
/// none), ARGV[4] the TTL of the stream and the set, ARGV[5] the floor's margin in seconds, ARGV[6]
/// the set's length (0: none), ARGV[7] the publish command (`PUBLISH`, or `SPUBLISH` on a cluster:
/// the channel shares the tenant's slot, so the event goes to that shard only), then per activity
/// its mark's value (`IdempotencyMark`), document id, type, event, and what it supersedes (the
/// conflict rule replaced another activity's document by this one): that one's mark (empty when
/// nothing), type, and `1` when that one was stored longer ago than the marks live. One call per
/// tenant and batch rather than per activity: profiles of the drain put Redis at ~17 us of CPU per
/// activity with one script call each.
///
/// A superseding activity finds the mark of the one it replaced (same document id, the loser's
/// fingerprint): the step then moves the mark to it and the count from the loser's type to its own,
/// publishes it (the same event id: a dashboard replaces what it showed) and swaps its member in
/// the recent-pages set; once the mark is its own, a redelivery changes nothing. No mark at all
/// means the loser's step never happened (count this one as new), unless the loser was stored so
/// long ago that its mark expired (then its count is still there to move).
const MARK_COUNT_PUBLISH_LUA: &str = r"
local marked = {}
local recent_length = tonumber(ARGV[3])
local pages_length = tonumber(ARGV[6])
local appended = false
local paged = false
local any = false
for i = 5, #KEYS do
  local at = 8 + (i - 5) * 7
  local superseded_mark = ARGV[at + 4]
  local announce = false
  if redis.call('SET', KEYS[i], ARGV[at], 'NX', 'EX', ARGV[1]) then
    if superseded_mark ~= '' and ARGV[at + 6] == '1' then
      if redis.call('HINCRBY', KEYS[1], ARGV[at + 5], -1) == 0 then
        redis.call('HDEL', KEYS[1], ARGV[at + 5])
      end
    end
    announce = true
  elseif superseded_mark ~= '' and redis.call('GET', KEYS[i]) == superseded_mark then
    redis.call('SET', KEYS[i], ARGV[at], 'EX', ARGV[1])
    if redis.call('HINCRBY', KEYS[1], ARGV[at + 5], -1) == 0 then
      redis.call('HDEL', KEYS[1], ARGV[at + 5])
    end
    redis.call('ZREMRANGEBYLEX', KEYS[3], '[' .. ARGV[at + 1] .. ' ', '(' .. ARGV[at + 1] .. ' \255')
    announce = true
  end
  if announce then
    redis.call('HINCRBY', KEYS[1], ARGV[at + 2], 1)
    redis.call(ARGV[7], ARGV[2], ARGV[at + 3])
    if recent_length > 0 then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', recent_length, '*', 'id', ARGV[at + 1], 'event', ARGV[at + 3])
      appended = true
    end
    if pages_length > 0 then
      if not paged and redis.call('EXISTS', KEYS[4]) == 0 then
        local now = redis.call('TIME')
        redis.call('DEL', KEYS[3])
        redis.call('SET', KEYS[4], string.format('%08x', tonumber(now[1]) + tonumber(ARGV[5])) .. '0000000000000000')
      end
      redis.call('ZADD', KEYS[3], 0, ARGV[at + 1] .. ' ' .. ARGV[at + 3])
      paged = true
    end
    any = true
    marked[#marked + 1] = 1
  else
    marked[#marked + 1] = 0
  end
end
if appended then
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
if paged then
  local excess = redis.call('ZCARD', KEYS[3]) - pages_length
  if excess > 0 then
    local highest_trimmed = string.sub(redis.call('ZRANGE', KEYS[3], excess - 1, excess - 1)[1], 1, 24)
    if highest_trimmed > redis.call('GET', KEYS[4]) then
      redis.call('SET', KEYS[4], highest_trimmed)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, excess - 1)
  end
  redis.call('EXPIRE', KEYS[3], ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[4])
elseif any then
  redis.call('DEL', KEYS[3], KEYS[4])
end
return marked
";

/// How far after Redis's clock a new recent-pages set starts its floor. Documents published into the
/// set's predecessor (expired, or lost with Redis) were created before this moment by the consumers'
/// clocks; the margin covers any skew between those clocks and Redis's, with room to spare. Its cost:
/// for this long after a set is (re)created, pages come from MongoDB.
const RECENT_PAGES_FLOOR_MARGIN_SECS: u64 = 60;

/// Adds an intake flush's counts unless that flush was added before: KEYS[1] the tenant's intake
/// hash, KEYS[2] the flush's marker, ARGV[1] the marker's expiry in seconds, then field/amount pairs.
/// Answers 1 when it added them, 0 when the marker was already there.
const ADD_INTAKE_COUNTS_LUA: &str = r"
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
for i = 2, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
";

/// How long a flush's marker is kept: far longer than any retry of that flush takes (an instance
/// retries every second until it lands), short enough that the markers of a busy fleet stay few.
const INTAKE_FLUSH_MARKER_TTL_SECS: u64 = 3600;

/// A tenant's shared token bucket as GCRA (the algorithm `governor` uses in each instance): KEYS[1]
/// holds the theoretical arrival time in microseconds of Redis's clock; ARGV[1] is the emission
/// interval (microseconds per activity), ARGV[2] the burst tolerance (interval x burst), ARGV[3] the
/// fewest activities to take, ARGV[4] the most. Takes as many as the bucket holds up to the most and
/// answers {taken, 0}; when it holds fewer than the fewest, takes nothing and answers {0, the
/// microseconds until they could be taken} (at least 1).
const TAKE_TOKENS_LUA: &str = r"
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now_us)
if tat < now_us then
  tat = now_us
end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local fewest = tonumber(ARGV[3])
local room = math.floor((now_us + tolerance - tat) / interval)
if room < fewest then
  return {0, math.max(1, math.ceil(tat + fewest * interval - tolerance - now_us))}
end
local taken = math.min(room, tonumber(ARGV[4]))
local new_tat = tat + taken * interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now_us) / 1000) + 1)
return {taken, 0}
";

/// Entries read per XREVRANGE while looking for a resume point in the recent-events stream.
const RECENT_SEARCH_PAGE: usize = 500;

/// An entry of a recent-events stream as XRANGE answers it: its entry id and its fields.
type RecentEntry = (String, Vec<(String, String)>);

/// One event of a tenant's recent-events stream: the document id (the SSE `id:`) and the published
/// JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentEvent {
    pub document_id: String,
    pub event: String,
}

/// What a call to a tenant's shared token bucket took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokensTaken {
    /// This many activities (at least the fewest asked for).
    Taken(u64),
    /// Nothing: the fewest asked for fit after this long.
    NotBefore(std::time::Duration),
}

/// A slice of a tenant's recent-pages set (`RedisStore::recent_pages_below`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentPagesSlice {
    /// The set's floor (a document id in hex), `None` when the tenant has no set.
    pub floor: Option<String>,
    /// Highest document id first.
    pub events: Vec<RecentEvent>,
}

/// Activities per script call at most: a script holds Redis for its whole run.
const EFFECTS_PER_CALL: usize = 200;

/// One record's Redis effects.
#[derive(Debug, Clone)]
pub struct EffectRequest<'a> {
    pub tenant: &'a TenantId,
    pub key: &'a IdempotencyKey,
    /// The MongoDB document id: the mark's value (with the fingerprint) and the SSE event id.
    pub document_id: String,
    /// The stored document's payload fingerprint (`None` for documents stored before them).
    pub fingerprint: Option<&'a PayloadFingerprint>,
    pub activity_type: &'a str,
    /// The event published to the tenant's channel (JSON of the stored activity).
    pub event: String,
    /// The activity the document replaced under the conflict rule, whose mark and count move to it.
    pub supersedes: Option<&'a SupersededActivity>,
}

impl<'a> EffectRequest<'a> {
    /// The effects of a stored activity: what the consumer announces for each document it stored
    /// (and what the read bench seeds with, so its Redis state is the consumer's).
    pub fn announcing(document: &'a StoredActivity) -> EffectRequest<'a> {
        EffectRequest {
            tenant: &document.tenant_id,
            key: &document.idempotency_key,
            document_id: document.id.to_hex(),
            fingerprint: document.payload_fingerprint.as_ref(),
            activity_type: &document.activity_type,
            event: document.to_json().to_string(),
            supersedes: document.supersedes.as_ref(),
        }
    }
}

impl RecentEvent {
    fn from_fields(fields: Vec<(String, String)>) -> RecentEvent {
        let mut event = RecentEvent {
            document_id: String::new(),
            event: String::new(),
        };
        for (name, value) in fields {
            match name.as_str() {
                "id" => event.document_id = value,
                "event" => event.event = value,
                _ => {}
            }
        }
        event
    }
}

/// Groups `requests` into script calls: by tenant (in order of first appearance), at most
/// `EFFECTS_PER_CALL` each, keeping each tenant's order; each call is a list of request indexes.
fn effect_calls(requests: &[EffectRequest<'_>]) -> Vec<Vec<usize>> {
    let mut tenants: Vec<(&TenantId, Vec<usize>)> = Vec::new();
    for (index, request) in requests.iter().enumerate() {
        match tenants
            .iter_mut()
            .find(|(tenant, _)| *tenant == request.tenant)
        {
            Some((_, indexes)) => indexes.push(index),
            None => tenants.push((request.tenant, vec![index])),
        }
    }
    tenants
        .into_iter()
        .flat_map(|(_, indexes)| {
            indexes
                .chunks(EFFECTS_PER_CALL)
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What the consumer's idempotency mark of a key says: which document holds the key, and from what
/// payload it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyMark {
    pub document_id: String,
    /// `None` for marks written before fingerprints: they match any payload.
    pub fingerprint: Option<PayloadFingerprint>,
}

impl IdempotencyMark {
    fn encode(document_id: &str, fingerprint: Option<&PayloadFingerprint>) -> String {
        match fingerprint {
            Some(fingerprint) => format!("{document_id}:{fingerprint}"),
            None => document_id.to_owned(),
        }
    }

    fn decode(value: &str) -> IdempotencyMark {
        match value.split_once(':') {
            Some((document_id, fingerprint)) => IdempotencyMark {
                document_id: document_id.to_owned(),
                fingerprint: PayloadFingerprint::parse(fingerprint).ok(),
            },
            None => IdempotencyMark {
                document_id: value.to_owned(),
                fingerprint: None,
            },
        }
    }

    /// Whether a record with `fingerprint` is the activity this mark was made for.
    pub fn matches(&self, fingerprint: &PayloadFingerprint) -> bool {
        self.fingerprint
            .as_ref()
            .is_none_or(|marked| marked == fingerprint)
    }
}

/// What the API's accepted marker of a client-chosen key said when a request tried to reserve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptedState {
    /// Nobody had the key: this request reserved it and must produce, then mark or release it.
    Reserved,
    /// Another request with this key is between its reservation and the broker's answer.
    InFlight(PayloadFingerprint),
    /// The broker acknowledged the key; `None` for markers from before fingerprints (they match).
    Accepted(Option<PayloadFingerprint>),
}

impl AcceptedState {
    const PENDING: &'static str = "pending:";
    /// The marker value of versions before fingerprints.
    const LEGACY_ACCEPTED: &'static str = "1";

    fn decode(previous: Option<String>) -> AcceptedState {
        match previous {
            None => AcceptedState::Reserved,
            Some(value) => match value.strip_prefix(Self::PENDING) {
                Some(fingerprint) => match PayloadFingerprint::parse(fingerprint) {
                    Ok(fingerprint) => AcceptedState::InFlight(fingerprint),
                    Err(_) => AcceptedState::Accepted(None),
                },
                None if value == Self::LEGACY_ACCEPTED => AcceptedState::Accepted(None),
                None => AcceptedState::Accepted(PayloadFingerprint::parse(&value).ok()),
            },
        }
    }

    fn pending(fingerprint: &PayloadFingerprint) -> String {
        format!("{}{fingerprint}", Self::PENDING)
    }
}

/// Reserves a batch's client-chosen keys (KEYS, one tenant's hash slot) for their payloads:
/// `SET NX GET PX` each, ARGV[1] the reservation's lifetime in ms and ARGV[i + 1] KEYS[i]'s pending
/// value. Answers each key's value from before the call (nil where this call reserved it).
///
/// The reservations are neither appended to the AOF nor sent to replicas (`REPL_NONE`): they live
/// for seconds, and the mark that replaces each once its record is acknowledged is. Writing them
/// too doubled what the AOF and its rewrites carry (a rewrite, in a forked child, took a third of
/// Redis's CPU in the bench's batch phase; BENCHMARKS.md). A restart or failover forgets the
/// reservations in flight: a concurrent retry with the same key is then produced instead of told
/// 409, and the consumer deduplicates it (layer 3); nothing accepted is lost.
const RESERVE_ACCEPTED_LUA: &str = r"
redis.set_repl(redis.REPL_NONE)
local previous = {}
for i, key in ipairs(KEYS) do
  previous[i] = redis.call('SET', key, ARGV[i + 1], 'NX', 'GET', 'PX', ARGV[1])
end
return previous
";

/// Deletes a reservation only if it is still this request's (`pending:<fingerprint>`): a request
/// whose record the broker refused gives the key back, so the client's retry is not told 409.
const RELEASE_RESERVATION_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Redis as the consumer and the API use it.
#[derive(Clone)]
pub struct RedisStore {
    connection: RedisConnection,
    keys: RedisKeys,
    idempotency_ttl_secs: u64,
    recent_events_per_tenant: usize,
    recent_pages_per_tenant: usize,
    recent_events_ttl_secs: u64,
    /// The budget of every call (`redis.op_timeout_ms`).
    op_timeout: std::time::Duration,
    /// Shared by every clone (a `Script` holds its source and hash).
    scripts: std::sync::Arc<Scripts>,
}

/// The Lua scripts `RedisStore` runs.
struct Scripts {
    mark_count_publish: Script,
    reserve_accepted: Script,
    release_reservation: Script,
    take_tokens: Script,
    add_intake_counts: Script,
}

impl RedisStore {
    /// Prepares a connection (TLS with `rediss://`; a Redis Cluster with `redis.cluster`) without
    /// making it: Redis being down at start-up must not stop the API, and the connection reconnects
    /// by itself after an outage.
    pub fn connect(settings: &RedisSettings) -> anyhow::Result<RedisStore> {
        let op_timeout = std::time::Duration::from_millis(settings.op_timeout_ms);
        let connection = RedisConnection::prepare(settings, op_timeout)?;
        Ok(RedisStore {
            connection,
            keys: RedisKeys::new(settings.key_prefix.clone()),
            idempotency_ttl_secs: settings.idempotency_ttl_secs,
            recent_events_per_tenant: settings.recent_events_per_tenant,
            recent_pages_per_tenant: settings.recent_pages_per_tenant,
            recent_events_ttl_secs: settings.recent_events_ttl_secs,
            op_timeout,
            scripts: std::sync::Arc::new(Scripts {
                mark_count_publish: Script::new(MARK_COUNT_PUBLISH_LUA),
                reserve_accepted: Script::new(RESERVE_ACCEPTED_LUA),
                release_reservation: Script::new(RELEASE_RESERVATION_LUA),
                take_tokens: Script::new(TAKE_TOKENS_LUA),
                add_intake_counts: Script::new(ADD_INTAKE_COUNTS_LUA),
            }),
        })
    }

    /// The console's session records over this store's connection and key prefix, each call bounded
    /// by `timeout` (the console's read budget).
    pub fn console_sessions(&self, timeout: std::time::Duration) -> super::ConsoleSessionStore {
        super::ConsoleSessionStore::new(self.connection.clone(), self.keys.clone(), timeout)
    }

    pub fn keys(&self) -> &RedisKeys {
        &self.keys
    }

    /// Whether the consumer keeps each tenant's recent-pages set (`redis.recent_pages_per_tenant`
    /// > 0), so pages look there first.
    pub fn keeps_recent_pages(&self) -> bool {
        self.recent_pages_per_tenant > 0
    }

    /// The idempotency marks of `pairs`, in order, `None` where there is none (the pre-check that
    /// skips known duplicates and spots reused keys before MongoDB is asked).
    pub async fn already_marked(
        &self,
        pairs: &[(&TenantId, &IdempotencyKey)],
    ) -> Result<Vec<Option<IdempotencyMark>>, StoreOutage> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = pairs
            .iter()
            .map(|(tenant, key)| self.keys.idempotency(tenant, key))
            .collect();
        let values: Vec<Option<String>> = self
            .within(
                "MGET",
                redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut self.connection.clone()),
            )
            .await?;
        Ok(values
            .into_iter()
            .map(|value| value.as_deref().map(IdempotencyMark::decode))
            .collect())
    }

    /// Runs one call within `redis.op_timeout_ms`: past it, Redis counts as down for this call (the
    /// consumer's breaker and retry in place), whatever the connection is doing.
    async fn within<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreOutage> {
        match tokio::time::timeout(self.op_timeout, call).await {
            Ok(result) => result.map_err(StoreOutage::redis),
            Err(_) => Err(StoreOutage::redis(format!(
                "no answer to {what} within redis.op_timeout_ms ({} ms)",
                self.op_timeout.as_millis()
            ))),
        }
    }

    /// Runs the atomic mark-count-publish step for each request, one script call per tenant (and per
    /// `EFFECTS_PER_CALL` activities); `true` where this call made the mark (and so counted and
    /// published). A tenant's activities are published in the order given.
    ///
    /// One pipeline carries every call on a single server. On a cluster a pipeline must stay in one
    /// slot, so each tenant's calls go in a pipeline of their own (in order), all sent at once.
    pub async fn apply_effects(
        &self,
        requests: &[EffectRequest<'_>],
    ) -> Result<Vec<bool>, StoreOutage> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let calls = effect_calls(requests);
        let pipelines: Vec<&[Vec<usize>]> = if self.connection.is_cluster() {
            calls
                .chunk_by(|a, b| requests[a[0]].tenant == requests[b[0]].tenant)
                .collect()
        } else {
            vec![&calls[..]]
        };
        let answers = futures::future::try_join_all(
            pipelines
                .iter()
                .map(|calls| self.effects_pipeline(requests, calls)),
        )
        .await?;
        let marked: Vec<Vec<i64>> = answers.into_iter().flatten().collect();
        let mut newly = vec![false; requests.len()];
        for (call, results) in calls.iter().zip(&marked) {
            if results.len() != call.len() {
                return Err(StoreOutage::redis(format!(
                    "the effects script answered {} results for {} activities",
                    results.len(),
                    call.len()
                )));
            }
            for (&index, &result) in call.iter().zip(results) {
                newly[index] = result == 1;
            }
        }
        Ok(newly)
    }

    /// Sends `calls` of the effects script in one pipeline (loading the script first, so a Redis
    /// that restarted or failed over runs it anyway); each call's answers, in order.
    async fn effects_pipeline(
        &self,
        requests: &[EffectRequest<'_>],
        calls: &[Vec<usize>],
    ) -> Result<Vec<Vec<i64>>, StoreOutage> {
        let publish = if self.connection.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let marks_live_since = mongodb::bson::DateTime::from_millis(
            chrono::Utc::now().timestamp_millis().saturating_sub(
                i64::try_from(self.idempotency_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            ),
        );
        let mut pipeline = redis::pipe();
        pipeline
            .load_script(&self.scripts.mark_count_publish)
            .ignore();
        for call in calls {
            let tenant = requests[call[0]].tenant;
            let mut invocation = self.scripts.mark_count_publish.prepare_invoke();
            invocation
                .key(self.keys.analytics(tenant))
                .key(self.keys.recent_events(tenant))
                .key(self.keys.recent_pages(tenant))
                .key(self.keys.recent_pages_floor(tenant))
                .arg(self.idempotency_ttl_secs)
                .arg(self.keys.channel(tenant))
                .arg(self.recent_events_per_tenant)
                .arg(self.recent_events_ttl_secs)
                .arg(RECENT_PAGES_FLOOR_MARGIN_SECS)
                .arg(self.recent_pages_per_tenant)
                .arg(publish);
            for &index in call {
                let request = &requests[index];
                invocation
                    .key(self.keys.idempotency(request.tenant, request.key))
                    .arg(IdempotencyMark::encode(
                        &request.document_id,
                        request.fingerprint,
                    ))
                    .arg(&request.document_id)
                    .arg(request.activity_type)
                    .arg(&request.event);
                match request.supersedes {
                    Some(superseded) => invocation
                        .arg(IdempotencyMark::encode(
                            &request.document_id,
                            Some(&superseded.payload_fingerprint),
                        ))
                        .arg(&superseded.activity_type)
                        .arg(if superseded.created_at < marks_live_since {
                            "1"
                        } else {
                            "0"
                        }),
                    None => invocation.arg("").arg("").arg("0"),
                };
            }
            pipeline.invoke_script(&invocation);
        }
        self.within(
            "the effects script",
            pipeline.query_async(&mut self.connection.clone()),
        )
        .await
    }

    /// Where the event with `document_id` sits in the tenant's recent-events stream (its entry id),
    /// the point a replay reads forward from with `recent_page`; `None` when the stream does not reach
    /// back to that event (trimmed, expired, turned off or lost with Redis): the caller replays from
    /// MongoDB instead.
    ///
    /// Reads newest first, a page at a time and keeping none of it, until it meets the event; the
    /// stream is capped, so this reads at most `redis.recent_events_per_tenant` entries (plus the `~`
    /// trim's slack), but holds one page at a time.
    pub async fn recent_position(
        &self,
        tenant: &TenantId,
        document_id: &str,
    ) -> Result<Option<String>, StoreOutage> {
        let key = self.keys.recent_events(tenant);
        let mut end = "+".to_owned();
        loop {
            let page: Vec<RecentEntry> = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(RECENT_SEARCH_PAGE)
                .query_async(&mut self.connection.clone())
                .await
                .map_err(StoreOutage::redis)?;
            let exhausted = page.len() < RECENT_SEARCH_PAGE;
            for (entry_id, fields) in page {
                if RecentEvent::from_fields(fields).document_id == document_id {
                    return Ok(Some(entry_id));
                }
                end = format!("({entry_id}");
            }
            if exhausted {
                return Ok(None);
            }
        }
    }

    /// Up to `count` events that follow the entry `after_entry` in the tenant's recent-events stream,
    /// oldest first, each with its own entry id (the next call's `after_entry`). `None` when
    /// `after_entry` is no longer in the stream: the stream is trimmed from its oldest end (or expires
    /// whole), so while that entry is there nothing after it was trimmed; once it is gone, events
    /// after it may be gone too, and the caller must not go on as if the stream were complete.
    ///
    /// The check and the read run as one transaction, so no trim falls between them.
    pub async fn recent_page(
        &self,
        tenant: &TenantId,
        after_entry: &str,
        count: usize,
    ) -> Result<Option<Vec<(String, RecentEvent)>>, StoreOutage> {
        let key = self.keys.recent_events(tenant);
        let (anchor, page): (Vec<RecentEntry>, Vec<RecentEntry>) = redis::pipe()
            .atomic()
            .cmd("XRANGE")
            .arg(&key)
            .arg(after_entry)
            .arg(after_entry)
            .cmd("XRANGE")
            .arg(&key)
            .arg(format!("({after_entry}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(StoreOutage::redis)?;
        if anchor.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            page.into_iter()
                .map(|(entry_id, fields)| (entry_id, RecentEvent::from_fields(fields)))
                .collect(),
        ))
    }

    /// Up to `count` activities of the tenant's recent-pages set with ids below `below` (all when
    /// `None`), highest id first, with the set's floor read in the same transaction: every activity
    /// published with an id above the floor is in the set. `floor` is `None` when the tenant has no
    /// set (none kept, expired, or lost with Redis): the caller reads MongoDB.
    pub async fn recent_pages_below(
        &self,
        tenant: &TenantId,
        below: Option<&str>,
        count: usize,
    ) -> Result<RecentPagesSlice, StoreOutage> {
        let upper = below.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
        let (floor, members): (Option<String>, Vec<String>) = redis::pipe()
            .atomic()
            .get(self.keys.recent_pages_floor(tenant))
            .cmd("ZREVRANGEBYLEX")
            .arg(self.keys.recent_pages(tenant))
            .arg(upper)
            .arg("-")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(StoreOutage::redis)?;
        let events = members
            .into_iter()
            .map(|member| match member.split_once(' ') {
                Some((document_id, event)) => RecentEvent {
                    document_id: document_id.to_owned(),
                    event: event.to_owned(),
                },
                None => RecentEvent {
                    document_id: member,
                    event: String::new(),
                },
            })
            .collect();
        Ok(RecentPagesSlice { floor, events })
    }

    /// Takes from the tenant's shared bucket (`interval` per activity, room for `tolerance` ahead of
    /// now) as many activities as it holds, at least `fewest` and at most `most`.
    pub async fn take_tokens(
        &self,
        tenant: &TenantId,
        fewest: u64,
        most: u64,
        interval: std::time::Duration,
        tolerance: std::time::Duration,
    ) -> Result<TokensTaken, StoreOutage> {
        let (taken, wait_us): (u64, u64) = self
            .scripts
            .take_tokens
            .key(self.keys.rate_limit(tenant))
            .arg(interval.as_secs_f64() * 1e6)
            .arg(tolerance.as_secs_f64() * 1e6)
            .arg(fewest)
            .arg(most.max(fewest))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(StoreOutage::redis)?;
        Ok(if wait_us > 0 {
            TokensTaken::NotBefore(std::time::Duration::from_micros(wait_us))
        } else {
            TokensTaken::Taken(taken)
        })
    }

    /// The tenant's counters: activity type -> count.
    pub async fn analytics(
        &self,
        tenant: &TenantId,
    ) -> Result<std::collections::BTreeMap<String, i64>, StoreOutage> {
        redis::cmd("HGETALL")
            .arg(self.keys.analytics(tenant))
            .query_async(&mut self.connection.clone())
            .await
            .map_err(StoreOutage::redis)
    }

    /// The purge log's generation (0 before the first purge): see `RedisKeys::purge_log_generation`.
    pub async fn purge_log_generation(&self) -> Result<u64, StoreOutage> {
        let generation: Option<u64> = redis::cmd("GET")
            .arg(self.keys.purge_log_generation())
            .query_async(&mut self.connection.clone())
            .await
            .map_err(StoreOutage::redis)?;
        Ok(generation.unwrap_or(0))
    }

    /// Says that purges were recorded: readers of the purge log reload it.
    pub async fn bump_purge_log_generation(&self) -> Result<(), StoreOutage> {
        redis::cmd("INCR")
            .arg(self.keys.purge_log_generation())
            .query_async::<i64>(&mut self.connection.clone())
            .await
            .map(|_| ())
            .map_err(StoreOutage::redis)
    }

    /// Adds `counts` (field -> amount) to the tenant's intake counts once per `flush`: one script
    /// that first sets the flush's marker (NX), so sending the same flush again (a retry after a
    /// timeout whose write had landed) adds nothing. Answers whether this call added the counts.
    pub async fn add_intake_counts(
        &self,
        tenant: &TenantId,
        flush: &IntakeFlushId,
        counts: &[(&str, u64)],
    ) -> Result<bool, StoreOutage> {
        let mut invocation = self.scripts.add_intake_counts.prepare_invoke();
        invocation
            .key(self.keys.intake(tenant))
            .key(self.keys.intake_flush(tenant, flush))
            .arg(INTAKE_FLUSH_MARKER_TTL_SECS);
        for (field, amount) in counts {
            invocation.arg(*field).arg(*amount);
        }
        let added: i64 = self
            .within(
                "the intake counts",
                invocation.invoke_async(&mut self.connection.clone()),
            )
            .await?;
        Ok(added == 1)
    }

    /// The tenant's intake counts: field -> count (see [`RedisKeys::intake`]).
    pub async fn intake_counts(
        &self,
        tenant: &TenantId,
    ) -> Result<std::collections::BTreeMap<String, i64>, StoreOutage> {
        self.within(
            "the intake counts",
            redis::cmd("HGETALL")
                .arg(self.keys.intake(tenant))
                .query_async(&mut self.connection.clone()),
        )
        .await
    }

    /// Writes one consumer instance's report into its group's hash (see
    /// [`RedisKeys::consumer_instances`]) and keeps the hash for `keep`: a group whose instances all
    /// stopped reporting disappears on its own.
    pub async fn write_instance_report(
        &self,
        group: &str,
        instance: &str,
        report: &str,
        keep: std::time::Duration,
    ) -> Result<(), StoreOutage> {
        let key = self.keys.consumer_instances(group);
        let mut pipeline = redis::pipe();
        pipeline
            .hset(&key, instance, report)
            .ignore()
            .expire(&key, keep.as_secs().max(1) as i64)
            .ignore();
        self.within(
            "the consumer instance report",
            pipeline.query_async::<()>(&mut self.connection.clone()),
        )
        .await
    }

    /// Removes instances' reports from their group's hash (a clean shutdown, or reports too old).
    pub async fn remove_instance_reports(
        &self,
        group: &str,
        instances: &[&str],
    ) -> Result<(), StoreOutage> {
        if instances.is_empty() {
            return Ok(());
        }
        self.within(
            "removing consumer instance reports",
            redis::cmd("HDEL")
                .arg(self.keys.consumer_instances(group))
                .arg(instances)
                .query_async::<()>(&mut self.connection.clone()),
        )
        .await
    }

    /// Every group's instance reports (instance id -> report), in the order of `groups`. One
    /// pipeline: the hashes share a hash tag, so this is valid on a Redis Cluster too.
    pub async fn instance_reports(
        &self,
        groups: &[&str],
    ) -> Result<Vec<std::collections::BTreeMap<String, String>>, StoreOutage> {
        let mut pipeline = redis::pipe();
        for group in groups {
            pipeline.hgetall(self.keys.consumer_instances(group));
        }
        self.within(
            "the consumer instance reports",
            pipeline.query_async(&mut self.connection.clone()),
        )
        .await
    }

    /// Replaces the tenant's counters with `counts`, atomically (MULTI/EXEC): readers see the old
    /// hash or the new one, never a half-written one.
    pub async fn replace_analytics(
        &self,
        tenant: &TenantId,
        counts: &std::collections::BTreeMap<String, i64>,
    ) -> Result<(), StoreOutage> {
        let key = self.keys.analytics(tenant);
        let mut transaction = redis::pipe();
        transaction.atomic().del(&key).ignore();
        if !counts.is_empty() {
            let fields: Vec<(&String, &i64)> = counts.iter().collect();
            transaction.hset_multiple(&key, &fields).ignore();
        }
        transaction
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(StoreOutage::redis)
    }

    pub async fn ping(&self) -> Result<(), StoreOutage> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.connection.clone())
            .await
            .map(|_| ())
            .map_err(StoreOutage::redis)
    }
}

/// Whether every pair is of one tenant: a request's pairs are, and on a Redis Cluster the pipeline
/// of a request's markers must stay in its tenant's hash slot.
fn one_tenant(pairs: &[(&TenantId, &IdempotencyKey, &PayloadFingerprint)]) -> bool {
    pairs.windows(2).all(|pair| pair[0].0 == pair[1].0)
}

/// Idempotency layer 2, the API's "accepted" markers of client-chosen keys: reserved before the
/// record is produced (so a concurrent request with the same key is answered 409 instead of being
/// produced twice), set to the payload fingerprint once the broker acknowledged (so a retry is
/// answered without producing again, and a reused key with another payload is refused with 422).
/// Best effort by design: callers bound these calls with a short timeout and carry on without them
/// (the consumer deduplicates and detects conflicts anyway).
impl RedisStore {
    /// Reserves each of `pairs` (one request's, so one tenant's) for its fingerprint (`SET NX GET`)
    /// for `pending_ttl` (longer than the broker may take to answer), and says what was there
    /// before. Several keys (a batch's): one script call, not persisted (`RESERVE_ACCEPTED_LUA`).
    /// One key: a plain `SET`, persisted and replicated like the mark. For one key the script
    /// saves one AOF entry but costs a Lua call on Redis's one thread, and single-request intake
    /// measured slower with it in every round (BENCHMARKS.md, "One key, one `SET`").
    pub async fn reserve_accepted(
        &self,
        pairs: &[(&TenantId, &IdempotencyKey, &PayloadFingerprint)],
        pending_ttl: std::time::Duration,
    ) -> Result<Vec<AcceptedState>, StoreOutage> {
        debug_assert!(
            one_tenant(pairs),
            "one call, one hash slot: the pairs of one request"
        );
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let pending_ms = u64::try_from(pending_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        if let [(tenant, key, fingerprint)] = pairs {
            let previous: Option<String> = self
                .within(
                    "the accepted reservation",
                    redis::cmd("SET")
                        .arg(self.keys.accepted(tenant, key))
                        .arg(AcceptedState::pending(fingerprint))
                        .arg("NX")
                        .arg("GET")
                        .arg("PX")
                        .arg(pending_ms)
                        .query_async(&mut self.connection.clone()),
                )
                .await?;
            return Ok(vec![AcceptedState::decode(previous)]);
        }
        let mut invocation = self.scripts.reserve_accepted.prepare_invoke();
        invocation.arg(pending_ms);
        for (tenant, key, fingerprint) in pairs {
            invocation
                .key(self.keys.accepted(tenant, key))
                .arg(AcceptedState::pending(fingerprint));
        }
        let previous: Vec<Option<String>> = self
            .within(
                "the accepted reservation",
                invocation.invoke_async(&mut self.connection.clone()),
            )
            .await?;
        Ok(previous.into_iter().map(AcceptedState::decode).collect())
    }

    /// Marks `pairs` accepted with their fingerprints for `redis.idempotency_ttl_secs` (one
    /// pipeline), replacing this request's reservation.
    pub async fn mark_accepted(
        &self,
        pairs: &[(&TenantId, &IdempotencyKey, &PayloadFingerprint)],
    ) -> Result<(), StoreOutage> {
        debug_assert!(
            one_tenant(pairs),
            "one pipeline, one hash slot: the pairs of one request"
        );
        if pairs.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for (tenant, key, fingerprint) in pairs {
            pipeline
                .cmd("SET")
                .arg(self.keys.accepted(tenant, key))
                .arg(fingerprint.as_str())
                .arg("EX")
                .arg(self.idempotency_ttl_secs)
                .ignore();
        }
        self.within(
            "the accepted markers",
            pipeline.query_async::<()>(&mut self.connection.clone()),
        )
        .await
    }

    /// Gives back the reservations of `pairs` whose records the broker did not acknowledge, where
    /// they are still this request's.
    pub async fn release_accepted(
        &self,
        pairs: &[(&TenantId, &IdempotencyKey, &PayloadFingerprint)],
    ) -> Result<(), StoreOutage> {
        debug_assert!(
            one_tenant(pairs),
            "one pipeline, one hash slot: the pairs of one request"
        );
        if pairs.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        pipeline
            .load_script(&self.scripts.release_reservation)
            .ignore();
        for (tenant, key, fingerprint) in pairs {
            let mut invocation = self.scripts.release_reservation.prepare_invoke();
            invocation
                .key(self.keys.accepted(tenant, key))
                .arg(AcceptedState::pending(fingerprint));
            pipeline.invoke_script(&invocation).ignore();
        }
        self.within(
            "the accepted release",
            pipeline.query_async::<()>(&mut self.connection.clone()),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(digit: char) -> PayloadFingerprint {
        PayloadFingerprint::parse(&digit.to_string().repeat(32)).unwrap()
    }

    #[test]
    fn idempotency_marks_round_trip_and_old_marks_match_anything() {
        let encoded = IdempotencyMark::encode("65f0a1", Some(&fingerprint('a')));
        let mark = IdempotencyMark::decode(&encoded);
        assert_eq!(mark.document_id, "65f0a1");
        assert!(mark.matches(&fingerprint('a')));
        assert!(!mark.matches(&fingerprint('b')));
        let old = IdempotencyMark::decode("65f0a1");
        assert_eq!(old.fingerprint, None);
        assert!(old.matches(&fingerprint('b')));
    }

    #[test]
    fn accepted_markers_decode_every_state() {
        assert_eq!(AcceptedState::decode(None), AcceptedState::Reserved);
        assert_eq!(
            AcceptedState::decode(Some(AcceptedState::pending(&fingerprint('c')))),
            AcceptedState::InFlight(fingerprint('c'))
        );
        assert_eq!(
            AcceptedState::decode(Some("c".repeat(32))),
            AcceptedState::Accepted(Some(fingerprint('c')))
        );
        assert_eq!(
            AcceptedState::decode(Some("1".to_owned())),
            AcceptedState::Accepted(None),
            "markers from before fingerprints"
        );
    }

    #[test]
    fn effects_are_grouped_by_tenant_in_order_and_capped_per_call() {
        let acme = TenantId::parse("acme").unwrap();
        let globex = TenantId::parse("globex").unwrap();
        let keys: Vec<IdempotencyKey> = (0..EFFECTS_PER_CALL + 3)
            .map(|n| IdempotencyKey::parse(&format!("k{n}")).unwrap())
            .collect();
        let request = |tenant, key| EffectRequest {
            tenant,
            key,
            document_id: String::new(),
            fingerprint: None,
            activity_type: "t",
            event: String::new(),
            supersedes: None,
        };
        let requests = vec![
            request(&acme, &keys[0]),
            request(&globex, &keys[1]),
            request(&acme, &keys[2]),
        ];
        assert_eq!(effect_calls(&requests), [vec![0, 2], vec![1]]);
        let many: Vec<EffectRequest<'_>> = keys.iter().map(|key| request(&acme, key)).collect();
        let calls = effect_calls(&many);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0], (0..EFFECTS_PER_CALL).collect::<Vec<_>>());
        assert_eq!(
            calls[1],
            (EFFECTS_PER_CALL..EFFECTS_PER_CALL + 3).collect::<Vec<_>>()
        );
        assert!(effect_calls(&[]).is_empty());
    }
}
