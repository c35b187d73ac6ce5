//! The machine's ceilings, measured in the same run as our figures:
//! - Kafka: `org.apache.kafka.tools.ProducerPerformance` (the Java client, via scripts/kafka-class.sh)
//!   into the same broker, with our envelopes as payloads, keyed like ours (one key per tenant), and
//!   our producer settings (acks=all, idempotence, compression, linger);
//! - store: `insert_many` (unordered) of the same documents the consumer writes, straight through the
//!   MongoDB driver, into a fresh collection with the same indexes, in batches of the consumer's size.

use std::path::Path;
use std::time::{Duration, Instant};

use activity_pipeline::config::Settings;
use activity_pipeline::domain::{ActivityEnvelope, PayloadFingerprint};
use activity_pipeline::store::{ActivityRepository, StoredActivity};
use anyhow::Context as _;
use futures::StreamExt as _;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KafkaCeiling {
    pub records: u64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    pub avg_latency_ms: f64,
    pub p99_latency_ms: f64,
    /// The producer properties given to ProducerPerformance.
    pub producer_props: Vec<String>,
}

/// Writes the payload file: one encoded envelope per line (JSON has no raw newlines).
pub fn write_payload_file(path: &Path, envelopes: &[ActivityEnvelope]) -> anyhow::Result<()> {
    let mut text = Vec::new();
    for envelope in envelopes {
        let encoded = envelope.encode();
        anyhow::ensure!(!encoded.contains(&b'\n'), "an envelope holds a newline");
        text.extend_from_slice(&encoded);
        text.push(b'\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {path:?}"))
}

/// The producer properties of ours that ProducerPerformance gets too.
pub fn producer_props(settings: &Settings) -> Vec<String> {
    vec![
        "acks=all".to_owned(),
        "enable.idempotence=true".to_owned(),
        format!(
            "compression.type={}",
            settings.kafka.compression.as_librdkafka()
        ),
        format!("linger.ms={}", settings.kafka.linger_ms),
    ]
}

/// Runs ProducerPerformance; `warmup` records are left out of the (steady-state) figures.
#[allow(clippy::too_many_arguments)]
pub async fn kafka(
    repo_root: &Path,
    brokers: &str,
    topic: &str,
    payload_file: &Path,
    records: u64,
    warmup: u64,
    keys: usize,
    props: Vec<String>,
    log: &Path,
) -> anyhow::Result<KafkaCeiling> {
    let script = repo_root.join("scripts/kafka-class.sh");
    let mut command = tokio::process::Command::new(&script);
    command
        .arg("org.apache.kafka.tools.ProducerPerformance")
        .args(["--bootstrap-server", brokers, "--topic", topic])
        .args(["--num-records", &records.to_string()])
        .args(["--warmup-records", &warmup.to_string()])
        .arg("--payload-file")
        .arg(payload_file)
        .args(["--throughput", "-1"])
        .args(["--key-distribution", "range"])
        .args(["--record-key-range", &keys.to_string()])
        .arg("--command-property")
        .args(&props)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .context("ProducerPerformance did not finish within 300 s")?
        .with_context(|| format!("running {script:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    std::fs::write(log, format!("{stdout}\n--- stderr ---\n{stderr}"))?;
    anyhow::ensure!(
        output.status.success(),
        "ProducerPerformance failed ({}): {}",
        output.status,
        stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
    );
    let mut ceiling = parse_producer_performance(&stdout)
        .with_context(|| format!("no summary line in ProducerPerformance's output ({log:?})"))?;
    ceiling.producer_props = props;
    Ok(ceiling)
}

/// The steady-state summary line when there is one (`--warmup-records`), else the final one:
/// `N records sent, R records/sec (M MB/sec), A ms avg latency, X ms max latency, P ms 50th, ...`.
pub fn parse_producer_performance(stdout: &str) -> Option<KafkaCeiling> {
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.contains("steady state records sent") && line.contains("50th"))
        .or_else(|| {
            stdout
                .lines()
                .rev()
                .find(|line| line.contains("records sent") && line.contains("50th"))
        })?;
    let number_before = |marker: &str| -> Option<f64> {
        let at = line.find(marker)?;
        line[..at]
            .trim_end()
            .rsplit([' ', '('])
            .next()?
            .parse()
            .ok()
    };
    Some(KafkaCeiling {
        records: line.split_whitespace().next()?.parse().ok()?,
        records_per_s: number_before("records/sec")?,
        mb_per_s: number_before("MB/sec")?,
        avg_latency_ms: number_before("ms avg latency")?,
        p99_latency_ms: number_before("ms 99th")?,
        producer_props: Vec::new(),
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreCeiling {
    pub documents: usize,
    pub batch_size: usize,
    /// The best of the concurrencies tried: how many insert_many calls were in flight at once.
    pub concurrency: usize,
    pub documents_per_s: f64,
    /// Every concurrency tried, with its rate.
    pub tried: Vec<(usize, f64)>,
    /// CPU used by each observed process during the best run, in cores.
    #[serde(default)]
    pub cpu_cores: Vec<(String, f64)>,
}

/// Inserts the documents of `envelopes` with each of `concurrencies`, each into a fresh database
/// (`<database>_c<k>`, dropped afterwards), and reports the best.
pub async fn store(
    settings: &Settings,
    database: &str,
    envelopes: &[ActivityEnvelope],
    batch_size: usize,
    concurrencies: &[usize],
    observed: &[(String, u32)],
) -> anyhow::Result<StoreCeiling> {
    let client = mongodb::Client::with_uri_str(settings.mongo.uri.expose_secret()).await?;
    let mut tried = Vec::new();
    for &concurrency in concurrencies {
        let name = format!("{database}_c{concurrency}");
        let mut mongo = settings.mongo.clone();
        mongo.database = name.clone();
        // The same indexes as the consumer's, made by the same code.
        let repository = ActivityRepository::connect(&mongo).await?;
        repository
            .ensure_indexes()
            .await
            .map_err(|outage| anyhow::anyhow!("{outage}"))?;
        let now = chrono::Utc::now();
        let documents: Vec<StoredActivity> = envelopes
            .iter()
            .map(|envelope| {
                let fingerprint = PayloadFingerprint::of(&envelope.activity);
                StoredActivity::from_envelope(envelope, &fingerprint, now)
            })
            .collect::<Result<_, _>>()
            .map_err(|error| anyhow::anyhow!(error))?;
        let collection = client
            .database(&name)
            .collection::<StoredActivity>(&settings.mongo.collection);
        let cpu_before = crate::processes::cpu_of(observed);
        let started = Instant::now();
        let results: Vec<_> = futures::stream::iter(documents.chunks(batch_size))
            .map(|chunk| {
                let collection = collection.clone();
                async move { collection.insert_many(chunk).ordered(false).await }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let elapsed = started.elapsed();
        let cores = crate::processes::cores_since(observed, &cpu_before, elapsed);
        for result in results {
            result.context("raw insert_many")?;
        }
        let stored = collection.count_documents(mongodb::bson::doc! {}).await?;
        anyhow::ensure!(
            stored as usize == documents.len(),
            "store ceiling: {stored} of {} documents stored",
            documents.len()
        );
        client.database(&name).drop().await?;
        tried.push((
            concurrency,
            documents.len() as f64 / elapsed.as_secs_f64(),
            cores,
        ));
    }
    let (concurrency, documents_per_s, cpu_cores) = tried
        .iter()
        .cloned()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .context("no concurrency tried")?;
    Ok(StoreCeiling {
        documents: envelopes.len(),
        batch_size,
        concurrency,
        documents_per_s,
        tried: tried.into_iter().map(|(c, rate, _)| (c, rate)).collect(),
        cpu_cores,
    })
}

pub mod checks {
    use super::*;

    pub fn producer_performance_summary_is_parsed() {
        let stdout = "88347 records sent, 17665.9 records/sec (5.56 MB/sec), 393.5 ms avg latency, 1510.0 ms max latency.\n\
            In steady state.\n\
            1000000 records sent, 71746.305065 records/sec (22.56 MB/sec), 408.15 ms avg latency, 1850.00 ms max latency, 200 ms 50th, 1498 ms 95th, 1682 ms 99th, 1838 ms 99.9th.\n\
            800000 steady state records sent, 104098.893949 records/sec (32.74 MB/sec), 434.75 ms avg latency, 1850.00 ms max latency, 190 ms 50th, 1533 ms 95th, 1704 ms 99th, 1841 ms 99.9th.\n";
        let ceiling = parse_producer_performance(stdout).unwrap();
        assert_eq!(ceiling.records, 800000);
        assert!((ceiling.records_per_s - 104098.893949).abs() < 1e-6);
        assert!((ceiling.mb_per_s - 32.74).abs() < 1e-9);
        assert!((ceiling.avg_latency_ms - 434.75).abs() < 1e-9);
        assert!((ceiling.p99_latency_ms - 1704.0).abs() < 1e-9);
        let without_warmup = stdout.lines().take(3).collect::<Vec<_>>().join("\n");
        let ceiling = parse_producer_performance(&without_warmup).unwrap();
        assert_eq!(ceiling.records, 1000000);
        assert!(parse_producer_performance("nothing here").is_none());
    }
}
