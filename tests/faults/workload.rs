//! The workload: concurrent HTTP clients posting activities for several tenants, as real clients do:
//! single and batch posts, retries with the same idempotency key after no answer or a 503, deliberate
//! re-sends of acknowledged keys (a client that missed the 202), and a share of invalid requests.
//! Every activity and every answer goes into a ledger (`ledger`) that the checker holds the stores
//! to; the invalid requests come from `invalid_requests`. With several API instances (the cluster
//! drill) each request goes to one drawn at random, as behind a load balancer, so a retry may reach
//! another instance than the first attempt did. With datacenters (the datacenter drill) each client
//! has a home datacenter and fails over: a request to its home that gets no answer or a 503 sends
//! it, and its retries with the same key, to the other datacenter for `FAILOVER_HOLD`, after which
//! it tries its home again (the clients return once the home answers).

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::env::{Tenant, TENANTS};
use crate::invalid_requests::invalid_request;
use crate::ledger::{InvalidRequest, Outcome, PostSample, SentActivity, WorkloadReport};

const TYPES: [&str; 5] = [
    "comment.created",
    "doc.viewed",
    "task.done",
    "login",
    "share",
];
/// A client gives up on one activity after this many posts (it stays "unanswered").
const MAX_POSTS: u32 = 40;
/// Client-side timeouts. Impatient clients give up a little before the API's 5 s wait for the broker,
/// so while the broker is down or slow their requests time out and are retried with the same key
/// (the record may still be acknowledged later); patient ones wait for the API's 503.
const IMPATIENT_TIMEOUT: Duration = Duration::from_secs(3);
const PATIENT_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a client of the datacenter drill stays with the other datacenter after its home failed
/// it, before trying its home again.
const FAILOVER_HOLD: Duration = Duration::from_secs(5);

/// Endpoints of the API that may or may not exist in the binary under test.
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    /// `POST /activities/batch`.
    pub batch: bool,
    /// `GET /activities/stream` (Server-Sent Events).
    pub sse: bool,
}

/// Asks the API which optional endpoints it serves (404 means no).
pub async fn detect_features(api: &str) -> anyhow::Result<Features> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let batch = http
        .post(format!("{api}/activities/batch"))
        .bearer_auth(TENANTS[0].key)
        .json(&json!({"activities": []}))
        .send()
        .await?
        .status();
    let stream = http
        .get(format!("{api}/activities/stream"))
        .bearer_auth(TENANTS[0].key)
        .header("Accept", "text/event-stream")
        .send()
        .await?;
    let sse = stream.status().is_success()
        && stream
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
    drop(stream);
    Ok(Features {
        batch: batch != 404 && batch != 405,
        sse,
    })
}

/// Spaces requests evenly at the target rate, across all clients.
struct Pacer {
    interval: Duration,
    next: std::sync::Mutex<Instant>,
}

impl Pacer {
    async fn wait(&self) {
        self.wait_for(1).await;
    }

