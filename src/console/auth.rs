//! Who is asking, and may they: operator tokens (configured digests, roles), login sessions kept in
//! Redis and shared by every console instance, and the CSRF token every POST must carry.
//!
//! A request authenticates with `Authorization: Bearer <operator token>` (scripts) or the session
//! cookie a login set (browsers). The operator directory holds only operators, so a tenant's API
//! key answers 401 like any unknown token.
//!
//! Sessions: the cookie holds a random 256-bit id; Redis (the settings tree's, through
//! `store::ConsoleSessionStore`) holds the session's record under the id's SHA-256, never the id,
//! with a TTL of `console.session_ttl_secs`. The record names the operator, its role at login, the
//! digest of the token it logged in with, the expiry and the session's CSRF token. So any console
//! instance of the same settings tree serves any session, a restart ends none, and a logout on one
//! instance ends the session on all of them at once. Each request re-checks the record against the
//! operator directory: an operator no longer configured, or configured with another token, is
//! refused (401); a demoted or promoted one acts with the role configured now. Each operator keeps
//! at most `console.max_sessions` sessions: a login past it ends that operator's sessions closest to
//! expiring (the oldest), so nobody's logins can grow Redis without bound. Redis not answering
//! within `console.read_timeout_ms` is a 503 for a cookie (never a 401: the session may be fine),
//! while bearer tokens need no Redis and keep working.
//!
//! CSRF, valid on every instance without a shared secret:
//! - A session's token is random, kept in its record: bound to that session, it dies with it.
//! - A bearer token's is derived from the token itself: SHA-256 of a label and the token. Every
//!   instance computes it from the request, with no Redis; it cannot be computed from the configured
//!   digest (SHA-256 of the token alone), only by whoever holds the token.
//!
//! A page embeds it in its forms; a script reads it from `GET /console/api/session` and sends it as
//! `X-CSRF-Token`.
//!
//! The login form has no session yet, and a forged login (another site posting the attacker's token,
//! so the victim works in the attacker's session) is a CSRF too. So `GET /console/login` sets a
//! pre-login cookie (`ap_console_login`, a random nonce, HttpOnly, SameSite=Strict) and embeds a
//! token derived from the nonce (SHA-256 of a label and the nonce); `POST /console/login` needs both
//! to agree: a double submit that any instance can check, with no Redis, because another site can
//! neither read nor set that cookie. The JSON login (`POST /console/api/session`) needs none: it
//! takes only `application/json`, which a cross-site form cannot send and a cross-site script cannot
//! send without a CORS preflight the console does not grant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::cookie::{Cookie, CookieBuilder, SameSite};
use actix_web::http::header;
use actix_web::HttpRequest;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ConsoleError;
use crate::domain::{ApiKeyDigest, OperatorDirectory, OperatorName, OperatorRole};
use crate::store::{ConsoleSessionStore, StoreOutage};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ap_console_session";
/// The header a script sends the CSRF token in; pages send it as the `csrfToken` form field.
pub const CSRF_HEADER: &str = "X-CSRF-Token";
/// The pre-login cookie: the nonce the login form's CSRF token is bound to.
pub const LOGIN_COOKIE: &str = "ap_console_login";

/// Domain-separation labels of the derived CSRF tokens: a bearer token's and a login form's can
/// never equal each other, nor a token digest configured for an operator or a tenant.
const BEARER_CSRF_LABEL: &[u8] = b"activity-pipeline console bearer CSRF v1\0";
const LOGIN_CSRF_LABEL: &[u8] = b"activity-pipeline console login CSRF v1\0";

/// An authenticated operator, for the length of one request.
#[derive(Debug, Clone)]
pub struct Operator {
    pub name: OperatorName,
    pub role: OperatorRole,
    /// The token every POST of these credentials carries.
    csrf_token: String,
    /// The digest of the session the request came with (what a logout ends); none for a bearer
    /// token.
    session_digest: Option<String>,
}

/// What Redis keeps of a session (as JSON), under the SHA-256 of its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionRecord {
    operator: String,
    /// The role at login, for whoever reads Redis; requests act with the role configured now.
    role: OperatorRole,
    /// The SHA-256 (hex) of the token the session was opened with: once the operator's token is
    /// changed in the configuration, the sessions opened with the old one are refused.
    token_sha256: String,
    csrf_token: String,
    /// Seconds since the Unix epoch.
    created_at: u64,
    /// Seconds since the Unix epoch; Redis drops the record then too (its TTL).
    expires_at: u64,
}

