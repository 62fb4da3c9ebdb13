//! The real server on a free port with the real SmolLM2, driven over raw HTTP/1.1: each API's
//! happy path, streaming framing, forced tool calls and schemas, lifecycle, guards and errors.
//! (tests/server drives the same server with the official Python clients.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use smelt_server::config::{BindAddr, ServerConfig};
use smelt_server::engine::EngineLoader;
use smelt_server::registry::StoreRegistry;
use smelt_server::AppState;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection; chunked bodies are decoded.
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{}\r\n", addr.port()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Type: application/json\r\n\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

fn post(addr: SocketAddr, path: &str, body: Value) -> Reply {
    call(addr, "POST", path, Some(&body), &[])
}

/// A server with `smollm2` in a store in a temporary directory, on its own runtime thread.
fn start(config: ServerConfig) -> SocketAddr {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("smelt-http-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = smelt_store::Store::open(smelt_store::StoreConfig::isolated(&dir)).unwrap();
    let gguf = smelt_testutil::model_path(smelt_testutil::SMOLLM2);
    let name = smelt_store::ModelName::parse("smollm2").unwrap();
    let spec = smelt_store::CreateSpec::from_path(&gguf);
    store
        .create(&name, &spec, std::path::Path::new("."), &mut |_| {})
        .unwrap();
    let tiny = smelt_store::ModelName::parse("smollm2-tiny").unwrap();
    let mut tiny_spec = smelt_store::CreateSpec::from_path(&gguf);
    tiny_spec.parameters.insert("num_ctx".into(), json!(48));
    store
        .create(&tiny, &tiny_spec, std::path::Path::new("."), &mut |_| {})
        .unwrap();
    let registry = Arc::new(StoreRegistry::new(
        store,
        smelt_store::PullOptions::default(),
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (listener, addr) = smelt_server::bind(&config).await.unwrap();
            tx.send(addr).unwrap();
            let app = AppState::new(config, Arc::new(EngineLoader), registry);
            smelt_server::serve_on(listener, app, std::future::pending())
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap()
}

fn config() -> ServerConfig {
    ServerConfig {
        bind: BindAddr {
            host: "127.0.0.1".into(),
            port: 0,
        },
        default_num_ctx: Some(1024),
        ..ServerConfig::default()
    }
}

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| start(config()))
}

#[test]
fn ollama_chat_stream_and_not() {
    let addr = server();
    let body = json!({"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],
        "options": {"num_predict": 4, "seed": 1}, "stream": false});
    post(addr, "/api/chat", body.clone()); // same prefix-cache state for both below
    let r = post(addr, "/api/chat", body.clone());
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["done"], true);
    assert_eq!(j["message"]["role"], "assistant");
    for k in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ] {
        assert!(j[k].is_u64(), "{k} in {j}");
    }
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let s = post(addr, "/api/chat", streamed);
    assert_eq!(s.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = s
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.last().unwrap()["done"].as_bool().unwrap());
    let text: String = lines
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, j["message"]["content"].as_str().unwrap());
}

