//! The context stat cache: `(absolute path, size, mtime_ns, ctime_ns, inode) -> sha256`, kept
//! in one file the caller names, so a rebuild does not read unchanged files again.
//!
//! The file is binary (paths may hold any byte but NUL): the magic line
//! `kiln-statcache-v1\n`, then records of `u32 path length, path bytes, u64 size, i64 mtime_ns,
//! i64 ctime_ns, u64 inode, 32 digest bytes`, all little-endian. It is replaced whole (temp
//! file in the same directory, fsync, rename), so readers never see half a file. A file that
//! does not parse is ignored (the cache starts empty) rather than failing the build: it only
//! ever saves work. Several contexts can share one file; saving replaces only the records
//! below the scanned context root.
//!
//! This module knows nothing about ignore patterns, COPY, or what the digests are used for.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::ContextError;

const MAGIC: &[u8] = b"kiln-statcache-v1\n";

/// What must be unchanged for a recorded digest to be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    stamp: FileStamp,
    sha256: [u8; 32],
}

/// A loaded stat cache.
#[derive(Debug, Default)]
pub struct StatCache {
    records: HashMap<Vec<u8>, Record>,
    /// The file existed but did not parse, and was ignored.
    pub discarded: bool,
}

impl StatCache {
    /// Loads `path`; a missing file gives an empty cache.
    pub fn load(path: &Path) -> Result<StatCache, ContextError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StatCache::default())
            }
            Err(source) => {
                return Err(ContextError::LoadStatCache {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(match parse(&bytes) {
            Some(records) => StatCache {
                records,
                discarded: false,
            },
            None => StatCache {
                records: HashMap::new(),
                discarded: true,
            },
        })
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The recorded sha256 of `file` if its stamp is unchanged.
    pub fn lookup(&self, file: &Path, stamp: &FileStamp) -> Option<[u8; 32]> {
        self.records
            .get(file.as_os_str().as_bytes())
            .filter(|record| record.stamp == *stamp)
            .map(|record| record.sha256)
    }

    /// How many records lie below `root`.
    pub fn count_below(&self, root: &Path) -> usize {
        let prefix = dir_prefix(root);
        self.records
            .keys()
            .filter(|key| key.starts_with(&prefix))
            .count()
    }

    /// Replaces every record below `root` with `fresh` (absolute paths).
    pub fn replace_below(
        &mut self,
        root: &Path,
        fresh: impl IntoIterator<Item = (PathBuf, FileStamp, [u8; 32])>,
    ) {
        let prefix = dir_prefix(root);
        self.records.retain(|key, _| !key.starts_with(&prefix));
        for (path, stamp, sha256) in fresh {
            self.records.insert(
                path.as_os_str().as_bytes().to_vec(),
                Record { stamp, sha256 },
            );
        }
    }

    /// Writes the cache to `path` atomically (temp file + fsync + rename).
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let error = |source| ContextError::SaveStatCache {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(error)?;
        let temp = tempfile::NamedTempFile::new_in(dir).map_err(error)?;
        {
            let mut out = BufWriter::new(temp.as_file());
            out.write_all(MAGIC).map_err(error)?;
            let mut keys: Vec<&Vec<u8>> = self.records.keys().collect();
            keys.sort();
            for key in keys {
                let record = &self.records[key];
                out.write_all(&(key.len() as u32).to_le_bytes())
                    .map_err(error)?;
                out.write_all(key).map_err(error)?;
                out.write_all(&record.stamp.size.to_le_bytes())
                    .map_err(error)?;
                out.write_all(&record.stamp.mtime_ns.to_le_bytes())
                    .map_err(error)?;
                out.write_all(&record.stamp.ctime_ns.to_le_bytes())
                    .map_err(error)?;
                out.write_all(&record.stamp.inode.to_le_bytes())
                    .map_err(error)?;
                out.write_all(&record.sha256).map_err(error)?;
            }
            out.flush().map_err(error)?;
        }
        temp.as_file().sync_all().map_err(error)?;
        temp.persist(path).map_err(|e| error(e.error))?;
        Ok(())
    }
}

fn dir_prefix(root: &Path) -> Vec<u8> {
    let mut prefix = root.as_os_str().as_bytes().to_vec();
    if prefix.last() != Some(&b'/') {
        prefix.push(b'/');
    }
    prefix
}

fn parse(bytes: &[u8]) -> Option<HashMap<Vec<u8>, Record>> {
    let mut rest = bytes.strip_prefix(MAGIC)?;
    let mut records = HashMap::new();
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if rest.len() < n {
            return None;
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Some(head)
    }
    fn u64_of(bytes: &[u8]) -> u64 {
        u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    }
    while !rest.is_empty() {
        let len = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
        let key = take(&mut rest, len)?.to_vec();
        let fixed = take(&mut rest, 8 * 4 + 32)?;
        let stamp = FileStamp {
            size: u64_of(&fixed[0..8]),
            mtime_ns: u64_of(&fixed[8..16]) as i64,
            ctime_ns: u64_of(&fixed[16..24]) as i64,
            inode: u64_of(&fixed[24..32]),
        };
        let sha256: [u8; 32] = fixed[32..].try_into().ok()?;
        records.insert(key, Record { stamp, sha256 });
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces_only_below_root() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/cache");
        let stamp = FileStamp {
            size: 3,
            mtime_ns: -5,
            ctime_ns: 7,
            inode: 9,
        };
        let mut cache = StatCache::load(&file).unwrap();
        assert!(cache.is_empty());
        cache.replace_below(
            Path::new("/ctx"),
            [(PathBuf::from("/ctx/a"), stamp, [1; 32])],
        );
        cache.replace_below(
            Path::new("/other"),
            [(PathBuf::from("/other/b"), stamp, [2; 32])],
        );
        cache.save(&file).unwrap();
        let mut loaded = StatCache::load(&file).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded.lookup(Path::new("/ctx/a"), &stamp), Some([1; 32]));
        let changed = FileStamp { inode: 10, ..stamp };
        assert_eq!(loaded.lookup(Path::new("/ctx/a"), &changed), None);
        assert_eq!(loaded.count_below(Path::new("/ctx")), 1);
        loaded.replace_below(Path::new("/ctx"), []);
        assert_eq!(loaded.lookup(Path::new("/other/b"), &stamp), Some([2; 32]));
        assert_eq!(loaded.len(), 1);
    }

    #[test]
    fn garbage_is_discarded_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cache");
        std::fs::write(&file, b"kiln-statcache-v1\n\x05\x00").unwrap();
        let cache = StatCache::load(&file).unwrap();
        assert!(cache.discarded);
        assert!(cache.is_empty());
    }
}