    /// Waits for `count` slots at once (a batch of `count` activities).
    async fn wait_for(&self, count: u32) {
        let slot = {
            let mut next = self.next.lock().expect("pacer lock");
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval * count.max(1);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// What every client shares.
struct Shared {
    http: reqwest::Client,
    apis: Vec<String>,
    /// The datacenter of each API (the datacenter drill): clients are homed, and fail over.
    datacenters: Option<Vec<&'static str>>,
    pacer: Pacer,
    features: Features,
    clock: Clock,
    /// The load stops: finish the activity in hand (its retries included), start no new one.
    stop: CancellationToken,
    /// Past this, even retries stop: what is not acknowledged by then stays "unanswered".
    give_up: std::sync::Mutex<Option<Instant>>,
}

/// How the load runs.
pub struct LoadPlan {
    /// The API instances (one in the suite, two in the cluster drill, one per datacenter in the
    /// datacenter drill).
    pub apis: Vec<String>,
    /// The datacenter of each of `apis` (the datacenter drill), else `None`: requests spread.
    pub datacenters: Option<Vec<&'static str>>,
    pub features: Features,
    pub seed: u64,
    pub clients: usize,
    /// Requests per second, all clients together.
    pub rate: u32,
    /// After the load stops, how long clients may keep retrying what they have in hand.
    pub drain_budget: Duration,
}

/// Runs the plan's clients until `stop` is cancelled; they finish their activity in hand (within
/// the drain budget) and hand in their ledgers.
pub async fn run(
    plan: LoadPlan,
    clock: Clock,
    stop: CancellationToken,
) -> anyhow::Result<WorkloadReport> {
    let LoadPlan {
        apis,
        datacenters,
        features,
        seed,
        clients,
        rate,
        drain_budget,
    } = plan;
    let shared = Arc::new(Shared {
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?,
        apis,
        datacenters,
        pacer: Pacer {
            interval: Duration::from_secs_f64(1.0 / f64::from(rate.max(1))),
            next: std::sync::Mutex::new(Instant::now()),
        },
        features,
        clock,
        stop: stop.clone(),
        give_up: std::sync::Mutex::new(None),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..clients {
        let shared = shared.clone();
        tasks.spawn(async move {
            let mut client = Client {
                index,
                timeout: if index % 2 == 0 {
                    IMPATIENT_TIMEOUT
                } else {
                    PATIENT_TIMEOUT
                },
                rng: StdRng::seed_from_u64(
                    seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(index as u64 + 1)),
                ),
                shared,
                report: WorkloadReport::default(),
                sequence: 0,
                acked_keys: Vec::new(),
                target: 0,
                away_until: None,
            };
            client.run().await;
            client.report
        });
    }
    stop.cancelled().await;
    *shared.give_up.lock().expect("give-up lock") = Some(Instant::now() + drain_budget);
    let mut report = WorkloadReport::default();
    while let Some(joined) = tasks.join_next().await {
        report.merge(joined?);
    }
    Ok(report)
}

/// The answer to one HTTP request.
enum Answer {
    Status {
        status: u16,
        body: Option<Value>,
        retry_after: Option<u64>,
    },
    Timeout,
    NoConnection,
}

struct Client {
    index: usize,
    timeout: Duration,
    rng: StdRng,
    shared: Arc<Shared>,
    report: WorkloadReport,
    sequence: u64,
    /// Index into `report.activities` of this client's acknowledged, keyed activities.
    acked_keys: Vec<usize>,
    /// The index of the API the last request went to (`api()` chose it).
    target: usize,
    /// With datacenters: until when this client sends to the other datacenter, its home having
    /// failed it.
    away_until: Option<Instant>,
}

impl Client {
    async fn run(&mut self) {
        while !self.shared.stop.is_cancelled() {
            // The mix: 10% invalid, 8% batches (single posts when there is no batch endpoint),
            // 5% re-sends of an acknowledged key, 2% concurrent pairs, 3% keyless, the rest single.
            let roll: f64 = self.rng.random();
            if roll < 0.10 {
                self.invalid().await;
            } else if roll < 0.18 {
                if self.shared.features.batch {
                    self.batch().await;
                } else {
                    self.single().await;
                }
            } else if roll < 0.23 && !self.acked_keys.is_empty() {
                self.resend_acked().await;
            } else if roll < 0.25 {
                self.concurrent_pair().await;
            } else if roll < 0.28 {
                self.keyless().await;
            } else {
                self.single().await;
            }
        }
    }

    fn tenant(&mut self) -> Tenant {
        TENANTS[self.rng.random_range(0..TENANTS.len())]
    }

    fn next_key(&mut self, prefix: &str) -> String {
        self.sequence += 1;
        format!("{prefix}-w{}-{}", self.index, self.sequence)
    }

    fn gave_up(&self) -> bool {
        self.shared
            .give_up
            .lock()
            .expect("give-up lock")
            .is_some_and(|deadline| Instant::now() > deadline)
    }

    /// The API instance for the next request: with datacenters the home's, or the other's while
    /// failed over; else drawn when there are several (a draw only then, so the suite's seeded
    /// choices stay what they were with one API).
    fn api(&mut self) -> String {
        let apis = &self.shared.apis;
        self.target = if self.shared.datacenters.is_some() {
            let away = self.away_until.is_some_and(|until| Instant::now() < until);
            let home = self.home();
            if away {
                (home + 1) % apis.len()
            } else {
                home
            }
        } else if apis.len() == 1 {
            0
        } else {
            self.rng.random_range(0..apis.len())
        };
        apis[self.target].clone()
    }

    /// With datacenters: the index of this client's home (clients alternate between them).
    fn home(&self) -> usize {
        self.index % self.shared.apis.len()
    }

    /// The datacenter the last request went to.
    fn target_dc(&self) -> Option<&'static str> {
        self.shared
            .datacenters
            .as_ref()
            .map(|datacenters| datacenters[self.target])
    }

    /// The first 202 of an activity, now: when, and from which datacenter.
    fn ack_now(&self) -> (f64, Option<&'static str>) {
        (self.shared.clock.secs(), self.target_dc())
    }

    /// Sends one request; `timed` ones (valid posts) leave a sample for the per-fault statistics.
    async fn send(&mut self, request: reqwest::RequestBuilder, timed: bool) -> Answer {
        self.shared.pacer.wait().await;
        self.report.requests += 1;
        let sent_at = self.shared.clock.secs();
        let answer = match request.timeout(self.timeout).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = retry_after_secs(&response);
                match response.bytes().await {
                    Ok(bytes) => Answer::Status {
                        status,
                        body: serde_json::from_slice(&bytes).ok(),
                        retry_after,
                    },
                    Err(error) if error.is_timeout() => Answer::Timeout,
                    Err(_) => Answer::NoConnection,
                }
            }
            Err(error) if error.is_timeout() => Answer::Timeout,
            Err(_) => Answer::NoConnection,
        };
        let label = match &answer {
            Answer::Status { status, .. } => status.to_string(),
            Answer::Timeout => "timeout".to_owned(),
            Answer::NoConnection => "no-connection".to_owned(),
        };
        let failed = matches!(
            answer,
            Answer::Timeout | Answer::NoConnection | Answer::Status { status: 503, .. }
        );
        if self.shared.datacenters.is_some() && failed && self.target == self.home() {
            let first = self.away_until.is_none_or(|until| Instant::now() >= until);
            self.away_until = Some(Instant::now() + FAILOVER_HOLD);
            if first {
                self.report.failovers += 1;
            }
        }
        if timed {
            self.report.post_samples.push(PostSample {
                at: sent_at,
                secs: self.shared.clock.secs() - sent_at,
                answer: label.clone(),
                retry_after: matches!(
                    answer,
                    Answer::Status {
                        retry_after: Some(_),
                        ..
                    }
                ),
                dc: self.target_dc(),
                client: self.index,
            });
        }
        *self.report.answers.entry(label).or_default() += 1;
        answer
    }

    fn post(&mut self, path: &str, tenant: Tenant, key: Option<&str>) -> reqwest::RequestBuilder {
        let api = self.api();
        let mut request = self
            .shared
            .http
            .post(format!("{api}{path}"))
            .bearer_auth(tenant.key);
        if let Some(key) = key {
            request = request.header("X-Idempotency-Key", key);
        }
        request
    }

    async fn backoff(&mut self, attempt: u32, retry_after: Option<u64>) {
        let exponential = 100u64.saturating_mul(1 << attempt.min(5)).min(2000);
        let wait = retry_after.map_or(exponential, |secs| (secs * 1000).min(2000));
        let jitter = self.rng.random_range(0..=100);
        tokio::time::sleep(Duration::from_millis(wait + jitter)).await;
    }

    fn activity_body(&mut self, nonce: &str, with_metadata: bool) -> Value {
        let actor = self.rng.random_range(1..=500);
        let mut body = json!({
            "actorId": format!("user-{actor}"),
            "actorName": format!("User {actor} ✓"),
            "type": TYPES[self.rng.random_range(0..TYPES.len())],
        });
        match self.rng.random_range(0..4) {
            0 => {}
            1 => body["entityId"] = Value::Null,
            _ => body["entityId"] = json!(format!("doc-{}", self.rng.random_range(1..100_000))),
        }
        if with_metadata || self.rng.random_bool(0.8) {
            let score = (self.rng.random::<f64>() * 1e6).round() / 1e3;
            body["metadata"] = json!({
                "nonce": nonce,
                "seq": self.sequence,
                "score": score,
                "big": self.rng.random::<i64>(),
                "tags": ["faults", TYPES[self.rng.random_range(0..TYPES.len())]],
                "nested": {"ok": self.rng.random_bool(0.5), "note": "ünïcødé \" \\ /"},
            });
        }
        body
    }

    /// Posts one activity, retrying with the same key until a 202 (or giving up).
    async fn post_until_answered(
        &mut self,
        tenant: Tenant,
        key: Option<&str>,
        body: &Value,
    ) -> (Outcome, Option<String>, u32) {
        let mut posts = 0;
        loop {
            if posts > 0 {
                self.report.same_key_retries += 1;
            }
            posts += 1;
            let request = self.post("/activities", tenant, key).json(body);
            let retry_after = match self.send(request, true).await {
                Answer::Status {
                    status: 202, body, ..
                } => {
                    let body = body.unwrap_or(Value::Null);
                    if body["duplicate"] == json!(true) {
                        self.report.duplicate_answers += 1;
                    }
                    let server_key = body["idempotencyKey"].as_str().map(str::to_owned);
                    if key.is_some() && server_key.as_deref() != key {
                        self.report.unexpected.push(format!(
                            "t={:.1}s POST /activities {} key={key:?}: 202 names key {server_key:?}",
                            self.shared.clock.secs(),
                            tenant.id
                        ));
                    }
                    return (Outcome::Acked, server_key, posts);
                }
                // 409: another request with this key and body is being produced right now (the
                // concurrent copy, or our own earlier attempt that timed out on our side): retry.
                Answer::Status {
                    status: status @ (409 | 429 | 503),
                    retry_after,
                    ..
                } => {
                    if status == 429 && key.is_none() {
                        return (Outcome::Refused(429), None, posts);
                    }
                    retry_after
                }
                Answer::Status { status, body, .. } if status >= 500 => {
                    self.report.unexpected.push(format!(
                        "t={:.1}s POST /activities {} key={key:?}: {status} {}",
                        self.shared.clock.secs(),
                        tenant.id,
                        body.unwrap_or(Value::Null)
                    ));
                    None
                }
                Answer::Status { status, body, .. } => {
                    self.report.unexpected.push(format!(
                        "t={:.1}s POST /activities {} key={key:?}: a valid activity got {status} {}",
                        self.shared.clock.secs(),
                        tenant.id,
                        body.unwrap_or(Value::Null)
                    ));
                    return (Outcome::Refused(status), None, posts);
                }
                Answer::Timeout | Answer::NoConnection => {
                    self.report.valid_drops.push(self.shared.clock.secs());
                    None
                }
            };
            // A keyless post cannot be retried safely: the retry would be a second activity.
            if key.is_none() || posts >= MAX_POSTS || self.gave_up() {
                return (Outcome::Unanswered, None, posts);
            }
            self.backoff(posts, retry_after).await;
        }
    }

    async fn single(&mut self) {
        let tenant = self.tenant();
        let key = self.next_key("k");
        let body = self.activity_body(&key, false);
        let (outcome, _, posts) = self.post_until_answered(tenant, Some(&key), &body).await;
        let ack = (outcome == Outcome::Acked).then(|| self.ack_now());
        self.record(tenant, Some(key), body, outcome, posts, ack);
    }

    async fn keyless(&mut self) {
        let tenant = self.tenant();
        let nonce = self.next_key("nokey");
        let body = self.activity_body(&nonce, true);
        let (outcome, server_key, posts) = self.post_until_answered(tenant, None, &body).await;
        let ack = (outcome == Outcome::Acked).then(|| self.ack_now());
        self.record(tenant, server_key, body, outcome, posts, ack);
        if let Some(activity) = self.report.activities.last_mut() {
            activity.nonce = nonce;
        }
    }

    /// A client that missed a 202 posts the same key and body again.
    async fn resend_acked(&mut self) {
        let pick = self.acked_keys[self.rng.random_range(0..self.acked_keys.len())];
        let activity = self.report.activities[pick].clone();
        let tenant = *TENANTS
            .iter()
            .find(|tenant| tenant.id == activity.tenant)
            .expect("known tenant");
        self.report.resends_after_ack += 1;
        let (_, _, posts) = self
            .post_until_answered(tenant, activity.key.as_deref(), &activity.body)
            .await;
        self.report.activities[pick].posts += posts;
    }

    /// Two posts of one new key at once (a client that retried too early).
    async fn concurrent_pair(&mut self) {
        let tenant = self.tenant();
        let key = self.next_key("pair");
        let body = self.activity_body(&key, false);
        self.report.concurrent_sends += 1;
        let shared = self.shared.clone();
        let other_api = self.api();
        let other_body = body.clone();
        let other_key = key.clone();
        // The second copy is a plain request on its own task: one attempt, its answer only counted.
        let other = tokio::spawn(async move {
            shared.pacer.wait().await;
            shared
                .http
                .post(format!("{other_api}/activities"))
                .timeout(PATIENT_TIMEOUT)
                .bearer_auth(tenant.key)
                .header("X-Idempotency-Key", other_key)
                .json(&other_body)
                .send()
                .await
                .map(|response| response.status().as_u16())
        });
        let (mut outcome, _, posts) = self.post_until_answered(tenant, Some(&key), &body).await;
        self.report.requests += 1;
        let label = match other.await {
            Ok(Ok(202)) => {
                outcome = Outcome::Acked;
                "202".to_owned()
            }
            Ok(Ok(status)) => {
                if !matches!(status, 409 | 429 | 503) {
                    self.report.unexpected.push(format!(
                        "t={:.1}s concurrent copy of {key}: a valid activity got {status}",
                        self.shared.clock.secs()
                    ));
                }
                status.to_string()
            }
            _ => {
                self.report.valid_drops.push(self.shared.clock.secs());
                "no-connection".to_owned()
            }
        };
        *self.report.answers.entry(label).or_default() += 1;
        let ack = (outcome == Outcome::Acked).then(|| self.ack_now());
        self.record(tenant, Some(key), body, outcome, posts + 1, ack);
    }

    async fn batch(&mut self) {
        let tenant = self.tenant();
        let size = self.rng.random_range(2..=12);
        let mut items: Vec<(String, Value)> = Vec::with_capacity(size);
        for _ in 0..size {
            let key = self.next_key("b");
            let body = self.activity_body(&key, false);
            items.push((key, body));
        }
        self.report.batches += 1;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; size];
        let mut acks: Vec<Option<(f64, Option<&'static str>)>> = vec![None; size];
        let mut posts = vec![0u32; size];
        let mut attempt = 0;
        loop {
            let pending: Vec<usize> = (0..size).filter(|at| outcomes[*at].is_none()).collect();
            if pending.is_empty() {
                break;
            }
            attempt += 1;
            if attempt > 1 {
                self.report.same_key_retries += pending.len() as u64;
            }
            let activities: Vec<Value> = pending
                .iter()
                .map(|at| json!({"idempotencyKey": items[*at].0, "activity": items[*at].1}))
                .collect();
            for at in &pending {
                posts[*at] += 1;
            }
            // A batch costs as many slots of the rate as it has activities.
            self.shared
                .pacer
                .wait_for(pending.len().saturating_sub(1) as u32)
                .await;
            let request = self
                .post("/activities/batch", tenant, None)
                .json(&json!({ "activities": activities }));
            let mut retry_after = None;
            match self.send(request, true).await {
                Answer::Status {
                    status,
                    body,
                    retry_after: after,
                } => {
                    retry_after = after;
                    let results = body
                        .as_ref()
                        .and_then(|body| body["results"].as_array().cloned())
                        .unwrap_or_default();
                    if results.is_empty() && !matches!(status, 429 | 503) {
                        self.report.unexpected.push(format!(
                            "t={:.1}s POST /activities/batch {}: {status} without results: {}",
                            self.shared.clock.secs(),
                            tenant.id,
                            body.unwrap_or(Value::Null)
                        ));
                    }
                    for result in results {
                        let Some(index) = result["index"].as_u64().map(|index| index as usize)
                        else {
                            continue;
                        };
                        let Some(&at) = pending.get(index) else {
                            continue;
                        };
                        match result["status"].as_u64().unwrap_or(0) as u16 {
                            202 => {
                                if result["duplicate"] == json!(true) {
                                    self.report.duplicate_answers += 1;
                                }
                                outcomes[at] = Some(Outcome::Acked);
                                acks[at] = Some(self.ack_now());
                            }
                            409 | 429 | 503 => {}
                            item_status => {
                                self.report.unexpected.push(format!(
                                    "t={:.1}s batch item {} of {}: a valid activity got {item_status} {result}",
                                    self.shared.clock.secs(),
                                    items[at].0,
                                    tenant.id
                                ));
                                if item_status < 500 {
                                    outcomes[at] = Some(Outcome::Refused(item_status));
                                }
                            }
                        }
                    }
                }
                Answer::Timeout | Answer::NoConnection => {
                    self.report.valid_drops.push(self.shared.clock.secs());
                }
            }
            if attempt as u32 >= MAX_POSTS || self.gave_up() {
                break;
            }
            if outcomes.iter().any(Option::is_none) {
                self.backoff(attempt as u32, retry_after).await;
            }
        }
        for (at, (key, body)) in items.into_iter().enumerate() {
            let outcome = outcomes[at].clone().unwrap_or(Outcome::Unanswered);
            self.record(tenant, Some(key), body, outcome, posts[at], acks[at]);
            if let Some(activity) = self.report.activities.last_mut() {
                activity.batched = true;
            }
        }
    }

    fn record(
        &mut self,
        tenant: Tenant,
        key: Option<String>,
        body: Value,
        outcome: Outcome,
        posts: u32,
        ack: Option<(f64, Option<&'static str>)>,
    ) {
        if outcome == Outcome::Acked && key.is_some() {
            self.acked_keys.push(self.report.activities.len());
        }
        self.report.activities.push(SentActivity {
            acked_at: ack.map(|(at, _)| at),
            acked_dc: ack.and_then(|(_, dc)| dc),
            conflict: false,
            tenant: tenant.id,
            nonce: key.clone().unwrap_or_default(),
            key,
            body,
            outcome,
            posts,
            batched: false,
        });
    }

    async fn invalid(&mut self) {
        let tenant = self.tenant();
        let key = self.next_key("inv");
        let spec = invalid_request(&mut self.rng, tenant, &key, self.shared.features);
        let mut drops = Vec::new();
        let mut got = None;
        for _ in 0..15 {
            let api = self.api();
            let mut request = self
                .shared
                .http
                .request(spec.method.clone(), format!("{api}{}", spec.path));
            for (name, value) in &spec.headers {
                request = request.header(*name, value.as_str());
            }
            match self.send(request.body(spec.body.clone()), false).await {
                Answer::Status { status, .. } => {
                    got = Some(status);
                    break;
                }
                Answer::Timeout | Answer::NoConnection => {
                    drops.push(self.shared.clock.secs());
                    if self.gave_up() {
                        break;
                    }
                    self.backoff(drops.len() as u32, None).await;
                }
            }
        }
        self.report.invalid.push(InvalidRequest {
            case: spec.case,
            expected: spec.expected,
            got,
            drops,
        });
    }
}

/// The `Retry-After` of a refusal, in seconds (the form this API sends).
pub fn retry_after_secs(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}
