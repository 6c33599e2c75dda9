//! Applying layer tars: metadata restored, whiteouts in both modes, and every way an entry
//! could escape the destination refused with an error naming the entry.

mod common;
mod layer_support;

use kiln::layer::{apply_layer, LayerError, WhiteoutMode};
use layer_support::{tree_listing, xattrs, RawEntry, RawTar};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use tar::EntryType;

fn apply(
    tar: &[u8],
    dest: &Path,
    mode: WhiteoutMode,
) -> Result<kiln::layer::ApplyStats, LayerError> {
    apply_layer(tar, dest, mode)
}

/// A directory holding `dest/` (the root) and `outside/` (which must stay untouched).
fn sandbox() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&dest).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("target"), b"original").unwrap();
    (dir, dest, outside)
}

fn expect_refused(result: Result<kiln::layer::ApplyStats, LayerError>, entry: &str) -> String {
    let error = result.expect_err("the entry must be refused");
    let message = error.to_string();
    assert!(
        message.contains(entry),
        "error {message:?} must name entry {entry:?}"
    );
    message
}

fn outside_untouched(outside: &Path) {
    let names: Vec<_> = std::fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("target")],
        "outside gained entries"
    );
    assert_eq!(std::fs::read(outside.join("target")).unwrap(), b"original");
}

#[test]
fn restores_files_dirs_links_devices_and_metadata() {
    let (_dir, dest, _outside) = sandbox();
    let tar = RawTar::new()
        .add(RawEntry {
            mode: 0o750,
            uid: 1000,
            gid: 1001,
            mtime: 12345,
            ..RawEntry::dir("d/")
        })
        .add(RawEntry {
            mode: 0o4755,
            uid: 1000,
            gid: 1000,
            mtime: 777,
            xattrs: &[("user.kiln", b"v1")],
            ..RawEntry::file("d/suid", b"hello")
        })
        .add(RawEntry::hardlink("d/hard", "d/suid"))
        .add(RawEntry::symlink("d/sym", "../elsewhere"))
        .add(RawEntry {
            mode: 0o1777,
            ..RawEntry::dir("tmp")
        })
        .add(RawEntry {
            mode: 0o620,
            device: (1, 3),
            ..RawEntry::new("dev/null", EntryType::Char)
        })
        .add(RawEntry::new("fifo", EntryType::Fifo))
        .add(RawEntry::file("/abs/file", b"absolute names are rooted"))
        .finish();
    let stats = apply(&tar, &dest, WhiteoutMode::Delete).unwrap();
    assert_eq!(stats.n_entries, 8);
    assert_eq!(
        stats.diff_id,
        kiln::digest::Digest::of_bytes(&tar),
        "the whole stream is hashed"
    );
    assert_eq!(stats.n_tar_bytes, tar.len() as u64);
    let listing = tree_listing(&dest).join("\n");
    let expected = [
        "abs dir mode=0755 owner=0:0",
        "abs/file file size=25",
        "d dir mode=0750 owner=1000:1001",
        "d/hard file size=5 sha256=2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 mode=4755 owner=1000:1000 xattr user.kiln=v1 links=d/hard,d/suid",
        "d/sym symlink -> ../elsewhere mode=0777 owner=0:0",
        "dev dir mode=0755 owner=0:0",
        "dev/null char 1:3 mode=0620 owner=0:0",
        "fifo fifo mode=0644 owner=0:0",
        "tmp dir mode=1777 owner=0:0",
    ];
    for line in expected {
        assert!(listing.contains(line), "missing {line:?} in\n{listing}");
    }
    assert_eq!(std::fs::metadata(dest.join("d")).unwrap().mtime(), 12345);
    assert_eq!(std::fs::metadata(dest.join("d/suid")).unwrap().mtime(), 777);
}

#[test]
fn whiteouts_delete_mode_spare_this_layers_entries() {
    let (_dir, dest, _outside) = sandbox();
    let lower = RawTar::new()
        .add(RawEntry::file("gone", b"x"))
        .add(RawEntry::dir("tree/"))
        .add(RawEntry::file("tree/deep", b"x"))
        .add(RawEntry::dir("opq/"))
        .add(RawEntry::file("opq/old", b"x"))
        .add(RawEntry::file("kept", b"x"))
        .finish();
    apply(&lower, &dest, WhiteoutMode::Delete).unwrap();
    let upper = RawTar::new()
        .add(RawEntry::file("opq/new-before-marker", b"y"))
        .add(RawEntry::file(".wh.gone", b""))
        .add(RawEntry::file(".wh.tree", b""))
        .add(RawEntry::file("opq/.wh..wh..opq", b""))
        .add(RawEntry::file("opq/new", b"y"))
        .add(RawEntry::file(".wh..wh.plnk", b""))
        .add(RawEntry::file(".wh.missing/.wh.x", b""))
        .finish();
    let stats = apply(&upper, &dest, WhiteoutMode::Delete).unwrap();
    assert_eq!((stats.n_whiteouts, stats.n_opaque), (3, 1));
    let names: Vec<String> = tree_listing(&dest)
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(names, ["kept", "opq", "opq/new", "opq/new-before-marker"]);
}

