//! Who may use the dashboard ([`Auth`]), and the CSRF token every form
//! carries.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use super::pages::AppState;

/// Credentials every request to the dashboard must carry.
///
/// ```
/// use action_event::web::Auth;
/// let a: Auth = "basic:ops:secret".parse().unwrap();
/// assert_eq!(a, Auth::Basic { user: "ops".into(), password: "secret".into() });
/// let b: Auth = "bearer:t0ken".parse().unwrap();
/// assert_eq!(b, Auth::Bearer("t0ken".into()));
/// assert!("basic:nopassword".parse::<Auth>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// HTTP basic auth (`Authorization: Basic ...`): browsers ask for it.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// `Authorization: Bearer <token>` (for scripts and Prometheus).
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { user, .. } => write!(f, "Basic {{ user: {user:?}, password: *** }}"),
            Auth::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

impl std::str::FromStr for Auth {
    type Err = String;

    /// `basic:USER:PASSWORD` or `bearer:TOKEN`.
    fn from_str(s: &str) -> Result<Auth, String> {
        if let Some(rest) = s.strip_prefix("basic:") {
            let (user, password) = rest
                .split_once(':')
                .ok_or("write basic:USER:PASSWORD (the password is missing)")?;
            if user.is_empty() || password.is_empty() {
                return Err(
                    "write basic:USER:PASSWORD (user and password must not be empty)".into(),
                );
            }
            return Ok(Auth::Basic {
                user: user.into(),
                password: password.into(),
            });
        }
        if let Some(token) = s.strip_prefix("bearer:") {
            if token.is_empty() {
                return Err("write bearer:TOKEN (the token is empty)".into());
            }
            return Ok(Auth::Bearer(token.into()));
        }
        Err("write basic:USER:PASSWORD or bearer:TOKEN".into())
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guess was right.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(auth: &Auth, headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    match auth {
        Auth::Bearer(token) => given
            .strip_prefix("Bearer ")
            .is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes())),
        Auth::Basic { user, password } => given
            .strip_prefix("Basic ")
            .and_then(|b| decode_base64(b.trim()))
            .is_some_and(|pair| same(&pair, format!("{user}:{password}").as_bytes())),
    }
}

/// The middleware: 401 without the right credentials.
pub(super) async fn check(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(auth) = &state.config.auth
        && !authorized(auth, req.headers())
    {
        let mut r = (
            StatusCode::UNAUTHORIZED,
            "401 Unauthorized: this dashboard needs credentials\n",
        )
            .into_response();
        let challenge = match auth {
            Auth::Basic { .. } => "Basic realm=\"action_event\", charset=\"UTF-8\"",
            Auth::Bearer(_) => "Bearer realm=\"action_event\"",
        };
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        return r;
    }
    next.run(req).await
}

/// A fresh random token (hex), for CSRF.
pub(super) fn new_token() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 (RFC 4648); `None` if malformed.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_what_browsers_send() {
        assert_eq!(
            decode_base64("b3BzOnNlY3JldA==").as_deref(),
            Some(&b"ops:secret"[..])
        );
        assert!(decode_base64("a").is_none());
        assert!(decode_base64("b3B*").is_none());
    }

    #[test]
    fn only_the_right_credentials_pass() {
        let auth = Auth::Basic {
            user: "ops".into(),
            password: "secret".into(),
        };
        let mut h = HeaderMap::new();
        assert!(!authorized(&auth, &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic b3BzOnNlY3JldA=="),
        );
        assert!(authorized(&auth, &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic b3BzOnNlY3JldB=="),
        );
        assert!(!authorized(&auth, &h));
        let bearer = Auth::Bearer("t".into());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert!(authorized(&bearer, &h));
        assert!(!authorized(&auth, &h));
    }
}
