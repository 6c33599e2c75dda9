//! Committing a real overlay upper directory: the layer, applied onto its lower layers by an
//! independent reader (umoci), gives exactly the merged view seen through the mount; the same
//! changes give the same bytes; both whiteout modes of apply reproduce the merged view; the
//! upper directory itself serves as the next snapshot; compressed blobs decompress to the diff
//! ID.

mod common;
mod layer_support;

use kiln::layer::{apply_layer, write_layer, write_tar, CommitOptions, Compression, WhiteoutMode};
use layer_support::{assert_same_listing, set_xattr, tree_listing, write_oci_layout, LayoutLayer};
use nix::mount::{mount, umount, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};
use sha2::{Digest as _, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const OVERLAY_OPTIONS: &str = "index=off,metacopy=off,redirect_dir=off";

/// An overlay mount, unmounted when dropped (also when a test panics).
struct Mounted(PathBuf);

impl Mounted {
    fn overlay(lowers: &[&Path], upper: Option<(&Path, &Path)>, merged: &Path) -> Mounted {
        let lowerdir = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut options = format!("lowerdir={lowerdir},{OVERLAY_OPTIONS}");
        if let Some((upper, work)) = upper {
            options.push_str(&format!(
                ",upperdir={},workdir={}",
                upper.display(),
                work.display()
            ));
        }
        mount(
            Some("overlay"),
            merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .unwrap_or_else(|e| panic!("mount overlay {options} on {}: {e}", merged.display()));
        Mounted(merged.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(error) = umount(&self.0) {
            eprintln!("umount {}: {error}", self.0.display());
        }
    }
}

/// Two lower layers, an upper directory holding every kind of change, and the merged view
/// those gave while mounted.
struct Scenario {
    _dir: tempfile::TempDir,
    base: PathBuf,
    lower1_tar: PathBuf,
    lower2_tar: PathBuf,
    lower1: PathBuf,
    lower2: PathBuf,
    upper: PathBuf,
    merged_listing: Vec<String>,
}

fn mkdirs(path: &Path, mode: u32) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write(path: &Path, content: &[u8], mode: u32) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn make_lower2(lower2: &Path) {
    mkdirs(&lower2.join("data/dir-to-delete/a/b"), 0o755);
    mkdirs(&lower2.join("data/dir-to-file"), 0o755);
    mkdirs(&lower2.join("data/opaque/sub"), 0o755);
    mkdirs(&lower2.join("etc"), 0o755);
    write(&lower2.join("etc/motd"), b"welcome\n", 0o644);
    write(&lower2.join("data/delete-me"), b"delete me", 0o644);
    write(&lower2.join("data/dir-to-delete/a/b/c"), b"c", 0o644);
    write(&lower2.join("data/dir-to-delete/top"), b"t", 0o644);
    write(&lower2.join("data/dir-to-file/inner"), b"inner", 0o644);
    write(&lower2.join("data/file-to-dir"), b"file", 0o644);
    write(&lower2.join("data/opaque/old1"), b"1", 0o644);
    write(&lower2.join("data/opaque/sub/old2"), b"2", 0o644);
    write(&lower2.join("data/chmod-me"), b"chmod", 0o644);
    write(&lower2.join("data/chown-me"), b"chown", 0o644);
    write(&lower2.join("data/xattr-me"), b"xattr", 0o644);
    set_xattr(&lower2.join("data/xattr-me"), "user.lower", b"1");
    write(&lower2.join("data/existing"), b"existing", 0o644);
    write(&lower2.join("data/lower-hardlink-a"), b"shared", 0o644);
    std::fs::hard_link(
        lower2.join("data/lower-hardlink-a"),
        lower2.join("data/lower-hardlink-b"),
    )
    .unwrap();
}

/// Every kind of change, made through the merged directory.
fn make_changes(merged: &Path) {
    let m = |p: &str| merged.join(p);
    // add, with new directories
    mkdirs(&m("new"), 0o755);
    write(&m("new/file.txt"), b"new file\n", 0o644);
    set_xattr(&m("new/file.txt"), "user.kiln", b"hello");
    write(&m("new/empty"), b"", 0o640);
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write(&m("new/big"), &big, 0o644);
    // modify a file of each lower
    write(&m("etc/hostname"), b"changed\n", 0o644);
    std::fs::write(m("etc/motd"), b"welcome back\n").unwrap();
    // delete a file, a symlink, an empty and a full directory
    std::fs::remove_file(m("data/delete-me")).unwrap();
    std::fs::remove_file(m("bin/ls")).unwrap();
    std::fs::remove_dir(m("home")).unwrap();
    std::fs::remove_dir_all(m("data/dir-to-delete")).unwrap();
    // replace a directory with a file and a file with a directory
    std::fs::remove_dir_all(m("data/dir-to-file")).unwrap();
    write(&m("data/dir-to-file"), b"now a file", 0o644);
    std::fs::remove_file(m("data/file-to-dir")).unwrap();
    mkdirs(&m("data/file-to-dir"), 0o750);
    write(&m("data/file-to-dir/inside"), b"inside", 0o644);
    // opaque directory: rm -rf + mkdir
    std::fs::remove_dir_all(m("data/opaque")).unwrap();
    mkdirs(&m("data/opaque"), 0o755);
    write(&m("data/opaque/new"), b"new", 0o644);
    // hard links: both new, and a new name for a lower file (copy-up then link)
    write(&m("new/a"), b"hard linked", 0o644);
    std::fs::hard_link(m("new/a"), m("new/b")).unwrap();
    std::fs::hard_link(m("data/existing"), m("data/existing-link")).unwrap();
    // symlinks, relative and absolute, and a long target
    std::os::unix::fs::symlink("../etc/hostname", m("new/rel-link")).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", m("new/abs-link")).unwrap();
    std::os::unix::fs::symlink(format!("/{}", "t".repeat(150)), m("new/long-link")).unwrap();
    // metadata-only changes
    std::fs::set_permissions(m("data/chmod-me"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(m("data/chown-me"), Some(1000), Some(1000)).unwrap();
    set_xattr(&m("data/xattr-me"), "user.added", b"2");
    // setuid, setgid, sticky
    write(&m("new/suid"), b"#!/bin/sh\n", 0o4755);
    mkdirs(&m("new/setgid-dir"), 0o2775);
    mkdirs(&m("new/sticky"), 0o1777);
    std::os::unix::fs::lchown(m("new/sticky"), Some(1000), Some(1)).unwrap();
    // fifo and device nodes
    mknod(
        &m("new/fifo"),
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o644),
        0,
    )
    .unwrap();
    mknod(
        &m("new/null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        libc::makedev(1, 3),
    )
    .unwrap();
    mknod(
        &m("new/loop9"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        libc::makedev(7, 9),
    )
    .unwrap();
    std::fs::set_permissions(m("new/null"), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(m("new/loop9"), std::fs::Permissions::from_mode(0o660)).unwrap();
    // names longer than ustar holds
    let long_dir = m(&format!("new/{}", "d".repeat(120)));
    mkdirs(&long_dir, 0o755);
    write(&long_dir.join("f".repeat(110)), b"long", 0o644);
    // a file created then deleted leaves nothing
    write(&m("new/temporary"), b"x", 0o644);
    std::fs::remove_file(m("new/temporary")).unwrap();
}

fn run(command: &mut Command) {
    common::run_ok(command);
}

impl Scenario {
    fn new() -> Scenario {
        common::require_root();
        common::require_program("tar", "tar");
        let dir = tempfile::Builder::new()
            .prefix("kiln-layer-commit-")
            .tempdir()
            .unwrap();
        let base = dir.path().to_path_buf();
        let lower1_tar = common::busybox_rootfs_tar();
        let lower1 = base.join("lower1");
        let lower2 = base.join("lower2");
        let upper = base.join("upper");
        let work = base.join("work");
        let merged = base.join("merged");
        for d in [&lower1, &lower2, &upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        run(Command::new("tar")
            .arg("-C")
            .arg(&lower1)
            .args(["--numeric-owner", "-xpf"])
            .arg(&lower1_tar));
        make_lower2(&lower2);
        let lower2_tar = base.join("lower2.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&lower2)
            .args([
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=user.*",
                "--sort=name",
                "-cf",
            ])
            .arg(&lower2_tar)
            .arg("."));
        let merged_listing = {
            let _mounted = Mounted::overlay(&[&lower2, &lower1], Some((&upper, &work)), &merged);
            make_changes(&merged);
            tree_listing(&merged)
        };
        Scenario {
            _dir: dir,
            base,
            lower1_tar,
            lower2_tar,
            lower1,
            lower2,
            upper,
            merged_listing,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }

    fn commit(
        &self,
        compression: Compression,
        name: &str,
    ) -> (kiln::layer::CommittedLayer, PathBuf) {
        let blob = self.path(name);
        let file = std::fs::File::create(&blob).unwrap();
        let layer = write_layer(
            &self.upper,
            file,
            CommitOptions {
                compression,
                exclude: vec![],
            },
        )
        .expect("commit the upper directory");
        (layer, blob)
    }
}

fn sha256_of(path: &Path) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
    )
}

fn listing_names(listing: &[String]) -> Vec<&str> {
    listing
        .iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect()
}

#[test]
fn the_scenario_exercises_every_kind_of_change() {
    let scenario = Scenario::new();
    let names = listing_names(&scenario.merged_listing);
    if std::env::var_os("KILN_DUMP_LISTING").is_some() {
        eprintln!("{}", scenario.merged_listing.join("\n"));
    }
    for gone in [
        "data/delete-me",
        "bin/ls",
        "home",
        "data/dir-to-delete",
        "data/opaque/old1",
        "data/opaque/sub",
    ] {
        assert!(
            !names.contains(&gone),
            "{gone} must be gone from the merged view"
        );
    }
    // The upper directory holds real overlay whiteouts and an opaque directory.
    let whiteout = std::fs::symlink_metadata(scenario.upper.join("data/delete-me")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &whiteout.file_type()
    ));
    let opaque = layer_support::xattrs(&scenario.upper.join("data/opaque"), "trusted.overlay.");
    assert_eq!(
        opaque.get("trusted.overlay.opaque").map(Vec::as_slice),
        Some(&b"y"[..])
    );
}

#[test]
fn committed_layer_unpacked_by_umoci_gives_the_merged_view() {
    common::require_program("umoci", "umoci");
    let scenario = Scenario::new();
    // umoci 0.4.7 (Debian) reads gzip and plain layers, not zstd; the zstd blob is checked
    // against the zstd CLI in zstd_gzip_and_plain_blobs_decompress_to_the_diff_id.
    let (layer, blob) = scenario.commit(Compression::Gzip, "layer.tar.gz");
    assert_eq!(sha256_of(&blob), layer.digest.to_string());
    let layout = scenario.path("layout");
    use oci_spec::image::MediaType;
    write_oci_layout(
        &layout,
        &[
            LayoutLayer {
                blob: scenario.lower1_tar.clone(),
                media_type: MediaType::ImageLayer,
                diff_id: sha256_of(&scenario.lower1_tar),
            },
            LayoutLayer {
                blob: scenario.lower2_tar.clone(),
                media_type: MediaType::ImageLayer,
                diff_id: sha256_of(&scenario.lower2_tar),
            },
            LayoutLayer {
                blob,
                media_type: MediaType::ImageLayerGzip,
                diff_id: layer.diff_id.to_string(),
            },
        ],
        "test",
    );
    let bundle = scenario.path("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle));
    let unpacked = tree_listing(&bundle.join("rootfs"));
    assert_same_listing(
        "umoci unpack of the committed layer vs the merged overlay",
        &scenario.merged_listing,
        &unpacked,
    );
}

#[test]
fn apply_in_both_modes_and_the_upper_as_snapshot_reproduce_the_merged_view() {
    let scenario = Scenario::new();
    let layer_tar = scenario.path("layer.tar");
    write_tar(
        &scenario.upper,
        std::fs::File::create(&layer_tar).unwrap(),
        &[],
    )
    .unwrap();
    let tars = [&scenario.lower1_tar, &scenario.lower2_tar, &layer_tar];

    // Delete mode: flatten all three layers onto one directory.
    let flat = scenario.path("flat");
    std::fs::create_dir(&flat).unwrap();
    for tar in tars {
        let stats = apply_layer(
            std::fs::File::open(tar).unwrap(),
            &flat,
            WhiteoutMode::Delete,
        )
        .unwrap();
        assert_eq!(stats.diff_id.to_string(), sha256_of(tar));
    }
    assert_same_listing(
        "flattened with WhiteoutMode::Delete",
        &scenario.merged_listing,
        &tree_listing(&flat),
    );

    // Overlay mode: one snapshot per layer, stacked as lower directories.
    let mut snapshots = Vec::new();
    for (i, tar) in tars.iter().enumerate() {
        let snapshot = scenario.path(&format!("snapshot{i}"));
        std::fs::create_dir(&snapshot).unwrap();
        apply_layer(
            std::fs::File::open(tar).unwrap(),
            &snapshot,
            WhiteoutMode::Overlay,
        )
        .unwrap();
        snapshots.push(snapshot);
    }
    let stacked = scenario.path("stacked");
    std::fs::create_dir(&stacked).unwrap();
    {
        let _mounted = Mounted::overlay(
            &[&snapshots[2], &snapshots[1], &snapshots[0]],
            None,
            &stacked,
        );
        assert_same_listing(
            "snapshots applied with WhiteoutMode::Overlay",
            &scenario.merged_listing,
            &tree_listing(&stacked),
        );
    }
    // The committed upper directory, as it is, is the next snapshot.
    {
        let _mounted = Mounted::overlay(
            &[&scenario.upper, &scenario.lower2, &scenario.lower1],
            None,
            &stacked,
        );
        assert_same_listing(
            "the upper directory used as a lower",
            &scenario.merged_listing,
            &tree_listing(&stacked),
        );
    }
}

fn set_all_mtimes(root: &Path, seconds: i64) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    for entry in walkdir::WalkDir::new(root).contents_first(true) {
        let entry = entry.unwrap();
        let time = TimeSpec::new(seconds, 0);
        utimensat(
            None,
            entry.path(),
            &time,
            &time,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

#[test]
fn same_changes_give_identical_bytes() {
    let first = Scenario::new();
    let second = Scenario::new();
    // Times differ between runs; everything else (inodes, readdir order, ctimes, overlay
    // origin xattrs) must not reach the bytes.
    set_all_mtimes(&first.upper, 1_700_000_000);
    set_all_mtimes(&second.upper, 1_700_000_000);
    let (layer1, blob1) = first.commit(Compression::Zstd { level: 3 }, "a.tar.zst");
    let (layer1_again, blob1_again) = first.commit(Compression::Zstd { level: 3 }, "b.tar.zst");
    let (layer2, blob2) = second.commit(Compression::Zstd { level: 3 }, "a.tar.zst");
    assert_eq!(layer1, layer1_again);
    assert_eq!(
        std::fs::read(&blob1).unwrap(),
        std::fs::read(&blob1_again).unwrap()
    );
    assert_eq!(
        layer1.diff_id, layer2.diff_id,
        "the same changes must give the same tar"
    );
    assert_eq!(layer1, layer2);
    assert_eq!(
        std::fs::read(&blob1).unwrap(),
        std::fs::read(&blob2).unwrap()
    );
}

#[test]
fn zstd_gzip_and_plain_blobs_decompress_to_the_diff_id() {
    common::require_program("zstd", "zstd");
    common::require_program("gzip", "gzip");
    let scenario = Scenario::new();
    let (plain, plain_blob) = scenario.commit(Compression::None, "layer.tar");
    assert_eq!(plain.digest, plain.diff_id);
    assert_eq!(plain.size, plain.uncompressed_size);
    assert_eq!(sha256_of(&plain_blob), plain.diff_id.to_string());
    for (compression, name, program) in [
        (Compression::Zstd { level: 3 }, "layer.tar.zst", "zstd"),
        (Compression::Zstd { level: 19 }, "layer19.tar.zst", "zstd"),
        (Compression::Gzip, "layer.tar.gz", "gzip"),
    ] {
        let (layer, blob) = scenario.commit(compression, name);
        assert_eq!(layer.diff_id, plain.diff_id, "{name}");
        assert_eq!(layer.uncompressed_size, plain.uncompressed_size, "{name}");
        assert_eq!(sha256_of(&blob), layer.digest.to_string(), "{name}");
        assert_eq!(
            std::fs::metadata(&blob).unwrap().len(),
            layer.size,
            "{name}"
        );
        assert!(layer.size < layer.uncompressed_size, "{name} must compress");
        let (_, mut stream) =
            kiln::store::compression::decompress(std::fs::File::open(&blob).unwrap()).unwrap();
        let mut hasher = Sha256::new();
        std::io::copy(&mut stream, &mut hasher).unwrap();
        let hex = hex::encode(hasher.finalize());
        assert_eq!(format!("sha256:{hex}"), layer.diff_id.to_string(), "{name}");
        let output = common::run_ok(Command::new(program).arg("-dc").arg(&blob));
        let decompressed = format!("sha256:{}", hex::encode(Sha256::digest(&output.stdout)));
        assert_eq!(
            decompressed,
            layer.diff_id.to_string(),
            "{program} -dc {name}"
        );
    }
}
