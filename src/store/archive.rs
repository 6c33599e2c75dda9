//! Image archives: `save` writes one tarball that is at once a docker-archive (`manifest.json`,
//! `repositories`) and an OCI layout (`oci-layout`, `index.json`, `blobs/`), with uncompressed
//! layer blobs shared by both, as Docker 25+ writes it; `load` reads docker-archives and OCI
//! archives (plain, gzip or zstd), verifies every digest and restores names.
//!
//! Both stream: `save` decompresses each stored layer twice (once to learn the tar member's
//! size, once to write it) rather than holding it; `load` stages every member in a directory
//! under `<root>/tmp` and only when all digests check out renames the blobs into the store and
//! updates index.json, so bad input leaves the store as it was.

use super::compression::{self, Compression};
use super::image::{canonical_json, parse_manifest, Image, ImageConfig};
use super::index::{self, IndexEntry, REF_NAME};
use super::members::{resolve_symlink, MemberChecker, MemberKind};
use super::{blob, kiln_digest, parse_reference, Reference, Result, Store, StoreError};
use crate::digest::{Digest, DigestReader, DigestWriter};
use oci_spec::image::{Descriptor, MediaType};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

/// The annotation containerd and Docker 25+ put the full image name in.
pub const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// One image to save and the names to record for it (full normalised references).
pub struct SaveItem {
    pub image: Image,
    pub names: Vec<Reference>,
}

/// Docker's short form of a name: `docker.io/library/busybox:latest` -> `busybox:latest`.
pub fn familiar_name(reference: &Reference) -> String {
    let repository = familiar_repository(reference);
    match reference.tag() {
        Some(tag) => format!("{repository}:{tag}"),
        None => repository,
    }
}

fn familiar_repository(reference: &Reference) -> String {
    let repository = reference.repository();
    if reference.registry() == "docker.io" {
        repository
            .strip_prefix("library/")
            .filter(|r| !r.contains('/'))
            .unwrap_or(repository)
            .to_string()
    } else {
        format!("{}/{}", reference.registry(), repository)
    }
}

fn tar_error(source: io::Error) -> StoreError {
    StoreError::WriteFile {
        path: PathBuf::from("<archive>"),
        source,
    }
}

fn file_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_bytes<W: Write>(builder: &mut tar::Builder<W>, path: &str, bytes: &[u8]) -> Result<()> {
    let mut header = file_header(bytes.len() as u64);
    builder
        .append_data(&mut header, path, bytes)
        .map_err(tar_error)
}

fn append_dir<W: Write>(builder: &mut tar::Builder<W>, path: &str) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(0o755);
    header.set_mtime(0);
    builder
        .append_data(&mut header, path, io::empty())
        .map_err(tar_error)
}

