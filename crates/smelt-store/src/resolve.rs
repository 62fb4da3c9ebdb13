//! Finding models: smelt's store first, then an Ollama store and directories of GGUF files read in
//! place, or a plain path to a `.gguf` file. Listing, resolving to a runnable description, copying.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::details::ModelDetails;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsutil::{self, LinkPref};
use crate::manifest::*;
use crate::name::{ModelName, DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG};
use crate::store::{find_manifest, walk_manifests, Store, StoredManifest};

/// Where a model was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum ModelSource {
    /// smelt's own store.
    Smelt,
    /// An Ollama store (its root), read in place.
    Ollama(PathBuf),
    /// A GGUF file found in one of `SMELT_MODEL_DIRS` (the directory), read in place.
    Dir(PathBuf),
    /// A GGUF file named by its path.
    File,
}

impl ModelSource {
    /// A short word for listings.
    pub fn label(&self) -> &'static str {
        match self {
            ModelSource::Smelt => "smelt",
            ModelSource::Ollama(_) => "ollama",
            ModelSource::Dir(_) => "dir",
            ModelSource::File => "file",
        }
    }
}

/// One chat message of a `MESSAGE` layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// One row of `list` (and `/api/tags`).
#[derive(Debug, Clone, Serialize)]
pub struct ModelEntry {
    pub name: ModelName,
    pub source: ModelSource,
    /// sha256 of the manifest; `None` for a loose GGUF file (hashing it would read the whole file).
    pub digest: Option<Digest>,
    pub size: u64,
    pub modified: SystemTime,
    pub gguf_path: PathBuf,
    pub details: ModelDetails,
}

/// Everything needed to run a model.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedModel {
    /// The model's name; for a plain file, derived from its file name.
    pub name: ModelName,
    pub source: ModelSource,
    /// The GGUF weights (a blob, or the file itself), served in place.
    pub gguf_path: PathBuf,
    pub projector_path: Option<PathBuf>,
    pub adapter_paths: Vec<PathBuf>,
    pub template: Option<String>,
    pub system: Option<String>,
    /// Default options (`PARAMETER` lines), typed as Ollama's JSON params layer.
    pub params: serde_json::Map<String, serde_json::Value>,
    pub license: Vec<String>,
    pub messages: Vec<Message>,
    pub digest: Option<Digest>,
    pub size: u64,
    pub modified: SystemTime,
    pub details: ModelDetails,
    /// The manifest, for models that have one.
    pub manifest: Option<Manifest>,
}

