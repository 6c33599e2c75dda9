//! Parallel gzip for `kiln push --compression gzip`: one gzip member (RFC 1952) whose deflate
//! stream is cut into fixed-size chunks compressed on several threads at once, as pigz does.
//!
//! Each chunk but the last is compressed on its own and ends with a sync flush (an empty
//! stored block, byte-aligned, not final), so the chunks concatenate into one valid deflate
//! stream; the last ends the stream. The CRC-32 of the whole input is computed once, in order,
//! by the reading thread. Output depends on the level and [`CHUNK_BYTES`] only, never on the
//! thread count, so the same layer always gives the same digest. At most `2 × threads` chunks
//! are in flight, so memory stays flat whatever the layer size.
//!
//! Written here (about a hundred lines over `flate2::Compress`) rather than taken from `gzp`:
//! that crate brings its own thread and channel stack for what `std::thread::scope` and two
//! bounded channels do, and it would still need flate2 underneath.
//!
//! Knows bytes only: no store, no registry.

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

/// Uncompressed bytes per chunk: large enough that the lost cross-chunk matches cost little
/// (under 0.1% on layer tars), small enough that every thread gets work on a small layer.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The gzip header kiln writes: no name, mtime 0, OS "unknown" (as Go's gzip writer).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// One chunk to compress: its position, its bytes, and whether it ends the stream.
struct Chunk {
    index: usize,
    bytes: Vec<u8>,
    last: bool,
}

/// What `gzip` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GzipSummary {
    /// Bytes read from the input.
    pub n_input: u64,
    /// Bytes written (header and trailer included).
    pub n_output: u64,
}

/// Compresses everything `reader` yields into `writer` as one gzip member at `level` (0-9),
/// `n_threads` chunks at a time. Returns the writer (not flushed) and the byte counts.
pub fn gzip<R, W>(
    reader: R,
    writer: W,
    level: u32,
    n_threads: usize,
) -> io::Result<(W, GzipSummary)>
where
    R: Read,
    W: Write + Send,
{
    let n_threads = n_threads.max(1);
    let level = Compression::new(level.min(9));
    let (work_sender, work_receiver) = sync_channel::<Chunk>(n_threads * 2);
    let (done_sender, done_receiver) = sync_channel::<(usize, io::Result<Vec<u8>>)>(n_threads * 2);
    // Shared by the workers only: when the last one stops (the writer failed), the receiver
    // goes and the reader's next send fails instead of blocking.
    let work_receiver = Arc::new(Mutex::new(work_receiver));
    std::thread::scope(|scope| {
        for _ in 0..n_threads {
            let done_sender = done_sender.clone();
            let work_receiver = Arc::clone(&work_receiver);
            scope.spawn(move || compress_chunks(&work_receiver, done_sender, level));
        }
        drop(work_receiver);
        drop(done_sender);
        let writing = scope.spawn(move || {
            let mut writer = writer;
            let written = write_in_order(&mut writer, done_receiver);
            (writer, written)
        });
        // The input is read on this thread (a decompressing reader need not be `Send`).
        let read = read_chunks(reader, work_sender);
        let (mut writer, written) = writing
            .join()
            .map_err(|_| io::Error::other("the gzip writer thread panicked"))?;
        // A write error stops the reader early: report the write error first.
        let n_compressed = written?;
        let (crc, n_input) = read?;
        writer.write_all(&crc.to_le_bytes())?;
        // ISIZE is the input size modulo 2^32 (RFC 1952).
        writer.write_all(&(n_input as u32).to_le_bytes())?;
        Ok((
            writer,
            GzipSummary {
                n_input,
                n_output: n_compressed + 8,
            },
        ))
    })
}

/// Reads `reader` in [`CHUNK_BYTES`] chunks, one ahead so the last is marked; returns the
/// CRC-32 and the length of everything read.
fn read_chunks<R: Read>(
    mut reader: R,
    sender: std::sync::mpsc::SyncSender<Chunk>,
) -> io::Result<(u32, u64)> {
    let mut crc = Crc::new();
    let mut n_bytes = 0u64;
    let mut pending = read_full(&mut reader)?;
    let mut index = 0;
    loop {
        crc.update(&pending);
        n_bytes += pending.len() as u64;
        // A short chunk means the input ended; a full one may be followed by nothing.
        let next = if pending.len() < CHUNK_BYTES {
            Vec::new()
        } else {
            read_full(&mut reader)?
        };
        let last = next.is_empty();
        let chunk = Chunk {
            index,
            bytes: std::mem::replace(&mut pending, next),
            last,
        };
        if sender.send(chunk).is_err() {
            // The writer gave up (its error is the one reported).
            return Ok((crc.sum(), n_bytes));
        }
        if last {
            return Ok((crc.sum(), n_bytes));
        }
        index += 1;
    }
}

/// Up to [`CHUNK_BYTES`] from `reader`; fewer only at the end of the input.
fn read_full<R: Read>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut chunk = Vec::with_capacity(CHUNK_BYTES);
    reader
        .by_ref()
        .take(CHUNK_BYTES as u64)
        .read_to_end(&mut chunk)?;
    Ok(chunk)
}

