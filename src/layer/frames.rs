//! zstd layer blobs made of independent frames, and the reuse of an earlier blob's frames.
//!
//! A zstd layer blob is a run of frames (RFC 8878 §3.1: a zstd stream may hold several
//! frames one after the other, and decoders read them as one stream), each the compression of
//! one *segment* of the tar on its own. Where a segment ends depends only on the entries around
//! that place, never on what came long before:
//! - before an entry whose name hashes to 0 mod [`CUT_ONE_IN`], once the segment holds
//!   [`MIN_SEGMENT`] bytes (or before any entry once it holds [`MAX_SEGMENT`]);
//! - inside a file's content, every [`PART`] bytes from the start of that content.
//!
//! A change in one file so moves the boundaries of its own segment (and at most the next
//! one), and the rest of the tar is cut as before. Segments are compressed one-shot
//! (single-threaded zstd) on a pool of workers: the bytes do not depend on the number of
//! cores, and all segments of a blob are compressed at the same level.
//!
//! Reuse. A segment's *key* is the sha256 of its tar bytes with every file's content replaced
//! by that content's digest. It is known without reading a file when the caller knows the
//! digest of every file in the segment (a COPY knows them from hashing the context). A
//! [`FrameIndex`], kept beside a committed blob by the caller, lists its frames: key, tar and
//! blob length, and the sha256 state of the tar stream where the frame starts. Committing again
//! with the previous blob and its index:
//! - the leading segments whose keys equal the previous blob's leading frames are neither read,
//!   compressed nor hashed as tar: their frames are copied from the previous blob, and the diff
//!   ID's hash resumes from the stored state after them;
//! - any later segment whose key equals one of the previous blob's frames is read and hashed
//!   (the diff ID covers it) but its frame is copied instead of compressed.
//!
//! Either way the blob is byte for byte what a commit without reuse writes: a copied frame is
//! the one the compressor makes of the same segment, and the index's format names the rule,
//! the zstd version and the level, so an index from another kiln is not used.
//!
//! Written here because no crate cuts a tar into content-defined zstd frames; and sha2 does not
//! export a hasher's state, so the tar's digest is computed over `sha2::compress256` (which
//! uses the CPU's SHA extensions where there are some) by [`TarHasher`].

use super::tar_format::{Member, TarWriter};
use super::LayerError;
use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};

/// A segment is cut before an entry only once it holds this many bytes...
pub const MIN_SEGMENT: u64 = 1 << 20;
/// ...and before any entry once it holds this many.
pub const MAX_SEGMENT: u64 = 8 << 20;
/// A file's content is cut every `PART` bytes from its start (a multiple of 512, so every
/// segment starts on a tar block boundary).
pub const PART: u64 = 4 << 20;
/// About one entry name in this many starts a segment (once it holds `MIN_SEGMENT`).
pub const CUT_ONE_IN: u64 = 16;

/// Segments in flight between the walker and the writer, at most: bounds the memory of a
/// commit (each segment is at most about `MAX_SEGMENT` plus one `PART`).
const IN_FLIGHT: usize = 6;

/// What a blob's frames were made with; an index with another format is not used.
pub fn format_name(level: i32) -> String {
    format!(
        "kiln-frames-1 zstd-{} level-{level}",
        zstd::zstd_safe::version_string()
    )
}

/// 64-bit FNV-1a: fixed forever, as it decides where frames end.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn cuts_before(name: &[u8]) -> bool {
    fnv1a(name) % CUT_ONE_IN == 0
}

/// The frames of one blob, as kept beside it for the next commit of the same step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameIndex {
    /// [`format_name`] of the commit that wrote the blob.
    pub format: String,
    pub frames: Vec<FrameNote>,
    /// The tar hash state after the last frame.
    pub end_state: String,
}

/// One frame of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameNote {
    /// The segment's key, when every file in it had a known digest.
    pub key: Option<String>,
    pub tar_len: u64,
    pub blob_len: u64,
    /// The tar hash state where the frame starts ([`TarHasher::state`]).
    pub tar_state: String,
}

