//! Conformance with llama.cpp on both real models: ids for every corpus string (plain, and
//! with BOS + special-token parsing), detokenised bytes, token pieces and vocabulary facts.
//! Expected values: fixtures/tokenizer/*.json (tools/oracle/tokenizer_fixtures.py).

use serde_json::Value as Json;
use smelt_tokenizer::Tokenizer;

fn load_json(rel: &str) -> Json {
    let path = smelt_testutil::fixture(rel);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("parse fixture")
}

fn tokenizer(model: &str) -> Tokenizer {
    let g = smelt_gguf::Gguf::open(smelt_testutil::model_path(model)).expect("open gguf");
    Tokenizer::from_gguf(&g).expect("build tokenizer")
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `{"text": ...}` or `{"hex": ...}` as bytes.
fn text_or_hex(v: &Json) -> Vec<u8> {
    match v.get("text") {
        Some(t) => t.as_str().unwrap().as_bytes().to_vec(),
        None => hex(v["hex"].as_str().unwrap()),
    }
}

/// llama.cpp reports "no token" as -1.
fn opt_id(v: &Json) -> Option<u32> {
    v.as_i64().filter(|&i| i >= 0).map(|i| i as u32)
}

fn conformance(model: &str) {
    let stem = model.strip_suffix(".gguf").unwrap();
    let fx = load_json(&format!("tokenizer/{stem}.json"));
    let corpus = load_json("tokenizer/corpus.json");
    let strings: Vec<&str> = corpus["strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(strings.len(), cases.len());
    assert!(strings.len() >= 300);
    let tok = tokenizer(model);

    // Vocabulary facts.
    let v = &fx["vocab"];
    assert_eq!(tok.vocab_size() as u64, v["n_tokens"].as_u64().unwrap());
    assert_eq!(tok.bos(), opt_id(&v["bos"]));
    assert_eq!(tok.eos(), opt_id(&v["eos"]));
    assert_eq!(tok.adds_bos(), v["add_bos"].as_bool().unwrap());
    assert_eq!(tok.adds_eos(), v["add_eos"].as_bool().unwrap());
    assert_eq!(
        tok.eog_ids().collect::<Vec<_>>(),
        ids(&v["eog"]),
        "end-of-generation ids"
    );
    let control: Vec<u32> = (0..tok.vocab_size() as u32)
        .filter(|&i| tok.is_control(i))
        .collect();
    assert_eq!(control, ids(&v["control"]), "control tokens");
    if let Some(eot) = opt_id(&v["eot"]) {
        assert!(tok.is_eog(eot));
    }

    // Pieces.
    for (key, special) in [("pieces", true), ("pieces_plain", false)] {
        for (id, h) in fx[key].as_object().unwrap() {
            let id: u32 = id.parse().unwrap();
            assert_eq!(
                tok.piece(id, special),
                hex(h.as_str().unwrap()),
                "{key} of token {id}"
            );
        }
    }

    // Ids and detokenisation, all strings, both modes.
    let mut failures = Vec::new();
    let mut parsed_special = 0;
    for (i, (s, c)) in strings.iter().zip(cases).enumerate() {
        let plain = tok.encode(s, false, false);
        let special = tok.encode(s, true, true);
        // Count strings where parsing special text produced a control token beyond the BOS.
        let skip = usize::from(tok.adds_bos());
        parsed_special += usize::from(special.iter().skip(skip).any(|&t| tok.is_control(t)));
        let checks = [
            (
                "plain ids",
                plain == ids(&c["plain"]),
                format!("{plain:?} vs {:?}", ids(&c["plain"])),
            ),
            (
                "special ids",
                special == ids(&c["special"]),
                format!("{special:?} vs {:?}", ids(&c["special"])),
            ),
            (
                "plain detok",
                tok.detokenize(&ids(&c["plain"]), false, false) == text_or_hex(&c["detok_plain"]),
                String::new(),
            ),
            (
                "special detok",
                tok.detokenize(&ids(&c["special"]), false, true)
                    == text_or_hex(&c["detok_special"]),
                String::new(),
            ),
        ];
        for (what, ok, detail) in checks {
            if !ok {
                failures.push(format!("#{i} {s:?}: {what} {detail}"));
            }
        }
        // Where llama.cpp's detokeniser gives the text back, ours does too.
        if text_or_hex(&c["detok_plain"]) == s.as_bytes() {
            assert_eq!(tok.decode(&plain), *s, "round trip of #{i}");
        }
    }
    assert!(
        parsed_special >= 20,
        "{model}: only {parsed_special} strings exercise special-token parsing"
    );
    let n = failures.len();
    failures.truncate(20);
    assert!(
        n == 0,
        "{model}: {n} mismatches with llama.cpp, first ones:\n{}",
        failures.join("\n")
    );
}

#[test]
fn smollm2_matches_llama_cpp() {
    conformance(smelt_testutil::SMOLLM2);
}

#[test]
fn gemma3_matches_llama_cpp() {
    conformance(smelt_testutil::GEMMA3);
}

/// The other BPE pre-tokenizers, checked with SmolLM2's real vocabulary and merges under
/// another `tokenizer.ggml.pre` (llama.cpp ran on metadata copies that differ only there).
#[test]
fn other_bpe_pre_tokenizers_match_llama_cpp() {
    let corpus = load_json("tokenizer/corpus.json");
    let strings: Vec<&str> = corpus["strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let g = smelt_gguf::Gguf::open(smelt_testutil::model_path(smelt_testutil::SMOLLM2))
        .expect("open gguf");
    let base = smelt_tokenizer::Vocab::from_gguf(&g).expect("vocab");
    for pre in ["llama-bpe", "qwen2", "default", "gpt-2", "qwen35"] {
        let fx = load_json(&format!("tokenizer/smollm2-pre-{pre}.json"));
        let mut vocab = base.clone();
        vocab.pre = Some(pre.to_owned());
        let tok = Tokenizer::new(&vocab).expect("tokenizer");
        let cases = fx["cases"].as_array().unwrap();
        assert_eq!(cases.len(), strings.len());
        let mut failures = Vec::new();
        for (i, (s, c)) in strings.iter().zip(cases).enumerate() {
            let plain = tok.encode(s, false, false);
            let special = tok.encode(s, true, true);
            if plain != ids(&c["plain"]) {
                failures.push(format!(
                    "#{i} {s:?}: plain {plain:?} vs {:?}",
                    ids(&c["plain"])
                ));
            }
            if special != ids(&c["special"]) {
                failures.push(format!(
                    "#{i} {s:?}: special {special:?} vs {:?}",
                    ids(&c["special"])
                ));
            }
            if tok.detokenize(&ids(&c["plain"]), false, false) != text_or_hex(&c["detok_plain"]) {
                failures.push(format!("#{i} {s:?}: detokenized text differs"));
            }
        }
        let n = failures.len();
        failures.truncate(10);
        assert!(
            n == 0,
            "pre '{pre}': {n} mismatches with llama.cpp, first ones:\n{}",
            failures.join("\n")
        );
    }
}