fn compress_chunks(
    receiver: &Mutex<Receiver<Chunk>>,
    sender: std::sync::mpsc::SyncSender<(usize, io::Result<Vec<u8>>)>,
    level: Compression,
) {
    loop {
        let chunk = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(chunk) = chunk else { return };
        let result = deflate_chunk(&chunk.bytes, level, chunk.last);
        if sender.send((chunk.index, result)).is_err() {
            return;
        }
    }
}

/// Bytes of each sample [`incompressible`] tries, and how many samples it takes per chunk.
const SAMPLE_BYTES: usize = 8 * 1024;
const N_SAMPLES: usize = 4;

/// True when samples spread over `input` do not shrink at the fastest level: compressed data,
/// random bytes. Such a chunk is stored as it is (deflate's stored blocks) instead of being
/// searched for matches that are not there, which is most of the time a gzip of an already
/// compressed layer would take (klauspost/compress, which Buildah uses, skips such data too).
/// Samples decide, so a chunk holding a single compressible sample is compressed normally.
fn incompressible(input: &[u8]) -> bool {
    if input.len() < N_SAMPLES * SAMPLE_BYTES {
        return false;
    }
    let step = input.len() / N_SAMPLES;
    (0..N_SAMPLES).all(|i| {
        let sample = &input[i * step..i * step + SAMPLE_BYTES];
        let mut compress = Compress::new(Compression::fast(), false);
        let mut out = Vec::with_capacity(SAMPLE_BYTES * 2);
        match compress.compress_vec(sample, &mut out, FlushCompress::Finish) {
            // Under 2% saved is not worth the search.
            Ok(Status::StreamEnd) => out.len() * 50 >= SAMPLE_BYTES * 49,
            _ => false,
        }
    })
}

/// Raw deflate of one chunk: sync-flushed (not final) unless it is the last.
fn deflate_chunk(input: &[u8], level: Compression, last: bool) -> io::Result<Vec<u8>> {
    let level = if incompressible(input) {
        Compression::none()
    } else {
        level
    };
    let mut compress = Compress::new(level, false);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(input.len() + input.len() / 64 + 1024);
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let consumed = compress.total_in() as usize;
        let status = compress
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = compress.total_in() as usize == input.len();
        match status {
            Status::StreamEnd => return Ok(out),
            // A sync flush is complete once all input is in and output space is left over.
            Status::Ok | Status::BufError if !last && all_in && out.len() < out.capacity() => {
                return Ok(out)
            }
            Status::Ok | Status::BufError => {}
        }
    }
}

/// Writes the header, then each compressed chunk in input order; returns the bytes written.
fn write_in_order<W: Write>(
    writer: &mut W,
    receiver: Receiver<(usize, io::Result<Vec<u8>>)>,
) -> io::Result<u64> {
    writer.write_all(&HEADER)?;
    let mut n_written = HEADER.len() as u64;
    let mut next = 0usize;
    let mut waiting: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    for (index, result) in receiver {
        waiting.insert(index, result?);
        while let Some(bytes) = waiting.remove(&next) {
            writer.write_all(&bytes)?;
            n_written += bytes.len() as u64;
            next += 1;
        }
    }
    if !waiting.is_empty() {
        return Err(io::Error::other("gzip: a compressed chunk went missing"));
    }
    Ok(n_written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compresses `input` with `n_threads` and checks a standard decoder gets it back.
    fn check(input: &[u8], n_threads: usize) -> Vec<u8> {
        let (out, summary) = gzip(input, Vec::new(), 6, n_threads).unwrap();
        assert_eq!(summary.n_input, input.len() as u64);
        assert_eq!(summary.n_output, out.len() as u64);
        // Single-member decoding: the whole stream must be one member.
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, input);
        out
    }

    fn mixed(n_bytes: usize) -> Vec<u8> {
        let mut state = 0x2545f4914f6cdd1du64;
        (0..n_bytes)
            .map(|i| {
                if (i / 300_000) % 2 == 0 {
                    (i % 251) as u8
                } else {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                }
            })
            .collect()
    }

    #[test]
    fn round_trips_at_every_size_around_the_chunk_boundary() {
        for n_bytes in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES + 12345,
        ] {
            check(&mixed(n_bytes), 3);
        }
    }

    #[test]
    fn output_does_not_depend_on_the_thread_count() {
        let input = mixed(4 * CHUNK_BYTES + 777);
        assert_eq!(check(&input, 1), check(&input, 4));
    }

    #[test]
    fn random_chunks_are_stored_and_compressible_ones_compressed() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let random: Vec<u8> = (0..CHUNK_BYTES)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        assert!(incompressible(&random));
        assert!(!incompressible(&vec![0u8; CHUNK_BYTES]));
        // Random data with one compressible quarter is still compressed.
        let mut partly = random.clone();
        partly[CHUNK_BYTES / 4..CHUNK_BYTES / 2].fill(0);
        assert!(!incompressible(&partly));
        // Stored: barely larger than the input; still one valid stream.
        let out = check(&[random.clone(), vec![0u8; CHUNK_BYTES]].concat(), 2);
        assert!(out.len() < CHUNK_BYTES + CHUNK_BYTES / 100, "{}", out.len());
    }

    #[test]
    fn a_read_error_is_reported() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                buf[..n].fill(7);
                Ok(n)
            }
        }
        let err = gzip(Failing(3 * CHUNK_BYTES / 2), Vec::new(), 6, 2).unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
    }
}
