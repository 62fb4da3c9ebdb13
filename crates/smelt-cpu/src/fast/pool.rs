//! A persistent thread pool whose threads run one job together and meet at barriers.
//!
//! [`Pool::run`] hands a job to every thread (the caller is thread 0); the job calls
//! [`Barrier::wait`] after each fused kernel, and `run` returns after a final barrier, when
//! every thread has finished with the job. Waiting spins first (a decode step's kernels take
//! microseconds), then yields, then parks on a condition variable so an idle pool costs nothing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spin iterations before yielding, and yields before parking.
const SPINS: u32 = 1 << 13;
const YIELDS: u32 = 32;

/// Parks waiters on a word until it changes.
#[derive(Default)]
struct Signal {
    mutex: Mutex<()>,
    cv: Condvar,
    sleepers: AtomicUsize,
}

impl Signal {
    /// Return once `word` no longer holds `old`.
    fn wait_while(&self, word: &AtomicU64, old: u64) {
        for _ in 0..SPINS {
            if word.load(Ordering::Acquire) != old {
                return;
            }
            std::hint::spin_loop();
        }
        for _ in 0..YIELDS {
            if word.load(Ordering::Acquire) != old {
                return;
            }
            std::thread::yield_now();
        }
        // SeqCst pairs with `notify`: either the notifier sees this sleeper, or this check
        // sees the notifier's new value (both are in one total order).
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.mutex.lock().unwrap_or_else(|e| e.into_inner());
        while word.load(Ordering::SeqCst) == old {
            guard = self.cv.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        drop(guard);
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wake parked waiters; call after changing the word with SeqCst.
    fn notify(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.mutex.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
    }
}

/// A reusable barrier for a fixed number of threads, counting how often it completes.
pub struct Barrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicU64,
    signal: Signal,
}

impl Barrier {
    fn new(n: usize) -> Barrier {
        Barrier {
            n,
            count: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            signal: Signal::default(),
        }
    }

    /// Wait until all `n` threads have arrived. Everything a thread wrote before arriving is
    /// visible to every thread after it returns.
    pub fn wait(&self) {
        if self.n == 1 {
            self.generation.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let gen = self.generation.load(Ordering::Acquire);
        // AcqRel: the last arriver acquires every other thread's writes through the chain of
        // read-modify-writes, then publishes them with the generation store.
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.store(gen + 1, Ordering::SeqCst);
            self.signal.notify();
        } else {
            self.signal.wait_while(&self.generation, gen);
        }
    }

    /// Barriers completed since the pool started.
    pub fn completed(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

/// A job: called once on every thread with its index.
type Job<'a> = &'a (dyn Fn(usize, &Barrier) + Sync);

/// The job pointer as workers see it, its lifetime erased.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize, &Barrier) + Sync + 'static));
// SAFETY: the pointee is `Sync`, and `Pool::run` keeps it alive until every worker is done.
unsafe impl Send for JobPtr {}

struct Shared {
    n: usize,
    epoch: AtomicU64,
    job: Mutex<Option<JobPtr>>,
    start: Signal,
    barrier: Barrier,
    shutdown: AtomicBool,
}

/// `n` threads: the caller of [`Pool::run`] and `n - 1` workers.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    pub fn new(n_threads: usize) -> Pool {
        let n = n_threads.max(1);
        let shared = Arc::new(Shared {
            n,
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            start: Signal::default(),
            barrier: Barrier::new(n),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..n)
            .map(|tid| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("smelt-worker-{tid}"))
                    .spawn(move || worker(&shared, tid))
                    .expect("spawning a worker thread")
            })
            .collect();
        Pool { shared, workers }
    }

    pub fn n_threads(&self) -> usize {
        self.shared.n
    }

    /// Barriers completed so far (including the one that ends each job).
    pub fn barriers(&self) -> u64 {
        self.shared.barrier.completed()
    }

    /// Run `job(tid, barrier)` on every thread and return when all have finished. A panic
    /// inside a job aborts the process: the other threads would wait at a barrier forever.
    pub fn run(&self, job: Job<'_>) {
        let ptr: *const (dyn Fn(usize, &Barrier) + Sync + '_) = job;
        // SAFETY: only the lifetime is erased. Workers dereference the pointer only between
        // the epoch bump below and the final barrier, which this function waits for before
        // returning, so `job` outlives every use.
        let ptr: *const (dyn Fn(usize, &Barrier) + Sync + 'static) =
            unsafe { std::mem::transmute(ptr) };
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(JobPtr(ptr));
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.start.notify();
        run_guarded(job, 0, &self.shared.barrier);
        self.shared.barrier.wait();
    }
}

fn run_guarded(job: Job<'_>, tid: usize, barrier: &Barrier) {
    if catch_unwind(AssertUnwindSafe(|| job(tid, barrier))).is_err() {
        eprintln!("smelt: a compute thread panicked; aborting");
        std::process::abort();
    }
}

fn worker(shared: &Shared, tid: usize) {
    let mut seen = 0;
    loop {
        shared.start.wait_while(&shared.epoch, seen);
        seen = shared.epoch.load(Ordering::Acquire);
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        let job = shared
            .job
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expect("a job is set before the epoch moves");
        // SAFETY: `Pool::run` set this pointer before bumping the epoch and waits at the
        // final barrier below before its borrow ends.
        let job: Job<'_> = unsafe { &*job.0 };
        run_guarded(job, tid, &shared.barrier);
        shared.barrier.wait();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.start.notify();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_thread_runs_and_barriers_order_phases() {
        for n in [1, 2, 3, 5] {
            let pool = Pool::new(n);
            let slots: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            for round in 1..=50u32 {
                pool.run(&|tid, b| {
                    slots[tid].store(round, Ordering::Relaxed);
                    b.wait();
                    // After the barrier every thread sees every other thread's write.
                    for s in &slots {
                        assert_eq!(s.load(Ordering::Relaxed), round);
                    }
                    b.wait();
                });
            }
            // Two barriers per job inside it, plus the one that ends it.
            assert_eq!(pool.barriers(), 150);
        }
    }

    #[test]
    fn idle_workers_park_and_wake() {
        let pool = Pool::new(3);
        let hits = AtomicU32::new(0);
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(30));
            pool.run(&|_, _| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(hits.load(Ordering::Relaxed), 9);
    }
}
