//! `smelt serve`: the Ollama-, OpenAI- and Anthropic-compatible server, ready with no
//! configuration. Flags override the environment (SMELT_HOST in OLLAMA_HOST's format,
//! SMELT_API_KEY, SMELT_KEEP_ALIVE, SMELT_ORIGINS, ...).

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use smelt_server::config::{parse_bytes, BindAddr, KeepAlive, ServerConfig};
use smelt_server::engine::EngineLoader;
use smelt_server::registry::StoreRegistry;

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Address to listen on, in OLLAMA_HOST's format: 127.0.0.1, 0.0.0.0:8080, [::1]:11434
    /// (default 127.0.0.1:11434, or SMELT_HOST).
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (overrides the one in --host or SMELT_HOST; 0 picks a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Allow listening on a non-loopback address without an API key (SMELT_API_KEY).
    #[arg(long)]
    pub no_auth: bool,
    /// How long a model stays loaded after its last request: 5m, 30s, 1h, 0, -1 for ever
    /// (default 5m, or SMELT_KEEP_ALIVE).
    #[arg(long)]
    pub keep_alive: Option<String>,
    /// Context window when a request does not set num_ctx (default: the model's trained context,
    /// reduced to fit memory; or SMELT_CONTEXT_LENGTH).
    #[arg(long)]
    pub ctx_size: Option<usize>,
    /// Memory the loaded models may use together, e.g. 8GiB (default: what the system has available).
    #[arg(long)]
    pub max_memory: Option<String>,
    /// Most models loaded at once (default 3).
    #[arg(long)]
    pub max_loaded_models: Option<usize>,
    /// Requests that may wait for a model before new ones get 503 (default 512).
    #[arg(long)]
    pub max_queue: Option<usize>,
    /// Engine threads per model (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Extra CORS origins to allow, comma separated, `*` as a wildcard (SMELT_ORIGINS).
    #[arg(long)]
    pub origins: Option<String>,
}

fn configure(args: &ServeArgs) -> Result<ServerConfig> {
    let mut c = ServerConfig::from_env()?;
    if let Some(h) = &args.host {
        c.bind = BindAddr::parse(h)?;
    }
    if let Some(p) = args.port {
        c.bind.port = p;
    }
    c.no_auth = args.no_auth;
    if let Some(k) = &args.keep_alive {
        c.keep_alive = KeepAlive::parse_str(k)
            .map_err(anyhow::Error::msg)
            .context("--keep-alive")?;
    }
    if let Some(n) = args.ctx_size {
        anyhow::ensure!(n > 0, "--ctx-size must be at least 1");
        c.default_num_ctx = Some(n);
    }
    if let Some(m) = &args.max_memory {
        c.max_memory = Some(
            parse_bytes(m)
                .with_context(|| format!("--max-memory {m:?}: expected a size like 8GiB"))?,
        );
    }
    if let Some(n) = args.max_loaded_models {
        c.max_loaded_models = n.max(1);
    }
    if let Some(n) = args.max_queue {
        c.max_queue = n;
    }
    if let Some(n) = args.threads {
        c.threads = n;
    }
    if let Some(o) = &args.origins {
        c.origins.extend(
            o.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        );
    }
    Ok(c)
}

pub fn run_serve(args: ServeArgs) -> Result<()> {
    let config = configure(&args)?;
    let registry = StoreRegistry::from_env().context("opening the model store")?;
    smelt_server::run_blocking(
        config,
        Arc::new(EngineLoader),
        Arc::new(registry),
        |addr, cfg| {
            let host = if addr.ip().is_unspecified() {
                format!("127.0.0.1:{}", addr.port())
            } else {
                addr.to_string()
            };
            let key = if cfg.api_key.is_some() {
                "$SMELT_API_KEY"
            } else {
                "smelt"
            };
            eprintln!("smelt listening on http://{addr} (Ollama, OpenAI and Anthropic APIs; chat page at http://{host}/ui)");
            eprintln!("  Claude Code:  ANTHROPIC_BASE_URL=http://{host} ANTHROPIC_AUTH_TOKEN={key} claude --model <model>");
            eprintln!("  OpenAI SDKs:  OPENAI_BASE_URL=http://{host}/v1 OPENAI_API_KEY={key}");
            eprintln!("  Ollama tools: OLLAMA_HOST=http://{host}");
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override() {
        let args = ServeArgs {
            host: Some("0.0.0.0".into()),
            port: Some(8080),
            no_auth: true,
            keep_alive: Some("10s".into()),
            ctx_size: Some(2048),
            ..Default::default()
        };
        let c = configure(&args).unwrap();
        assert_eq!(c.bind.socket_string(), "0.0.0.0:8080");
        assert!(c.no_auth && c.check_auth().is_ok());
        assert_eq!(
            c.keep_alive,
            KeepAlive::For(std::time::Duration::from_secs(10))
        );
        assert_eq!(c.default_num_ctx, Some(2048));
        assert!(configure(&ServeArgs {
            keep_alive: Some("soon".into()),
            ..Default::default()
        })
        .is_err());
        assert!(configure(&ServeArgs {
            max_memory: Some("lots".into()),
            ..Default::default()
        })
        .is_err());
    }
}