/// A reader that fails if it yields other than `expected` bytes before EOF.
struct Exact<R> {
    inner: R,
    remaining: u64,
    what: String,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ended {} bytes early", self.what, self.remaining),
            ));
        }
        if n as u64 > self.remaining {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is longer than when it was measured", self.what),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

impl Store {
    /// Opens a stored layer blob decompressed, whatever its compression.
    pub fn read_layer_uncompressed(&self, digest: &Digest) -> Result<Box<dyn Read>> {
        let file = self.read_blob(digest)?;
        let (_, reader) = compression::decompress(io::BufReader::with_capacity(1 << 20, file))
            .map_err(|source| StoreError::ReadBlob {
                digest: digest.clone(),
                source,
            })?;
        Ok(reader)
    }

    /// Size and digest of a layer's uncompressed tar (reads it through once).
    fn measure_layer(&self, digest: &Digest) -> Result<(Digest, u64)> {
        let mut reader = DigestReader::new(self.read_layer_uncompressed(digest)?);
        io::copy(&mut reader, &mut io::sink()).map_err(|source| StoreError::ReadBlob {
            digest: digest.clone(),
            source,
        })?;
        let (diff_id, size, _) = reader.finish();
        Ok((diff_id, size))
    }

    /// Writes `items` as one tarball readable as a docker-archive and as an OCI archive.
    pub fn save<W: Write>(&self, items: &[SaveItem], out: W) -> Result<W> {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Deterministic);
        append_dir(&mut builder, "blobs/")?;
        append_dir(&mut builder, "blobs/sha256/")?;
        let mut written: std::collections::HashSet<Digest> = Default::default();
        let mut index_manifests: Vec<Descriptor> = Vec::new();
        let mut docker_manifest: Vec<serde_json::Value> = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for item in items {
            let image = &item.image;
            let diff_ids = image.diff_ids()?;
            let layer_digests = image.layer_digests()?;
            // Config.
            let config_id = image.id();
            if written.insert(config_id.clone()) {
                append_bytes(
                    &mut builder,
                    &format!("blobs/sha256/{}", config_id.hex()),
                    &image.config_bytes,
                )?;
            }
            // Layers, uncompressed, named by diff ID.
            let mut layer_descriptors = Vec::new();
            for (diff_id, (digest, stored)) in diff_ids
                .iter()
                .zip(layer_digests.iter().zip(image.layers()))
            {
                let stored_compression =
                    Compression::from_layer_media_type(stored.media_type().as_ref());
                let size = if stored_compression == Some(Compression::None) && digest == diff_id {
                    stored.size()
                } else {
                    let (measured, size) = self.measure_layer(digest)?;
                    if measured != *diff_id {
                        return Err(StoreError::DigestMismatch {
                            expected: diff_id.clone(),
                            actual: measured,
                        });
                    }
                    size
                };
                if written.insert(diff_id.clone()) {
                    let mut header = file_header(size);
                    let reader = Exact {
                        inner: DigestReader::new(self.read_layer_uncompressed(digest)?),
                        remaining: size,
                        what: format!("layer {digest}"),
                    };
                    let mut reader = reader;
                    builder
                        .append_data(
                            &mut header,
                            format!("blobs/sha256/{}", diff_id.hex()),
                            &mut reader,
                        )
                        .map_err(tar_error)?;
                    let (actual, _, _) = reader.inner.finish();
                    if actual != *diff_id {
                        return Err(StoreError::DigestMismatch {
                            expected: diff_id.clone(),
                            actual,
                        });
                    }
                }
                layer_descriptors.push(Descriptor::new(
                    MediaType::ImageLayer,
                    size,
                    super::oci_digest(diff_id),
                ));
            }
            // The manifest: the stored one when it already describes uncompressed layers named
            // by diff ID (its digest then survives a save/load round trip), else a new one.
            let reuse = image.manifest_media_type == MediaType::ImageManifest.to_string()
                && image
                    .layers()
                    .iter()
                    .zip(&layer_descriptors)
                    .all(|(stored, saved)| {
                        stored.digest() == saved.digest()
                            && stored.size() == saved.size()
                            && stored.media_type() == saved.media_type()
                    });
            let manifest_bytes = if reuse {
                image.manifest_bytes.clone()
            } else {
                let mut config_descriptor = image.manifest.config().clone();
                config_descriptor.set_media_type(MediaType::ImageConfig);
                let mut builder = oci_spec::image::ImageManifestBuilder::default()
                    .schema_version(2u32)
                    .media_type(MediaType::ImageManifest)
                    .config(config_descriptor)
                    .layers(layer_descriptors.clone());
                if let Some(annotations) = image.manifest.annotations() {
                    builder = builder.annotations(annotations.clone());
                }
                let manifest = builder
                    .build()
                    .map_err(|err| StoreError::Invalid(format!("cannot build manifest: {err}")))?;
                canonical_json(&manifest, "image manifest")?
            };
            let manifest_digest = Digest::of_bytes(&manifest_bytes);
            if written.insert(manifest_digest.clone()) {
                append_bytes(
                    &mut builder,
                    &format!("blobs/sha256/{}", manifest_digest.hex()),
                    &manifest_bytes,
                )?;
            }
            let descriptor_for = |name: Option<&Reference>| {
                let mut descriptor = Descriptor::new(
                    MediaType::ImageManifest,
                    manifest_bytes.len() as u64,
                    super::oci_digest(&manifest_digest),
                );
                if let Some(name) = name {
                    let mut annotations = HashMap::new();
                    annotations.insert(CONTAINERD_IMAGE_NAME.to_string(), name.whole());
                    if let Some(tag) = name.tag() {
                        annotations.insert(REF_NAME.to_string(), tag.to_string());
                    }
                    descriptor.set_annotations(Some(annotations));
                }
                descriptor
            };
            if item.names.is_empty() {
                index_manifests.push(descriptor_for(None));
            }
            for name in &item.names {
                index_manifests.push(descriptor_for(Some(name)));
                if let (Some(tag), Some(top)) = (name.tag(), diff_ids.last()) {
                    repositories
                        .entry(familiar_repository(name))
                        .or_default()
                        .insert(tag.to_string(), top.hex().to_string());
                }
            }
            docker_manifest.push(serde_json::json!({
                "Config": format!("blobs/sha256/{}", config_id.hex()),
                "RepoTags": item.names.iter().filter(|n| n.tag().is_some()).map(familiar_name).collect::<Vec<_>>(),
                "Layers": diff_ids.iter().map(|d| format!("blobs/sha256/{}", d.hex())).collect::<Vec<_>>(),
            }));
        }
        let mut oci_index = oci_spec::image::ImageIndex::default();
        oci_index.set_media_type(Some(MediaType::ImageIndex));
        oci_index.set_manifests(index_manifests);
        append_bytes(
            &mut builder,
            "index.json",
            &canonical_json(&oci_index, "index.json")?,
        )?;
        let manifest_json =
            serde_json::to_vec(&docker_manifest).map_err(|source| StoreError::Json {
                what: "manifest.json".into(),
                source,
            })?;
        append_bytes(&mut builder, "manifest.json", &manifest_json)?;
        append_bytes(&mut builder, "oci-layout", OCI_LAYOUT)?;
        if !repositories.is_empty() {
            let bytes = serde_json::to_vec(&repositories).map_err(|source| StoreError::Json {
                what: "repositories".into(),
                source,
            })?;
            append_bytes(&mut builder, "repositories", &bytes)?;
        }
        builder.into_inner().map_err(tar_error)
    }
}

