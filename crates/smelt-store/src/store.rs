//! The store on disk: `blobs/sha256-<hex>` and `manifests/host/namespace/model/tag` (Ollama's layout),
//! plus `tmp/` for files being written and `locks/` for per-blob download locks.
//!
//! Consistency rules, so that a crash or kill -9 at any point leaves a usable store:
//! - a blob appears only by renaming a complete, verified, synced file to its digest name;
//! - a manifest is written last, by rename, after every blob it names exists;
//! - removal deletes the manifest first, then blobs no remaining manifest references;
//! - garbage collection runs only when no pull, create or copy holds the shared store lock.

use std::collections::HashSet;
use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsutil::{self, LinkPref};
use crate::manifest::{Manifest, MAX_MANIFEST_BYTES};
use crate::name::ModelName;

/// Where the store lives and which other model locations it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// smelt's own store (read-write).
    pub root: PathBuf,
    /// An Ollama store read in place (never written), e.g. `~/.ollama/models`.
    pub ollama_models: Option<PathBuf>,
    /// Directories of GGUF files served in place (never written).
    pub model_dirs: Vec<PathBuf>,
}

impl StoreConfig {
    /// Only `root`: no Ollama store, no model directories (what tests use).
    pub fn isolated(root: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            root: root.into(),
            ollama_models: None,
            model_dirs: Vec::new(),
        }
    }

    /// From the environment: `SMELT_MODELS` (default `$XDG_DATA_HOME/smelt/models` or
    /// `~/.local/share/smelt/models`), `OLLAMA_MODELS` (default `~/.ollama/models` when it exists),
    /// and `SMELT_MODEL_DIRS` (a path list).
    pub fn from_env() -> Result<StoreConfig> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let home = var("HOME").map(PathBuf::from);
        let root = match (var("SMELT_MODELS"), var("XDG_DATA_HOME"), &home) {
            (Some(dir), _, _) => PathBuf::from(dir),
            (None, Some(data), _) => PathBuf::from(data).join("smelt").join("models"),
            (None, None, Some(home)) => home
                .join(".local")
                .join("share")
                .join("smelt")
                .join("models"),
            (None, None, None) => {
                return Err(Error::Unsupported(
                    "no model store location: set SMELT_MODELS (or HOME or XDG_DATA_HOME)".into(),
                ))
            }
        };
        let ollama_models = match var("OLLAMA_MODELS") {
            Some(dir) => Some(PathBuf::from(dir)),
            None => home
                .map(|h| h.join(".ollama").join("models"))
                .filter(|p| p.join("manifests").is_dir()),
        };
        let model_dirs = var("SMELT_MODEL_DIRS")
            .map(|v| std::env::split_paths(&v).collect())
            .unwrap_or_default();
        Ok(StoreConfig {
            root,
            ollama_models,
            model_dirs,
        })
    }
}

/// A manifest read from disk with what listings need.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub manifest: Manifest,
    /// sha256 of the manifest file (the model's ID in listings).
    pub digest: Digest,
    pub modified: SystemTime,
    pub path: PathBuf,
}

/// What `remove` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// Blobs deleted because no other manifest referenced them.
    pub blobs_removed: Vec<Digest>,
    /// Bytes freed by those deletions.
    pub bytes_freed: u64,
    /// True when garbage collection was skipped because a pull or create was running; the
    /// unreferenced blobs go at the next `rm` or `prune`.
    pub gc_deferred: bool,
}

/// smelt's model store.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) cfg: StoreConfig,
    blobs: PathBuf,
    manifests: PathBuf,
    pub(crate) tmp: PathBuf,
    locks: PathBuf,
}

