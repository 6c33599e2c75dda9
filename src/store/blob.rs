//! Blobs: writing (temp file in `<root>/tmp`, digested while it flows, fsync, verify, rename
//! into `blobs/sha256/<hex>`) and reading. A blob is never visible under its digest unless its
//! bytes hash to it. Large blobs nothing reads back soon (committed layers) can bypass the page
//! cache ([`Store::blob_writer_uncached`], see `uncached`).

use super::uncached::UncachedWriter;
use super::{Result, Store, StoreError};
use crate::digest::{Digest, DigestReader, DigestWriter};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

/// What a committed blob is: its digest and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

impl BlobInfo {
    /// An OCI descriptor for this blob.
    pub fn descriptor(&self, media_type: &str) -> oci_spec::image::Descriptor {
        oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::from(media_type),
            self.size,
            super::oci_digest(&self.digest),
        )
    }
}

/// A blob being written. Bytes go to a temp file under `<root>/tmp` and are digested on the way;
/// `commit` checks the digest and renames the file into place. Dropping it uncommitted removes
/// the temp file.
pub struct BlobWriter {
    store: Store,
    inner: Sink,
}

enum Sink {
    Cached(DigestWriter<BufWriter<tempfile::NamedTempFile>>),
    Uncached(UncachedWriter<tempfile::NamedTempFile>),
    /// Bytes whose digest the caller computes as it writes them ([`Store::blob_writer_digested_by_caller`]).
    Unhashed {
        file: BufWriter<tempfile::NamedTempFile>,
        n_bytes: u64,
    },
}

impl BlobWriter {
    /// The digest and size so far would be known only at commit; this is the byte count.
    pub fn n_bytes(&self) -> u64 {
        match &self.inner {
            Sink::Cached(inner) => inner.n_bytes(),
            Sink::Uncached(inner) => inner.n_bytes(),
            Sink::Unhashed { n_bytes, .. } => *n_bytes,
        }
    }

    /// Commits a writer from [`Store::blob_writer_digested_by_caller`] as the blob `digest`:
    /// the sha256 the caller computed of exactly the bytes it wrote here (a registry client
    /// verifying a download as it arrives). fsync and rename as [`BlobWriter::commit`].
    pub fn commit_digested(self, digest: &Digest) -> Result<BlobInfo> {
        let Sink::Unhashed { file, n_bytes } = self.inner else {
            return self.commit(Some(digest));
        };
        let temp = file
            .into_inner()
            .map_err(|err| StoreError::WriteBlob(err.into_error()))?;
        self.store.persist_blob(temp, digest.clone(), n_bytes)
    }

    /// Flushes, fsyncs, checks the digest against `expected` (when given) and renames the file
    /// to `blobs/sha256/<hex>`. A blob already present is kept (same digest, same bytes).
    pub fn commit(self, expected: Option<&Digest>) -> Result<BlobInfo> {
        let (digest, size, temp) = match self.inner {
            Sink::Cached(inner) => {
                let (digest, size, buffered) = inner.finish();
                let temp = buffered
                    .into_inner()
                    .map_err(|err| StoreError::WriteBlob(err.into_error()))?;
                (digest, size, temp)
            }
            Sink::Uncached(inner) => {
                let written = inner.finish().map_err(StoreError::WriteBlob)?;
                (written.digest, written.size, written.file)
            }
            Sink::Unhashed { .. } => {
                return Err(StoreError::Invalid(
                    "a blob written without hashing is committed by its writer's digest \
                     (commit_digested)"
                        .into(),
                ))
            }
        };
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(StoreError::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        self.store.persist_blob(temp, digest, size)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Sink::Cached(inner) => inner.write(buf),
            Sink::Uncached(inner) => inner.write(buf),
            Sink::Unhashed { file, n_bytes } => {
                let n = file.write(buf)?;
                *n_bytes += n as u64;
                Ok(n)
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Sink::Cached(inner) => inner.flush(),
            Sink::Uncached(inner) => inner.flush(),
            Sink::Unhashed { file, .. } => file.flush(),
        }
    }
}

/// fsyncs a directory so a rename into it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `target` atomically: temp file in `tmp_dir`, fsync, rename, fsync dir.
pub(crate) fn write_file_atomic(tmp_dir: &Path, target: &Path, bytes: &[u8]) -> Result<()> {
    let write_error = |source| StoreError::WriteFile {
        path: target.to_path_buf(),
        source,
    };
    let mut temp = tempfile::Builder::new()
        .prefix(&super::owned_name("write-"))
        .tempfile_in(tmp_dir)
        .map_err(|source| StoreError::TempFile {
            dir: tmp_dir.to_path_buf(),
            source,
        })?;
    temp.write_all(bytes).map_err(write_error)?;
    temp.as_file().sync_all().map_err(write_error)?;
    temp.persist(target).map_err(|err| write_error(err.error))?;
    if let Some(parent) = target.parent() {
        sync_dir(parent).map_err(write_error)?;
    }
    Ok(())
}

impl Store {
    fn blob_temp_file(&self) -> Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix(&super::owned_name("ingest-"))
            .tempfile_in(self.tmp_dir())
            .map_err(|source| StoreError::TempFile {
                dir: self.tmp_dir(),
                source,
            })
    }

