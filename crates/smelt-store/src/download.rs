//! Downloading one blob: parallel HTTP Range parts written in place into `sha256-<hex>-partial`,
//! progress kept in `sha256-<hex>-partial.json` so a killed pull resumes, retries with backoff,
//! and a sha256 check before the file is renamed to its blob name.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::http::Client;
use crate::pull::{PullOptions, PullProgress};
use crate::store::Store;

const CHUNK: usize = 256 << 10;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STATE_SAVE_INTERVAL: Duration = Duration::from_millis(500);

/// What one blob download needs besides the URL.
pub(crate) struct Transfer<'a> {
    pub store: &'a Store,
    pub client: &'a Client,
    pub opts: &'a PullOptions,
    pub cancel: &'a AtomicBool,
    /// The model being pulled, for messages.
    pub model: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SavedState {
    digest: Digest,
    size: u64,
    parts: Vec<SavedPart>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SavedPart {
    start: u64,
    /// Exclusive.
    end: u64,
    done: u64,
}

struct Part {
    start: u64,
    end: u64,
    done: AtomicU64,
}

/// Shared by the part workers of one blob.
struct Job<'a> {
    t: &'a Transfer<'a>,
    url: &'a str,
    file: &'a File,
    partial: &'a Path,
    digest: Digest,
    size: u64,
    parts: Vec<Part>,
    next: AtomicUsize,
    abort: AtomicBool,
    error: Mutex<Option<Error>>,
}

