//! Phase 8: reads at real volumes (issue 16). One tenant is seeded in steps (`--read-sizes`, by
//! default 10^4, 10^5, 10^6 documents) the way the consumer leaves it: documents built by
//! `StoredActivity::from_envelope` and written by the repository's `insert_unordered`, then the
//! consumer's Redis step (`RedisStore::apply_effects`: marks, counters, the recent-events buffer); a
//! second, small tenant beside it. At each size, against one produce process, one sequential client
//! measures each kind of read for at most `--read-requests` requests or `--read-seconds`: the newest
//! page, a page filtered by type, the next page, a deep page (older than the recent-events buffer),
//! one activity by key, an SSE resume inside the buffer (time to the first replayed event), and the
//! small tenant's newest page. Every answer counts, 503s included, by status. At the largest size the
//! store's `explain` of the newest-page and the filtered query is kept, to show what it pushes down.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use activity_pipeline::config::Settings;
use activity_pipeline::domain::{PayloadFingerprint, TenantId};
use activity_pipeline::kafka::create_topics;
use activity_pipeline::store::{
    ActivityRepository, EffectRequest, InsertOutcome, RedisStore, StoredActivity,
};
use anyhow::Context as _;
use futures::StreamExt as _;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};

use super::{max_mib, Names, STOP_GRACE};
use crate::http::{self, open_event_stream, sse_events, ChunkedDecoder};
use crate::latency::{self, Percentiles};
use crate::options::Subject;
use crate::processes::{self, free_port, load_average, wait_ready, CpuSample};
use crate::report::{ReadFigure, ReadStep, ReadsResult, SubjectRound};
use crate::{workload, Bench};

/// Documents per seeding chunk: one `insert_many` and one effects call (the consumer's batches are
/// smaller; larger chunks only seed faster, the stored state is the same).
const SEED_CHUNK: usize = 2_000;
/// Seeding chunks in flight at once (the store's insert of the next overlaps Redis's step of this).
const SEED_CHUNKS_IN_FLIGHT: usize = 2;
/// The seeder's budget per `insert_many`: seeding is not what is measured, and a store slowed by a
/// million documents must not fail it.
const SEED_OP_TIMEOUT_MS: u64 = 120_000;
/// The page size asked for (the dashboards' page).
const PAGE_LIMIT: usize = 50;
/// Longest wait for one answer (read.timeout_ms and queue_wait_ms are far below); past it the
/// request counts as `io: TimedOut` and its connection is dropped.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a resumed stream is read after its first event, to take its whole replay (so its replay
/// slot is given back before the next resume).
const REPLAY_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A kind of read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    NewestPage,
    TypePage,
    NextPage,
    DeepPage,
    ByKey,
    SseResume,
    SmallTenantNewestPage,
}

impl ReadKind {
    const ALL: [ReadKind; 7] = [
        ReadKind::NewestPage,
        ReadKind::TypePage,
        ReadKind::NextPage,
        ReadKind::DeepPage,
        ReadKind::ByKey,
        ReadKind::SseResume,
        ReadKind::SmallTenantNewestPage,
    ];

    fn label(self) -> &'static str {
        match self {
            ReadKind::NewestPage => "newest page",
            ReadKind::TypePage => "page of one type (`type=`)",
            ReadKind::NextPage => "next page (the newest page's cursor)",
            ReadKind::DeepPage => "deep page (cursor older than the buffer)",
            ReadKind::ByKey => "by key (`/activities/{key}`)",
            ReadKind::SseResume => "SSE resume in the buffer: first event",
            ReadKind::SmallTenantNewestPage => "small tenant: newest page",
        }
    }
}

/// The big tenant's seeded documents (ids oldest first) and what the requests need of them.
struct Seeded {
    big: TenantId,
    big_api_key: String,
    small_api_key: String,
    key_prefix: String,
    /// The big tenant's document ids, oldest first (ObjectIds made in one process are ascending).
    ids: Vec<ObjectId>,
}

impl Seeded {
    fn newest_page_cursor(&self) -> ObjectId {
        self.ids[self.ids.len().saturating_sub(PAGE_LIMIT)]
    }
}

