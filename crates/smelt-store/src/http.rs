//! A small blocking HTTP client for the pull protocols: redirects followed by hand (so a bearer token
//! goes only to the host that issued the challenge), one bearer-token challenge answered per request,
//! and transport errors mapped to the store's errors.

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::Response;
use ureq::Body;

use crate::error::{Error, Result};

const MAX_REDIRECTS: usize = 10;
/// Token and JSON API answers are small; refuse to buffer more.
const MAX_SMALL_BODY: u64 = 8 << 20;

/// Client settings.
#[derive(Debug, Clone)]
pub(crate) struct ClientConfig {
    pub insecure: bool,
    pub connect_timeout: Duration,
    /// A read that waits longer than this counts as a stalled connection.
    pub stall_timeout: Duration,
}

pub(crate) struct Client {
    agent: ureq::Agent,
    insecure: bool,
    /// Bearer token and the host it was issued for.
    token: Mutex<Option<(String, String)>>,
}

/// A response after redirects: the final URL, status and body.
pub(crate) struct Reply {
    pub url: String,
    pub status: u16,
    pub response: Response<Body>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
    }

    pub fn into_reader(self) -> impl Read {
        self.response.into_body().into_reader()
    }

    /// Reads a small body (JSON answers, manifests) with a size cap.
    pub fn read_small(self) -> Result<Vec<u8>> {
        let url = self.url.clone();
        let mut buf = Vec::new();
        self.into_reader()
            .take(MAX_SMALL_BODY + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::Protocol {
                url: url.clone(),
                reason: format!("reading the body: {e}"),
            })?;
        if buf.len() as u64 > MAX_SMALL_BODY {
            return Err(Error::Protocol {
                url,
                reason: format!("body larger than {MAX_SMALL_BODY} bytes"),
            });
        }
        Ok(buf)
    }

    /// A short excerpt of an error body for messages (registries explain errors in JSON).
    pub fn error_detail(self) -> String {
        let body = self.read_small().unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!(": {}", text.chars().take(300).collect::<String>())
        }
    }
}

impl Client {
    pub fn new(cfg: &ClientConfig) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_resolve(Some(cfg.connect_timeout))
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_recv_response(Some(cfg.stall_timeout.max(cfg.connect_timeout)))
            .timeout_per_read(Some(cfg.stall_timeout))
            .user_agent(concat!("smelt/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            insecure: cfg.insecure,
            token: Mutex::new(None),
        }
    }

    /// Sends `token` as a bearer token to `url`'s host (Hugging Face's `HF_TOKEN`).
    pub fn with_bearer(self, token: Option<&str>, url: &str) -> Client {
        *self.token.lock().expect("token lock") =
            token.map(|t| (t.to_string(), host_of(url).to_string()));
        self
    }

    /// GET with optional `Accept` and `Range` headers, following redirects and answering one
    /// bearer challenge. Any status comes back; transport failures are errors.
    pub fn get(&self, url: &str, accept: Option<&str>, range: Option<(u64, u64)>) -> Result<Reply> {
        let mut url = url.to_string();
        let mut challenged = false;
        let mut hops = 0;
        loop {
            self.check_scheme(&url)?;
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some((start, end)) = range {
                req = req.header("Range", format!("bytes={start}-{end}"));
            }
            if let Some((token, host)) = self.token.lock().expect("token lock").clone() {
                if host_of(&url) == host {
                    req = req.header("Authorization", format!("Bearer {token}"));
                }
            }
            let response = req.call().map_err(|e| map_transport_error(&url, e))?;
            let status = response.status().as_u16();
            let reply = Reply {
                url: url.clone(),
                status,
                response,
            };
            match status {
                301 | 302 | 303 | 307 | 308 => {
                    hops += 1;
                    let Some(location) = reply.header("location") else {
                        return Err(Error::Protocol {
                            url,
                            reason: format!("HTTP {status} without a Location"),
                        });
                    };
                    if hops > MAX_REDIRECTS {
                        return Err(Error::Protocol {
                            url,
                            reason: format!("more than {MAX_REDIRECTS} redirects"),
                        });
                    }
                    url = join_location(&url, location);
                }
                401 if !challenged => {
                    let Some(challenge) = reply.header("www-authenticate").map(str::to_string)
                    else {
                        return Ok(reply);
                    };
                    challenged = true;
                    let token = self.fetch_token(&url, &challenge)?;
                    *self.token.lock().expect("token lock") =
                        Some((token, host_of(&url).to_string()));
                }
                _ => return Ok(reply),
            }
        }
    }

