//! Criterion benchmarks of the hot pure code, per activity: what the API does to a body
//! (`ActivityValidator::parse_body`, `parse_batch` of 100 items, `ActivityEnvelope::encode`) and what
//! the consumer does to a record (`ActivityEnvelope::decode`, `StoredActivity::from_envelope`,
//! `StoredActivity::to_json`, `PayloadFingerprint::of`).
//!
//! Validation is measured on both of its paths in one group, so they run side by side: the typed fast
//! path the API takes (`parse_body`, `parse_batch_100`) and the schema path it falls back to and is
//! proven equal to (`*_by_schema`: the body parsed into a `Value`, then the JSON Schema walk).
//!
//! `cargo bench --bench hot_paths` (or `make bench-micro`). The activity is the pipeline bench's
//! ~190-byte body, whose envelope is ~300 bytes.

use std::hint::black_box;

use activity_pipeline::domain::{
    parse_batch, parse_batch_by_schema, ActivityEnvelope, ActivityValidator, IdempotencyKey,
    PayloadFingerprint, TenantId,
};
use activity_pipeline::store::StoredActivity;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const BODY: &str = r#"{"actorId":"user-001037","actorName":"Bob Okafor","type":"document.viewed","entityId":"doc-004101","metadata":{"text":"Can we move this to next sprint?","source":"web","revision":8}}"#;

fn envelope(validator: &ActivityValidator) -> ActivityEnvelope {
    ActivityEnvelope::new(
        TenantId::parse("bench01").unwrap(),
        IdempotencyKey::parse("b181722abc-r1-current-smax-17-4242").unwrap(),
        validator.parse_body(BODY.as_bytes()).unwrap(),
    )
}

fn api(c: &mut Criterion) {
    let validator = ActivityValidator::new(16 * 1024, 8);
    let envelope = envelope(&validator);
    let mut group = c.benchmark_group("api");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_body", |b| {
        b.iter(|| validator.parse_body(black_box(BODY.as_bytes())).unwrap())
    });
    group.bench_function("parse_body_by_schema", |b| {
        b.iter(|| {
            validator
                .parse_body_by_schema(black_box(BODY.as_bytes()))
                .unwrap()
        })
    });
    group.bench_function("envelope_encode", |b| {
        b.iter(|| black_box(&envelope).encode())
    });
    // The definition the written envelope is held to (serde's derive), measured in the same run.
    group.bench_function("envelope_encode_by_serde", |b| {
        b.iter(|| {
            let mut bytes = Vec::with_capacity(512);
            black_box(&envelope).encode_into_by_serde(&mut bytes);
            bytes
        })
    });
    group.finish();

    // The pipeline bench's batch body: 100 bare activities under one batch key.
    let batch = format!("{{\"activities\":[{}]}}", vec![BODY; 100].join(","));
    let batch_key = IdempotencyKey::parse("b181722abc-r1-batch-17").unwrap();
    let mut group = c.benchmark_group("api_batch");
    group.throughput(Throughput::Elements(100));
    group.bench_function("parse_batch_100", |b| {
        b.iter(|| {
            let items = parse_batch(
                black_box(batch.as_bytes()),
                Some(&batch_key),
                &validator,
                1000,
            )
            .unwrap();
            assert!(items.iter().all(|item| item.activity.is_ok()));
            items
        })
    });
    group.bench_function("parse_batch_100_by_schema", |b| {
        b.iter(|| {
            let items = parse_batch_by_schema(
                black_box(batch.as_bytes()),
                Some(&batch_key),
                &validator,
                1000,
            )
            .unwrap();
            assert!(items.iter().all(|item| item.activity.is_ok()));
            items
        })
    });
    group.finish();
}

fn consumer(c: &mut Criterion) {
    let validator = ActivityValidator::new(16 * 1024, 8);
    let envelope = envelope(&validator);
    let encoded = envelope.encode();
    let now = chrono::Utc::now();
    let fingerprint = PayloadFingerprint::of(&envelope.activity);
    let stored = StoredActivity::from_envelope(&envelope, &fingerprint, now).unwrap();
    let mut group = c.benchmark_group("consumer");
    group.throughput(Throughput::Elements(1));
    group.bench_function("envelope_decode", |b| {
        b.iter(|| ActivityEnvelope::decode(black_box(&encoded), &validator).unwrap())
    });
    group.bench_function("stored_from_envelope", |b| {
        b.iter(|| StoredActivity::from_envelope(black_box(&envelope), &fingerprint, now).unwrap())
    });
    // Computed once per activity by the API and once by the consumer (idempotency conflicts).
    group.bench_function("payload_fingerprint", |b| {
        b.iter(|| PayloadFingerprint::of(black_box(&envelope.activity)))
    });
    group.bench_function("stored_to_json", |b| {
        b.iter(|| black_box(&stored).to_json().to_string())
    });
    group.finish();
}

criterion_group!(benches, api, consumer);
criterion_main!(benches);
