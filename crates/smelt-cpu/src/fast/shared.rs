//! A slice several pool threads write at once, each to its own part.
//!
//! The activation arena and the KV cache are written by every thread of a kernel: a matmul
//! thread writes its columns, a rows thread its rows, an attention thread its heads. The plan
//! makes those parts disjoint within a kernel, and values are read only in a later kernel,
//! after a barrier (see `Plan::validate`). Rust cannot see that partition, so the views are
//! handed out by the `unsafe` methods below, whose callers state which partition they rely on.

use std::marker::PhantomData;

/// A raw view of a `&mut [T]` borrowed for `'a`, shareable across the pool's threads.
pub struct SharedSlice<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: the view only hands out element access through the unsafe methods, whose contract
// forbids overlapping writes; `T: Send + Sync` makes moving values between threads sound.
unsafe impl<T: Send + Sync> Sync for SharedSlice<'_, T> {}
unsafe impl<T: Send + Sync> Send for SharedSlice<'_, T> {}

impl<'a, T> SharedSlice<'a, T> {
    pub fn new(s: &'a mut [T]) -> Self {
        SharedSlice {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _borrow: PhantomData,
        }
    }

    fn check(&self, start: usize, len: usize) {
        let end = start.checked_add(len).expect("range overflows");
        assert!(
            end <= self.len,
            "range {start}..{end} outside a shared slice of {}",
            self.len
        );
    }

    /// Read `len` elements at `start`.
    ///
    /// # Safety
    /// No thread writes any of these elements while the returned slice lives.
    pub unsafe fn get(&self, start: usize, len: usize) -> &[T] {
        self.check(start, len);
        // SAFETY: in bounds (checked); the caller rules out concurrent writes.
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), len) }
    }

    /// Write access to `len` elements at `start`.
    ///
    /// # Safety
    /// No other thread reads or writes any of these elements while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_mut(&self, start: usize, len: usize) -> &mut [T] {
        self.check(start, len);
        // SAFETY: in bounds (checked); the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_write_disjoint_parts() {
        let mut v = vec![0u32; 1000];
        {
            let s = SharedSlice::new(&mut v);
            std::thread::scope(|sc| {
                for t in 0..4 {
                    let s = &s;
                    sc.spawn(move || {
                        // SAFETY: thread t writes only elements t*250..(t+1)*250.
                        let part = unsafe { s.get_mut(t * 250, 250) };
                        part.iter_mut().for_each(|x| *x = t as u32 + 1);
                    });
                }
            });
        }
        assert!(v
            .chunks(250)
            .enumerate()
            .all(|(t, c)| c.iter().all(|&x| x == t as u32 + 1)));
    }

    #[test]
    #[should_panic(expected = "outside a shared slice")]
    fn out_of_range_is_refused() {
        let mut v = vec![0u8; 4];
        let s = SharedSlice::new(&mut v);
        // SAFETY: single-threaded.
        let _ = unsafe { s.get(2, 3) };
    }
}
