//! zstd layers made of independent frames ([`kiln::layer::frames`]): a commit that reuses the
//! previous blob's frames writes exactly the bytes a fresh commit of the same tree writes,
//! while it skips the unchanged leading segments (their files are not read) and copies the
//! later unchanged frames instead of compressing them; the zstd and tar command-line tools
//! read the multi-frame blob back to the tree; an index that does not fit is not used.

mod common;

use common::noise;
use kiln::digest::Digest;
use kiln::layer::{write_layer_frames, FrameIndex, FramedStream, Reuse, DEFAULT_ZSTD_LEVEL};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// 24 directories of 12 files (~7 MiB), a 9 MiB file (cut inside its content), a symlink,
/// an empty file and an executable: several segments of every kind.
fn make_tree(upper: &Path) {
    for d in 0..24u64 {
        let dir = upper.join(format!("app/d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..12u64 {
            let len = 8_000 + ((d * 12 + f) * 7_919 % 40_000) as usize;
            std::fs::write(dir.join(format!("f{f:02}.dat")), noise(d * 100 + f, len)).unwrap();
        }
    }
    std::fs::write(upper.join("app/big.bin"), noise(7, 9 << 20)).unwrap();
    std::os::unix::fs::symlink("d00/f00.dat", upper.join("app/link")).unwrap();
    std::fs::write(upper.join("app/empty"), b"").unwrap();
    let tool = upper.join("app/tool.sh");
    std::fs::write(&tool, b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Fixed mtimes: the tree's bytes must not depend on when the test ran.
    for entry in walkdir::WalkDir::new(upper) {
        let entry = entry.unwrap();
        let time = filetime_of(1_600_000_000);
        nix::sys::stat::utimensat(
            None,
            entry.path(),
            &time,
            &time,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

fn filetime_of(seconds: i64) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(seconds, 0)
}

/// The content digest of every regular file, by path relative to `upper` (what a COPY knows
/// from hashing its context).
fn digests(upper: &Path) -> HashMap<PathBuf, Digest> {
    walkdir::WalkDir::new(upper)
        .into_iter()
        .map(Result::unwrap)
        .filter(|entry| entry.file_type().is_file())
        .map(|entry| {
            let relative = entry.path().strip_prefix(upper).unwrap().to_path_buf();
            let bytes = std::fs::read(entry.path()).unwrap();
            (relative, Digest::of_bytes(&bytes))
        })
        .collect()
}

fn commit(upper: &Path, reuse: Option<&Reuse>) -> (Vec<u8>, FramedStream) {
    let mut blob = Vec::new();
    let stream = write_layer_frames(upper, &mut blob, DEFAULT_ZSTD_LEVEL, &[], reuse).unwrap();
    (blob, stream)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Changes one file in the middle of the tree (content and size).
fn change_middle_file(upper: &Path) {
    let path = upper.join("app/d12/f05.dat");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"one more line\n");
    std::fs::write(&path, bytes).unwrap();
    let time = filetime_of(1_600_000_000);
    nix::sys::stat::utimensat(
        None,
        &path,
        &time,
        &time,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

#[test]
fn a_commit_reusing_frames_writes_what_a_fresh_commit_writes() {
    let work = tempfile::tempdir().unwrap();
    let upper = work.path().join("upper");
    make_tree(&upper);
    let first_digests = digests(&upper);
    let (first_blob, first) = commit(
        &upper,
        Some(&Reuse {
            digests: first_digests,
            previous: None,
        }),
    );
    assert!(
        first.index.frames.len() >= 8,
        "{} frames",
        first.index.frames.len()
    );
    assert!(first.index.frames.iter().all(|frame| frame.key.is_some()));
    assert_eq!((first.n_skipped, first.n_copied), (0, 0));
    let previous_blob = work.path().join("previous.blob");
    std::fs::write(&previous_blob, &first_blob).unwrap();

    change_middle_file(&upper);
    let known = digests(&upper);
    let reuse = Reuse {
        digests: known.clone(),
        previous: Some((first.index.clone(), previous_blob.clone())),
    };
    let (reused_blob, reused) = commit(&upper, Some(&reuse));
    let (fresh_blob, fresh) = commit(
        &upper,
        Some(&Reuse {
            digests: known,
            previous: None,
        }),
    );
    let (bare_blob, bare) = commit(&upper, None);
    assert_eq!(bare.diff_id, fresh.diff_id);

    // The same bytes whichever way they were made.
    assert!(reused_blob == fresh_blob, "reuse changed the blob");
    assert!(bare_blob == fresh_blob, "digests changed the blob");
    assert_eq!(reused.diff_id, fresh.diff_id);
    assert_eq!(reused.uncompressed_size, fresh.uncompressed_size);
    assert_eq!(reused.index, fresh.index);
    assert_ne!(reused.diff_id, first.diff_id);

    // And most of it was not made again.
    let n_frames = reused.index.frames.len();
    assert!(
        reused.n_skipped >= 3,
        "skipped {} of {n_frames}",
        reused.n_skipped
    );
    assert!(
        reused.n_copied >= 3,
        "copied {} of {n_frames}",
        reused.n_copied
    );
    assert!(
        reused.n_skipped + reused.n_copied < n_frames,
        "the changed segment must be compressed"
    );
    assert!(
        reused.n_skipped + reused.n_copied + 3 >= n_frames,
        "skipped {} and copied {} of {n_frames}",
        reused.n_skipped,
        reused.n_copied
    );

    // Independent readers: the zstd CLI reads every frame, and the tar is the diff ID.
    common::require_program("zstd", "zstd");
    let blob_path = work.path().join("reused.tar.zst");
    std::fs::write(&blob_path, &reused_blob).unwrap();
    let tar = common::run_ok(Command::new("zstd").arg("-dc").arg(&blob_path)).stdout;
    assert_eq!(sha256(&tar), reused.diff_id.to_string());
    assert_eq!(tar.len() as u64, reused.uncompressed_size);
    let tar_path = work.path().join("layer.tar");
    std::fs::write(&tar_path, &tar).unwrap();
    let listing = common::run_ok(Command::new("tar").arg("-tvf").arg(&tar_path));
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert_eq!(listing.lines().count(), 1 + 24 + 24 * 12 + 4, "{listing}");
    assert!(listing.contains("app/d12/f05.dat"));
    assert!(listing.contains("app/link -> d00/f00.dat"));
    let extracted = work.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    common::run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar_path)
            .arg("-C")
            .arg(&extracted),
    );
    for (path, digest) in digests(&upper) {
        let bytes = std::fs::read(extracted.join(&path)).unwrap();
        assert_eq!(Digest::of_bytes(&bytes), digest, "{}", path.display());
    }
}

#[test]
fn an_index_that_does_not_fit_its_blob_is_not_used() {
    let work = tempfile::tempdir().unwrap();
    let upper = work.path().join("upper");
    make_tree(&upper);
    let known = digests(&upper);
    let (blob, first) = commit(
        &upper,
        Some(&Reuse {
            digests: known.clone(),
            previous: None,
        }),
    );
    let previous_blob = work.path().join("previous.blob");
    std::fs::write(&previous_blob, &blob).unwrap();
    let reuse_with = |index: FrameIndex, path: &Path| Reuse {
        digests: known.clone(),
        previous: Some((index, path.to_path_buf())),
    };

    // The same tree with its own index: every frame comes from the previous blob.
    let (same_blob, same) = commit(
        &upper,
        Some(&reuse_with(first.index.clone(), &previous_blob)),
    );
    assert!(same_blob == blob);
    assert_eq!(same.n_skipped, first.index.frames.len());

    // Another format (zstd version, level or cut rule): nothing is reused.
    let mut foreign = first.index.clone();
    foreign.format = "kiln-frames-0 zstd-0.0.0 level-1".into();
    let (foreign_blob, foreign_stream) = commit(&upper, Some(&reuse_with(foreign, &previous_blob)));
    assert!(foreign_blob == blob);
    assert_eq!((foreign_stream.n_skipped, foreign_stream.n_copied), (0, 0));

    // A damaged index (a hash state that is not one): nothing is reused.
    let mut damaged = first.index.clone();
    damaged.frames[2].tar_state = "not a state".into();
    let (damaged_blob, damaged_stream) = commit(&upper, Some(&reuse_with(damaged, &previous_blob)));
    assert!(damaged_blob == blob);
    assert_eq!((damaged_stream.n_skipped, damaged_stream.n_copied), (0, 0));

    // A blob that is not the one the index describes (another length): nothing is reused.
    let short_blob = work.path().join("short.blob");
    std::fs::write(&short_blob, &blob[..blob.len() - 1]).unwrap();
    let (short_out, short) = commit(&upper, Some(&reuse_with(first.index.clone(), &short_blob)));
    assert!(short_out == blob);
    assert_eq!((short.n_skipped, short.n_copied), (0, 0));

    // A missing blob: nothing is reused either.
    let missing = work.path().join("missing.blob");
    let (missing_out, missing_stream) =
        commit(&upper, Some(&reuse_with(first.index.clone(), &missing)));
    assert!(missing_out == blob);
    assert_eq!((missing_stream.n_skipped, missing_stream.n_copied), (0, 0));

    // Without digests no segment has a key: frames are compressed, the bytes are the same.
    let (no_keys_blob, no_keys) = commit(
        &upper,
        Some(&Reuse {
            digests: HashMap::new(),
            previous: Some((first.index.clone(), previous_blob.clone())),
        }),
    );
    assert!(no_keys_blob == blob);
    assert_eq!((no_keys.n_skipped, no_keys.n_copied), (0, 0));
    assert!(no_keys.index.frames.iter().all(|frame| frame.key.is_none()));
}
