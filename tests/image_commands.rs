//! The image commands over a real store: import (plain/gzip/zstd), images, tag, rmi, inspect,
//! history, prune, fsck, and import's refusal of bad tarballs.

mod common;
mod store_support;

use common::{kiln, run_fail, run_ok, stderr_of, stdout_of, temp_root};
use std::io::Write;
use store_support::*;

#[test]
fn import_lists_the_image_with_docker_columns() {
    let root = temp_root();
    let id = import_busybox(root.path());
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let table = stdout_of(&run_ok(kiln(root.path()).arg("images")));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    for column in ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(lines[0].contains(column), "{table}");
    }
    let cells: Vec<&str> = lines[1]
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(cells[0], "busybox");
    assert_eq!(cells[1], "latest");
    assert_eq!(cells[2], &id[7..19]);
    assert!(cells[3].ends_with("ago"), "{table}");
    let quiet = stdout_of(&run_ok(kiln(root.path()).args(["images", "-q"])));
    assert_eq!(quiet.trim(), &id[7..19]);
    let json = stdout_of(&run_ok(
        kiln(root.path()).args(["images", "--format", "json"]),
    ));
    let row: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(row["Repository"], "busybox");
    assert_eq!(row["Tag"], "latest");
    assert_fsck_ok(root.path());
}

#[test]
fn import_reads_plain_gzip_and_zstd_to_the_same_image() {
    let rootfs = std::fs::read(common::busybox_rootfs_tar()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&rootfs).unwrap();
    std::fs::write(dir.path().join("rootfs.tar.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(
        dir.path().join("rootfs.tar.zst"),
        zstd::encode_all(&rootfs[..], 3).unwrap(),
    )
    .unwrap();
    let root = temp_root();
    let mut ids = Vec::new();
    for (file, name) in [
        (common::busybox_rootfs_tar(), "plain"),
        (dir.path().join("rootfs.tar.gz"), "gzip"),
        (dir.path().join("rootfs.tar.zst"), "zstd"),
    ] {
        // Same bytes and creation time, same message: the same image, whatever the framing.
        let output = run_ok(
            kiln(root.path())
                .env("SOURCE_DATE_EPOCH", "0")
                .args(["import", "-m", "same"])
                .arg(&file)
                .arg(name),
        );
        ids.push(stdout_of(&output).trim().to_string());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[0], ids[2]);
    // Standard input works too.
    let output = run_ok(
        kiln(root.path())
            .env("SOURCE_DATE_EPOCH", "0")
            .args(["import", "-m", "same", "-", "stdin"])
            .stdin(std::fs::File::open(common::busybox_rootfs_tar()).unwrap()),
    );
    assert_eq!(stdout_of(&output).trim(), ids[0]);
    // The diff ID is the sha256 of the uncompressed rootfs.
    let inspect = inspect(root.path(), "gzip");
    assert_eq!(
        inspect["RootFS"]["Layers"][0],
        format!("sha256:{}", sha256_hex(&rootfs))
    );
    // Stored as zstd, whatever came in.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.path().join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.path().join("blobs/sha256").join(&manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
}

#[test]
fn tag_rmi_and_prune() {
    let root = temp_root();
    let id = import_busybox(root.path());
    run_ok(kiln(root.path()).args(["tag", "busybox", "example.com/team/tool:1.0"]));
    run_ok(kiln(root.path()).args(["tag", &id[7..19], "other"]));
    let listing = stdout_of(&run_ok(kiln(root.path()).args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ])));
    let mut names: Vec<&str> = listing.lines().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "busybox:latest",
            "example.com/team/tool:1.0",
            "other:latest"
        ]
    );
    let index = std::fs::read_to_string(root.path().join("index.json")).unwrap();
    assert!(index.contains("\"org.opencontainers.image.ref.name\":\"example.com/team/tool:1.0\""));
    assert!(index.contains("\"docker.io/library/busybox:latest\""));

    // By ID with several names: refused unless forced, as docker does.
    let refused = run_fail(kiln(root.path()).args(["rmi", &id[7..19]]));
    assert!(
        stderr_of(&refused).contains("must be forced"),
        "{}",
        stderr_of(&refused)
    );

    let out = stdout_of(&run_ok(kiln(root.path()).args(["rmi", "busybox", "other"])));
    assert_eq!(out, "Untagged: busybox:latest\nUntagged: other:latest\n");
    let out = stdout_of(&run_ok(
        kiln(root.path()).args(["rmi", "example.com/team/tool:1.0"]),
    ));
    assert_eq!(
        out,
        format!("Untagged: example.com/team/tool:1.0\nDeleted: {id}\n")
    );
    assert_eq!(
        stdout_of(&run_ok(kiln(root.path()).args(["images", "-q"]))),
        ""
    );
    let missing = run_fail(kiln(root.path()).args(["rmi", "busybox"]));
    assert!(stderr_of(&missing).contains("no such image: busybox"));

    // The blobs stay until prune.
    assert_eq!(store_state(root.path()).blobs.len(), 3);
    let out = stdout_of(&run_ok(kiln(root.path()).arg("prune")));
    assert!(out.starts_with("Deleted 3 blobs"), "{out}");
    assert!(store_state(root.path()).blobs.is_empty());
    assert_fsck_ok(root.path());
}

