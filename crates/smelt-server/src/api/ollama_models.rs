//! Ollama's model management routes: version, tags, show, ps, delete, copy, pull, create.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::ollama::err;
use super::{body_bytes, ndjson};
use crate::backend::{ModelRecord, PullStatus};
use crate::config::KeepAlive;
use crate::error::{ApiError, DialectError};
use crate::request::GenOptions;
use crate::run::{self, parse_body, registry_error, resolve};
use crate::timefmt;
use crate::AppState;

type Result<T> = std::result::Result<T, DialectError>;

// ---------------------------------------------------------------------------------------------
// Model management
// ---------------------------------------------------------------------------------------------

pub async fn version() -> Response {
    Json(json!({"version": env!("CARGO_PKG_VERSION")})).into_response()
}

/// A model as /api/tags lists it.
pub fn tag_json(r: &ModelRecord) -> Value {
    json!({
        "name": r.name,
        "model": r.name,
        "modified_at": timefmt::rfc3339(r.modified),
        "size": r.size,
        "digest": r.digest,
        "details": r.details,
    })
}

pub async fn tags(State(app): State<Arc<AppState>>) -> Result<Response> {
    let reg = app.registry.clone();
    let list = tokio::task::spawn_blocking(move || reg.list())
        .await
        .map_err(|e| err(ApiError::internal(e.to_string())))?
        .map_err(|e| err(registry_error("", e)))?;
    Ok(Json(json!({"models": list.iter().map(tag_json).collect::<Vec<_>>()})).into_response())
}

#[derive(Deserialize)]
struct ShowBody {
    #[serde(default)]
    model: Option<String>,
    /// The old name of the field.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    verbose: bool,
}

pub async fn show(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body_bytes(body).map_err(err)?;
    let b: ShowBody = parse_body(&body).map_err(err)?;
    let name = b
        .model
        .or(b.name)
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| err(ApiError::invalid_param("model", "model is required")))?;
    let record = resolve(&app, &name).await.map_err(err)?;
    let verbose = b.verbose;
    let path = record.path.clone();
    let meta =
        tokio::task::spawn_blocking(move || crate::registry::gguf_model_info(&path, verbose))
            .await
            .map_err(|e| err(ApiError::internal(e.to_string())))?
            .map_err(|e| err(ApiError::internal(e)))?;
    let parameters: String = record
        .params
        .iter()
        .flat_map(|(k, v)| match v {
            Value::Array(items) => items.iter().map(|i| format!("{k} {i}")).collect::<Vec<_>>(),
            other => vec![format!("{k} {other}")],
        })
        .collect::<Vec<_>>()
        .join("\n");
    let template = record
        .template
        .clone()
        .or(meta.chat_template.clone())
        .unwrap_or_default();
    let mut o = json!({
        "modelfile": record.modelfile,
        "parameters": parameters,
        "template": template,
        "details": record.details,
        "model_info": meta.model_info,
        "capabilities": ["completion", "tools", "embedding"],
        "modified_at": timefmt::rfc3339(record.modified),
    });
    if let Some(s) = &record.system {
        o["system"] = json!(s);
    }
    if !record.license.is_empty() {
        o["license"] = json!(record.license.join("\n"));
    }
    Ok(Json(o).into_response())
}

pub async fn ps(State(app): State<Arc<AppState>>) -> Response {
    let models: Vec<Value> = app
        .sched
        .loaded()
        .iter()
        .map(|s| {
            // Never-expiring and busy models report a far-future time, as Ollama does.
            let expires = match (s.expires_at(), s.keep_alive()) {
                (Some(t), _) => timefmt::rfc3339(t),
                (None, KeepAlive::Forever) => "2318-01-01T00:00:00.000000000Z".to_string(),
                (None, KeepAlive::For(d)) => timefmt::rfc3339(std::time::SystemTime::now() + d),
            };
            // On the GPU the whole model (weights and KV cache) is in device memory.
            let device = s.model.facts().device;
            let size_vram = if device.starts_with("cuda") {
                s.size
            } else {
                0
            };
            let mut m = json!({
                "name": s.name(),
                "model": s.name(),
                "size": s.size,
                "digest": s.record.digest,
                "details": s.record.details,
                "expires_at": expires,
                "size_vram": size_vram,
                "device": device,
                "context_length": s.num_ctx,
                "num_parallel": s.parallel,
            });
            // Extension: the KV pool the running requests share, and its prefix cache.
            if let Some(kv) = s.model.kv_cache() {
                m["kv_cache"] = json!({
                    "size": kv.bytes,
                    "block_positions": kv.block_positions,
                    "blocks": kv.blocks_total,
                    "blocks_used": kv.blocks_used,
                    "blocks_cached": kv.blocks_cached,
                    "running": kv.running,
                    "waiting": kv.waiting,
                });
            }
            m
        })
        .collect();
    Json(json!({"models": models})).into_response()
}

#[derive(Deserialize)]
struct DeleteBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

