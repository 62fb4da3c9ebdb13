//! Model lookup through the model store ([`StoreRegistry`]), and what the server reads from a
//! GGUF file itself (model_info for /api/show, a memory estimate before loading).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde_json::{json, Map, Value};
use smelt_gguf::{Array, Gguf};

use crate::backend::{
    CreateModel, ModelDetails, ModelRecord, ModelRegistry, PullStatus, RegistryError,
};

/// A record for a loose GGUF file; its digest identifies the file by path, size and time (hashing
/// gigabytes for a listing would be too slow).
pub fn record_for_file(name: &str, path: &Path) -> Result<ModelRecord, RegistryError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| RegistryError::Failed(format!("{}: {e}", path.display())))?;
    let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    meta.len().hash(&mut h);
    modified.hash(&mut h);
    let id = h.finish();
    let digest = format!("{id:016x}{:016x}{id:016x}{:016x}", meta.len(), !id);
    let details = details_from_gguf(path).unwrap_or_default();
    Ok(ModelRecord {
        name: name.to_string(),
        path: path.to_path_buf(),
        digest,
        size: meta.len(),
        modified,
        template: None,
        system: None,
        params: Map::new(),
        license: Vec::new(),
        messages: Vec::new(),
        details,
        modelfile: format!("FROM {}\n", path.display()),
    })
}

fn details_from_gguf(path: &Path) -> Option<ModelDetails> {
    let g = Gguf::open(path).ok()?;
    let arch = g.architecture().unwrap_or("").to_string();
    let n_params: u64 = g.tensors().iter().map(|t| t.n_elements).sum();
    let size = g
        .get_str("general.size_label")
        .ok()
        .flatten()
        .map(str::to_string)
        .unwrap_or_else(|| format_params(n_params));
    Some(ModelDetails {
        parent_model: String::new(),
        format: "gguf".into(),
        family: arch.clone(),
        families: vec![arch],
        parameter_size: size,
        quantization_level: g
            .get_u32("general.file_type")
            .ok()
            .flatten()
            .and_then(smelt_store::file_type_name)
            .unwrap_or("unknown")
            .to_string(),
    })
}

fn format_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.1}B", n as f64 / 1e9)
    } else {
        format!("{:.0}M", n as f64 / 1e6)
    }
}

/// What /api/show reports from the file.
pub struct GgufInfo {
    /// Metadata as JSON (arrays as null unless verbose, as Ollama does), plus parameter count.
    pub model_info: Value,
    pub chat_template: Option<String>,
}

pub fn gguf_model_info(path: &Path, verbose: bool) -> Result<GgufInfo, String> {
    let g = Gguf::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut info = Map::new();
    let mut template = None;
    for (k, v) in g.metadata() {
        if k == "tokenizer.chat_template" {
            template = v.as_string().map(|s| s.to_string_lossy().into_owned());
            continue;
        }
        info.insert(k.clone(), value_json(v, verbose));
    }
    let n_params: u64 = g.tensors().iter().map(|t| t.n_elements).sum();
    info.insert("general.parameter_count".into(), json!(n_params));
    Ok(GgufInfo {
        model_info: Value::Object(info),
        chat_template: template,
    })
}

fn value_json(v: &smelt_gguf::Value, verbose: bool) -> Value {
    use smelt_gguf::Value as V;
    match v {
        V::U8(x) => json!(x),
        V::I8(x) => json!(x),
        V::U16(x) => json!(x),
        V::I16(x) => json!(x),
        V::U32(x) => json!(x),
        V::I32(x) => json!(x),
        V::U64(x) => json!(x),
        V::I64(x) => json!(x),
        V::F32(x) => json!(x),
        V::F64(x) => json!(x),
        V::Bool(x) => json!(x),
        V::String(s) => json!(s.to_string_lossy()),
        V::Array(a) if verbose => array_json(a),
        V::Array(_) => Value::Null,
    }
}

