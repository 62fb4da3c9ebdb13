//! Request guards: the DNS-rebinding Host check on loopback binds, CORS, and API keys.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, Dialect, ErrorKind};
use crate::AppState;

/// Origins allowed by default: local pages and desktop/editor webviews (as Ollama allows).
const DEFAULT_ORIGINS: &[&str] = &[
    "http://localhost",
    "https://localhost",
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://0.0.0.0",
    "https://0.0.0.0",
    "http://0.0.0.0:*",
    "https://0.0.0.0:*",
    "http://[::1]",
    "http://[::1]:*",
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
];

/// Paths answered without an API key (liveness, the chat page itself).
fn is_public(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && matches!(path, "/" | "/health" | "/ui" | "/ui/")
}

/// Glob match with `*` standing for any run of characters.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == s[si] || (p[pi] != b'*' && p[pi].eq_ignore_ascii_case(&s[si])))
        {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// The host part of a Host header value (port and IPv6 brackets removed).
fn host_only(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Whether a Host header may reach a loopback-bound server: IP literals, localhost names and
/// the machine's own name. A DNS-rebinding page arrives with its own domain here.
pub fn host_allowed(host: &str, hostname: Option<&str>) -> bool {
    let h = host_only(host).trim_end_matches('.').to_ascii_lowercase();
    if h.parse::<IpAddr>().is_ok() || h == "localhost" || h.ends_with(".localhost") {
        return true;
    }
    hostname.is_some_and(|n| n.eq_ignore_ascii_case(&h))
}

/// Whether a CORS origin is allowed (defaults, configured patterns, or the server's own origin).
pub fn origin_allowed(origin: &str, configured: &[String], host_header: Option<&str>) -> bool {
    if configured.iter().any(|p| p == "*" || glob(p, origin))
        || DEFAULT_ORIGINS.iter().any(|p| glob(p, origin))
    {
        return true;
    }
    // Same origin: the page was served by this server (e.g. /ui on a LAN address).
    match (origin.split_once("://"), host_header) {
        (Some((_, authority)), Some(host)) => authority.eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// The key a request presents (Bearer token or x-api-key).
fn presented_key(h: &HeaderMap) -> Option<&str> {
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if let Some(k) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(k.trim());
        }
    }
    h.get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Compare in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

fn deny(dialect: Dialect, kind: ErrorKind, msg: &str) -> Response {
    let mut r = ApiError::new(kind, msg).into_response(dialect);
    if kind == ErrorKind::Unauthorized {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// Known routes keep their path as the metrics label; anything else is "other".
fn endpoint_label(path: &str) -> &str {
    const KNOWN: &[&str] = &[
        "/",
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/tags",
        "/api/show",
        "/api/ps",
        "/api/delete",
        "/api/copy",
        "/api/pull",
        "/api/create",
        "/api/version",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/metrics",
        "/health",
        "/ui",
    ];
    KNOWN
        .iter()
        .find(|k| **k == path)
        .copied()
        .unwrap_or("other")
}

/// The middleware every request passes through.
pub async fn guard(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let dialect = Dialect::of_path(&path);
    let method = req.method().clone();
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let allow_origin = origin
        .as_deref()
        .filter(|o| origin_allowed(o, &app.config.origins, host.as_deref()))
        .and_then(|o| HeaderValue::from_str(o).ok());

    let response = 'resp: {
        if app.config.bind.is_loopback() {
            if let Some(h) = &host {
                if !host_allowed(h, app.hostname.as_deref()) {
                    break 'resp deny(dialect, ErrorKind::Forbidden, "host not allowed: this server only answers requests addressed to localhost");
                }
            }
        }
        if let Some(o) = &origin {
            if allow_origin.is_none() {
                break 'resp deny(
                    dialect,
                    ErrorKind::Forbidden,
                    &format!("origin {o} not allowed (see SMELT_ORIGINS)"),
                );
            }
            if method == Method::OPTIONS {
                let mut r = StatusCode::NO_CONTENT.into_response();
                let h = r.headers_mut();
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("GET, POST, PUT, DELETE, HEAD, OPTIONS"),
                );
                let req_headers = headers
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .cloned()
                    .unwrap_or_else(|| {
                        HeaderValue::from_static("authorization, content-type, x-api-key")
                    });
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, req_headers);
                h.insert(
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static("86400"),
                );
                break 'resp r;
            }
        }
        if let Some(key) = &app.config.api_key {
            if !is_public(&method, &path) {
                match presented_key(headers) {
                    Some(k) if constant_time_eq(k.as_bytes(), key.as_bytes()) => {}
                    Some(_) => {
                        break 'resp deny(dialect, ErrorKind::Unauthorized, "invalid API key")
                    }
                    None => break 'resp deny(
                        dialect,
                        ErrorKind::Unauthorized,
                        "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
                    ),
                }
            }
        }
        next.run(req).await
    };

    let mut response = response;
    if let Some(o) = allow_origin {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    app.metrics
        .count_request(endpoint_label(&path), response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(glob("http://localhost:*", "http://localhost:3000"));
        assert!(glob("app://*", "app://x"));
        assert!(!glob("http://localhost:*", "http://localhost.evil.com"));
        assert!(glob("*", "anything"));
        assert!(glob("https://*.example.com", "https://a.b.example.com"));
        assert!(!glob("https://*.example.com", "https://example.org"));
    }

    #[test]
    fn host_guard() {
        for ok in [
            "localhost:11434",
            "127.0.0.1:11434",
            "[::1]:11434",
            "app.localhost",
            "192.168.1.4",
            "LOCALHOST",
        ] {
            assert!(host_allowed(ok, None), "{ok}");
        }
        for bad in [
            "evil.com",
            "evil.com:11434",
            "localhost.evil.com",
            "127.0.0.1.nip.io",
        ] {
            assert!(!host_allowed(bad, None), "{bad}");
        }
        assert!(host_allowed("mybox:11434", Some("mybox")));
    }

    #[test]
    fn origins() {
        assert!(origin_allowed("http://localhost:5173", &[], None));
        assert!(origin_allowed("vscode-webview://abc", &[], None));
        assert!(!origin_allowed("https://evil.com", &[], None));
        assert!(origin_allowed("https://evil.com", &["*".into()], None));
        assert!(origin_allowed(
            "https://chat.example.com",
            &["https://*.example.com".into()],
            None
        ));
        assert!(origin_allowed(
            "http://192.168.1.5:11434",
            &[],
            Some("192.168.1.5:11434")
        ));
    }

    #[test]
    fn keys() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert_eq!(presented_key(&h), Some("s3cret"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("k"));
        assert_eq!(presented_key(&h), Some("k"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
