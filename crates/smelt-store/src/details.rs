//! Model details for listings (`/api/tags`, `/api/show`): format, family, parameter size, quantization.

use std::path::Path;

use serde::{Deserialize, Serialize};
use smelt_gguf::Gguf;

use crate::error::{Error, Result};

use crate::manifest::ModelConfig;

/// Ollama's `details` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDetails {
    #[serde(default)]
    pub parent_model: String,
    #[serde(default)]
    pub format: String,
    #[serde(default)]
    pub family: String,
    #[serde(default)]
    pub families: Vec<String>,
    #[serde(default)]
    pub parameter_size: String,
    #[serde(default)]
    pub quantization_level: String,
}

impl ModelDetails {
    /// What a manifest's config blob says (Ollama fills these in when it creates a model).
    pub fn from_config(config: &ModelConfig) -> ModelDetails {
        let families = if config.model_families.is_empty() && !config.model_family.is_empty() {
            vec![config.model_family.clone()]
        } else {
            config.model_families.clone()
        };
        ModelDetails {
            parent_model: String::new(),
            format: config.model_format.clone(),
            family: config.model_family.clone(),
            families,
            parameter_size: config.model_type.clone(),
            quantization_level: config.file_type.clone(),
        }
    }

    /// True when the listing fields are filled in.
    pub fn is_complete(&self) -> bool {
        !self.format.is_empty() && !self.family.is_empty() && !self.quantization_level.is_empty()
    }
}

/// Ollama's human-readable parameter count: whole numbers bare (`7B`, `270M`), otherwise one
/// decimal for billions (`1.2B`) and two for millions (`134.52M`).
pub fn format_parameter_count(n: u64) -> String {
    const T: u64 = 1_000;
    const M: u64 = 1_000_000;
    const B: u64 = 1_000_000_000;
    match n {
        n if n >= B && n % B == 0 => format!("{}B", n / B),
        n if n >= B => format!("{:.1}B", n as f64 / B as f64),
        n if n >= M && n % M == 0 => format!("{}M", n / M),
        n if n >= M => format!("{:.2}M", n as f64 / M as f64),
        n if n >= T => format!("{:.0}K", n as f64 / T as f64),
        n => n.to_string(),
    }
}

/// Details read from a GGUF header: `general.architecture`, the parameter count (summed over
/// the tensors) and the quantization (`general.file_type`, else the type holding most weights).
pub fn details_from_gguf(path: &Path) -> Result<ModelDetails> {
    let gguf = Gguf::open(path).map_err(|e| Error::NotGguf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let family = gguf.architecture().unwrap_or_default().to_string();
    let parameters: u64 = gguf.tensors().iter().map(|t| t.n_elements).sum();
    let quantization_level = gguf
        .get_u32("general.file_type")
        .ok()
        .flatten()
        .and_then(file_type_name)
        .map(str::to_string)
        .or_else(|| dominant_type(&gguf))
        .unwrap_or_default();
    Ok(ModelDetails {
        parent_model: String::new(),
        format: "gguf".into(),
        families: if family.is_empty() {
            Vec::new()
        } else {
            vec![family.clone()]
        },
        family,
        parameter_size: format_parameter_count(parameters),
        quantization_level,
    })
}

/// RFC 3339 in UTC with nanoseconds (`2026-11-26T01:10:00.5Z`), as Ollama's `modified_at`.
pub fn format_rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let nanos = d.subsec_nanos();
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_string()
    };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}{frac}Z")
}

/// The name of a `general.file_type` value: llama.cpp's `llama_ftype` numbering, as Ollama
/// reports it (ids 4 to 6 were retired formats).
pub fn file_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// The element type holding the most weights, for files without `general.file_type`.
fn dominant_type(gguf: &Gguf) -> Option<String> {
    let mut counts: Vec<(smelt_gguf::GgmlType, u64)> = Vec::new();
    for t in gguf.tensors() {
        match counts.iter_mut().find(|(ty, _)| *ty == t.dtype) {
            Some((_, n)) => *n += t.n_elements,
            None => counts.push((t.dtype, t.n_elements)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(ty, _)| ty.name().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_read_like_ollamas() {
        assert_eq!(format_parameter_count(134_515_008), "134.52M");
        assert_eq!(format_parameter_count(268_098_176), "268.10M");
        assert_eq!(format_parameter_count(270_000_000), "270M");
        assert_eq!(format_parameter_count(1_200_000_000), "1.2B");
        assert_eq!(format_parameter_count(7_000_000_000), "7B");
        assert_eq!(format_parameter_count(999), "999");
    }

    #[test]
    fn rfc3339() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_655_400_500)),
            "2026-11-26T01:10:00.5Z"
        );
        assert_eq!(
            format_rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn details_from_config() {
        let c = ModelConfig {
            model_format: "gguf".into(),
            model_family: "llama".into(),
            model_type: "134.52M".into(),
            file_type: "Q4_1".into(),
            ..Default::default()
        };
        let d = ModelDetails::from_config(&c);
        assert_eq!(d.families, vec!["llama".to_string()]);
        assert!(d.is_complete());
        assert!(!ModelDetails::default().is_complete());
    }

    #[test]
    fn details_of_the_real_models() {
        let smol = details_from_gguf(&smelt_testutil::model_path(smelt_testutil::SMOLLM2)).unwrap();
        assert_eq!(
            (
                smol.format.as_str(),
                smol.family.as_str(),
                smol.quantization_level.as_str()
            ),
            ("gguf", "llama", "Q4_1")
        );
        assert_eq!(smol.parameter_size, "134.52M"); // as `ollama list` shows smollm2:135m
        let gemma = details_from_gguf(&smelt_testutil::model_path(smelt_testutil::GEMMA3)).unwrap();
        assert_eq!(
            (
                gemma.family.as_str(),
                gemma.parameter_size.as_str(),
                gemma.quantization_level.as_str()
            ),
            ("gemma3", "268.10M", "Q4_K_M")
        );
        let err = details_from_gguf(Path::new("/nonexistent.gguf")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent.gguf"), "{err}");
    }
}
