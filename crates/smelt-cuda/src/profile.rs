//! `SMELT_CUDA_PROFILE=1`: device time per launch, measured with events around every launch
//! (graphs off), summed by label and printed when the backend is dropped. `SMELT_CUDA_TRACE=1`:
//! the same step replayed as its graph, each launch's span (first block's start to last
//! block's end, the GPU's global timer) and the gap before it. Kernel-lab tools.

use std::collections::HashMap;

use cudarc::driver::sys;

use crate::backend::CudaProgram;
use crate::device::check;
use crate::CudaError;

/// Device time per kernel label, summed over executions (`SMELT_CUDA_PROFILE`).
#[derive(Default)]
pub(crate) struct Profile {
    /// (phase and label) -> (milliseconds, launches, executions of the phase seen).
    by_label: HashMap<String, (f64, u64)>,
    /// phase -> (executions, summed milliseconds).
    phases: HashMap<String, (u64, f64)>,
}

impl Profile {
    pub fn add(&mut self, prog: &CudaProgram, ev: &Events) -> Result<(), CudaError> {
        let phase = if prog.n_tokens() == 1 {
            "decode".to_string()
        } else {
            format!("prefill {}", prog.n_tokens())
        };
        let mut total = 0.0;
        for (i, label) in prog.labels.iter().enumerate() {
            let mut ms = 0f32;
            // SAFETY: both events were recorded on the stream, which is synchronised.
            unsafe {
                check(
                    sys::cuEventElapsedTime_v2(&mut ms, ev.0[i], ev.0[i + 1]),
                    "event time",
                )?
            };
            let e = self
                .by_label
                .entry(format!("{phase} | {label}"))
                .or_default();
            e.0 += ms as f64;
            e.1 += 1;
            total += ms as f64;
        }
        let p = self.phases.entry(phase).or_default();
        p.0 += 1;
        p.1 += total;
        Ok(())
    }

    pub fn report(&self) -> String {
        let mut out = String::from("SMELT_CUDA_PROFILE (device time between launch events)\n");
        let mut phases: Vec<_> = self.phases.iter().collect();
        phases.sort_by(|a, b| a.0.cmp(b.0));
        for (phase, &(execs, ms)) in phases {
            let per = ms / execs.max(1) as f64;
            out += &format!("{phase}: {execs} executions, {per:.3} ms each\n");
            let mut rows: Vec<_> = self
                .by_label
                .iter()
                .filter(|(k, _)| k.split(" | ").next() == Some(phase.as_str()))
                .collect();
            rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
            for (k, &(ms_k, n)) in rows {
                let label = k.split(" | ").nth(1).unwrap_or("");
                out += &format!(
                    "  {:>8.1} us/exec {:>5.1}% {:>5} per exec {:>7.2} us each  {label}\n",
                    1e3 * ms_k / execs.max(1) as f64,
                    100.0 * ms_k / ms.max(1e-12),
                    n / execs.max(1),
                    1e3 * ms_k / n.max(1) as f64,
                );
            }
        }
        out
    }
}

/// CUDA events, destroyed on drop.
pub(crate) struct Events(pub Vec<sys::CUevent>);

impl Events {
    pub fn new(n: usize) -> Result<Events, CudaError> {
        let mut ev = Events(Vec::with_capacity(n));
        for _ in 0..n {
            let mut e = std::ptr::null_mut();
            // SAFETY: creating an event in the current context (bound by `execute`).
            unsafe { check(sys::cuEventCreate(&mut e, 0), "event create")? };
            ev.0.push(e);
        }
        Ok(ev)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        for &e in &self.0 {
            // SAFETY: events created by `Events::new`, destroyed once.
            unsafe {
                let _ = sys::cuEventDestroy_v2(e);
            }
        }
    }
}

/// Spans and gaps of traced decode launches inside their graph (`SMELT_CUDA_TRACE`), and
/// block 0's phase marks.
#[derive(Default)]
pub(crate) struct Trace {
    by_label: HashMap<String, Traced>,
    /// (steps, first start to last end ns, summed spans ns).
    steps: (u64, f64, f64),
}

/// Phase marks a body may stamp (`TRACE_MARK(k)`).
const MARKS: usize = crate::codegen::TRACE_STAMPS - 3;

/// One label's sums: span ns, gap-before ns, launches, and per phase mark (ns after block
/// 0's start, times seen).
type Traced = (f64, f64, u64, [(f64, u64); MARKS]);

impl Trace {
    /// One step: `raw` holds [`crate::codegen::TRACE_STAMPS`] u64 a launch, in launch order:
    /// first start, last end, block 0's start, then its marks (ns of the global timer).
    pub fn add(&mut self, labels: &[String], raw: &[u8]) {
        let st: Vec<Vec<u64>> = raw
            .chunks_exact(crate::codegen::TRACE_STAMPS * 8)
            .map(|c| {
                c.chunks_exact(8)
                    .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
                    .collect()
            })
            .collect();
        let (Some(first), Some(last)) = (st.first(), st.last()) else {
            return;
        };
        let mut spans = 0.0;
        for (i, (label, t)) in labels.iter().zip(&st).enumerate() {
            let span = t[1].saturating_sub(t[0]) as f64;
            let gap = if i == 0 {
                0.0
            } else {
                t[0].saturating_sub(st[i - 1][1]) as f64
            };
            let e = self.by_label.entry(label.clone()).or_default();
            e.0 += span;
            e.1 += gap;
            e.2 += 1;
            // A mark this step wrote lies within the launch (a stale one from an earlier
            // step, or none, does not).
            for (k, m) in e.3.iter_mut().enumerate() {
                let v = t[3 + k];
                if v >= t[2] && v <= t[1].max(t[2]) && t[2] > 0 {
                    m.0 += (v - t[2]) as f64;
                    m.1 += 1;
                }
            }
            spans += span;
        }
        self.steps.0 += 1;
        self.steps.1 += last[1].saturating_sub(first[0]) as f64;
        self.steps.2 += spans;
    }

    pub fn report(&self) -> String {
        let n = self.steps.0.max(1) as f64;
        let mut out = format!(
            "SMELT_CUDA_TRACE: {} decode steps, {:.1} us first start to last end, {:.1} us in launches\n",
            self.steps.0,
            self.steps.1 / n / 1e3,
            self.steps.2 / n / 1e3
        );
        let mut rows: Vec<_> = self.by_label.iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        for (label, (span, gap, k, marks)) in rows {
            let k = (*k).max(1) as f64;
            let phases: Vec<String> = marks
                .iter()
                .enumerate()
                .filter(|(_, m)| m.1 > 0)
                .map(|(i, m)| format!("m{i} {:.2}", m.0 / m.1 as f64 / 1e3))
                .collect();
            let phases = if phases.is_empty() {
                String::new()
            } else {
                format!("  [block 0, us: {}]", phases.join(", "))
            };
            out += &format!(
                "  {:>8.1} us/step {:>5} per step {:>7.2} us span {:>6.2} us gap before  {label}{phases}\n",
                span / n / 1e3,
                (k / n).round(),
                span / k / 1e3,
                gap / k / 1e3,
            );
        }
        out
    }
}