/// A member of a loaded archive, staged on disk.
#[derive(Debug, Clone)]
struct Staged {
    file: PathBuf,
    digest: Digest,
    size: u64,
}

/// What was read from an archive before anything is committed.
struct Staging {
    _dir: tempfile::TempDir,
    files: HashMap<String, Staged>,
    /// Symlink and hard-link members: name -> archive path they stand for.
    aliases: HashMap<String, String>,
}

impl Staging {
    fn get(&self, path: &str) -> Result<&Staged> {
        let mut current =
            super::members::normalize(path).map_err(|err| StoreError::Invalid(err.to_string()))?;
        for _ in 0..40 {
            if let Some(staged) = self.files.get(&current) {
                return Ok(staged);
            }
            match self.aliases.get(&current) {
                Some(next) => current = next.clone(),
                None => break,
            }
        }
        Err(StoreError::Invalid(format!(
            "archive has no member {path:?}"
        )))
    }

    fn read_small(&self, path: &str) -> Result<Vec<u8>> {
        let staged = self.get(path)?;
        if staged.size > 64 << 20 {
            return Err(StoreError::Invalid(format!(
                "archive member {path:?} is too large for a JSON document ({} bytes)",
                staged.size
            )));
        }
        std::fs::read(&staged.file).map_err(|source| StoreError::ReadFile {
            path: staged.file.clone(),
            source,
        })
    }

    /// The staged blob `descriptor` names, checked against its digest and size.
    fn blob(&self, descriptor: &Descriptor, what: &str) -> Result<(Digest, &Staged)> {
        let digest = kiln_digest(descriptor.digest(), what)?;
        let staged = self
            .get(&format!("blobs/sha256/{}", digest.hex()))
            .map_err(|_| {
                StoreError::Invalid(format!(
                    "{what} names blob {digest}, which the archive lacks"
                ))
            })?;
        if staged.digest != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest,
                actual: staged.digest.clone(),
            });
        }
        if staged.size != descriptor.size() {
            return Err(StoreError::SizeMismatch {
                digest,
                expected: descriptor.size(),
                actual: staged.size,
            });
        }
        Ok((digest, staged))
    }
}