impl SessionRecord {
    fn encode(&self) -> String {
        serde_json::to_string(self).expect("a session record serialises")
    }

    /// The record, `None` when `raw` is not one (written by something else, or damaged).
    fn decode(raw: &str) -> Option<SessionRecord> {
        serde_json::from_str(raw).ok()
    }
}

/// The operator directory and the sessions.
pub struct Gate {
    operators: OperatorDirectory,
    sessions: ConsoleSessionStore,
    session_ttl: Duration,
    /// `console.max_sessions`: sessions one operator keeps at once.
    max_sessions_per_operator: usize,
    secure_cookie: bool,
}

impl Gate {
    pub fn new(
        operators: OperatorDirectory,
        sessions: ConsoleSessionStore,
        session_ttl: Duration,
        max_sessions_per_operator: usize,
        secure_cookie: bool,
    ) -> Gate {
        Gate {
            operators,
            sessions,
            session_ttl,
            max_sessions_per_operator,
            secure_cookie,
        }
    }

    /// The operator of `request`, from its bearer token or its session cookie.
    pub async fn authenticate(&self, request: &HttpRequest) -> Result<Operator, ConsoleError> {
        if let Some(authorization) = request.headers().get(header::AUTHORIZATION) {
            let token = authorization
                .to_str()
                .ok()
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|token| !token.is_empty())
                .ok_or_else(|| {
                    ConsoleError::Unauthorized(
                        "malformed Authorization header: expected Bearer <operator token>"
                            .to_owned(),
                    )
                })?;
            let (name, role, _) = self
                .operators
                .authenticate(token)
                .ok_or_else(unknown_token)?;
            return Ok(Operator {
                name,
                role,
                csrf_token: bearer_csrf_token(token),
                session_digest: None,
            });
        }
        if let Some(cookie) = request.cookie(SESSION_COOKIE) {
            return self.session_operator(cookie.value()).await;
        }
        Err(ConsoleError::Unauthorized(
            "log in: send Authorization: Bearer <operator token>, or POST the token to \
             /console/api/session for a session cookie"
                .to_owned(),
        ))
    }

    /// The operator of the session `id`, checked against the operator directory of now.
    async fn session_operator(&self, id: &str) -> Result<Operator, ConsoleError> {
        let unknown = || {
            ConsoleError::Unauthorized("the session expired or is unknown: log in again".to_owned())
        };
        // Garbage never reaches Redis.
        if !is_session_id(id) {
            return Err(unknown());
        }
        let digest = session_digest(id);
        let raw = self
            .sessions
            .find(&digest)
            .await
            .map_err(session_store_down)?
            .ok_or_else(unknown)?;
        let record = SessionRecord::decode(&raw).ok_or_else(|| {
            tracing::warn!("a console session record in Redis is not one: refused");
            unknown()
        })?;
        if record.expires_at <= unix_now() {
            return Err(unknown());
        }
        let configured_role = OperatorName::parse(&record.operator)
            .ok()
            .zip(ApiKeyDigest::from_hex(&record.token_sha256).ok())
            .and_then(|(name, token_digest)| {
                let role = self.operators.role_of(&name, &token_digest)?;
                Some((name, role))
            });
        // Refused, not ended: during a rolling change of the configuration another instance may
        // still (or already) know the operator; the record expires on its own.
        let (name, role) = configured_role.ok_or_else(|| {
            ConsoleError::Unauthorized(format!(
                "operator `{}` is no longer configured with the token this session was opened \
                 with: log in again",
                record.operator
            ))
        })?;
        Ok(Operator {
            name,
            role,
            csrf_token: record.csrf_token,
            session_digest: Some(digest),
        })
    }

    /// Checks `token` against the operator directory, then opens a session in Redis (ending that
    /// operator's sessions closest to expiring past `console.max_sessions`): the operator, the
    /// cookie to set, and the session's CSRF token.
    pub async fn log_in(
        &self,
        token: &str,
    ) -> Result<(Operator, Cookie<'static>, String), ConsoleError> {
        let (name, role, token_digest) = self
            .operators
            .authenticate(token.trim())
            .ok_or_else(unknown_token)?;
        let id = random_hex();
        let digest = session_digest(&id);
        let csrf_token = random_hex();
        let now = unix_now();
        let record = SessionRecord {
            operator: name.to_string(),
            role,
            token_sha256: token_digest.to_hex(),
            csrf_token: csrf_token.clone(),
            created_at: now,
            expires_at: now + self.session_ttl.as_secs(),
        };
        let ended = self
            .sessions
            .open(
                &digest,
                name.as_str(),
                &record.encode(),
                self.session_ttl,
                self.max_sessions_per_operator,
            )
            .await
            .map_err(session_store_down)?;
        if ended > 0 {
            tracing::info!(
                operator = %name,
                ended,
                "a login ended the operator's oldest sessions (console.max_sessions)"
            );
        }
        let cookie = console_cookie(SESSION_COOKIE, id)
            .secure(self.secure_cookie)
            .max_age(actix_web::cookie::time::Duration::seconds(
                self.session_ttl.as_secs() as i64,
            ))
            .finish();
        let operator = Operator {
            name,
            role,
            csrf_token: csrf_token.clone(),
            session_digest: Some(digest),
        };
        Ok((operator, cookie, csrf_token))
    }

    /// Ends the operator's session, if it has one (a bearer token has none), on every console
    /// instance at once, and returns the cookie that clears it in the browser.
    pub async fn log_out(&self, operator: &Operator) -> Result<Cookie<'static>, ConsoleError> {
        if let Some(digest) = &operator.session_digest {
            self.sessions
                .end(digest, operator.name.as_str())
                .await
                .map_err(session_store_down)?;
        }
        Ok(removal_cookie(SESSION_COOKIE))
    }

    /// The CSRF token of the operator's credential.
    pub fn csrf_token(&self, operator: &Operator) -> String {
        operator.csrf_token.clone()
    }

    /// A new pre-login cookie and the login form's CSRF token bound to it.
    pub fn login_challenge(&self) -> (Cookie<'static>, String) {
        let nonce = random_hex();
        let token = login_csrf_token(&nonce);
        let cookie = console_cookie(LOGIN_COOKIE, nonce)
            .secure(self.secure_cookie)
            .max_age(actix_web::cookie::time::Duration::hours(1))
            .finish();
        (cookie, token)
    }

    /// Refuses a login form post whose CSRF token is missing or not the one of its pre-login
    /// cookie (a post from another site, or from a form this browser was not given).
    pub fn check_login_csrf(
        &self,
        request: &HttpRequest,
        form_token: Option<&str>,
    ) -> Result<(), ConsoleError> {
        let nonce = request
            .cookie(LOGIN_COOKIE)
            .map(|cookie| cookie.value().to_owned())
            .filter(|nonce| !nonce.is_empty())
            .ok_or_else(|| {
                ConsoleError::Forbidden(
                    "no login cookie: open the login page (GET /console/login) and log in from it"
                        .to_owned(),
                )
            })?;
        let presented = form_token
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ConsoleError::Forbidden(
                    "missing CSRF token (csrfToken): log in from the login page".to_owned(),
                )
            })?;
        let expected = login_csrf_token(&nonce);
        if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(
                "the login form's CSRF token is not this browser's: reload the login page"
                    .to_owned(),
            ))
        }
    }

    /// The cookie that clears the pre-login cookie once it served.
    pub fn spent_login_cookie(&self) -> Cookie<'static> {
        removal_cookie(LOGIN_COOKIE)
    }

    /// Refuses a POST whose CSRF token (the `X-CSRF-Token` header, else `form_token`) is missing or
    /// is not the operator's.
    pub fn check_csrf(
        &self,
        request: &HttpRequest,
        operator: &Operator,
        form_token: Option<&str>,
    ) -> Result<(), ConsoleError> {
        let presented = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|value| value.to_str().ok())
            .or(form_token)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ConsoleError::Forbidden(format!(
                    "missing CSRF token: send {CSRF_HEADER} (GET /console/api/session gives it)"
                ))
            })?;
        if bool::from(presented.as_bytes().ct_eq(operator.csrf_token.as_bytes())) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(
                "the CSRF token is not this session's: reload the page".to_owned(),
            ))
        }
    }
}

