//! Server settings: bind address (OLLAMA_HOST's format), keep-alive durations, limits, auth, CORS.

use std::net::IpAddr;
use std::time::Duration;

use crate::error::ConfigError;

/// The default port, Ollama's, so clients work unchanged.
pub const DEFAULT_PORT: u16 = 11434;

/// How long a model stays loaded after its last request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload after this long idle (zero: as soon as the request ends).
    For(Duration),
    /// Never unload (a negative keep_alive).
    Forever,
}

impl KeepAlive {
    pub const DEFAULT: KeepAlive = KeepAlive::For(Duration::from_secs(300));

    /// Parse Ollama's keep_alive: a number of seconds (`300`, `-1`) or a Go duration (`"5m"`, `"1h30m"`,
    /// `"-1s"`, `"0"`). Anything negative means forever.
    pub fn parse_str(s: &str) -> Result<KeepAlive, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("keep_alive is empty".into());
        }
        if let Ok(n) = s.parse::<f64>() {
            return Self::from_seconds(n);
        }
        let (neg, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let secs = parse_go_duration(body).ok_or_else(|| {
            format!("invalid keep_alive {s:?}: expected seconds or a duration like \"5m\", \"30s\", \"1h\"")
        })?;
        if neg && secs > 0.0 {
            return Ok(KeepAlive::Forever);
        }
        Self::from_seconds(secs)
    }

    pub fn from_seconds(n: f64) -> Result<KeepAlive, String> {
        if n.is_nan() {
            return Err("keep_alive is NaN".into());
        }
        if n < 0.0 {
            return Ok(KeepAlive::Forever);
        }
        // Anything beyond a century is as good as forever and must not overflow Instant arithmetic.
        if n > 3.15e9 {
            return Ok(KeepAlive::Forever);
        }
        Ok(KeepAlive::For(Duration::from_secs_f64(n)))
    }

    /// From a JSON value as clients send it (number or string).
    pub fn from_json(v: &serde_json::Value) -> Result<Option<KeepAlive>, String> {
        match v {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::Number(n) => Self::from_seconds(n.as_f64().unwrap_or(0.0)).map(Some),
            serde_json::Value::String(s) => Self::parse_str(s).map(Some),
            other => Err(format!(
                "keep_alive must be a number of seconds or a duration string, got {other}"
            )),
        }
    }
}

