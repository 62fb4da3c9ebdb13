//! Model lifecycle: load on first use, share among requests, unload after keep_alive, evict the
//! least recently used idle model when another does not fit the memory budget, refuse one that
//! cannot fit at all. Also the per-model run queue (bounded: 503 when full).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::backend::{LoadSpec, LoadedModel, ModelLoader, ModelRecord};
use crate::config::KeepAlive;
use crate::error::{ApiError, ErrorKind};

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct SchedConfig {
    pub keep_alive: KeepAlive,
    /// None: the loader picks from the model and the memory budget.
    pub default_num_ctx: Option<usize>,
    pub max_memory: Option<u64>,
    pub max_loaded_models: usize,
    pub max_queue: usize,
    /// Requests a model runs at once; 0 picks from memory.
    pub num_parallel: usize,
    pub threads: usize,
    /// How long a load waits for busy models to free memory.
    pub wait_for_memory: Duration,
}

/// One loaded model.
pub struct Slot {
    pub record: ModelRecord,
    pub model: Arc<dyn LoadedModel>,
    pub num_ctx: usize,
    /// Requests it runs at once.
    pub parallel: usize,
    /// Bytes it is accounted for.
    pub size: u64,
    run: Arc<Semaphore>,
    life: Mutex<Life>,
}

#[derive(Debug)]
struct Life {
    /// The name it was last requested by (several names may share one file).
    name: String,
    active: usize,
    last_used: Instant,
    keep_alive: KeepAlive,
    /// When it unloads if still idle (None while busy or kept forever).
    expires_at: Option<Instant>,
    expires_wall: Option<SystemTime>,
}

impl Slot {
    fn life(&self) -> MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn path(&self) -> &Path {
        &self.record.path
    }
    /// Wall-clock expiry for /api/ps (None: never, or busy).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.life().expires_wall
    }
    pub fn name(&self) -> String {
        self.life().name.clone()
    }
    pub fn keep_alive(&self) -> KeepAlive {
        self.life().keep_alive
    }
    /// Every run slot is taken (a new request would wait).
    pub fn is_running(&self) -> bool {
        self.run.available_permits() == 0
    }
    pub fn is_busy(&self) -> bool {
        self.life().active > 0
    }
}

/// A running request's hold on a loaded model; releasing it starts the keep-alive timer.
pub struct Lease {
    pub slot: Arc<Slot>,
    sched: Arc<Scheduler>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.sched.release(&self.slot);
    }
}

/// A place in a model's run queue.
pub struct RunPermit {
    _permit: OwnedSemaphorePermit,
}

pub struct Scheduler {
    loader: Arc<dyn ModelLoader>,
    cfg: SchedConfig,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// One load at a time (loads are memory- and disk-bound).
    load_lock: tokio::sync::Mutex<()>,
    /// A model went idle or was unloaded (loads waiting for memory, and the reaper, wake up).
    changed: Arc<Notify>,
    queued: AtomicUsize,
}

