//! How many prompt tokens a batch step may take while other requests are generating.
//!
//! A step's time grows with its rows, and every generating stream waits for the whole step
//! before its next token: a step carrying a 256-token prompt chunk can take fifty times a
//! decode step on a small CPU. The pacer keeps such steps within `factor` times the time of a
//! step of decode rows alone, so inter-token latency under load stays within that factor of an
//! unloaded stream, while prompts still advance every step (at least [`MIN_PROMPT_ROWS`]).
//! It learns online: an average of recent decode-only steps, and a budget that shrinks when a
//! mixed step overran the limit and grows while steps fit (additive increase, multiplicative
//! decrease, as congestion control does), since step time is not linear in rows (kernels
//! change regime with the row count). When no request is generating, a step takes the full
//! budget: only throughput matters then.

use std::time::Duration;

/// Prompt rows a step takes at least, so a prompt always advances.
pub const MIN_PROMPT_ROWS: usize = 4;

#[derive(Clone, Debug)]
pub(crate) struct Pacer {
    /// Step time of decode rows alone may grow by this factor when prompt rows join.
    factor: f64,
    max_rows: usize,
    /// Average time of recent decode-only steps (seconds).
    decode: Option<f64>,
    budget: f64,
}

impl Pacer {
    pub fn new(max_rows: usize, factor: f64) -> Pacer {
        let max_rows = max_rows.max(MIN_PROMPT_ROWS);
        Pacer {
            factor: factor.max(1.0),
            max_rows,
            decode: None,
            budget: max_rows as f64,
        }
    }

    /// Prompt rows for the next step, given whether any request is generating. Rounded down
    /// to a few sizes (4, 6, 8, 12, 16, 24, ...), so steps come in few shapes (a plan each).
    pub fn budget(&self, decoding: bool) -> usize {
        if decoding && self.decode.is_some() {
            let b = (self.budget as usize).clamp(MIN_PROMPT_ROWS, self.max_rows);
            let pow = 1usize << (usize::BITS - 1 - b.leading_zeros());
            let size = if b >= pow + pow / 2 {
                pow + pow / 2
            } else {
                pow
            };
            size.max(MIN_PROMPT_ROWS)
        } else {
            self.max_rows
        }
    }

    /// Learn from a step of `prompt_rows` and `decode_rows` that took `took`.
    pub fn record(&mut self, prompt_rows: usize, decode_rows: usize, took: Duration) {
        let t = took.as_secs_f64();
        match (prompt_rows, decode_rows) {
            (0, 0) => {}
            (0, _) => {
                self.decode = Some(match self.decode {
                    Some(d) => 0.7 * d + 0.3 * t,
                    None => t,
                });
            }
            (_, 0) => {}
            (_, _) => {
                let Some(d) = self.decode else { return };
                if t > self.factor * d {
                    self.budget = (self.budget * 0.6).max(MIN_PROMPT_ROWS as f64);
                } else {
                    self.budget = (self.budget * 1.1 + 1.0).min(self.max_rows as f64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_budget_follows_the_latency_limit() {
        let mut p = Pacer::new(256, 3.0);
        // Nothing known yet, or nobody generating: the full budget.
        assert_eq!(p.budget(true), 256);
        p.record(0, 4, ms(30));
        assert_eq!(p.budget(false), 256);
        // Mixed steps far over 3 x 30 ms shrink it, down to the minimum.
        for _ in 0..20 {
            p.record(p.budget(true), 4, ms(1000));
        }
        assert_eq!(p.budget(true), MIN_PROMPT_ROWS);
        // Steps within the limit let it grow again, up to the maximum.
        for _ in 0..3 {
            p.record(4, 4, ms(60));
        }
        assert!(p.budget(true) > MIN_PROMPT_ROWS);
        for _ in 0..200 {
            p.record(p.budget(true), 4, ms(60));
        }
        assert_eq!(p.budget(true), 256);
        // Few sizes.
        let mut q = Pacer::new(256, 3.0);
        q.record(0, 1, ms(10));
        let sizes: Vec<usize> = [4.0, 5.0, 6.0, 7.0, 9.0, 13.0, 100.0, 200.0]
            .iter()
            .map(|&b| {
                q.budget = b;
                q.budget(true)
            })
            .collect();
        assert_eq!(sizes, vec![4, 4, 6, 6, 8, 12, 96, 192]);
        // Prompt-only steps teach nothing about latency.
        p.record(256, 0, ms(5000));
        assert_eq!(p.budget(true), 256);
    }

    #[test]
    fn it_settles_where_steps_fit() {
        // A step costs 30 ms plus 5 ms per prompt row: 3 x 30 ms fits 12 rows.
        let mut p = Pacer::new(256, 3.0);
        p.record(0, 8, ms(30));
        let mut seen = Vec::new();
        for _ in 0..300 {
            let rows = p.budget(true);
            p.record(rows, 8, ms(30 + 5 * rows as u64));
            seen.push(rows);
        }
        let tail = &seen[200..];
        assert!(tail.iter().all(|&r| (4..=16).contains(&r)), "{tail:?}");
        let over = tail.iter().filter(|&&r| 30 + 5 * r > 90).count();
        assert!(over * 3 < tail.len(), "most steps fit: {tail:?}");
    }
}