/// Makes sure blob `digest` (`size` bytes) is in the store, downloading it from `url` if it is not.
pub(crate) fn fetch_blob(
    t: &Transfer,
    url: &str,
    digest: &Digest,
    size: u64,
    progress: &mut dyn FnMut(&PullProgress),
) -> Result<()> {
    let status = format!("pulling {}", digest.short());
    let mut report =
        |completed: u64| progress(&PullProgress::bytes(&status, digest, size, completed));
    if t.store.has_blob(digest, size) {
        report(size);
        return Ok(());
    }
    // One download of a blob at a time, across threads and processes.
    let lock_path = t.store.lock_path(digest);
    let lock = File::create(&lock_path).map_err(|e| Error::io("create lock", &lock_path, e))?;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                check_cancel(t)?;
                thread::sleep(Duration::from_millis(100));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path, e)),
        }
    }
    if t.store.has_blob(digest, size) {
        report(size);
        return Ok(());
    }
    let partial = t.store.partial_path(digest);
    let state_path = state_path(&partial);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&partial)
        .map_err(|e| Error::io("open partial download", &partial, e))?;
    let saved = load_state(&state_path, digest, size)
        .filter(|_| file.metadata().is_ok_and(|m| m.len() == size));
    let saved = match saved {
        Some(s) => s,
        None => {
            // Fresh start: stale bytes from an unrelated attempt must not survive.
            file.set_len(0)
                .and_then(|_| file.set_len(size))
                .map_err(|e| Error::io("size partial download", &partial, e))?;
            let s = SavedState {
                digest: *digest,
                size,
                parts: plan_parts(size, t.opts),
            };
            save_state(t.store, &state_path, &s)?;
            s
        }
    };
    let job = Job {
        t,
        url,
        file: &file,
        partial: &partial,
        digest: *digest,
        size,
        parts: saved
            .parts
            .iter()
            .map(|p| Part {
                start: p.start,
                end: p.end,
                done: AtomicU64::new(p.done),
            })
            .collect(),
        next: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
        error: Mutex::new(None),
    };
    run_parts(&job, &state_path, &mut report)?;

    progress(&PullProgress::status_with_digest(
        "verifying sha256 digest",
        digest,
    ));
    let (actual, len) = Digest::of_file(&partial)?;
    if actual != *digest || len != size {
        discard(&partial, &state_path);
        if len != size {
            return Err(Error::SizeMismatch {
                digest: digest.to_string(),
                expected: size,
                actual: len,
            });
        }
        return Err(Error::DigestMismatch {
            digest: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    file.sync_all()
        .map_err(|e| Error::io("sync", &partial, e))?;
    drop(file);
    fsutil::rename_into(&partial, &t.store.blob_path(digest))?;
    let _ = fs::remove_file(&state_path);
    Ok(())
}

/// Runs the part workers, reporting progress and saving state from this thread.
fn run_parts(job: &Job, state_path: &Path, report: &mut dyn FnMut(u64)) -> Result<()> {
    let pending = job
        .parts
        .iter()
        .filter(|p| p.start + p.done.load(Ordering::Relaxed) < p.end)
        .count();
    let workers = job.t.opts.parallel.clamp(1, pending.max(1));
    let snapshot = |job: &Job| -> Vec<SavedPart> {
        job.parts
            .iter()
            .map(|p| SavedPart {
                start: p.start,
                end: p.end,
                done: p.done.load(Ordering::Relaxed),
            })
            .collect()
    };
    let (digest, size) = (job.digest, job.size);
    let completed = |job: &Job| {
        job.parts
            .iter()
            .map(|p| p.done.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let mut last_saved = snapshot(job);
    let mut last_save_time = Instant::now();
    let mut save = |job: &Job, force: bool| -> Result<()> {
        let now = snapshot(job);
        if now != last_saved && (force || last_save_time.elapsed() >= STATE_SAVE_INTERVAL) {
            save_state(
                job.t.store,
                state_path,
                &SavedState {
                    digest,
                    size,
                    parts: now.clone(),
                },
            )?;
            last_saved = now;
            last_save_time = Instant::now();
        }
        Ok(())
    };
    report(completed(job));
    thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..workers).map(|_| s.spawn(|| worker(job))).collect();
        while !handles.iter().all(|h| h.is_finished()) {
            thread::sleep(job.t.opts.progress_interval);
            if job.t.cancel.load(Ordering::Relaxed) {
                job.abort.store(true, Ordering::Relaxed);
            }
            report(completed(job));
            save(job, false)?;
        }
        Ok(())
    })?;
    save(job, true)?;
    report(completed(job));
    if let Some(err) = job.error.lock().expect("error lock").take() {
        if matches!(err, Error::DiskFull { .. }) {
            // Keeping a partial file on a full disk only makes things worse.
            discard(job.partial, state_path);
        }
        return Err(err);
    }
    check_cancel(job.t)?;
    if completed(job) != size {
        return Err(Error::SizeMismatch {
            digest: digest.to_string(),
            expected: size,
            actual: completed(job),
        });
    }
    Ok(())
}

fn worker(job: &Job) {
    loop {
        if job.abort.load(Ordering::Relaxed) {
            return;
        }
        let i = job.next.fetch_add(1, Ordering::Relaxed);
        let Some(part) = job.parts.get(i) else { return };
        if let Err(e) = download_part(job, part) {
            let mut slot = job.error.lock().expect("error lock");
            // The first real error wins; a cancellation seen by other workers is a consequence.
            if slot.is_none() || matches!(*slot, Some(Error::Cancelled { .. })) {
                *slot = Some(e);
            }
            job.abort.store(true, Ordering::Relaxed);
            return;
        }
    }
}

/// Downloads what is left of one part, retrying transient failures with exponential backoff.
/// The retry budget restarts whenever an attempt made progress.
fn download_part(job: &Job, part: &Part) -> Result<()> {
    let mut failures = 0u32;
    loop {
        check_cancel(job.t)?;
        if job.abort.load(Ordering::Relaxed) {
            return Ok(());
        }
        let before = part.done.load(Ordering::Relaxed);
        if part.start + before >= part.end {
            return Ok(());
        }
        match stream_range(job, part) {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                if part.done.load(Ordering::Relaxed) > before {
                    failures = 0;
                }
                failures += 1;
                if failures > job.t.opts.retries {
                    return Err(e);
                }
                let backoff = job
                    .t
                    .opts
                    .backoff
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(MAX_BACKOFF);
                sleep_unless_cancelled(job, backoff)?;
            }
            Err(e) => return Err(e),
        }
    }
}