    /// fsyncs `temp` and renames it to the blob `digest` (kept as it is if already there).
    fn persist_blob(
        &self,
        temp: tempfile::NamedTempFile,
        digest: Digest,
        size: u64,
    ) -> Result<BlobInfo> {
        let commit_error = |source| StoreError::CommitBlob {
            digest: digest.clone(),
            source,
        };
        let target = self.blob_path(&digest);
        if target.exists() {
            return Ok(BlobInfo { digest, size });
        }
        temp.as_file().sync_all().map_err(commit_error)?;
        temp.persist(&target)
            .map_err(|err| commit_error(err.error))?;
        sync_dir(&self.blobs_dir()).map_err(commit_error)?;
        Ok(BlobInfo { digest, size })
    }

    /// A writer for a blob whose writer digests the bytes itself as it writes them (a
    /// registry download, which the client verifies against its digest as it arrives): this
    /// writer does not hash them a second time, and is committed with
    /// [`BlobWriter::commit_digested`] once the caller's digest matched.
    pub fn blob_writer_digested_by_caller(&self) -> Result<BlobWriter> {
        let temp = self.blob_temp_file()?;
        Ok(BlobWriter {
            store: self.clone(),
            inner: Sink::Unhashed {
                file: BufWriter::with_capacity(1 << 20, temp),
                n_bytes: 0,
            },
        })
    }