/// What a commit may reuse: the digests of files in the upper directory (paths relative to it),
/// and the previous blob of the same step with its index.
#[derive(Debug, Default)]
pub struct Reuse {
    pub digests: HashMap<PathBuf, Digest>,
    pub previous: Option<(FrameIndex, PathBuf)>,
}

/// How a framed commit went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramedStream {
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    pub index: FrameIndex,
    /// Frames copied from the previous blob without reading their files (the leading ones).
    pub n_skipped: usize,
    /// Frames copied from the previous blob after reading and hashing their files.
    pub n_copied: usize,
}

const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// SHA-256 whose state can be saved at a 64-byte boundary and resumed from there.
#[derive(Clone)]
pub(crate) struct TarHasher {
    state: [u32; 8],
    len: u64,
    buf: [u8; 64],
    buf_len: usize,
}

impl TarHasher {
    pub(crate) fn new() -> Self {
        TarHasher {
            state: H0,
            len: 0,
            buf: [0; 64],
            buf_len: 0,
        }
    }

    /// The hasher that has seen `len` bytes (a multiple of 64) and stood at `state`.
    pub(crate) fn resume(state: &str, len: u64) -> Option<Self> {
        let bytes = hex::decode(state).ok()?;
        if bytes.len() != 32 || len % 64 != 0 {
            return None;
        }
        let mut words = [0u32; 8];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(4)) {
            *word = u32::from_be_bytes(chunk.try_into().expect("4 bytes"));
        }
        Some(TarHasher {
            state: words,
            len,
            buf: [0; 64],
            buf_len: 0,
        })
    }

    /// The state, when the bytes so far are a whole number of blocks.
    pub(crate) fn state(&self) -> Option<String> {
        if self.buf_len != 0 {
            return None;
        }
        let bytes: Vec<u8> = self.state.iter().flat_map(|w| w.to_be_bytes()).collect();
        Some(hex::encode(bytes))
    }

    fn blocks(&mut self, data: &[u8]) {
        use sha2::digest::generic_array::{typenum::U64, GenericArray};
        assert_eq!(data.len() % 64, 0, "whole blocks only");
        // SAFETY: `GenericArray<u8, U64>` is `repr(transparent)` over `[u8; 64]` (size 64,
        // alignment 1), and `data` holds exactly `data.len() / 64` such blocks.
        let blocks = unsafe {
            std::slice::from_raw_parts(
                data.as_ptr().cast::<GenericArray<u8, U64>>(),
                data.len() / 64,
            )
        };
        sha2::compress256(&mut self.state, blocks);
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.buf_len > 0 {
            let n = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + n].copy_from_slice(&data[..n]);
            self.buf_len += n;
            data = &data[n..];
            if self.buf_len < 64 {
                return;
            }
            let block = self.buf;
            self.blocks(&block);
            self.buf_len = 0;
        }
        let whole = data.len() / 64 * 64;
        if whole > 0 {
            self.blocks(&data[..whole]);
        }
        let rest = &data[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn finish(mut self) -> Digest {
        let bits = self.len.wrapping_mul(8);
        let mut tail = self.buf[..self.buf_len].to_vec();
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&bits.to_be_bytes());
        self.blocks(&tail);
        let mut raw = [0u8; 32];
        for (chunk, word) in raw.chunks_exact_mut(4).zip(self.state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        Digest::from_sha256(raw)
    }
}

/// A part of a segment: an entry's header, zeros, or a range of a file's content.
enum Piece {
    Header(Member),
    Zeros(usize),
    Content {
        path: PathBuf,
        offset: u64,
        len: u64,
        file_size: u64,
    },
}

/// A segment on its way from the walker to the workers.
enum Segment {
    /// One of the leading segments equal to the previous blob's: only its frame is copied.
    Skipped { seq: usize },
    Data {
        seq: usize,
        pieces: Vec<Piece>,
        len: u64,
        key: Option<String>,
        /// The frame of the previous blob with the same key (offset, length).
        copy: Option<(u64, u64)>,
    },
}

/// A segment ready to be written.
struct Done {
    seq: usize,
    /// `None` for a skipped segment.
    tar: Option<Vec<u8>>,
    frame: Frame,
    key: Option<String>,
}

