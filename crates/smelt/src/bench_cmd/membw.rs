//! Memory read bandwidth of this machine: `threads` threads summing their share of a buffer
//! much larger than the caches, best of several passes and of several access patterns (the
//! roofline decode is measured against: decoding one token reads every weight once).
//!
//! A single plain stream per core under-reads this machine: a VM core with one hardware
//! prefetch stream keeps too few misses in flight (16.8 GB/s on the 2-core dev VM, where the
//! 8B-class decode, with software prefetch, read 23.8). So the probe also runs four interleaved
//! streams per thread and a stream with software prefetch ahead, and reports the best.

use std::time::Instant;

/// Bytes read per pass: far beyond any last-level cache.
const BUFFER_BYTES: usize = 1 << 30;
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
    let patterns: [fn(&[u64]) -> u64; 3] = [sum, sum4, sum_prefetch];
    for pass in 0..PASSES * patterns.len() {
        let pattern = patterns[pass % patterns.len()];
        let start = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let per = words.div_ceil(threads);
            let handles: Vec<_> = buf
                .chunks(per)
                .map(|part| s.spawn(move || pattern(part)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("bandwidth thread"))
                .fold(0, u64::wrapping_add)
        });
        let secs = start.elapsed().as_secs_f64();
        if std::env::var_os("SMELT_MEMBW_VERBOSE").is_some() {
            eprintln!(
                "pattern {}: {:.2} GB/s",
                pass % patterns.len(),
                BUFFER_BYTES as f64 / secs / 1e9
            );
        }
        best = best.min(secs);
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

/// [`sum`] over four quarters of `part` in lockstep: four sequential streams in flight.
fn sum4(part: &[u64]) -> u64 {
    let q = part.len() / 4 / 8 * 8;
    let (a, rest) = part.split_at(q);
    let (b, rest) = rest.split_at(q);
    let (c, rest) = rest.split_at(q);
    let (d, tail) = rest.split_at(q);
    let mut acc = [0u64; 8];
    for (((x, y), z), w) in a
        .chunks_exact(8)
        .zip(b.chunks_exact(8))
        .zip(c.chunks_exact(8))
        .zip(d.chunks_exact(8))
    {
        for i in 0..8 {
            acc[i] = acc[i]
                .wrapping_add(x[i])
                .wrapping_add(y[i])
                .wrapping_add(z[i])
                .wrapping_add(w[i]);
        }
    }
    acc.iter().fold(sum(tail), |a, &b| a.wrapping_add(b))
}

/// Bytes ahead of the reads that [`sum_prefetch`] asks the cache to fetch.
const PREFETCH_AHEAD: usize = 2048;

/// [`sum`] with a software prefetch of the line `PREFETCH_AHEAD` bytes ahead of each line read.
fn sum_prefetch(part: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = part.chunks_exact(8);
    let rest: u64 = chunks.remainder().iter().fold(0, |a, &b| a.wrapping_add(b));
    for c in chunks {
        smelt_cpu::kernels::prefetch_read(c.as_ptr().cast::<u8>().wrapping_add(PREFETCH_AHEAD));
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    acc.iter().fold(rest, |a, &b| a.wrapping_add(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_pattern_sums_every_word() {
        for n in [0, 7, 64, 1003, 4096 + 13] {
            let v: Vec<u64> = (1..=n).collect();
            let want = n * (n + 1) / 2;
            assert_eq!(super::sum(&v), want);
            assert_eq!(super::sum4(&v), want);
            assert_eq!(super::sum_prefetch(&v), want);
        }
    }
}
