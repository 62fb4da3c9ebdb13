//! Chat templates rendered as Hugging Face transformers renders them (jinja2), on both real
//! models' templates and a template exercising filters, loops and Python formatting.
//! Expected strings: fixtures/templates/chat_templates.json (tools/oracle/template_fixtures.py).

use serde_json::Value as Json;
use smelt_tokenizer::{ChatTemplate, TemplateError, Tokenizer, Vocab};

fn fixture() -> Json {
    let path = smelt_testutil::fixture("templates/chat_templates.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read fixture"))
        .expect("parse fixture")
}

fn model_template(model: &str) -> (Vocab, ChatTemplate) {
    let g = smelt_gguf::Gguf::open(smelt_testutil::model_path(model)).expect("open gguf");
    let vocab = Vocab::from_gguf(&g).expect("vocab");
    let tok = Tokenizer::new(&vocab).expect("tokenizer");
    let t = ChatTemplate::for_model(&vocab, &tok).expect("template");
    (vocab, t)
}

fn check_all(name: &str, t: &ChatTemplate, fx: &Json) {
    let spec = &fx["templates"][name];
    assert_eq!(
        t.source(),
        spec["source"].as_str().unwrap(),
        "{name}: template source differs from the fixture's"
    );
    let convs = fx["conversations"].as_array().unwrap();
    let expected = spec["expected"].as_array().unwrap();
    assert!(convs.len() >= 15);
    for (c, exp) in convs.iter().zip(expected) {
        let cname = c["name"].as_str().unwrap();
        let tools = if c["tools"].is_null() {
            None
        } else {
            Some(&c["tools"])
        };
        let got = t.render(
            &c["messages"],
            tools,
            c["add_generation_prompt"].as_bool().unwrap(),
        );
        if let Some(ok) = exp.get("ok") {
            match got {
                Ok(s) => assert_eq!(s, ok.as_str().unwrap(), "{name}/{cname}"),
                Err(e) => panic!("{name}/{cname}: expected output, got error {e}"),
            }
        } else if let Some(msg) = exp.get("raised") {
            match got {
                Err(TemplateError::Raised(m)) => {
                    assert_eq!(m, msg.as_str().unwrap(), "{name}/{cname}")
                }
                other => panic!("{name}/{cname}: expected raise_exception({msg}), got {other:?}"),
            }
        } else {
            assert!(
                got.is_err(),
                "{name}/{cname}: jinja2 failed ({}), we rendered {got:?}",
                exp["error"]
            );
        }
    }
}

#[test]
fn smollm2_template_from_gguf_renders_like_transformers() {
    let (vocab, t) = model_template(smelt_testutil::SMOLLM2);
    assert!(vocab.chat_template.is_some());
    check_all("smollm2", &t, &fixture());
}

#[test]
fn gemma3_gets_the_builtin_template_and_renders_like_transformers() {
    let (vocab, t) = model_template(smelt_testutil::GEMMA3);
    assert!(
        vocab.chat_template.is_none(),
        "the Gemma 3 GGUF has no template; the built-in one is used"
    );
    assert_eq!(vocab.architecture.as_deref(), Some("gemma3"));
    assert_eq!(t.source(), smelt_tokenizer::GEMMA3);
    check_all("gemma3", &t, &fixture());
}

#[test]
fn exercise_template_matches_jinja2() {
    let fx = fixture();
    let spec = &fx["templates"]["exercise"];
    let tokens = &spec["tokens"];
    let t = ChatTemplate::new(
        spec["source"].as_str().unwrap(),
        tokens["bos_token"].as_str().unwrap(),
        tokens["eos_token"].as_str().unwrap(),
    )
    .expect("compile");
    check_all("exercise", &t, &fx);
}

#[test]
fn other_builtin_templates_match_jinja2() {
    let fx = fixture();
    for (name, family) in [
        ("chatml", "chatml"),
        ("llama3", "llama3"),
        ("plain", "plain"),
    ] {
        let tokens = &fx["templates"][name]["tokens"];
        let t = ChatTemplate::builtin_for(
            family,
            tokens["bos_token"].as_str().unwrap(),
            tokens["eos_token"].as_str().unwrap(),
        )
        .expect("builtin");
        check_all(name, &t, &fx);
    }
}

#[test]
fn from_gguf_agrees_with_for_model() {
    let fx = fixture();
    let conv = &fx["conversations"][3];
    for model in [smelt_testutil::SMOLLM2, smelt_testutil::GEMMA3] {
        let g = smelt_gguf::Gguf::open(smelt_testutil::model_path(model)).expect("open gguf");
        let (_, via_vocab) = model_template(model);
        let direct = ChatTemplate::from_gguf(&g, "").expect("template");
        assert_eq!(direct.source(), via_vocab.source());
        let render = |t: &ChatTemplate| t.render(&conv["messages"], None, true).unwrap();
        assert_eq!(render(&direct), render(&via_vocab), "{model}");
    }
}
