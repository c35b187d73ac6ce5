//! Invalid-request generation: one random request the API must refuse (bad bodies by the schema or
//! the storage rules, bad keys, bad or missing credentials, wrong media type, method or path, bad
//! batches), each with the status the README documents for it.

use rand::rngs::StdRng;
use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};

use crate::env::{Tenant, MAX_BODY_BYTES, TENANTS};
use crate::workload::Features;

/// An invalid request and the status the README documents for it.
pub struct InvalidSpec {
    pub case: String,
    pub method: Method,
    pub path: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub expected: u16,
}

fn valid_body(rng: &mut StdRng) -> Value {
    json!({
        "actorId": format!("user-{}", rng.random_range(1..100)),
        "actorName": "Mallory",
        "type": "comment.created",
        "entityId": "doc-1",
        "metadata": {"text": "hello", "nested": {"n": 1}},
    })
}

pub fn invalid_request(
    rng: &mut StdRng,
    tenant: Tenant,
    key: &str,
    features: Features,
) -> InvalidSpec {
    let auth = format!("Bearer {}", tenant.key);
    let json_headers = |extra: &[(&'static str, String)]| {
        let mut headers = vec![
            ("Authorization", auth.clone()),
            ("Content-Type", "application/json".to_owned()),
            ("X-Idempotency-Key", key.to_owned()),
        ];
        for (name, value) in extra {
            headers.retain(|(existing, _)| existing != name);
            headers.push((*name, value.clone()));
        }
        headers
    };
    let body = serde_json::to_vec(&valid_body(rng)).expect("serializes");
    let spec = |case: &str, headers, body, expected| InvalidSpec {
        case: case.to_owned(),
        method: Method::POST,
        path: "/activities",
        headers,
        body,
        expected,
    };
    let roll = rng.random_range(0..30);
    match roll {
        0..=9 => {
            let (case, body) = {
                let base = valid_body(rng);
                mutate(rng, base)
            };
            spec(&case, json_headers(&[]), body, 400)
        }
        10 | 11 => {
            let length = rng.random_range(1..200);
            let garbage: Vec<u8> = (0..length).map(|_| rng.random()).collect();
            spec("garbage-bytes", json_headers(&[]), garbage, 400)
        }
        12 => spec(
            "truncated-json",
            json_headers(&[]),
            body[..body.len() / 2].to_vec(),
            400,
        ),
        13 => spec("empty-body", json_headers(&[]), Vec::new(), 400),
        14 => spec("not-an-object", json_headers(&[]), b"[1,2,3]".to_vec(), 400),
        15 => spec(
            "bad-idempotency-key",
            json_headers(&[("X-Idempotency-Key", "has space!".to_owned())]),
            body,
            400,
        ),
        16 => spec(
            "too-long-idempotency-key",
            json_headers(&[("X-Idempotency-Key", "k".repeat(129))]),
            body,
            400,
        ),
        17 => {
            let mut headers = json_headers(&[]);
            headers.retain(|(name, _)| *name != "Authorization");
            spec("no-api-key", headers, body, 401)
        }
        18 => spec(
            "unknown-api-key",
            json_headers(&[("Authorization", "Bearer not-a-key".to_owned())]),
            body,
            401,
        ),
        19 => spec(
            "malformed-authorization",
            json_headers(&[("Authorization", format!("Basic {}", tenant.key))]),
            body,
            401,
        ),
        20 => {
            let other = TENANTS
                .iter()
                .find(|other| other.id != tenant.id)
                .expect("several tenants");
            spec(
                "tenant-mismatch",
                json_headers(&[("X-Tenant-Id", other.id.to_owned())]),
                body,
                403,
            )
        }
        21 => {
            let mut large = valid_body(rng);
            large["metadata"]["text"] = json!("x".repeat(MAX_BODY_BYTES + 4096));
            spec(
                "too-large",
                json_headers(&[]),
                serde_json::to_vec(&large).expect("serializes"),
                413,
            )
        }
        22 => spec(
            "text-plain",
            json_headers(&[("Content-Type", "text/plain".to_owned())]),
            body,
            415,
        ),
        23 => {
            let mut headers = json_headers(&[]);
            headers.retain(|(name, _)| *name != "Content-Type");
            spec("no-content-type", headers, body, 415)
        }
        24 => InvalidSpec {
            method: if rng.random_bool(0.5) {
                Method::PUT
            } else {
                Method::DELETE
            },
            ..spec("wrong-method", json_headers(&[]), body, 405)
        },
        25 => InvalidSpec {
            path: "/activity",
            ..spec("unknown-path", json_headers(&[]), body, 404)
        },
        26..=29 if features.batch => {
            let (case, payload) = match roll {
                26 => ("batch-empty", json!({"activities": []})),
                27 => ("batch-not-array", json!({"activities": "x"})),
                28 => (
                    "batch-unknown-field",
                    json!({"activities": [valid_body(rng)], "extra": 1}),
                ),
                _ => {
                    let (_, broken) = {
                        let base = valid_body(rng);
                        mutate(rng, base)
                    };
                    let broken: Value = serde_json::from_slice(&broken).unwrap_or(json!("x"));
                    (
                        "batch-all-invalid",
                        json!({"activities": [broken, {"actorId": 1}]}),
                    )
                }
            };
            InvalidSpec {
                path: "/activities/batch",
                ..spec(
                    case,
                    json_headers(&[]),
                    serde_json::to_vec(&payload).expect("serializes"),
                    400,
                )
            }
        }
        _ => {
            let (case, body) = {
                let base = valid_body(rng);
                mutate(rng, base)
            };
            spec(&case, json_headers(&[]), body, 400)
        }
    }
}

/// One random change that makes a valid activity invalid, by the schema or the storage rules.
fn mutate(rng: &mut StdRng, mut body: Value) -> (String, Vec<u8>) {
    let fields = ["actorId", "actorName", "type"];
    let field = fields[rng.random_range(0..fields.len())];
    let wrong_types = [
        json!(1),
        json!(true),
        json!([]),
        json!({}),
        Value::Null,
        json!(1.5),
    ];
    let nest = |rng: &mut StdRng, bad_key: String| {
        let mut inner = json!({ bad_key: 1 });
        for _ in 0..rng.random_range(0..4) {
            inner = json!({ "level": inner });
        }
        inner
    };
    let case = match rng.random_range(0..15) {
        0 => {
            body.as_object_mut().expect("object").remove(field);
            format!("missing-{field}")
        }
        1 => {
            body[field] = wrong_types[rng.random_range(0..wrong_types.len())].clone();
            format!("wrong-type-{field}")
        }
        2 => {
            let long = "t".repeat(65);
            let bad = ["", " x", "x y", "-x", "é", ".x", long.as_str()];
            body["type"] = json!(bad[rng.random_range(0..bad.len())]);
            "bad-type".to_owned()
        }
        3 => {
            body["extra"] = json!(1);
            "unknown-field".to_owned()
        }
        4 => {
            body["metadata"] = nest(rng, "$set".to_owned());
            "dollar-key".to_owned()
        }
        5 => {
            body["metadata"] = nest(rng, "a.b".to_owned());
            "dotted-key".to_owned()
        }
        6 => {
            body["metadata"] = nest(rng, "a\u{0}b".to_owned());
            "nul-key".to_owned()
        }
        7 => {
            body["actorName"] = json!("bad\u{0}name");
            "nul-string".to_owned()
        }
        8 => {
            let not_objects = [json!([1, 2]), json!("text"), json!(7)];
            body["metadata"] = not_objects[rng.random_range(0..not_objects.len())].clone();
            "metadata-not-object".to_owned()
        }
        9 => {
            let mut deep = json!(1);
            for _ in 0..rng.random_range(9..30) {
                deep = json!({ "d": deep });
            }
            body["metadata"] = deep;
            "metadata-too-deep".to_owned()
        }
        10 => {
            body["actorId"] = json!("a".repeat(rng.random_range(129..400)));
            "too-long".to_owned()
        }
        11 => {
            body["metadata"] = json!({"n": u64::MAX});
            "huge-integer".to_owned()
        }
        12 => {
            body[field] = json!("");
            format!("empty-{field}")
        }
        13 => {
            body["metadata"] = json!({"matrix": [[1, 2], [3]]});
            "nested-array".to_owned()
        }
        _ => {
            body["metadata"] = json!({"blob": "y".repeat(20_000)});
            "metadata-too-large".to_owned()
        }
    };
    (case, serde_json::to_vec(&body).expect("serializes"))
}
