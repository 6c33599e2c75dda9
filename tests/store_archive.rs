//! `kiln save` / `kiln load` and readers that are not kiln: round trips keep digests; skopeo
//! and umoci read kiln's store and archives; archives skopeo writes load; bad archives are
//! refused with the store unchanged.

mod common;
mod store_support;

use common::{kiln, require_program, run_fail, run_ok, stderr_of, stdout_of, temp_root};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use store_support::*;

fn skopeo_json(args: &[&str]) -> serde_json::Value {
    require_program("skopeo", "skopeo");
    let output = run_ok(Command::new("skopeo").args(args));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "skopeo {args:?} printed no JSON ({err}): {}",
            stdout_of(&output)
        )
    })
}

fn skopeo_raw(args: &[&str]) -> Vec<u8> {
    require_program("skopeo", "skopeo");
    run_ok(Command::new("skopeo").args(args)).stdout
}

fn member_data(archive: &[u8], name: &str) -> Vec<u8> {
    read_members(archive)
        .into_iter()
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("archive has no {name}"))
        .data
}

#[test]
fn round_trip_keeps_digests() {
    let first = temp_root();
    let id = import_busybox(first.path());
    let archive = save_bytes(first.path(), "busybox");

    let second = temp_root();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("busybox.tar");
    std::fs::write(&file, &archive).unwrap();
    let out = run_ok(kiln(second.path()).arg("load").arg("-i").arg(&file));
    assert_eq!(stdout_of(&out), "Loaded image: busybox:latest\n");
    let loaded = inspect(second.path(), "busybox");
    assert_eq!(loaded["Id"], id.as_str());
    assert_eq!(loaded["RootFS"], inspect(first.path(), "busybox")["RootFS"]);
    // Saving the loaded image gives the very same archive: same IDs, same layer digests.
    let again = save_bytes(second.path(), "busybox");
    assert_eq!(
        member_data(&again, "manifest.json"),
        member_data(&archive, "manifest.json")
    );
    assert_eq!(
        member_data(&again, "index.json"),
        member_data(&archive, "index.json")
    );
    assert!(again == archive, "second save differs from the first");
    // And -o writes the same bytes as standard output.
    let out_file = dir.path().join("again.tar");
    run_ok(
        kiln(second.path())
            .args(["save", "-o"])
            .arg(&out_file)
            .arg("busybox"),
    );
    assert!(std::fs::read(&out_file).unwrap() == archive);
    assert_fsck_ok(second.path());
}

#[test]
fn load_reads_gzip_and_zstd_archives_from_stdin() {
    let first = temp_root();
    let id = import_busybox(first.path());
    let archive = save_bytes(first.path(), "busybox");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&archive).unwrap();
    for compressed in [
        gz.finish().unwrap(),
        zstd::encode_all(&archive[..], 3).unwrap(),
    ] {
        let root = temp_root();
        let mut child = kiln(root.path())
            .arg("load")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&compressed).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr_of(&output));
        assert_eq!(inspect(root.path(), "busybox")["Id"], id.as_str());
    }
}

