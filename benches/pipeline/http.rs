//! A lean HTTP/1.1 load generator: keep-alive connections, one request in flight per connection,
//! requests written as prepared bytes and answers parsed just enough (status, Content-Length). On 2
//! cores shared with the server and the broker, a general-purpose client would spend the CPU the
//! server needs; this one costs two syscalls and a header scan per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::latency::{self, Percentiles};
use crate::processes::{cores_since, cpu_of, CpuSample};

/// One answer: the status and the body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A keep-alive connection.
pub struct Connection {
    address: SocketAddr,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Connection {
    pub fn new(address: SocketAddr) -> Connection {
        Connection {
            address,
            stream: None,
            buffer: Vec::with_capacity(16 * 1024),
        }
    }

    /// Writes `request` and reads the whole answer, (re)connecting first when needed.
    pub async fn exchange(&mut self, request: &[u8]) -> std::io::Result<Answer> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.address).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let result = self.exchange_on_stream(request).await;
        match &result {
            Ok(_) => {}
            Err(_) => self.stream = None,
        }
        result
    }

    async fn exchange_on_stream(&mut self, request: &[u8]) -> std::io::Result<Answer> {
        let stream = self.stream.as_mut().expect("connected");
        stream.write_all(request).await?;
        self.buffer.clear();
        let head = loop {
            if let Some(head) = parse_head(&self.buffer)? {
                break head;
            }
            read_more(stream, &mut self.buffer).await?;
        };
        let total = head.header_len + head.content_length;
        while self.buffer.len() < total {
            read_more(stream, &mut self.buffer).await?;
        }
        let body = self.buffer[head.header_len..total].to_vec();
        if head.close {
            self.stream = None;
        }
        Ok(Answer {
            status: head.status,
            body,
        })
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<()> {
    if buffer.capacity() - buffer.len() < 4096 {
        buffer.reserve(16 * 1024);
    }
    let read = stream.read_buf(buffer).await?;
    if read == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    Ok(())
}

/// The parts of a response head the generator needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub header_len: usize,
    pub content_length: usize,
    pub chunked: bool,
    pub close: bool,
}