fn stream_range(job: &Job, part: &Part) -> Result<()> {
    let offset = part.start + part.done.load(Ordering::Relaxed);
    let reply = job
        .t
        .client
        .get(job.url, None, Some((offset, part.end - 1)))?;
    let url = reply.url.clone();
    let mut skip = 0;
    match reply.status {
        206 => {
            let range = reply.header("content-range").unwrap_or_default();
            if content_range_start(range) != Some(offset) {
                return Err(Error::Protocol {
                    url,
                    reason: format!("asked for bytes from {offset}, got {range:?}"),
                });
            }
        }
        // The server ignored the Range header: skip to the part's offset.
        200 => skip = offset,
        404 => {
            return Err(Error::Http {
                op: "get blob",
                url,
                status: 404,
                detail: " (blob not found)".into(),
            });
        }
        status => {
            return Err(Error::Http {
                op: "get blob",
                url,
                status,
                detail: reply.error_detail(),
            })
        }
    }
    let mut reader = reply.into_reader();
    if skip > 0 {
        let skipped =
            std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink()).map_err(|e| {
                Error::Protocol {
                    url: url.clone(),
                    reason: e.to_string(),
                }
            })?;
        if skipped < skip {
            return Err(Error::Protocol {
                url,
                reason: "connection closed before the requested range".into(),
            });
        }
    }
    let mut buf = vec![0u8; CHUNK];
    let mut pos = offset;
    while pos < part.end {
        if job.abort.load(Ordering::Relaxed) || job.t.cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        let want = buf.len().min((part.end - pos) as usize);
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(Error::Protocol {
                    url,
                    reason: format!(
                        "connection closed at byte {pos} of a part ending at {}",
                        part.end
                    ),
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Protocol {
                    url,
                    reason: format!("connection dropped at byte {pos}: {e}"),
                })
            }
        };
        write_at(job.file, &buf[..n], pos)
            .map_err(|e| Error::io("write partial download", job.partial, e))?;
        pos += n as u64;
        part.done.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// The start offset of `Content-Range: bytes START-END/TOTAL`.
fn content_range_start(header: &str) -> Option<u64> {
    header
        .trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Parts of at least `min_part_size`, at most `max_parts` of them.
fn plan_parts(size: u64, opts: &PullOptions) -> Vec<SavedPart> {
    if size == 0 {
        return Vec::new();
    }
    let n = size
        .div_ceil(opts.min_part_size.max(1))
        .clamp(1, opts.max_parts.max(1) as u64);
    let step = size.div_ceil(n);
    (0..n)
        .map(|i| SavedPart {
            start: i * step,
            end: ((i + 1) * step).min(size),
            done: 0,
        })
        .filter(|p| p.start < p.end)
        .collect()
}

fn state_path(partial: &Path) -> PathBuf {
    let mut s = partial.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// A saved state is used only if it describes this blob and its parts tile it exactly.
fn load_state(path: &Path, digest: &Digest, size: u64) -> Option<SavedState> {
    let bytes = fs::read(path).ok()?;
    let s: SavedState = serde_json::from_slice(&bytes).ok()?;
    let mut expect = 0;
    for p in &s.parts {
        if p.start != expect || p.end <= p.start || p.done > p.end - p.start {
            return None;
        }
        expect = p.end;
    }
    (s.digest == *digest && s.size == size && expect == size).then_some(s)
}

/// State files are only a hint (the final sha256 check is the guard), so no fsync here.
fn save_state(store: &Store, path: &Path, s: &SavedState) -> Result<()> {
    let tmp = store.tmp.join(fsutil::unique_name("state"));
    let bytes = serde_json::to_vec(s).expect("state serializes");
    fs::write(&tmp, bytes).map_err(|e| Error::io("write download state", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("write download state", path, e)
    })
}

fn discard(partial: &Path, state: &Path) {
    let _ = fs::remove_file(partial);
    let _ = fs::remove_file(state);
}

fn check_cancel(t: &Transfer) -> Result<()> {
    if t.cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled {
            name: t.model.to_string(),
        });
    }
    Ok(())
}

fn sleep_unless_cancelled(job: &Job, d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        check_cancel(job.t)?;
        if job.abort.load(Ordering::Relaxed) {
            return Ok(());
        }
        thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], pos: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, pos)
}

#[cfg(windows)]
fn write_at(file: &File, mut buf: &[u8], mut pos: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_write(buf, pos)?;
        buf = &buf[n..];
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_tile_the_blob() {
        let opts = PullOptions {
            min_part_size: 10,
            max_parts: 4,
            ..PullOptions::default()
        };
        assert!(plan_parts(0, &opts).is_empty());
        for size in [1, 9, 10, 11, 39, 40, 41, 1000] {
            let parts = plan_parts(size, &opts);
            assert!(!parts.is_empty() && parts.len() <= 4, "{size}: {parts:?}");
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts.last().unwrap().end, size);
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
        }
        assert_eq!(plan_parts(25, &opts).len(), 3);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(content_range_start("bytes 100-199/1000"), Some(100));
        assert_eq!(content_range_start("bytes */1000"), None);
        assert_eq!(content_range_start(""), None);
    }
}
