//! `create`: a model from a GGUF file, a directory holding one, or another model, plus template,
//! system prompt, parameters, licenses and messages. Files are linked into the store, never copied.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsutil::{self, LinkPref};
use crate::manifest::*;
use crate::name::ModelName;
use crate::pull::PullProgress;
use crate::resolve::{Message, ModelSource, ResolvedModel};
use crate::store::Store;

/// What a new model is made of (a typed Modelfile, or the body of `/api/create`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CreateSpec {
    /// A path to a GGUF file or a directory with one (relative to the base directory), or a model name.
    pub from: String,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub system: Option<String>,
    /// Typed parameters; they are merged over the base model's.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// Added after the base model's licenses (`/api/create` sends a string or a list).
    #[serde(default, deserialize_with = "one_or_many")]
    pub license: Vec<String>,
    /// Replace the base model's messages when non-empty.
    #[serde(default)]
    pub messages: Vec<Message>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl CreateSpec {
    /// A model that is just this GGUF file.
    pub fn from_path(path: &Path) -> CreateSpec {
        CreateSpec {
            from: path.display().to_string(),
            ..Default::default()
        }
    }
}

impl Store {
    /// Creates (or replaces) `name` from `spec`; relative paths in `spec.from` are relative to `base_dir`
    /// (the Modelfile's directory).
    pub fn create(
        &self,
        name: &ModelName,
        spec: &CreateSpec,
        base_dir: &Path,
        progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<ResolvedModel> {
        let op = self.operation_lock()?;
        let (mut layers, base_config, base_params) = self.base_layers(spec, base_dir, progress)?;

        let mut text_layer =
            |media: &str, text: &str, replace: bool, progress: &mut dyn FnMut(&PullProgress)| {
                let digest = self.put_blob_bytes(text.as_bytes())?;
                progress(&PullProgress::status_with_digest(
                    &format!("creating {} layer", short_media(media)),
                    &digest,
                ));
                if replace {
                    layers.retain(|l: &Layer| l.media_type != media);
                }
                layers.push(Layer::new(media, digest, text.len() as u64));
                Ok::<(), Error>(())
            };
        if let Some(t) = &spec.template {
            text_layer(MEDIA_TEMPLATE, t, true, progress)?;
        }
        if let Some(s) = &spec.system {
            text_layer(MEDIA_SYSTEM, s, true, progress)?;
        }
        if !spec.parameters.is_empty() {
            let mut params = base_params;
            params.extend(spec.parameters.clone());
            let json = serde_json::to_string(&params).expect("params serialize");
            text_layer(MEDIA_PARAMS, &json, true, progress)?;
        }
        if !spec.messages.is_empty() {
            let json = serde_json::to_string(&spec.messages).expect("messages serialize");
            text_layer(MEDIA_MESSAGES, &json, true, progress)?;
        }
        for l in &spec.license {
            text_layer(MEDIA_LICENSE, l, false, progress)?;
        }

        let gguf = layers
            .iter()
            .find(|l| l.media_type == MEDIA_MODEL)
            .map(|l| self.blob_path(&l.digest));
        let mut config = match base_config {
            Some(c) => c,
            None => config_for_gguf(gguf.as_deref()),
        };
        config.rootfs = RootFs {
            kind: "layers".into(),
            diff_ids: layers.iter().map(|l| l.digest).collect(),
        };
        let config_bytes = serde_json::to_vec(&config).expect("config serializes");
        let config_digest = self.put_blob_bytes(&config_bytes)?;
        let manifest = Manifest::new(
            Layer::new(MEDIA_CONFIG, config_digest, config_bytes.len() as u64),
            layers,
        );
        progress(&PullProgress::status("writing manifest"));
        self.write_manifest(name, &manifest.to_bytes())?;
        drop(op);
        self.collect_garbage_quietly();
        progress(&PullProgress::status("success"));
        self.resolve(name)
    }

    /// The layers, config and parameters a new model starts from.
    #[allow(clippy::type_complexity)]
    fn base_layers(
        &self,
        spec: &CreateSpec,
        base_dir: &Path,
        progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<(Vec<Layer>, Option<ModelConfig>, Map<String, Value>)> {
        if spec.from.trim().is_empty() {
            return Err(Error::Unsupported(
                "create needs FROM: a GGUF file, a directory or a model name".into(),
            ));
        }
        if let Some(path) = local_path(&spec.from, base_dir) {
            let file = if path.is_dir() {
                gguf_in_dir(&path)?
            } else {
                path
            };
            return Ok((vec![self.link_gguf(&file, progress)?], None, Map::new()));
        }
        let base_name = ModelName::parse(&spec.from).map_err(|_| Error::ModelNotFound {
            name: spec.from.clone(),
        })?;
        let base = self.resolve(&base_name)?;
        let Some(manifest) = &base.manifest else {
            return Ok((
                vec![self.link_gguf(&base.gguf_path, progress)?],
                None,
                Map::new(),
            ));
        };
        if let ModelSource::Ollama(root) = &base.source {
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
        let config = fs::read(self.blob_path(&manifest.config.digest))
            .ok()
            .and_then(|b| serde_json::from_slice::<ModelConfig>(&b).ok());
        progress(&PullProgress::status(format!(
            "using {base_name} as the base"
        )));
        Ok((manifest.layers.clone(), config, base.params.clone()))
    }

    /// Links a GGUF file into the store as a model layer.
    fn link_gguf(&self, path: &Path, progress: &mut dyn FnMut(&PullProgress)) -> Result<Layer> {
        fsutil::check_gguf_magic(path)?;
        progress(&PullProgress::status(format!("linking {}", path.display())));
        let (digest, size) = self.link_blob_file(path, LinkPref::Symlink)?;
        Ok(Layer::new(MEDIA_MODEL, digest, size))
    }
}

/// `from` as an existing file or directory (relative to `base_dir`, `~/` expanded), if it is one.
fn local_path(from: &str, base_dir: &Path) -> Option<PathBuf> {
    let p = match from.strip_prefix("~/") {
        Some(rest) => PathBuf::from(std::env::var_os("HOME")?).join(rest),
        None => base_dir.join(from),
    };
    p.exists().then_some(p)
}

/// The one GGUF model file in a directory (projector files aside).
fn gguf_in_dir(dir: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::io("list directory", dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            n.ends_with(".gguf") && !n.contains("mmproj") && p.is_file()
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::Unsupported(format!(
            "{} holds no .gguf file (safetensors directories are not supported yet)",
            dir.display()
        ))),
        _ => Err(Error::Unsupported(format!(
            "{} holds several GGUF files ({}); name one in FROM",
            dir.display(),
            found
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn short_media(media: &str) -> &str {
    media.rsplit('.').next().unwrap_or(media)
}

/// The config blob for a GGUF model: format, family and sizes from its header where readable.
fn config_for_gguf(gguf: Option<&Path>) -> ModelConfig {
    let details = gguf
        .and_then(|p| crate::details::details_from_gguf(p).ok())
        .unwrap_or_default();
    ModelConfig {
        model_format: "gguf".into(),
        model_family: details.family.clone(),
        model_families: details.families.clone(),
        model_type: details.parameter_size.clone(),
        file_type: details.quantization_level.clone(),
        architecture: std::env::consts::ARCH.into(),
        os: std::env::consts::OS.into(),
        rootfs: RootFs::default(),
    }
}

/// Writes a manifest for a downloaded GGUF blob (Hugging Face and pip pulls).
pub(crate) fn write_gguf_manifest(
    store: &Store,
    name: &ModelName,
    digest: Digest,
    size: u64,
) -> Result<()> {
    let layers = vec![Layer::new(MEDIA_MODEL, digest, size)];
    let mut config = config_for_gguf(Some(&store.blob_path(&digest)));
    config.rootfs = RootFs {
        kind: "layers".into(),
        diff_ids: vec![digest],
    };
    let config_bytes = serde_json::to_vec(&config).expect("config serializes");
    let config_digest = store.put_blob_bytes(&config_bytes)?;
    let manifest = Manifest::new(
        Layer::new(MEDIA_CONFIG, config_digest, config_bytes.len() as u64),
        layers,
    );
    store.write_manifest(name, &manifest.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_create_bodies_deserialize() {
        let spec: CreateSpec = serde_json::from_str(
            r#"{"from":"smollm2:135m","system":"hi","license":"MIT","parameters":{"temperature":0.5},
                "messages":[{"role":"user","content":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(spec.license, vec!["MIT".to_string()]);
        assert_eq!(spec.parameters["temperature"], serde_json::json!(0.5));
        let spec: CreateSpec = serde_json::from_str(r#"{"from":"a","license":["A","B"]}"#).unwrap();
        assert_eq!(spec.license.len(), 2);
        let spec: CreateSpec = serde_json::from_str(r#"{"from":"a"}"#).unwrap();
        assert!(spec.license.is_empty() && spec.template.is_none());
    }
}