/// Parses a response head once `buffer` holds all of it; `Ok(None)` until then.
pub fn parse_head(buffer: &[u8]) -> std::io::Result<Option<Head>> {
    let Some(end) = find(buffer, b"\r\n\r\n") else {
        return Ok(None);
    };
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let text = std::str::from_utf8(&buffer[..end]).map_err(|_| invalid("non-UTF-8 head"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let mut head = Head {
        status,
        header_len: end + 4,
        content_length: 0,
        chunked: false,
        close: false,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().map_err(|_| invalid("bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(Some(head))
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// How a load run paces its requests.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Pacing {
    /// Each connection sends as soon as the previous answer came: the maximum rate.
    Closed,
    /// A fixed total rate, in requests per second, on a schedule (latency from the intended time).
    Open { rate: f64 },
}

/// Makes request number `seq` of connection `connection`: its bytes and its idempotency key.
pub type RequestMaker = dyn Fn(usize, u64) -> (Vec<u8>, String) + Send + Sync;
/// Told of every accepted request (its key and when its answer arrived): the end-to-end probe.
pub type AcceptObserver = dyn Fn(&str, Instant) + Send + Sync;

pub struct LoadPlan {
    /// The API instances; connection k talks to `addresses[k % len]`, so clients spread evenly.
    pub addresses: Vec<SocketAddr>,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub pacing: Pacing,
    /// Activities per request (1, or the batch size).
    pub items_per_request: usize,
    pub make_request: Arc<RequestMaker>,
    pub on_accepted: Option<Arc<AcceptObserver>>,
    /// Processes whose CPU use over the window is reported (name, pid).
    pub observed: Vec<(String, u32)>,
}

/// What a load run measured (over the measurement window, after the warm-up).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LoadResult {
    pub pacing: String,
    pub target_rate: Option<f64>,
    pub connections: usize,
    pub duration_s: f64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    /// Status codes other than 202 (and 207 for batches), with counts.
    pub failures: Vec<(String, u64)>,
    pub items_per_request: usize,
    pub requests_per_s: f64,
    pub items_per_s: f64,
    /// Coordinated-omission corrected (see `latency`).
    pub latency: Percentiles,
    /// As recorded, before the closed-loop correction (equal to `latency` for open loop).
    pub latency_uncorrected: Percentiles,
    /// How busy the machine's cores were over the window (100 = all of them).
    pub cpu_busy_percent: Option<f64>,
    /// CPU used over the window by each observed process, in cores.
    pub cpu_cores: Vec<(String, f64)>,
}

struct ConnectionTally {
    histogram: Histogram<u64>,
    ok: u64,
    items: u64,
    failures: std::collections::BTreeMap<String, u64>,
}

/// Runs `plan`: warm-up, then the measurement window. Answers 202 (and 200) count as accepted (all
/// items); 207 counts the batch's `accepted` items; anything else is a failure.
pub async fn run(plan: LoadPlan) -> LoadResult {
    let plan = Arc::new(plan);
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let sampler = tokio::spawn(sample_cpu(plan.observed.clone(), measure_from, end));
    let mut tasks = Vec::with_capacity(plan.connections);
    for connection in 0..plan.connections {
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            drive(&plan, connection, start, measure_from, end).await
        }));
    }
    let mut histogram = latency::new_histogram();
    let (mut ok, mut items) = (0u64, 0u64);
    let mut failures = std::collections::BTreeMap::new();
    for task in tasks {
        let tally = task.await.expect("load task");
        histogram.add(&tally.histogram).expect("same bounds");
        ok += tally.ok;
        items += tally.items;
        for (status, count) in tally.failures {
            *failures.entry(status).or_insert(0) += count;
        }
    }
    let (cpu_busy_percent, cpu_cores) = sampler.await.expect("cpu sampler");
    let seconds = plan.duration.as_secs_f64();
    let failed: u64 = failures.values().sum();
    let requests_per_s = ok as f64 / seconds;
    let uncorrected = Percentiles::of(&histogram);
    let (pacing, target_rate, latency) = match plan.pacing {
        Pacing::Closed => {
            // Mean time a connection spends per request: the interval it "meant" to send at.
            let interval_us = if requests_per_s > 0.0 {
                (plan.connections as f64 / requests_per_s * 1e6) as u64
            } else {
                0
            };
            (
                "closed".to_owned(),
                None,
                Percentiles::of(&latency::corrected(&histogram, interval_us)),
            )
        }
        Pacing::Open { rate } => ("open".to_owned(), Some(rate), uncorrected),
    };
    LoadResult {
        pacing,
        target_rate,
        connections: plan.connections,
        duration_s: seconds,
        requests_ok: ok,
        requests_failed: failed,
        failures: failures.into_iter().collect(),
        items_per_request: plan.items_per_request,
        requests_per_s,
        items_per_s: items as f64 / seconds,
        latency,
        latency_uncorrected: uncorrected,
        cpu_busy_percent,
        cpu_cores,
    }
}

/// CPU use over [from, to]: the machine's busy percentage and each process's cores.
async fn sample_cpu(
    observed: Vec<(String, u32)>,
    from: Instant,
    to: Instant,
) -> (Option<f64>, Vec<(String, f64)>) {
    tokio::time::sleep_until(from.into()).await;
    let machine = CpuSample::now();
    let before = cpu_of(&observed);
    tokio::time::sleep_until(to.into()).await;
    let busy = machine.busy_percent_until(&CpuSample::now());
    (
        Some(busy),
        cores_since(&observed, &before, to.duration_since(from)),
    )
}

async fn drive(
    plan: &LoadPlan,
    connection: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> ConnectionTally {
    let mut tally = ConnectionTally {
        histogram: latency::new_histogram(),
        ok: 0,
        items: 0,
        failures: Default::default(),
    };
    let mut client = Connection::new(plan.addresses[connection % plan.addresses.len()]);
    // Open loop: connection k sends at start + k/rate + i * connections/rate.
    let schedule = match plan.pacing {
        Pacing::Closed => None,
        Pacing::Open { rate } => Some((
            start + Duration::from_secs_f64(connection as f64 / rate),
            Duration::from_secs_f64(plan.connections as f64 / rate),
        )),
    };
    if let Some((first, _)) = schedule {
        tokio::time::sleep_until(first.into()).await;
    } else {
        tokio::time::sleep_until(start.into()).await;
    }
    let mut seq: u64 = 0;
    loop {
        let intended = match schedule {
            None => Instant::now(),
            Some((first, interval)) => first + interval * seq as u32,
        };
        if intended >= end {
            break;
        }
        if schedule.is_some() && intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let (request, key) = (plan.make_request)(connection, seq);
        seq += 1;
        let sent = if schedule.is_some() {
            intended
        } else {
            Instant::now()
        };
        let outcome = client.exchange(&request).await;
        let answered = Instant::now();
        // Latency counts for every request meant for the window; throughput only for answers
        // that came within it.
        let measured = intended >= measure_from;
        let in_time = answered <= end;
        match outcome {
            // 200 only from the diagnostic GET /healthz load; /activities never answers it.
            Ok(answer) if matches!(answer.status, 200 | 202 | 207) => {
                let items = if answer.status != 207 {
                    plan.items_per_request as u64
                } else {
                    accepted_count(&answer.body)
                };
                if let Some(observer) = &plan.on_accepted {
                    observer(&key, answered);
                }
                if measured && in_time {
                    tally.ok += 1;
                    tally.items += items;
                }
                if measured {
                    latency::record(
                        &mut tally.histogram,
                        answered.duration_since(sent).as_micros() as u64,
                    );
                }
            }
            Ok(answer) => {
                if measured {
                    *tally.failures.entry(answer.status.to_string()).or_insert(0) += 1;
                }
                if answer.status == 404 {
                    break;
                }
            }
            Err(error) => {
                if measured {
                    *tally
                        .failures
                        .entry(format!("io: {}", error.kind()))
                        .or_insert(0) += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tally
}

/// `"accepted":N` of a batch answer (207: some items were not accepted).
pub fn accepted_count(body: &[u8]) -> u64 {
    let Some(at) = find(body, b"\"accepted\":") else {
        return 0;
    };
    body[at + 11..]
        .iter()
        .take_while(|byte| byte.is_ascii_digit())
        .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'))
}

/// Sends `request` (a `GET /activities/stream`) on a connection of its own and reads the response
/// head, within `timeout`: the head, the stream, and whatever of the body came with the head. The
/// caller reads the events (`ChunkedDecoder`, `sse_events`) or, on another status, the error body.
pub async fn open_event_stream(
    address: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> std::io::Result<(Head, TcpStream, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request).await?;
    let mut buffer = Vec::with_capacity(4096);
    loop {
        if let Some(head) = parse_head(&buffer)? {
            let rest = buffer[head.header_len..].to_vec();
            return Ok((head, stream, rest));
        }
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buffer))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no response head within {timeout:?}"),
                )
            })??;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
    }
}

/// Decodes a chunked body incrementally (the SSE stream): feed bytes, take out decoded data.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    pending: Vec<u8>,
    /// Bytes still to come in the current chunk, plus its trailing CRLF once it is done.
    remaining: usize,
    in_chunk: bool,
}

