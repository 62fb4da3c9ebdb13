//! Tests of the byte matcher and its closing text.

use super::*;
use crate::constrain::ordered::OrderedJson;

fn g(schema: &str) -> Grammar {
    Grammar::from_schema(&serde_json::from_str::<OrderedJson>(schema).unwrap()).unwrap()
}

#[test]
fn any_object_accepts_json_and_rejects_garbage() {
    let a = Grammar::any_object();
    for ok in [
        r#"{}"#,
        r#"{"a": 1, "b": [true, false, null, -0.5e+3, "x\n\u00e9"], "c": {"d": {}}}"#,
        r#"{"k":"é✓😀"}"#,
    ] {
        assert!(matches(&a, ok.as_bytes()), "{ok}");
    }
    for bad in [
        r#"[]"#,
        r#"{"a":01}"#,
        r#"{"a" :1}"#,
        r#"{"a":1,}"#,
        "{\"a\":\"\n\"}",
        r#"{"a":tru}"#,
        r#"{"a":1}x"#,
        r#"{  }"#,
    ] {
        assert!(!matches(&a, bad.as_bytes()), "{bad}");
    }
    // Invalid UTF-8 in strings: overlong, surrogate, stray continuation.
    for bad in [
        &b"{\"a\":\"\xC0\xAF\"}"[..],
        b"{\"a\":\"\xED\xA0\x80\"}",
        b"{\"a\":\"\x80\"}",
    ] {
        assert!(!matches(&a, bad));
    }
}

#[test]
fn schema_objects_keys_and_order() {
    let s = g(
        r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"}}},"required":["name","age"]}"#,
    );
    assert!(matches(&s, br#"{"name": "Ann", "age": 31}"#));
    assert!(matches(&s, br#"{"name":"Ann","age":31,"tags":["a","b"]}"#));
    assert!(
        !matches(&s, br#"{"age":31,"name":"Ann"}"#),
        "declared order"
    );
    assert!(!matches(&s, br#"{"name":"Ann"}"#), "missing required");
    assert!(!matches(&s, br#"{"name":"Ann","age":3.5}"#), "integer");
    assert!(
        !matches(&s, br#"{"name":"Ann","age":3,"zzz":1}"#),
        "undeclared key"
    );
    assert!(!matches(&s, br#"{"name":1,"age":3}"#));
}

#[test]
fn optional_keys_may_be_skipped() {
    let s = g(
        r#"{"type":"object","properties":{"a":{"type":"boolean"},"b":{"type":"null"},"c":{"enum":["x","y",3]}}}"#,
    );
    for ok in [
        r#"{}"#,
        r#"{"c":3}"#,
        r#"{"a":true,"c":"y"}"#,
        r#"{"b":null}"#,
        r#"{"a":false,"b":null,"c":"x"}"#,
    ] {
        assert!(matches(&s, ok.as_bytes()), "{ok}");
    }
    assert!(!matches(&s, br#"{"c":"z"}"#));
    assert!(!matches(&s, br#"{"c":"x","a":true}"#));
}

#[test]
fn string_and_array_bounds() {
    let s = g(
        r#"{"type":"array","items":{"type":"string","minLength":2,"maxLength":3},"minItems":1,"maxItems":2}"#,
    );
    assert!(matches(&s, br#"["ab"]"#));
    assert!(matches(&s, br#"["ab", "cde"]"#));
    assert!(!matches(&s, br#"[]"#));
    assert!(!matches(&s, br#"["a"]"#));
    assert!(!matches(&s, br#"["abcd"]"#));
    assert!(!matches(&s, br#"["ab","ab","ab"]"#));
}

#[test]
fn root_numbers_and_literals_can_end() {
    let n = g(r#"{"type":"number"}"#);
    assert!(matches(&n, b"-12.5e3"));
    assert!(!matches(&n, b"1."));
    let e = g(r#"{"enum":[1,12]}"#);
    assert!(matches(&e, b"1") && matches(&e, b"12") && !matches(&e, b"2"));
}

/// The closing text always completes the value, from every prefix of a valid document.
#[test]
fn closing_completes_from_every_prefix() {
    let cases = [
        (
            Grammar::any_object(),
            r#"{"a": [1, {"b": "x\u00e9y"}], "c": -2.5e1, "d": true}"#,
        ),
        (
            g(
                r#"{"type":"object","properties":{"name":{"type":"string","minLength":3},"n":{"type":"integer"},"opt":{"type":"array","items":{"type":"number"},"minItems":2},"e":{"enum":["aa","b"]}},"required":["name","n","e"]}"#,
            ),
            r#"{"name": "Bobby", "n": -17, "opt": [1.5, 2, 3], "e": "aa"}"#,
        ),
    ];
    for (grammar, doc) in cases {
        let bytes = doc.as_bytes();
        let mut s = State::new(&grammar);
        for i in 0..=bytes.len() {
            let mut c = s.clone();
            let closing = c.closing(&grammar);
            for &b in &closing {
                assert!(
                    c.feed(&grammar, b),
                    "prefix {:?}: closing {:?} rejected",
                    &doc[..i],
                    String::from_utf8_lossy(&closing)
                );
            }
            assert!(
                c.can_end(&grammar),
                "prefix {:?} + {:?} incomplete",
                &doc[..i],
                String::from_utf8_lossy(&closing)
            );
            if i < bytes.len() {
                assert!(s.feed(&grammar, bytes[i]));
            }
        }
    }
}

#[test]
fn tool_call_picks_the_arguments_schema_by_name() {
    let tools = vec![
        ("add".to_string(), serde_json::from_str(r#"{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}},"required":["a","b"]}"#).unwrap()),
        ("echo".to_string(), serde_json::from_str(r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}"#).unwrap()),
    ];
    let t = Grammar::tool_call(&tools, "name", "arguments").unwrap();
    assert!(matches(
        &t,
        br#"{"name": "add", "arguments": {"a": 1, "b": 2}}"#
    ));
    assert!(matches(&t, br#"{"name":"echo","arguments":{"text":"hi"}}"#));
    assert!(!matches(&t, br#"{"name":"add","arguments":{"text":"hi"}}"#));
    assert!(!matches(&t, br#"{"name":"sub","arguments":{}}"#));
    // Closing after choosing "echo" completes with echo's arguments.
    let mut s = State::new(&t);
    for &b in br#"{"name": "echo""# {
        assert!(s.feed(&t, b));
    }
    assert_eq!(
        String::from_utf8(s.closing(&t)).unwrap(),
        r#","arguments":{"text":""}}"#
    );
}

#[test]
fn nesting_is_bounded() {
    let a = Grammar::any_object();
    let deep = format!("{}{}", r#"{"a":"#.repeat(40), "}".repeat(40));
    assert!(!matches(&a, deep.as_bytes()));
}