impl Bench {
    /// The read phase of `subject`.
    pub async fn reads(
        &self,
        round: usize,
        subject: &Subject,
        result: &mut SubjectRound,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.tenants.len() >= 2,
            "reads: needs two tenants (--tenants)"
        );
        let mut sizes = self.options.read_sizes.clone();
        sizes.sort_unstable();
        sizes.dedup();
        anyhow::ensure!(
            sizes.first().is_some_and(|&size| size > PAGE_LIMIT),
            "--read-sizes: sizes above {PAGE_LIMIT} documents"
        );
        let names = self.names(round, &subject.name, "rd");
        let port = free_port()?;
        let overrides = self.overrides(
            Some(subject),
            &names,
            &[format!("http.listen=127.0.0.1:{port}")],
        );
        let settings = self.settings(&overrides)?;
        create_topics(&settings.kafka, &settings.topic_names()).await?;
        let outcome = self
            .reads_against(round, subject, &names, &settings, &sizes, port, &overrides)
            .await;
        self.cleanup(&settings, &names).await;
        result.reads = Some(outcome?);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn reads_against(
        &self,
        round: usize,
        subject: &Subject,
        names: &Names,
        settings: &Settings,
        sizes: &[usize],
        port: u16,
        overrides: &[String],
    ) -> anyhow::Result<ReadsResult> {
        let mut seeder_settings = settings.mongo.clone();
        seeder_settings.op_timeout_ms = SEED_OP_TIMEOUT_MS;
        let repository = ActivityRepository::connect(&seeder_settings).await?;
        repository
            .ensure_indexes()
            .await
            .map_err(|outage| anyhow::anyhow!("{outage}"))?;
        let redis = RedisStore::connect(&settings.redis)?;
        for tenant in &self.tenants.ids[..2] {
            start_recent_pages_set(settings, tenant).await?;
        }
        let mut seeded = Seeded {
            big: self.tenants.ids[0].clone(),
            big_api_key: self.tenants.api_keys[0].clone(),
            small_api_key: self.tenants.api_keys[1].clone(),
            key_prefix: format!("{}-big", names.key_prefix),
            ids: Vec::with_capacity(*sizes.last().expect("checked non-empty")),
        };
        let small = self.options.read_small_documents;
        let small_prefix = format!("{}-small", names.key_prefix);
        seed(
            &repository,
            &redis,
            &self.tenants.ids[1],
            &small_prefix,
            0..small,
            &mut Vec::new(),
        )
        .await
        .context("seeding the small tenant")?;

        let address: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut produce = self.spawn_role(
            "produce",
            subject,
            overrides,
            &["produce"],
            self.out
                .join(format!("r{round}-{}-reads-produce.log", subject.name)),
        )?;
        wait_ready(
            &self.http,
            &mut produce,
            &format!("http://{address}/healthz"),
            Duration::from_secs(30),
        )
        .await?;
        let observed = self.observed(&[&produce]);
        let mut steps = Vec::new();
        for &size in sizes {
            let load_before = load_average();
            let from = seeded.ids.len();
            let started = Instant::now();
            let big = seeded.big.clone();
            let prefix = seeded.key_prefix.clone();
            seed(
                &repository,
                &redis,
                &big,
                &prefix,
                from..size,
                &mut seeded.ids,
            )
            .await
            .with_context(|| format!("seeding the big tenant up to {size}"))?;
            let seed_documents_per_s = (size - from) as f64 / started.elapsed().as_secs_f64();
            println!(
                "  8. [{}] reads: {size} documents ({} seeded at {seed_documents_per_s:.0} docs/s)",
                subject.name,
                size - from
            );
            let mut queries = Vec::new();
            for kind in ReadKind::ALL {
                produce.ensure_running()?;
                let figure = self
                    .measure(address, kind, &seeded, settings, &observed)
                    .await?;
                print_read(&figure);
                queries.push(figure);
            }
            let rss_mib = observed
                .iter()
                .filter(|(name, _)| name != "bench")
                .filter_map(|(name, pid)| {
                    Some((name.clone(), processes::rss_kib(*pid)? as f64 / 1024.0))
                })
                .collect();
            steps.push(ReadStep {
                documents: size,
                seeded: size - from,
                seed_documents_per_s,
                load_before,
                load_after: load_average(),
                rss_mib,
                queries,
            });
        }
        let peak = produce.stop(STOP_GRACE).await;
        let explain = self.explain(settings, &seeded.big).await;
        for (query, plan) in &explain {
            println!("  8. the store's explain of {query}:\n{plan}");
        }
        Ok(ReadsResult {
            page_limit: PAGE_LIMIT,
            recent_events_per_tenant: settings.redis.recent_events_per_tenant,
            recent_pages_per_tenant: settings.redis.recent_pages_per_tenant,
            read_timeout_ms: settings.read.timeout_ms,
            small_documents: small,
            steps,
            explain,
            produce_peak_rss_mib: max_mib(None, peak),
        })
    }

