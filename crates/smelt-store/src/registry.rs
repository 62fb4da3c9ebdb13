//! The Ollama registry protocol (Docker distribution v2): `GET /v2/<ns>/<model>/manifests/<tag>`,
//! then `GET /v2/<ns>/<model>/blobs/<digest>` for the config and each layer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use crate::download::{fetch_blob, Transfer};
use crate::error::{Error, Result};
use crate::http::Client;
use crate::manifest::{Manifest, MEDIA_MANIFEST, MEDIA_MODEL};
use crate::name::ModelName;
use crate::pull::{PullOptions, PullProgress};
use crate::store::Store;

/// Pulls `from` from its registry and stores it as `target`.
pub(crate) fn pull_registry(
    store: &Store,
    from: &ModelName,
    target: &ModelName,
    opts: &PullOptions,
    progress: &mut dyn FnMut(&PullProgress),
    cancel: &AtomicBool,
) -> Result<()> {
    let client = Client::new(&opts.client_config(opts.insecure));
    let scheme = if opts.insecure { "http" } else { "https" };
    let base = format!(
        "{scheme}://{}/v2/{}/{}",
        from.host(),
        from.namespace(),
        from.model()
    );
    progress(&PullProgress::status("pulling manifest"));
    let url = format!("{base}/manifests/{}", from.tag());
    let bytes = fetch_manifest(&client, &url, from, opts, cancel)?;
    let manifest = Manifest::parse(&bytes, &url)?;
    if manifest.layer(MEDIA_MODEL).is_none() {
        return Err(Error::Unsupported(format!(
            "{from} has no GGUF model layer (safetensors and cloud models are not supported)"
        )));
    }
    let model = target.to_string();
    let t = Transfer {
        store,
        client: &client,
        opts,
        cancel,
        model: &model,
    };
    for layer in manifest.blobs() {
        fetch_blob(
            &t,
            &format!("{base}/blobs/{}", layer.digest),
            &layer.digest,
            layer.size,
            progress,
        )?;
    }
    progress(&PullProgress::status("writing manifest"));
    // The registry's bytes, unchanged, so the model's ID matches the registry's.
    store.write_manifest(target, &bytes)
}

/// Manifest fetches retry at most this often: a user waits on them, and a registry that fails
/// them twice in a row is better reported than waited for.
const MANIFEST_RETRIES: u32 = 2;

/// Fetches the manifest, retrying server-side failures; an unreachable host fails at once so
/// the next source is tried quickly.
fn fetch_manifest(
    client: &Client,
    url: &str,
    name: &ModelName,
    opts: &PullOptions,
    cancel: &AtomicBool,
) -> Result<Vec<u8>> {
    let mut attempt = 0;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled {
                name: name.to_string(),
            });
        }
        let result = client
            .get(url, Some(MEDIA_MANIFEST), None)
            .and_then(|reply| match reply.status {
                200 => reply.read_small(),
                404 => Err(Error::RemoteNotFound {
                    name: name.to_string(),
                    url: url.to_string(),
                }),
                status => Err(Error::Http {
                    op: "get manifest",
                    url: url.to_string(),
                    status,
                    detail: reply.error_detail(),
                }),
            });
        match result {
            Err(e)
                if e.is_transient()
                    && !matches!(e, Error::Unreachable { .. })
                    && attempt < opts.retries.min(MANIFEST_RETRIES) =>
            {
                attempt += 1;
                thread::sleep(opts.backoff.saturating_mul(1 << (attempt - 1)));
            }
            // A TLS handshake with a plain-HTTP server breaks off like this.
            Err(Error::Protocol { url, reason }) if url.starts_with("https://") => {
                let reason =
                    format!("{reason} (if this registry speaks plain HTTP, pass --insecure)");
                return Err(Error::Protocol { url, reason });
            }
            other => return other,
        }
    }
}