#[test]
fn skopeo_reads_the_store_and_both_archive_transports() {
    let root = temp_root();
    let id = import_busybox(root.path());
    let kiln_view = inspect(root.path(), "busybox");
    let manifest_digest = kiln_view["Descriptor"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let diff_id = kiln_view["RootFS"]["Layers"][0]
        .as_str()
        .unwrap()
        .to_string();

    // The store itself is an OCI layout, names as full references.
    let store_ref = format!(
        "oci:{}:docker.io/library/busybox:latest",
        root.path().display()
    );
    let raw = skopeo_raw(&["inspect", "--raw", &store_ref]);
    assert_eq!(format!("sha256:{}", sha256_hex(&raw)), manifest_digest);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["config"]["digest"], id.as_str());
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    assert!(root
        .path()
        .join("blobs/sha256")
        .join(&layer_digest[7..])
        .is_file());
    let view = skopeo_json(&["inspect", &store_ref]);
    assert_eq!(view["Digest"], manifest_digest.as_str());
    assert_eq!(view["Layers"], serde_json::json!([layer_digest]));

    // The saved archive, read as a docker-archive and as an OCI archive.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("busybox.tar");
    run_ok(
        kiln(root.path())
            .args(["save", "-o"])
            .arg(&file)
            .arg("busybox"),
    );
    let docker_ref = format!("docker-archive:{}", file.display());
    let view = skopeo_json(&["inspect", &docker_ref]);
    assert_eq!(view["Layers"], serde_json::json!([diff_id]));
    let raw: serde_json::Value =
        serde_json::from_slice(&skopeo_raw(&["inspect", "--raw", &docker_ref])).unwrap();
    assert_eq!(raw["config"]["digest"], id.as_str());

    let oci_ref = format!("oci-archive:{}", file.display());
    let saved_index: serde_json::Value =
        serde_json::from_slice(&member_data(&std::fs::read(&file).unwrap(), "index.json")).unwrap();
    let view = skopeo_json(&["inspect", &oci_ref]);
    assert_eq!(view["Digest"], saved_index["manifests"][0]["digest"]);
    assert_eq!(view["Layers"], serde_json::json!([diff_id]));
    let raw: serde_json::Value =
        serde_json::from_slice(&skopeo_raw(&["inspect", "--raw", &oci_ref])).unwrap();
    assert_eq!(raw["config"]["digest"], id.as_str());
    assert_eq!(
        raw["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
}

/// Regular files, directories and symlinks of a tree, with modes and contents.
fn tree_of_tar(path: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let mode = entry.header().mode().unwrap() & 0o7777;
        let what = match entry.header().entry_type() {
            tar::EntryType::Directory => format!("dir {mode:o}"),
            tar::EntryType::Symlink => {
                format!("link {}", entry.link_name().unwrap().unwrap().display())
            }
            _ => {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
                format!("file {mode:o} {}", sha256_hex(&data))
            }
        };
        out.push((name, what));
    }
    out.sort();
    out
}

fn tree_of_dir(dir: &Path) -> Vec<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1) {
        let entry = entry.unwrap();
        let name = entry
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = entry.path().symlink_metadata().unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let what = if meta.file_type().is_symlink() {
            format!(
                "link {}",
                std::fs::read_link(entry.path()).unwrap().display()
            )
        } else if meta.is_dir() {
            format!("dir {mode:o}")
        } else {
            format!(
                "file {mode:o} {}",
                sha256_hex(&std::fs::read(entry.path()).unwrap())
            )
        };
        out.push((name, what));
    }
    out.sort();
    out
}

#[test]
fn umoci_unpacks_the_same_tree_from_kilns_layout() {
    require_program("umoci", "umoci");
    // Debian's umoci (0.4.7) reads plain and gzip layers only, not zstd; a loaded image keeps
    // its layers as they came (plain tar from `kiln save`), which umoci can read.
    let first = temp_root();
    import_busybox(first.path());
    let archive = save_bytes(first.path(), "busybox");
    let root = temp_root();
    run_ok(
        kiln(root.path())
            .arg("load")
            .stdin(std::process::Stdio::from(write_temp(&archive))),
    );
    let bundle = tempfile::tempdir().unwrap();
    let bundle_dir = bundle.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!(
                "{}:docker.io/library/busybox:latest",
                root.path().display()
            ))
            .arg(&bundle_dir),
    );
    assert_eq!(
        tree_of_dir(&bundle_dir.join("rootfs")),
        tree_of_tar(&common::busybox_rootfs_tar())
    );
    assert_fsck_ok(root.path());
}

fn write_temp(bytes: &[u8]) -> std::fs::File {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(bytes).unwrap();
    std::io::Seek::rewind(&mut file).unwrap();
    file
}

#[test]
fn loads_archives_skopeo_writes() {
    let source = temp_root();
    let id = import_busybox(source.path());
    let diff_id = inspect(source.path(), "busybox")["RootFS"]["Layers"][0].clone();
    let dir = tempfile::tempdir().unwrap();
    let docker_file = dir.path().join("docker.tar");
    let oci_file = dir.path().join("oci.tar");
    let store_ref = format!(
        "oci:{}:docker.io/library/busybox:latest",
        source.path().display()
    );
    require_program("skopeo", "skopeo");
    // skopeo 1.9 refuses to turn a zstd layer into a docker-archive, so that copy starts from
    // kiln's saved archive (uncompressed layers) instead of the store.
    let saved = dir.path().join("saved.tar");
    run_ok(
        kiln(source.path())
            .args(["save", "-o"])
            .arg(&saved)
            .arg("busybox"),
    );
    run_ok(Command::new("skopeo").args([
        "copy",
        &format!("oci-archive:{}", saved.display()),
        &format!("docker-archive:{}:skopeo/docker:1", docker_file.display()),
    ]));
    run_ok(Command::new("skopeo").args([
        "copy",
        &store_ref,
        &format!("oci-archive:{}:skopeo/oci:1", oci_file.display()),
    ]));
    let root = temp_root();
    let out = run_ok(kiln(root.path()).arg("load").arg("-i").arg(&docker_file));
    assert_eq!(stdout_of(&out), "Loaded image: skopeo/docker:1\n");
    let out = run_ok(kiln(root.path()).arg("load").arg("-i").arg(&oci_file));
    assert_eq!(stdout_of(&out), "Loaded image: skopeo/oci:1\n");
    for name in ["skopeo/docker:1", "skopeo/oci:1"] {
        let value = inspect(root.path(), name);
        assert_eq!(value["RootFS"]["Layers"][0], diff_id, "{name}");
    }
    // skopeo's OCI copy keeps the config bytes, so the image ID survives.
    assert_eq!(inspect(root.path(), "skopeo/oci:1")["Id"], id.as_str());
    assert_fsck_ok(root.path());
}

