//! Run directories: the exclusive lock a writer holds on one, so that two `train` processes never
//! write into the same directory. The lock is an advisory file lock (`flock` on Unix, `LockFileEx`
//! on Windows) on `DIR/.lock`, taken without waiting; the operating system releases it when the
//! holder exits, however it exits (`kill -9` included), so a stale lock cannot outlive its run.
//! The `.lock` file itself stays (an empty file): removing it would let a process that opened it
//! just before the removal lock a file no one else can see any more.
//!
//! [`lock_exclusive`] is the waiting kind, for files that processes take turns to update (a
//! study's plan, the tuned matmul tiles in the cache directory).
#![warn(missing_docs)]

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// Wait for an exclusive advisory lock on the file `path` (created if missing, and left in
/// place afterwards, as a run directory's `.lock` is), held until the returned file is dropped.
/// Two opens of the file, even in one process, exclude each other.
pub fn lock_exclusive(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| Error::Io(format!("cannot lock {}: {e}", path.display())))
}

/// An exclusive lock on a run directory, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Lock `dir` (which must exist) for writing, or refuse at once if another process holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::Io(format!("cannot open the lock file {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(Error::Io(format!(
                "{} is in use: another rectiflow train is writing to it (it holds {}); wait for \
                 it to finish, stop it, or choose another --out",
                dir.display(),
                path.display()
            ))),
            Err(TryLockError::Error(e)) => Err(Error::Io(format!(
                "cannot lock {}: {e} (file locks are needed to keep two runs out of one directory)",
                path.display()
            ))),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
