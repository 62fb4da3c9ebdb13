//! Pulling from an Ollama-protocol registry served in-process: token challenge, 307 redirects,
//! parallel Range parts, resume after a dropped connection, corrupted blobs, skipped blobs, errors.

mod common;

use std::sync::atomic::AtomicBool;

use common::*;
use smelt_store::test_registry::TestRegistry;
use smelt_store::{Error, ModelName, MEDIA_PARAMS, MEDIA_TEMPLATE};

fn serve_smollm2(reg: &TestRegistry) -> Vec<u8> {
    reg.add_model(
        "library",
        "smollm2",
        "135m",
        smollm2_bytes(),
        Some(smollm2_digest()),
        vec![
            (MEDIA_TEMPLATE, b"{{ .Prompt }}".to_vec()),
            (
                MEDIA_PARAMS,
                br#"{"stop":["<|im_end|>"],"temperature":0.2}"#.to_vec(),
            ),
        ],
    )
}

#[test]
fn pull_with_token_redirect_and_range_parts() {
    let reg = TestRegistry::start();
    let manifest = serve_smollm2(&reg);
    reg.require_token("secret-token");
    reg.redirect_blobs(true);
    let (_dir, store) = temp_store("pull");
    let name = format!("{}/library/smollm2:135m", reg.host());

    let (model, events) = pull(&store, &name, &fast_options());
    let model = model.unwrap();

    // The model resolves to the verified blob with its template and parameters.
    assert_eq!(model.gguf_path, store.blob_path(&smollm2_digest()));
    assert_eq!(
        std::fs::metadata(&model.gguf_path).unwrap().len(),
        smollm2_bytes().len() as u64
    );
    assert_eq!(model.template.as_deref(), Some("{{ .Prompt }}"));
    assert_eq!(model.params["temperature"], serde_json::json!(0.2));
    assert_eq!(
        model.digest,
        Some(smelt_store::Digest::of_bytes(&manifest)),
        "manifest stored byte for byte"
    );

    // Protocol: a 401 challenge, a token fetch, the manifest with the token, 307s, Range parts.
    let log = reg.requests();
    assert!(log
        .iter()
        .any(|r| r.path.contains("/manifests/") && r.status == 401));
    assert!(log
        .iter()
        .any(|r| r.path.starts_with("/token?") && r.status == 200));
    assert!(log.iter().any(|r| r.path.contains("/manifests/135m")
        && r.status == 200
        && r.authorization.as_deref() == Some("Bearer secret-token")));
    assert!(log
        .iter()
        .any(|r| r.path.contains("/blobs/") && r.status == 307));
    let parts: Vec<_> = log
        .iter()
        .filter(|r| r.path.starts_with("/cdn/") && r.status == 206)
        .collect();
    let big_parts: Vec<_> = parts
        .iter()
        .filter(|r| r.path.contains(&smollm2_digest().hex()))
        .collect();
    assert!(
        big_parts.len() >= 5,
        "98 MB in 16 MB parts, got {}",
        big_parts.len()
    );
    assert!(big_parts.iter().any(|r| r.range_start().unwrap() > 0));
    assert!(
        parts.iter().all(|r| r.authorization.is_none()),
        "no token leaks past the redirect"
    );

    // Ollama's progress statuses, ending in success; bytes reach the total.
    let statuses: Vec<&str> = events.iter().map(|e| e.status.as_str()).collect();
    assert_eq!(statuses.first(), Some(&"pulling manifest"));
    assert_eq!(statuses.last(), Some(&"success"));
    assert!(
        statuses.contains(&"verifying sha256 digest") && statuses.contains(&"writing manifest")
    );
    let short = format!("pulling {}", smollm2_digest().short());
    let last = events.iter().rfind(|e| e.status == short).unwrap();
    assert_eq!(last.completed, last.total);

    // No partial files or download state are left behind.
    assert!(
        blob_names(&store).iter().all(|n| !n.contains("partial")),
        "{:?}",
        blob_names(&store)
    );
}

#[test]
fn resumes_after_dropped_connections() {
    let reg = TestRegistry::start();
    serve_smollm2(&reg);
    // The first two blob bodies die midway; the parts retry from where they stopped.
    reg.drop_connection_after(5 << 20);
    reg.drop_connection_after(3 << 20);
    let (_dir, store) = temp_store("resume");
    let name = format!("{}/library/smollm2:135m", reg.host());
    let (model, _) = pull(&store, &name, &fast_options());
    model.unwrap();
    let log = reg.requests();
    let dropped: Vec<_> = log
        .iter()
        .filter(|r| r.path.contains("/blobs/") && r.status == 206 && r.sent > 0)
        .collect();
    // A retry asks for the bytes after those already written, not the part from its start.
    let size = smollm2_bytes().len() as u64;
    let step = size.div_ceil(size.div_ceil(16 << 20)); // the planned part length
    let resumed = dropped
        .iter()
        .filter(|r| r.range_start().unwrap() % step != 0);
    assert!(resumed.count() >= 1, "{log:#?}");
    let (digest, _) = smelt_store::Digest::of_file(&store.blob_path(&smollm2_digest())).unwrap();
    assert_eq!(digest, smollm2_digest());
}