/// An image `load` restored.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    pub id: Digest,
    pub manifest_digest: Digest,
    pub names: Vec<Reference>,
}

/// An image found in an archive, ready to commit.
struct Found {
    manifest_bytes: Vec<u8>,
    manifest_media_type: String,
    blobs: Vec<(Digest, Staged)>,
    names: Vec<Reference>,
    id: Digest,
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Json {
        what: what.to_string(),
        source,
    })
}

/// Digest of a layer's uncompressed content, whatever its compression.
fn diff_id_of(staged: &Staged, what: &str) -> Result<(Compression, Digest)> {
    let file = std::fs::File::open(&staged.file).map_err(|source| StoreError::ReadFile {
        path: staged.file.clone(),
        source,
    })?;
    let (compression, reader) =
        compression::decompress(io::BufReader::with_capacity(1 << 20, file))
            .map_err(|err| StoreError::Invalid(format!("{what}: {err}")))?;
    if compression == Compression::None {
        return Ok((compression, staged.digest.clone()));
    }
    let mut reader = DigestReader::new(reader);
    io::copy(&mut reader, &mut io::sink())
        .map_err(|err| StoreError::Invalid(format!("{what}: corrupt compressed layer: {err}")))?;
    Ok((compression, reader.finish().0))
}

/// Checks each layer's uncompressed digest against the config's diff IDs.
fn check_diff_ids(
    config: &ImageConfig,
    layers: &[&Staged],
    what: &str,
) -> Result<Vec<Compression>> {
    let diff_ids = config.diff_ids()?;
    if diff_ids.len() != layers.len() {
        return Err(StoreError::Invalid(format!(
            "{what}: {} layers but the config lists {} diff IDs",
            layers.len(),
            diff_ids.len()
        )));
    }
    let mut compressions = Vec::new();
    for (i, (staged, expected)) in layers.iter().zip(&diff_ids).enumerate() {
        let (compression, actual) = diff_id_of(staged, &format!("{what} layer {i}"))?;
        if actual != *expected {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        compressions.push(compression);
    }
    Ok(compressions)
}

impl Store {
    /// Reads an archive into a staging directory under `<root>/tmp`, checking member names.
    fn stage(&self, reader: &mut dyn Read) -> Result<Staging> {
        let dir = tempfile::Builder::new()
            .prefix(&super::owned_name("load-"))
            .tempdir_in(self.tmp_dir())
            .map_err(|source| StoreError::TempFile {
                dir: self.tmp_dir(),
                source,
            })?;
        let invalid = |message: String| StoreError::Invalid(format!("archive: {message}"));
        let (_, decompressed) =
            compression::decompress(reader).map_err(|err| invalid(err.to_string()))?;
        let mut archive = tar::Archive::new(decompressed);
        let mut checker = MemberChecker::default();
        let mut files = HashMap::new();
        let mut aliases = HashMap::new();
        let entries = archive
            .entries()
            .map_err(|err| invalid(format!("not a tar archive: {err}")))?;
        let mut n_members = 0usize;
        for entry in entries {
            let mut entry =
                entry.map_err(|err| invalid(format!("corrupt or truncated tar: {err}")))?;
            n_members += 1;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned());
            let entry_type = entry.header().entry_type();
            let kind = match entry_type {
                tar::EntryType::Directory => MemberKind::Directory,
                tar::EntryType::Symlink => MemberKind::Symlink,
                tar::EntryType::Link => MemberKind::HardLink {
                    target: link.as_deref().unwrap_or(""),
                },
                tar::EntryType::Regular | tar::EntryType::Continuous => MemberKind::File,
                other => {
                    return Err(invalid(format!(
                        "member {name:?} has unsupported type {other:?}"
                    )))
                }
            };
            let path = checker
                .check(&name, kind)
                .map_err(|err| invalid(err.to_string()))?;
            match kind {
                MemberKind::Directory | MemberKind::Other => {}
                MemberKind::Symlink => {
                    let target = link.unwrap_or_default();
                    let resolved = resolve_symlink(&path, &target).ok_or_else(|| {
                        invalid(format!(
                            "symlink {path:?} points outside the archive ({target:?})"
                        ))
                    })?;
                    files.remove(&path);
                    aliases.insert(path, resolved);
                }
                MemberKind::HardLink { target } => {
                    let target = super::members::normalize(target)
                        .map_err(|err| invalid(err.to_string()))?;
                    files.remove(&path);
                    aliases.insert(path, target);
                }
                MemberKind::File => {
                    let file = dir
                        .path()
                        .join(files.len().to_string() + "-" + &n_members.to_string());
                    let out =
                        std::fs::File::create(&file).map_err(|source| StoreError::WriteFile {
                            path: file.clone(),
                            source,
                        })?;
                    let mut writer = DigestWriter::new(BufWriter::with_capacity(1 << 20, out));
                    let expected_size = entry.size();
                    let copied = io::copy(&mut entry, &mut writer).map_err(|err| {
                        invalid(format!("corrupt or truncated tar at {name:?}: {err}"))
                    })?;
                    // The tar reader hands out what is there: a short member means the archive
                    // was cut.
                    if copied != expected_size {
                        return Err(invalid(format!(
                            "truncated tar: member {name:?} has {copied} of its {expected_size} bytes"
                        )));
                    }
                    let (digest, size, buffered) = writer.finish();
                    buffered.into_inner().map_err(|err| StoreError::WriteFile {
                        path: file.clone(),
                        source: err.into_error(),
                    })?;
                    // Blobs are named after their digest: check each one as it arrives.
                    if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                        let named: Digest = format!("sha256:{hex}").parse().map_err(|_| {
                            invalid(format!("member {path:?} is not named by a sha256 digest"))
                        })?;
                        if named != digest {
                            return Err(invalid(format!(
                                "blob {path:?} does not match its digest: content hashes to {digest}"
                            )));
                        }
                    }
                    aliases.remove(&path);
                    files.insert(path, Staged { file, digest, size });
                }
            }
        }
        if n_members == 0 {
            return Err(invalid("empty archive".into()));
        }
        Ok(Staging {
            _dir: dir,
            files,
            aliases,
        })
    }

    /// Loads a docker-archive or OCI archive (plain, gzip or zstd). Nothing is committed unless
    /// every image in it checks out.
    pub fn load(&self, reader: &mut dyn Read) -> Result<Vec<LoadedImage>> {
        let _pin = self.pin()?;
        let staging = self.stage(reader)?;
        let has_index = staging.get("index.json").is_ok();
        let has_docker_manifest = staging.get("manifest.json").is_ok();
        let found = if has_index {
            self.found_from_oci(&staging)?
        } else if has_docker_manifest {
            self.found_from_docker(&staging)?
        } else {
            return Err(StoreError::Invalid(
                "archive: neither an OCI archive (no index.json) nor a docker-archive (no manifest.json)"
                    .into(),
            ));
        };
        // Commit: blobs by rename (each already verified), then index.json once.
        let mut n_renamed = 0;
        for image in &found {
            for (digest, staged) in &image.blobs {
                let target = self.blob_path(digest);
                if target.exists() {
                    continue;
                }
                let file =
                    std::fs::File::open(&staged.file).map_err(|source| StoreError::CommitBlob {
                        digest: digest.clone(),
                        source,
                    })?;
                file.sync_all().map_err(|source| StoreError::CommitBlob {
                    digest: digest.clone(),
                    source,
                })?;
                // Two images may share a blob: the first rename moved it already.
                if !staged.file.exists() {
                    continue;
                }
                std::fs::rename(&staged.file, &target).map_err(|source| {
                    StoreError::CommitBlob {
                        digest: digest.clone(),
                        source,
                    }
                })?;
                n_renamed += 1;
            }
            self.write_blob_bytes(&image.manifest_bytes)?;
        }
        if n_renamed > 0 {
            blob::sync_dir(&self.blobs_dir()).map_err(|source| StoreError::WriteFile {
                path: self.blobs_dir(),
                source,
            })?;
        }
        self.update_index(|entries| {
            for image in &found {
                let digest = Digest::of_bytes(&image.manifest_bytes);
                let entry = IndexEntry::new(
                    &digest,
                    image.manifest_bytes.len() as u64,
                    &image.manifest_media_type,
                    None,
                );
                for name in &image.names {
                    index::apply_name(entries, &entry, name);
                }
                index::apply_unnamed(entries, &entry);
            }
            Ok(())
        })?;
        Ok(found
            .into_iter()
            .map(|f| LoadedImage {
                manifest_digest: Digest::of_bytes(&f.manifest_bytes),
                id: f.id,
                names: f.names,
            })
            .collect())
    }

    fn found_from_oci(&self, staging: &Staging) -> Result<Vec<Found>> {
        let index_bytes = staging.read_small("index.json")?;
        let index: oci_spec::image::ImageIndex = parse_json(&index_bytes, "archive index.json")?;
        // Names Docker recorded, by config path, for archives whose index lacks them.
        let docker_names: HashMap<String, Vec<String>> = match staging.read_small("manifest.json") {
            Ok(bytes) => parse_json::<Vec<DockerManifestEntry>>(&bytes, "archive manifest.json")?
                .into_iter()
                .map(|e| (e.config, e.repo_tags.unwrap_or_default()))
                .collect(),
            Err(_) => HashMap::new(),
        };
        let mut found: Vec<Found> = Vec::new();
        for outer in index.manifests() {
            let descriptor = &select_manifest(staging, outer)?;
            let what = format!("archive manifest {}", descriptor.digest());
            let (manifest_digest, manifest_staged) = staging.blob(descriptor, &what)?;
            let manifest_bytes =
                staging.read_small(&format!("blobs/sha256/{}", manifest_digest.hex()))?;
            let manifest = parse_manifest(&manifest_bytes, &what)?;
            let (config_digest, config_staged) = staging.blob(manifest.config(), &what)?;
            let config_bytes =
                staging.read_small(&format!("blobs/sha256/{}", config_digest.hex()))?;
            let config =
                ImageConfig::from_bytes(&config_bytes, &format!("config {config_digest}"))?;
            let mut blobs = vec![
                (manifest_digest.clone(), manifest_staged.clone()),
                (config_digest.clone(), config_staged.clone()),
            ];
            let mut layers = Vec::new();
            for layer in manifest.layers() {
                let (digest, staged) = staging.blob(layer, &what)?;
                layers.push(staged);
                blobs.push((digest, staged.clone()));
            }
            check_diff_ids(&config, &layers, &what)?;
            let annotations = outer.annotations().clone().unwrap_or_default();
            let mut names = Vec::new();
            if let Some(name) = annotations.get(CONTAINERD_IMAGE_NAME) {
                names.push(parse_reference(name)?);
            } else if let Some(tags) =
                docker_names.get(&format!("blobs/sha256/{}", config_digest.hex()))
            {
                for tag in tags {
                    names.push(parse_reference(tag)?);
                }
            } else if let Some(name) = annotations.get(REF_NAME) {
                names.push(parse_reference(name)?);
            }
            let manifest_media_type = manifest
                .media_type()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_else(|| MediaType::ImageManifest.to_string());
            if let Some(existing) = found
                .iter_mut()
                .find(|f| Digest::of_bytes(&f.manifest_bytes) == manifest_digest)
            {
                existing.names.extend(names);
                continue;
            }
            found.push(Found {
                manifest_bytes,
                manifest_media_type,
                blobs,
                names,
                id: config_digest,
            });
        }
        if found.is_empty() {
            return Err(StoreError::Invalid(
                "archive index.json lists no images".into(),
            ));
        }
        Ok(found)
    }

    fn found_from_docker(&self, staging: &Staging) -> Result<Vec<Found>> {
        let bytes = staging.read_small("manifest.json")?;
        let entries: Vec<DockerManifestEntry> = parse_json(&bytes, "archive manifest.json")?;
        let mut found = Vec::new();
        for entry in entries {
            let what = format!("archive image {}", entry.config);
            let config_staged = staging.get(&entry.config)?;
            // Older archives name the config `<image id>.json`: the name is a digest to check.
            let base = entry.config.rsplit('/').next().unwrap_or_default();
            if let Some(hex) = base.strip_suffix(".json") {
                if let Ok(named) = format!("sha256:{hex}").parse::<Digest>() {
                    if named != config_staged.digest {
                        return Err(StoreError::DigestMismatch {
                            expected: named,
                            actual: config_staged.digest.clone(),
                        });
                    }
                }
            }
            let config_bytes = staging.read_small(&entry.config)?;
            let config = ImageConfig::from_bytes(&config_bytes, &what)?;
            let layers: Vec<&Staged> = entry
                .layers
                .iter()
                .map(|path| staging.get(path))
                .collect::<Result<_>>()?;
            let compressions = check_diff_ids(&config, &layers, &what)?;
            let config_digest = config_staged.digest.clone();
            let layer_descriptors: Vec<Descriptor> = layers
                .iter()
                .zip(&compressions)
                .map(|(staged, compression)| {
                    Descriptor::new(
                        MediaType::from(compression.oci_layer_media_type()),
                        staged.size,
                        super::oci_digest(&staged.digest),
                    )
                })
                .collect();
            let manifest = oci_spec::image::ImageManifestBuilder::default()
                .schema_version(2u32)
                .media_type(MediaType::ImageManifest)
                .config(Descriptor::new(
                    MediaType::ImageConfig,
                    config_staged.size,
                    super::oci_digest(&config_digest),
                ))
                .layers(layer_descriptors)
                .build()
                .map_err(|err| StoreError::Invalid(format!("cannot build manifest: {err}")))?;
            let manifest_bytes = canonical_json(&manifest, "image manifest")?;
            let mut blobs = vec![(config_digest.clone(), config_staged.clone())];
            blobs.extend(layers.iter().map(|s| (s.digest.clone(), (*s).clone())));
            let names = entry
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| parse_reference(t))
                .collect::<Result<_>>()?;
            found.push(Found {
                manifest_bytes,
                manifest_media_type: MediaType::ImageManifest.to_string(),
                blobs,
                names,
                id: config_digest,
            });
        }
        if found.is_empty() {
            return Err(StoreError::Invalid(
                "archive manifest.json lists no images".into(),
            ));
        }
        Ok(found)
    }
}