#[test]
fn prune_keeps_what_images_use() {
    let root = temp_root();
    import_busybox(root.path());
    let before = store_state(root.path());
    let out = stdout_of(&run_ok(kiln(root.path()).arg("prune")));
    assert!(out.starts_with("Deleted 0 blobs"), "{out}");
    assert_eq!(store_state(root.path()), before);
    run_ok(kiln(root.path()).args(["inspect", "busybox"]));
}

#[test]
fn inspect_shows_docker_fields() {
    let root = temp_root();
    let id = import_busybox(root.path());
    let value = inspect(root.path(), "busybox");
    assert_eq!(value["Id"], id.as_str());
    assert_eq!(value["RepoTags"], serde_json::json!(["busybox:latest"]));
    assert!(value["RepoDigests"][0]
        .as_str()
        .unwrap()
        .starts_with("busybox@sha256:"));
    assert_eq!(value["Created"], "2023-11-14T22:13:20.000000000Z");
    assert_eq!(value["Os"], "linux");
    assert_eq!(value["RootFS"]["Type"], "layers");
    assert!(value["Size"].as_u64().unwrap() > 100_000);
    assert_eq!(value["History"].as_array().unwrap().len(), 1);
    // By short and full ID, and with a template.
    let by_short = inspect(root.path(), &id[7..15]);
    assert_eq!(by_short["Id"], id.as_str());
    let out = stdout_of(&run_ok(kiln(root.path()).args([
        "inspect",
        "--format",
        "{{.Id}} {{json .RepoTags}}",
        &id,
    ])));
    assert_eq!(out, format!("{id} [\"busybox:latest\"]\n"));
    let by_digest = format!(
        "busybox@{}",
        value["Descriptor"]["digest"].as_str().unwrap()
    );
    assert_eq!(inspect(root.path(), &by_digest)["Id"], id.as_str());
    let missing = run_fail(kiln(root.path()).args(["inspect", "nosuch"]));
    assert!(stderr_of(&missing).contains("no such image: nosuch"));
}

/// A docker-archive whose config has history entries with empty layers, as a build makes.
fn archive_with_history() -> (Vec<u8>, String) {
    let layer = std::fs::read(common::busybox_rootfs_tar()).unwrap();
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "created": "2024-01-01T00:00:03Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "Shell": ["/bin/sh", "-c"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [
            {"created": "2024-01-01T00:00:01Z", "created_by": "ADD rootfs.tar / # a rather long instruction that docker truncates", "comment": "base"},
            {"created": "2024-01-01T00:00:02Z", "created_by": "ENV PATH=/bin", "empty_layer": true},
            {"created": "2024-01-01T00:00:03Z", "created_by": "CMD [\"sh\"]", "empty_layer": true},
        ],
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_hex = sha256_hex(&config_bytes);
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": ["hist:1"],
        "Layers": ["abc/layer.tar"],
    }]);
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, name, data).unwrap();
    };
    add(&format!("{config_hex}.json"), &config_bytes);
    add("abc/layer.tar", &layer);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    (
        builder.into_inner().unwrap(),
        format!("sha256:{config_hex}"),
    )
}

