//! Issue 5 (bench case big-context): a COPY whose previous run left a snapshot hard-links the
//! files that did not change from that snapshot instead of copying them again, and copies the
//! unchanged frames of that run's layer blob; the layer it commits is still exactly what a copy
//! from scratch gives, byte for byte. Directories and symlinks keep their mtimes, so a COPY of
//! the same tree is the same layer whenever it is built.

mod common;

use common::build::{build, context, flatten, image, read, store_with_base};
use common::{kiln, noise, run_ok};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const DOCKERFILE: &str = "FROM base:1\nCOPY . /app/\nRUN cat /app/a.txt /app/d/c.txt > /seen\n";

/// The snapshot of `name`'s COPY layer (the one before the last).
fn copy_snapshot(root: &Path, name: &str) -> PathBuf {
    let store = kiln::store::Store::open(root).unwrap();
    let chains = image(root, name).chain_ids().unwrap();
    store.snapshot_path(&chains[chains.len() - 2])
}

/// The entries of `name`'s COPY layer: (path, kind, mode, uid, gid, mtime of regular files
/// (directories and symlinks get the time of the copy), link name, content).
type Entry = (String, u8, u32, u64, u64, u64, String, Vec<u8>);

fn copy_layer(root: &Path, name: &str) -> Vec<Entry> {
    let store = kiln::store::Store::open(root).unwrap();
    let digests = image(root, name).layer_digests().unwrap();
    let reader = store
        .read_layer_uncompressed(&digests[digests.len() - 2])
        .unwrap();
    let mut archive = tar::Archive::new(reader);
    let mut entries = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        let is_file = header.entry_type().is_file();
        entries.push((
            String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
            header.entry_type().as_byte(),
            header.mode().unwrap(),
            header.uid().unwrap(),
            header.gid().unwrap(),
            if is_file { header.mtime().unwrap() } else { 0 },
            header
                .link_name()
                .unwrap()
                .map(|l| l.display().to_string())
                .unwrap_or_default(),
            content,
        ));
    }
    entries
}

/// The digest of `name`'s COPY layer blob.
fn copy_blob(root: &Path, name: &str) -> kiln::digest::Digest {
    let digests = image(root, name).layer_digests().unwrap();
    digests[digests.len() - 2].clone()
}

