//! Hugging Face GGUF repos as `hf.co/ORG/REPO[:QUANT]`: list the repo's files
//! (`/api/models/ORG/REPO/tree/main`), pick the GGUF file for the quantization (default Q4_K_M),
//! download it from `/ORG/REPO/resolve/main/FILE` (redirects followed, Range parts, sha256 from the
//! LFS pointer) and write a manifest for it.

use std::sync::atomic::AtomicBool;

use serde::Deserialize;

use crate::digest::Digest;
use crate::download::{fetch_blob, Transfer};
use crate::error::{Error, Result};
use crate::http::{encode_path, Client};
use crate::name::{ModelName, DEFAULT_TAG};
use crate::pull::{PullOptions, PullProgress};
use crate::store::Store;

/// The quantization picked when the name has no tag.
pub const DEFAULT_QUANT: &str = "Q4_K_M";

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    lfs: Option<LfsInfo>,
}

#[derive(Debug, Clone, Deserialize)]
struct LfsInfo {
    oid: String,
    size: u64,
}

pub(crate) fn pull_hf(
    store: &Store,
    from: &ModelName,
    target: &ModelName,
    opts: &PullOptions,
    progress: &mut dyn FnMut(&PullProgress),
    cancel: &AtomicBool,
) -> Result<()> {
    let endpoint = opts.hf_endpoint.trim_end_matches('/');
    // An endpoint configured as http:// is an explicit choice (a mirror or a test server).
    let insecure = opts.insecure || endpoint.starts_with("http://");
    let client =
        Client::new(&opts.client_config(insecure)).with_bearer(opts.hf_token.as_deref(), endpoint);
    let repo = format!("{}/{}", from.namespace(), from.model());
    let quant = if from.tag() == DEFAULT_TAG {
        DEFAULT_QUANT
    } else {
        from.tag()
    };

    progress(&PullProgress::status("pulling manifest"));
    let url = format!("{endpoint}/api/models/{repo}/tree/main?recursive=true");
    let reply = client.get(&url, Some("application/json"), None)?;
    let body = match reply.status {
        200 => reply.read_small()?,
        404 => {
            return Err(Error::RemoteNotFound {
                name: from.to_string(),
                url,
            })
        }
        status @ (401 | 403) => {
            let detail = format!(
                "{} (a gated or private repo needs HF_TOKEN)",
                reply.error_detail()
            );
            return Err(Error::Http {
                op: "list repo files",
                url,
                status,
                detail,
            });
        }
        status => {
            return Err(Error::Http {
                op: "list repo files",
                url,
                status,
                detail: reply.error_detail(),
            })
        }
    };
    let entries: Vec<TreeEntry> = serde_json::from_slice(&body).map_err(|e| Error::Protocol {
        url: url.clone(),
        reason: format!("file list: {e}"),
    })?;
    let file = select_gguf(&entries, quant, from.tag() == DEFAULT_TAG, &repo)?;
    let lfs = file.lfs.as_ref().ok_or_else(|| Error::Protocol {
        url: url.clone(),
        reason: format!(
            "{} has no LFS pointer, so no sha256 to verify it against",
            file.path
        ),
    })?;
    let digest = Digest::parse(&format!("sha256:{}", lfs.oid)).map_err(|_| Error::Protocol {
        url: url.clone(),
        reason: format!("LFS oid {:?} is not a sha256", lfs.oid),
    })?;

    let model = target.to_string();
    let t = Transfer {
        store,
        client: &client,
        opts,
        cancel,
        model: &model,
    };
    let file_url = format!("{endpoint}/{repo}/resolve/main/{}", encode_path(&file.path));
    fetch_blob(&t, &file_url, &digest, lfs.size, progress)?;

    progress(&PullProgress::status("writing manifest"));
    crate::create::write_gguf_manifest(store, target, digest, lfs.size)
}