    /// One kind of read: a warm-up request, then sequential requests until the count or the time
    /// bound, each timed to its answer.
    async fn measure(
        &self,
        address: SocketAddr,
        kind: ReadKind,
        seeded: &Seeded,
        settings: &Settings,
        observed: &[(String, u32)],
    ) -> anyhow::Result<ReadFigure> {
        let mut connection = http::Connection::new(address);
        let mut rng = rand::rng();
        let recent = Recent {
            events: settings.redis.recent_events_per_tenant,
            pages: settings.redis.recent_pages_per_tenant,
        };
        // Unmeasured: the first request of a kind pays for cold caches and a new connection.
        let request = read_request(kind, seeded, recent, &mut rng);
        let _ = read_once(&mut connection, address, &request).await;

        let mut all = latency::new_histogram();
        let mut ok_only = latency::new_histogram();
        let mut statuses = std::collections::BTreeMap::<String, u64>::new();
        let (mut requests, mut ok) = (0u64, 0u64);
        let bound = Duration::from_secs_f64(self.options.read_seconds);
        // A resumed stream the client closed holds one of the tenant's sse.max_connections_per_tenant
        // places until the API next writes to it (the heartbeat, sse.heartbeat_secs): more resumes
        // than that within a heartbeat are refused with 429, which measures the bench, not the reads.
        let most = match kind {
            ReadKind::SseResume => self
                .options
                .read_requests
                .min(settings.sse.max_connections_per_tenant as u64 / 2),
            _ => self.options.read_requests,
        };
        let machine = CpuSample::now();
        let cpu_before = processes::cpu_of(observed);
        let started = Instant::now();
        while requests < most && started.elapsed() < bound {
            let request = read_request(kind, seeded, recent, &mut rng);
            let outcome = read_once(&mut connection, address, &request).await;
            requests += 1;
            match outcome {
                Ok(answered) if answered.status == 200 && answered.as_seeded => {
                    let micros = answered.waited.as_micros() as u64;
                    ok += 1;
                    latency::record(&mut all, micros);
                    latency::record(&mut ok_only, micros);
                }
                Ok(answered) => {
                    latency::record(&mut all, answered.waited.as_micros() as u64);
                    let status = if answered.status == 200 {
                        "200 but not the seeded data".to_owned()
                    } else {
                        answered.status.to_string()
                    };
                    *statuses.entry(status).or_insert(0) += 1;
                }
                Err(error) => *statuses.entry(format!("io: {}", error.kind())).or_insert(0) += 1,
            }
        }
        let elapsed = started.elapsed();
        Ok(ReadFigure {
            query: kind.label().to_owned(),
            requests,
            ok,
            statuses: statuses.into_iter().collect(),
            seconds: elapsed.as_secs_f64(),
            latency: Percentiles::of(&all),
            latency_ok: Percentiles::of(&ok_only),
            cpu_busy_percent: Some(machine.busy_percent_until(&CpuSample::now())),
            cpu_cores: processes::cores_since(observed, &cpu_before, elapsed),
        })
    }

