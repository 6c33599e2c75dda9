//! Support for the layer tests: hand-made tar streams (including names a well-behaved writer
//! refuses, for the escape tests), full tree listings to compare directories, and a minimal
//! OCI image layout so that `umoci unpack` can serve as an independent layer reader.

#![allow(dead_code)]

use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Builds a tar stream entry by entry, writing names verbatim (even `../x`).
#[derive(Default)]
pub struct RawTar {
    bytes: Vec<u8>,
}

pub struct RawEntry<'a> {
    pub name: &'a str,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link: &'a str,
    pub data: &'a [u8],
    pub xattrs: &'a [(&'a str, &'a [u8])],
    pub device: (u32, u32),
}

impl<'a> RawEntry<'a> {
    pub fn new(name: &'a str, kind: tar::EntryType) -> Self {
        RawEntry {
            name,
            kind,
            mode: if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            mtime: 1_000_000,
            link: "",
            data: b"",
            xattrs: &[],
            device: (0, 0),
        }
    }
    pub fn file(name: &'a str, data: &'a [u8]) -> Self {
        RawEntry {
            data,
            ..RawEntry::new(name, tar::EntryType::Regular)
        }
    }
    pub fn dir(name: &'a str) -> Self {
        RawEntry::new(name, tar::EntryType::Directory)
    }
    pub fn symlink(name: &'a str, target: &'a str) -> Self {
        RawEntry {
            link: target,
            mode: 0o777,
            ..RawEntry::new(name, tar::EntryType::Symlink)
        }
    }
    pub fn hardlink(name: &'a str, target: &'a str) -> Self {
        RawEntry {
            link: target,
            ..RawEntry::new(name, tar::EntryType::Link)
        }
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

impl RawTar {
    pub fn new() -> Self {
        RawTar::default()
    }

    pub fn add(mut self, entry: RawEntry<'_>) -> Self {
        if !entry.xattrs.is_empty() {
            let mut body = Vec::new();
            for (key, value) in entry.xattrs {
                body.extend(pax_record(&format!("SCHILY.xattr.{key}"), value));
            }
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::XHeader);
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            self.bytes.extend_from_slice(header.as_bytes());
            self.push_data(&body);
        }
        let mut header = tar::Header::new_ustar();
        {
            let raw = header.as_old_mut();
            assert!(entry.name.len() <= 100 && entry.link.len() <= 100);
            raw.name[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
            raw.linkname[..entry.link.len()].copy_from_slice(entry.link.as_bytes());
        }
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_uid(entry.uid);
        header.set_gid(entry.gid);
        header.set_mtime(entry.mtime);
        header.set_size(entry.data.len() as u64);
        header.set_device_major(entry.device.0).unwrap();
        header.set_device_minor(entry.device.1).unwrap();
        header.set_cksum();
        self.bytes.extend_from_slice(header.as_bytes());
        self.push_data(entry.data);
        self
    }

    fn push_data(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat(0u8).take(pad));
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.extend(std::iter::repeat(0u8).take(1024));
        self.bytes
    }
}

/// xattrs of `path` (not following a final symlink) whose names start with `prefix`.
pub fn xattrs(path: &Path, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let name_text = String::from_utf8_lossy(name).into_owned();
        if !name_text.starts_with(prefix) {
            continue;
        }
        let c_name = CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        let got = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(got >= 0, "lgetxattr {name_text} of {}", path.display());
        value.truncate(got as usize);
        out.insert(name_text, value);
    }
    out
}

/// Sets an xattr on `path` (not following a final symlink).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let c_name = CString::new(name).unwrap();
    let result = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        result,
        0,
        "lsetxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// One line per entry below `root` (root excluded), sorted: path, type, mode, uid:gid, then
