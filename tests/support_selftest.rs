//! Checks the shared test support itself: the busybox rootfs tarball is deterministic and
//! holds what every image test relies on.

mod common;

#[test]
fn busybox_rootfs_has_shell_and_users() {
    let path = common::busybox_rootfs_tar();
    let mut archive = tar::Archive::new(std::fs::File::open(&path).unwrap());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|entry| {
            entry
                .unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for expected in ["bin/busybox", "bin/sh", "etc/passwd", "etc/group", "tmp/"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from rootfs: {names:?}"
        );
    }
    let first = std::fs::read(&path).unwrap();
    let again = std::env::temp_dir().join(format!("kiln-selftest-{}.tar", std::process::id()));
    // A second, independent build must give the same bytes (stable image IDs depend on it).
    common::write_busybox_rootfs(&again);
    assert_eq!(std::fs::read(&again).unwrap(), first);
    std::fs::remove_file(&again).unwrap();
}