impl Store {
    /// All models smelt can run: its store, then the Ollama store, then the model directories; a name
    /// found earlier hides the same name later. Most recently modified first, as `ollama list`.
    pub fn list(&self) -> Result<Vec<ModelEntry>> {
        let mut out: Vec<ModelEntry> = Vec::new();
        for (name, stored) in self.manifests()? {
            if let Some(e) =
                entry_from_manifest(name, ModelSource::Smelt, &stored, &self.blob_dir())
            {
                out.push(e);
            }
        }
        if let Some(ollama) = &self.cfg.ollama_models {
            for (name, path) in walk_manifests(&ollama.join("manifests"))? {
                if out.iter().any(|e| e.name.eq_ignore_case(&name)) {
                    continue;
                }
                // Another program owns this store: an unreadable manifest is skipped, not fatal.
                if let Ok(Some(stored)) = crate::store::read_manifest_file(&path) {
                    let source = ModelSource::Ollama(ollama.clone());
                    out.extend(entry_from_manifest(
                        name,
                        source,
                        &stored,
                        &ollama.join("blobs"),
                    ));
                }
            }
        }
        for found in scan_model_dirs(&self.cfg.model_dirs) {
            if out.iter().any(|e| e.name.eq_ignore_case(&found.name)) {
                continue;
            }
            let details = crate::details::details_from_gguf(&found.path).unwrap_or_default();
            out.push(ModelEntry {
                name: found.name,
                source: ModelSource::Dir(found.dir),
                digest: None,
                size: found.size,
                modified: found.modified,
                gguf_path: found.path,
                details,
            });
        }
        out.sort_by(|a, b| {
            b.modified
                .cmp(&a.modified)
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(out)
    }

    /// Resolves a name to a runnable model (smelt store, Ollama store, model directories).
    pub fn resolve(&self, name: &ModelName) -> Result<ResolvedModel> {
        if let Some((found, stored)) = self.read_manifest(name)? {
            return resolved_from_manifest(found, ModelSource::Smelt, &stored, &self.blob_dir());
        }
        if let Some(ollama) = &self.cfg.ollama_models {
            if let Some((found, stored)) = find_manifest(&ollama.join("manifests"), name)? {
                let source = ModelSource::Ollama(ollama.clone());
                return resolved_from_manifest(found, source, &stored, &ollama.join("blobs"));
            }
        }
        if name.tag() == DEFAULT_TAG {
            if let Some(found) = scan_model_dirs(&self.cfg.model_dirs)
                .into_iter()
                .find(|f| f.name.eq_ignore_case(name))
            {
                return resolved_from_file(&found.path, found.name, ModelSource::Dir(found.dir));
            }
        }
        Err(Error::ModelNotFound {
            name: name.to_string(),
        })
    }

    /// Resolves what a user typed: a path to a `.gguf` file, or a model name.
    pub fn resolve_spec(&self, spec: &str) -> Result<ResolvedModel> {
        if let Some(path) = as_gguf_path(spec) {
            if !path.is_file() {
                // A mistyped path must not turn into a pull of a model named like a file.
                let e = std::io::Error::new(std::io::ErrorKind::NotFound, "no such GGUF file");
                return Err(Error::io("open model", &path, e));
            }
            let name = name_from_file_stem(&path).ok_or_else(|| Error::InvalidName {
                name: spec.to_string(),
                reason: "cannot derive a model name from this file name".into(),
            })?;
            return resolved_from_file(&path, name, ModelSource::File);
        }
        self.resolve(&ModelName::parse(spec)?)
    }

    /// Copies (aliases) a model under a new name in smelt's store. Blobs are shared, never copied:
    /// a model from the Ollama store has its blobs hard-linked, a loose GGUF file is linked.
    pub fn copy(&self, src: &ModelName, dst: &ModelName) -> Result<ResolvedModel> {
        let _op = self.operation_lock()?;
        let resolved = self.resolve(src)?;
        match &resolved.source {
            ModelSource::Smelt | ModelSource::Ollama(_) => {
                let Some(manifest) = &resolved.manifest else {
                    return Err(Error::ModelNotFound {
                        name: src.to_string(),
                    });
                };
                if let ModelSource::Ollama(root) = &resolved.source {
                    for layer in manifest.blobs() {
                        if !self.has_blob(&layer.digest, layer.size) {
                            let from = root.join("blobs").join(layer.digest.file_name());
                            fsutil::link_into(
                                &from,
                                &self.tmp,
                                &self.blob_path(&layer.digest),
                                LinkPref::Hard,
                            )?;
                        }
                    }
                }
                self.write_manifest(dst, &manifest.to_bytes())?;
            }
            ModelSource::Dir(_) | ModelSource::File => {
                let spec = crate::create::CreateSpec::from_path(&resolved.gguf_path);
                drop(_op);
                return self.create(dst, &spec, Path::new("."), &mut |_| {});
            }
        }
        self.resolve(dst)
    }

    pub(crate) fn blob_dir(&self) -> PathBuf {
        self.root().join("blobs")
    }
}

/// `spec` as a path when it looks like one: it ends in `.gguf`, or it is absolute or explicitly
/// relative and names an existing file.
fn as_gguf_path(spec: &str) -> Option<PathBuf> {
    let expanded = match spec.strip_prefix("~/") {
        Some(rest) => PathBuf::from(std::env::var_os("HOME")?).join(rest),
        None => PathBuf::from(spec),
    };
    let looks_like_path = spec.starts_with('/')
        || spec.starts_with("./")
        || spec.starts_with("../")
        || spec.starts_with("~/");
    let is_gguf_name = spec.to_ascii_lowercase().ends_with(".gguf");
    (is_gguf_name || (looks_like_path && expanded.is_file())).then_some(expanded)
}

fn entry_from_manifest(
    name: ModelName,
    source: ModelSource,
    stored: &StoredManifest,
    blobs: &Path,
) -> Option<ModelEntry> {
    let model = stored.manifest.layer(MEDIA_MODEL)?;
    let gguf_path = blobs.join(model.digest.file_name());
    if !gguf_path.is_file() {
        return None;
    }
    let details = details_for(&stored.manifest, blobs, &gguf_path);
    Some(ModelEntry {
        name,
        source,
        digest: Some(stored.digest),
        size: stored.manifest.total_size(),
        modified: stored.modified,
        gguf_path,
        details,
    })
}

/// Details from the config blob, completed from the GGUF header where the config is silent.
fn details_for(manifest: &Manifest, blobs: &Path, gguf: &Path) -> ModelDetails {
    let config = read_small(&blobs.join(manifest.config.digest.file_name()))
        .ok()
        .and_then(|b| serde_json::from_slice::<ModelConfig>(&b).ok())
        .unwrap_or_default();
    let details = ModelDetails::from_config(&config);
    if details.is_complete() {
        return details;
    }
    crate::details::details_from_gguf(gguf).unwrap_or(details)
}

fn resolved_from_manifest(
    name: ModelName,
    source: ModelSource,
    stored: &StoredManifest,
    blobs: &Path,
) -> Result<ResolvedModel> {
    let m = &stored.manifest;
    let blob = |layer: &Layer| -> Result<PathBuf> {
        let p = blobs.join(layer.digest.file_name());
        if !p.is_file() {
            return Err(Error::BadManifest {
                what: name.to_string(),
                reason: format!(
                    "its {} blob {} is missing from {}",
                    layer.media_type,
                    layer.digest,
                    blobs.display()
                ),
            });
        }
        Ok(p)
    };
    let text = |layer: &Layer| -> Result<String> {
        let bytes = read_small(&blob(layer)?)?;
        String::from_utf8(bytes).map_err(|_| Error::BadManifest {
            what: name.to_string(),
            reason: format!("{} layer {} is not UTF-8", layer.media_type, layer.digest),
        })
    };
    let json_err = |layer: &Layer, e: serde_json::Error| Error::BadManifest {
        what: name.to_string(),
        reason: format!("{} layer {}: {e}", layer.media_type, layer.digest),
    };
    let model = m.layer(MEDIA_MODEL).ok_or_else(|| Error::BadManifest {
        what: name.to_string(),
        reason: "no model layer (safetensors and cloud models are not supported)".into(),
    })?;
    let gguf_path = blob(model)?;
    let mut r = ResolvedModel {
        name: name.clone(),
        source,
        details: details_for(m, blobs, &gguf_path),
        gguf_path,
        projector_path: None,
        adapter_paths: Vec::new(),
        template: None,
        system: None,
        params: serde_json::Map::new(),
        license: Vec::new(),
        messages: Vec::new(),
        digest: Some(stored.digest),
        size: m.total_size(),
        modified: stored.modified,
        manifest: Some(m.clone()),
    };
    for layer in &m.layers {
        match layer.media_type.as_str() {
            MEDIA_TEMPLATE => r.template = Some(text(layer)?),
            MEDIA_SYSTEM => r.system = Some(text(layer)?),
            MEDIA_LICENSE => r.license.push(text(layer)?),
            MEDIA_PARAMS => {
                r.params = serde_json::from_str(&text(layer)?).map_err(|e| json_err(layer, e))?
            }
            MEDIA_MESSAGES => {
                r.messages = serde_json::from_str(&text(layer)?).map_err(|e| json_err(layer, e))?
            }
            MEDIA_PROJECTOR => r.projector_path = Some(blob(layer)?),
            MEDIA_ADAPTER => r.adapter_paths.push(blob(layer)?),
            _ => {}
        }
    }
    Ok(r)
}

pub(crate) fn resolved_from_file(
    path: &Path,
    name: ModelName,
    source: ModelSource,
) -> Result<ResolvedModel> {
    fsutil::check_gguf_magic(path)?;
    let meta = fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    Ok(ResolvedModel {
        name,
        source,
        details: crate::details::details_from_gguf(path).unwrap_or_default(),
        gguf_path: path.to_path_buf(),
        projector_path: None,
        adapter_paths: Vec::new(),
        template: None,
        system: None,
        params: serde_json::Map::new(),
        license: Vec::new(),
        messages: Vec::new(),
        digest: None,
        size: meta.len(),
        modified: fsutil::mtime(&meta),
        manifest: None,
    })
}

/// Reads a text layer or config blob, refusing anything implausibly large.
fn read_small(path: &Path) -> Result<Vec<u8>> {
    let len = fs::metadata(path)
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    if len > MAX_TEXT_LAYER_BYTES {
        return Err(Error::BadManifest {
            what: path.display().to_string(),
            reason: format!("text layer of {len} bytes, the limit is {MAX_TEXT_LAYER_BYTES}"),
        });
    }
    fs::read(path).map_err(|e| Error::io("read", path, e))
}

/// A GGUF file found in a model directory.
pub(crate) struct DirModel {
    pub name: ModelName,
    pub path: PathBuf,
    pub dir: PathBuf,
    pub size: u64,
    pub modified: SystemTime,
}

/// Deep enough for LM Studio (`publisher/repo/file.gguf`) and the Hugging Face cache
/// (`models--org--repo/snapshots/<rev>/file.gguf`).
const MAX_DIR_DEPTH: usize = 4;

/// GGUF files under the model directories, named after their file stems. Projector files and the
/// second and later shards of split models are not models by themselves and are skipped.
pub(crate) fn scan_model_dirs(dirs: &[PathBuf]) -> Vec<DirModel> {
    let mut out: Vec<DirModel> = Vec::new();
    for dir in dirs {
        let mut files = Vec::new();
        collect_gguf(dir, 0, &mut files);
        files.sort();
        for path in files {
            let Some(name) = name_from_file_stem(&path) else {
                continue;
            };
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if out.iter().any(|m| m.name.eq_ignore_case(&name)) {
                continue;
            }
            out.push(DirModel {
                name,
                path,
                dir: dir.clone(),
                size: meta.len(),
                modified: fsutil::mtime(&meta),
            });
        }
    }
    out
}

fn collect_gguf(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().to_ascii_lowercase();
        if file_name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            if depth < MAX_DIR_DEPTH {
                collect_gguf(&path, depth + 1, out);
            }
        } else if file_name.ends_with(".gguf")
            && !file_name.contains("mmproj")
            && !is_later_shard(&file_name)
        {
            out.push(path);
        }
    }
}