/// Stale temporary files (from killed processes) older than this are removed by `prune`.
const STALE_TMP: Duration = Duration::from_secs(3600);
/// Abandoned partial downloads older than this are removed by `prune`.
const STALE_PARTIAL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Store {
    /// Opens (creating if needed) the store described by `cfg`.
    pub fn open(cfg: StoreConfig) -> Result<Store> {
        let root = &cfg.root;
        let store = Store {
            blobs: root.join("blobs"),
            manifests: root.join("manifests"),
            tmp: root.join("tmp"),
            locks: root.join("locks"),
            cfg,
        };
        for dir in [&store.blobs, &store.manifests, &store.tmp, &store.locks] {
            fs::create_dir_all(dir).map_err(|e| Error::io("create store directory", dir, e))?;
        }
        Ok(store)
    }

    /// Opens the store configured by the environment (see [`StoreConfig::from_env`]).
    pub fn open_default() -> Result<Store> {
        Store::open(StoreConfig::from_env()?)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    pub fn root(&self) -> &Path {
        &self.cfg.root
    }

    /// Path of a blob in this store (it may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.file_name())
    }

    /// True when the blob exists (links followed) with the expected size.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    pub(crate) fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(format!("{}-partial", digest.file_name()))
    }

    pub(crate) fn lock_path(&self, digest: &Digest) -> PathBuf {
        self.locks.join(format!("{}.lock", digest.file_name()))
    }

    /// Path of a name's manifest in this store (it may not exist).
    pub fn manifest_path(&self, name: &ModelName) -> PathBuf {
        self.manifests.join(name.manifest_rel_path())
    }

    /// Holds the shared store lock for the life of the returned file: garbage collection waits for
    /// no one and skips its work while any holder exists.
    pub(crate) fn operation_lock(&self) -> Result<File> {
        let path = self.cfg.root.join("lock");
        let f = File::create(&path).map_err(|e| Error::io("open store lock", &path, e))?;
        f.lock_shared()
            .map_err(|e| Error::io("lock store", &path, e))?;
        Ok(f)
    }

    /// Reads this store's manifest for `name` (exact, then case-insensitive), if there is one.
    pub fn read_manifest(&self, name: &ModelName) -> Result<Option<(ModelName, StoredManifest)>> {
        if let Some(found) = find_manifest(&self.manifests, name)? {
            return Ok(Some(found));
        }
        Ok(None)
    }

    /// Writes a manifest atomically after checking it parses and that every blob it names exists.
    pub fn write_manifest(&self, name: &ModelName, bytes: &[u8]) -> Result<()> {
        let path = self.manifest_path(name);
        let manifest = Manifest::parse(bytes, &path.display().to_string())?;
        for layer in manifest.blobs() {
            if !self.has_blob(&layer.digest, layer.size) {
                return Err(Error::BadManifest {
                    what: name.to_string(),
                    reason: format!(
                        "blob {} ({} bytes) is not in the store",
                        layer.digest, layer.size
                    ),
                });
            }
        }
        fsutil::write_atomic(&self.tmp, &path, bytes)
    }

    /// Adds a blob from memory (config and text layers); returns its digest.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of_bytes(bytes);
        if !self.has_blob(&digest, bytes.len() as u64) {
            fsutil::write_atomic(&self.tmp, &self.blob_path(&digest), bytes)?;
        }
        Ok(digest)
    }

    /// Links a file into the store as a blob without copying it; returns its digest and size.
    pub(crate) fn link_blob_file(&self, path: &Path, pref: LinkPref) -> Result<(Digest, u64)> {
        let (digest, size) = Digest::of_file(path)?;
        if !self.has_blob(&digest, size) {
            fsutil::link_into(path, &self.tmp, &self.blob_path(&digest), pref)?;
        }
        Ok((digest, size))
    }

    /// Every readable manifest in this store, sorted by name. An unparseable manifest (damaged by
    /// hand, or written by a newer program) is skipped rather than failing the whole listing.
    pub fn manifests(&self) -> Result<Vec<(ModelName, StoredManifest)>> {
        Ok(self.manifests_checked()?.0)
    }

    /// The readable manifests, and whether every manifest file was readable.
    fn manifests_checked(&self) -> Result<(Vec<(ModelName, StoredManifest)>, bool)> {
        let mut out = Vec::new();
        let mut all_readable = true;
        for (name, path) in walk_manifests(&self.manifests)? {
            match read_manifest_file(&path) {
                Ok(Some(m)) => out.push((name, m)),
                // Removed by another process meanwhile.
                Ok(None) => {}
                Err(_) => all_readable = false,
            }
        }
        Ok((out, all_readable))
    }

    /// Removes a model from this store and then the blobs nothing else references.
    pub fn remove(&self, name: &ModelName) -> Result<RemoveReport> {
        let Some((found, stored)) = self.read_manifest(name)? else {
            return Err(self.not_here_error(name));
        };
        fs::remove_file(&stored.path).map_err(|e| Error::io("remove manifest", &stored.path, e))?;
        if let Some(parent) = stored.path.parent() {
            fsutil::sync_dir(parent)?;
            fsutil::remove_empty_parents(parent, &self.manifests);
        }
        let _ = found;
        self.collect_garbage(false)
    }

    fn not_here_error(&self, name: &ModelName) -> Error {
        if let Some(ollama) = &self.cfg.ollama_models {
            if find_manifest(&ollama.join("manifests"), name)
                .ok()
                .flatten()
                .is_some()
            {
                return Error::ReadOnly {
                    name: name.to_string(),
                    location: format!("the Ollama store {}", ollama.display()),
                    hint: format!("remove it with `ollama rm {name}`"),
                };
            }
        }
        Error::ModelNotFound {
            name: name.to_string(),
        }
    }

    /// Removes unreferenced blobs, stale temporary files and abandoned partial downloads.
    pub fn prune(&self) -> Result<RemoveReport> {
        self.collect_garbage(true)
    }

    fn collect_garbage(&self, stale_files: bool) -> Result<RemoveReport> {
        let lock_path = self.cfg.root.join("lock");
        let lock =
            File::create(&lock_path).map_err(|e| Error::io("open store lock", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Ok(RemoveReport {
                    gc_deferred: true,
                    ..Default::default()
                })
            }
            Err(TryLockError::Error(e)) => return Err(Error::io("lock store", &lock_path, e)),
        }
        let (manifests, all_readable) = self.manifests_checked()?;
        if !all_readable {
            // An unreadable manifest may reference any blob: deleting nothing is the safe answer.
            return Ok(RemoveReport {
                gc_deferred: true,
                ..Default::default()
            });
        }
        let mut referenced = HashSet::new();
        for (_, stored) in manifests {
            referenced.extend(stored.manifest.blobs().map(|l| l.digest));
        }
        let mut report = RemoveReport::default();
        let now = SystemTime::now();
        let age = |meta: &fs::Metadata| now.duration_since(fsutil::mtime(meta)).unwrap_or_default();
        for entry in read_dir(&self.blobs)? {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if let Ok(digest) = Digest::parse(&name) {
                if !referenced.contains(&digest) {
                    fs::remove_file(&path).map_err(|e| Error::io("remove blob", &path, e))?;
                    // A linked blob frees nothing of its own.
                    report.bytes_freed += if meta.file_type().is_symlink() {
                        0
                    } else {
                        meta.len()
                    };
                    report.blobs_removed.push(digest);
                }
            } else if stale_files && name.contains("-partial") && age(&meta) > STALE_PARTIAL {
                let _ = fs::remove_file(&path);
            }
        }
        if stale_files {
            for entry in read_dir(&self.tmp)? {
                let path = entry.path();
                if fs::symlink_metadata(&path).is_ok_and(|m| age(&m) > STALE_TMP) {
                    let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
                }
            }
        }
        fsutil::sync_dir(&self.blobs)?;
        report.blobs_removed.sort();
        Ok(report)
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io("list directory", dir, e))?;
    Ok(entries.filter_map(|e| e.ok()).collect())
}

