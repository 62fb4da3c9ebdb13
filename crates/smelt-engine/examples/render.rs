//! Print a model's rendered chat prompt and its token ids (a debugging aid):
//! `cargo run --example render -- MODEL.gguf "user message"`

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opts = smelt_engine::LoadOptions {
        num_ctx: 64,
        threads: 1,
        ..Default::default()
    };
    let m = smelt_engine::Model::load(std::path::Path::new(&args[1]), opts).expect("load");
    let msgs = serde_json::json!([{"role": "user", "content": args[2]}]);
    let (text, ids) = m.encode_chat(&msgs, None, true).expect("render");
    println!("{text:?}\n{ids:?}");
}