/// Refuses an operator whose role may not change the DLQ.
pub fn require_admin(operator: &Operator) -> Result<(), ConsoleError> {
    if operator.role.may_act() {
        Ok(())
    } else {
        Err(ConsoleError::Forbidden(format!(
            "operator `{}` is a viewer: only admins may replay or purge",
            operator.name
        )))
    }
}

/// A console cookie: sent only to the console's paths, out of reach of scripts, never with a
/// request from another site.
fn console_cookie(name: &'static str, value: String) -> CookieBuilder<'static> {
    Cookie::build(name, value)
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
}

/// The cookie that makes the browser drop the console cookie `name`.
fn removal_cookie(name: &'static str) -> Cookie<'static> {
    let mut cookie = console_cookie(name, String::new()).finish();
    cookie.make_removal();
    cookie
}

fn unknown_token() -> ConsoleError {
    ConsoleError::Unauthorized(
        "unknown operator token (tenants' API keys do not open the console)".to_owned(),
    )
}

/// Redis did not answer about a session: 503, not 401 (the session may well be valid), and the way
/// that still works.
fn session_store_down(outage: StoreOutage) -> ConsoleError {
    ConsoleError::Unavailable(anyhow::anyhow!(
        "console sessions are kept in Redis ({outage}); try again once it answers, or send \
         Authorization: Bearer <operator token>, which needs no Redis"
    ))
}

/// 32 random bytes in hex: a session id, a session's CSRF token, a login nonce.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Whether `value` can be a session id (64 lowercase hex digits, as `random_hex` makes them).
fn is_session_id(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// What names a session in Redis: the SHA-256 (hex) of its id, so reading Redis yields no cookie.
fn session_digest(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// A bearer token's CSRF token: the same on every instance, computable only with the token.
fn bearer_csrf_token(token: &str) -> String {
    labelled_digest(BEARER_CSRF_LABEL, token)
}

/// The login form's CSRF token for the pre-login cookie's `nonce`.
fn login_csrf_token(nonce: &str) -> String {
    labelled_digest(LOGIN_CSRF_LABEL, nonce)
}

fn labelled_digest(label: &[u8], value: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(label);
    hasher.update(value.as_bytes());
    hex::encode(hasher.finalize())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_checked_before_any_lookup_and_stored_only_as_digests() {
        let id = random_hex();
        assert!(is_session_id(&id));
        assert_ne!(random_hex(), id);
        for garbage in [
            "",
            "abc",
            &id[..63],
            &format!("{id}0"),
            &id.to_uppercase(),
            &format!("{}g", &id[..63]),
            "<script>alert(1)</script>",
        ] {
            assert!(!is_session_id(garbage), "{garbage:?}");
        }
        let digest = session_digest(&id);
        assert_eq!(digest.len(), 64);
        assert_ne!(digest, id);
        assert_eq!(digest, session_digest(&id), "the same on every instance");
    }

    #[test]
    fn derived_csrf_tokens_are_stable_distinct_and_not_the_configured_digest() {
        let token = "dev-operator-admin";
        assert_eq!(bearer_csrf_token(token), bearer_csrf_token(token));
        assert_ne!(
            bearer_csrf_token(token),
            bearer_csrf_token("dev-operator-viewer")
        );
        // The configuration holds SHA-256(token): the CSRF token must not be computable from it.
        assert_ne!(
            bearer_csrf_token(token),
            ApiKeyDigest::of_key(token).to_hex()
        );
        // A login nonce that happens to equal a token gives another token.
        assert_ne!(login_csrf_token(token), bearer_csrf_token(token));
        assert_ne!(login_csrf_token("a"), login_csrf_token("b"));
    }

    #[test]
    fn session_records_round_trip_and_garbage_is_none() {
        let record = SessionRecord {
            operator: "ada".to_owned(),
            role: OperatorRole::Admin,
            token_sha256: ApiKeyDigest::of_key("t").to_hex(),
            csrf_token: random_hex(),
            created_at: 1,
            expires_at: 2,
        };
        let encoded = record.encode();
        assert!(encoded.contains("\"tokenSha256\""), "{encoded}");
        assert_eq!(SessionRecord::decode(&encoded), Some(record));
        for garbage in ["", "{}", "null", "not json", "{\"operator\": 1}"] {
            assert_eq!(SessionRecord::decode(garbage), None, "{garbage}");
        }
    }
}
