//! `smelt bench --serve` end to end: the bench starts the real server on a free port, runs a
//! tiny load of streaming clients against it on the real SmolLM2 file, and reports JSON.

use std::process::Command;

use smelt_testutil::{model_path, SMOLLM2};

#[test]
fn serving_bench_reports_counts_latencies_and_memory() {
    let model = model_path(SMOLLM2);
    let out = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args([
            "bench",
            "--serve",
            model.to_str().unwrap(),
            "--clients",
            "2",
            "--requests",
            "2",
            "--prompt-tokens",
            "24",
            "--max-tokens",
            "6",
            "--shared-prefix",
            "0.5",
            "--rss-interval",
            "0.05",
            "--json",
        ])
        .output()
        .expect("run smelt bench --serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let u = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));

    assert_eq!(r["mode"], "serve");
    assert_eq!(r["spawned"], true);
    assert_eq!(u("requests"), 4, "{r}");
    assert_eq!(u("requests_ok"), 4, "{r}");
    assert_eq!(u("failures"), 0, "{r}");
    assert_eq!(r["errors"].as_array().map(Vec::len), Some(0));
    assert_eq!(u("shared_prefix_tokens"), 12);
    // 24 words are 24 tokens (SmolLM2 adds no BOS).
    assert_eq!(u("prompt_tokens_total"), 4 * 24, "{r}");
    let completion = u("completion_tokens_total");
    assert!((4..=4 * 6).contains(&completion), "{r}");
    assert!(u("cached_tokens_total") <= u("prompt_tokens_total"));
    let hit = f("cache_hit_rate");
    assert!((0.0..=1.0).contains(&hit), "{r}");

    assert!(f("wall_s") > 0.0 && f("output_tps") > 0.0, "{r}");
    for k in ["ttft_ms_p50", "ttft_ms_p99", "e2e_ms_p50", "e2e_ms_p99"] {
        assert!(f(k) > 0.0, "{k}: {r}");
    }
    assert!(f("ttft_ms_p99") >= f("ttft_ms_p50"));
    // Requests that produced more than one chunk give inter-token gaps.
    if completion > 4 {
        assert!(
            f("itl_ms_p50") > 0.0 && f("itl_ms_p99") >= f("itl_ms_p50"),
            "{r}"
        );
        // A request's own speed, from its first text chunk to its last.
        let stream = f("stream_tps_p50");
        assert!(stream > 0.0 && stream.is_finite(), "{r}");
    }

    // The server's memory, from /proc: a loaded model takes more than an idle server.
    let start = u("rss_start_bytes");
    let warm = u("rss_after_warmup_bytes");
    assert!(start > 0 && warm > start, "{r}");
    assert!(
        u("rss_end_bytes") > 0 && u("rss_peak_bytes") >= u("rss_max_bytes"),
        "{r}"
    );
    assert!(!r["rss_samples"].as_array().unwrap().is_empty(), "{r}");
}