fn array_json(a: &Array) -> Value {
    match a {
        Array::U8(v) => json!(v),
        Array::I8(v) => json!(v),
        Array::U16(v) => json!(v),
        Array::I16(v) => json!(v),
        Array::U32(v) => json!(v),
        Array::I32(v) => json!(v),
        Array::U64(v) => json!(v),
        Array::I64(v) => json!(v),
        Array::F32(v) => json!(v),
        Array::F64(v) => json!(v),
        Array::Bool(v) => json!(v),
        Array::String(v) => Value::Array(
            v.iter()
                .map(|s| json!(String::from_utf8_lossy(s)))
                .collect(),
        ),
        Array::Array(v) => Value::Array(v.iter().map(array_json).collect()),
    }
}

/// The context length a model was trained with (`{arch}.context_length`; 2048 when absent).
pub fn trained_context(path: &Path) -> Result<usize, String> {
    let g = Gguf::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let n = arch_u64(&g, "context_length");
    Ok(n.map(|n| n.min(1 << 20) as usize).unwrap_or(2048))
}

/// Bytes of keys and values per position (every layer), at `kv_elem_bytes` per element.
pub fn kv_position_bytes(path: &Path, kv_elem_bytes: u64) -> Result<u64, String> {
    let g = Gguf::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(position_bytes(&g, kv_elem_bytes))
}

/// An architecture-prefixed integer hyper-parameter (`{arch}.{key}`), u64 or u32.
fn arch_u64(g: &Gguf, key: &str) -> Option<u64> {
    let key = format!("{}.{key}", g.architecture().unwrap_or(""));
    g.get_u64(&key)
        .ok()
        .flatten()
        .or_else(|| g.get_u32(&key).ok().flatten().map(u64::from))
}

/// KV cache bytes of one position: keys and values of every layer.
fn position_bytes(g: &Gguf, kv_elem_bytes: u64) -> u64 {
    let get = |k: &str| arch_u64(g, k);
    let n_layer = get("block_count").unwrap_or(0);
    let n_embd = get("embedding_length").unwrap_or(0);
    let n_head = get("attention.head_count").unwrap_or(1).max(1);
    let n_head_kv = get("attention.head_count_kv").unwrap_or(n_head);
    let head_k = get("attention.key_length").unwrap_or(n_embd / n_head);
    let head_v = get("attention.value_length").unwrap_or(n_embd / n_head);
    n_layer
        .saturating_mul(n_head_kv * (head_k + head_v))
        .saturating_mul(kv_elem_bytes)
}