/// Media types of a multi-platform index (OCI and Docker's manifest list).
fn is_index_media_type(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.index.v1+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json"
    )
}

/// The image manifest an archive's index.json entry stands for: the entry itself, or, when it
/// is a multi-platform index (as containerd-backed Docker saves), the child manifest that the
/// archive actually holds, preferring this machine's platform.
fn select_manifest(staging: &Staging, outer: &Descriptor) -> Result<Descriptor> {
    let what = format!("archive manifest {}", outer.digest());
    let media_type = outer.media_type().to_string();
    if index::is_manifest_media_type(&media_type) {
        return Ok(outer.clone());
    }
    if !is_index_media_type(&media_type) {
        return Err(StoreError::UnknownMediaType { what, media_type });
    }
    let (digest, _) = staging.blob(outer, &what)?;
    let bytes = staging.read_small(&format!("blobs/sha256/{}", digest.hex()))?;
    let nested: oci_spec::image::ImageIndex = parse_json(&bytes, &what)?;
    let present: Vec<&Descriptor> = nested
        .manifests()
        .iter()
        .filter(|child| index::is_manifest_media_type(child.media_type().as_ref()))
        .filter(|child| {
            kiln_digest(child.digest(), &what)
                .map(|d| staging.get(&format!("blobs/sha256/{}", d.hex())).is_ok())
                .unwrap_or(false)
        })
        .collect();
    let host_arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let on_host = present.iter().find(|child| {
        child.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == "linux" && p.architecture().to_string() == host_arch
        })
    });
    on_host
        .or(present.first())
        .map(|child| (*child).clone())
        .ok_or_else(|| {
            StoreError::Invalid(format!(
                "{what} is a multi-platform index but the archive holds none of its images"
            ))
        })
}

/// One entry of a docker-archive's manifest.json.
#[derive(Debug, serde::Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_names_as_docker_prints_them() {
        let check = |input: &str, expect: &str| {
            assert_eq!(familiar_name(&parse_reference(input).unwrap()), expect);
        };
        check("busybox", "busybox:latest");
        check("docker.io/foo/bar:1", "foo/bar:1");
        check("quay.io/a/b:2", "quay.io/a/b:2");
        check("localhost:5000/x", "localhost:5000/x:latest");
    }
}
