//! The store's error type: every variant names the operation and the values involved.

use std::io;
use std::path::{Path, PathBuf};

/// Result alias for the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store, the pull clients and the imports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid model name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    #[error("invalid digest {digest:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest { digest: String },

    #[error("model {name:?} not found")]
    ModelNotFound { name: String },

    #[error("model {name:?} not found at {url} (HTTP 404)")]
    RemoteNotFound { name: String, url: String },

    #[error("{host} is unreachable ({reason})")]
    Unreachable { host: String, reason: String },

    #[error("{op} {url}: HTTP {status}{detail}")]
    Http {
        op: &'static str,
        url: String,
        status: u16,
        detail: String,
    },

    #[error("{url}: {reason}")]
    Protocol { url: String, reason: String },

    #[error(
        "{url} is plain HTTP; pass --insecure (insecure: true) to allow an unencrypted registry"
    )]
    Insecure { url: String },

    #[error(
        "blob {digest}: sha256 of the downloaded data is {actual}; the download was discarded"
    )]
    DigestMismatch { digest: String, actual: String },

    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },

    #[error(
        "disk full while writing {path}; the partial file was removed, free some space and retry"
    )]
    DiskFull { path: PathBuf },

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("invalid manifest {what}: {reason}")]
    BadManifest { what: String, reason: String },

    #[error("pull of {name} cancelled")]
    Cancelled { name: String },

    #[error("could not pull {name}; every source failed:{}", format_attempts(.attempts))]
    AllSourcesFailed {
        name: String,
        attempts: Vec<(String, String)>,
    },

    #[error("Modelfile {path}, line {line}: {reason}")]
    Modelfile {
        path: String,
        line: usize,
        reason: String,
    },

    #[error("Hugging Face repo {repo} has no GGUF file for {quant:?}; files: {available}")]
    HfNoFile {
        repo: String,
        quant: String,
        available: String,
    },

    #[error("pip route ({packages}): {reason}")]
    Pip { packages: String, reason: String },

    #[error("model {name} lives in {location}, which smelt only reads; {hint}")]
    ReadOnly {
        name: String,
        location: String,
        hint: String,
    },

    #[error("model {name} already exists with different content")]
    Exists { name: String },

    #[error("{path} is not a GGUF file: {reason}")]
    NotGguf { path: PathBuf, reason: String },

    #[error("{0}")]
    Unsupported(String),
}

fn format_attempts(attempts: &[(String, String)]) -> String {
    attempts
        .iter()
        .map(|(source, err)| format!("\n  {source}: {err}"))
        .collect()
}

impl Error {
    /// Wraps an I/O error with the operation and path, turning "no space left" into [`Error::DiskFull`].
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Error {
        if is_disk_full(&source) {
            return Error::DiskFull {
                path: path.to_path_buf(),
            };
        }
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True for errors that another source or a later retry might not have (network, server side).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Protocol { .. } => true,
            Error::Http { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }
}

/// ENOSPC and EDQUOT, whichever way the platform reports them.
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded {
        return true;
    }
    // Linux ENOSPC = 28, EDQUOT = 122; macOS ENOSPC = 28, EDQUOT = 69.
    matches!(e.raw_os_error(), Some(28))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_becomes_disk_full() {
        let e = Error::io(
            "write",
            Path::new("/x/blob"),
            io::Error::from_raw_os_error(28),
        );
        assert!(matches!(e, Error::DiskFull { .. }), "{e}");
        assert!(e.to_string().contains("disk full while writing /x/blob"));
        let other = Error::io(
            "write",
            Path::new("/x"),
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(matches!(other, Error::Io { op: "write", .. }));
    }

    #[test]
    fn all_sources_failed_lists_each_attempt() {
        let e = Error::AllSourcesFailed {
            name: "smollm2:135m".into(),
            attempts: vec![
                ("registry".into(), "unreachable".into()),
                ("pip".into(), "no pip".into()),
            ],
        };
        assert_eq!(
            e.to_string(),
            "could not pull smollm2:135m; every source failed:\n  registry: unreachable\n  pip: no pip"
        );
    }
}
