//! Shared support for integration tests: the kiln binary, temporary store roots, and the
//! busybox root filesystem tarball every test image starts from (made from Debian's
//! `busybox-static`, which `.ci/run` installs).
//!
//! Tests that need something the machine lacks (root, busybox-static, skopeo, a registry)
//! fail with a message naming it; nothing is skipped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `kiln` binary cargo built for this test run.
pub fn kiln_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

/// A `kiln` command with `--root` set to `root`.
pub fn kiln(root: &Path) -> Command {
    let mut command = Command::new(kiln_bin());
    command.env_remove("KILN_ROOT").arg("--root").arg(root);
    command
}

/// Runs a command and returns its output, panicking with both streams if it failed.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("spawn command");
    assert!(
        output.status.success(),
        "command failed: {:?}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        command,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a command that must fail and returns its output.
pub fn run_fail(command: &mut Command) -> Output {
    let output = command.output().expect("spawn command");
    assert!(
        !output.status.success(),
        "command unexpectedly succeeded: {:?}\nstdout:\n{}\nstderr:\n{}",
        command,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Fails the test unless it runs as root (containers, overlayfs and chown need it).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (namespaces, overlayfs, chown); CI runs as root"
    );
}

/// Fails the test unless `program` is on PATH, naming the Debian package that provides it.
pub fn require_program(program: &str, debian_package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{program} is not installed: apt-get install {debian_package} (.ci/run does this)")
    })
}

const BUSYBOX: &str = "/bin/busybox";

/// A deterministic busybox root filesystem tarball (uncompressed), built once per test binary
/// from Debian's busybox-static: `/bin/busybox`, one symlink per applet, `/etc/passwd`,
/// `/etc/group` (root, daemon, nobody, and a `kiln` user 1000:1000 in group `kiln` and
/// supplementary group `daemon`), the usual empty directories. Its bytes are the same on every
/// run, so image IDs built from it are stable.
pub fn busybox_rootfs_tar() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kiln-test-busybox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("busybox-rootfs.tar");
        write_busybox_rootfs(&path);
        path
    })
    .clone()
}

pub fn write_busybox_rootfs(path: &Path) {
    let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|_| {
        panic!("{BUSYBOX} is missing: apt-get install busybox-static (.ci/run does this)")
    });
    let listing = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .expect("run busybox --list-full");
    let mut applets: Vec<String> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .filter(|p| p != "bin/busybox" && !p.is_empty())
        .collect();
    applets.sort();
    applets.dedup();

    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).unwrap();
    let mut builder = tar::Builder::new(file);
    let dir = |builder: &mut tar::Builder<std::fs::File>, name: &str, mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        builder
            .append_data(&mut header, format!("{name}/"), std::io::empty())
            .unwrap();
    };
    let file_entry =
        |builder: &mut tar::Builder<std::fs::File>, name: &str, mode: u32, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(mode);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, name, data).unwrap();
        };
    let mut dirs: Vec<(&str, u32)> = vec![
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o755),
        ("root", 0o700),
        ("run", 0o755),
        ("sbin", 0o755),
        ("sys", 0o755),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("var", 0o755),
    ];
    dirs.sort();
    for (name, mode) in &dirs {
        dir(&mut builder, name, *mode);
    }
    file_entry(&mut builder, "bin/busybox", 0o755, &busybox);
    for applet in &applets {
        if applet.starts_with("bin/busybox") {
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        builder
            .append_link(&mut header, applet, "/bin/busybox")
            .unwrap();
    }
    file_entry(
        &mut builder,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nkiln:x:1000:1000:kiln:/home/kiln:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    file_entry(
        &mut builder,
        "etc/group",
        0o644,
        b"root:x:0:\ndaemon:x:1:kiln\nkiln:x:1000:\nnogroup:x:65534:\n",
    );
    file_entry(&mut builder, "etc/hostname", 0o644, b"kbase\n");
    builder.into_inner().unwrap().sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A fresh temporary directory for a store root; removed when dropped.
pub fn temp_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kiln-test-root-")
        .tempdir()
        .expect("create temp root")
}
pub mod build;

/// `len` bytes that zstd cannot shrink much (a xorshift stream from `seed`), so a few files
/// make a layer of several zstd frames.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