    /// A writer for a new blob.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let temp = self.blob_temp_file()?;
        Ok(BlobWriter {
            store: self.clone(),
            inner: Sink::Cached(DigestWriter::new(BufWriter::with_capacity(1 << 20, temp))),
        })
    }

    /// A writer for a large blob nothing reads back soon (a committed layer): its bytes are
    /// hashed and written on a thread of their own, bypassing the page cache where the
    /// filesystem allows it, so that the fsync of `commit` finds them on disk already. The
    /// blob's bytes, digest and durability are those of [`Store::blob_writer`]'s.
    pub fn blob_writer_uncached(&self) -> Result<BlobWriter> {
        let temp = self.blob_temp_file()?;
        let writer = UncachedWriter::new(temp).map_err(|source| StoreError::TempFile {
            dir: self.tmp_dir(),
            source,
        })?;
        Ok(BlobWriter {
            store: self.clone(),
            inner: Sink::Uncached(writer),
        })
    }

    /// Streams `reader` into a new blob, verified against `expected` when given.
    pub fn write_blob(&self, reader: &mut dyn Read, expected: Option<&Digest>) -> Result<BlobInfo> {
        if let Some(expected) = expected {
            if self.has_blob(expected) {
                // Still drain and check: the caller's stream must be what it claims.
                let mut digest_reader = DigestReader::new(reader);
                io::copy(&mut digest_reader, &mut io::sink()).map_err(StoreError::WriteBlob)?;
                let (actual, size, _) = digest_reader.finish();
                if actual != *expected {
                    return Err(StoreError::DigestMismatch {
                        expected: expected.clone(),
                        actual,
                    });
                }
                return Ok(BlobInfo {
                    digest: actual,
                    size,
                });
            }
        }
        let mut writer = self.blob_writer()?;
        io::copy(reader, &mut writer).map_err(StoreError::WriteBlob)?;
        writer.commit(expected)
    }

    /// Writes a small blob held in memory (a manifest or config).
    pub fn write_blob_bytes(&self, bytes: &[u8]) -> Result<BlobInfo> {
        let digest = Digest::of_bytes(bytes);
        if self.has_blob(&digest) {
            return Ok(BlobInfo {
                digest,
                size: bytes.len() as u64,
            });
        }
        let mut writer = self.blob_writer()?;
        writer.write_all(bytes).map_err(StoreError::WriteBlob)?;
        writer.commit(Some(&digest))
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Size in bytes of a stored blob.
    pub fn blob_size(&self, digest: &Digest) -> Result<u64> {
        std::fs::metadata(self.blob_path(digest))
            .map(|meta| meta.len())
            .map_err(|source| self.read_error(digest, source))
    }

    /// Opens a blob for streaming. Not re-verified (blobs are checked when written; `fsck`
    /// re-checks).
    pub fn read_blob(&self, digest: &Digest) -> Result<File> {
        File::open(self.blob_path(digest)).map_err(|source| self.read_error(digest, source))
    }

    /// Reads a small blob (manifest, config) into memory and verifies its digest.
    pub fn read_blob_bytes(&self, digest: &Digest) -> Result<Vec<u8>> {
        let bytes = std::fs::read(self.blob_path(digest))
            .map_err(|source| self.read_error(digest, source))?;
        let actual = Digest::of_bytes(&bytes);
        if actual != *digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    fn read_error(&self, digest: &Digest, source: io::Error) -> StoreError {
        if source.kind() == io::ErrorKind::NotFound {
            StoreError::MissingBlob {
                digest: digest.clone(),
            }
        } else {
            StoreError::ReadBlob {
                digest: digest.clone(),
                source,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(data: &[u8], expected: Option<&Digest>) -> Result<BlobInfo> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let result = store.write_blob(&mut &data[..], expected);
        if let Ok(info) = &result {
            assert_eq!(std::fs::read(store.blob_path(&info.digest)).unwrap(), data);
        }
        // Nothing is left in tmp either way.
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        result
    }

    #[test]
    fn writes_and_verifies() {
        let data = b"some layer bytes";
        let info = check(data, Some(&Digest::of_bytes(data))).unwrap();
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(check(data, None).unwrap().digest, Digest::of_bytes(data));
    }

    /// A writer whose caller digests the bytes stores them under the caller's digest, refuses a
    /// plain commit (it has no digest of its own to check), and leaves nothing in tmp.
    #[test]
    fn a_writer_digested_by_its_caller_commits_under_that_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"downloaded layer bytes";
        let mut writer = store.blob_writer_digested_by_caller().unwrap();
        writer.write_all(data).unwrap();
        assert_eq!(writer.n_bytes(), data.len() as u64);
        let digest = Digest::of_bytes(data);
        let info = writer.commit_digested(&digest).unwrap();
        assert_eq!(
            (info.digest.clone(), info.size),
            (digest, data.len() as u64)
        );
        assert_eq!(std::fs::read(store.blob_path(&info.digest)).unwrap(), data);

        let mut unchecked = store.blob_writer_digested_by_caller().unwrap();
        unchecked.write_all(b"other bytes").unwrap();
        assert!(matches!(
            unchecked.commit(None),
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    /// The uncached writer stores the same bytes under the same digest, fsynced and renamed
    /// like any blob, and leaves nothing in tmp, committed or dropped.
    #[test]
    fn uncached_writer_commits_the_same_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..(9 << 20) + 4321u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut writer = store.blob_writer_uncached().unwrap();
        for chunk in data.chunks(100_000) {
            writer.write_all(chunk).unwrap();
        }
        writer.flush().unwrap();
        assert_eq!(writer.n_bytes(), data.len() as u64);
        let info = writer.commit(Some(&Digest::of_bytes(&data))).unwrap();
        assert_eq!(info.size, data.len() as u64);
        assert!(std::fs::read(store.blob_path(&info.digest)).unwrap() == data);
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);

        let mut dropped = store.blob_writer_uncached().unwrap();
        dropped.write_all(&data).unwrap();
        drop(dropped);
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);

        let mut wrong = store.blob_writer_uncached().unwrap();
        wrong.write_all(b"abc").unwrap();
        let err = wrong.commit(Some(&Digest::of_bytes(b"abd"))).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_mismatch_and_leaves_nothing() {
        let err = check(b"abc", Some(&Digest::of_bytes(b"abd"))).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    }
}
