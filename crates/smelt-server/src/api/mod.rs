//! The three wire dialects, plus the small routes (health, metrics, the chat page).
//! Each dialect translates its request into [`crate::request::InferRequest`] and the
//! [`crate::request::Out`] stream back into its own frames; nothing else happens here.

pub mod anthropic;
pub mod embed;
pub mod misc;
pub mod ollama;
pub mod ollama_models;
pub mod openai;
pub mod openai_more;

use std::collections::VecDeque;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorKind};
use crate::request::Out;
use crate::run::Generation;

/// The body, or the error to answer when it could not be read (too large, broken stream).
pub fn body_bytes(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorKind::TooLarge,
                "the request body is larger than the server's limit (SMELT_MAX_BODY)",
            )
        } else {
            ApiError::invalid(format!(
                "could not read the request body: {}",
                e.body_text()
            ))
        }
    })
}

/// Print a request body to stderr when SMELT_LOG_REQUESTS is set (to see what a client sends).
pub fn log_request(app: &crate::AppState, route: &str, body: &[u8]) {
    if app.config.log_requests {
        eprintln!("smelt: request {route} {}", String::from_utf8_lossy(body));
    }
}

/// A streamed response whose frames come from translating a generation's events.
/// `head` frames go first; `translate` returns the frames for each event; the stream ends after
/// Done or Error. `keepalive` is sent when nothing else was for [`KEEPALIVE_EVERY`] (a long
/// prompt evaluating), so proxies and clients do not give up on a quiet connection.
pub fn stream_response<F>(
    content_type: &'static str,
    gen: Generation,
    head: Vec<Bytes>,
    keepalive: Option<Bytes>,
    translate: F,
) -> Response
where
    F: FnMut(Out) -> Vec<Bytes> + Send + 'static,
{
    struct St<F> {
        gen: Generation,
        pending: VecDeque<Bytes>,
        translate: F,
        ended: bool,
        keepalive: Option<Bytes>,
    }
    let st = St {
        gen,
        pending: head.into(),
        translate,
        ended: false,
        keepalive,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(b) = st.pending.pop_front() {
                return Some((Ok::<Bytes, std::io::Error>(b), st));
            }
            if st.ended {
                return None;
            }
            let next = match &st.keepalive {
                Some(k) => match tokio::time::timeout(KEEPALIVE_EVERY, st.gen.recv()).await {
                    Ok(ev) => ev,
                    Err(_) => {
                        let k = k.clone();
                        return Some((Ok(k), st));
                    }
                },
                None => st.gen.recv().await,
            };
            match next {
                Some(ev) => {
                    st.ended = matches!(ev, Out::Done { .. } | Out::Error(_));
                    st.pending.extend((st.translate)(ev));
                }
                None => st.ended = true,
            }
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies (nginx) must not buffer token streams.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Quiet time after which a keepalive frame is sent.
pub const KEEPALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One NDJSON line.
pub fn ndjson(v: &serde_json::Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

/// One SSE `data:` frame.
pub fn sse_data(v: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// One SSE frame with an event name.
pub fn sse_event(event: &str, v: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {v}\n\n"))
}

/// Durations as Ollama reports them (nanoseconds).
pub fn nanos(d: std::time::Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}