    /// The store's `explain` (queryPlanner) of the newest-page query and the filtered one, as
    /// `newest_first` sends them; a failure is reported in place of the plan.
    async fn explain(&self, settings: &Settings, tenant: &TenantId) -> Vec<(String, String)> {
        let database = self.mongo.database(&settings.mongo.database);
        let queries = [
            (
                "the newest page (`{tenantId}` sorted by `_id` descending, limit 51)",
                doc! { "tenantId": tenant.as_str() },
            ),
            (
                "the filtered page (`{tenantId, type}` sorted by `_id` descending, limit 51)",
                doc! { "tenantId": tenant.as_str(), "type": workload::activity_types()[0] },
            ),
        ];
        let mut plans = Vec::new();
        for (label, filter) in queries {
            let command = doc! {
                "explain": {
                    "find": settings.mongo.collection.as_str(),
                    "filter": filter,
                    "sort": { "_id": -1 },
                    "limit": (PAGE_LIMIT + 1) as i64,
                },
                "verbosity": "queryPlanner",
            };
            let plan =
                match tokio::time::timeout(Duration::from_secs(60), database.run_command(command))
                    .await
                {
                    Ok(Ok(plan)) => pretty(plan),
                    Ok(Err(error)) => format!("explain failed: {error}"),
                    Err(_) => "explain did not answer within 60 s".to_owned(),
                };
            plans.push((label.to_owned(), plan));
        }
        plans
    }
}

/// One request: its bytes, for a resume how many events its replay holds, and what a 200 holds when
/// it answers with the seeded data (for a resume: its first event), so a wrong answer is not timed
/// as a right one.
struct ReadRequest {
    bytes: Vec<u8>,
    replayed: Option<usize>,
    seeded_answer: Option<String>,
}

/// What one request got.
struct Answered {
    status: u16,
    /// A 200 holds `seeded_answer` (true when nothing is expected).
    as_seeded: bool,
    /// Time to the answer (for a resume: to its first event).
    waited: Duration,
}

/// How many of the newest activities Redis keeps: in the SSE replay stream and the recent-pages set.
#[derive(Debug, Clone, Copy)]
struct Recent {
    events: usize,
    pages: usize,
}

/// One request of `kind`, its random parts drawn from `rng`.
fn read_request(
    kind: ReadKind,
    seeded: &Seeded,
    recent: Recent,
    rng: &mut impl rand::Rng,
) -> ReadRequest {
    let ids = &seeded.ids;
    let big = seeded.big_api_key.as_str();
    // The id `back` places before the newest (0: the newest).
    let newest_but = |back: usize| ids.len().checked_sub(back + 1).map(|at| ids[at]);
    let page = |query: String, seeded_answer: Option<String>| ReadRequest {
        bytes: workload::tenant_get_request(
            &format!("/activities?limit={PAGE_LIMIT}{query}"),
            big,
            &[],
        ),
        replayed: None,
        seeded_answer,
    };
    let next_cursor = |id: Option<ObjectId>| id.map(|id| format!("\"nextCursor\":\"{id}\""));
    match kind {
        ReadKind::NewestPage => page(String::new(), next_cursor(newest_but(PAGE_LIMIT - 1))),
        ReadKind::TypePage => {
            let types = workload::activity_types();
            let wanted = types[rng.random_range(0..types.len())];
            page(
                format!("&type={wanted}"),
                Some(format!("\"type\":\"{wanted}\"")),
            )
        }
        ReadKind::NextPage => page(
            format!("&cursor={}", seeded.newest_page_cursor()),
            next_cursor(newest_but(2 * PAGE_LIMIT - 1)),
        ),
        ReadKind::DeepPage => {
            // Any document older than the recent-pages set's, with a full page below it when there
            // is one.
            let older = ids.len().saturating_sub(recent.pages).max(1);
            let at = rng.random_range(older.min(PAGE_LIMIT).min(older - 1)..older);
            let first = at
                .checked_sub(1)
                .map(|below| format!("\"id\":\"{}\"", ids[below]));
            page(format!("&cursor={}", ids[at]), first)
        }
        ReadKind::ByKey => {
            let n = rng.random_range(0..ids.len());
            let key = workload::seeded_key(&seeded.key_prefix, n);
            ReadRequest {
                bytes: workload::tenant_get_request(&format!("/activities/{key}"), big, &[]),
                replayed: None,
                seeded_answer: Some(format!("\"id\":\"{}\"", ids[n])),
            }
        }
        ReadKind::SseResume => {
            // Resume after one of the buffer's events (not the newest: then nothing is replayed).
            let buffered = recent.events.min(ids.len()).max(2);
            let behind = rng.random_range(1..buffered);
            let last_seen = ids[ids.len() - 1 - behind].to_hex();
            ReadRequest {
                bytes: workload::tenant_get_request(
                    "/activities/stream",
                    big,
                    &[
                        ("Accept", "text/event-stream"),
                        ("Last-Event-ID", last_seen.as_str()),
                    ],
                ),
                replayed: Some(behind),
                seeded_answer: Some(format!("\"id\":\"{}\"", ids[ids.len() - behind])),
            }
        }
        ReadKind::SmallTenantNewestPage => ReadRequest {
            bytes: workload::tenant_get_request(
                &format!("/activities?limit={PAGE_LIMIT}"),
                &seeded.small_api_key,
                &[],
            ),
            replayed: None,
            seeded_answer: None,
        },
    }
}

