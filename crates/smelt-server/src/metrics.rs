//! Prometheus metrics (text exposition format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A histogram with fixed buckets.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum of observations in micro-units (atomic add of an integer).
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if !v.is_finite() || v < 0.0 {
            return;
        }
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if v <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const TTFT_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const TPS_BUCKETS: &[f64] = &[1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0];
const DURATION_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// The server's counters.
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub cached_prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub cancelled: AtomicU64,
    pub model_loads: AtomicU64,
    pub ttft: Histogram,
    pub tokens_per_second: Histogram,
    pub request_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            cached_prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            model_loads: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            tokens_per_second: Histogram::new(TPS_BUCKETS),
            request_duration: Histogram::new(DURATION_BUCKETS),
        }
    }
}

/// Gauges read from the scheduler when rendering.
/// A per-model gauge of the KV pool: name, help, reader.
type KvGauge = (
    &'static str,
    &'static str,
    fn(&crate::backend::KvCacheInfo) -> u64,
);

pub struct Gauges {
    pub queue_depth: usize,
    /// (model name, bytes) of each loaded model.
    pub loaded: Vec<(String, u64)>,
    /// (model name, its KV pool) of each loaded model that reports one.
    pub kv: Vec<(String, crate::backend::KvCacheInfo)>,
}

impl Metrics {
    pub fn count_request(&self, endpoint: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((endpoint.to_string(), status)).or_insert(0) += 1;
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP smelt_requests_total HTTP requests answered, by endpoint and status code.\n",
        );
        out.push_str("# TYPE smelt_requests_total counter\n");
        for ((ep, code), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "smelt_requests_total{{endpoint=\"{}\",code=\"{code}\"}} {n}",
                escape(ep)
            );
        }
        let counters = [
            (
                "smelt_prompt_tokens_total",
                "Prompt tokens processed (cached ones included).",
                &self.prompt_tokens,
            ),
            (
                "smelt_prompt_cached_tokens_total",
                "Prompt tokens served from the prefix cache.",
                &self.cached_prompt_tokens,
            ),
            (
                "smelt_generated_tokens_total",
                "Tokens generated.",
                &self.generated_tokens,
            ),
            (
                "smelt_cancelled_requests_total",
                "Generations cancelled because the client went away.",
                &self.cancelled,
            ),
            (
                "smelt_model_loads_total",
                "Models loaded.",
                &self.model_loads,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP smelt_queue_depth Requests waiting for a model.\n# TYPE smelt_queue_depth gauge\nsmelt_queue_depth {}",
            g.queue_depth
        );
        let _ = writeln!(
            out,
            "# HELP smelt_models_loaded Models in memory.\n# TYPE smelt_models_loaded gauge\nsmelt_models_loaded {}",
            g.loaded.len()
        );
        out.push_str("# HELP smelt_model_memory_bytes Memory accounted to each loaded model.\n");
        out.push_str("# TYPE smelt_model_memory_bytes gauge\n");
        for (name, bytes) in &g.loaded {
            let _ = writeln!(
                out,
                "smelt_model_memory_bytes{{model=\"{}\"}} {bytes}",
                escape(name)
            );
        }
        let kv_gauges: [KvGauge; 5] = [
            (
                "smelt_kv_cache_bytes",
                "Bytes of each model's KV pool.",
                |k| k.bytes,
            ),
            (
                "smelt_kv_blocks_used",
                "KV blocks held by running requests.",
                |k| k.blocks_used,
            ),
            (
                "smelt_kv_blocks_cached",
                "KV blocks holding cached prompt prefixes.",
                |k| k.blocks_cached,
            ),
            (
                "smelt_running_requests",
                "Requests generating in each model's batch.",
                |k| k.running,
            ),
            (
                "smelt_engine_waiting_requests",
                "Requests admitted to a model's engine but waiting for KV blocks.",
                |k| k.waiting,
            ),
        ];
        for (name, help, get) in kv_gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (model, kv) in &g.kv {
                let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", escape(model), get(kv));
            }
        }
        self.ttft.render(
            &mut out,
            "smelt_time_to_first_token_seconds",
            "Time from request to first generated token.",
        );
        self.tokens_per_second.render(
            &mut out,
            "smelt_generation_tokens_per_second",
            "Decode speed per request.",
        );
        self.request_duration.render(
            &mut out,
            "smelt_request_duration_seconds",
            "Generation request duration.",
        );
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.count_request("/api/chat", 200);
        m.count_request("/api/chat", 200);
        Metrics::add(&m.generated_tokens, 7);
        m.ttft.observe(0.3);
        m.ttft.observe(7.0);
        let kv = crate::backend::KvCacheInfo {
            blocks_used: 3,
            ..Default::default()
        };
        let text = m.render(&Gauges {
            queue_depth: 2,
            loaded: vec![("a\"b".into(), 10)],
            kv: vec![("m".into(), kv)],
        });
        assert!(text.contains("smelt_kv_blocks_used{model=\"m\"} 3"));
        assert!(text.contains("smelt_requests_total{endpoint=\"/api/chat\",code=\"200\"} 2"));
        assert!(text.contains("smelt_generated_tokens_total 7"));
        assert!(text.contains("smelt_queue_depth 2"));
        assert!(text.contains("smelt_model_memory_bytes{model=\"a\\\"b\"} 10"));
        assert!(text.contains("smelt_time_to_first_token_seconds_bucket{le=\"0.5\"} 1"));
        assert!(text.contains("smelt_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("smelt_time_to_first_token_seconds_count 2"));
    }
}