#[test]
fn history_lists_every_entry_newest_first() {
    let root = temp_root();
    let (archive, id) = archive_with_history();
    let out = run_ok(
        kiln(root.path())
            .args(["load"])
            .stdin(stdin_bytes(&archive)),
    );
    assert_eq!(stdout_of(&out), "Loaded image: hist:1\n");
    let table = stdout_of(&run_ok(kiln(root.path()).args(["history", "hist:1"])));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    for column in ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"] {
        assert!(lines[0].contains(column), "{table}");
    }
    assert!(lines[1].starts_with(&id[7..19]), "{table}");
    assert!(
        lines[1].contains("CMD [\"sh\"]") && lines[1].contains(" 0B"),
        "{table}"
    );
    assert!(lines[2].starts_with("<missing>") && lines[2].contains("ENV PATH=/bin"));
    assert!(
        lines[3].starts_with("<missing>") && lines[3].contains("…") && lines[3].contains("base")
    );
    let full = stdout_of(&run_ok(kiln(root.path()).args([
        "history",
        "--no-trunc",
        "hist:1",
    ])));
    assert!(full.contains("docker truncates") && full.contains(&id));
    let json = stdout_of(&run_ok(
        kiln(root.path()).args(["history", "--format", "json", "hist:1"]),
    ));
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["CreatedBy"], "CMD [\"sh\"]");
    assert_eq!(rows[2]["Comment"], "base");
    // Docker's Shell field survived the load (it lives beside the OCI fields).
    let value = inspect(root.path(), "hist:1");
    assert_eq!(
        value["Config"]["Shell"],
        serde_json::json!(["/bin/sh", "-c"])
    );
}

fn stdin_bytes(bytes: &[u8]) -> std::process::Stdio {
    let path = std::env::temp_dir().join(format!(
        "kiln-stdin-{}-{}",
        std::process::id(),
        sha256_hex(bytes)
    ));
    std::fs::write(&path, bytes).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    file.into()
}

fn import_fails(bytes: &[u8], expect: &str) {
    let root = temp_root();
    import_busybox(root.path());
    let before = store_state(root.path());
    let output = run_fail(
        kiln(root.path())
            .args(["import", "-", "bad"])
            .stdin(stdin_bytes(bytes)),
    );
    let stderr = stderr_of(&output);
    assert!(stderr.contains(expect), "expected {expect:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(store_state(root.path()), before);
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
        0
    );
    assert_fsck_ok(root.path());
}

#[test]
fn import_refuses_a_truncated_tarball() {
    let rootfs = std::fs::read(common::busybox_rootfs_tar()).unwrap();
    import_fails(&rootfs[..rootfs.len() / 2 + 100], "truncated");
}

#[test]
fn import_refuses_a_truncated_gzip_tarball() {
    let rootfs = std::fs::read(common::busybox_rootfs_tar()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&rootfs).unwrap();
    let gz = gz.finish().unwrap();
    import_fails(&gz[..gz.len() / 2], "truncated");
}

#[test]
fn import_refuses_garbage_and_xz() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    import_fails(&garbage, "corrupt");
    import_fails(
        &[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 0],
        "xz compression is not supported",
    );
}

#[test]
fn import_refuses_escaping_members() {
    let mut members = vec![Member {
        header: raw_header("../evil", tar::EntryType::Regular, None),
        data: b"x".to_vec(),
    }];
    import_fails(&write_members(&members), "escapes the archive");
    members[0].header = raw_header("/etc/evil", tar::EntryType::Regular, None);
    import_fails(&write_members(&members), "absolute path");
}

#[test]
fn tag_refuses_bad_names() {
    let root = temp_root();
    import_busybox(root.path());
    let output = run_fail(kiln(root.path()).args(["tag", "busybox", "Bad Name"]));
    assert!(
        stderr_of(&output).contains("invalid image reference"),
        "{}",
        stderr_of(&output)
    );
    let output = run_fail(kiln(root.path()).args(["tag", "nosuch", "x"]));
    assert!(stderr_of(&output).contains("no such image"));
}

#[test]
fn fsck_finds_corrupt_and_missing_blobs() {
    let root = temp_root();
    let id = import_busybox(root.path());
    assert_fsck_ok(root.path());
    let blobs = root.path().join("blobs/sha256");
    // Corrupt the largest blob (the layer).
    let layer = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&layer).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&layer, &bytes).unwrap();
    let output = run_fail(kiln(root.path()).arg("fsck"));
    let stderr = stderr_of(&output);
    let layer_name = layer.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stderr.contains(&format!("blob sha256:{layer_name}: content hashes to")),
        "{stderr}"
    );
    assert!(
        stderr.contains("docker.io/library/busybox:latest"),
        "{stderr}"
    );
    // A missing config is named too.
    std::fs::remove_file(blobs.join(&id[7..])).unwrap();
    let output = run_fail(kiln(root.path()).arg("fsck"));
    assert!(
        stderr_of(&output).contains(&format!("blob {id} missing")),
        "{}",
        stderr_of(&output)
    );
}