/// Reads and parses one manifest file; `None` when it vanished meanwhile.
pub(crate) fn read_manifest_file(path: &Path) -> Result<Option<StoredManifest>> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("stat manifest", path, e)),
    };
    if meta.len() > MAX_MANIFEST_BYTES as u64 {
        return Err(Error::BadManifest {
            what: path.display().to_string(),
            reason: format!("{} bytes, the limit is {MAX_MANIFEST_BYTES}", meta.len()),
        });
    }
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read manifest", path, e)),
    };
    let manifest = Manifest::parse(&bytes, &path.display().to_string())?;
    Ok(Some(StoredManifest {
        manifest,
        digest: Digest::of_bytes(&bytes),
        modified: fsutil::mtime(&meta),
        path: path.to_path_buf(),
    }))
}

/// Finds a name's manifest under a `manifests/` directory: the exact path, else a case-insensitive match.
pub(crate) fn find_manifest(
    manifests: &Path,
    name: &ModelName,
) -> Result<Option<(ModelName, StoredManifest)>> {
    let exact = manifests.join(name.manifest_rel_path());
    if let Some(m) = read_manifest_file(&exact)? {
        return Ok(Some((name.clone(), m)));
    }
    for (found, path) in walk_manifests(manifests)? {
        if found.eq_ignore_case(name) {
            if let Some(m) = read_manifest_file(&path)? {
                return Ok(Some((found, m)));
            }
        }
    }
    Ok(None)
}

/// Every `host/namespace/model/tag` file under a `manifests/` directory whose parts form a valid name.
pub(crate) fn walk_manifests(manifests: &Path) -> Result<Vec<(ModelName, PathBuf)>> {
    let mut out = Vec::new();
    if !manifests.is_dir() {
        return Ok(out);
    }
    let subdirs = |dir: &Path| -> Vec<(String, PathBuf)> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .collect();
        v.sort();
        v
    };
    for (host, host_dir) in subdirs(manifests) {
        for (ns, ns_dir) in subdirs(&host_dir) {
            for (model, model_dir) in subdirs(&ns_dir) {
                for (tag, path) in subdirs(&model_dir) {
                    if !path.is_file() {
                        continue;
                    }
                    if let Ok(name) = ModelName::from_parts(&host, &ns, &model, &tag) {
                        out.push((name, path));
                    }
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Store {
    /// Garbage collection after a successful pull or create: failures only cost disk space.
    pub(crate) fn collect_garbage_quietly(&self) {
        let _ = self.collect_garbage(false);
    }
}
