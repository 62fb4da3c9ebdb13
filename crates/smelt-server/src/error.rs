//! Errors: one internal error type, rendered in each API's own error shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// Errors in the server's settings (reported by `smelt serve` before it listens).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid host {value:?}: {why}")]
    Host { value: String, why: String },
    #[error("invalid {name}={value:?}: {why}")]
    Var {
        name: String,
        value: String,
        why: String,
    },
    #[error(
        "refusing to listen on {bind} without an API key: set SMELT_API_KEY (clients send it as \
         `Authorization: Bearer <key>` or `x-api-key`), or pass --no-auth to share without one"
    )]
    AuthRequired { bind: String },
    #[error("cannot listen on {bind}: {source}")]
    Bind {
        bind: String,
        source: std::io::Error,
    },
}

/// Which wire dialect an error is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Ollama,
    OpenAi,
    Anthropic,
}

impl Dialect {
    /// The dialect a path belongs to (for errors raised before a handler runs).
    pub fn of_path(path: &str) -> Dialect {
        if path.starts_with("/v1/messages") {
            Dialect::Anthropic
        } else if path.starts_with("/v1/") {
            Dialect::OpenAi
        } else {
            Dialect::Ollama
        }
    }
}

/// What went wrong, independent of the dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed or invalid request (400).
    InvalidRequest,
    /// Unknown model or route (404).
    NotFound,
    /// Missing or wrong API key (401).
    Unauthorized,
    /// Host or origin not allowed (403).
    Forbidden,
    /// Body over the size limit (413).
    TooLarge,
    /// Queue full (503 with Retry-After).
    Overloaded,
    /// The model cannot be loaded within the memory budget (507).
    InsufficientMemory,
    /// The engine or the store failed (500).
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::InsufficientMemory => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::TooLarge => "invalid_request_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::Overloaded => "server_overloaded",
            ErrorKind::InsufficientMemory | ErrorKind::Internal => "server_error",
        }
    }

    fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::TooLarge => "request_too_large",
            ErrorKind::Overloaded => "overloaded_error",
            ErrorKind::InsufficientMemory | ErrorKind::Internal => "api_error",
        }
    }
}

/// An error answered to a client.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// The request field at fault (OpenAI's `param`).
    pub param: Option<String>,
    /// Seconds for Retry-After (503).
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        Self::new(ErrorKind::InvalidRequest, message)
    }
    /// An invalid value of one request field.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.to_string()),
            ..Self::invalid(message)
        }
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn model_not_found(name: &str) -> ApiError {
        Self::not_found(format!("model '{name}' not found"))
    }

    /// The error body in a dialect's shape.
    pub fn body(&self, dialect: Dialect) -> Value {
        match dialect {
            Dialect::Ollama => json!({ "error": self.message }),
            Dialect::OpenAi => json!({
                "error": {
                    "message": self.message,
                    "type": self.kind.openai_type(),
                    "param": self.param,
                    "code": null,
                }
            }),
            Dialect::Anthropic => json!({
                "type": "error",
                "error": { "type": self.kind.anthropic_type(), "message": self.message },
            }),
        }
    }

    pub fn into_response(self, dialect: Dialect) -> Response {
        let mut resp = (self.kind.status(), axum::Json(self.body(dialect))).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// An error bound to a dialect, so handlers can return `Result<_, DialectError>`.
pub struct DialectError(pub Dialect, pub ApiError);

impl IntoResponse for DialectError {
    fn into_response(self) -> Response {
        self.1.into_response(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_per_dialect() {
        let e =
            ApiError::invalid_param("temperature", "temperature must be between 0 and 2, got 7");
        assert_eq!(
            e.body(Dialect::Ollama),
            json!({"error": "temperature must be between 0 and 2, got 7"})
        );
        let o = e.body(Dialect::OpenAi);
        assert_eq!(o["error"]["type"], "invalid_request_error");
        assert_eq!(o["error"]["param"], "temperature");
        let a = e.body(Dialect::Anthropic);
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "invalid_request_error");
        assert_eq!(
            a["error"]["message"],
            "temperature must be between 0 and 2, got 7"
        );
    }

    #[test]
    fn dialect_of_path() {
        assert_eq!(Dialect::of_path("/v1/messages"), Dialect::Anthropic);
        assert_eq!(
            Dialect::of_path("/v1/messages/count_tokens"),
            Dialect::Anthropic
        );
        assert_eq!(Dialect::of_path("/v1/chat/completions"), Dialect::OpenAi);
        assert_eq!(Dialect::of_path("/api/chat"), Dialect::Ollama);
    }

    #[test]
    fn overloaded_carries_retry_after() {
        let mut e = ApiError::new(ErrorKind::Overloaded, "server busy");
        e.retry_after = Some(2);
        let r = e.into_response(Dialect::OpenAi);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}
