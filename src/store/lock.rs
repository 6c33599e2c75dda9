//! Store-wide advisory locks (flock(2)), released when the guard drops or the process dies.
//!
//! `lock`: exclusive while index.json is read-modified-written, so concurrent `tag`/`load`
//! never lose each other's names. `gc.lock`: writers that hold blobs not yet named in
//! index.json keep it shared; `prune` takes it exclusive so it never deletes such blobs.
//! Readers take neither: blobs are immutable and index.json is replaced by rename.
//!
//! Written against libc directly because the guard only needs `flock` on an open file; a
//! kernel-released lock is what makes a SIGKILLed writer harmless.

use super::{Result, Store, StoreError};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Held exclusive lock on `<root>/lock`.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// Held shared lock on `<root>/gc.lock`: prune waits until it is dropped.
#[derive(Debug)]
pub struct GcPin {
    _file: File,
}

fn flock(path: &Path, operation: libc::c_int) -> Result<File> {
    let lock_error = |source| StoreError::Lock {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(lock_error)?;
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if rc == 0 {
            return Ok(file);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(lock_error(err));
        }
    }
}

impl Store {
    fn lock_path(&self) -> PathBuf {
        self.root().join("lock")
    }
    /// Takes the writer lock (blocking). Hold it while changing index.json.
    pub fn lock(&self) -> Result<StoreLock> {
        Ok(StoreLock {
            _file: flock(&self.lock_path(), libc::LOCK_EX)?,
        })
    }
    /// Pins blobs against `prune` until dropped (blocking while a prune runs).
    pub fn pin(&self) -> Result<GcPin> {
        Ok(GcPin {
            _file: flock(&self.root().join("gc.lock"), libc::LOCK_SH)?,
        })
    }
    /// Exclusive side of `pin`, for prune.
    pub(crate) fn gc_exclusive(&self) -> Result<GcPin> {
        Ok(GcPin {
            _file: flock(&self.root().join("gc.lock"), libc::LOCK_EX)?,
        })
    }
}
