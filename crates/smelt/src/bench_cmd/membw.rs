//! Memory read bandwidth of this machine: `threads` threads summing their share of a buffer
//! much larger than the caches, best of several passes (the roofline decode is measured
//! against: decoding one token reads every weight once).

use std::time::Instant;

/// Bytes read per pass: far beyond any last-level cache.
const BUFFER_BYTES: usize = 512 << 20;
const PASSES: usize = 5;

/// Best read bandwidth over the passes, in GB/s (1e9 bytes per second).
pub fn measure(threads: usize) -> f64 {
    let threads = threads.max(1);
    let words = BUFFER_BYTES / 8;
    // Distinct values so no page is shared copy-on-write zero memory.
    let buf: Vec<u64> = (0..words as u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let mut best = f64::MAX;
    let mut sink = 0u64;
    for _ in 0..PASSES {
        let start = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let per = words.div_ceil(threads);
            let handles: Vec<_> = buf
                .chunks(per)
                .map(|part| s.spawn(move || sum(part)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("bandwidth thread"))
                .fold(0, u64::wrapping_add)
        });
        best = best.min(start.elapsed().as_secs_f64());
        sink = sink.wrapping_add(total);
    }
    // Keep the sums observable so the reads are not optimised away.
    std::hint::black_box(sink);
    BUFFER_BYTES as f64 / best / 1e9
}

/// Sum with eight independent lanes, which the compiler turns into wide vector loads.
fn sum(part: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = part.chunks_exact(8);
    let rest: u64 = chunks.remainder().iter().fold(0, |a, &b| a.wrapping_add(b));
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    acc.iter().fold(rest, |a, &b| a.wrapping_add(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_every_word() {
        let v: Vec<u64> = (1..=1003).collect();
        assert_eq!(super::sum(&v), 1003 * 1004 / 2);
    }
}