#[test]
fn openai_sse_and_anthropic_events() {
    let addr = server();
    let r = post(
        addr,
        "/v1/chat/completions",
        json!({"model": "smollm2", "stream": true, "max_tokens": 3,
        "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_eq!(r.status, 200);
    let t = r.text();
    assert!(t.trim_end().ends_with("data: [DONE]"), "{t}");
    let frames: Vec<Value> = t
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(frames[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        frames.last().unwrap()["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            >= 1
    );

    let r = post(
        addr,
        "/v1/messages?beta=true",
        json!({"model": "smollm2", "stream": true, "max_tokens": 3,
        "metadata": {"user_id": "x"}, "messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_eq!(r.status, 200);
    let kinds: Vec<String> = r
        .text()
        .split("\n\n")
        .filter_map(|f| {
            f.lines()
                .next()?
                .strip_prefix("event: ")
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        &kinds[..3],
        ["message_start", "ping", "content_block_start"]
    );
    assert_eq!(
        &kinds[kinds.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
}

#[test]
fn forced_tool_call_and_schema_output_are_valid() {
    let addr = server();
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}}]);
    let r = post(
        addr,
        "/v1/chat/completions",
        json!({"model": "smollm2", "max_tokens": 30, "seed": 3, "tools": tools,
        "tool_choice": "required", "messages": [{"role": "user", "content": "Weather in Oslo?"}]}),
    );
    let j = r.json();
    assert_eq!(j["choices"][0]["finish_reason"], "tool_calls", "{j}");
    let call = &j["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string());

    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}}, "required": ["n", "ok"]});
    let r = post(
        addr,
        "/api/generate",
        json!({"model": "smollm2", "prompt": "A number:", "format": schema,
        "stream": false, "options": {"num_predict": 20, "seed": 4}}),
    );
    let v: Value = serde_json::from_str(r.json()["response"].as_str().unwrap()).unwrap();
    assert!(v["n"].is_i64() && v["ok"].is_boolean(), "{v}");
}

#[test]
fn lifecycle_and_context_limits() {
    // Its own server: unloading must not race other tests' requests.
    let addr = start(config());
    let r = post(
        addr,
        "/api/generate",
        json!({"model": "smollm2", "prompt": ""}),
    );
    assert_eq!(r.json()["done_reason"], "load");
    let ps = call(addr, "GET", "/api/ps", None, &[]).json();
    let m = &ps["models"][0];
    assert_eq!(m["name"], "smollm2:latest", "{ps}");
    // The device it runs on; on a GPU the whole model is in its memory.
    let device = m["device"].as_str().unwrap_or_default();
    let size = m["size"].as_u64().unwrap_or_default();
    assert!(device == "cpu" || device.starts_with("cuda"), "{m}");
    let vram = if device == "cpu" { 0 } else { size };
    assert_eq!(m["size_vram"], vram, "{m}");
    let r = post(
        addr,
        "/api/generate",
        json!({"model": "smollm2", "prompt": "", "keep_alive": 0}),
    );
    assert_eq!(r.json()["done_reason"], "unload");
    assert_eq!(
        call(addr, "GET", "/api/ps", None, &[]).json()["models"],
        json!([])
    );

    // num_ctx 48 from the model's parameters: a long prompt is refused, max_tokens is clamped.
    let r = post(
        addr,
        "/api/generate",
        json!({"model": "smollm2-tiny", "prompt": "word ".repeat(60), "stream": false}),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("context window is 48"));
    let r = post(
        addr,
        "/v1/messages",
        json!({"model": "smollm2-tiny", "max_tokens": 32000, "temperature": 0,
        "messages": [{"role": "user", "content": "Count to one hundred."}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let u = &r.json()["usage"];
    let used = u["input_tokens"].as_u64().unwrap()
        + u["cache_read_input_tokens"].as_u64().unwrap()
        + u["output_tokens"].as_u64().unwrap();
    assert!(used <= 48, "{u}");
}

#[test]
fn errors_in_each_shape_and_guards() {
    let addr = server();
    let r = call(addr, "POST", "/api/chat", None, &[]);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());
    let r = post(
        addr,
        "/v1/chat/completions",
        json!({"model": "missing", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "not_found_error");
    let r = post(
        addr,
        "/v1/messages",
        json!({"model": "smollm2", "max_tokens": "lots", "messages": []}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    let r = call(addr, "GET", "/api/chat", None, &[]);
    assert_eq!(r.status, 405);
    let r = call(
        addr,
        "GET",
        "/api/tags",
        None,
        &[("Host", "attacker.example")],
    );
    assert_eq!(r.status, 403);
    let r = call(
        addr,
        "GET",
        "/api/tags",
        None,
        &[("Origin", "https://attacker.example")],
    );
    assert_eq!(r.status, 403);
    let r = call(
        addr,
        "GET",
        "/api/tags",
        None,
        &[("Origin", "http://localhost:8080")],
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:8080")
    );
    assert!(call(addr, "GET", "/metrics", None, &[])
        .text()
        .contains("smelt_requests_total{endpoint=\"/api/tags\",code=\"200\"}"));
}

#[test]
fn api_key_is_enforced() {
    let addr = start(ServerConfig {
        api_key: Some("k3y".into()),
        ..config()
    });
    assert_eq!(call(addr, "GET", "/", None, &[]).status, 200);
    let r = call(addr, "GET", "/v1/models", None, &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        call(
            addr,
            "GET",
            "/v1/models",
            None,
            &[("Authorization", "Bearer k3y")]
        )
        .status,
        200
    );
    assert_eq!(
        call(addr, "GET", "/api/tags", None, &[("x-api-key", "k3y")]).status,
        200
    );
    assert_eq!(
        call(addr, "GET", "/api/tags", None, &[("x-api-key", "nope")]).status,
        401
    );
    // Without a key a non-loopback bind is refused before listening.
    let open = ServerConfig {
        bind: BindAddr {
            host: "0.0.0.0".into(),
            port: 0,
        },
        ..config()
    };
    assert!(open.check_auth().is_err());
}
