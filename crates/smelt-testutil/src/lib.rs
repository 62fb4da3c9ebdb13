//! Test support shared by the workspace's tests: where the real test models live, and a small
//! test graph over odd shapes for the backends ([`odd`]).

pub mod odd;

use std::path::PathBuf;

/// SmolLM2-135M-Instruct, Q4_1 (llama architecture, BPE tokenizer).
pub const SMOLLM2: &str = "smollm2-135m-instruct-q4_1.gguf";
/// Gemma 3 270M, Q4_K_M (gemma3 architecture, SentencePiece tokenizer).
pub const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

/// The directory `scripts/fetch_models.py` caches the real models in.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SMELT_TEST_MODELS") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("smelt").join("test-models")
}

/// Path of a real test model; panics with instructions when it has not been fetched.
pub fn model_path(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(
        p.exists(),
        "test model {} is missing: run `python3 scripts/fetch_models.py` (the test command does)",
        p.display()
    );
    p
}

/// The repository's root directory (for fixtures): `SMELT_REPO_ROOT` when set (a test binary
/// run away from its build tree, e.g. carried to the GPU machine), else the build tree's.
pub fn repo_root() -> PathBuf {
    if let Some(d) = std::env::var_os("SMELT_REPO_ROOT") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
}

/// A fixture file under `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("fixtures").join(rel)
}