#[test]
fn corrupted_blob_is_rejected_and_nothing_is_installed() {
    let reg = TestRegistry::start();
    serve_smollm2(&reg);
    reg.corrupt_blob(&smollm2_digest(), true);
    let (_dir, store) = temp_store("corrupt");
    let name = format!("{}/library/smollm2:135m", reg.host());
    let (result, _) = pull(&store, &name, &fast_options());
    let err = result.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("was discarded"), "{err}");
    assert!(!store.blob_path(&smollm2_digest()).exists());
    assert!(
        blob_names(&store)
            .iter()
            .all(|n| !n.contains(&smollm2_digest().hex())),
        "{:?}",
        blob_names(&store)
    );
    assert!(matches!(
        store.resolve(&ModelName::parse(&name).unwrap()),
        Err(Error::ModelNotFound { .. })
    ));

    // Served correctly again, the same pull succeeds.
    reg.corrupt_blob(&smollm2_digest(), false);
    pull(&store, &name, &fast_options()).0.unwrap();
}

#[test]
fn present_blobs_are_not_downloaded_again() {
    let reg = TestRegistry::start();
    serve_smollm2(&reg);
    let (_dir, store) = temp_store("skip");
    let name = format!("{}/library/smollm2:135m", reg.host());
    pull(&store, &name, &fast_options()).0.unwrap();
    // Another tag naming the same GGUF with a different template.
    reg.add_model(
        "library",
        "smollm2",
        "other",
        smollm2_bytes(),
        Some(smollm2_digest()),
        vec![(MEDIA_TEMPLATE, b"x".to_vec())],
    );
    reg.clear_log();
    let (r, events) = pull(
        &store,
        &format!("{}/library/smollm2:other", reg.host()),
        &fast_options(),
    );
    r.unwrap();
    let log = reg.requests();
    assert!(
        !log.iter().any(|r| r.path.contains(&smollm2_digest().hex())),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|r| r.path.contains("/blobs/")),
        "the new template blob is fetched"
    );
    let short = format!("pulling {}", smollm2_digest().short());
    let skipped = events.iter().find(|e| e.status == short).unwrap();
    assert_eq!(skipped.completed, skipped.total);
}

#[test]
fn server_ignoring_range_still_works() {
    let reg = TestRegistry::start();
    serve_smollm2(&reg);
    reg.ignore_range(true);
    let (_dir, store) = temp_store("norange");
    let mut opts = fast_options();
    opts.min_part_size = 40 << 20; // three parts, each skipping to its offset in a full body
    pull(
        &store,
        &format!("{}/library/smollm2:135m", reg.host()),
        &opts,
    )
    .0
    .unwrap();
}

#[test]
fn clear_errors() {
    let reg = TestRegistry::start();
    serve_smollm2(&reg);
    let (_dir, store) = temp_store("errors");
    let opts = fast_options();

    let (r, _) = pull(&store, &format!("{}/library/nosuch:1", reg.host()), &opts);
    let err = r.unwrap_err();
    assert!(matches!(err, Error::RemoteNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("not found") && err.to_string().contains("nosuch"),
        "{err}"
    );

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (r, _) = pull(&store, &format!("{closed}/library/x:1"), &opts);
    let err = r.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");

    let mut secure = fast_options();
    secure.insecure = false;
    let (r, _) = pull(&store, "nosuchhost.invalid/library/x:1", &secure);
    let err = r.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");

    let (r, _) = pull(&store, "x", &fast_options());
    let _ = r; // the default registry: unreachable or not, it must not panic
    assert!(store.list().unwrap().is_empty(), "nothing half-installed");
}

#[test]
fn cancel_stops_and_a_later_pull_resumes() {
    let reg = TestRegistry::start();
    serve_smollm2(&reg);
    reg.throttle(Some(20 << 20));
    let (_dir, store) = temp_store("cancel");
    let name = ModelName::parse(&format!("{}/library/smollm2:135m", reg.host())).unwrap();
    let cancel = AtomicBool::new(false);
    let mut seen = 0u64;
    let err = store
        .pull(
            &name,
            &fast_options(),
            &mut |p| {
                seen = seen.max(p.completed.unwrap_or(0));
                if seen > 4 << 20 {
                    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            },
            &cancel,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err}");
    assert!(!store.blob_path(&smollm2_digest()).exists());
    assert!(blob_names(&store).iter().any(|n| n.ends_with("-partial")));

    reg.throttle(None);
    // Let the server threads of the cancelled connections notice and log before the second pull.
    std::thread::sleep(std::time::Duration::from_millis(500));
    reg.clear_log();
    pull(&store, &name.to_string(), &fast_options()).0.unwrap();
    let resumed = reg
        .requests()
        .iter()
        .filter(|r| r.path.contains(&smollm2_digest().hex()))
        .map(|r| r.sent)
        .sum::<u64>();
    assert!(
        resumed < smollm2_bytes().len() as u64,
        "resumed pull sent {resumed} bytes"
    );
}