/// size + sha256 for files, target for symlinks, rdev for devices, `user.*` xattrs, and the
/// hard-link group (other paths sharing the inode) for multiply-linked non-directories.
pub fn tree_listing(root: &Path) -> Vec<String> {
    let mut entries: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.unwrap();
        entries.push((
            entry.path().to_path_buf(),
            entry.path().symlink_metadata().unwrap(),
        ));
    }
    let mut inode_paths: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    for (path, metadata) in &entries {
        if !metadata.is_dir() && metadata.nlink() > 1 {
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            inode_paths
                .entry((metadata.dev(), metadata.ino()))
                .or_default()
                .push(relative);
        }
    }
    let mut lines = Vec::new();
    for (path, metadata) in &entries {
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let file_type = metadata.file_type();
        let kind = if file_type.is_dir() {
            "dir".to_string()
        } else if file_type.is_file() {
            let content = std::fs::read(path).unwrap();
            format!(
                "file size={} sha256={}",
                content.len(),
                hex::encode(Sha256::digest(&content))
            )
        } else if file_type.is_symlink() {
            format!("symlink -> {}", std::fs::read_link(path).unwrap().display())
        } else if file_type.is_char_device() {
            format!(
                "char {}:{}",
                libc::major(metadata.rdev()),
                libc::minor(metadata.rdev())
            )
        } else if file_type.is_block_device() {
            format!(
                "block {}:{}",
                libc::major(metadata.rdev()),
                libc::minor(metadata.rdev())
            )
        } else if file_type.is_fifo() {
            "fifo".to_string()
        } else {
            "socket".to_string()
        };
        let mode = if file_type.is_symlink() {
            0o777
        } else {
            metadata.mode() & 0o7777
        };
        let mut line = format!(
            "{relative} {kind} mode={mode:04o} owner={}:{}",
            metadata.uid(),
            metadata.gid()
        );
        for (name, value) in xattrs(path, "user.") {
            line.push_str(&format!(
                " xattr {name}={}",
                String::from_utf8_lossy(&value)
            ));
        }
        if let Some(group) = inode_paths.get(&(metadata.dev(), metadata.ino())) {
            line.push_str(&format!(" links={}", group.join(",")));
        }
        lines.push(line);
    }
    lines
}

/// Asserts two listings are equal, printing only the differing lines.
pub fn assert_same_listing(what: &str, expected: &[String], actual: &[String]) {
    if expected == actual {
        return;
    }
    let missing: Vec<_> = expected.iter().filter(|l| !actual.contains(l)).collect();
    let extra: Vec<_> = actual.iter().filter(|l| !expected.contains(l)).collect();
    panic!(
        "{what}: listings differ\nonly in expected:\n  {}\nonly in actual:\n  {}",
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        extra
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// Writes `bytes` to a file.
pub fn write_file(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(bytes).unwrap();
}

/// A layer blob for [`write_oci_layout`].
pub struct LayoutLayer {
    pub blob: PathBuf,
    pub media_type: oci_spec::image::MediaType,
    pub diff_id: String,
}

fn sha256_file(path: &Path) -> (String, u64) {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).unwrap();
    (hex::encode(hasher.finalize()), size)
}

fn put_blob(layout: &Path, bytes: &[u8]) -> (String, u64) {
    let hex = hex::encode(Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    (hex, bytes.len() as u64)
}

/// Writes a minimal OCI image layout at `layout` (oci-layout, blobs, config, manifest and
/// index.json naming the manifest `ref_name`), as an independent reader like umoci expects.
pub fn write_oci_layout(layout: &Path, layers: &[LayoutLayer], ref_name: &str) {
    use oci_spec::image::*;
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .unwrap()
        .to_file(layout.join("oci-layout"))
        .unwrap();
    let mut layer_descriptors = Vec::new();
    for layer in layers {
        let (hex, size) = sha256_file(&layer.blob);
        std::fs::copy(&layer.blob, layout.join("blobs/sha256").join(&hex)).unwrap();
        let digest: oci_spec::image::Digest = format!("sha256:{hex}").parse().unwrap();
        layer_descriptors.push(Descriptor::new(layer.media_type.clone(), size, digest));
    }
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .rootfs(
            RootFsBuilder::default()
                .diff_ids(layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let (config_hex, config_size) = put_blob(layout, config.to_string().unwrap().as_bytes());
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            config_size,
            format!("sha256:{config_hex}")
                .parse::<oci_spec::image::Digest>()
                .unwrap(),
        ))
        .layers(layer_descriptors)
        .build()
        .unwrap();
    let (manifest_hex, manifest_size) = put_blob(layout, manifest.to_string().unwrap().as_bytes());
    let mut manifest_descriptor = Descriptor::new(
        MediaType::ImageManifest,
        manifest_size,
        format!("sha256:{manifest_hex}")
            .parse::<oci_spec::image::Digest>()
            .unwrap(),
    );
    manifest_descriptor.set_annotations(Some(
        [(ANNOTATION_REF_NAME.to_string(), ref_name.to_string())]
            .into_iter()
            .collect(),
    ));
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_descriptor])
        .build()
        .unwrap()
        .to_file(layout.join("index.json"))
        .unwrap();
}
