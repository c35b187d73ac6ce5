//! Poison: records written straight into the main topic, bypassing the API (another producer, a bug,
//! a replay), that the consumer must dead-letter with their error and never store. Each carries a
//! `faults-poison` header, kept in the DLQ, so the checker knows the injected ones from anything else.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::env::TOPIC;

pub const POISON_HEADER: &str = "faults-poison";

/// One kind of poison, and a word its DLQ error must contain.
struct Recipe {
    kind: &'static str,
    error_contains: &'static str,
    value: fn(&str) -> Option<Vec<u8>>,
}

fn envelope(key: &str, activity: Value, extra: Option<(&str, Value)>) -> Vec<u8> {
    let mut envelope = json!({
        "schema": "activity.v1",
        "tenantId": "acme",
        "idempotencyKey": key,
        "enqueuedAt": "2026-01-01T00:00:00Z",
        "activity": activity,
    });
    if let Some((field, value)) = extra {
        envelope[field] = value;
    }
    serde_json::to_vec(&envelope).expect("serializes")
}

const RECIPES: &[Recipe] = &[
    Recipe {
        kind: "not-json",
        error_contains: "not a valid envelope",
        value: |_| Some(b"{not json".to_vec()),
    },
    Recipe {
        kind: "no-value",
        error_contains: "no value",
        value: |_| None,
    },
    Recipe {
        kind: "unknown-schema",
        error_contains: "schema",
        value: |key| {
            Some(envelope(
                key,
                json!({"actorId": "u", "actorName": "U", "type": "t"}),
                Some(("schema", json!("activity.v9"))),
            ))
        },
    },
    Recipe {
        kind: "dollar-key",
        error_contains: "metadata",
        value: |key| {
            Some(envelope(
                key,
                json!({"actorId": "u", "actorName": "U", "type": "t", "metadata": {"$set": {"admin": true}}}),
                None,
            ))
        },
    },
    Recipe {
        kind: "dotted-key",
        error_contains: "metadata",
        value: |key| {
            Some(envelope(
                key,
                json!({"actorId": "u", "actorName": "U", "type": "t", "metadata": {"a.b": 1}}),
                None,
            ))
        },
    },
    Recipe {
        kind: "missing-field",
        error_contains: "type",
        value: |key| {
            Some(envelope(
                key,
                json!({"actorId": "u", "actorName": "U"}),
                None,
            ))
        },
    },
    Recipe {
        kind: "huge-integer",
        error_contains: "metadata",
        value: |key| {
            Some(envelope(
                key,
                json!({"actorId": "u", "actorName": "U", "type": "t", "metadata": {"n": u64::MAX}}),
                None,
            ))
        },
    },
    Recipe {
        kind: "bad-tenant",
        error_contains: "not a valid envelope",
        value: |key| {
            Some(envelope(
                key,
                json!({"actorId": "u", "actorName": "U", "type": "t"}),
                Some(("tenantId", json!("Not A Tenant"))),
            ))
        },
    },
    Recipe {
        kind: "unknown-field",
        error_contains: "not a valid envelope",
        value: |key| {
            Some(envelope(
                key,
                json!({"actorId": "u", "actorName": "U", "type": "t"}),
                Some(("extra", json!(true))),
            ))
        },
    },
];

/// One poison record the suite tried to write.
#[derive(Debug, Clone)]
pub struct InjectedPoison {
    pub id: String,
    pub kind: &'static str,
    pub error_contains: &'static str,
    /// The broker acknowledged it (it must be in the DLQ). An unacknowledged one may be there.
    pub acknowledged: bool,
    pub at: f64,
}

/// Writes one poison record every `every` (seeded jitter) until `stop`, each kind in turn.
pub async fn inject(
    brokers: String,
    seed: u64,
    every: Duration,
    clock: Clock,
    stop: CancellationToken,
) -> anyhow::Result<Vec<InjectedPoison>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.timeout.ms", "10000")
        .set("log_level", "3")
        .create()?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0090_150A);
    let mut injected = Vec::new();
    let mut next = 0usize;
    loop {
        let jitter = rng.random_range(0.5..1.5);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every.mul_f64(jitter)) => {}
        }
        let recipe = &RECIPES[next % RECIPES.len()];
        next += 1;
        let id = format!("poison-{next}");
        let value = (recipe.value)(&id);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "idempotency-key",
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: POISON_HEADER,
                value: Some(id.as_str()),
            });
        let mut record = FutureRecord::<str, [u8]>::to(TOPIC)
            .key("acme")
            .headers(headers);
        if let Some(value) = &value {
            record = record.payload(value.as_slice());
        }
        let at = clock.secs();
        let acknowledged = producer.send(record, Duration::from_secs(1)).await.is_ok();
        injected.push(InjectedPoison {
            id,
            kind: recipe.kind,
            error_contains: recipe.error_contains,
            acknowledged,
            at,
        });
    }
    Ok(injected)
}
