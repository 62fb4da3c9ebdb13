//! Greedy continuation of a prompt given as token ids, printed as ids (a debugging aid):
//! `cargo run --example greedy_ids -- MODEL.gguf N id id id ...`

use smelt_engine::sampler::argmax;
use smelt_engine::Runner;
use smelt_gguf::Gguf;
use smelt_models::Output;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let g = std::sync::Arc::new(Gguf::open(&args[1]).expect("open"));
    let n: usize = args[2].parse().expect("count");
    let ids: Vec<u32> = args[3..].iter().map(|a| a.parse().expect("id")).collect();
    let mut r = Runner::load(g, 512, 2).expect("load");
    let mut logits = r.eval(&ids, Output::LastLogits).expect("eval");
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&logits);
        out.push(t);
        logits = r.eval(&[t], Output::LastLogits).expect("eval");
    }
    println!("{out:?}");
}
