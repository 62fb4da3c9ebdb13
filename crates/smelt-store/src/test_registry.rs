//! An in-process HTTP/1.1 server speaking the Ollama registry protocol and Hugging Face's file
//! endpoints, for tests (feature `test-registry`). It can demand a bearer token, answer blob
//! requests with a 307 to a "CDN" path, honour Range requests, drop a connection mid-body, serve
//! a corrupted blob, ignore Range, and throttle its sending rate. It logs every request.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::digest::Digest;
use crate::manifest::{Layer, Manifest, ModelConfig, MEDIA_CONFIG, MEDIA_MODEL};

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
    /// Body bytes actually sent.
    pub sent: u64,
}

impl RequestRecord {
    /// The first byte a Range request asked for (`bytes=START-...`).
    pub fn range_start(&self) -> Option<u64> {
        self.range
            .as_deref()?
            .strip_prefix("bytes=")?
            .split('-')
            .next()?
            .parse()
            .ok()
    }
}

#[derive(Default)]
struct State {
    blobs: HashMap<Digest, Arc<[u8]>>,
    manifests: HashMap<String, Vec<u8>>,
    hf_files: HashMap<String, Vec<(String, Digest)>>,
    token: Option<String>,
    redirect_blobs: bool,
    drop_after: Vec<u64>,
    corrupt: HashSet<Digest>,
    ignore_range: bool,
    bytes_per_sec: Option<u64>,
    log: Vec<RequestRecord>,
}

/// The server; it stops when dropped. A second port plays the CDN that blob redirects point to,
/// so a redirect crosses hosts as it does in the wild.
pub struct TestRegistry {
    addrs: Addrs,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Vec<JoinHandle<()>>,
}

#[derive(Clone, Copy)]
struct Addrs {
    registry: SocketAddr,
    cdn: SocketAddr,
}

impl TestRegistry {
    /// Starts a server on a free loopback port.
    pub fn start() -> TestRegistry {
        let bind = || TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let (registry, cdn) = (bind(), bind());
        let addrs = Addrs {
            registry: registry.local_addr().expect("local address"),
            cdn: cdn.local_addr().expect("local address"),
        };
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = [registry, cdn]
            .into_iter()
            .map(|listener| {
                let (st, sp) = (state.clone(), stop.clone());
                thread::spawn(move || {
                    for conn in listener.incoming() {
                        if sp.load(Ordering::Relaxed) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let st = st.clone();
                        thread::spawn(move || handle(conn, addrs, &st));
                    }
                })
            })
            .collect();
        TestRegistry {
            addrs,
            state,
            stop,
            accept,
        }
    }

    /// `127.0.0.1:PORT`, the host part of model names served here.
    pub fn host(&self) -> String {
        self.addrs.registry.to_string()
    }

