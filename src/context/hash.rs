//! Content hashing of context files, many at once on the rayon pool.
//!
//! Each file is opened with `O_NOFOLLOW` (a file swapped for a symlink after the walk is an
//! error, not a read of the link's target), stamped with `fstat` before reading and checked
//! again after: a file that changed while it was read is still hashed, but marked unstable so
//! its digest is not put in the stat cache.
//!
//! This module knows nothing about ignore patterns, the stat cache file, or COPY.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::statcache::FileStamp;
use super::ContextError;
use sha2::{Digest as _, Sha256};

/// The result of hashing one file.
#[derive(Debug, Clone)]
pub struct Hashed {
    pub sha256: [u8; 32],
    /// The file's stamp (from `fstat` on the open file) when reading began.
    pub stamp: FileStamp,
    /// The file's metadata when reading began.
    pub metadata: Metadata,
    /// The stamp was the same after reading, so the digest describes that stamp.
    pub stable: bool,
    pub n_bytes: u64,
}

/// The stamp the stat cache keys on.
pub fn stamp_of(metadata: &Metadata) -> FileStamp {
    FileStamp {
        size: metadata.size(),
        mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
        ctime_ns: metadata.ctime() * 1_000_000_000 + metadata.ctime_nsec(),
        inode: metadata.ino(),
    }
}

/// Hashes one regular file.
pub fn hash_file(path: &Path) -> Result<Hashed, ContextError> {
    let error = |source| ContextError::Hash {
        path: path.to_path_buf(),
        source,
    };
    let mut file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(error)?;
    let metadata = file.metadata().map_err(error)?;
    if !metadata.is_file() {
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file any more",
        )));
    }
    let stamp = stamp_of(&metadata);
    let mut hasher = Sha256::new();
    let mut n_bytes = 0u64;
    let mut buffer = vec![0u8; (metadata.size() as usize).clamp(4096, 256 * 1024)];
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(error(e)),
        };
        hasher.update(&buffer[..n]);
        n_bytes += n as u64;
    }
    let after = file.metadata().map_err(error)?;
    Ok(Hashed {
        sha256: hasher.finalize().into(),
        stable: stamp_of(&after) == stamp && n_bytes == stamp.size,
        stamp,
        metadata,
        n_bytes,
    })
}

/// Hashes every file of `paths` in parallel; results are in the same order.
pub fn hash_files(paths: &[PathBuf]) -> Vec<Result<Hashed, ContextError>> {
    paths.par_iter().map(|path| hash_file(path)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn hashes_like_digest_of_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for i in 0..20 {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, format!("content {i}").repeat(i * 1000)).unwrap();
            paths.push(path);
        }
        for (i, result) in hash_files(&paths).into_iter().enumerate() {
            let hashed = result.unwrap();
            let expect = Digest::of_bytes(format!("content {i}").repeat(i * 1000).as_bytes());
            assert_eq!(Digest::from_sha256(hashed.sha256), expect);
            assert!(hashed.stable);
        }
    }

    #[test]
    fn refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("target"), b"x").unwrap();
        std::os::unix::fs::symlink("target", dir.path().join("link")).unwrap();
        let error = hash_file(&dir.path().join("link")).unwrap_err();
        assert!(error.to_string().contains("link"), "{error}");
    }
}
