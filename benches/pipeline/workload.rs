//! What the bench sends: its tenants (and their API keys), activity bodies of the agreed size, the
//! HTTP requests that carry them, and the envelopes the Kafka and store ceilings use.
//!
//! Every figure of a run uses the same activities: the HTTP bodies, the envelopes pre-filled for the
//! drain, the documents of the store ceiling and the payload file of ProducerPerformance are all made
//! from `activity_body`, so record sizes and compressibility match.

use std::fmt::Write as _;

use activity_pipeline::domain::{ActivityEnvelope, ActivityValidator, IdempotencyKey, TenantId};
use sha2::{Digest, Sha256};

/// Distinct activity bodies cycled through; enough variety that compression sees realistic data.
pub const BODY_VARIANTS: usize = 64;

const TYPES: [&str; 6] = [
    "comment.created",
    "document.viewed",
    "document.edited",
    "task.completed",
    "user.login",
    "file.uploaded",
];
const NAMES: [&str; 8] = [
    "Alice Martin",
    "Bob Okafor",
    "Chen Wei",
    "Dana Kowalski",
    "Emil Sandoval",
    "Fatima Haddad",
    "Grace Lindqvist",
    "Hiro Tanaka",
];
const TEXTS: [&str; 4] = [
    "Looks good to me, merging after CI passes",
    "Can we move this to next sprint?",
    "Updated the figures in section 3",
    "Please review the attached draft",
];

/// The bench's tenants: `bench00`, `bench01`, ... with API key `bench-key-<n>`. Requests are spread
/// over them (one tenant per connection) so that the tenant-keyed topic uses its partitions.
#[derive(Debug, Clone)]
pub struct Tenants {
    pub ids: Vec<TenantId>,
    pub api_keys: Vec<String>,
}

impl Tenants {
    pub fn new(count: usize) -> Tenants {
        let ids = (0..count)
            .map(|n| TenantId::parse(&format!("bench{n:02}")).expect("valid tenant id"))
            .collect();
        let api_keys = (0..count).map(|n| format!("bench-key-{n:02}")).collect();
        Tenants { ids, api_keys }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The TOML that configures these tenants for the roles (digests only, like any deployment).
    pub fn config_toml(&self) -> String {
        let mut toml = String::from("# Written by the pipeline bench: its tenants.\n");
        for (id, key) in self.ids.iter().zip(&self.api_keys) {
            let digest = hex::encode(Sha256::digest(key.as_bytes()));
            let _ = writeln!(toml, "[tenants.{id}]\napi_key_sha256 = \"{digest}\"\n");
        }
        toml
    }
}

/// Activity body number `n` (of `BODY_VARIANTS`): ~190 bytes of JSON, which makes a ~300-byte
/// envelope once the API adds schema, tenant, key and time.
pub fn activity_body(n: usize) -> String {
    let n = n % BODY_VARIANTS;
    serde_json::json!({
        "actorId": format!("user-{:06}", 1000 + n * 37),
        "actorName": NAMES[n % NAMES.len()],
        "type": TYPES[n % TYPES.len()],
        "entityId": format!("doc-{:06}", 4000 + n * 101),
        "metadata": {
            "text": TEXTS[n % TEXTS.len()],
            "source": if n % 3 == 0 { "mobile" } else { "web" },
            "revision": n * 7 + 1,
        }
    })
    .to_string()
}

/// Distinct actors and entities of the read bench's seeded activities: many, as in a real tenant,
/// so filters by actor or entity are selective.
pub const SEEDED_ACTORS: usize = 5_000;
pub const SEEDED_ENTITIES: usize = 50_000;

/// Seeded activity number `n` (the read bench): one of the six types, one of `SEEDED_ACTORS` actors
/// and `SEEDED_ENTITIES` entities, spread by a hash of `n` rather than in lockstep, and the metadata
/// shape and size of `activity_body`.
pub fn seeded_activity_body(n: usize) -> String {
    let mixed = spread(n as u64);
    let actor = (mixed % SEEDED_ACTORS as u64) as usize;
    serde_json::json!({
        "actorId": format!("user-{actor:06}"),
        "actorName": NAMES[actor % NAMES.len()],
        "type": TYPES[((mixed >> 20) % TYPES.len() as u64) as usize],
        "entityId": format!("doc-{:06}", (mixed >> 28) % SEEDED_ENTITIES as u64),
        "metadata": {
            "text": TEXTS[((mixed >> 44) % TEXTS.len() as u64) as usize],
            "source": if mixed >> 50 & 1 == 0 { "mobile" } else { "web" },
            "revision": n % 1000 + 1,
        }
    })
    .to_string()
}

/// The activity types the bench uses (the read bench filters by them).
pub fn activity_types() -> &'static [&'static str] {
    &TYPES
}

