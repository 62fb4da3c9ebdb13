//! `smelt run`, `tokenize` and `perplexity` end to end on the real SmolLM2 file: stdout carries
//! only the generated text or the requested data.

use std::process::Command;

use smelt_testutil::{fixture, model_path, SMOLLM2};

fn smelt(args: &[&str]) -> (String, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(args)
        .output()
        .expect("run smelt");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[test]
fn run_raw_greedy_completes_the_prompt() {
    let model = model_path(SMOLLM2);
    let (out, err, ok) = smelt(&[
        "run",
        model.to_str().unwrap(),
        "--raw",
        "The capital of France is",
        "--temperature",
        "0",
        "-n",
        "3",
    ]);
    assert!(ok, "{err}");
    // llama.cpp's greedy continuation of this prompt starts with " Paris." (ids 7042, 30).
    assert!(out.starts_with(" Paris."), "stdout: {out:?}");
    assert!(err.contains("loaded"), "logs go to stderr: {err:?}");
}

#[test]
fn run_chat_stops_at_end_of_turn() {
    let model = model_path(SMOLLM2);
    let (out, err, ok) = smelt(&[
        "run",
        model.to_str().unwrap(),
        "Say hello.",
        "--temperature",
        "0",
        "-n",
        "64",
    ]);
    assert!(ok, "{err}");
    assert!(!out.trim().is_empty());
    assert!(
        !out.contains("<|im_end|>") && !out.contains("<|im_start|>"),
        "special tokens leaked: {out:?}"
    );
}

#[test]
fn tokenize_prints_ids_only() {
    let model = model_path(SMOLLM2);
    let (out, _, ok) = smelt(&[
        "tokenize",
        model.to_str().unwrap(),
        "The capital of France is",
    ]);
    assert!(ok);
    assert_eq!(out.trim(), "[504,3575,282,4649,314]");
}

#[test]
fn perplexity_reports_last_line() {
    let model = model_path(SMOLLM2);
    let text = fixture("oracle/text.txt");
    let (out, err, ok) = smelt(&[
        "perplexity",
        model.to_str().unwrap(),
        text.to_str().unwrap(),
        "--ctx",
        "128",
        "--chunks",
        "2",
    ]);
    assert!(ok, "{err}");
    let last = out.trim().lines().last().unwrap();
    let ppl: f64 = last
        .strip_prefix("ppl: ")
        .expect("last line is `ppl: <value>`")
        .parse()
        .unwrap();
    assert!(ppl > 1.0 && ppl < 100.0, "{ppl}");
}

#[test]
fn missing_model_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("smelt-run-cli-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(["run", "/nonexistent/model.gguf", "hi"])
        .env("SMELT_MODELS", &dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Error"));
}
