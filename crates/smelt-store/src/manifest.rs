//! Manifests in Ollama's layout: Docker distribution v2 JSON naming a config blob and layers.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const MEDIA_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_MODEL: &str = "application/vnd.ollama.image.model";
pub const MEDIA_TEMPLATE: &str = "application/vnd.ollama.image.template";
pub const MEDIA_SYSTEM: &str = "application/vnd.ollama.image.system";
pub const MEDIA_PARAMS: &str = "application/vnd.ollama.image.params";
pub const MEDIA_MESSAGES: &str = "application/vnd.ollama.image.messages";
pub const MEDIA_LICENSE: &str = "application/vnd.ollama.image.license";
pub const MEDIA_PROJECTOR: &str = "application/vnd.ollama.image.projector";
pub const MEDIA_ADAPTER: &str = "application/vnd.ollama.image.adapter";

/// Manifests are small; anything larger than this is refused rather than buffered.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Text layers (template, system, params, license, messages) are read into memory; cap them.
pub const MAX_TEXT_LAYER_BYTES: u64 = 16 << 20;

/// One blob reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Layer {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Layer {
        Layer {
            media_type: media_type.to_string(),
            digest,
            size,
            from: None,
            name: None,
        }
    }
}

/// A manifest as stored under `manifests/host/namespace/model/tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub config: Layer,
    #[serde(default)]
    pub layers: Vec<Layer>,
}

impl Manifest {
    /// Parses and checks a manifest; `what` names it in errors (a path or a URL).
    pub fn parse(bytes: &[u8], what: &str) -> Result<Manifest> {
        let bad = |reason: String| Error::BadManifest {
            what: what.to_string(),
            reason,
        };
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "{} bytes, the limit is {MAX_MANIFEST_BYTES}",
                bytes.len()
            )));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if m.schema_version != 2 {
            return Err(bad(format!(
                "schemaVersion {} (only 2 is supported)",
                m.schema_version
            )));
        }
        if !m.media_type.is_empty() && m.media_type != MEDIA_MANIFEST {
            return Err(bad(format!(
                "mediaType {:?}, expected {MEDIA_MANIFEST}",
                m.media_type
            )));
        }
        Ok(m)
    }

    /// Builds a manifest from a config blob and layers.
    pub fn new(config: Layer, layers: Vec<Layer>) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: MEDIA_MANIFEST.to_string(),
            config,
            layers,
        }
    }

    /// The JSON bytes written to disk.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    /// Every blob this manifest references: the config, then the layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    /// Total size of all referenced blobs (what `list` reports).
    pub fn total_size(&self) -> u64 {
        self.blobs().map(|l| l.size).sum()
    }

    /// The layer of a media type, if exactly one is wanted.
    pub fn layer(&self, media_type: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.media_type == media_type)
    }
}

/// The config blob (Ollama's `ConfigV2`): model format and family for listings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_format: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_family: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_families: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file_type: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLLAMA_MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:3f9d9a6a5e8c6bbac7b2ed7e3d3ab0e7fd4d4f0b8e8a4d3c2b1a09f8e7d6c5b4","size":489},"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53","size":98362432},{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000001","size":12,"from":"x"}]}"#;

    #[test]
    fn parses_ollama_manifest() {
        let m = Manifest::parse(OLLAMA_MANIFEST.as_bytes(), "test").unwrap();
        assert_eq!(m.layers.len(), 2);
        assert_eq!(m.total_size(), 489 + 98362432 + 12);
        assert_eq!(m.layer(MEDIA_MODEL).unwrap().size, 98362432);
        assert_eq!(m.layers[1].from.as_deref(), Some("x"));
        let again = Manifest::parse(&m.to_bytes(), "again").unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn rejects_bad_manifests() {
        for (bytes, needle) in [
            ("{", "EOF"),
            (
                r#"{"schemaVersion":1,"config":{"mediaType":"a","digest":"sha256:00","size":1}}"#,
                "digest",
            ),
            (
                &OLLAMA_MANIFEST.replace("\"schemaVersion\":2", "\"schemaVersion\":1"),
                "schemaVersion 1",
            ),
            (
                &OLLAMA_MANIFEST.replace("manifest.v2+json", "manifest.list.v2+json"),
                "mediaType",
            ),
            (&OLLAMA_MANIFEST.replace("98362432", "-1"), "invalid value"),
        ] {
            let err = Manifest::parse(bytes.as_bytes(), "m")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