#[test]
fn whiteouts_overlay_mode_become_devices_and_opaque_xattrs() {
    let (_dir, dest, _outside) = sandbox();
    let upper = RawTar::new()
        .add(RawEntry::dir("opq/"))
        .add(RawEntry::file("opq/.wh..wh..opq", b""))
        .add(RawEntry::file("opq/new", b"y"))
        .add(RawEntry::file("sub/.wh.gone", b""))
        .finish();
    apply(&upper, &dest, WhiteoutMode::Overlay).unwrap();
    let whiteout = std::fs::symlink_metadata(dest.join("sub/gone")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert_eq!(
        xattrs(&dest.join("opq"), "trusted.overlay.")
            .get("trusted.overlay.opaque")
            .map(Vec::as_slice),
        Some(&b"y"[..])
    );
    assert!(dest.join("opq/new").is_file());
}

#[test]
fn refuses_dotdot_components() {
    let (_dir, dest, outside) = sandbox();
    let tar = RawTar::new()
        .add(RawEntry::file("../outside/evil", b"x"))
        .finish();
    expect_refused(apply(&tar, &dest, WhiteoutMode::Delete), "../outside/evil");
    let tar = RawTar::new()
        .add(RawEntry::dir("a/"))
        .add(RawEntry::file("a/../../outside/evil", b"x"))
        .finish();
    expect_refused(
        apply(&tar, &dest, WhiteoutMode::Delete),
        "a/../../outside/evil",
    );
    let tar = RawTar::new()
        .add(RawEntry::file("../outside/.wh.target", b""))
        .finish();
    expect_refused(
        apply(&tar, &dest, WhiteoutMode::Delete),
        "../outside/.wh.target",
    );
    let tar = RawTar::new().add(RawEntry::file(".wh...", b"")).finish();
    expect_refused(apply(&tar, &dest, WhiteoutMode::Delete), ".wh...");
    outside_untouched(&outside);
}

#[test]
fn absolute_names_are_rooted_in_dest() {
    let (dir, dest, outside) = sandbox();
    let absolute = format!("{}/evil", outside.display());
    let tar = RawTar::new().add(RawEntry::file(&absolute, b"x")).finish();
    apply(&tar, &dest, WhiteoutMode::Delete).unwrap();
    assert!(dest.join(absolute.trim_start_matches('/')).is_file());
    outside_untouched(&outside);
    drop(dir);
}

#[test]
fn refuses_writes_through_symlinks() {
    let (_dir, dest, outside) = sandbox();
    // Pointing outside, absolute and relative, and pointing inside: all refused as parents.
    for (link, target) in [
        ("abs", outside.to_str().unwrap()),
        ("rel", "../outside"),
        ("inside", "real"),
    ] {
        let tar = RawTar::new()
            .add(RawEntry::dir("real/"))
            .add(RawEntry::symlink(link, target))
            .add(RawEntry::file(&format!("{link}/evil"), b"x"))
            .finish();
        let message = expect_refused(
            apply(&tar, &dest, WhiteoutMode::Delete),
            &format!("{link}/evil"),
        );
        assert!(message.contains("symbolic link"), "{message}");
        for mode in [WhiteoutMode::Delete, WhiteoutMode::Overlay] {
            let tar = RawTar::new()
                .add(RawEntry::file(&format!("{link}/.wh.target"), b""))
                .finish();
            expect_refused(apply(&tar, &dest, mode), &format!("{link}/.wh.target"));
            let tar = RawTar::new()
                .add(RawEntry::file(&format!("{link}/.wh..wh..opq"), b""))
                .finish();
            expect_refused(apply(&tar, &dest, mode), &format!("{link}/.wh..wh..opq"));
        }
    }
    assert!(!dest.join("real/evil").exists());
    outside_untouched(&outside);
}

#[test]
fn replaces_a_symlink_in_the_way_instead_of_following_it() {
    let (_dir, dest, outside) = sandbox();
    std::os::unix::fs::symlink(outside.join("target"), dest.join("f")).unwrap();
    let tar = RawTar::new().add(RawEntry::file("f", b"new")).finish();
    apply(&tar, &dest, WhiteoutMode::Delete).unwrap();
    assert!(std::fs::symlink_metadata(dest.join("f")).unwrap().is_file());
    assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"new");
    outside_untouched(&outside);
}

#[test]
fn refuses_hard_links_outside() {
    let (_dir, dest, outside) = sandbox();
    let cases = [
        ("hl1", "../outside/target".to_string()),
        ("hl2", outside.join("target").to_str().unwrap().to_string()),
        ("hl3", "sym/target".to_string()),
        ("hl4", "/etc/passwd".to_string()),
    ];
    for (name, target) in &cases {
        let tar = RawTar::new()
            .add(RawEntry::symlink("sym", outside.to_str().unwrap()))
            .add(RawEntry::hardlink(name, target))
            .finish();
        let message = expect_refused(apply(&tar, &dest, WhiteoutMode::Delete), name);
        assert!(
            message.contains(target.as_str()),
            "{message} must name the target"
        );
        assert!(!dest.join(name).exists());
    }
    assert_eq!(
        std::fs::metadata(outside.join("target")).unwrap().nlink(),
        1
    );
    outside_untouched(&outside);
}
