//! `kiln run IMAGE` over images in the store: layers become overlay lower dirs (left
//! untouched), and ENTRYPOINT, CMD, Env, WorkingDir and User come from the image config with
//! docker's override rules.

mod common;

use common::{kiln, run_ok, stderr_of, stdout_of};
use kiln::store::{parse_reference, Store};
use std::process::Stdio;

/// Imports the busybox rootfs as `kbusy`, then stores `kcfg`: the same layer with a config.
fn store_with_images() -> tempfile::TempDir {
    common::require_root();
    let root = common::temp_root();
    let store_root = root.path().join("store");
    run_ok(
        kiln(&store_root)
            .arg("import")
            .arg(common::busybox_rootfs_tar())
            .arg("kbusy"),
    );
    let store = Store::open(&store_root).unwrap();
    let base = store.resolve("kbusy").unwrap();
    let mut config = base.config.clone();
    let runtime = oci_spec::image::ConfigBuilder::default()
        .entrypoint(vec!["/bin/sh".to_string(), "-c".to_string()])
        .cmd(vec!["echo $GREETING from $(pwd) as $(id -un)".to_string()])
        .env(vec![
            "GREETING=hello".to_string(),
            "PATH=/bin:/usr/bin".to_string(),
        ])
        .working_dir("/home/kiln".to_string())
        .user("kiln".to_string())
        .build()
        .unwrap();
    config.oci.set_config(Some(runtime));
    let image = store.put_image(&config, base.layers().to_vec()).unwrap();
    store
        .set_name(&parse_reference("kcfg").unwrap(), &image.manifest_digest)
        .unwrap();
    root
}

fn run(root: &tempfile::TempDir, args: &[&str]) -> (i32, String, String) {
    let output = kiln(&root.path().join("store"))
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        stdout_of(&output),
        stderr_of(&output),
    )
}

#[test]
fn image_config_gives_entrypoint_cmd_env_workdir_user() {
    let root = store_with_images();
    let check = |args: &[&str], expect: &str| {
        let (code, out, err) = run(&root, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(out, expect, "{args:?}");
    };
    check(&["kcfg"], "hello from /home/kiln as kiln\n");
    check(
        &["-e", "GREETING=bye", "kcfg"],
        "bye from /home/kiln as kiln\n",
    );
    check(&["kcfg", "echo replaced cmd"], "replaced cmd\n");
    check(
        &["-u", "root", "-w", "/tmp", "kcfg"],
        "hello from /tmp as root\n",
    );
    check(
        &["--entrypoint", "echo", "kcfg", "plain", "args"],
        "plain args\n",
    );
    check(&["kbusy", "echo", "hi"], "hi\n");
}

#[test]
fn layers_stay_untouched_and_bad_images_fail_clearly() {
    let root = store_with_images();
    let (code, _, err) = run(
        &root,
        &["kbusy", "sh", "-c", "echo new > /bin/new; rm /etc/passwd"],
    );
    assert_eq!(code, 0, "{err}");
    let snapshots = root.path().join("store/snapshots");
    for entry in std::fs::read_dir(&snapshots).unwrap() {
        let snapshot = entry.unwrap().path();
        assert!(!snapshot.join("bin/new").exists());
        assert!(snapshot.join("etc/passwd").exists());
    }
    let (code, out, _) = run(&root, &["kbusy", "cat", "/etc/passwd"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("root:x:0:0"));

    let (code, _, err) = run(&root, &["no-such-image"]);
    assert_eq!(code, 125);
    assert!(
        err.contains("unable to find image \"no-such-image\""),
        "{err}"
    );
    let (code, _, err) = run(&root, &["kbusy"]);
    assert_eq!(code, 125, "an image without CMD needs a command");
    assert!(err.contains("no command given"), "{err}");
    let containers = root.path().join("store/containers");
    let left: Vec<_> = std::fs::read_dir(&containers)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != ".overlay-probe")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