/// A frame on its way to the blob: made here, or to be copied from the previous blob by the
/// frame writer (which reads it just before writing it, so frames to copy cost no memory
/// while they wait).
enum Frame {
    Made(Vec<u8>),
    Copy { offset: u64, len: u64 },
}

impl Frame {
    fn len(&self) -> u64 {
        match self {
            Frame::Made(bytes) => bytes.len() as u64,
            Frame::Copy { len, .. } => *len,
        }
    }
}

/// What the diff ID's hasher thread is given, in tar order.
enum HashJob {
    /// The hash state after the skipped leading segments (sent before any tar).
    Start(TarHasher),
    Tar(Vec<u8>),
}

/// Buffers handed back for reuse: fresh pages are slow to fault in, reused ones are not.
#[derive(Default)]
struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
            .unwrap_or_default()
    }
    fn put(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut pool = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if pool.len() < 2 * IN_FLIGHT {
            pool.push(buf);
        }
    }
}

/// The previous blob, checked against its index.
struct Previous<'a> {
    index: &'a FrameIndex,
    blob: File,
    /// The same file opened `O_DIRECT`, where the file system takes it: the blob was written
    /// around the page cache, and reading it through the cache would cost a fresh page-cache
    /// page per 4 KiB (more CPU than the copy saves on this kind of VM).
    direct: Option<File>,
    /// Blob offset of each frame.
    offsets: Vec<u64>,
    by_key: HashMap<&'a str, usize>,
}

/// Alignment of `O_DIRECT` reads: the page size covers any common device's logical block.
const ALIGN: u64 = 4096;

impl<'a> Previous<'a> {
    fn open(index: &'a FrameIndex, path: &Path, level: i32) -> Option<Self> {
        if index.format != format_name(level) {
            return None;
        }
        // A damaged index is not used: every state must be one the tar hash can resume from.
        let resumable = |state: &str| TarHasher::resume(state, 0).is_some();
        let frames_ok = index
            .frames
            .iter()
            .all(|frame| frame.tar_len % 512 == 0 && resumable(&frame.tar_state));
        if !frames_ok || !resumable(&index.end_state) {
            return None;
        }
        let blob = File::open(path).ok()?;
        let mut offsets = Vec::with_capacity(index.frames.len());
        let mut end = 0u64;
        let mut by_key = HashMap::new();
        for (at, frame) in index.frames.iter().enumerate() {
            offsets.push(end);
            end += frame.blob_len;
            if let Some(key) = &frame.key {
                by_key.entry(key.as_str()).or_insert(at);
            }
        }
        if blob.metadata().ok()?.len() != end {
            return None;
        }
        let direct = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Some(Previous {
            index,
            blob,
            direct,
            offsets,
            by_key,
        })
    }

    /// Reads `len` bytes at `offset` into `into`; returns where in `into` they start.
    fn read_range(&self, offset: u64, len: u64, into: &mut Vec<u8>) -> io::Result<usize> {
        if let Some(direct) = &self.direct {
            if let Ok(start) = read_aligned(direct, offset, len, into) {
                return Ok(start);
            }
        }
        into.resize(len as usize, 0);
        self.blob.read_exact_at(into, offset)?;
        Ok(0)
    }
}

/// An `O_DIRECT` read of the blocks around `offset..offset + len` into an aligned part of
/// `into`; returns where the range starts in `into`.
fn read_aligned(file: &File, offset: u64, len: u64, into: &mut Vec<u8>) -> io::Result<usize> {
    let first = offset / ALIGN * ALIGN;
    let end = (offset + len).div_ceil(ALIGN) * ALIGN;
    let span = (end - first) as usize;
    into.clear();
    into.reserve(span + ALIGN as usize);
    let address = into.as_ptr() as usize;
    let shift = (ALIGN as usize - address % ALIGN as usize) % ALIGN as usize;
    // The bytes before the aligned start are never read: zero them (less than a block).
    into.resize(shift, 0);
    let want = (offset + len - first) as usize;
    let mut got = 0usize;
    while got < want {
        // Whole blocks only; the last read may stop short at the end of the file.
        match pread_into(file, into, span - got, first + got as u64)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let start = shift + (offset - first) as usize;
    into.truncate(start + len as usize);
    Ok(start)
}

/// Receives the walker's entries and cuts them into segments.
pub(crate) struct FrameSink<'a> {
    pieces: Vec<Piece>,
    len: u64,
    /// The key of the segment so far; `None` once it holds a file of unknown content.
    key: Option<Sha256>,
    seq: usize,
    /// Whether every segment so far was skipped.
    skipping: bool,
    digests: Option<&'a HashMap<PathBuf, Digest>>,
    previous: Option<&'a Previous<'a>>,
    out: mpsc::SyncSender<Segment>,
    credits: mpsc::Receiver<()>,
}

