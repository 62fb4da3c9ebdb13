//! smelt-server: the HTTP runtime. Ollama, OpenAI and Anthropic adapters translate into one
//! internal request ([`request::InferRequest`]) and back from its event stream; the scheduler owns
//! model lifecycle (load on first use, keep-alive, LRU eviction within a memory budget).

pub mod config;
pub mod constrain;
pub mod error;
pub mod request;