/// `name-00002-of-00003.gguf` and later: only the first shard names a split model.
fn is_later_shard(file_name: &str) -> bool {
    let stem = file_name.trim_end_matches(".gguf");
    let Some((head, total)) = stem.rsplit_once("-of-") else {
        return false;
    };
    let Some((_, index)) = head.rsplit_once('-') else {
        return false;
    };
    total.bytes().all(|c| c.is_ascii_digit()) && index.parse::<u32>().is_ok_and(|i| i > 1)
}

/// A model name from a file name: the stem with characters names cannot hold replaced by `-`.
pub(crate) fn name_from_file_stem(path: &Path) -> Option<ModelName> {
    let stem = path.file_stem()?.to_string_lossy();
    let mut model: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !model.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        model.insert(0, '_');
    }
    model.truncate(80);
    ModelName::from_parts(DEFAULT_HOST, DEFAULT_NAMESPACE, &model, DEFAULT_TAG).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_files() {
        let n = name_from_file_stem(Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
        assert_eq!(n.to_string(), "SmolLM2-135M-Instruct.Q4_1:latest");
        let n = name_from_file_stem(Path::new("/m/my model (1).gguf")).unwrap();
        assert_eq!(n.to_string(), "my-model--1-:latest");
        let n = name_from_file_stem(Path::new("/m/-x.gguf")).unwrap();
        assert_eq!(n.model(), "_-x");
    }

    #[test]
    fn shards() {
        assert!(!is_later_shard("qwen-00001-of-00003.gguf"));
        assert!(is_later_shard("qwen-00002-of-00003.gguf"));
        assert!(!is_later_shard("plain.gguf"));
        assert!(!is_later_shard("a-of-b.gguf"));
    }
}
