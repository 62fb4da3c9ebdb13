//! Shared by the store's integration tests: temporary stores, the real SmolLM2 GGUF as a served
//! blob, and pull options tuned for loopback.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use smelt_store::{Catalog, Digest, PullOptions, PullProgress, Store, StoreConfig};

/// sha256 of smollm2-135m-instruct-q4_1.gguf (checked by scripts/fetch_models.py).
pub const SMOLLM2_SHA256: &str =
    "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

pub fn smollm2_digest() -> Digest {
    Digest::parse(SMOLLM2_SHA256).unwrap()
}

/// The real SmolLM2 GGUF, read once per test process and shared by every server.
pub fn smollm2_bytes() -> Arc<[u8]> {
    static BYTES: OnceLock<Arc<[u8]>> = OnceLock::new();
    BYTES
        .get_or_init(|| {
            let path = smelt_testutil::model_path(smelt_testutil::SMOLLM2);
            std::fs::read(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
                .into()
        })
        .clone()
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("smelt-store-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An isolated store in a temporary directory (never the user's).
pub fn temp_store(tag: &str) -> (TempDir, Store) {
    let dir = TempDir::new(tag);
    let store = Store::open(StoreConfig::isolated(dir.path().join("store"))).unwrap();
    (dir, store)
}

/// Loopback-friendly options: plain HTTP allowed, several Range parts per blob, fast retries,
/// no catalog (names go to the registry they name).
pub fn fast_options() -> PullOptions {
    PullOptions {
        insecure: true,
        catalog: Catalog::empty(),
        parallel: 4,
        min_part_size: 16 << 20,
        retries: 3,
        backoff: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(2),
        stall_timeout: Duration::from_secs(10),
        progress_interval: Duration::from_millis(20),
        ..PullOptions::default()
    }
}

/// Runs a pull, collecting its progress events.
pub fn pull(
    store: &Store,
    name: &str,
    opts: &PullOptions,
) -> (
    smelt_store::Result<smelt_store::ResolvedModel>,
    Vec<PullProgress>,
) {
    let mut events = Vec::new();
    let name = smelt_store::ModelName::parse(name).unwrap();
    let r = store.pull(
        &name,
        opts,
        &mut |p| events.push(p.clone()),
        &AtomicBool::new(false),
    );
    (r, events)
}

/// Files in the store's blobs directory (names only), sorted.
pub fn blob_names(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.root().join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