/// Go's time.ParseDuration subset: a sequence of <number><unit> with units ns, us, µs, ms, s, m, h.
fn parse_go_duration(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut total = 0.0f64;
    if b.is_empty() {
        return None;
    }
    while i < b.len() {
        let start = i;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        let num: f64 = s[start..i].parse().ok()?;
        let ustart = i;
        while i < b.len() && !(b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        let scale = match &s[ustart..i] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += num * scale;
    }
    Some(total)
}

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindAddr {
    /// A literal IP or a host name (resolved when binding); empty means all interfaces.
    pub host: String,
    pub port: u16,
}

impl BindAddr {
    /// Parse OLLAMA_HOST's format: `[scheme://]host[:port][/path]`, e.g. `0.0.0.0`, `127.0.0.1:8080`,
    /// `[::1]:11434`, `http://localhost:9000`, `:11434`. A missing port is 11434 (80/443 with an explicit
    /// http/https scheme, as Ollama does).
    pub fn parse(s: &str) -> Result<BindAddr, ConfigError> {
        let s = s.trim();
        let bad = |why: &str| ConfigError::Host {
            value: s.to_string(),
            why: why.to_string(),
        };
        let (default_port, rest) = match s.split_once("://") {
            None => (DEFAULT_PORT, s),
            Some(("http", r)) => (80, r),
            Some(("https", r)) => (443, r),
            Some((scheme, _)) => return Err(bad(&format!("unknown scheme {scheme:?}"))),
        };
        let hostport = rest.split('/').next().unwrap_or("");
        if hostport.is_empty() {
            return Ok(BindAddr {
                host: "127.0.0.1".into(),
                port: default_port,
            });
        }
        // Bracketed IPv6, with or without a port.
        if let Some(inner) = hostport.strip_prefix('[') {
            let (ip, after) = inner.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            ip.parse::<IpAddr>()
                .map_err(|_| bad("not an IPv6 address inside brackets"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p).ok_or_else(|| bad("port must be 0..=65535"))?,
                None if after.is_empty() => default_port,
                None => return Err(bad("unexpected text after ']'")),
            };
            return Ok(BindAddr {
                host: ip.to_string(),
                port,
            });
        }
        // A bare IPv6 address has several colons and no port.
        if hostport.matches(':').count() > 1 {
            let ip: IpAddr = hostport.parse().map_err(|_| bad("not an IP address"))?;
            return Ok(BindAddr {
                host: ip.to_string(),
                port: default_port,
            });
        }
        match hostport.split_once(':') {
            Some((h, p)) => {
                let port = parse_port(p).ok_or_else(|| bad("port must be 0..=65535"))?;
                Ok(BindAddr {
                    host: h.to_string(),
                    port,
                })
            }
            None => Ok(BindAddr {
                host: hostport.to_string(),
                port: default_port,
            }),
        }
    }

    /// True when the address only accepts connections from this machine.
    pub fn is_loopback(&self) -> bool {
        match self.host.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => self.host.eq_ignore_ascii_case("localhost"),
        }
    }

    /// `host:port` for `TcpListener::bind` (empty host = all interfaces).
    pub fn socket_string(&self) -> String {
        let host = if self.host.is_empty() {
            "0.0.0.0"
        } else {
            &self.host
        };
        if host.contains(':') {
            format!("[{host}]:{}", self.port)
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn parse_port(p: &str) -> Option<u16> {
    p.parse::<u16>().ok()
}

/// Parse a byte size: `1234`, `512MiB`, `8GiB`, `8GB`, `2g`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let num: f64 = s[..split].parse().ok()?;
    let mult: f64 = match s[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024.0f64.powi(4),
        _ => return None,
    };
    let v = num * mult;
    (0.0..1.8e19).contains(&v).then_some(v as u64)
}

/// Everything `smelt serve` needs to know; see [`ServerConfig::from_env`] for the environment variables.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub bind: BindAddr,
    /// Required on requests when set (Bearer or x-api-key).
    pub api_key: Option<String>,
    /// Allow a non-loopback bind without a key.
    pub no_auth: bool,
    /// Extra allowed CORS origins (patterns with `*`), added to the loopback defaults.
    pub origins: Vec<String>,
    pub keep_alive: KeepAlive,
    /// Context window when a request does not set num_ctx. None: the model's trained context,
    /// halved until its KV cache fits in half the memory budget (never below 2048).
    pub default_num_ctx: Option<usize>,
    /// Memory the loaded models may use together; None: what the machine has available.
    pub max_memory: Option<u64>,
    pub max_loaded_models: usize,
    /// Requests waiting for a model before new ones get 503.
    pub max_queue: usize,
    /// Requests a model runs at once (continuous batching); 0 picks from memory.
    pub num_parallel: usize,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Engine threads per model (0: all cores).
    pub threads: usize,
    /// Log one line per generation to stderr (SMELT_DEBUG).
    pub debug: bool,
    /// Log generation request bodies to stderr (SMELT_LOG_REQUESTS).
    pub log_requests: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: BindAddr {
                host: "127.0.0.1".into(),
                port: DEFAULT_PORT,
            },
            api_key: None,
            no_auth: false,
            origins: Vec::new(),
            keep_alive: KeepAlive::DEFAULT,
            default_num_ctx: None,
            max_memory: None,
            max_loaded_models: 3,
            max_queue: 512,
            num_parallel: 0,
            max_body_bytes: 32 << 20,
            threads: 0,
            debug: false,
            log_requests: false,
        }
    }
}

