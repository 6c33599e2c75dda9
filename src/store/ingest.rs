//! Writing layers kiln makes: a tar stream (plain, gzip or zstd) flows once through
//! decompression -> tar validation and sha256 (the diff ID) -> zstd -> sha256 (the blob digest)
//! -> a blob file, never held in memory.
//!
//! The tar is parsed on the way (member names checked for escapes, structure and checksums
//! checked) but its bytes are passed on unchanged, so the diff ID is the digest of exactly the
//! uncompressed input.

use super::compression::{self, Compression};
use super::members::{MemberChecker, MemberKind};
use super::{BlobInfo, Result, Store, StoreError};
use crate::digest::{Digest, DigestWriter};
use std::io::{self, Read, Write};

/// A stored layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// The compressed blob as stored.
    pub blob: BlobInfo,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// How the input was compressed.
    pub input_compression: Compression,
}

impl LayerInfo {
    /// The manifest descriptor of the stored (zstd) blob.
    pub fn descriptor(&self) -> oci_spec::image::Descriptor {
        self.blob
            .descriptor(Compression::Zstd.oci_layer_media_type())
    }
}

/// Copies everything read through it to a writer.
struct Tee<R, W> {
    reader: R,
    writer: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        self.writer.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Reads a whole tar stream from `reader`, checking each member; every byte read goes on to
/// whatever `reader` tees into. Returns the number of members.
pub(crate) fn validate_tar<R: Read>(reader: R, what: &str) -> Result<(usize, R)> {
    let invalid = |message: String| StoreError::Invalid(format!("{what}: {message}"));
    let mut archive = tar::Archive::new(reader);
    let mut checker = MemberChecker::default();
    let mut n_members = 0;
    {
        let entries = archive
            .entries()
            .map_err(|err| invalid(format!("not a tar archive: {err}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|err| invalid(format!("corrupt or truncated tar: {err}")))?;
            let path_bytes = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&path_bytes).into_owned();
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned());
            let kind = match entry.header().entry_type() {
                tar::EntryType::Directory => MemberKind::Directory,
                tar::EntryType::Symlink => MemberKind::Symlink,
                tar::EntryType::Link => MemberKind::HardLink {
                    target: link.as_deref().unwrap_or(""),
                },
                tar::EntryType::Regular | tar::EntryType::Continuous => MemberKind::File,
                _ => MemberKind::Other,
            };
            checker
                .check(&name, kind)
                .map_err(|err| invalid(err.to_string()))?;
            // Read the data so a truncated member is noticed here, not later.
            let expected_size = entry.size();
            let copied = io::copy(&mut entry, &mut io::sink())
                .map_err(|err| invalid(format!("corrupt or truncated tar at {name:?}: {err}")))?;
            if copied != expected_size {
                return Err(invalid(format!(
                    "truncated tar: member {name:?} has {copied} of its {expected_size} bytes"
                )));
            }
            n_members += 1;
        }
    }
    let mut rest = archive.into_inner();
    // The end-of-archive blocks and any padding after them are part of the layer's bytes.
    io::copy(&mut rest, &mut io::sink())
        .map_err(|err| invalid(format!("corrupt or truncated tar: {err}")))?;
    Ok((n_members, rest))
}

impl Store {
    /// Stores a tar stream (plain, gzip or zstd; detected) as a zstd layer blob after checking
    /// it is a well-formed tar whose members stay inside it. `what` names the input in errors.
    pub fn write_layer(&self, reader: &mut dyn Read, what: &str) -> Result<LayerInfo> {
        let (input_compression, decompressed) = compression::decompress(reader)
            .map_err(|err| StoreError::Invalid(format!("{what}: {err}")))?;
        let blob_writer = self.blob_writer()?;
        let compressed = DigestWriter::new(blob_writer);
        let encoder = compression::zstd_writer(compressed).map_err(StoreError::WriteBlob)?;
        let diff_writer = DigestWriter::new(encoder);
        let tee = Tee {
            reader: decompressed,
            writer: diff_writer,
        };
        let (n_members, tee) = validate_tar(tee, what)?;
        if n_members == 0 {
            return Err(StoreError::Invalid(format!("{what}: empty tar archive")));
        }
        let (diff_id, uncompressed_size, encoder) = tee.writer.finish();
        let compressed = encoder.finish().map_err(StoreError::WriteBlob)?;
        let (_, _, blob_writer) = compressed.finish();
        let blob = blob_writer.commit(None)?;
        Ok(LayerInfo {
            blob,
            diff_id,
            uncompressed_size,
            input_compression,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn check(input: &[u8]) -> Result<LayerInfo> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let result = store.write_layer(&mut &input[..], "test input");
        if let Ok(info) = &result {
            let blob = std::fs::read(store.blob_path(&info.blob.digest)).unwrap();
            assert_eq!(Digest::of_bytes(&blob), info.blob.digest);
            let plain = zstd::decode_all(&blob[..]).unwrap();
            assert_eq!(Digest::of_bytes(&plain), info.diff_id);
        } else {
            assert_eq!(std::fs::read_dir(store.blobs_dir()).unwrap().count(), 0);
        }
        result
    }

    #[test]
    fn diff_id_is_the_digest_of_the_input_tar() {
        let tar = tar_of(&[("a.txt", b"hello"), ("dir/b", b"world")]);
        let info = check(&tar).unwrap();
        assert_eq!(info.diff_id, Digest::of_bytes(&tar));
        assert_eq!(info.uncompressed_size, tar.len() as u64);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let from_gzip = check(&gz.finish().unwrap()).unwrap();
        assert_eq!(from_gzip.diff_id, info.diff_id);
        assert_eq!(from_gzip.blob.digest, info.blob.digest);
        assert_eq!(from_gzip.input_compression, Compression::Gzip);
    }

    #[test]
    fn refuses_truncated_and_empty() {
        let tar = tar_of(&[("a.txt", &[7u8; 3000])]);
        let err = check(&tar[..1500]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(check(b"").is_err());
    }
}
