//! Crash-safe file operations: everything that becomes visible in the store appears by one rename.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other process or thread will pick: pid, a counter and the time.
pub(crate) fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes `bytes` to a temporary file in `tmp_dir`, syncs it and renames it over `dest`.
pub(crate) fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_dir.join(unique_name("write"));
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write", &tmp, e));
    }
    rename_into(&tmp, dest)
}

/// Renames a finished temporary file to its final name (creating parents) and syncs the directory,
/// so the new name survives a crash.
pub(crate) fn rename_into(tmp: &Path, dest: &Path) -> Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    if let Err(e) = fs::create_dir_all(parent) {
        let _ = fs::remove_file(tmp);
        return Err(Error::io("create directory", parent, e));
    }
    if let Err(e) = fs::rename(tmp, dest) {
        let _ = fs::remove_file(tmp);
        return Err(Error::io("rename into place", dest, e));
    }
    sync_dir(parent)
}

/// fsync a directory so a rename or unlink in it is durable (a no-op where directories cannot be opened).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync directory", dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Which kind of link to try first when linking a file into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkPref {
    /// The user's own file: the store points at it, so deleting it frees its space.
    Symlink,
    /// An immutable blob of another store: a hard link survives that store's garbage collection.
    Hard,
}

/// Makes `dest` name the file `src` without copying its bytes: a symbolic or hard link, made at a
/// temporary name and renamed into place.
pub(crate) fn link_into(src: &Path, tmp_dir: &Path, dest: &Path, pref: LinkPref) -> Result<()> {
    let src = fs::canonicalize(src).map_err(|e| Error::io("resolve path", src, e))?;
    let tmp = tmp_dir.join(unique_name("link"));
    let symlink = || make_symlink(&src, &tmp);
    let hard = || fs::hard_link(&src, &tmp);
    let linked = match pref {
        LinkPref::Symlink => symlink().or_else(|_| hard()),
        LinkPref::Hard => hard().or_else(|_| symlink()),
    };
    linked.map_err(|e| Error::io("link into the store (files are never copied)", &src, e))?;
    rename_into(&tmp, dest)
}

#[cfg(unix)]
fn make_symlink(src: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(src, link)
}

#[cfg(windows)]
fn make_symlink(src: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_file(src, link)
}

/// Removes now-empty directories from `start` up to (not including) `stop`.
pub(crate) fn remove_empty_parents(start: &Path, stop: &Path) {
    let mut dir: Option<PathBuf> = Some(start.to_path_buf());
    while let Some(d) = dir {
        if d == stop || !d.starts_with(stop) || fs::remove_dir(&d).is_err() {
            break;
        }
        dir = d.parent().map(Path::to_path_buf);
    }
}

/// Modification time, or the epoch when the platform cannot say.
pub(crate) fn mtime(meta: &fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or(UNIX_EPOCH)
}

/// Checks the first four bytes of a file for the GGUF magic.
pub(crate) fn check_gguf_magic(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    f.read_exact(&mut magic).map_err(|_| Error::NotGguf {
        path: path.to_path_buf(),
        reason: "shorter than a GGUF header".into(),
    })?;
    if &magic != b"GGUF" {
        return Err(Error::NotGguf {
            path: path.to_path_buf(),
            reason: format!("magic is {magic:02x?}, not \"GGUF\""),
        });
    }
    Ok(())
}
