//! Liveness, health, metrics, the chat page and the 404 answer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::{ApiError, Dialect};
use crate::metrics::Gauges;
use crate::AppState;

pub async fn root() -> &'static str {
    "smelt is running"
}

pub async fn health(State(app): State<Arc<AppState>>) -> Response {
    Json(json!({
        "status": "ok",
        "models_loaded": app.sched.loaded().len(),
        "queue_depth": app.sched.queue_depth(),
    }))
    .into_response()
}

pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let slots = app.sched.loaded();
    let loaded = slots.iter().map(|s| (s.name(), s.size)).collect();
    let kv = slots
        .iter()
        .filter_map(|s| Some((s.name(), s.model.kv_cache()?)))
        .collect();
    let text = app.metrics.render(&Gauges {
        queue_depth: app.sched.queue_depth(),
        loaded,
        kv,
    });
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

pub async fn ui() -> Html<&'static str> {
    Html(include_str!("../ui.html"))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let mut r = ApiError::invalid(format!("{method} is not allowed on {path}"))
        .into_response(Dialect::of_path(path));
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

pub async fn not_found(uri: Uri) -> Response {
    let path = uri.path();
    ApiError::not_found(format!("no route for {path}")).into_response(Dialect::of_path(path))
}
