//! Who may use the console, and what every answer carries.
//!
//! The console holds an operator's certificate: anyone who can use it acts as that
//! operator. So, besides listening on loopback only (the CLI refuses anything else
//! without `--allow-remote`):
//! - **a secret:** printed once at start as `/login?token=…`; the browser exchanges it for
//!   an `HttpOnly`, `SameSite=Strict` cookie. Another local user, or a page in another
//!   tab posting to 127.0.0.1, has neither; a cross-site request never carries the cookie.
//! - **loopback `Host`s only** (unless `--allow-remote`): a DNS-rebinding page whose name
//!   now points at 127.0.0.1 sends its own name as `Host` and is refused.
//! - **headers:** a Content-Security-Policy allowing only the console's own styles and
//!   script (no inline script, no framing, forms only to itself), `no-store` (pages hold
//!   records), no referrer (a search's form values never leave in a `Referer`).

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::Console;

/// The cookie the secret is exchanged for.
pub const COOKIE: &str = "popgw_console";

/// What the guard needs: the console (its secret) and where it listens.
#[derive(Clone)]
pub struct Guard {
    console: Console,
    port: u16,
}

impl Guard {
    /// A guard for `console` listening on `listen`.
    pub fn new(console: Console, listen: SocketAddr) -> Guard {
        Guard {
            console,
            port: listen.port(),
        }
    }

    fn host_allowed(&self, host: Option<&str>) -> bool {
        if self.console.inner.options.allow_remote {
            return true;
        }
        let Some(host) = host else { return false };
        let port = self.port.to_string();
        ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .any(|name| host.strip_prefix(name).and_then(|r| r.strip_prefix(':')) == Some(&port))
    }
}

/// A cookie's value in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

/// The middleware: the Host, the secret or its cookie, then the headers of every answer.
pub async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let mut response = if !guard.host_allowed(host) {
        refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "the console answers on its loopback address only",
        )
    } else if request.uri().path() == "/login" {
        let token = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .unwrap_or("");
        if guard.console.token_matches(token) {
            let mut r = Redirect::to("/live").into_response();
            let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        } else {
            refuse(
                StatusCode::UNAUTHORIZED,
                "wrong or missing token: open the address `popgw console` printed",
            )
        }
    } else {
        let presented = request
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .find_map(|h| cookie(h, COOKIE));
        match presented {
            Some(token) if guard.console.token_matches(token) => next.run(request).await,
            _ => refuse(
                StatusCode::UNAUTHORIZED,
                "not signed in: open the address `popgw console` printed",
            ),
        }
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::cookie;

    #[test]
    fn a_cookie_is_found_by_its_exact_name() {
        assert_eq!(
            cookie("a=1; popgw_console=xyz", "popgw_console"),
            Some("xyz")
        );
        assert_eq!(cookie("xpopgw_console=1", "popgw_console"), None);
        assert_eq!(cookie("", "popgw_console"), None);
    }
}