    /// `http://127.0.0.1:PORT`, the Hugging Face endpoint served here.
    pub fn url(&self) -> String {
        format!("http://{}", self.addrs.registry)
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("server state"))
    }

    /// Serves `data` as a blob; `digest` may be given to skip hashing large data.
    pub fn add_blob(&self, data: Arc<[u8]>, digest: Option<Digest>) -> Digest {
        let digest = digest.unwrap_or_else(|| Digest::of_bytes(&data));
        self.with(|s| s.blobs.insert(digest, data));
        digest
    }

    /// Serves a manifest as `/v2/{namespace}/{model}/manifests/{tag}`.
    pub fn add_manifest(&self, namespace: &str, model: &str, tag: &str, bytes: Vec<u8>) {
        self.with(|s| {
            s.manifests
                .insert(format!("{namespace}/{model}/{tag}"), bytes)
        });
    }

    /// Serves a GGUF model: the blob, a config blob, and a manifest naming both (plus `extra` layers).
    /// Returns the manifest bytes.
    pub fn add_model(
        &self,
        namespace: &str,
        model: &str,
        tag: &str,
        gguf: Arc<[u8]>,
        digest: Option<Digest>,
        extra: Vec<(&str, Vec<u8>)>,
    ) -> Vec<u8> {
        let size = gguf.len() as u64;
        let digest = self.add_blob(gguf, digest);
        let mut layers = vec![Layer::new(MEDIA_MODEL, digest, size)];
        for (media, bytes) in extra {
            let len = bytes.len() as u64;
            layers.push(Layer::new(media, self.add_blob(bytes.into(), None), len));
        }
        let config = ModelConfig {
            model_format: "gguf".into(),
            model_family: "llama".into(),
            ..Default::default()
        };
        let config = serde_json::to_vec(&config).expect("config");
        let config_len = config.len() as u64;
        let config_digest = self.add_blob(config.into(), None);
        let manifest =
            Manifest::new(Layer::new(MEDIA_CONFIG, config_digest, config_len), layers).to_bytes();
        self.add_manifest(namespace, model, tag, manifest.clone());
        manifest
    }

    /// Serves a file of a Hugging Face repo (`org/repo`), stored as an LFS object with `digest`.
    pub fn add_hf_file(
        &self,
        repo: &str,
        path: &str,
        data: Arc<[u8]>,
        digest: Option<Digest>,
    ) -> Digest {
        let digest = self.add_blob(data, digest);
        self.with(|s| {
            s.hf_files
                .entry(repo.to_string())
                .or_default()
                .push((path.to_string(), digest))
        });
        digest
    }

    /// Demands `Authorization: Bearer <token>` on `/v2/` routes, issued by `/token`.
    pub fn require_token(&self, token: &str) {
        self.with(|s| s.token = Some(token.to_string()));
    }

    /// Answers registry blob requests with a 307 to `/cdn/<digest>` on the CDN port.
    pub fn redirect_blobs(&self, on: bool) {
        self.with(|s| s.redirect_blobs = on);
    }

    /// The next blob body sent closes its connection after `bytes` bytes (queued, one per response).
    pub fn drop_connection_after(&self, bytes: u64) {
        self.with(|s| s.drop_after.push(bytes));
    }

    /// Serves this blob with one byte flipped.
    pub fn corrupt_blob(&self, digest: &Digest, on: bool) {
        self.with(|s| {
            if on {
                s.corrupt.insert(*digest)
            } else {
                s.corrupt.remove(digest)
            }
        });
    }

    /// Answers Range requests with the whole blob (200).
    pub fn ignore_range(&self, on: bool) {
        self.with(|s| s.ignore_range = on);
    }

    /// Limits each response's body rate.
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        self.with(|s| s.bytes_per_sec = bytes_per_sec);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.with(|s| s.log.clone())
    }

    pub fn clear_log(&self) {
        self.with(|s| s.log.clear());
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addrs.registry);
        let _ = TcpStream::connect(self.addrs.cdn);
        for t in self.accept.drain(..) {
            let _ = t.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
        if headers.len() > 100 {
            return None;
        }
    }
    Some(Request {
        method,
        path,
        headers,
    })
}

/// A response: status, headers, and an optional body slice of a blob.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Empty,
    Bytes(Vec<u8>),
    Blob {
        data: Arc<[u8]>,
        start: u64,
        end: u64,
        corrupt: bool,
    },
}

impl Reply {
    fn new(status: u16, body: Body) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body,
        }
    }
    fn json(status: u16, v: serde_json::Value) -> Reply {
        let mut r = Reply::new(status, Body::Bytes(v.to_string().into_bytes()));
        r.headers
            .push(("Content-Type".into(), "application/json".into()));
        r
    }
    fn redirect(status: u16, location: String) -> Reply {
        let mut r = Reply::new(status, Body::Empty);
        r.headers.push(("Location".into(), location));
        r
    }
}

fn handle(mut conn: TcpStream, addrs: Addrs, state: &Mutex<State>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(req) = read_request(&conn) else {
        return;
    };
    let (reply, drop_after, rate) = {
        let mut s = state.lock().expect("server state");
        let reply = route(&req, addrs, &mut s);
        let drop_after = match reply.body {
            Body::Blob { .. } if !s.drop_after.is_empty() => Some(s.drop_after.remove(0)),
            _ => None,
        };
        (reply, drop_after, s.bytes_per_sec)
    };
    let len = match &reply.body {
        Body::Empty => 0,
        Body::Bytes(b) => b.len() as u64,
        Body::Blob { start, end, .. } => end - start,
    };
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {len}\r\nConnection: close\r\n",
        reply.status
    );
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut sent = 0u64;
    if conn.write_all(head.as_bytes()).is_ok() && req.method != "HEAD" {
        sent = write_body(&mut conn, &reply.body, drop_after, rate);
    }
    state.lock().expect("server state").log.push(RequestRecord {
        method: req.method.clone(),
        path: req.path.clone(),
        range: req.header("range").map(str::to_string),
        authorization: req.header("authorization").map(str::to_string),
        status: reply.status,
        sent,
    });
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}

