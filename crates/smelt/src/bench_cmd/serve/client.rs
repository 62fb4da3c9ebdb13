//! One streaming request to OpenAI's `/v1/completions`, timed: when the request was sent, when
//! each text chunk arrived, what usage the server reported at the end.

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use serde_json::Value;

/// What one request measured. `error` is set for a failed request (the rest is then partial).
#[derive(Debug, Default)]
pub struct RequestResult {
    pub error: Option<String>,
    /// Request sent to first non-empty text chunk.
    pub ttft: Option<Duration>,
    /// Gaps between successive non-empty text chunks, in milliseconds.
    pub itl_ms: Vec<f64>,
    /// Request sent to the end of the stream.
    pub e2e: Duration,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    /// `length` when the generation ran to `max_tokens`, `stop` when the model ended it.
    pub finish_reason: Option<String>,
}

/// An HTTP client for one benchmark client (its own connection, kept alive between requests).
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        // Error statuses are results to report, with the server's message.
        .http_status_as_error(false)
        // Loopback benchmarks must not go through a proxy the environment names.
        .proxy(None)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// POST `body` to `url` and read the SSE stream to its end.
pub fn stream_completion(
    agent: &ureq::Agent,
    url: &str,
    api_key: Option<&str>,
    body: &str,
) -> RequestResult {
    let start = Instant::now();
    let mut sse = SseState::new(start);
    let res = send(agent, url, api_key, body, &mut sse);
    let mut r = sse.finish(Instant::now());
    if let Err(e) = res {
        r.error = Some(e);
    }
    r
}

fn send(
    agent: &ureq::Agent,
    url: &str,
    api_key: Option<&str>,
    body: &str,
    sse: &mut SseState,
) -> Result<(), String> {
    let mut req = agent.post(url).header("content-type", "application/json");
    if let Some(k) = api_key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let mut resp = req.send(body).map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let mut reader = BufReader::new(resp.body_mut().as_reader());
    if status != 200 {
        let mut text = String::new();
        // Error bodies are short JSON; a few KiB is all the report needs.
        let _ = reader.by_ref().take(4096).read_to_string(&mut text);
        return Err(format!("HTTP {status}: {}", text.trim()));
    }
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("reading the stream: {e}"))?;
        if n == 0 {
            break;
        }
        sse.line(line.trim_end_matches(['\r', '\n']), Instant::now())?;
    }
    if !sse.done {
        return Err("the stream ended without data: [DONE]".into());
    }
    if !sse.usage_seen {
        return Err("the stream carried no usage (stream_options.include_usage)".into());
    }
    Ok(())
}

/// The parser of a completions SSE stream, fed line by line with arrival times.
pub struct SseState {
    start: Instant,
    last_chunk: Option<Instant>,
    result: RequestResult,
    done: bool,
    usage_seen: bool,
}

impl SseState {
    pub fn new(start: Instant) -> SseState {
        SseState {
            start,
            last_chunk: None,
            result: RequestResult::default(),
            done: false,
            usage_seen: false,
        }
    }

    /// One line of the stream (without its line ending), received at `now`. An error event
    /// or a frame that is not JSON fails the request.
    pub fn line(&mut self, line: &str, now: Instant) -> Result<(), String> {
        // Blank lines end frames; `:` lines are keep-alive comments; `event:` is unused here.
        let Some(data) = line.strip_prefix("data:") else {
            return Ok(());
        };
        let data = data.trim_start();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if self.done {
            return Err("data after [DONE]".into());
        }
        let v: Value =
            serde_json::from_str(data).map_err(|e| format!("bad frame ({e}): {data:.200}"))?;
        if let Some(e) = v.get("error") {
            let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
            return Err(format!(
                "error event: {}",
                if msg.is_empty() { data } else { msg }
            ));
        }
        if let Some(c) = v["choices"].get(0) {
            if c["text"].as_str().is_some_and(|t| !t.is_empty()) {
                match self.last_chunk {
                    None => self.result.ttft = Some(now - self.start),
                    Some(prev) => self.result.itl_ms.push((now - prev).as_secs_f64() * 1e3),
                }
                self.last_chunk = Some(now);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                self.result.finish_reason = Some(f.to_string());
            }
        }
        let u = &v["usage"];
        if u.is_object() {
            self.usage_seen = true;
            self.result.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
            self.result.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
            // Servers that do not report cached tokens count as caching nothing.
            self.result.cached_tokens = u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0);
        }
        Ok(())
    }

    /// The measurements, the stream having ended at `now`.
    pub fn finish(mut self, now: Instant) -> RequestResult {
        self.result.e2e = now - self.start;
        self.result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames smelt's server sends for a two-token completion with usage, fed with
    /// arrival times 10, 30 and 45 ms after the request.
    #[test]
    fn parses_chunks_usage_and_timing() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut s = SseState::new(t0);
        let frames = [
            (
                10,
                r#"data: {"id":"cmpl-1","object":"text_completion","choices":[{"text":" Paris","index":0,"logprobs":null,"finish_reason":null}],"usage":null}"#,
            ),
            (10, ""),
            (20, ": keepalive"),
            (
                30,
                r#"data: {"id":"cmpl-1","choices":[{"text":".","index":0,"finish_reason":null}],"usage":null}"#,
            ),
            (
                45,
                r#"data: {"id":"cmpl-1","choices":[{"text":"","index":0,"finish_reason":"length"}],"usage":null}"#,
            ),
            (
                45,
                r#"data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":6,"completion_tokens":2,"total_tokens":8,"prompt_tokens_details":{"cached_tokens":4}}}"#,
            ),
            (46, "data: [DONE]"),
        ];
        for (t, l) in frames {
            s.line(l, ms(t)).unwrap();
        }
        assert!(s.done && s.usage_seen);
        let r = s.finish(ms(50));
        assert_eq!(r.ttft, Some(Duration::from_millis(10)));
        assert_eq!(r.itl_ms.len(), 1);
        assert!((r.itl_ms[0] - 20.0).abs() < 1e-6);
        assert_eq!(r.e2e, Duration::from_millis(50));
        assert_eq!(
            (r.prompt_tokens, r.completion_tokens, r.cached_tokens),
            (6, 2, 4)
        );
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn error_events_and_bad_frames_fail() {
        let t0 = Instant::now();
        let mut s = SseState::new(t0);
        let e = s
            .line(
                r#"data: {"error":{"message":"model crashed","type":"server_error"}}"#,
                t0,
            )
            .unwrap_err();
        assert!(e.contains("model crashed"), "{e}");
        let mut s = SseState::new(t0);
        assert!(s.line("data: {not json", t0).is_err());
        // Without usage cached tokens stay 0 and the request is still parsed.
        let mut s = SseState::new(t0);
        s.line(
            r#"data: {"choices":[{"text":"a"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
            t0,
        )
        .unwrap();
        assert_eq!(s.finish(t0).cached_tokens, 0);
    }
}