fn stopped() -> LayerError {
    LayerError::WriteLayer(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the layer writer stopped",
    ))
}

impl FrameSink<'_> {
    fn push_zeros(&mut self, n: usize) {
        if let Some(key) = &mut self.key {
            key.update([0u8]);
            key.update((n as u64).to_be_bytes());
        }
        self.len += n as u64;
        self.pieces.push(Piece::Zeros(n));
    }

    fn entry_start(&mut self, name: &[u8]) -> Result<(), LayerError> {
        if self.len >= MIN_SEGMENT && (self.len >= MAX_SEGMENT || cuts_before(name)) {
            self.cut()?;
        }
        Ok(())
    }

    /// An entry's header. The key covers every field the header is made of (the header's
    /// bytes are a function of them, fixed by the format), not the 512-byte blocks
    /// themselves: a tenth of the hashing, and a skipped segment's headers are never made.
    pub(crate) fn header(&mut self, member: &Member) -> Result<(), LayerError> {
        self.entry_start(&member.name)?;
        let size = super::tar_format::header_size(member);
        if let Some(key) = &mut self.key {
            let field = |key: &mut Sha256, bytes: &[u8]| {
                key.update((bytes.len() as u64).to_be_bytes());
                key.update(bytes);
            };
            key.update([2u8]);
            field(key, &member.name);
            key.update([member.kind.as_byte()]);
            key.update(member.mode.to_be_bytes());
            key.update(member.uid.to_be_bytes());
            key.update(member.gid.to_be_bytes());
            key.update(member.mtime.to_be_bytes());
            key.update(member.size.to_be_bytes());
            field(key, member.link_name.as_deref().unwrap_or(b"\0none"));
            let (major, minor) = member.device.unwrap_or((u32::MAX, u32::MAX));
            key.update(major.to_be_bytes());
            key.update(minor.to_be_bytes());
            key.update((member.xattrs.len() as u64).to_be_bytes());
            for (name, value) in &member.xattrs {
                field(key, name);
                field(key, value);
            }
        }
        self.len += size;
        self.pieces.push(Piece::Header(member.clone()));
        Ok(())
    }

    /// A regular file's entry; its content is read (from `path`) only if its segment is not
    /// skipped.
    pub(crate) fn file(
        &mut self,
        member: &Member,
        path: &Path,
        relative: &Path,
    ) -> Result<(), LayerError> {
        self.header(member)?;
        let digest = self.digests.and_then(|digests| digests.get(relative));
        let size = member.size;
        let mut offset = 0;
        while offset < size {
            if offset > 0 {
                self.cut()?;
            }
            let len = (size - offset).min(PART);
            match (&mut self.key, digest) {
                (Some(key), Some(digest)) => {
                    key.update([1u8]);
                    key.update(digest.hex().as_bytes());
                    key.update(offset.to_be_bytes());
                    key.update(len.to_be_bytes());
                }
                _ => self.key = None,
            }
            self.pieces.push(Piece::Content {
                path: path.to_path_buf(),
                offset,
                len,
                file_size: size,
            });
            self.len += len;
            offset += len;
        }
        let padding = super::tar_format::padding(size);
        if padding > 0 {
            self.push_zeros(padding);
        }
        Ok(())
    }

    /// Ends the archive (two zero blocks) and its last segment.
    pub(crate) fn finish(mut self) -> Result<(), LayerError> {
        self.push_zeros(1024);
        self.cut()
    }

    fn cut(&mut self) -> Result<(), LayerError> {
        let seq = self.seq;
        self.seq += 1;
        let key = self
            .key
            .replace(Sha256::new())
            .map(|key| hex::encode(key.finalize()));
        let pieces = std::mem::take(&mut self.pieces);
        let len = std::mem::take(&mut self.len);
        let previous = self.previous;
        let same = |at: usize| {
            previous
                .and_then(|previous| previous.index.frames.get(at))
                .is_some_and(|frame| key.is_some() && frame.key == key && frame.tar_len == len)
        };
        if self.skipping && same(seq) {
            return self.send(Segment::Skipped { seq });
        }
        self.skipping = false;
        let copy = previous.and_then(|previous| {
            let at = *previous.by_key.get(key.as_deref()?)?;
            same(at).then(|| (previous.offsets[at], previous.index.frames[at].blob_len))
        });
        self.send(Segment::Data {
            seq,
            pieces,
            len,
            key,
            copy,
        })
    }

    fn send(&mut self, segment: Segment) -> Result<(), LayerError> {
        self.credits.recv().map_err(|_| stopped())?;
        self.out.send(segment).map_err(|_| stopped())
    }
}