/// The GGUF file for `quant`: the name must contain it as a whole token (`Q4_K` does not match
/// `Q4_K_M`); projector files and split models are skipped; the shortest path wins. With the
/// default quant and no match, a repo with a single GGUF file gives that file.
pub(crate) fn select_gguf<'a>(
    entries: &'a [TreeEntry],
    quant: &str,
    defaulted: bool,
    repo: &str,
) -> Result<&'a TreeEntry> {
    let ggufs: Vec<&TreeEntry> = entries
        .iter()
        .filter(|e| e.kind == "file")
        .filter(|e| {
            let lower = e.path.to_ascii_lowercase();
            lower.ends_with(".gguf") && !file_name(&lower).contains("mmproj")
        })
        .collect();
    let mut matching: Vec<&TreeEntry> = ggufs
        .iter()
        .copied()
        .filter(|e| contains_token(file_name(&e.path), quant))
        .collect();
    if matching.is_empty() && defaulted && ggufs.len() == 1 {
        matching = ggufs.clone();
    }
    let (whole, split): (Vec<&TreeEntry>, Vec<&TreeEntry>) = matching
        .into_iter()
        .partition(|e| !file_name(&e.path).to_ascii_lowercase().contains("-of-0"));
    if let Some(best) = whole
        .into_iter()
        .min_by_key(|e| (e.path.len(), e.path.clone()))
    {
        return Ok(best);
    }
    if !split.is_empty() {
        return Err(Error::Unsupported(format!(
            "{repo} has {quant} only as a split GGUF ({}); split models are not supported yet",
            split[0].path
        )));
    }
    let available = if ggufs.is_empty() {
        "none with .gguf".to_string()
    } else {
        ggufs
            .iter()
            .map(|e| e.path.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Error::HfNoFile {
        repo: repo.to_string(),
        quant: quant.to_string(),
        available,
    })
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Case-insensitive `needle` in `hay`, not preceded by a letter or digit and not followed by a
/// letter, digit or `_` (which would continue the quant name).
fn contains_token(hay: &str, needle: &str) -> bool {
    let (hay, needle) = (hay.to_ascii_uppercase(), needle.to_ascii_uppercase());
    let h = hay.as_bytes();
    let mut from = 0;
    while let Some(i) = hay[from..].find(&needle) {
        let start = from + i;
        let end = start + needle.len();
        let before_ok = start == 0 || !h[start - 1].is_ascii_alphanumeric();
        let after_ok = end == h.len() || !(h[end].is_ascii_alphanumeric() || h[end] == b'_');
        if before_ok && after_ok {
            return true;
        }
        from = start + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> TreeEntry {
        TreeEntry {
            kind: "file".into(),
            path: path.into(),
            lfs: None,
        }
    }

    #[test]
    fn picks_the_quant_file() {
        let entries: Vec<TreeEntry> = [
            "README.md",
            "SmolLM2-135M-Instruct-Q4_K_M.gguf",
            "SmolLM2-135M-Instruct-Q4_K.gguf",
            "SmolLM2-135M-Instruct-Q4_K_L.gguf",
            "SmolLM2-135M-Instruct.Q8_0.gguf",
            "sub/SmolLM2-135M-Instruct-Q4_K_M.gguf",
            "mmproj-Q4_K_M.gguf",
            "big/Model-Q6_K-00001-of-00002.gguf",
        ]
        .iter()
        .map(|p| entry(p))
        .collect();
        let pick = |q: &str| select_gguf(&entries, q, false, "r").map(|e| e.path.clone());
        assert_eq!(pick("Q4_K_M").unwrap(), "SmolLM2-135M-Instruct-Q4_K_M.gguf");
        assert_eq!(pick("q4_k").unwrap(), "SmolLM2-135M-Instruct-Q4_K.gguf");
        assert_eq!(pick("Q8_0").unwrap(), "SmolLM2-135M-Instruct.Q8_0.gguf");
        let err = pick("IQ2_XS").unwrap_err().to_string();
        assert!(
            err.contains("no GGUF file for \"IQ2_XS\"") && err.contains("Q8_0.gguf"),
            "{err}"
        );
        assert!(pick("Q6_K").unwrap_err().to_string().contains("split"));
    }

    #[test]
    fn single_file_repo_serves_the_default() {
        let entries = vec![entry("model.Q4_1.gguf")];
        assert_eq!(
            select_gguf(&entries, DEFAULT_QUANT, true, "r")
                .unwrap()
                .path,
            "model.Q4_1.gguf"
        );
        assert!(select_gguf(&entries, DEFAULT_QUANT, false, "r").is_err());
    }

    #[test]
    fn tokens() {
        assert!(contains_token("a-Q4_K_M.gguf", "q4_k_m"));
        assert!(!contains_token("a-Q4_K_M.gguf", "Q4_K"));
        assert!(!contains_token("aQ4_0.gguf", "Q4_0"));
        assert!(contains_token("a_Q4_0.gguf", "Q4_0"));
    }
}