pub async fn delete(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body_bytes(body).map_err(err)?;
    let b: DeleteBody = parse_body(&body).map_err(err)?;
    let name = b
        .model
        .or(b.name)
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| err(ApiError::invalid_param("model", "model is required")))?;
    // A loaded copy goes first.
    if let Ok(r) = resolve(&app, &name).await {
        app.sched.unload(&r.path);
    }
    let reg = app.registry.clone();
    let n = name.clone();
    tokio::task::spawn_blocking(move || reg.delete(&n))
        .await
        .map_err(|e| err(ApiError::internal(e.to_string())))?
        .map_err(|e| err(registry_error(&name, e)))?;
    Ok(StatusCode::OK.into_response())
}

#[derive(Deserialize)]
struct CopyBody {
    source: String,
    destination: String,
}

pub async fn copy(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body_bytes(body).map_err(err)?;
    let b: CopyBody = parse_body(&body).map_err(err)?;
    if b.source.trim().is_empty() || b.destination.trim().is_empty() {
        return Err(err(ApiError::invalid(
            "source and destination are required",
        )));
    }
    let reg = app.registry.clone();
    let (s, d) = (b.source.clone(), b.destination.clone());
    tokio::task::spawn_blocking(move || reg.copy(&s, &d))
        .await
        .map_err(|e| err(ApiError::internal(e.to_string())))?
        .map_err(|e| err(registry_error(&b.source, e)))?;
    Ok(StatusCode::OK.into_response())
}

#[derive(Deserialize)]
struct PullBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
}

fn pull_json(p: &PullStatus) -> Value {
    let mut o = json!({"status": p.status});
    if let Some(d) = &p.digest {
        o["digest"] = json!(d);
    }
    if let Some(t) = p.total {
        o["total"] = json!(t);
    }
    if let Some(c) = p.completed {
        o["completed"] = json!(c);
    }
    o
}

pub async fn pull(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body_bytes(body).map_err(err)?;
    let b: PullBody = parse_body(&body).map_err(err)?;
    let name = b
        .model
        .or(b.name)
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| err(ApiError::invalid_param("model", "model is required")))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Value>(64);
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reg = app.registry.clone();
    let (n, c) = (name.clone(), cancel.clone());
    let task = tokio::task::spawn_blocking(move || {
        let res = reg.pull(
            &n,
            &mut |p| {
                if tx.blocking_send(pull_json(&p)).is_err() {
                    c.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            },
            &c,
        );
        match res {
            Ok(()) => {
                let _ = tx.blocking_send(json!({"status": "success"}));
                Ok(())
            }
            Err(e) => {
                let _ = tx.blocking_send(json!({"error": e.to_string()}));
                Err(e)
            }
        }
    });
    if b.stream == Some(false) {
        let res = task
            .await
            .map_err(|e| err(ApiError::internal(e.to_string())))?;
        res.map_err(|e| err(registry_error(&name, e)))?;
        return Ok(Json(json!({"status": "success"})).into_response());
    }
    struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let guard = CancelOnDrop(cancel);
    let stream = futures_util::stream::unfold((rx, guard), |(mut rx, g)| async move {
        rx.recv()
            .await
            .map(|v| (Ok::<Bytes, std::io::Error>(ndjson(&v)), (rx, g)))
    });
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    license: Option<Value>,
    #[serde(default)]
    messages: Option<Vec<CreateMessage>>,
    #[serde(default)]
    files: Option<Map<String, Value>>,
    #[serde(default)]
    quantize: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct CreateMessage {
    role: String,
    #[serde(default)]
    content: String,
}

/// Ollama's /api/create with `from` naming a model or a GGUF file on this machine.
pub async fn create(
    State(app): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body_bytes(body).map_err(err)?;
    let b: CreateBody = parse_body(&body).map_err(err)?;
    let name = b
        .model
        .or(b.name)
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| err(ApiError::invalid_param("model", "model is required")))?;
    if b.files.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(err(ApiError::invalid_param(
            "files",
            "uploaded blobs are not supported: give `from` a model name or a path to a GGUF file",
        )));
    }
    if b.quantize.is_some() {
        return Err(err(ApiError::invalid_param(
            "quantize",
            "quantizing on create is not supported",
        )));
    }
    let from = b.from.filter(|f| !f.trim().is_empty()).ok_or_else(|| {
        err(ApiError::invalid_param(
            "from",
            "from is required (a model name or a path to a GGUF file)",
        ))
    })?;
    let license = match b.license {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(other) => {
            return Err(err(ApiError::invalid_param(
                "license",
                format!(
                    "license must be a string or a list of strings, got {}",
                    run::kind_of(&other)
                ),
            )))
        }
    };
    let spec = crate::backend::CreateModel {
        from,
        template: b.template,
        system: b.system,
        parameters: b.parameters.unwrap_or_default(),
        license,
        messages: b
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.role, m.content))
            .collect(),
    };
    // The parameters must be options smelt understands, with the right types.
    GenOptions::from_ollama(&spec.parameters).map_err(err)?;
    let reg = app.registry.clone();
    let n = name.clone();
    let res = tokio::task::spawn_blocking(move || reg.create(&n, &spec, &mut |_| {}))
        .await
        .map_err(|e| err(ApiError::internal(e.to_string())))?;
    res.map_err(|e| err(registry_error(&name, e)))?;
    let done = json!({"status": "success"});
    if b.stream == Some(false) {
        return Ok(Json(done).into_response());
    }
    let mut resp = axum::body::Body::from(format!(
        "{}\n{}\n",
        json!({"status": "creating model"}),
        done
    ))
    .into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}