impl ServerConfig {
    /// Defaults overridden by SMELT_HOST (or OLLAMA_HOST), SMELT_API_KEY, SMELT_ORIGINS (comma separated),
    /// SMELT_KEEP_ALIVE, SMELT_CONTEXT_LENGTH, SMELT_MAX_MEMORY, SMELT_MAX_LOADED_MODELS, SMELT_MAX_QUEUE,
    /// SMELT_NUM_PARALLEL, SMELT_MAX_BODY, SMELT_NUM_THREADS, SMELT_DEBUG.
    pub fn from_env() -> Result<ServerConfig, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// As [`from_env`](Self::from_env), reading variables through `get` (testable).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<ServerConfig, ConfigError> {
        let mut c = ServerConfig::default();
        if let Some(h) = get("SMELT_HOST").or_else(|| get("OLLAMA_HOST")) {
            c.bind = BindAddr::parse(&h)?;
        }
        c.api_key = get("SMELT_API_KEY");
        if let Some(o) = get("SMELT_ORIGINS").or_else(|| get("OLLAMA_ORIGINS")) {
            c.origins = o
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(k) = get("SMELT_KEEP_ALIVE").or_else(|| get("OLLAMA_KEEP_ALIVE")) {
            c.keep_alive = KeepAlive::parse_str(&k).map_err(|why| ConfigError::Var {
                name: "SMELT_KEEP_ALIVE".into(),
                value: k.clone(),
                why,
            })?;
        }
        let num = |name: &str, v: String| -> Result<usize, ConfigError> {
            v.trim().parse::<usize>().map_err(|_| ConfigError::Var {
                name: name.into(),
                value: v.clone(),
                why: "expected a non-negative integer".into(),
            })
        };
        if let Some(v) = get("SMELT_CONTEXT_LENGTH") {
            c.default_num_ctx = Some(num("SMELT_CONTEXT_LENGTH", v)?.max(1));
        }
        if let Some(v) = get("SMELT_MAX_MEMORY") {
            c.max_memory = Some(parse_bytes(&v).ok_or_else(|| ConfigError::Var {
                name: "SMELT_MAX_MEMORY".into(),
                value: v.clone(),
                why: "expected a size like 8GiB or 500MB".into(),
            })?);
        }
        if let Some(v) = get("SMELT_MAX_LOADED_MODELS") {
            c.max_loaded_models = num("SMELT_MAX_LOADED_MODELS", v)?.max(1);
        }
        if let Some(v) = get("SMELT_MAX_QUEUE") {
            c.max_queue = num("SMELT_MAX_QUEUE", v)?;
        }
        if let Some(v) = get("SMELT_NUM_PARALLEL") {
            c.num_parallel = num("SMELT_NUM_PARALLEL", v)?.max(1);
        }
        if let Some(v) = get("SMELT_MAX_BODY") {
            let n = parse_bytes(&v).ok_or_else(|| ConfigError::Var {
                name: "SMELT_MAX_BODY".into(),
                value: v.clone(),
                why: "expected a size like 32MiB".into(),
            })?;
            c.max_body_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        c.log_requests =
            get("SMELT_LOG_REQUESTS").is_some_and(|v| !matches!(v.trim(), "0" | "false" | "no"));
        c.debug = get("SMELT_DEBUG").is_some_and(|v| !matches!(v.trim(), "0" | "false" | "no"));
        if let Some(v) = get("SMELT_NUM_THREADS") {
            c.threads = num("SMELT_NUM_THREADS", v)?;
        }
        Ok(c)
    }

    /// Refuse to expose the server without a key unless `--no-auth` was given.
    pub fn check_auth(&self) -> Result<(), ConfigError> {
        if !self.bind.is_loopback() && self.api_key.is_none() && !self.no_auth {
            return Err(ConfigError::AuthRequired {
                bind: self.bind.socket_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(host: &str, port: u16) -> BindAddr {
        BindAddr {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn host_formats_parse_like_ollama() {
        assert_eq!(BindAddr::parse("").unwrap(), b("127.0.0.1", 11434));
        assert_eq!(BindAddr::parse("0.0.0.0").unwrap(), b("0.0.0.0", 11434));
        assert_eq!(
            BindAddr::parse("127.0.0.1:8080").unwrap(),
            b("127.0.0.1", 8080)
        );
        assert_eq!(BindAddr::parse(":9000").unwrap(), b("", 9000));
        assert_eq!(
            BindAddr::parse("http://localhost").unwrap(),
            b("localhost", 80)
        );
        assert_eq!(
            BindAddr::parse("https://example.com/x").unwrap(),
            b("example.com", 443)
        );
        assert_eq!(BindAddr::parse("[::1]:5000").unwrap(), b("::1", 5000));
        assert_eq!(BindAddr::parse("[::1]").unwrap(), b("::1", 11434));
        assert_eq!(BindAddr::parse("::1").unwrap(), b("::1", 11434));
        assert!(BindAddr::parse("127.0.0.1:99999").is_err());
        assert!(BindAddr::parse("127.0.0.1:abc").is_err());
        assert!(BindAddr::parse("ftp://x").is_err());
    }

    #[test]
    fn loopback_detection() {
        assert!(b("127.0.0.1", 1).is_loopback());
        assert!(b("127.5.0.1", 1).is_loopback());
        assert!(b("::1", 1).is_loopback());
        assert!(b("localhost", 1).is_loopback());
        assert!(!b("0.0.0.0", 1).is_loopback());
        assert!(!b("", 1).is_loopback());
        assert!(!b("192.168.1.2", 1).is_loopback());
        assert_eq!(b("::1", 7).socket_string(), "[::1]:7");
        assert_eq!(b("", 7).socket_string(), "0.0.0.0:7");
    }

    #[test]
    fn keep_alive_forms() {
        use std::time::Duration as D;
        assert_eq!(
            KeepAlive::parse_str("5m").unwrap(),
            KeepAlive::For(D::from_secs(300))
        );
        assert_eq!(
            KeepAlive::parse_str("1h30m").unwrap(),
            KeepAlive::For(D::from_secs(5400))
        );
        assert_eq!(
            KeepAlive::parse_str("1.5s").unwrap(),
            KeepAlive::For(D::from_millis(1500))
        );
        assert_eq!(KeepAlive::parse_str("0").unwrap(), KeepAlive::For(D::ZERO));
        assert_eq!(KeepAlive::parse_str("-1").unwrap(), KeepAlive::Forever);
        assert_eq!(KeepAlive::parse_str("-1m").unwrap(), KeepAlive::Forever);
        assert_eq!(
            KeepAlive::parse_str("30").unwrap(),
            KeepAlive::For(D::from_secs(30))
        );
        assert!(KeepAlive::parse_str("5 minutes").is_err());
        assert!(KeepAlive::parse_str("").is_err());
        let j = serde_json::json!(10);
        assert_eq!(
            KeepAlive::from_json(&j).unwrap(),
            Some(KeepAlive::For(D::from_secs(10)))
        );
        assert!(KeepAlive::from_json(&serde_json::json!(true)).is_err());
        assert_eq!(
            KeepAlive::from_json(&serde_json::Value::Null).unwrap(),
            None
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("500MB"), Some(500_000_000));
        assert_eq!(parse_bytes("1.5 gib"), Some(1_610_612_736));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-5"), None);
    }

    #[test]
    fn env_config_and_auth_rule() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = ServerConfig::from_lookup(env(&[
            ("SMELT_HOST", "0.0.0.0:1234"),
            ("SMELT_KEEP_ALIVE", "10s"),
        ]))
        .unwrap();
        assert_eq!(c.bind, b("0.0.0.0", 1234));
        assert_eq!(c.keep_alive, KeepAlive::For(Duration::from_secs(10)));
        assert!(c.check_auth().is_err());
        let mut c2 = c.clone();
        c2.no_auth = true;
        assert!(c2.check_auth().is_ok());
        let c3 =
            ServerConfig::from_lookup(env(&[("SMELT_HOST", "0.0.0.0"), ("SMELT_API_KEY", "k")]))
                .unwrap();
        assert!(c3.check_auth().is_ok());
        assert!(ServerConfig::default().check_auth().is_ok());
        assert!(ServerConfig::from_lookup(env(&[("SMELT_MAX_QUEUE", "x")])).is_err());
        let o = ServerConfig::from_lookup(env(&[(
            "SMELT_ORIGINS",
            "https://a.example, chrome-extension://*",
        )]))
        .unwrap();
        assert_eq!(o.origins, vec!["https://a.example", "chrome-extension://*"]);
    }
}
