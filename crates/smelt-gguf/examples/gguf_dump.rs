//! Print a GGUF file's header: `cargo run -p smelt-gguf --example gguf_dump -- FILE [--tensors]`.

use smelt_gguf::{Array, Gguf, Value};

fn short(v: &Value) -> String {
    match v {
        Value::Array(a) if a.len() > 8 => {
            format!("[{}; {}] first {:?}", a.elem_type(), a.len(), a.get(0))
        }
        Value::Array(Array::String(s)) => format!("{s:?}"),
        Value::String(s) if s.len() > 120 => {
            let head: String = s.to_string_lossy().chars().take(100).collect();
            format!("{head:?}… ({} bytes)", s.len())
        }
        other => format!("{other:?}"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: gguf_dump FILE [--tensors]")?;
    let t0 = std::time::Instant::now();
    let g = Gguf::open(path)?;
    let dt = t0.elapsed();
    println!(
        "version {} alignment {} data_offset {} file_size {} kv {} tensors {} (parsed in {dt:?})",
        g.version(),
        g.alignment(),
        g.data_offset(),
        g.file_size(),
        g.metadata().len(),
        g.tensors().len()
    );
    for (k, v) in g.metadata() {
        println!("{k} = {}", short(v));
    }
    if args.iter().any(|a| a == "--tensors") {
        for t in g.tensors() {
            println!(
                "{} {:?} {} offset {} bytes {}",
                t.name, t.dims, t.dtype, t.offset, t.n_bytes
            );
        }
    }
    Ok(())
}