/// Loads `archive` into a store holding busybox and checks it fails with `expect` in the
/// message, leaving the store as it was.
fn load_fails(archive: &[u8], expect: &str) {
    let root = temp_root();
    import_busybox(root.path());
    let before = store_state(root.path());
    let output = run_fail(
        kiln(root.path())
            .arg("load")
            .stdin(std::process::Stdio::from(write_temp(archive))),
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

fn good_archive() -> Vec<u8> {
    let root = temp_root();
    import_busybox(root.path());
    save_bytes(root.path(), "busybox")
}

fn layer_member_name(members: &[Member]) -> String {
    members
        .iter()
        .filter(|m| m.name().starts_with("blobs/sha256/"))
        .max_by_key(|m| m.data.len())
        .unwrap()
        .name()
}

#[test]
fn load_refuses_a_truncated_archive() {
    let archive = good_archive();
    load_fails(&archive[..archive.len() * 6 / 10], "truncated");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&archive).unwrap();
    let gz = gz.finish().unwrap();
    load_fails(&gz[..gz.len() / 2], "truncated");
}

#[test]
fn load_refuses_a_blob_that_does_not_match_its_digest() {
    let mut members = read_members(&good_archive());
    let layer = layer_member_name(&members);
    let member = members.iter_mut().find(|m| m.name() == layer).unwrap();
    let middle = member.data.len() / 2;
    member.data[middle] ^= 0xff;
    load_fails(&write_members(&members), "does not match its digest");
}

#[test]
fn load_refuses_a_manifest_naming_a_missing_blob() {
    let mut members = read_members(&good_archive());
    let layer = layer_member_name(&members);
    members.retain(|m| m.name() != layer);
    load_fails(&write_members(&members), "which the archive lacks");
}

#[test]
fn load_refuses_unknown_media_types() {
    let mut members = read_members(&good_archive());
    let index: serde_json::Value = serde_json::from_slice(
        &members
            .iter()
            .find(|m| m.name() == "index.json")
            .unwrap()
            .data,
    )
    .unwrap();
    let manifest_name = format!(
        "blobs/sha256/{}",
        &index["manifests"][0]["digest"].as_str().unwrap()[7..]
    );
    let manifest_member = members
        .iter()
        .find(|m| m.name() == manifest_name)
        .unwrap()
        .clone();
    let mut manifest: serde_json::Value = serde_json::from_slice(&manifest_member.data).unwrap();
    manifest["layers"][0]["mediaType"] = "application/vnd.example.mystery".into();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_hex = sha256_hex(&manifest_bytes);
    let mut new_manifest = manifest_member.clone();
    new_manifest
        .header
        .set_path(format!("blobs/sha256/{manifest_hex}"))
        .unwrap();
    new_manifest.data = manifest_bytes.clone();
    let mut index = index;
    index["manifests"][0]["digest"] = format!("sha256:{manifest_hex}").into();
    index["manifests"][0]["size"] = manifest_bytes.len().into();
    let index_bytes = serde_json::to_vec(&index).unwrap();
    members.retain(|m| m.name() != manifest_name);
    members.push(new_manifest);
    members
        .iter_mut()
        .find(|m| m.name() == "index.json")
        .unwrap()
        .data = index_bytes;
    load_fails(
        &write_members(&members),
        "unsupported media type \"application/vnd.example.mystery\"",
    );
}

#[test]
fn load_refuses_dot_dot_members() {
    let mut members = read_members(&good_archive());
    members.insert(
        0,
        Member {
            header: raw_header("../kiln-escape", tar::EntryType::Regular, None),
            data: b"x".to_vec(),
        },
    );
    load_fails(&write_members(&members), "escapes the archive");
}

#[test]
fn load_refuses_absolute_members() {
    let mut members = read_members(&good_archive());
    let target = format!("/tmp/kiln-absolute-{}", std::process::id());
    members.insert(
        0,
        Member {
            header: raw_header(&target, tar::EntryType::Regular, None),
            data: b"x".to_vec(),
        },
    );
    load_fails(&write_members(&members), "absolute path");
    assert!(!Path::new(&target).exists());
}

#[test]
fn load_refuses_writes_through_symlinks() {
    let members = read_members(&good_archive());
    // A symlink inside the archive, then a member written through it.
    let mut inside = members.clone();
    inside.insert(
        0,
        Member {
            header: raw_header("lnk", tar::EntryType::Symlink, Some("blobs")),
            data: Vec::new(),
        },
    );
    inside.insert(
        1,
        Member {
            header: raw_header("lnk/sha256/x", tar::EntryType::Regular, None),
            data: b"x".to_vec(),
        },
    );
    load_fails(
        &write_members(&inside),
        "would be written through the symlink \"lnk\"",
    );
    // A symlink to outside, then a member written through it.
    let outside_dir = tempfile::tempdir().unwrap();
    let mut outside = members;
    let target = outside_dir.path().display().to_string();
    outside.insert(
        0,
        Member {
            header: raw_header("out", tar::EntryType::Symlink, Some(&target)),
            data: Vec::new(),
        },
    );
    outside.insert(
        1,
        Member {
            header: raw_header("out/pwned", tar::EntryType::Regular, None),
            data: b"x".to_vec(),
        },
    );
    load_fails(&write_members(&outside), "points outside the archive");
    assert!(!outside_dir.path().join("pwned").exists());
}

#[test]
fn load_refuses_hard_links_to_outside() {
    for target in ["../../etc/passwd", "/etc/passwd"] {
        let mut members = read_members(&good_archive());
        members.insert(
            0,
            Member {
                header: raw_header("h", tar::EntryType::Link, Some(target)),
                data: Vec::new(),
            },
        );
        load_fails(&write_members(&members), "points outside the archive");
    }
}

#[test]
fn load_refuses_what_is_not_an_image_archive() {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(2);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    builder
        .append_data(&mut header, "hello.txt", &b"hi"[..])
        .unwrap();
    load_fails(&builder.into_inner().unwrap(), "neither an OCI archive");
    load_fails(b"", "empty archive");
}

#[test]
fn load_picks_the_held_image_of_a_multi_platform_index() {
    // containerd-backed Docker saves index.json -> index (all platforms) -> the one manifest it
    // has. Build such an archive around kiln's own save.
    let source = temp_root();
    let id = import_busybox(source.path());
    let mut members = read_members(&save_bytes(source.path(), "busybox"));
    let index_member = members
        .iter()
        .position(|m| m.name() == "index.json")
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&members[index_member].data).unwrap();
    let manifest = index["manifests"][0].clone();
    let absent = format!("sha256:{}", "0".repeat(64));
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": absent, "size": 10,
             "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": manifest["mediaType"], "digest": manifest["digest"], "size": manifest["size"],
             "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    });
    let nested_bytes = serde_json::to_vec(&nested).unwrap();
    let nested_hex = sha256_hex(&nested_bytes);
    let mut nested_member = members[index_member].clone();
    nested_member
        .header
        .set_path(format!("blobs/sha256/{nested_hex}"))
        .unwrap();
    nested_member.data = nested_bytes.clone();
    members.push(nested_member);
    let outer = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{nested_hex}"),
            "size": nested_bytes.len(),
            "annotations": {"io.containerd.image.name": "docker.io/library/nested:1"},
        }],
    });
    members[index_member].data = serde_json::to_vec(&outer).unwrap();
    members.retain(|m| m.name() != "manifest.json");
    let root = temp_root();
    let output = run_ok(
        kiln(root.path())
            .arg("load")
            .stdin(std::process::Stdio::from(write_temp(&write_members(
                &members,
            )))),
    );
    assert_eq!(stdout_of(&output), "Loaded image: nested:1\n");
    assert_eq!(inspect(root.path(), "nested:1")["Id"], id.as_str());
    assert_fsck_ok(root.path());
}
