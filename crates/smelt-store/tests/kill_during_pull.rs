//! kill -9 in the middle of a pull leaves no visible blob or manifest, and the next pull resumes
//! the partial download and completes cleanly.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use smelt_store::test_registry::TestRegistry;
use smelt_store::{ModelName, Store, StoreConfig};

const CHILD_ENV: &str = "SMELT_STORE_TEST_CHILD_PULL";

/// Runs only as the child process of `kill_9_mid_pull_then_clean_second_pull`.
#[test]
#[ignore = "child process of kill_9_mid_pull_then_clean_second_pull"]
fn child_pull_process() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (root, name) = arg.split_once('|').unwrap();
    let store = Store::open(StoreConfig::isolated(root)).unwrap();
    let (r, _) = pull(&store, name, &fast_options());
    r.unwrap();
    panic!("the pull should have been killed before finishing");
}

#[test]
fn kill_9_mid_pull_then_clean_second_pull() {
    let reg = TestRegistry::start();
    reg.add_model(
        "library",
        "smollm2",
        "135m",
        smollm2_bytes(),
        Some(smollm2_digest()),
        vec![],
    );
    reg.throttle(Some(4 << 20)); // slow enough to be caught mid-transfer
    let (dir, store) = temp_store("kill9");
    let name = format!("{}/library/smollm2:135m", reg.host());

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_pull_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{}|{name}", store.root().display()))
        .spawn()
        .unwrap();
    let state = store
        .root()
        .join("blobs")
        .join(format!("{}-partial.json", smollm2_digest().file_name()));
    let deadline = Instant::now() + Duration::from_secs(30);
    // Wait until the child has saved progress on disk, then SIGKILL it.
    loop {
        let saved: serde_json::Value = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let done: u64 = saved["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["done"].as_u64())
            .sum();
        if done > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the child never made progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();

    // Nothing half-installed is visible: no blob under the digest's name, no manifest, no model.
    assert!(!store.blob_path(&smollm2_digest()).exists());
    assert!(store.list().unwrap().is_empty());
    assert!(matches!(
        store.resolve(&ModelName::parse(&name).unwrap()),
        Err(smelt_store::Error::ModelNotFound { .. })
    ));
    assert!(
        blob_names(&store).iter().any(|n| n.ends_with("-partial")),
        "{:?}",
        blob_names(&store)
    );

    // The second pull resumes the partial download and completes.
    reg.throttle(None);
    std::thread::sleep(Duration::from_millis(300));
    reg.clear_log();
    let (m, _) = pull(&store, &name, &fast_options());
    let m = m.unwrap();
    let (digest, len) = smelt_store::Digest::of_file(&m.gguf_path).unwrap();
    assert_eq!(
        (digest, len),
        (smollm2_digest(), smollm2_bytes().len() as u64)
    );
    let log = reg.requests();
    let blob_requests: Vec<_> = log
        .iter()
        .filter(|r| r.path.contains(&smollm2_digest().hex()))
        .collect();
    let fetched: u64 = blob_requests.iter().map(|r| r.sent).sum();
    assert!(fetched < len, "resumed: fetched {fetched} of {len} bytes");
    assert!(
        blob_names(&store).iter().all(|n| !n.contains("partial")),
        "{:?}",
        blob_names(&store)
    );
    drop(dir);
}