    /// Answers a `WWW-Authenticate: Bearer realm=..,service=..,scope=..` challenge.
    fn fetch_token(&self, url: &str, challenge: &str) -> Result<String> {
        let params = parse_bearer_challenge(challenge).ok_or_else(|| Error::Protocol {
            url: url.to_string(),
            reason: format!("unsupported authentication challenge {challenge:?}"),
        })?;
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Error::Protocol {
                url: url.to_string(),
                reason: format!("bearer challenge without a realm: {challenge:?}"),
            })?;
        let query: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "service" || k == "scope")
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        let token_url = match (query.is_empty(), realm.contains('?')) {
            (true, _) => realm.clone(),
            (false, true) => format!("{realm}&{}", query.join("&")),
            (false, false) => format!("{realm}?{}", query.join("&")),
        };
        self.check_scheme(&token_url)?;
        let reply = self
            .agent
            .get(&token_url)
            .call()
            .map_err(|e| map_transport_error(&token_url, e))?;
        let reply = Reply {
            url: token_url.clone(),
            status: reply.status().as_u16(),
            response: reply,
        };
        if reply.status != 200 {
            let status = reply.status;
            return Err(Error::Http {
                op: "get token",
                url: token_url,
                status,
                detail: reply.error_detail(),
            });
        }
        let body: serde_json::Value =
            serde_json::from_slice(&reply.read_small()?).map_err(|e| Error::Protocol {
                url: token_url.clone(),
                reason: format!("token answer: {e}"),
            })?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::Protocol {
                url: token_url,
                reason: "token answer has no \"token\"".into(),
            })
    }

    fn check_scheme(&self, url: &str) -> Result<()> {
        if url.starts_with("http://") && !self.insecure {
            return Err(Error::Insecure {
                url: url.to_string(),
            });
        }
        Ok(())
    }
}

/// The `host[:port]` of an absolute URL.
pub(crate) fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// Resolves a `Location` header against the URL that answered with it.
pub(crate) fn join_location(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    if let Some(net) = location.strip_prefix("//") {
        return format!("{scheme}://{net}");
    }
    let host = host_of(base);
    if location.starts_with('/') {
        return format!("{scheme}://{host}{location}");
    }
    let path = rest[host.len()..].split(['?', '#']).next().unwrap_or("");
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    format!("{scheme}://{host}{dir}/{location}")
}

/// Parses `Bearer k="v",k2=v2` into pairs; commas inside quotes belong to the value.
pub(crate) fn parse_bearer_challenge(header: &str) -> Option<Vec<(String, String)>> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() {
            break;
        }
        chars.next()?; // '='
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        out.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Some(out)
}

/// Percent-encodes a query value (unreserved characters pass through).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a path, keeping `/` separators.
pub(crate) fn encode_path(path: &str) -> String {
    path.split('/')
        .map(percent_encode)
        .collect::<Vec<_>>()
        .join("/")
}

fn map_transport_error(url: &str, e: ureq::Error) -> Error {
    let host = host_of(url).to_string();
    let unreachable = |reason: String| Error::Unreachable {
        host: host.clone(),
        reason,
    };
    match e {
        ureq::Error::HostNotFound => unreachable("host not found".into()),
        ureq::Error::ConnectionFailed => unreachable("connection failed".into()),
        ureq::Error::Timeout(t) => unreachable(format!("timed out: {t}")),
        // Before a response arrives, an I/O error means the server could not be reached (name
        // lookup failures come as uncategorized I/O errors), except for a connection that was
        // opened and then broken, which a retry may cure.
        ureq::Error::Io(io) => {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | Interrupted => {
                    Error::Protocol {
                        url: url.to_string(),
                        reason: io.to_string(),
                    }
                }
                TimedOut => unreachable(format!("timed out: {io}")),
                _ => unreachable(io.to_string()),
            }
        }
        other => Error::Protocol {
            url: url.to_string(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges() {
        let p = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "registry".into()),
                ("scope".into(), "repository:a/b:pull,push".into())
            ]
        );
        assert_eq!(
            parse_bearer_challenge("Bearer realm=x, service=y").unwrap()[1],
            ("service".into(), "y".into())
        );
        assert!(parse_bearer_challenge("Basic realm=\"x\"").is_none());
        assert!(parse_bearer_challenge("Bearer realm=\"unterminated").is_none());
    }

    #[test]
    fn locations() {
        let base = "https://reg.example:5000/v2/library/m/blobs/sha256:ab?x=1";
        assert_eq!(
            join_location(base, "https://cdn.example/a"),
            "https://cdn.example/a"
        );
        assert_eq!(
            join_location(base, "/cdn/b"),
            "https://reg.example:5000/cdn/b"
        );
        assert_eq!(
            join_location(base, "//cdn.example/c"),
            "https://cdn.example/c"
        );
        assert_eq!(
            join_location(base, "d?sig=1"),
            "https://reg.example:5000/v2/library/m/blobs/d?sig=1"
        );
        assert_eq!(host_of(base), "reg.example:5000");
        assert_eq!(host_of("http://h/x"), "h");
    }

    #[test]
    fn encoding() {
        assert_eq!(
            percent_encode("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert_eq!(encode_path("dir/My File.gguf"), "dir/My%20File.gguf");
    }
}
