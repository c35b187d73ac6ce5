//! The ledger: every activity the clients meant to send and every invalid request, with what each
//! got (`Outcome`), plus the answer counts. The workload writes it; the checker holds the stores to
//! it (an acknowledged activity must be stored exactly once, an unanswered one at most once).

use std::collections::BTreeMap;

use serde_json::Value;

/// What became of one activity, from the client's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// At least one 202: must be stored exactly once.
    Acked,
    /// Never a 202 nor a 4xx (timeouts, dropped connections, 503s until the client gave up): may be
    /// stored, at most once.
    Unanswered,
    /// A 4xx for a valid activity: must not be stored (and is itself a finding).
    Refused(u16),
}

/// One activity a client meant to send.
#[derive(Debug, Clone)]
pub struct SentActivity {
    pub tenant: &'static str,
    /// The idempotency key: the client's, or the one the server made (keyless posts that got a
    /// 202); `None` for a keyless post that got no answer.
    pub key: Option<String>,
    /// Also in `metadata.nonce`: finds a keyless post's document.
    pub nonce: String,
    pub body: Value,
    pub outcome: Outcome,
    pub posts: u32,
    pub batched: bool,
    /// Run-clock time of the first 202.
    pub acked_at: Option<f64>,
    /// The datacenter whose API gave the first 202 (the datacenter drill; `None` elsewhere).
    pub acked_dc: Option<&'static str>,
    /// One of the two bodies a racing client sent under one key to two datacenters (the
    /// datacenter drill's conflicts): only one of them is stored, the conflict rule says which.
    pub conflict: bool,
}

/// One invalid request and what it got.
#[derive(Debug, Clone)]
pub struct InvalidRequest {
    pub case: String,
    pub expected: u16,
    /// The final answer's status; `None` if every attempt lost its connection.
    pub got: Option<u16>,
    /// Run-clock times at which an attempt got no answer (connection refused, reset, timeout).
    pub drops: Vec<f64>,
}

/// One valid post (single or batch) and its answer, for the statistics per fault (p99 of POST,
/// 503s) of the cluster drill.
#[derive(Debug, Clone)]
pub struct PostSample {
    /// Run-clock time the request was sent.
    pub at: f64,
    /// How long the answer took (or until the client gave up).
    pub secs: f64,
    /// The status ("202", "503", ...) or "timeout" / "no-connection".
    pub answer: String,
    /// Whether the answer carried a `Retry-After` header.
    pub retry_after: bool,
    /// The datacenter the request went to (the datacenter drill; `None` elsewhere).
    pub dc: Option<&'static str>,
    /// The client that sent it (its index).
    pub client: usize,
}

#[derive(Debug, Default)]
pub struct WorkloadReport {
    pub activities: Vec<SentActivity>,
    pub invalid: Vec<InvalidRequest>,
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Answers by status ("202", "503", ...) or failure ("timeout", "no-connection").
    pub answers: BTreeMap<String, u64>,
    /// Posts of a key again after it got no answer or a 503 (what a client does after a timeout).
    pub same_key_retries: u64,
    /// Posts of a key that already got a 202 (a client that missed the answer), one at a time...
    pub resends_after_ack: u64,
    /// ... or two at once.
    pub concurrent_sends: u64,
    /// 202s that said `"duplicate": true` (the API's own dedupe, when it has one).
    pub duplicate_answers: u64,
    pub batches: u64,
    /// Times a client of the datacenter drill left its home datacenter for the other one.
    pub failovers: u64,
    /// Answers a valid request must never get: a 5xx other than 503, a 4xx other than 429.
    pub unexpected: Vec<String>,
    /// Run-clock times of valid requests that got no answer.
    pub valid_drops: Vec<f64>,
    /// Every valid post, timed.
    pub post_samples: Vec<PostSample>,
}

impl WorkloadReport {
    /// Adds one client's ledger to this one.
    pub fn merge(&mut self, other: WorkloadReport) {
        self.activities.extend(other.activities);
        self.invalid.extend(other.invalid);
        self.requests += other.requests;
        for (answer, count) in other.answers {
            *self.answers.entry(answer).or_default() += count;
        }
        self.same_key_retries += other.same_key_retries;
        self.resends_after_ack += other.resends_after_ack;
        self.concurrent_sends += other.concurrent_sends;
        self.duplicate_answers += other.duplicate_answers;
        self.batches += other.batches;
        self.failovers += other.failovers;
        self.unexpected.extend(other.unexpected);
        self.valid_drops.extend(other.valid_drops);
        self.post_samples.extend(other.post_samples);
    }

    pub fn acked(&self) -> usize {
        self.activities
            .iter()
            .filter(|activity| activity.outcome == Outcome::Acked)
            .count()
    }
}