/// The tar bytes of a segment, read from its files.
fn materialize(pieces: Vec<Piece>, len: u64, mut tar: Vec<u8>) -> Result<Vec<u8>, LayerError> {
    tar.clear();
    tar.reserve(len as usize);
    for piece in pieces {
        match piece {
            Piece::Header(member) => {
                let mut writer = TarWriter::new(tar);
                writer
                    .write_header(&member)
                    .map_err(LayerError::WriteLayer)?;
                tar = writer.into_inner();
            }
            Piece::Zeros(n) => tar.resize(tar.len() + n, 0),
            Piece::Content {
                path,
                offset,
                len,
                file_size,
            } => read_part(&mut tar, &path, offset, len, file_size)?,
        }
    }
    if tar.len() as u64 != len {
        return Err(LayerError::WriteLayer(io::Error::other(format!(
            "a tar segment holds {} bytes where {len} were counted",
            tar.len()
        ))));
    }
    Ok(tar)
}

/// `pread` into the spare capacity of `buf` (at least `len` bytes of it), which grows by what
/// was read: no zeroing of memory the read overwrites anyway.
fn pread_into(file: &File, buf: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    assert!(buf.capacity() - buf.len() >= len, "room for the read");
    loop {
        // SAFETY: the kernel writes at most `len` bytes at the pointer, all within the
        // vector's allocation (checked above); the length grows only by what it wrote.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(buf.len()).cast(),
                len,
                offset as libc::off_t,
            )
        };
        if n >= 0 {
            // SAFETY: those `n` bytes were just written by the kernel.
            unsafe { buf.set_len(buf.len() + n as usize) };
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Appends `len` bytes of `path` from `offset`; the file must still be `file_size` long.
fn read_part(
    tar: &mut Vec<u8>,
    path: &Path,
    offset: u64,
    len: u64,
    file_size: u64,
) -> Result<(), LayerError> {
    let read_err = |source| LayerError::ReadUpper {
        path: path.to_path_buf(),
        source,
    };
    // O_NOFOLLOW: the entry was a regular file when listed; never read through a symlink
    // that replaced it.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(read_err)?;
    tar.reserve(len as usize);
    let mut got = 0u64;
    while got < len {
        match pread_into(&file, tar, (len - got) as usize, offset + got).map_err(read_err)? {
            0 => {
                return Err(LayerError::FileChanged {
                    path: path.to_path_buf(),
                    expected: file_size,
                    actual: offset + got,
                })
            }
            n => got += n as u64,
        }
    }
    if offset + len == file_size {
        let mut probe = [0u8; 1];
        loop {
            match file.read_at(&mut probe, file_size) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(LayerError::FileChanged {
                        path: path.to_path_buf(),
                        expected: file_size,
                        actual: file_size + 1,
                    })
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(read_err(error)),
            }
        }
    }
    Ok(())
}

