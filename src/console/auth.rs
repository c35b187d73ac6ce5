//! Who is asking, and may they: operator tokens (configured digests, roles), login sessions kept in
//! memory, and the CSRF token every POST must carry.
//!
//! A request authenticates with `Authorization: Bearer <operator token>` (scripts) or the session
//! cookie a login set (browsers). The operator directory holds only operators, so a tenant's API
//! key answers 401 like any unknown token.
//!
//! CSRF: the token is derived, not stored: SHA-256 of a per-process random secret and the
//! credential's identity (the session id, or the bearer token's digest). So it is bound to one
//! session (or token), a restart invalidates it with the sessions, and nothing more has to be kept.
//! A page embeds it in its forms; a script reads it from `GET /console/api/session` and sends it as
//! `X-CSRF-Token`.
//!
//! The login form has no session yet, and a forged login (another site posting the attacker's token,
//! so the victim works in the attacker's session) is a CSRF too. So `GET /console/login` sets a
//! pre-login cookie (`ap_console_login`, a random nonce, HttpOnly, SameSite=Strict) and embeds the
//! token derived from it the same way (`login:<nonce>`); `POST /console/login` needs both. The JSON
//! login (`POST /console/api/session`) needs none: it takes only `application/json`, which a
//! cross-site form cannot send and a cross-site script cannot send without a CORS preflight the
//! console does not grant.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::cookie::{Cookie, CookieBuilder, SameSite};
use actix_web::http::header;
use actix_web::HttpRequest;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ConsoleError;
use crate::domain::{OperatorDirectory, OperatorName, OperatorRole};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ap_console_session";
/// The header a script sends the CSRF token in; pages send it as the `csrfToken` form field.
pub const CSRF_HEADER: &str = "X-CSRF-Token";
/// The pre-login cookie: the nonce the login form's CSRF token is bound to.
pub const LOGIN_COOKIE: &str = "ap_console_login";

/// An authenticated operator, for the length of one request.
#[derive(Debug, Clone)]
pub struct Operator {
    pub name: OperatorName,
    pub role: OperatorRole,
    /// What the CSRF token is bound to: `session:<id>` or `bearer:<token digest>`.
    csrf_subject: String,
}

struct Session {
    name: OperatorName,
    role: OperatorRole,
    expires_at: Instant,
}

/// The operator directory, the live sessions and the CSRF secret.
pub struct Gate {
    operators: OperatorDirectory,
    sessions: Mutex<HashMap<String, Session>>,
    session_ttl: Duration,
    max_sessions: usize,
    secure_cookie: bool,
    /// Random per process: tokens derived from it die with the process, like the sessions.
    csrf_secret: [u8; 32],
}

impl Gate {
    pub fn new(
        operators: OperatorDirectory,
        session_ttl: Duration,
        max_sessions: usize,
        secure_cookie: bool,
    ) -> Gate {
        let mut csrf_secret = [0u8; 32];
        rand::rng().fill_bytes(&mut csrf_secret);
        Gate {
            operators,
            sessions: Mutex::new(HashMap::new()),
            session_ttl,
            max_sessions,
            secure_cookie,
            csrf_secret,
        }
    }

    /// The operator of `request`, from its bearer token or its session cookie.
    pub fn authenticate(&self, request: &HttpRequest) -> Result<Operator, ConsoleError> {
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
            let (name, role, digest) = self.operators.authenticate(token).ok_or_else(|| {
                ConsoleError::Unauthorized(
                    "unknown operator token (tenants' API keys do not open the console)".to_owned(),
                )
            })?;
            return Ok(Operator {
                name,
                role,
                csrf_subject: format!("bearer:{}", digest.to_hex()),
            });
        }
        if let Some(cookie) = request.cookie(SESSION_COOKIE) {
            let id = cookie.value();
            let sessions = self.sessions.lock().expect("sessions lock");
            return match sessions.get(id) {
                Some(session) if session.expires_at > Instant::now() => Ok(Operator {
                    name: session.name.clone(),
                    role: session.role,
                    csrf_subject: format!("session:{id}"),
                }),
                _ => Err(ConsoleError::Unauthorized(
                    "the session expired or is unknown: log in again".to_owned(),
                )),
            };
        }
        Err(ConsoleError::Unauthorized(
            "log in: send Authorization: Bearer <operator token>, or POST the token to \
             /console/api/session for a session cookie"
                .to_owned(),
        ))
    }

    /// Checks `token` against the operator's token with [`Gate::authenticate`], then opens a
    /// session: the operator, the cookie to set, and the session's CSRF token.
    pub fn log_in(&self, token: &str) -> Result<(Operator, Cookie<'static>, String), ConsoleError> {
        let (name, role, _) = self.operators.authenticate(token.trim()).ok_or_else(|| {
            ConsoleError::Unauthorized(
                "unknown operator token (tenants' API keys do not open the console)".to_owned(),
            )
        })?;
        let mut id_bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut id_bytes);
        let id = hex::encode(id_bytes);
        let now = Instant::now();
        {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            sessions.retain(|_, session| session.expires_at > now);
            if sessions.len() >= self.max_sessions {
                // Full of live sessions: the one closest to expiring makes room.
                if let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, session)| session.expires_at)
                    .map(|(id, _)| id.clone())
                {
                    sessions.remove(&oldest);
                }
            }
            sessions.insert(
                id.clone(),
                Session {
                    name: name.clone(),
                    role,
                    expires_at: now + self.session_ttl,
                },
            );
        }
        let cookie = console_cookie(SESSION_COOKIE, id.clone())
            .secure(self.secure_cookie)
            .max_age(actix_web::cookie::time::Duration::seconds(
                self.session_ttl.as_secs() as i64,
            ))
            .finish();
        let operator = Operator {
            name,
            role,
            csrf_subject: format!("session:{id}"),
        };
        let csrf = self.csrf_token(&operator);
        Ok((operator, cookie, csrf))
    }

    /// Ends the operator's session, if it has one (a bearer token has none), and returns the cookie
    /// that clears it in the browser.
    pub fn log_out(&self, operator: &Operator) -> Cookie<'static> {
        if let Some(id) = operator.csrf_subject.strip_prefix("session:") {
            self.sessions.lock().expect("sessions lock").remove(id);
        }
        removal_cookie(SESSION_COOKIE)
    }

    /// The CSRF token of the operator's credential.
    pub fn csrf_token(&self, operator: &Operator) -> String {
        self.derive_token(&operator.csrf_subject)
    }

    fn derive_token(&self, subject: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.csrf_secret);
        hasher.update(subject.as_bytes());
        hex::encode(hasher.finalize())
    }

    /// A new pre-login cookie and the login form's CSRF token bound to it.
    pub fn login_challenge(&self) -> (Cookie<'static>, String) {
        let mut nonce_bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut nonce_bytes);
        let nonce = hex::encode(nonce_bytes);
        let token = self.derive_token(&format!("login:{nonce}"));
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
        let expected = self.derive_token(&format!("login:{nonce}"));
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
        let expected = self.csrf_token(operator);
        if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
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