/// Bytes a model would take: its weights (mapped as stored, or as f32 when `f32_weights`, as
/// the reference backend holds them), a KV cache of `kv_elem_bytes` per element for `num_ctx`
/// positions, and a margin for buffers, read from the file's metadata.
pub fn estimate_memory(
    path: &Path,
    num_ctx: usize,
    f32_weights: bool,
    kv_elem_bytes: u64,
) -> Result<u64, String> {
    let g = Gguf::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let n_embd = arch_u64(&g, "embedding_length").unwrap_or(0);
    let kv = position_bytes(&g, kv_elem_bytes).saturating_mul(num_ctx as u64);
    let n_vocab = g
        .get_string_array("tokenizer.ggml.tokens")
        .ok()
        .flatten()
        .map(|a| a.len() as u64)
        .unwrap_or(0);
    // Logits and scratch for the last position, activations for a prompt, and a margin.
    let buffers = n_vocab
        .saturating_mul(16)
        .saturating_add(n_embd.saturating_mul(num_ctx as u64).saturating_mul(16))
        + (64 << 20);
    let weights = if f32_weights {
        g.tensors()
            .iter()
            .map(|t| t.n_elements.saturating_mul(4))
            .fold(0u64, u64::saturating_add)
    } else {
        g.file_size()
    };
    Ok(weights.saturating_add(kv).saturating_add(buffers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_model_record_info_and_estimate() {
        let path = smelt_testutil::model_path(smelt_testutil::SMOLLM2);
        let r = record_for_file("smol", &path).unwrap();
        assert_eq!(r.details.family, "llama");
        assert_eq!(r.details.quantization_level, "Q4_1");
        assert_eq!(r.details.parameter_size, "135M");
        assert_eq!(r.digest.len(), 64);
        let info = gguf_model_info(&path, false).unwrap();
        assert_eq!(info.model_info["llama.context_length"], 8192);
        assert!(info.model_info["tokenizer.ggml.tokens"].is_null());
        assert!(info.chat_template.unwrap().contains("<|im_start|>"));
        // Per position: 30 layers x 3 KV heads x (64 + 64) x 4 bytes of KV, 576 x 16 of activations.
        let e1 = estimate_memory(&path, 1024, false, 4).unwrap();
        let e2 = estimate_memory(&path, 2048, false, 4).unwrap();
        // SmolLM2: 30 layers, 3 KV heads of 64 for keys and values.
        assert_eq!(kv_position_bytes(&path, 2).unwrap(), 30 * 3 * 128 * 2);
        let f = estimate_memory(&path, 1024, true, 4).unwrap();
        assert!(f > e1 + 400_000_000, "134.5M parameters as f32");
        assert_eq!(e2 - e1, 1024 * (30 * 3 * 128 * 4 + 576 * 16));
        assert_eq!(trained_context(&path).unwrap(), 8192);
    }
}

// ---------------------------------------------------------------------------------------------
// The model store
// ---------------------------------------------------------------------------------------------

/// The model store (smelt's own, an Ollama store and GGUF directories read in place, or a path
/// to a `.gguf` file).
pub struct StoreRegistry {
    store: smelt_store::Store,
    pull: smelt_store::PullOptions,
}

impl StoreRegistry {
    pub fn new(store: smelt_store::Store, pull: smelt_store::PullOptions) -> StoreRegistry {
        StoreRegistry { store, pull }
    }

    /// The store the environment names (SMELT_MODELS, OLLAMA_MODELS, SMELT_MODEL_DIRS, ...).
    pub fn from_env() -> Result<StoreRegistry, RegistryError> {
        let store = smelt_store::Store::open_default().map_err(store_error)?;
        Ok(StoreRegistry::new(
            store,
            smelt_store::PullOptions::from_env(),
        ))
    }

    pub fn store(&self) -> &smelt_store::Store {
        &self.store
    }
}

fn store_error(e: smelt_store::Error) -> RegistryError {
    use smelt_store::Error as E;
    match e {
        E::ModelNotFound { name } | E::RemoteNotFound { name, .. } => RegistryError::NotFound(name),
        e @ (E::InvalidName { .. } | E::InvalidDigest { .. }) => {
            RegistryError::Invalid(e.to_string())
        }
        other => RegistryError::Failed(other.to_string()),
    }
}

fn parse_name(name: &str) -> Result<smelt_store::ModelName, RegistryError> {
    smelt_store::ModelName::parse(name).map_err(store_error)
}

fn details(d: &smelt_store::ModelDetails) -> ModelDetails {
    ModelDetails {
        parent_model: d.parent_model.clone(),
        format: d.format.clone(),
        family: d.family.clone(),
        families: d.families.clone(),
        parameter_size: d.parameter_size.clone(),
        quantization_level: d.quantization_level.clone(),
    }
}

fn record_from_resolved(
    spec: &str,
    r: &smelt_store::ResolvedModel,
) -> Result<ModelRecord, RegistryError> {
    // A plain file keeps the path as its name; loose files get a cheap identity digest.
    let mut rec = match &r.digest {
        Some(_) => ModelRecord {
            name: r.name.to_string(),
            path: r.gguf_path.clone(),
            digest: String::new(),
            size: r.size,
            modified: r.modified,
            template: None,
            system: None,
            params: Map::new(),
            license: Vec::new(),
            messages: Vec::new(),
            details: ModelDetails::default(),
            modelfile: String::new(),
        },
        None => {
            let name = if matches!(r.source, smelt_store::ModelSource::File) {
                spec.to_string()
            } else {
                r.name.to_string()
            };
            record_for_file(&name, &r.gguf_path)?
        }
    };
    if let Some(d) = &r.digest {
        rec.digest = d.hex();
    }
    rec.template = r.template.clone();
    rec.system = r.system.clone();
    rec.params = r.params.clone();
    rec.license = r.license.clone();
    rec.messages = r
        .messages
        .iter()
        .map(|m| crate::request::ChatMessage::new(&m.role, m.content.clone()))
        .collect();
    if !r.details.format.is_empty() || !r.details.family.is_empty() {
        rec.details = details(&r.details);
    }
    rec.modelfile = smelt_store::render_modelfile(r);
    Ok(rec)
}

impl ModelRegistry for StoreRegistry {
    fn resolve(&self, name: &str) -> Result<ModelRecord, RegistryError> {
        let r = self.store.resolve_spec(name).map_err(store_error)?;
        record_from_resolved(name, &r)
    }

    fn list(&self) -> Result<Vec<ModelRecord>, RegistryError> {
        let entries = self.store.list().map_err(store_error)?;
        Ok(entries
            .into_iter()
            .map(|e| ModelRecord {
                name: e.name.to_string(),
                path: e.gguf_path.clone(),
                digest: e.digest.map(|d| d.hex()).unwrap_or_else(|| {
                    record_for_file(&e.name.to_string(), &e.gguf_path)
                        .map(|r| r.digest)
                        .unwrap_or_default()
                }),
                size: e.size,
                modified: e.modified,
                template: None,
                system: None,
                params: Map::new(),
                license: Vec::new(),
                messages: Vec::new(),
                details: details(&e.details),
                modelfile: String::new(),
            })
            .collect())
    }

    fn copy(&self, source: &str, destination: &str) -> Result<(), RegistryError> {
        let (s, d) = (parse_name(source)?, parse_name(destination)?);
        self.store.copy(&s, &d).map(|_| ()).map_err(store_error)
    }

    fn delete(&self, name: &str) -> Result<(), RegistryError> {
        self.store
            .remove(&parse_name(name)?)
            .map(|_| ())
            .map_err(store_error)
    }

    fn pull(
        &self,
        name: &str,
        progress: &mut dyn FnMut(PullStatus),
        cancel: &AtomicBool,
    ) -> Result<(), RegistryError> {
        let n = parse_name(name)?;
        self.store
            .pull(
                &n,
                &self.pull,
                &mut |p| {
                    progress(PullStatus {
                        status: p.status.clone(),
                        digest: p.digest.clone(),
                        total: p.total,
                        completed: p.completed,
                    })
                },
                cancel,
            )
            .map(|_| ())
            .map_err(store_error)
    }

    fn create(
        &self,
        name: &str,
        spec: &CreateModel,
        progress: &mut dyn FnMut(PullStatus),
    ) -> Result<(), RegistryError> {
        let n = parse_name(name)?;
        let spec = smelt_store::CreateSpec {
            from: spec.from.clone(),
            template: spec.template.clone(),
            system: spec.system.clone(),
            parameters: spec.parameters.clone(),
            license: spec.license.clone(),
            messages: spec
                .messages
                .iter()
                .map(|(role, content)| smelt_store::Message {
                    role: role.clone(),
                    content: content.clone(),
                })
                .collect(),
        };
        let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        self.store
            .create(&n, &spec, &base, &mut |p| {
                progress(PullStatus {
                    status: p.status.clone(),
                    digest: p.digest.clone(),
                    total: p.total,
                    completed: p.completed,
                })
            })
            .map(|_| ())
            .map_err(store_error)
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;

    #[test]
    fn create_list_copy_delete_through_the_store() {
        let dir = std::env::temp_dir().join(format!("smelt-server-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = smelt_store::Store::open(smelt_store::StoreConfig::isolated(&dir)).unwrap();
        let gguf = smelt_testutil::model_path(smelt_testutil::SMOLLM2);
        let name = smelt_store::ModelName::parse("tiny").unwrap();
        store
            .create(
                &name,
                &smelt_store::CreateSpec::from_path(&gguf),
                std::path::Path::new("."),
                &mut |_| {},
            )
            .unwrap();
        let reg = StoreRegistry::new(store, smelt_store::PullOptions::default());
        let r = reg.resolve("tiny").unwrap();
        assert_eq!(r.name, "tiny:latest");
        assert_eq!(r.digest.len(), 64);
        assert!(r.modelfile.contains("FROM"));
        assert_eq!(reg.list().unwrap().len(), 1);
        reg.copy("tiny", "tiny2:v1").unwrap();
        assert_eq!(reg.resolve("tiny2:v1").unwrap().path, r.path);
        reg.delete("tiny").unwrap();
        assert!(matches!(
            reg.resolve("tiny"),
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            reg.delete("nope"),
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            reg.resolve("bad name!"),
            Err(RegistryError::Invalid(_))
        ));
        // A path still works.
        assert_eq!(reg.resolve(gguf.to_str().unwrap()).unwrap().path, gguf);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
