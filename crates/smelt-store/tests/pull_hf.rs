//! Pulling `hf.co/ORG/REPO[:QUANT]` from a local server speaking Hugging Face's file endpoints.

mod common;

use common::*;
use smelt_store::test_registry::TestRegistry;
use smelt_store::{Error, ModelSource};

#[test]
fn pull_picks_the_quant_file_and_verifies_it() {
    let hub = TestRegistry::start();
    let repo = "bartowski/SmolLM2-135M-Instruct-GGUF";
    hub.add_hf_file(
        repo,
        "SmolLM2-135M-Instruct-Q4_1.gguf",
        smollm2_bytes(),
        Some(smollm2_digest()),
    );
    hub.add_hf_file(repo, "README.md", b"# readme".to_vec().into(), None);
    hub.add_hf_file(
        repo,
        "SmolLM2-135M-Instruct-Q8_0.gguf",
        b"GGUF not this one".to_vec().into(),
        None,
    );
    let (_dir, store) = temp_store("hf");
    let mut opts = fast_options();
    opts.insecure = false; // an http:// endpoint is an explicit choice and needs no --insecure
    opts.hf_endpoint = hub.url();

    let (model, events) = pull(
        &store,
        "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_1",
        &opts,
    );
    let model = model.unwrap();
    assert_eq!(model.source, ModelSource::Smelt);
    assert_eq!(
        model.name.to_string(),
        "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_1"
    );
    assert_eq!(model.gguf_path, store.blob_path(&smollm2_digest()));
    assert_eq!(events.last().unwrap().status, "success");

    let log = hub.requests();
    assert!(log.iter().any(|r| r
        .path
        .starts_with("/api/models/bartowski/SmolLM2-135M-Instruct-GGUF/tree/main")));
    assert!(log.iter().any(|r| r
        .path
        .ends_with("/resolve/main/SmolLM2-135M-Instruct-Q4_1.gguf")
        && r.status == 302));
    assert!(
        log.iter()
            .filter(|r| r.path.starts_with("/cdn/") && r.status == 206)
            .count()
            >= 5
    );
    assert!(
        !log.iter().any(|r| r.path.contains("Q8_0")),
        "only the chosen quant is fetched"
    );

    // Listed under its hf.co name; a second pull downloads nothing.
    assert!(store.list().unwrap().iter().any(|e| e.name == model.name));
    hub.clear_log();
    pull(
        &store,
        "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_1",
        &opts,
    )
    .0
    .unwrap();
    assert!(!hub.requests().iter().any(|r| r.path.starts_with("/cdn/")));
}

#[test]
fn missing_quant_and_missing_repo_are_clear_errors() {
    let hub = TestRegistry::start();
    hub.add_hf_file(
        "org/repo",
        "model-Q4_1.gguf",
        smollm2_bytes(),
        Some(smollm2_digest()),
    );
    hub.add_hf_file("org/repo", "model-Q8_0.gguf", b"GGUF".to_vec().into(), None);
    let (_dir, store) = temp_store("hf-errors");
    let mut opts = fast_options();
    opts.hf_endpoint = hub.url();

    // No tag means Q4_K_M, which this repo lacks: the error lists what there is.
    let err = pull(&store, "hf.co/org/repo", &opts).0.unwrap_err();
    assert!(matches!(err, Error::HfNoFile { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("Q4_K_M")
            && msg.contains("model-Q4_1.gguf")
            && msg.contains("model-Q8_0.gguf"),
        "{msg}"
    );

    let err = pull(&store, "hf.co/org/nothing:Q4_1", &opts).0.unwrap_err();
    assert!(matches!(err, Error::RemoteNotFound { .. }), "{err}");

    // A corrupted download is discarded.
    hub.corrupt_blob(&smollm2_digest(), true);
    let err = pull(&store, "hf.co/org/repo:Q4_1", &opts).0.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
}
