//! Snapshots as overlayfs lower directories: an image's layers unpacked by chain ID stack into
//! the image's file tree, whiteouts included, under a real overlay mount.

mod common;
mod store_support;

use kiln::store::{ImageConfig, Store};
use std::process::Command;
use store_support::*;

fn layer_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn snapshots_stack_as_overlay_lower_dirs() {
    common::require_root();
    let root = common::temp_root();
    import_busybox(root.path());
    let store = Store::open(root.path()).unwrap();
    let base = store.resolve("busybox").unwrap();

    // A second layer: deletes etc/hostname (whiteout), adds etc/motd.
    let top = store
        .write_layer(
            &mut &layer_tar(&[("etc/.wh.hostname", b""), ("etc/motd", b"hello\n")])[..],
            "top layer",
        )
        .unwrap();
    let mut oci = base.config().oci.clone();
    let mut diff_ids = oci.rootfs().diff_ids().clone();
    diff_ids.push(top.diff_id.to_string());
    oci.rootfs_mut().set_diff_ids(diff_ids);
    let mut layers = base.layers().to_vec();
    layers.push(top.descriptor());
    let image = store.put_image(&ImageConfig::new(oci), layers).unwrap();
    store
        .set_name(
            &kiln::store::parse_reference("stacked").unwrap(),
            &image.manifest_digest,
        )
        .unwrap();

    let lowerdirs = store.snapshot_lowerdirs(&image).unwrap();
    let chain = image.chain_ids().unwrap();
    assert_eq!(lowerdirs.len(), 2);
    assert_eq!(lowerdirs[0], store.snapshot_path(&chain[1]));
    assert_eq!(lowerdirs[1], store.snapshot_path(&chain[0]));
    // The base snapshot is shared with busybox (same chain ID).
    assert_eq!(
        store.snapshot_lowerdirs(&base).unwrap(),
        vec![lowerdirs[1].clone()]
    );

    let mount_point = tempfile::tempdir().unwrap();
    let lower = lowerdirs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={lower}"))
        .arg(mount_point.path())
        .status()
        .unwrap();
    assert!(status.success(), "mount overlay failed (lowerdir={lower})");
    let merged = mount_point.path();
    let checks = (
        merged.join("bin/busybox").is_file(),
        std::fs::read(merged.join("etc/motd")).ok(),
        merged.join("etc/hostname").exists(),
        merged.join("etc/passwd").is_file(),
    );
    let unmounted = Command::new("umount").arg(merged).status().unwrap();
    assert!(unmounted.success());
    assert_eq!(checks, (true, Some(b"hello\n".to_vec()), false, true));

    // Snapshots of named images survive prune; the store stays consistent.
    run_prune_and_fsck(root.path());
    assert!(lowerdirs.iter().all(|d| d.is_dir()));
}

fn run_prune_and_fsck(root: &std::path::Path) {
    common::run_ok(common::kiln(root).arg("prune"));
    assert_fsck_ok(root);
}
