//! Support for the store and image-command tests: the busybox test image, a snapshot of a
//! store's state (to prove bad input changed nothing), and tar surgery for crafting bad
//! archives (including member names the `tar` crate refuses to write).

#![allow(dead_code)]

use super::common;
use std::path::Path;

/// Imports the busybox rootfs as `busybox` with a fixed creation time; returns the image ID.
pub fn import_busybox(root: &Path) -> String {
    let output = common::run_ok(
        common::kiln(root)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("import")
            .arg(common::busybox_rootfs_tar())
            .arg("busybox"),
    );
    common::stdout_of(&output).trim().to_string()
}

/// Everything that tells whether a store changed: index.json bytes and the blob names.
#[derive(Debug, PartialEq, Eq)]
pub struct StoreState {
    pub index: String,
    pub blobs: Vec<String>,
}

pub fn store_state(root: &Path) -> StoreState {
    let index = std::fs::read_to_string(root.join("index.json")).unwrap_or_default();
    let mut blobs: Vec<String> = std::fs::read_dir(root.join("blobs/sha256"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    blobs.sort();
    StoreState { index, blobs }
}

/// Asserts `kiln fsck` passes.
pub fn assert_fsck_ok(root: &Path) {
    let output = common::run_ok(common::kiln(root).arg("fsck"));
    assert!(common::stdout_of(&output).starts_with("ok:"));
}

/// One tar member: its header (name included) and data.
#[derive(Clone)]
pub struct Member {
    pub header: tar::Header,
    pub data: Vec<u8>,
}

impl Member {
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.header.path_bytes()).into_owned()
    }
}

/// Reads a (plain) tar into members.
pub fn read_members(bytes: &[u8]) -> Vec<Member> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            Member {
                header: entry.header().clone(),
                data,
            }
        })
        .collect()
}

/// Writes members back into a tar, headers as they are (sizes fixed up).
pub fn write_members(members: &[Member]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for member in members {
        let mut header = member.header.clone();
        header.set_size(member.data.len() as u64);
        header.set_cksum();
        builder.append(&header, &member.data[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A header with a raw name (and link name), bypassing the tar crate's path checks so tests
/// can write `../x` and `/abs`.
pub fn raw_header(name: &str, entry_type: tar::EntryType, link: Option<&str>) -> tar::Header {
    let mut header = tar::Header::new_old();
    {
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
    }
    header.set_entry_type(entry_type);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(0);
    header.set_cksum();
    header
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `kiln save` of one image into bytes.
pub fn save_bytes(root: &Path, image: &str) -> Vec<u8> {
    common::run_ok(common::kiln(root).arg("save").arg(image)).stdout
}

/// Parses `kiln inspect` output (an array) and returns the first object.
pub fn inspect(root: &Path, image: &str) -> serde_json::Value {
    let output = common::run_ok(common::kiln(root).arg("inspect").arg(image));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    value[0].clone()
}

/// Writes a tar holding one file `big` of `size` pseudo-random (incompressible) bytes.
pub fn write_big_rootfs(path: &Path, size: u64) {
    struct Noise {
        state: u64,
        remaining: u64,
    }
    impl std::io::Read for Noise {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (buf.len() as u64).min(self.remaining) as usize / 8 * 8;
            let n = if n == 0 { self.remaining as usize } else { n };
            for chunk in buf[..n].chunks_mut(8) {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                let bytes = self.state.to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
            self.remaining -= n as u64;
            Ok(n)
        }
    }
    let file = std::fs::File::create(path).unwrap();
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    builder
        .append_data(
            &mut header,
            "big",
            Noise {
                state: 0x9e3779b97f4a7c15,
                remaining: size,
            },
        )
        .unwrap();
    builder
        .into_inner()
        .unwrap()
        .into_inner()
        .unwrap()
        .sync_all()
        .unwrap();
}

/// sha256 of a file, by coreutils' sha256sum (fast even when the tests are built unoptimised).
pub fn sha256_file(path: &Path) -> String {
    let output = common::run_ok(std::process::Command::new("sha256sum").arg(path));
    common::stdout_of(&output)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Writes a docker-archive (manifest.json, config, one layer) around an existing layer tar,
/// streaming it; returns the image ID.
pub fn write_docker_archive(path: &Path, layer_tar: &Path, name: &str) -> String {
    let diff_id = format!("sha256:{}", sha256_file(layer_tar));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "test"}],
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_hex = sha256_hex(&config_bytes);
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [name],
        "Layers": ["layer/layer.tar"],
    }]);
    let file = std::fs::File::create(path).unwrap();
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |name: &str, size: u64, data: &mut dyn std::io::Read| {
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, name, data).unwrap();
    };
    add(
        &format!("{config_hex}.json"),
        config_bytes.len() as u64,
        &mut &config_bytes[..],
    );
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    add(
        "manifest.json",
        manifest_bytes.len() as u64,
        &mut &manifest_bytes[..],
    );
    let layer_size = std::fs::metadata(layer_tar).unwrap().len();
    add(
        "layer/layer.tar",
        layer_size,
        &mut std::fs::File::open(layer_tar).unwrap(),
    );
    builder
        .into_inner()
        .unwrap()
        .into_inner()
        .unwrap()
        .sync_all()
        .unwrap();
    format!("sha256:{config_hex}")
}

/// Runs a command under `/usr/bin/time -v` and returns its peak resident set size in KiB.
pub fn peak_rss_kib(command: &mut std::process::Command) -> u64 {
    common::require_program("time", "time");
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
    let envs: Vec<_> = command
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
        .collect();
    let mut timed = std::process::Command::new("/usr/bin/time");
    timed.arg("-v").arg(program).args(args);
    for (key, value) in envs {
        match value {
            Some(value) => timed.env(key, value),
            None => timed.env_remove(key),
        };
    }
    let output = common::run_ok(&mut timed);
    let stderr = common::stderr_of(&output);
    stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .unwrap_or_else(|| panic!("no RSS in /usr/bin/time output: {stderr}"))
        .trim()
        .parse()
        .unwrap()
}
