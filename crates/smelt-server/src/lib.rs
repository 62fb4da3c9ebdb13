//! smelt-server: the HTTP runtime. Ollama, OpenAI and Anthropic adapters translate into one
//! internal request ([`request::InferRequest`]) and back from its event stream ([`request::Out`]);
//! the scheduler owns model lifecycle (load on first use, keep-alive, LRU eviction within a
//! memory budget) and the bounded run queue.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let config = smelt_server::config::ServerConfig::from_env()?;
//! let engine = std::sync::Arc::new(smelt_server::engine::EngineLoader);
//! let registry = std::sync::Arc::new(smelt_server::registry::StoreRegistry::from_env()?);
//! let (listener, addr) = smelt_server::bind(&config).await?;
//! eprintln!("listening on http://{addr}");
//! let app = smelt_server::AppState::new(config, engine, registry);
//! smelt_server::serve_on(listener, app, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod backend;
pub mod config;
pub mod constrain;
pub mod engine;

pub mod error;
pub mod gotmpl;
pub mod guard;
pub mod metrics;
pub mod registry;
pub mod request;
pub mod run;
pub mod scheduler;
pub mod timefmt;
pub mod tools;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::backend::{ModelLoader, ModelRegistry};
use crate::config::ServerConfig;
use crate::error::ConfigError;
use crate::metrics::Metrics;
use crate::scheduler::{SchedConfig, Scheduler};

/// Shared by every handler.
pub struct AppState {
    pub config: ServerConfig,
    pub sched: Arc<Scheduler>,
    pub registry: Arc<dyn ModelRegistry>,
    pub metrics: Metrics,
    /// This machine's name (allowed as a Host header on loopback binds).
    pub hostname: Option<String>,
}

impl AppState {
    pub fn new(
        config: ServerConfig,
        loader: Arc<dyn ModelLoader>,
        registry: Arc<dyn ModelRegistry>,
    ) -> Arc<AppState> {
        let sched = Scheduler::new(
            loader,
            SchedConfig {
                keep_alive: config.keep_alive,
                default_num_ctx: config.default_num_ctx,
                max_memory: config.max_memory,
                max_loaded_models: config.max_loaded_models,
                max_queue: config.max_queue,
                num_parallel: config.num_parallel,
                threads: config.threads,
                wait_for_memory: Duration::from_secs(300),
            },
        );
        let hostname = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        Arc::new(AppState {
            config,
            sched,
            registry,
            metrics: Metrics::default(),
            hostname,
        })
    }
}

/// All routes, with the guards (host check, CORS, API key) and the body limit.
pub fn router(app: Arc<AppState>) -> Router {
    use api::{anthropic, misc, ollama, ollama_models, openai, openai_more};
    Router::new()
        .route("/", get(misc::root).head(misc::root))
        .route("/health", get(misc::health))
        .route("/metrics", get(misc::metrics))
        .route("/ui", get(misc::ui))
        .route("/ui/", get(misc::ui))
        .route(
            "/api/version",
            get(ollama_models::version).head(ollama_models::version),
        )
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings_legacy))
        .route(
            "/api/tags",
            get(ollama_models::tags).head(ollama_models::tags),
        )
        .route("/api/show", post(ollama_models::show))
        .route("/api/ps", get(ollama_models::ps))
        .route("/api/delete", axum::routing::delete(ollama_models::delete))
        .route("/api/copy", post(ollama_models::copy))
        .route("/api/pull", post(ollama_models::pull))
        .route("/api/create", post(ollama_models::create))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai_more::completions))
        .route("/v1/models", get(openai_more::models))
        .route("/v1/models/{*model}", get(openai_more::model))
        .route("/v1/embeddings", post(openai_more::embeddings))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .fallback(misc::not_found)
        .method_not_allowed_fallback(misc::method_not_allowed)
        .layer(DefaultBodyLimit::max(app.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            guard::guard,
        ))
        .with_state(app)
}

/// Check the settings and bind the listening socket; returns it with its address (port 0 picks one).
pub async fn bind(
    config: &ServerConfig,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), ConfigError> {
    config.check_auth()?;
    let bind = config.bind.socket_string();
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|source| ConfigError::Bind {
            bind: bind.clone(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ConfigError::Bind { bind, source })?;
    Ok((listener, addr))
}

/// Run the server on its own runtime until Ctrl-C or SIGTERM; `on_bound` hears the address once
/// listening.
pub fn run_blocking(
    config: ServerConfig,
    loader: Arc<dyn ModelLoader>,
    registry: Arc<dyn ModelRegistry>,
    on_bound: impl FnOnce(std::net::SocketAddr, &ServerConfig),
) -> Result<(), ConfigError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| ConfigError::Bind {
            bind: config.bind.socket_string(),
            source,
        })?;
    let result = rt.block_on(async move {
        let (listener, addr) = bind(&config).await?;
        on_bound(addr, &config);
        let bind_str = config.bind.socket_string();
        let app = AppState::new(config, loader, registry);
        // On a signal, stop accepting and let running requests finish, for a few seconds.
        let stopping = Arc::new(tokio::sync::Notify::new());
        let notify = stopping.clone();
        let signal = async move {
            shutdown_signal().await;
            notify.notify_one();
        };
        let serve = serve_on(listener, app, signal);
        let deadline = async {
            stopping.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            r = serve => r.map_err(|source| ConfigError::Bind { bind: bind_str, source }),
            _ = deadline => Ok(()),
        }
    });
    // Generations still running on blocking threads are abandoned.
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

/// How long running requests may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Serve on a bound listener (tests bind port 0 and read the address back).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    app: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::spawn(app.sched.clone().reap_forever());
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}