fn write_body(
    conn: &mut TcpStream,
    body: &Body,
    drop_after: Option<u64>,
    rate: Option<u64>,
) -> u64 {
    match body {
        Body::Empty => 0,
        Body::Bytes(b) => conn.write_all(b).map(|_| b.len() as u64).unwrap_or(0),
        Body::Blob {
            data,
            start,
            end,
            corrupt,
        } => {
            let flip_at = data.len() as u64 / 2;
            let limit = drop_after.map_or(*end, |n| (*start + n).min(*end));
            let chunk = rate.map_or(1 << 20, |r| (r / 20).max(1)) as usize;
            let mut pos = *start;
            while pos < limit {
                let n = chunk.min((limit - pos) as usize);
                let mut piece = data[pos as usize..pos as usize + n].to_vec();
                if *corrupt && (pos..pos + n as u64).contains(&flip_at) {
                    piece[(flip_at - pos) as usize] ^= 0xff;
                }
                if conn.write_all(&piece).is_err() {
                    break;
                }
                pos += n as u64;
                if rate.is_some() {
                    thread::sleep(Duration::from_millis(50));
                }
            }
            pos - start
        }
    }
}

fn route(req: &Request, addrs: Addrs, s: &mut State) -> Reply {
    let (addr, cdn) = (addrs.registry, addrs.cdn);
    let path = req.path.split('?').next().unwrap_or("");
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["token"] => match &s.token {
            Some(t) if req.path.contains("scope=repository%3A") => {
                Reply::json(200, serde_json::json!({ "token": t }))
            }
            _ => Reply::json(400, serde_json::json!({"error": "bad token request"})),
        },
        ["v2", ns, model, kind @ ("manifests" | "blobs"), reference] => {
            if let Some(token) = &s.token {
                if req.header("authorization") != Some(&format!("Bearer {token}")) {
                    let mut r = Reply::json(
                        401,
                        serde_json::json!({"errors": [{"code": "UNAUTHORIZED"}]}),
                    );
                    let challenge = format!(
                        "Bearer realm=\"http://{addr}/token\",service=\"test-registry\",scope=\"repository:{ns}/{model}:pull\""
                    );
                    r.headers.push(("WWW-Authenticate".into(), challenge));
                    return r;
                }
            }
            if *kind == "manifests" {
                return match s.manifests.get(&format!("{ns}/{model}/{reference}")) {
                    Some(m) => {
                        let mut r = Reply::new(200, Body::Bytes(m.clone()));
                        r.headers.push((
                            "Content-Type".into(),
                            crate::manifest::MEDIA_MANIFEST.into(),
                        ));
                        r
                    }
                    None => Reply::json(
                        404,
                        serde_json::json!({"errors": [{"code": "MANIFEST_UNKNOWN"}]}),
                    ),
                };
            }
            let Ok(digest) = Digest::parse(reference) else {
                return Reply::json(400, serde_json::json!({}));
            };
            if s.redirect_blobs {
                return Reply::redirect(307, format!("http://{cdn}/cdn/{}", digest.file_name()));
            }
            serve_blob(req, s, &digest)
        }
        ["cdn", name] => match Digest::parse(name) {
            Ok(d) => serve_blob(req, s, &d),
            Err(_) => Reply::json(404, serde_json::json!({})),
        },
        ["api", "models", org, repo, "tree", "main"] => {
            match s.hf_files.get(&format!("{org}/{repo}")) {
                Some(files) => {
                    let list: Vec<serde_json::Value> = files
                        .iter()
                        .map(|(p, d)| {
                            let size = s.blobs.get(d).map_or(0, |b| b.len());
                            serde_json::json!({"type": "file", "oid": "0", "size": size, "path": p,
                            "lfs": {"oid": d.hex(), "size": size, "pointerSize": 134}})
                        })
                        .collect();
                    Reply::json(200, serde_json::Value::Array(list))
                }
                None => Reply::json(404, serde_json::json!({"error": "Repository not found"})),
            }
        }
        [org, repo, "resolve", "main", rest @ ..] => {
            let file = rest.join("/").replace("%20", " ");
            match s
                .hf_files
                .get(&format!("{org}/{repo}"))
                .and_then(|f| f.iter().find(|(p, _)| *p == file))
            {
                Some((_, d)) => Reply::redirect(302, format!("http://{cdn}/cdn/{}", d.file_name())),
                None => Reply::json(404, serde_json::json!({"error": "Entry not found"})),
            }
        }
        _ => Reply::json(404, serde_json::json!({"error": "no such route"})),
    }
}