impl ChunkedDecoder {
    /// Appends `input`; returns the data decoded so far. `Err` on a malformed stream.
    pub fn feed(&mut self, input: &[u8]) -> Result<Vec<u8>, String> {
        self.pending.extend_from_slice(input);
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            if self.in_chunk {
                let available = self.pending.len() - at;
                if self.remaining > 0 {
                    let take = available.min(self.remaining);
                    out.extend_from_slice(&self.pending[at..at + take]);
                    at += take;
                    self.remaining -= take;
                    if self.remaining > 0 {
                        break;
                    }
                }
                if self.pending.len() - at < 2 {
                    break;
                }
                if &self.pending[at..at + 2] != b"\r\n" {
                    return Err("chunk not followed by CRLF".to_owned());
                }
                at += 2;
                self.in_chunk = false;
            } else {
                let Some(line_end) = find(&self.pending[at..], b"\r\n") else {
                    break;
                };
                let line = std::str::from_utf8(&self.pending[at..at + line_end])
                    .map_err(|_| "bad chunk size line".to_owned())?;
                let size_text = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_text, 16)
                    .map_err(|_| format!("bad chunk size {size_text:?}"))?;
                at += line_end + 2;
                if size == 0 {
                    return Err("stream ended".to_owned());
                }
                self.remaining = size;
                self.in_chunk = true;
            }
        }
        self.pending.drain(..at);
        Ok(out)
    }
}

/// Splits SSE text into events, returning the `data:` payload of each complete event; incomplete
/// text stays in `carry`.
pub fn sse_events(carry: &mut Vec<u8>, input: &[u8]) -> Vec<String> {
    carry.extend_from_slice(input);
    let mut events = Vec::new();
    while let Some(end) = find(carry, b"\n\n") {
        let block: Vec<u8> = carry.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&block);
        let data: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|data| data.strip_prefix(' ').unwrap_or(data))
            .collect();
        if !data.is_empty() {
            events.push(data.join("\n"));
        }
    }
    events
}

pub mod checks {
    use super::*;

    pub fn heads_are_parsed() {
        let raw = b"HTTP/1.1 202 Accepted\r\ncontent-length: 5\r\ncontent-type: application/json\r\n\r\nhello";
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(
            head,
            Head {
                status: 202,
                header_len: raw.len() - 5,
                content_length: 5,
                chunked: false,
                close: false
            }
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
            .unwrap()
            .is_none());
        let head = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(head.chunked && head.close);
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert_eq!(
            accepted_count(br#"{"success":false,"accepted":97,"x":1}"#),
            97
        );
        assert_eq!(accepted_count(b"{}"), 0);
    }

    pub fn chunked_sse_is_decoded_across_splits() {
        let text = "id: 1\ndata: {\"idempotencyKey\":\"a\"}\n\n: keep-alive\n\nid: 2\ndata: x\n\n";
        let mut stream = Vec::new();
        for piece in text.as_bytes().chunks(7) {
            stream.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            stream.extend_from_slice(piece);
            stream.extend_from_slice(b"\r\n");
        }
        // Feed one byte at a time: every split point must work.
        let mut decoder = ChunkedDecoder::default();
        let mut carry = Vec::new();
        let mut events = Vec::new();
        for byte in stream.iter() {
            let data = decoder.feed(std::slice::from_ref(byte)).unwrap();
            events.extend(sse_events(&mut carry, &data));
        }
        assert_eq!(
            events,
            vec!["{\"idempotencyKey\":\"a\"}".to_owned(), "x".to_owned()]
        );
        assert!(ChunkedDecoder::default().feed(b"zz\r\n").is_err());
        assert!(ChunkedDecoder::default().feed(b"0\r\n\r\n").is_err());
    }
}