/// Sends one request and waits for its answer (for a resume: its first replayed event), or the I/O
/// error (a timeout drops the connection).
async fn read_once(
    connection: &mut http::Connection,
    address: SocketAddr,
    request: &ReadRequest,
) -> std::io::Result<Answered> {
    let holds_seeded = |text: &[u8]| {
        request
            .seeded_answer
            .as_ref()
            .is_none_or(|wanted| http::find(text, wanted.as_bytes()).is_some())
    };
    if let Some(replayed) = request.replayed {
        return first_replayed_event(address, &request.bytes, replayed, holds_seeded).await;
    }
    let sent = Instant::now();
    match tokio::time::timeout(ANSWER_TIMEOUT, connection.exchange(&request.bytes)).await {
        Ok(answer) => {
            let answer = answer?;
            Ok(Answered {
                status: answer.status,
                as_seeded: holds_seeded(&answer.body),
                waited: sent.elapsed(),
            })
        }
        Err(_) => {
            *connection = http::Connection::new(address);
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer in time",
            ))
        }
    }
}

/// Starts the tenant's recent-pages set with its floor below every id, as a tenant whose set the
/// consumer has kept since before these documents has it. (A set the seeding started would put its
/// floor a minute past Redis's clock, above documents seeded within that minute: the state of a new
/// tenant, not of one with 10^6 documents.)
async fn start_recent_pages_set(settings: &Settings, tenant: &TenantId) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;

    let keys = activity_pipeline::store::RedisKeys::new(settings.redis.key_prefix.clone());
    let mut connection = redis::Client::open(settings.redis.url.expose_secret())?
        .get_multiplexed_async_connection()
        .await?;
    redis::cmd("SET")
        .arg(keys.recent_pages_floor(tenant))
        .arg("000000000000000000000000")
        .query_async::<()>(&mut connection)
        .await?;
    Ok(())
}