impl Scheduler {
    pub fn new(loader: Arc<dyn ModelLoader>, cfg: SchedConfig) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            loader,
            cfg,
            slots: Mutex::new(Vec::new()),
            load_lock: tokio::sync::Mutex::new(()),
            changed: Arc::new(Notify::new()),
            queued: AtomicUsize::new(0),
        })
    }

    pub fn config(&self) -> &SchedConfig {
        &self.cfg
    }

    fn slots(&self) -> MutexGuard<'_, Vec<Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The loaded models, most recently used first.
    pub fn loaded(&self) -> Vec<Arc<Slot>> {
        let mut v = self.slots().clone();
        v.sort_by_key(|s| std::cmp::Reverse(s.life().last_used));
        v
    }

    /// Requests waiting for a model to run them.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// The loaded slot for a model file, if any.
    pub fn find(&self, path: &Path) -> Option<Arc<Slot>> {
        self.slots().iter().find(|s| s.path() == path).cloned()
    }

    /// The model for `record`, loading it if needed. `num_ctx`: the context the request wants
    /// (None: the default); it picks the context of a model that is not loaded yet, and never
    /// reloads one (a loaded model bounds each request by its own `num_ctx`). Returns the
    /// lease and how long loading took (zero when it was loaded).
    pub async fn acquire(
        self: &Arc<Self>,
        record: &ModelRecord,
        num_ctx: Option<usize>,
        keep_alive: Option<KeepAlive>,
    ) -> Result<(Lease, Duration), ApiError> {
        let keep_alive = keep_alive.unwrap_or(self.cfg.keep_alive);
        if let Some(lease) = self.try_reuse(record, keep_alive) {
            return Ok((lease, Duration::ZERO));
        }
        let _loading = self.load_lock.lock().await;
        // Another request may have loaded it while this one waited.
        if let Some(lease) = self.try_reuse(record, keep_alive) {
            return Ok((lease, Duration::ZERO));
        }
        let start = Instant::now();
        // The default context, or more for a request that asks for more when it loads it.
        let default_ctx = match self.cfg.default_num_ctx {
            Some(n) => n.max(1),
            None => {
                let budget = self.cfg.max_memory.unwrap_or_else(available_memory);
                let loader = self.loader.clone();
                let path = record.path.clone();
                tokio::task::spawn_blocking(move || loader.default_context(&path, budget))
                    .await
                    .map_err(|e| ApiError::internal(format!("context choice failed: {e}")))?
                    .map_err(|e| {
                        ApiError::internal(format!("cannot read model '{}': {e}", record.name))
                    })?
            }
        };
        let num_ctx = num_ctx.map_or(default_ctx, |n| n.max(default_ctx));
        let loader = self.loader.clone();
        let path = record.path.clone();
        let budget = self.cfg.max_memory.unwrap_or_else(available_memory);
        let want = self.cfg.num_parallel;
        let (spec, estimate) = tokio::task::spawn_blocking(move || {
            let (parallel, kv_positions) = loader.batch_shape(&path, num_ctx, want, budget)?;
            let estimate = loader.estimate_pool_memory(&path, num_ctx, kv_positions)?;
            Ok::<_, String>(((parallel, kv_positions), estimate))
        })
        .await
        .map_err(|e| ApiError::internal(format!("memory estimate failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("cannot read model '{}': {e}", record.name)))?;
        let (parallel, kv_positions) = spec;
        self.make_room(&record.name, estimate).await?;
        let loader = self.loader.clone();
        let path = record.path.clone();
        let spec = LoadSpec {
            num_ctx,
            threads: self.cfg.threads,
            parallel,
            kv_positions,
        };
        let model = tokio::task::spawn_blocking(move || loader.load(&path, spec))
            .await
            .map_err(|e| ApiError::internal(format!("model load failed: {e}")))?
            .map_err(|e| {
                ApiError::internal(format!("failed to load model '{}': {e}", record.name))
            })?;
        let facts = model.facts();
        let slot = Arc::new(Slot {
            record: record.clone(),
            num_ctx: model.context_length(),
            parallel,
            // The larger of the estimate and what the engine reports.
            size: facts.memory_bytes.max(estimate),
            model,
            run: Arc::new(Semaphore::new(parallel.max(1))),
            life: Mutex::new(Life {
                name: record.name.clone(),
                active: 1,
                last_used: Instant::now(),
                keep_alive,
                expires_at: None,
                expires_wall: None,
            }),
        });
        self.slots().push(slot.clone());
        Ok((
            Lease {
                slot,
                sched: self.clone(),
            },
            start.elapsed(),
        ))
    }

    fn try_reuse(self: &Arc<Self>, record: &ModelRecord, keep_alive: KeepAlive) -> Option<Lease> {
        let slots = self.slots();
        let slot = slots.iter().find(|s| s.path() == record.path)?;
        let mut life = slot.life();
        life.active += 1;
        life.name = record.name.clone();
        life.keep_alive = keep_alive;
        life.last_used = Instant::now();
        life.expires_at = None;
        life.expires_wall = None;
        drop(life);
        Some(Lease {
            slot: slot.clone(),
            sched: self.clone(),
        })
    }

    /// Evict idle models (least recently used first) until `need` bytes fit the budget.
    async fn make_room(&self, name: &str, need: u64) -> Result<(), ApiError> {
        let deadline = Instant::now() + self.cfg.wait_for_memory;
        loop {
            let (used, count, victim) = {
                let slots = self.slots();
                let used: u64 = slots.iter().map(|s| s.size).sum();
                let victim = slots
                    .iter()
                    .filter(|s| s.life().active == 0)
                    .min_by_key(|s| s.life().last_used)
                    .cloned();
                (used, slots.len(), victim)
            };
            let budget = self
                .cfg
                .max_memory
                .unwrap_or_else(|| available_memory().saturating_add(used));
            if need > budget {
                return Err(ApiError::new(
                    ErrorKind::InsufficientMemory,
                    format!(
                        "model '{name}' needs {} but only {} can be used without swapping \
                         (set SMELT_MAX_MEMORY, or a smaller num_ctx)",
                        human_bytes(need),
                        human_bytes(budget)
                    ),
                ));
            }
            if used + need <= budget && count < self.cfg.max_loaded_models {
                return Ok(());
            }
            match victim {
                Some(v) => self.remove(&v),
                None => {
                    if Instant::now() >= deadline {
                        return Err(ApiError::new(
                            ErrorKind::Overloaded,
                            format!("no memory for model '{name}': every loaded model is busy"),
                        ));
                    }
                    self.wait_changed().await?;
                }
            }
        }
    }

    async fn wait_changed(&self) -> Result<(), ApiError> {
        let _ = tokio::time::timeout(Duration::from_millis(500), self.changed.notified()).await;
        Ok(())
    }

    fn remove(&self, slot: &Arc<Slot>) {
        self.slots().retain(|s| !Arc::ptr_eq(s, slot));
        self.changed.notify_waiters();
    }

    fn release(&self, slot: &Arc<Slot>) {
        let unload_now = {
            let mut life = slot.life();
            life.active = life.active.saturating_sub(1);
            life.last_used = Instant::now();
            if life.active > 0 {
                false
            } else {
                match life.keep_alive {
                    KeepAlive::Forever => false,
                    KeepAlive::For(d) if d.is_zero() => true,
                    KeepAlive::For(d) => {
                        life.expires_at = Some(Instant::now() + d);
                        life.expires_wall = Some(SystemTime::now() + d);
                        false
                    }
                }
            }
        };
        if unload_now {
            self.remove(slot);
        }
        self.changed.notify_waiters();
    }

    /// Unload a model now if idle, else as soon as its requests finish (keep_alive 0).
    pub fn unload(&self, path: &Path) -> bool {
        let Some(slot) = self.find(path) else {
            return false;
        };
        let idle = {
            let mut life = slot.life();
            life.keep_alive = KeepAlive::For(Duration::ZERO);
            life.active == 0
        };
        if idle {
            self.remove(&slot);
        }
        true
    }

    /// Set a loaded model's keep-alive without running anything (Ollama's empty-prompt load).
    pub fn touch(&self, path: &Path, keep_alive: KeepAlive) {
        if let Some(slot) = self.find(path) {
            let mut life = slot.life();
            life.keep_alive = keep_alive;
            if life.active == 0 {
                if let KeepAlive::For(d) = keep_alive {
                    life.expires_at = Some(Instant::now() + d);
                    life.expires_wall = Some(SystemTime::now() + d);
                } else {
                    life.expires_at = None;
                    life.expires_wall = None;
                }
            }
        }
    }

    /// Wait for a turn to run on `slot`; errors with 503 when the queue is full.
    pub async fn wait_turn(&self, slot: &Slot) -> Result<RunPermit, ApiError> {
        if let Ok(p) = slot.run.clone().try_acquire_owned() {
            return Ok(RunPermit { _permit: p });
        }
        self.check_queue()?;
        self.queued.fetch_add(1, Ordering::Relaxed);
        struct Dequeue<'a>(&'a AtomicUsize);
        impl Drop for Dequeue<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _dq = Dequeue(&self.queued);
        let p = slot
            .run
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("model was unloaded"))?;
        Ok(RunPermit { _permit: p })
    }

    /// 503 when the queue is full.
    pub fn check_queue(&self) -> Result<(), ApiError> {
        if self.queued.load(Ordering::Relaxed) >= self.cfg.max_queue {
            let mut e = ApiError::new(
                ErrorKind::Overloaded,
                "server busy: too many requests waiting, try again shortly",
            );
            e.retry_after = Some(1);
            return Err(e);
        }
        Ok(())
    }

    /// Unload idle models whose keep-alive ran out; runs until the scheduler is dropped.
    pub async fn reap_forever(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        loop {
            let Some(me) = weak.upgrade() else { return };
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            let expired: Vec<Arc<Slot>> = me
                .slots()
                .iter()
                .filter(|s| {
                    let life = s.life();
                    match life.expires_at {
                        Some(t) if life.active == 0 && t <= now => true,
                        Some(t) if life.active == 0 => {
                            next = Some(next.map_or(t, |n| n.min(t)));
                            false
                        }
                        _ => false,
                    }
                })
                .cloned()
                .collect();
            for s in &expired {
                me.remove(s);
            }
            let sleep = next
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(3600));
            let notify = me.changed.clone();
            // Let go of the scheduler while sleeping, so dropping it stops this task.
            drop(me);
            let changed = async move {
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(sleep) => {}
                }
            };
            // Wake at least every second to notice the scheduler going away.
            let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
        }
    }
}

/// Bytes of memory the system can give without swapping (MemAvailable), or a large number where
/// /proc/meminfo is missing.
pub fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|kb| kb.parse::<u64>().ok())
                        .map(|kb| kb * 1024)
                })
        })
        .unwrap_or(u64::MAX / 4)
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The directory-independent identity of a path for lookups.
pub fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(1536 << 10), "1.5 MiB");
    }

    #[test]
    fn meminfo_is_read() {
        assert!(available_memory() > 0);
    }
}