/// Reads a segment's files and compresses its frame, or notes which frame of the previous
/// blob it is.
fn make_frame(
    segment: Segment,
    level: i32,
    compressor: &mut Option<zstd::bulk::Compressor<'static>>,
    previous: Option<&Previous<'_>>,
    pool: &Pool,
) -> Result<Done, LayerError> {
    let write_err = LayerError::WriteLayer;
    match segment {
        Segment::Skipped { seq } => {
            let previous = previous.expect("skipped only with a previous blob");
            Ok(Done {
                seq,
                tar: None,
                frame: Frame::Copy {
                    offset: previous.offsets[seq],
                    len: previous.index.frames[seq].blob_len,
                },
                key: previous.index.frames[seq].key.clone(),
            })
        }
        Segment::Data {
            seq,
            pieces,
            len,
            key,
            copy,
        } => {
            let tar = materialize(pieces, len, pool.take())?;
            if let Some((offset, len)) = copy.filter(|_| previous.is_some()) {
                return Ok(Done {
                    seq,
                    tar: Some(tar),
                    frame: Frame::Copy { offset, len },
                    key,
                });
            }
            if compressor.is_none() {
                let mut fresh = zstd::bulk::Compressor::new(level).map_err(write_err)?;
                fresh.include_checksum(true).map_err(write_err)?;
                *compressor = Some(fresh);
            }
            let compressor = compressor.as_mut().expect("just made");
            // Into the vector's spare capacity: nothing is zeroed first.
            let mut frame = pool.take();
            frame.clear();
            frame.reserve(zstd::zstd_safe::compress_bound(tar.len()));
            compressor
                .compress_to_buffer(&tar, &mut frame)
                .map_err(write_err)?;
            Ok(Done {
                seq,
                tar: Some(tar),
                frame: Frame::Made(frame),
                key,
            })
        }
    }
}

