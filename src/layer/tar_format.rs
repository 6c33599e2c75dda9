//! Deterministic tar framing for commit: ustar headers, PAX extended headers for what ustar
//! cannot hold (xattrs, long names and link targets, large ids, sizes and times), and file
//! content copied with large reads.
//!
//! Written over `tar::Header` (the field encoding) rather than `tar::Builder` because the
//! builder copies content through `io::copy`'s 8 KiB buffer behind a `dyn Write`, writes GNU
//! long-name entries where docker writes PAX records, and cannot check that a file still has
//! the size its header announced. Everything a header could vary on (uname, gname, atime,
//! ctime, header names of PAX entries) is fixed so the same tree gives the same bytes.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;
const MAX_OCTAL_7: u64 = 0o7777777;
const MAX_OCTAL_11: u64 = 0o77777777777;

/// Extended attributes as (name, value) pairs, sorted by name.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// One archive member, without its content.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// Relative name; directories end in `/`.
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub size: u64,
    pub link_name: Option<Vec<u8>>,
    pub device: Option<(u32, u32)>,
    pub xattrs: Xattrs,
}

pub(crate) struct TarWriter<W: Write> {
    out: W,
}

/// Where file content goes: a sink that reads it straight into its own memory, which saves
/// a copy of every byte over reading into a buffer and writing that.
pub(crate) trait ContentSink: Write {
    /// Reads at most `max` (> 0) bytes of `reader` into the sink, once; returns how many
    /// (0 at end of file), as `Read::read` does.
    fn fill_from<R: Read>(&mut self, reader: &mut R, max: usize) -> io::Result<usize>;
}

impl ContentSink for Vec<u8> {
    fn fill_from<R: Read>(&mut self, reader: &mut R, max: usize) -> io::Result<usize> {
        let start = self.len();
        self.resize(start + max.min(1 << 20), 0);
        let result = reader.read(&mut self[start..]);
        self.truncate(start + *result.as_ref().unwrap_or(&0));
        result
    }
}

/// The PAX records `member`'s header needs (what ustar cannot hold), sorted by key.
fn pax_records(member: &Member) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if ustar_split(&member.name).is_none() {
        records.push((b"path".to_vec(), member.name.clone()));
    }
    if let Some(link_name) = member.link_name.as_ref().filter(|link| link.len() > 100) {
        records.push((b"linkpath".to_vec(), link_name.clone()));
    }
    for (key, value) in [("uid", member.uid), ("gid", member.gid)] {
        if value > MAX_OCTAL_7 {
            records.push((key.as_bytes().to_vec(), value.to_string().into_bytes()));
        }
    }
    if member.mtime < 0 || member.mtime as u64 > MAX_OCTAL_11 {
        records.push((b"mtime".to_vec(), member.mtime.to_string().into_bytes()));
    }
    if member.size > MAX_OCTAL_11 {
        records.push((b"size".to_vec(), member.size.to_string().into_bytes()));
    }
    for (name, value) in &member.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        records.push((key, value.clone()));
    }
    records.sort();
    records
}

/// The bytes [`TarWriter::write_header`] writes for `member`, without making them.
pub(crate) fn header_size(member: &Member) -> u64 {
    let records = pax_records(member);
    if records.is_empty() {
        return BLOCK as u64;
    }
    let body: u64 = records
        .iter()
        .map(|(key, value)| pax_record(key, value).len() as u64)
        .sum();
    2 * BLOCK as u64 + body + padding(body) as u64
}

/// One `"<len> key=value\n"` PAX record; the length counts itself.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    let mut record = format!("{len} ").into_bytes();
    record.extend_from_slice(key);
    record.push(b'=');
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// Splits a name over ustar's prefix (155) and name (100) fields, if it fits.
fn ustar_split(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((b"", name));
    }
    // The split must be at a '/', the '/' itself is dropped.
    (1..name.len().min(156))
        .rev()
        .filter(|i| name[*i] == b'/')
        .map(|i| (&name[..i], &name[i + 1..]))
        .find(|(prefix, rest)| prefix.len() <= 155 && rest.len() <= 100 && !rest.is_empty())
}

