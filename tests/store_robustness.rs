//! The store under stress: a `kiln load` SIGKILLed half-way leaves a readable, consistent store;
//! concurrent loads and tags on one root all land; save and load stream (peak memory stays flat
//! however large the image).

mod common;
mod store_support;

use common::{kiln, run_ok, stdout_of, temp_root};
use std::time::{Duration, Instant};
use store_support::*;

fn dir_bytes(dir: &std::path::Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[test]
fn sigkilled_load_leaves_the_store_consistent() {
    let root = temp_root();
    import_busybox(root.path());
    let before = store_state(root.path());
    let work = tempfile::tempdir().unwrap();
    let layer = work.path().join("layer.tar");
    write_big_rootfs(&layer, 256 << 20);
    let archive = work.path().join("big.tar");
    let id = write_docker_archive(&archive, &layer, "big:1");
    std::fs::remove_file(&layer).unwrap();

    let mut child = kiln(root.path())
        .arg("load")
        .arg("-i")
        .arg(&archive)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has staged a good part of the layer, mid-stream.
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("kiln load finished ({status}) before it could be killed");
        }
        if dir_bytes(&root.path().join("tmp")) > 32 << 20 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "load made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // The next commands work and see the store as it was.
    assert_eq!(store_state(root.path()), before);
    let images = stdout_of(&run_ok(kiln(root.path()).args([
        "images",
        "--format",
        "{{.Repository}}",
    ])));
    assert_eq!(images, "busybox\n");
    assert_fsck_ok(root.path());
    // The load can simply be run again, and prune clears what the killed one left in tmp.
    run_ok(kiln(root.path()).arg("load").arg("-i").arg(&archive));
    assert_eq!(inspect(root.path(), "big:1")["Id"], id.as_str());
    let out = stdout_of(&run_ok(kiln(root.path()).arg("prune")));
    assert!(out.contains("1 temporary files"), "{out}");
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
        0
    );
    assert_fsck_ok(root.path());
}

#[test]
fn concurrent_loads_and_tags_all_land() {
    // Two different archives to load.
    let source = temp_root();
    import_busybox(source.path());
    run_ok(
        kiln(source.path())
            .env("SOURCE_DATE_EPOCH", "1")
            .arg("import")
            .arg(common::busybox_rootfs_tar())
            .arg("second:1"),
    );
    let work = tempfile::tempdir().unwrap();
    let first_archive = work.path().join("first.tar");
    let second_archive = work.path().join("second.tar");
    run_ok(
        kiln(source.path())
            .args(["save", "-o"])
            .arg(&first_archive)
            .arg("busybox"),
    );
    run_ok(
        kiln(source.path())
            .args(["save", "-o"])
            .arg(&second_archive)
            .arg("second:1"),
    );

    let root = temp_root();
    import_busybox(root.path());
    let n_rounds = 3;
    for round in 0..n_rounds {
        let mut children = Vec::new();
        for archive in [&first_archive, &second_archive] {
            children.push(
                kiln(root.path())
                    .arg("load")
                    .arg("-i")
                    .arg(archive)
                    .output_async(),
            );
        }
        for n in 0..2 {
            children.push(
                kiln(root.path())
                    .args(["tag", "busybox", &format!("tagged/r{round}:{n}")])
                    .output_async(),
            );
        }
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "concurrent command failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    let listing = stdout_of(&run_ok(kiln(root.path()).args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ])));
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort();
    let mut expected = vec!["busybox:latest".to_string(), "second:1".to_string()];
    for round in 0..n_rounds {
        for n in 0..2 {
            expected.push(format!("tagged/r{round}:{n}"));
        }
    }
    expected.sort();
    assert_eq!(names, expected);
    assert_fsck_ok(root.path());
}

trait OutputAsync {
    fn output_async(&mut self) -> std::process::Child;
}

impl OutputAsync for std::process::Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Peak RSS in KiB of import, save and load of a one-file image of `size` bytes.
fn peaks_for(size: u64) -> [(&'static str, u64); 3] {
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs.tar");
    write_big_rootfs(&rootfs, size);
    let root = temp_root();
    let import = peak_rss_kib(kiln(root.path()).arg("import").arg(&rootfs).arg("big"));
    let archive = work.path().join("big.tar");
    let save = peak_rss_kib(
        kiln(root.path())
            .args(["save", "-o"])
            .arg(&archive)
            .arg("big"),
    );
    let second = temp_root();
    let load = peak_rss_kib(kiln(second.path()).arg("load").arg("-i").arg(&archive));
    assert_eq!(
        inspect(second.path(), "big")["Id"],
        inspect(root.path(), "big")["Id"]
    );
    [("import", import), ("save", save), ("load", load)]
}

#[test]
fn import_save_and_load_stream_in_flat_memory() {
    // Memory must not grow with the image: a 4x larger image may cost at most a few MiB more
    // (allocator noise), far below the 96 MiB it grew by.
    const SMALL: u64 = 32 << 20;
    const LARGE: u64 = 128 << 20;
    const SLACK_KIB: u64 = 16 * 1024;
    const CEILING_KIB: u64 = 128 * 1024;
    let small = peaks_for(SMALL);
    let large = peaks_for(LARGE);
    eprintln!(
        "peak RSS (KiB) at {} MiB: {small:?}; at {} MiB: {large:?}",
        SMALL >> 20,
        LARGE >> 20
    );
    for ((what, small_kib), (_, large_kib)) in small.iter().zip(large.iter()) {
        assert!(
            *large_kib < small_kib + SLACK_KIB && *large_kib < CEILING_KIB,
            "{what} does not stream: peak RSS {small_kib} KiB at {} MiB, {large_kib} KiB at {} MiB",
            SMALL >> 20,
            LARGE >> 20
        );
    }
}