/// Envelopes of seeded activities `range` of `tenant`, keyed `<prefix>-<n>`, as the API makes them.
pub fn seeded_envelopes(
    tenant: &TenantId,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Vec<ActivityEnvelope> {
    let validator = ActivityValidator::new(16 * 1024, 8);
    range
        .map(|n| {
            let activity = validator
                .parse_body(seeded_activity_body(n).as_bytes())
                .expect("seeded bodies are valid");
            let key = IdempotencyKey::parse(&seeded_key(prefix, n)).expect("valid key");
            ActivityEnvelope::new(tenant.clone(), key, activity)
        })
        .collect()
}

/// The idempotency key of seeded activity `n`.
pub fn seeded_key(prefix: &str, n: usize) -> String {
    format!("{prefix}-{n}")
}

/// splitmix64's finaliser: consecutive numbers to well-spread bits.
fn spread(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Body of `POST /activities/batch` with `size` activities (no per-item keys: the server derives
/// `<X-Idempotency-Key>:<index>`).
pub fn batch_body(first: usize, size: usize) -> String {
    let items: Vec<String> = (first..first + size).map(activity_body).collect();
    format!("{{\"activities\":[{}]}}", items.join(","))
}

/// An HTTP/1.1 keep-alive POST, ready to write.
pub fn post_request(path: &str, api_key: &str, idempotency_key: &str, body: &[u8]) -> Vec<u8> {
    let mut request = Vec::with_capacity(body.len() + 220);
    let _ = write!(
        VecWriter(&mut request),
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api_key}\r\n\
         Content-Type: application/json\r\nX-Idempotency-Key: {idempotency_key}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    request.extend_from_slice(body);
    request
}

/// An HTTP/1.1 keep-alive GET (the diagnostic `/healthz` load).
pub fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
}

/// An HTTP/1.1 keep-alive GET as a tenant (the read bench), with extra headers.
pub fn tenant_get_request(path: &str, api_key: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api_key}\r\n");
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// `n` envelopes as the API would make them, spread over the tenants, with keys `<prefix>-<i>`.
pub fn envelopes(tenants: &Tenants, prefix: &str, n: usize) -> Vec<ActivityEnvelope> {
    let validator = ActivityValidator::new(16 * 1024, 8);
    let activities: Vec<_> = (0..BODY_VARIANTS)
        .map(|i| {
            validator
                .parse_body(activity_body(i).as_bytes())
                .expect("bench bodies are valid")
        })
        .collect();
    (0..n)
        .map(|i| {
            let key = IdempotencyKey::parse(&format!("{prefix}-{i}")).expect("valid key");
            ActivityEnvelope::new(
                tenants.ids[i % tenants.len()].clone(),
                key,
                activities[i % BODY_VARIANTS].clone(),
            )
        })
        .collect()
}

/// Mean encoded envelope size, in bytes.
pub fn mean_envelope_bytes(envelopes: &[ActivityEnvelope]) -> f64 {
    if envelopes.is_empty() {
        return 0.0;
    }
    let total: usize = envelopes.iter().map(|e| e.encode().len()).sum();
    total as f64 / envelopes.len() as f64
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

pub mod checks {
    use super::*;

    pub fn bodies_are_valid_and_sized() {
        let validator = ActivityValidator::new(16 * 1024, 8);
        for n in 0..BODY_VARIANTS {
            let body = activity_body(n);
            validator.parse_body(body.as_bytes()).expect("valid body");
            assert!((150..260).contains(&body.len()), "body {n}: {}", body.len());
        }
        let tenants = Tenants::new(4);
        let envelopes = envelopes(&tenants, "r1-drain", 200);
        let mean = mean_envelope_bytes(&envelopes);
        assert!((260.0..360.0).contains(&mean), "mean envelope {mean}");
        assert_eq!(envelopes[5].tenant_id.as_str(), "bench01");
        let batch: serde_json::Value = serde_json::from_str(&batch_body(0, 100)).unwrap();
        assert_eq!(batch["activities"].as_array().unwrap().len(), 100);
    }

    pub fn requests_are_well_formed() {
        let request = post_request("/activities", "k", "key-1", b"{}");
        let text = String::from_utf8(request).unwrap();
        assert!(text.starts_with("POST /activities HTTP/1.1\r\n"));
        assert!(text.contains("\r\nContent-Length: 2\r\n\r\n{}"));
        assert!(text.contains("X-Idempotency-Key: key-1\r\n"));
        let text = String::from_utf8(tenant_get_request(
            "/activities/stream",
            "k",
            &[("Last-Event-ID", "abc")],
        ))
        .unwrap();
        assert_eq!(
            text,
            "GET /activities/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\n\
             Last-Event-ID: abc\r\n\r\n"
        );
        let toml = Tenants::new(2).config_toml();
        assert!(toml.contains("[tenants.bench01]"));
        // sha256("bench-key-00")
        assert!(toml.contains(&hex::encode(Sha256::digest(b"bench-key-00"))));
    }

    /// The read bench's documents: valid, of the other phases' size, and varied (every type, many
    /// actors and entities), with keys that name their number.
    pub fn seeded_activities_are_varied() {
        let tenant = TenantId::parse("bench00").unwrap();
        let envelopes = seeded_envelopes(&tenant, "r1-rd-big", 0..3000);
        assert_eq!(envelopes[17].idempotency_key.as_str(), "r1-rd-big-17");
        let mean = mean_envelope_bytes(&envelopes);
        assert!((240.0..380.0).contains(&mean), "mean envelope {mean}");
        let distinct = |field: fn(&ActivityEnvelope) -> String| {
            envelopes
                .iter()
                .map(field)
                .collect::<std::collections::HashSet<_>>()
                .len()
        };
        assert_eq!(distinct(|e| e.activity.activity_type.clone()), TYPES.len());
        assert!(distinct(|e| e.activity.actor_id.clone()) > 1500);
        assert!(distinct(|e| e.activity.entity_id.clone().unwrap_or_default()) > 2500);
        // Each type holds roughly its share, so a type filter selects about a sixth.
        let logins = envelopes
            .iter()
            .filter(|e| e.activity.activity_type == "user.login")
            .count();
        assert!((350..650).contains(&logins), "{logins} of 3000");
    }
}