fn serve_blob(req: &Request, s: &State, digest: &Digest) -> Reply {
    let Some(data) = s.blobs.get(digest).cloned() else {
        return Reply::json(
            404,
            serde_json::json!({"errors": [{"code": "BLOB_UNKNOWN"}]}),
        );
    };
    let size = data.len() as u64;
    let corrupt = s.corrupt.contains(digest);
    let range = if s.ignore_range {
        None
    } else {
        req.header("range").and_then(|r| parse_range(r, size))
    };
    match range {
        Some(Ok((start, end))) => {
            let mut r = Reply::new(
                206,
                Body::Blob {
                    data,
                    start,
                    end: end + 1,
                    corrupt,
                },
            );
            r.headers.push((
                "Content-Range".into(),
                format!("bytes {start}-{end}/{size}"),
            ));
            r
        }
        Some(Err(())) => {
            let mut r = Reply::new(416, Body::Empty);
            r.headers
                .push(("Content-Range".into(), format!("bytes */{size}")));
            r
        }
        None => Reply::new(
            200,
            Body::Blob {
                data,
                start: 0,
                end: size,
                corrupt,
            },
        ),
    }
}

/// `bytes=START-END` or `bytes=START-` to an inclusive range within `size`.
fn parse_range(header: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 = if b.trim().is_empty() {
        size.saturating_sub(1)
    } else {
        b.trim().parse().ok()?
    };
    if start >= size || end < start {
        return Some(Err(()));
    }
    Some(Ok((start, end.min(size - 1))))
}

/// Writes a minimal wheel (a zip archive, entries stored uncompressed) holding `files` plus the
/// `.dist-info` metadata pip reads. `dist` is the distribution name with `_` for `-`.
pub fn write_wheel(
    dir: &Path,
    dist: &str,
    version: &str,
    files: &[(&str, &[u8])],
) -> std::io::Result<std::path::PathBuf> {
    let path = dir.join(format!("{dist}-{version}-py3-none-any.whl"));
    let info = format!("{dist}-{version}.dist-info");
    let metadata = format!(
        "Metadata-Version: 2.1\nName: {}\nVersion: {version}\n",
        dist.replace('_', "-")
    );
    let wheel =
        "Wheel-Version: 1.0\nGenerator: smelt-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
    let mut entries: Vec<(String, &[u8])> =
        files.iter().map(|(n, d)| (n.to_string(), *d)).collect();
    entries.push((format!("{info}/METADATA"), metadata.as_bytes()));
    entries.push((format!("{info}/WHEEL"), wheel.as_bytes()));
    entries.push((format!("{info}/RECORD"), b""));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut central = Vec::new();
    let mut offset = 0u64;
    for (name, data) in &entries {
        let crc = crc32(data);
        let (n, size) = (name.len() as u16, data.len() as u32);
        let mut local = Vec::new();
        local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        local.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, stored, time, date
        for v in [crc, size, size] {
            local.extend_from_slice(&v.to_le_bytes());
        }
        local.extend_from_slice(&n.to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        out.write_all(&local)?;
        out.write_all(data)?;
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // made by, needed, flags, stored, time, date
        for v in [crc, size, size] {
            central.extend_from_slice(&v.to_le_bytes());
        }
        central.extend_from_slice(&n.to_le_bytes());
        central.extend_from_slice(&[0; 8]); // extra, comment, disk, internal attrs
        central.extend_from_slice(&0u32.to_le_bytes()); // external attrs
        central.extend_from_slice(&(offset as u32).to_le_bytes());
        central.extend_from_slice(name.as_bytes());
        offset += local.len() as u64 + data.len() as u64;
    }
    out.write_all(&central)?;
    let mut end = Vec::new();
    end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    end.extend_from_slice(&[0; 4]);
    end.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    end.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    end.extend_from_slice(&(central.len() as u32).to_le_bytes());
    end.extend_from_slice(&(offset as u32).to_le_bytes());
    end.extend_from_slice(&0u16.to_le_bytes());
    out.write_all(&end)?;
    out.flush()?;
    Ok(path)
}

fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=95-200", 100), Some(Ok((95, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("items=1-2", 100), None);
    }
}
