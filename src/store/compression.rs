//! Layer compression: detection by magic bytes (never trusting a media type or file name),
//! a decompressing reader for plain/gzip/zstd, a zstd compressing writer, and the mapping
//! between layer media types and compressions.

use std::io::{self, BufReader, Read, Write};

/// How a stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const BZIP2_MAGIC: &[u8] = b"BZh";

/// More zstd workers add memory (each holds its job's buffers) for little gain on layer-sized
/// inputs; this keeps a commit's memory bounded on big machines.
const MAX_ZSTD_WORKERS: u32 = 4;

/// zstd level kiln writes layers at: level 3 is zstd's default, a good speed/size balance.
pub const ZSTD_LEVEL: i32 = 3;

impl Compression {
    /// Detects the compression from the first bytes of a stream. xz and bzip2 are recognised
    /// only to be refused with a clear message.
    pub fn detect(head: &[u8]) -> io::Result<Compression> {
        if head.starts_with(GZIP_MAGIC) {
            Ok(Compression::Gzip)
        } else if head.starts_with(ZSTD_MAGIC) {
            Ok(Compression::Zstd)
        } else if head.starts_with(XZ_MAGIC) {
            Err(unsupported("xz"))
        } else if head.starts_with(BZIP2_MAGIC) && head.len() > 3 && head[3].is_ascii_digit() {
            Err(unsupported("bzip2"))
        } else {
            Ok(Compression::None)
        }
    }

    /// The OCI layer media type for a tar in this compression.
    pub fn oci_layer_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The compression a layer media type declares; `None` for an unknown media type.
    pub fn from_layer_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

fn unsupported(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{name} compression is not supported (use plain tar, gzip or zstd)"),
    )
}

/// Wraps `reader` in a decompressor chosen by its magic bytes and reports which it was.
pub fn decompress<'a, R: Read + 'a>(
    mut reader: R,
) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    // Peek by reading the first bytes (a pipe may hand them over in pieces) and putting them
    // back in front of the stream.
    let mut head = Vec::with_capacity(6);
    while head.len() < 6 {
        let mut buf = [0u8; 6];
        let got = match reader.read(&mut buf[..6 - head.len()]) {
            Ok(got) => got,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if got == 0 {
            break;
        }
        head.extend_from_slice(&buf[..got]);
    }
    let compression = Compression::detect(&head)?;
    let buffered = BufReader::with_capacity(1 << 16, io::Cursor::new(head).chain(reader));
    let reader: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
    };
    Ok((compression, reader))
}

/// A zstd compressing writer at kiln's level, multi-threaded. zstd's output with one or more
/// workers does not depend on the worker count, so layer digests are reproducible across
/// machines.
pub fn zstd_writer<W: Write>(inner: W) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut encoder = zstd::stream::write::Encoder::new(inner, ZSTD_LEVEL)?;
    let n_workers = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
        .clamp(1, MAX_ZSTD_WORKERS);
    encoder.multithread(n_workers)?;
    Ok(encoder)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(compressed: Vec<u8>, expect: Compression, plain: &[u8]) {
        let (found, mut reader) = decompress(&compressed[..]).unwrap();
        assert_eq!(found, expect);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(out, plain);
    }

    #[test]
    fn detects_and_decompresses_each_kind() {
        let plain = b"hello tar world".repeat(100);
        check(plain.clone(), Compression::None, &plain);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        check(gz.finish().unwrap(), Compression::Gzip, &plain);
        let mut zst = zstd_writer(Vec::new()).unwrap();
        zst.write_all(&plain).unwrap();
        check(zst.finish().unwrap(), Compression::Zstd, &plain);
        check(Vec::new(), Compression::None, b"");
        check(b"ab".to_vec(), Compression::None, b"ab");
    }

    #[test]
    fn refuses_xz() {
        let err = decompress(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2][..])
            .err()
            .unwrap();
        assert!(err.to_string().contains("xz"), "{err}");
    }

    #[test]
    fn media_types_round_trip() {
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(
                Compression::from_layer_media_type(compression.oci_layer_media_type()),
                Some(compression)
            );
        }
        assert_eq!(Compression::from_layer_media_type("text/plain"), None);
    }
}