/// Sets the mtime (and atime) of `path` itself, never of what a symlink points to.
fn set_mtime(path: &Path, seconds: i64) {
    let time = nix::sys::time::TimeSpec::new(seconds, 0);
    nix::sys::stat::utimensat(
        None,
        path,
        &time,
        &time,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

fn ino(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).unwrap().ino()
}

fn notes(root: &Path) -> usize {
    std::fs::read_dir(root.join("cache/copies"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[test]
fn issue5_a_rebuilt_copy_links_unchanged_files_and_gives_the_cold_layer() {
    let root = store_with_base();
    let dir = context(&[
        ("Dockerfile", DOCKERFILE),
        ("a.txt", "a1\n"),
        ("b.txt", "b\n"),
        ("d/c.txt", "c\n"),
    ]);
    build(root.path(), dir.path(), &["-t", "t:1"]);
    let first = copy_snapshot(root.path(), "t:1");
    let first_id = image(root.path(), "t:1").id().to_string();
    assert_eq!(notes(root.path()), 1);

    std::fs::write(dir.path().join("a.txt"), "a2\n").unwrap();
    build(root.path(), dir.path(), &["-t", "t:1"]);
    let second = copy_snapshot(root.path(), "t:1");
    assert_ne!(first, second);
    for unchanged in ["app/b.txt", "app/d/c.txt", "app/Dockerfile"] {
        assert_eq!(
            ino(&second.join(unchanged)),
            ino(&first.join(unchanged)),
            "{unchanged} is a link to the first snapshot's"
        );
    }
    assert_ne!(
        ino(&second.join("app/a.txt")),
        ino(&first.join("app/a.txt"))
    );
    assert_eq!(read(&first.join("app/a.txt")), "a1\n");
    assert_eq!(read(&second.join("app/a.txt")), "a2\n");
    assert_eq!(
        read(&flatten(root.path(), "t:1").path().join("seen")),
        "a2\nc\n"
    );

    // The same context from scratch (no cache: nothing linked) gives the same layer.
    build(root.path(), dir.path(), &["-t", "t:cold", "--no-cache"]);
    let linked = copy_layer(root.path(), "t:1");
    assert!(linked.len() >= 6, "{linked:?}");
    assert!(
        linked.iter().all(|entry| entry.1 != b'1'),
        "no tar hard links: {linked:?}"
    );
    assert_eq!(linked, copy_layer(root.path(), "t:cold"));
    assert_eq!(
        copy_blob(root.path(), "t:1"),
        copy_blob(root.path(), "t:cold")
    );

    // prune keeps the note of a snapshot in use, and removes it with the snapshot.
    run_ok(kiln(root.path()).args(["rmi", &first_id]));
    run_ok(kiln(root.path()).arg("prune"));
    assert!(!first.exists());
    assert_eq!(read(&second.join("app/b.txt")), "b\n");
    assert_eq!(notes(root.path()), 1);
    run_ok(kiln(root.path()).args(["rmi", "t:1", "t:cold"]));
    run_ok(kiln(root.path()).arg("prune"));
    assert!(!second.exists());
    assert_eq!(notes(root.path()), 0);
}

#[test]
fn issue5_a_copy_keeps_directory_mtimes_and_gives_the_same_layer_every_time() {
    let root = store_with_base();
    let dir = context(&[
        ("Dockerfile", DOCKERFILE),
        ("a.txt", "a1\n"),
        ("d/c.txt", "c\n"),
        ("d/e/deep.txt", "deep\n"),
    ]);
    // Enough bytes for a layer of several zstd frames (about 1 MiB each).
    std::fs::create_dir(dir.path().join("bulk")).unwrap();
    for n in 0..40u64 {
        let path = dir.path().join(format!("bulk/f{n:02}.txt"));
        std::fs::write(path, noise(n, 100_000)).unwrap();
    }
    std::os::unix::fs::symlink("d/c.txt", dir.path().join("link")).unwrap();
    let times = [
        ("link", 1_500_000_100),
        ("d/e/deep.txt", 1_500_000_200),
        ("d/e", 1_500_000_300),
        ("d", 1_500_000_400),
        ("bulk", 1_500_000_500),
        ("", 1_500_000_600),
    ];
    for (path, seconds) in times {
        set_mtime(&dir.path().join(path), seconds);
    }

    build(root.path(), dir.path(), &["-t", "t:1"]);
    build(root.path(), dir.path(), &["-t", "t:again", "--no-cache"]);
    // Same tree, same layer: nothing in it is stamped with the time of the build.
    assert_eq!(
        copy_blob(root.path(), "t:1"),
        copy_blob(root.path(), "t:again")
    );

    let store = kiln::store::Store::open(root.path()).unwrap();
    let reader = store
        .read_layer_uncompressed(&copy_blob(root.path(), "t:1"))
        .unwrap();
    let mut archive = tar::Archive::new(reader);
    let mut mtimes = std::collections::HashMap::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        mtimes.insert(name, entry.header().mtime().unwrap() as i64);
    }
    for (path, expected) in [
        ("app/", 1_500_000_600),
        ("app/d/", 1_500_000_400),
        ("app/d/e/", 1_500_000_300),
        ("app/d/e/deep.txt", 1_500_000_200),
        ("app/bulk/", 1_500_000_500),
        ("app/link", 1_500_000_100),
    ] {
        assert_eq!(mtimes.get(path), Some(&expected), "{path}: {mtimes:?}");
    }

    // A change in one file: the rebuilt layer (hard links, frames copied from the last run's
    // blob) is the layer a build from scratch makes.
    let note = |root: &Path| -> serde_json::Value {
        let dir = root.join("cache/copies");
        let entry = std::fs::read_dir(dir).unwrap().next().unwrap().unwrap();
        serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap()
    };
    let frames = note(root.path())["layer"]["frames"]["frames"]
        .as_array()
        .expect("the note keeps the blob's frames")
        .len();
    assert!(frames >= 3, "{frames} frames");
    std::fs::write(dir.path().join("bulk/f20.txt"), noise(99, 100_001)).unwrap();
    set_mtime(&dir.path().join("bulk"), 1_500_000_500);
    build(root.path(), dir.path(), &["-t", "t:1"]);
    build(root.path(), dir.path(), &["-t", "t:cold", "--no-cache"]);
    assert_ne!(
        copy_blob(root.path(), "t:1"),
        copy_blob(root.path(), "t:again")
    );
    assert_eq!(
        copy_blob(root.path(), "t:1"),
        copy_blob(root.path(), "t:cold")
    );
    assert!(
        std::fs::read(flatten(root.path(), "t:1").path().join("app/bulk/f20.txt")).unwrap()
            == noise(99, 100_001)
    );

    // The COPY's blob is finished while the RUN after it runs; every record names a finished
    // blob (never the stand-in of a layer still being written).
    let mut n_layers = 0;
    for entry in std::fs::read_dir(root.path().join("cache/records")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let Some(layer) = record["layer"].as_object() else {
            continue;
        };
        n_layers += 1;
        let digest: kiln::digest::Digest = layer["digest"].as_str().unwrap().parse().unwrap();
        assert_ne!(layer["digest"], layer["diff_id"], "{record}");
        assert_eq!(
            std::fs::metadata(store.blob_path(&digest)).unwrap().len(),
            layer["size"].as_u64().unwrap(),
            "{record}"
        );
    }
    assert!(n_layers >= 4, "{n_layers} records with layers");
}