/// Seeds documents `range` of `tenant` as the consumer would leave them (store, then Redis), in
/// chunks, appending their ids to `ids` oldest first.
async fn seed(
    repository: &ActivityRepository,
    redis: &RedisStore,
    tenant: &TenantId,
    key_prefix: &str,
    range: std::ops::Range<usize>,
    ids: &mut Vec<ObjectId>,
) -> anyhow::Result<()> {
    let chunks = range
        .clone()
        .step_by(SEED_CHUNK)
        .map(|start| start..(start + SEED_CHUNK).min(range.end));
    // Documents are made in chunk order, outside the futures, so ids ascend across chunks; the
    // inserts may overlap, the Redis steps run in order, as the consumer's do per tenant.
    let mut inserted = futures::stream::iter(chunks)
        .map(|chunk| {
            let envelopes = workload::seeded_envelopes(tenant, key_prefix, chunk);
            let now = chrono::Utc::now();
            let documents: Result<Vec<StoredActivity>, String> = envelopes
                .iter()
                .map(|envelope| {
                    let fingerprint = PayloadFingerprint::of(&envelope.activity);
                    StoredActivity::from_envelope(envelope, &fingerprint, now)
                })
                .collect();
            async move {
                let documents = documents.map_err(anyhow::Error::msg)?;
                let outcomes = repository
                    .insert_unordered(&documents)
                    .await
                    .map_err(|outage| anyhow::anyhow!("{outage}"))?;
                if let Some(outcome) = outcomes
                    .iter()
                    .find(|outcome| **outcome != InsertOutcome::Inserted)
                {
                    anyhow::bail!("a seeded document was not inserted: {outcome:?}");
                }
                Ok(documents)
            }
        })
        .buffered(SEED_CHUNKS_IN_FLIGHT);
    while let Some(documents) = inserted.next().await {
        let documents = documents?;
        let requests: Vec<EffectRequest<'_>> =
            documents.iter().map(EffectRequest::announcing).collect();
        let marked = redis
            .apply_effects(&requests)
            .await
            .map_err(|outage| anyhow::anyhow!("{outage}"))?;
        anyhow::ensure!(
            marked.iter().all(|newly| *newly),
            "a seeded activity was already marked in Redis"
        );
        ids.extend(documents.iter().map(|document| document.id));
    }
    Ok(())
}

/// Opens a resumed stream and waits for its first replayed event; then takes the rest of the
/// replay (`replayed` events, bounded in time), so its replay slot is free before the next resume.
/// 200 only once an event came, timed to it (other statuses to the answer); `as_seeded` says whether
/// the first event is the one `holds_seeded` expects.
async fn first_replayed_event(
    address: SocketAddr,
    request: &[u8],
    replayed: usize,
    holds_seeded: impl Fn(&[u8]) -> bool,
) -> std::io::Result<Answered> {
    use tokio::io::AsyncReadExt as _;

    let sent = Instant::now();
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    let (head, mut stream, mut input) = open_event_stream(address, request, ANSWER_TIMEOUT).await?;
    if head.status != 200 {
        return Ok(Answered {
            status: head.status,
            as_seeded: true,
            waited: sent.elapsed(),
        });
    }
    let mut decoder = ChunkedDecoder::default();
    let mut carry = Vec::new();
    let mut first_event: Option<Answered> = None;
    let mut received = 0;
    let mut read_until = deadline;
    loop {
        let data = if head.chunked {
            decoder
                .feed(&input)
                .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?
        } else {
            std::mem::take(&mut input)
        };
        let events = sse_events(&mut carry, &data);
        if let (Some(event), None) = (events.first(), &first_event) {
            first_event = Some(Answered {
                status: 200,
                as_seeded: holds_seeded(event.as_bytes()),
                waited: sent.elapsed(),
            });
            read_until = tokio::time::Instant::now() + REPLAY_DRAIN_TIMEOUT;
        }
        received += events.len();
        if received >= replayed {
            if let Some(first) = first_event {
                return Ok(first);
            }
        }
        input.clear();
        let read = tokio::time::timeout_at(read_until, stream.read_buf(&mut input)).await;
        match (read, first_event.take()) {
            (Ok(Ok(read)), first) if read > 0 => first_event = first,
            // The replay was cut short or is slow to drain: its first event is what is timed.
            (_, Some(first)) => return Ok(first),
            (Ok(Ok(_)), None) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the stream ended before an event",
                ))
            }
            (Ok(Err(error)), None) => return Err(error),
            (Err(_), None) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no replayed event in time",
                ))
            }
        }
    }
}

fn pretty(document: Document) -> String {
    let json = Bson::Document(document).into_relaxed_extjson();
    serde_json::to_string_pretty(&json).unwrap_or_else(|error| format!("unprintable: {error}"))
}

fn print_read(figure: &ReadFigure) {
    let others = if figure.statuses.is_empty() {
        String::new()
    } else {
        format!(", others {:?}", figure.statuses)
    };
    println!(
        "     {}: {} requests, {} x 200{others}; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (200 only: p50 {:.2} ms)",
        figure.query,
        figure.requests,
        figure.ok,
        figure.latency.p50_ms,
        figure.latency.p99_ms,
        figure.latency.max_ms,
        figure.latency_ok.p50_ms,
    );
}