pub(crate) fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        TarWriter { out }
    }

    /// Writes `member`'s header (and a PAX header before it when needed).
    pub(crate) fn write_header(&mut self, member: &Member) -> io::Result<()> {
        let mut header = tar::Header::new_ustar();
        match ustar_split(&member.name) {
            Some((prefix, name)) => {
                let ustar = header.as_ustar_mut().expect("ustar header");
                ustar.prefix[..prefix.len()].copy_from_slice(prefix);
                ustar.name[..name.len()].copy_from_slice(name);
            }
            None => {
                let ustar = header.as_ustar_mut().expect("ustar header");
                ustar.name.copy_from_slice(&member.name[..100]);
            }
        }
        if let Some(link_name) = &member.link_name {
            if link_name.len() <= 100 {
                header.as_ustar_mut().expect("ustar header").linkname[..link_name.len()]
                    .copy_from_slice(link_name);
            }
        }
        header.set_entry_type(member.kind);
        header.set_mode(member.mode & 0o7777);
        // Values ustar cannot hold are 0 here and given by a PAX record (`pax_records`).
        header.set_uid(if member.uid > MAX_OCTAL_7 {
            0
        } else {
            member.uid
        });
        header.set_gid(if member.gid > MAX_OCTAL_7 {
            0
        } else {
            member.gid
        });
        if member.mtime < 0 || member.mtime as u64 > MAX_OCTAL_11 {
            header.set_mtime(0);
        } else {
            header.set_mtime(member.mtime as u64);
        }
        header.set_size(member.size);
        if let Some((major, minor)) = member.device {
            header.set_device_major(major)?;
            header.set_device_minor(minor)?;
        }
        header.set_cksum();

        let records = pax_records(member);
        if !records.is_empty() {
            let body: Vec<u8> = records
                .iter()
                .flat_map(|(key, value)| pax_record(key, value))
                .collect();
            let mut pax = tar::Header::new_ustar();
            pax.as_ustar_mut().expect("ustar header").name[..9].copy_from_slice(b"PaxHeader");
            pax.set_entry_type(tar::EntryType::XHeader);
            pax.set_mode(0o644);
            pax.set_uid(0);
            pax.set_gid(0);
            pax.set_mtime(0);
            pax.set_size(body.len() as u64);
            pax.set_cksum();
            self.out.write_all(pax.as_bytes())?;
            self.out.write_all(&body)?;
            self.out
                .write_all(&[0u8; BLOCK][..padding(body.len() as u64)])?;
        }
        self.out.write_all(header.as_bytes())
    }

    /// Copies exactly `size` bytes of content from `reader` and pads to a block. Returns the
    /// number of bytes the reader actually had if it differs from `size`.
    pub(crate) fn write_content(
        &mut self,
        reader: &mut impl Read,
        size: u64,
    ) -> io::Result<Result<(), u64>>
    where
        W: ContentSink,
    {
        let mut copied: u64 = 0;
        while copied < size {
            let want = (size - copied).min(1 << 30) as usize;
            let n = match self.out.fill_from(reader, want) {
                Ok(0) => return Ok(Err(copied)),
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            copied += n as u64;
        }
        // The file must end where its header said.
        let mut probe = [0u8; 1];
        loop {
            match reader.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => return Ok(Err(size + 1)),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
        self.out.write_all(&[0u8; BLOCK][..padding(size)])?;
        Ok(Ok(()))
    }

    /// The writer, without ending the archive.
    pub(crate) fn into_inner(self) -> W {
        self.out
    }

    /// Writes the two zero blocks that end an archive and returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str) -> Member {
        Member {
            name: name.as_bytes().to_vec(),
            kind: tar::EntryType::Regular,
            mode: 0o4755,
            uid: 1000,
            gid: 3_000_000,
            mtime: 1_700_000_000,
            size: 3,
            link_name: None,
            device: None,
            xattrs: vec![(b"user.a".to_vec(), b"\x00\xffbinary".to_vec())],
        }
    }

    fn check(member: Member) {
        let mut writer = TarWriter::new(Vec::new());
        writer.write_header(&member).unwrap();
        let status = writer.write_content(&mut &b"abc"[..], 3).unwrap();
        assert_eq!(status, Ok(()));
        let bytes = writer.finish().unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path_bytes().as_ref(), &member.name[..]);
        assert_eq!(entry.header().mode().unwrap(), 0o4755);
        assert_eq!(entry.header().uid().unwrap(), 1000);
        assert_eq!(entry.header().gid().unwrap(), 3_000_000);
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = entry
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.key_bytes().starts_with(b"SCHILY.xattr."))
            .map(|e| (e.key_bytes()[13..].to_vec(), e.value_bytes().to_vec()))
            .collect();
        assert_eq!(xattrs, member.xattrs);
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
        assert_eq!(content, b"abc");
        assert!(entries.next().is_none());
    }

    #[test]
    fn round_trips_through_the_tar_crate() {
        check(member("short"));
        check(member(&format!("{}/{}", "d".repeat(120), "f".repeat(90))));
        check(member(&"x".repeat(300)));
    }

    #[test]
    fn reports_a_file_that_changed_size() {
        let mut writer = TarWriter::new(Vec::new());
        assert_eq!(writer.write_content(&mut &b"ab"[..], 3).unwrap(), Err(2));
        assert_eq!(writer.write_content(&mut &b"abcd"[..], 3).unwrap(), Err(4));
    }

    #[test]
    fn header_size_is_what_write_header_writes() {
        let long = "d/".repeat(120) + "f";
        let mut members = vec![member("plain"), member(&long)];
        let mut big = member("big");
        big.uid = 1 << 40;
        big.mtime = -5;
        big.size = 1 << 40;
        big.link_name = Some(vec![b'l'; 150]);
        big.xattrs = vec![(b"user.x".to_vec(), vec![7u8; 600])];
        members.push(big);
        let mut bare = member("bare");
        bare.xattrs.clear();
        members.push(bare);
        for member in members {
            let mut writer = TarWriter::new(Vec::new());
            writer.write_header(&member).unwrap();
            let written = writer.into_inner().len() as u64;
            assert_eq!(header_size(&member), written, "{:?}", member.name);
        }
    }

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record(b"path", b"a"), b"9 path=a\n");
        assert_eq!(pax_record(b"path", b"abcdef"), b"15 path=abcdef\n");
        let record = pax_record(b"k", &[b'v'; 95]);
        assert_eq!(record.len(), 102);
        assert!(record.starts_with(b"102 k="));
    }
}