/// Walks (with `walk`, which feeds the [`FrameSink`] it is given) and writes the framed blob
/// into `out`, reusing what `reuse` allows. `out` is flushed, not synced.
///
/// `tar_done` is called with the diff ID and the tar's size as soon as every segment is read
/// and hashed, which may be well before the frames are all written (frames copied from the
/// previous blob are read and written last): from then on nothing reads the walked tree.
pub(crate) fn write_frames<W: Write + Send>(
    out: W,
    level: i32,
    reuse: Option<&Reuse>,
    walk: impl FnOnce(&mut FrameSink<'_>) -> Result<(), LayerError> + Send,
    tar_done: impl FnOnce(&Digest, u64),
) -> Result<(W, FramedStream), LayerError> {
    let previous = reuse
        .and_then(|reuse| reuse.previous.as_ref())
        .and_then(|(index, blob)| Previous::open(index, blob, level));
    let previous = previous.as_ref();
    let digests = reuse.map(|reuse| &reuse.digests);
    let pool = Pool::default();
    // One more worker than cores: a worker often waits on a read of a file, and zstd's
    // one-shot mode never uses more than one core each.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
        + 1;
    let (to_workers, work) = mpsc::sync_channel::<Segment>(IN_FLIGHT);
    let work = Mutex::new(work);
    let (to_main, results) = mpsc::channel::<Result<Done, LayerError>>();
    let (give_credit, credits) = mpsc::channel::<()>();
    for _ in 0..IN_FLIGHT {
        give_credit.send(()).expect("receiver alive");
    }
    // Frames made here wait for the frame writer holding one of these; frames to copy do not.
    let (return_frame_credit, frame_credits) = mpsc::channel::<()>();
    for _ in 0..IN_FLIGHT {
        return_frame_credit.send(()).expect("receiver alive");
    }
    std::thread::scope(|scope| {
        let pool = &pool;
        let walker = scope.spawn(move || -> Result<(), LayerError> {
            let mut sink = FrameSink {
                pieces: Vec::new(),
                len: 0,
                key: Some(Sha256::new()),
                seq: 0,
                skipping: previous.is_some(),
                digests,
                previous,
                out: to_workers,
                credits,
            };
            walk(&mut sink)?;
            sink.finish()
        });
        for _ in 0..workers {
            let to_main = to_main.clone();
            let work = &work;
            scope.spawn(move || {
                let mut compressor = None;
                loop {
                    let segment = {
                        let work = work.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        work.recv()
                    };
                    let Ok(segment) = segment else { break };
                    let done = make_frame(segment, level, &mut compressor, previous, pool);
                    if to_main.send(done).is_err() {
                        break;
                    }
                }
            });
        }
        drop(to_main);

        // The diff ID is hashed on a thread of its own, beside the writing of the frames.
        let (to_hasher, hasher_inbox) = mpsc::sync_channel::<HashJob>(2);
        let hasher_thread = scope.spawn(move || -> (Option<TarHasher>, Vec<Option<String>>) {
            let mut hasher = None;
            let mut states = Vec::new();
            for job in hasher_inbox {
                match job {
                    HashJob::Start(start) => hasher = Some(start),
                    HashJob::Tar(tar) => {
                        let hasher: &mut TarHasher = hasher.get_or_insert_with(TarHasher::new);
                        states.push(hasher.state());
                        hasher.update(&tar);
                        pool.put(tar);
                    }
                }
            }
            (hasher, states)
        });
        // The frames go to the blob in order on a thread of their own too.
        let (to_frame_writer, frame_inbox) = mpsc::channel::<Frame>();
        let frame_writer = scope.spawn(move || -> Result<W, LayerError> {
            let mut out = out;
            let return_frame_credit = return_frame_credit;
            let mut copied = Vec::new();
            for frame in frame_inbox {
                match frame {
                    Frame::Made(bytes) => {
                        out.write_all(&bytes).map_err(LayerError::WriteLayer)?;
                        pool.put(bytes);
                        let _ = return_frame_credit.send(());
                    }
                    Frame::Copy { offset, len } => {
                        let previous = previous.expect("copies only with a previous blob");
                        let start = previous
                            .read_range(offset, len, &mut copied)
                            .map_err(|source| LayerError::ReadPrevious { source })?;
                        out.write_all(&copied[start..])
                            .map_err(LayerError::WriteLayer)?;
                    }
                }
            }
            out.flush().map_err(LayerError::WriteLayer)?;
            Ok(out)
        });

        let written = (|| -> Result<(Vec<FrameNote>, usize, usize, u64), LayerError> {
            let to_hasher = to_hasher;
            let to_frame_writer = to_frame_writer;
            let stopped = |what: &str| {
                LayerError::WriteLayer(io::Error::other(format!("the {what} stopped")))
            };
            let mut started = false;
            let mut notes = Vec::new();
            let (mut n_skipped, mut n_copied) = (0, 0);
            let mut tar_skipped = 0u64;
            let mut waiting: BTreeMap<usize, Done> = BTreeMap::new();
            for done in results.iter() {
                let done = done?;
                waiting.insert(done.seq, done);
                while let Some(done) = waiting.remove(&notes.len()) {
                    let Done {
                        seq,
                        tar,
                        frame,
                        key,
                    } = done;
                    let note = match tar {
                        None => {
                            let previous = previous.expect("skipped only with a previous blob");
                            n_skipped += 1;
                            tar_skipped += previous.index.frames[seq].tar_len;
                            previous.index.frames[seq].clone()
                        }
                        Some(tar) => {
                            if !started {
                                let start = resume(previous, n_skipped, tar_skipped)?;
                                to_hasher
                                    .send(HashJob::Start(start))
                                    .map_err(|_| stopped("diff ID hasher"))?;
                                started = true;
                            }
                            n_copied += usize::from(matches!(frame, Frame::Copy { .. }));
                            let note = FrameNote {
                                key,
                                tar_len: tar.len() as u64,
                                blob_len: frame.len(),
                                // Filled in from the hasher's states at the end.
                                tar_state: String::new(),
                            };
                            to_hasher
                                .send(HashJob::Tar(tar))
                                .map_err(|_| stopped("diff ID hasher"))?;
                            note
                        }
                    };
                    if matches!(frame, Frame::Made(_)) {
                        frame_credits.recv().map_err(|_| stopped("frame writer"))?;
                    }
                    to_frame_writer
                        .send(frame)
                        .map_err(|_| stopped("frame writer"))?;
                    notes.push(note);
                    let _ = give_credit.send(());
                }
            }
            Ok((notes, n_skipped, n_copied, tar_skipped))
        })();
        // On an error above, dropping these stops the walker (no more credits) and so the
        // workers (no more segments); the hasher and the frame writer end with their inboxes.
        drop(give_credit);
        drop(results);
        drop(frame_credits);
        let walked = walker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let (hashed, states) = hasher_thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let finish = || -> Result<(TarHasher, Vec<FrameNote>, usize, usize), LayerError> {
            let (mut frames, n_skipped, n_copied, tar_skipped) = match (written, walked) {
                (Err(error), _) | (Ok(_), Err(error)) => return Err(error),
                (Ok(written), Ok(())) => written,
            };
            let hasher = match hashed {
                Some(hasher) => hasher,
                None => resume(previous, n_skipped, tar_skipped)?,
            };
            for (note, state) in frames[n_skipped..].iter_mut().zip(states) {
                note.tar_state = state.ok_or_else(|| {
                    LayerError::WriteLayer(io::Error::other(
                        "a frame does not start on a tar block",
                    ))
                })?;
            }
            Ok((hasher, frames, n_skipped, n_copied))
        };
        let finished = finish();
        let (hasher, frames, n_skipped, n_copied) = match finished {
            Ok(finished) => finished,
            Err(error) => {
                // The frame writer's own error, if it has one, says more.
                let written = frame_writer
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                return Err(written.err().unwrap_or(error));
            }
        };
        let end_state = hasher.state().ok_or_else(|| {
            LayerError::WriteLayer(io::Error::other("the tar does not end on a block"))
        })?;
        let uncompressed_size = hasher.len();
        let diff_id = hasher.finish();
        tar_done(&diff_id, uncompressed_size);
        let out = frame_writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        Ok((
            out,
            FramedStream {
                diff_id,
                uncompressed_size,
                index: FrameIndex {
                    format: format_name(level),
                    frames,
                    end_state,
                },
                n_skipped,
                n_copied,
            },
        ))
    })
}

/// The tar hasher after the `n` skipped leading frames (`tar_len` bytes).
fn resume(
    previous: Option<&Previous<'_>>,
    n: usize,
    tar_len: u64,
) -> Result<TarHasher, LayerError> {
    let Some(previous) = previous.filter(|_| n > 0) else {
        return Ok(TarHasher::new());
    };
    let frames = &previous.index.frames;
    let state = frames
        .get(n)
        .map_or(&previous.index.end_state, |frame| &frame.tar_state);
    TarHasher::resume(state, tar_len).ok_or_else(|| LayerError::ReadPrevious {
        source: io::Error::other("the previous blob's index holds a bad hash state"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tar_hasher_is_sha256_and_resumes_from_a_block_boundary() {
        let data: Vec<u8> = (0..200_003u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for split in [0usize, 1, 63, 64, 65, 4096, 100_000, 200_003] {
            let mut hasher = TarHasher::new();
            hasher.update(&data[..split]);
            hasher.update(&data[split..]);
            assert_eq!(hasher.finish(), Digest::of_bytes(&data), "split at {split}");
        }
        let mut first = TarHasher::new();
        first.update(&data[..128_000]);
        let state = first.state().expect("a whole number of blocks");
        assert_eq!(
            TarHasher::new().state(),
            Some(hex::encode(
                H0.iter().flat_map(|w| w.to_be_bytes()).collect::<Vec<u8>>()
            ))
        );
        let mut resumed = TarHasher::resume(&state, 128_000).unwrap();
        resumed.update(&data[128_000..]);
        assert_eq!(resumed.finish(), Digest::of_bytes(&data));
        let mut partial = TarHasher::new();
        partial.update(&data[..100]);
        assert_eq!(partial.state(), None);
        assert!(TarHasher::resume(&state, 100).is_none());
        assert!(TarHasher::resume("zz", 64).is_none());
        assert_eq!(TarHasher::new().finish(), Digest::of_bytes(b""));
    }

    #[test]
    fn the_cut_rule_is_fixed() {
        // The rule decides frame boundaries, so layer bytes: FNV-1a's published test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        let n_cut = (0..1600)
            .filter(|i| cuts_before(format!("app/f{i:04}").as_bytes()))
            .count();
        assert!(
            (50..150).contains(&n_cut),
            "{n_cut} of 1600 names start a segment"
        );
    }
}
