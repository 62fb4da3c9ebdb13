//! Time header parsing of a file already in memory: `cargo run -p smelt-gguf --example parse_time -- FILE`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: parse_time FILE")?;
    let bytes: std::sync::Arc<[u8]> = std::fs::read(path)?.into();
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let g = smelt_gguf::Gguf::from_bytes(bytes.clone())?;
        let parse = t0.elapsed();
        drop(g);
        println!("parse {parse:?} (parse + drop {:?})", t0.elapsed());
    }
    Ok(())
}
