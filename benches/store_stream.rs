//! Streams a large image through the store and reports time and peak memory of each command:
//! `kiln import` (tar -> zstd blob), `kiln save` (zstd -> uncompressed archive), `kiln load`
//! (archive -> store) and `kiln fsck`. Peak RSS comes from `/usr/bin/time -v` (Debian `time`).
//!
//! `cargo bench --bench store_stream` (size in MiB from KILN_BENCH_MIB, default 1024).

use std::io::{BufWriter, Read};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

struct Noise {
    state: u64,
    remaining: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = ((buf.len() as u64).min(self.remaining) as usize) / 8 * 8;
        let n = if n == 0 { self.remaining as usize } else { n };
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A rootfs tar of `size` bytes: half incompressible noise, half text-like repetition, so
/// zstd does real work on both kinds of data.
fn write_rootfs(path: &Path, size: u64) {
    let mut builder = tar::Builder::new(BufWriter::new(std::fs::File::create(path).unwrap()));
    let half = size / 2;
    let mut header = tar::Header::new_gnu();
    header.set_size(half);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    builder
        .append_data(
            &mut header,
            "noise",
            Noise {
                state: 0x9e3779b97f4a7c15,
                remaining: half,
            },
        )
        .unwrap();
    let line = b"kiln streams layers through sha256 and zstd without holding them\n";
    let text = line.iter().copied().cycle().take(half as usize);
    let mut reader = TextReader {
        iter: Box::new(text),
    };
    header.set_size(half);
    builder
        .append_data(&mut header, "text", &mut reader)
        .unwrap();
    builder
        .into_inner()
        .unwrap()
        .into_inner()
        .unwrap()
        .sync_all()
        .unwrap();
}

struct TextReader {
    iter: Box<dyn Iterator<Item = u8>>,
}

impl Read for TextReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        for slot in buf.iter_mut() {
            match self.iter.next() {
                Some(b) => {
                    *slot = b;
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }
}

fn measure(label: &str, root: &Path, args: &[&str], n_bytes: u64) {
    let start = Instant::now();
    let output = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("KILN_ROOT")
        .output()
        .expect("run /usr/bin/time (apt-get install time)");
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kiln {args:?} failed: {stderr}");
    let rss_kib: u64 = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("peak RSS in /usr/bin/time output");
    println!(
        "{label:<8} {:>8.2} s {:>8.1} MiB/s   peak RSS {:>7.1} MiB",
        elapsed.as_secs_f64(),
        n_bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64(),
        rss_kib as f64 / 1024.0
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let mib: u64 = std::env::var("KILN_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = mib << 20;
    let work =
        tempfile::tempdir_in(std::env::var("KILN_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap();
    let rootfs = work.path().join("rootfs.tar");
    write_rootfs(&rootfs, size);
    let first = work.path().join("first");
    let second = work.path().join("second");
    let archive = work.path().join("image.tar");
    let archive_arg = archive.to_str().unwrap();
    println!("image of {mib} MiB (half noise, half text)");
    measure(
        "import",
        &first,
        &["import", rootfs.to_str().unwrap(), "bench:1"],
        size,
    );
    std::fs::remove_file(&rootfs).unwrap();
    measure(
        "save",
        &first,
        &["save", "-o", archive_arg, "bench:1"],
        size,
    );
    measure("load", &second, &["load", "-i", archive_arg], size);
    measure("fsck", &second, &["fsck"], size);
}
