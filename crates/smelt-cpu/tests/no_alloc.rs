//! Decoding allocates nothing: a counting global allocator watches every thread while the
//! fast backend replays a decode program on a real model. (One test in this binary, so no
//! other test's allocations are counted.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use smelt_cpu::{FastBackend, FastKvCache};
use smelt_gguf::Gguf;
use smelt_models::Output;
use smelt_testutil::{model_path, GEMMA3, SMOLLM2};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_and_prefill_steps_allocate_nothing() {
    for model in [SMOLLM2, GEMMA3] {
        let g = Arc::new(Gguf::open(model_path(model)).unwrap());
        let arch = smelt_models::load(&g).unwrap();
        let mut fb = FastBackend::new(Arc::clone(&g), &arch.weights().specs(), 2).unwrap();
        let mut kv = FastKvCache::new(32, &arch.kv_widths());
        let prefill = fb.lower(&arch.build(4, Output::LastLogits), &kv).unwrap();
        let decode = fb.lower(&arch.build(1, Output::LastLogits), &kv).unwrap();
        let prompt = [2u32, 651, 6037, 576];
        let positions = [0u32, 1, 2, 3];
        // Warm up: the first executions may touch lazily initialised runtime state.
        fb.execute(&prefill, &prompt, &positions, &mut kv).unwrap();
        fb.execute(&decode, &[11], &[4], &mut kv).unwrap();
        COUNTING.store(true, Ordering::SeqCst);
        fb.execute(&prefill, &prompt, &positions, &mut kv).unwrap();
        for p in 4..12u32 {
            let logits = fb.execute(&decode, &[p * 7], &[p], &mut kv).unwrap();
            assert!(logits[0].is_finite());
        }
        COUNTING.store(false, Ordering::SeqCst);
        assert_eq!(
            ALLOCS.load(Ordering::SeqCst),
            0,
            "{model}: allocations during execution"
        );
    }
}
