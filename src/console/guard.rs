//! Who may use the console, and what every answer carries.
//!
//! The console holds an operator's certificate: anyone who can use it acts as that
//! operator. So, besides listening on loopback only (the CLI refuses anything else
//! without `--allow-remote`):
//! - **the same local user:** a connection from a socket another user of the machine owns
//!   is refused (its owner read from `/proc/net/tcp`): another user can neither browse
//!   the console nor replay a stolen cookie with curl.
//! - **a secret, used once:** printed at start as `/login?token=…`; the first browser to
//!   present it gets a session secret of its own in an `HttpOnly`, `SameSite=Strict`
//!   cookie, and the printed one is spent (a browser's history keeps only a dead value).
//!   "Sign out" (`POST /logout`) ends the session for good: its cookie, even replayed,
//!   opens nothing; another session takes a restart of the console.
//! - **loopback `Host`s only** (unless `--allow-remote`): a DNS-rebinding page whose name
//!   now points at 127.0.0.1 sends its own name as `Host` and is refused.
//! - **forms from the console only:** cookies do not keep ports apart, so a page served
//!   on another port of 127.0.0.1 is "same site" and its form would carry the cookie; a
//!   POST is refused unless its `Origin` is the console's own (and `Sec-Fetch-Site`, when
//!   sent, says same-origin).
//! - **headers:** a Content-Security-Policy allowing only the console's own styles and
//!   script (no inline script, no framing, forms only to itself), `no-store` (pages hold
//!   records), a referrer only to the console itself (a search's form values never leave
//!   in a `Referer`; `no-referrer` would make a form's `Origin` "null").

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
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

/// The values of every cookie called `name` in a `Cookie` header (a page on another
/// port may have set one of the same name: each is tried).
pub fn cookies<'a>(header: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    header.split(';').filter_map(move |pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Whether a form comes from the console's own pages: `Origin` is `http://` and the Host
/// the request was sent to, and `Sec-Fetch-Site`, when the browser sends it, says so too.
fn same_origin(headers: &axum::http::HeaderMap, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let origin_ok = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| o.strip_prefix("http://") == Some(host));
    let site_ok = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v == "same-origin");
    origin_ok && site_ok
}

/// Whether the peer's socket belongs to the user running the console: the *established*
/// socket in `/proc/net/tcp` (or `tcp6`) whose local address is `peer` and whose remote
/// port is the console's, its owner's uid against ours. Only that one: a socket in
/// TIME_WAIT is listed as root's, and another connection may share the peer's local port
/// (to another remote) — either would pass another user's connection as the console
/// user's when the console runs as root, or as that socket's owner. Unknown (not Linux,
/// not found) is a refusal.
fn same_user(peer: SocketAddr, console_port: u16) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(me) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return false;
    };
    let (table, wanted) = match peer {
        SocketAddr::V4(a) => (
            "/proc/net/tcp",
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(a.ip().octets()),
                a.port()
            ),
        ),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            let words: String = o
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
                .collect();
            ("/proc/net/tcp6", format!("{words}:{:04X}", a.port()))
        }
    };
    let Ok(text) = std::fs::read_to_string(table) else {
        return false;
    };
    const ESTABLISHED: &str = "01";
    text.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let remote_port = fields
            .get(2)
            .and_then(|r| r.rsplit(':').next())
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        fields.get(1) == Some(&wanted.as_str())
            && remote_port == Some(console_port)
            && fields.get(3) == Some(&ESTABLISHED)
            && fields.get(7).and_then(|u| u.parse::<u32>().ok()) == Some(me)
    })
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

/// The middleware: the peer's user, the Host, the secret or the session, the origin of
/// a form, then the headers of every answer.
pub async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let remote = guard.console.inner.options.allow_remote;
    let mut response = if !remote && !peer.is_some_and(|peer| same_user(peer, guard.port)) {
        refuse(
            StatusCode::FORBIDDEN,
            "the console answers the user who runs it only",
        )
    } else if !guard.host_allowed(host.as_deref()) {
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
        match guard.console.log_in(token) {
            Some(session) => {
                let mut r = Redirect::to("/live").into_response();
                let cookie = format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/");
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            None => refuse(
                StatusCode::UNAUTHORIZED,
                "wrong, missing or already used token: open the address `popgw console` printed \
                 (it opens one session; restart the console for another)",
            ),
        }
    } else if !request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| cookies(h, COOKIE))
        .any(|session| guard.console.session_matches(session))
    {
        refuse(
            StatusCode::UNAUTHORIZED,
            "not signed in: open the address `popgw console` printed",
        )
    } else if !matches!(*request.method(), Method::GET | Method::HEAD)
        && !same_origin(request.headers(), host.as_deref())
    {
        refuse(
            StatusCode::FORBIDDEN,
            "a form from another origin: the console takes forms from its own pages only",
        )
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::{cookies, same_user};

    #[test]
    fn every_cookie_of_the_name_is_found_and_only_those() {
        let all = |h| cookies(h, "popgw_console").collect::<Vec<_>>();
        assert_eq!(all("a=1; popgw_console=x; popgw_console=y"), ["x", "y"]);
        assert!(all("xpopgw_console=1").is_empty());
        assert!(all("").is_empty());
    }

    #[test]
    fn a_socket_of_this_user_is_recognised_and_an_unknown_one_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let peer = client.local_addr().unwrap();
        assert!(same_user(peer, port));
        // The same local address connected elsewhere is not this connection.
        assert!(!same_user(peer, port.wrapping_add(1)));
        // Closed by the client first, its socket waits in TIME_WAIT, listed as root's:
        // never taken for a live connection (it let another user's curl through when the
        // console ran as root and a new connection reused the port).
        drop(client);
        drop(server_side);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!same_user(peer, port));
        // No socket has this address: refused, never assumed.
        assert!(!same_user("127.0.0.1:1".parse().unwrap(), port));
    }
}
