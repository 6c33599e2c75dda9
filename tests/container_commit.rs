//! A container's changes commit as a clean layer with either snapshotter: the workload's
//! writes and deletions are in the tar, the image's untouched files and kiln's own mount
//! points (/etc/hosts, /etc/resolv.conf, bind-mount targets) are not.

mod common;

use kiln::executor::container::{
    self, BindMount, CommandLine, ContainerIo, ContainerSpec, OutputSink, Rootfs, StorageDriver,
    UsedDriver,
};

fn layer_entries(driver: StorageDriver) -> (UsedDriver, Vec<String>) {
    common::require_root();
    let scratch = tempfile::Builder::new()
        .prefix("kiln-ctr-commit-")
        .tempdir()
        .unwrap();
    let lower = scratch.path().join("lower");
    std::fs::create_dir(&lower).unwrap();
    assert!(std::process::Command::new("tar")
        .arg("-xf")
        .arg(common::busybox_rootfs_tar())
        .arg("-C")
        .arg(&lower)
        .status()
        .unwrap()
        .success());
    let volume = scratch.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let rootfs = Rootfs::prepare(&scratch.path().join("c1"), &[lower], driver).unwrap();
    let spec = ContainerSpec {
        command: CommandLine::shell(
            "echo hi > /new; rm /etc/group; mkdir -p /var/cache/app; echo c > /var/cache/app/f; \
             echo into-volume > /mnt/data/v; cat /etc/hosts > /dev/null",
        ),
        mounts: vec![BindMount {
            source: volume.clone(),
            destination: "/mnt/data".into(),
            read_only: false,
        }],
        hostname: "commit".into(),
        kiln_binary: Some(common::kiln_bin()),
        ..ContainerSpec::default()
    };
    let status = container::run(
        &rootfs,
        &spec,
        ContainerIo {
            stdout: OutputSink::Inherit,
            stderr: OutputSink::Inherit,
        },
    )
    .unwrap();
    assert_eq!(status.code, 0);
    container::remove_mount_stubs(&rootfs).unwrap();
    let changes = rootfs.changes().unwrap();
    let mut tar_bytes = Vec::new();
    kiln::layer::write_tar(&changes, &mut tar_bytes, &[]).unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|entry| {
            entry
                .unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(
        std::fs::read_to_string(volume.join("v")).unwrap(),
        "into-volume\n"
    );
    let driver = rootfs.driver();
    rootfs.cleanup().unwrap();
    (driver, names)
}

fn check(names: &[String]) {
    for wanted in ["new", "etc/.wh.group", "var/cache/app/f"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }
    for unwanted in [
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "mnt/data",
        "mnt",
        "bin/busybox",
        "etc/passwd",
        "proc",
        "dev",
        "sys",
    ] {
        assert!(
            !names.iter().any(|n| n == unwanted),
            "{unwanted} leaked into {names:?}"
        );
    }
}

#[test]
fn overlay_upper_commits_only_the_workloads_changes() {
    let (driver, names) = layer_entries(StorageDriver::Overlay);
    assert_eq!(driver, UsedDriver::Overlay);
    check(&names);
}

#[test]
fn copy_snapshotter_commits_the_same_changes() {
    let (driver, names) = layer_entries(StorageDriver::Copy);
    assert_eq!(driver, UsedDriver::Copy);
    check(&names);
}
