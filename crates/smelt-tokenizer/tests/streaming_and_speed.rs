//! The streaming detokeniser on real vocabularies, special-token handling at the API level,
//! and encoding speed.

use smelt_tokenizer::{StreamDecoder, Tokenizer, TokenizerKind};

fn tokenizer(model: &str) -> Tokenizer {
    let g = smelt_gguf::Gguf::open(smelt_testutil::model_path(model)).expect("open gguf");
    Tokenizer::from_gguf(&g).expect("build tokenizer")
}

const TEXTS: &[&str] = &[
    "plain ascii text",
    "emoji 😀 and family 👨‍👩‍👧‍👦 and thumbs 👍🏽!",
    "中文和日本語のテキスト、한국어도",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓂀 \u{10ffff} \u{e000}",
    "mixed 😀text😀mixed\n\ttabs   spaces",
];

#[test]
fn stream_decoder_emits_only_whole_characters() {
    for model in [smelt_testutil::SMOLLM2, smelt_testutil::GEMMA3] {
        let tok = tokenizer(model);
        let mut saw_pending = false;
        for text in TEXTS {
            let ids = tok.encode(text, false, false);
            let mut dec = tok.stream_decoder();
            let mut out = String::new();
            for &id in &ids {
                let piece = tok.token_to_piece(id);
                let chunk = dec.push(id);
                // A piece that is not whole UTF-8 on its own must not come out as U+FFFD.
                assert!(
                    !chunk.contains('\u{FFFD}') || text.contains('\u{FFFD}'),
                    "{model}: {text:?}"
                );
                if std::str::from_utf8(piece).is_err() {
                    saw_pending |= dec.has_pending();
                }
                out.push_str(&chunk);
            }
            out.push_str(&dec.finish());
            assert_eq!(out, *text, "{model}");
            assert_eq!(out, tok.decode(&ids), "{model}: stream and decode agree");
        }
        assert!(
            saw_pending,
            "{model}: some character spans several tokens in these texts"
        );
    }
}

#[test]
fn stream_decoder_replaces_invalid_bytes_and_flushes_at_the_end() {
    let tok = tokenizer(smelt_testutil::GEMMA3);
    assert_eq!(tok.kind(), TokenizerKind::Spm);
    let byte = |b: u8| tok.token_id(&format!("<0x{b:02X}>")).expect("byte token");
    let a = tok.token_id("a").expect("token a");
    let mut dec = StreamDecoder::new(&tok, false);
    // A lone continuation byte can never become valid: replaced at once.
    assert_eq!(dec.push(byte(0x80)), "\u{FFFD}");
    // The first two bytes of "€" (E2 82 AC) wait; the third completes it.
    assert_eq!(dec.push(byte(0xE2)), "");
    assert_eq!(dec.push(byte(0x82)), "");
    assert!(dec.has_pending());
    assert_eq!(dec.push(byte(0xAC)), "€");
    // A sequence cut short by an ASCII byte: the broken start is replaced, the rest kept.
    assert_eq!(dec.push(byte(0xE2)), "");
    assert_eq!(dec.push(a), "\u{FFFD}a");
    // Pending bytes at the end are flushed lossily.
    assert_eq!(dec.push(byte(0xF0)), "");
    assert_eq!(dec.finish(), "\u{FFFD}");
    assert!(!dec.has_pending());
}

#[test]
fn control_tokens_render_only_when_asked() {
    let tok = tokenizer(smelt_testutil::SMOLLM2);
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert!(tok.is_eog(im_end) && tok.is_control(im_end));
    assert_eq!(tok.token_to_piece(im_end), b"");
    assert_eq!(tok.piece(im_end, false), b"");
    assert_eq!(tok.piece(im_end, true), b"<|im_end|>");
    let mut dec = StreamDecoder::new(&tok, true);
    assert_eq!(dec.push(im_end), "<|im_end|>");
    // Out-of-range ids render as nothing rather than panicking.
    assert_eq!(tok.piece(u32::MAX, true), b"");
    assert_eq!(tok.decode(&[u32::MAX, 0]), "");
    assert!(!tok.is_eog(u32::MAX) && !tok.is_control(u32::MAX));
    // Parsing special text is opt-in.
    assert_eq!(tok.encode("<|im_end|>", false, true), vec![im_end]);
    assert!(tok.encode("<|im_end|>", false, false).len() > 1);

    let gemma = tokenizer(smelt_testutil::GEMMA3);
    let eot = gemma.token_id("<end_of_turn>").unwrap();
    assert!(gemma.is_eog(eot) && gemma.is_eog(gemma.eos().unwrap()));
    assert_eq!(gemma.encode("hi", true, false)[0], gemma.bos().unwrap());
}

/// Thread CPU time in nanoseconds where Linux provides it (wall time would measure the
/// other processes sharing the machine).
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

#[test]
fn encoding_twelve_thousand_tokens_is_fast() {
    let source = std::fs::read_to_string(
        smelt_testutil::repo_root().join("crates/smelt-tokenizer/src/tokenizer.rs"),
    )
    .expect("read source text");
    let prose =
        "The quick brown fox jumps over the lazy dog. Ünïcödé, 中文, emoji 😀, numbers 1234567. ";
    for model in [smelt_testutil::SMOLLM2, smelt_testutil::GEMMA3] {
        let tok = tokenizer(model);
        let mut text = String::new();
        while tok.encode(&text, false, false).len() < 12_000 {
            text.push_str(&source[..source.len().min(4000)]);
            text.push_str(&prose.repeat(20));
        }
        let t0 = cpu_ns();
        let start = std::time::Instant::now();
        let n = tok.encode(&text, true, true).len();
        let wall = start.elapsed();
        assert!(n >= 12_000);
        if let (Some(t0), Some(t1)) = (t0, cpu_ns()) {
            let ms = (t1 - t0) as f64 / 1e6;
            eprintln!("{model}: {n} tokens in {ms:.1} ms CPU ({wall:?} wall)");
            assert!(
                ms < 50.0,
                "{model}: encoding {n} tokens took {ms:.1} ms of CPU time"
            );
        }
    }
}
