//! Whole images between the store and a registry: pull (manifest or index, platform choice,
//! parallel verified layer download, blobs already present skipped) and push (HEAD-skip,
//! cross-repository mount, upload, manifest PUT, optional recompression).
//!
//! The only registry file that knows the store, and only through its public API (blob
//! writers, `put_manifest`, `set_name`, `resolve`): never its on-disk layout. Nothing half
//! done is visible: pulled blobs are committed only once their digests verified, and the image
//! is listed in index.json (by `put_manifest`/`set_name`) only after every blob is in.

use super::client::{BlobSource, Client, PushOutcome};
use super::gzip;
use super::platform::{fetch_image_manifest, Platform};
use super::reference::ImageRef;
use super::transfer::{self, BlobDownload, BlobStatus, BlobUpload, Progress};
use super::{RegistryError, MEDIA_TYPE_OCI_MANIFEST};
use crate::digest::{Digest, DigestWriter};
use crate::store::compression::{decompress, zstd_writer};
use crate::store::{kiln_digest, parse_reference, Compression, Store};
use rayon::prelude::*;
use std::collections::HashMap;
use std::io::Write as _;

/// What a pull did.
#[derive(Clone, Debug)]
pub struct PullReport {
    /// The full name the image got in the store.
    pub name: String,
    pub manifest_digest: Digest,
    /// The index the manifest was chosen from, if the reference named one.
    pub index_digest: Option<Digest>,
    /// Blobs (config and layers) downloaded, and those the store already had.
    pub fetched: Vec<Digest>,
    pub present: Vec<Digest>,
}

/// What a push did.
#[derive(Clone, Debug)]
pub struct PushReport {
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    /// One entry per blob (config first, then layers), in manifest order.
    pub blobs: Vec<(Digest, PushOutcome)>,
}

/// The compression `kiln push --compression` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushCompression {
    Gzip,
    Zstd,
}

/// gzip level for `--compression gzip`: Go's and zlib's default, what Docker and Buildah
/// write.
const GZIP_LEVEL: u32 = 6;

fn store_error(err: crate::store::StoreError) -> RegistryError {
    RegistryError::Store(Box::new(err))
}

/// Pulls `image_ref` into `store` and names it (`repo:tag`, or `repo@<manifest digest>` for a
/// digest pull, plus `repo@<index digest>` when the digest named an index). The store pin keeps
/// `prune` away from blobs committed before the image is listed.
pub fn pull_image(
    store: &Store,
    client: &Client,
    image_ref: &ImageRef,
    platform: &Platform,
    n_parallel: usize,
    progress: Progress,
) -> Result<PullReport, RegistryError> {
    let repository = image_ref.repository();
    let resolved = fetch_image_manifest(
        client,
        repository,
        &image_ref.manifest_reference(),
        platform,
    )?;
    let manifest_digest = resolved.manifest.digest.clone();
    let what = format!("manifest {manifest_digest} of {image_ref}");
    let manifest = crate::store::image::parse_manifest(&resolved.manifest.bytes, &what)
        .map_err(store_error)?;

    let _pin = store.pin().map_err(store_error)?;
    let mut wanted: Vec<(Digest, u64)> = Vec::new();
    for descriptor in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let digest = kiln_digest(descriptor.digest(), &what).map_err(store_error)?;
        if !wanted.iter().any(|(d, _)| *d == digest) {
            wanted.push((digest, descriptor.size()));
        }
    }
    let (present, missing): (Vec<_>, Vec<_>) = wanted
        .into_iter()
        .partition(|(digest, size)| store.blob_size(digest).ok() == Some(*size));
    for (digest, _) in &present {
        progress(digest, BlobStatus::AlreadyExists);
    }
    let mut downloads = Vec::new();
    for (digest, size) in &missing {
        downloads.push(BlobDownload {
            digest: digest.clone(),
            size: Some(*size),
            // The client verifies each download's digest as it arrives: not hashed twice.
            writer: store
                .blob_writer_digested_by_caller()
                .map_err(store_error)?,
        });
    }
    let results = transfer::download_blobs_with_progress(
        client, repository, downloads, n_parallel, progress,
    )?;
    // Commit what verified (content-addressed, harmless even if another blob failed), then
    // report the first failure; the image itself is listed only when all are in.
    let mut first_error = None;
    for ((digest, _), result) in missing.iter().zip(results) {
        match result {
            Ok(writer) => {
                if let Err(err) = writer.commit_digested(digest) {
                    first_error.get_or_insert(store_error(err));
                }
            }
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    if let Some(err) = first_error {
        return Err(err);
    }

    let image = store
        .put_manifest(&resolved.manifest.bytes)
        .map_err(store_error)?;
    let name = match image_ref.digest() {
        // A digest pull is named by the digest of what was stored (the platform's manifest,
        // when the digest named an index), so the name resolves to this image.
        Some(_) => image_ref.with_digest(manifest_digest.clone()).to_string(),
        None => image_ref.to_string(),
    };
    let reference = parse_reference(&name).map_err(store_error)?;
    let mut names = vec![reference.clone()];
    // A digest that named an index names this platform's image too (as Docker's repo digests
    // do), so `FROM name@<index digest>` finds it in the store next time, offline.
    if let Some(index_digest) = image_ref.digest().filter(|d| **d != manifest_digest) {
        let index_name = image_ref.with_digest(index_digest.clone()).to_string();
        names.push(parse_reference(&index_name).map_err(store_error)?);
    }
    store
        .set_names(&names, &image.manifest_digest)
        .map_err(store_error)?;
    Ok(PullReport {
        name: reference.whole(),
        manifest_digest,
        index_digest: resolved.index.map(|index| index.digest),
        fetched: missing.into_iter().map(|(d, _)| d).collect(),
        present: present.into_iter().map(|(d, _)| d).collect(),
    })
}

/// For each blob, a repository on `target`'s registry that already has it (by the names of
/// the store's images), to mount from instead of uploading.
pub fn mount_sources(store: &Store, target: &ImageRef) -> HashMap<Digest, String> {
    let mut sources = HashMap::new();
    let Ok(images) = store.images() else {
        return sources;
    };
    for image in images {
        let repository = image.names.iter().find_map(|name| {
            let image_ref: ImageRef = name.parse().ok()?;
            (image_ref.registry() == target.registry()
                && image_ref.repository() != target.repository())
            .then(|| image_ref.repository().to_string())
        });
        let Some(repository) = repository else {
            continue;
        };
        let config = std::iter::once(image.manifest.config());
        for descriptor in config.chain(image.layers()) {
            if let Ok(digest) = kiln_digest(descriptor.digest(), "manifest") {
                sources.entry(digest).or_insert_with(|| repository.clone());
            }
        }
    }
    sources
}

/// A layer in the compression the push asked for.
struct Recompressed {
    digest: Digest,
    size: u64,
    compression: Compression,
    /// Where the recompressed bytes wait for the upload (deleted on drop); `None` when the
    /// stored blob already was in that compression.
    file: Option<tempfile::NamedTempFile>,
}

/// A stored layer in `compression`: the same blob if it already is, else a temp file under
/// the store's `tmp/` (decompressed and compressed again in one stream, digested on the way).
/// The temp file is not a store blob: nothing references it once pushed, so it is neither
/// fsynced nor kept (fsyncing hundreds of MiB that `prune` would remove anyway was a large
/// part of a gzip push).
fn recompress(
    store: &Store,
    digest: &Digest,
    compression: PushCompression,
) -> Result<Recompressed, RegistryError> {
    let file = store.read_blob(digest).map_err(store_error)?;
    let io_error = |source: std::io::Error| RegistryError::Recompress {
        digest: digest.clone(),
        source,
    };
    let (found, mut reader) = decompress(file).map_err(io_error)?;
    let wanted = match compression {
        PushCompression::Gzip => Compression::Gzip,
        PushCompression::Zstd => Compression::Zstd,
    };
    if found == wanted {
        let size = store.blob_size(digest).map_err(store_error)?;
        return Ok(Recompressed {
            digest: digest.clone(),
            size,
            compression: found,
            file: None,
        });
    }
    let temp = tempfile::Builder::new()
        .prefix(&crate::store::owned_name("push-"))
        .tempfile_in(store.tmp_dir())
        .map_err(io_error)?;
    let file = temp.reopen().map_err(io_error)?;
    let writer = DigestWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let writer = match compression {
        PushCompression::Gzip => {
            let n_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            gzip::gzip(reader, writer, GZIP_LEVEL, n_threads)
                .map_err(io_error)?
                .0
        }
        PushCompression::Zstd => {
            let mut encoder = zstd_writer(writer).map_err(io_error)?;
            std::io::copy(&mut reader, &mut encoder).map_err(io_error)?;
            encoder.finish().map_err(io_error)?
        }
    };
    let (new_digest, size, mut buffered) = writer.finish();
    buffered.flush().map_err(io_error)?;
    Ok(Recompressed {
        digest: new_digest,
        size,
        compression: wanted,
        file: Some(temp),
    })
}

/// Pushes the stored image `local` (any name or ID `Store::resolve` takes) to `target`.
/// With `compression`, layers in another compression are recompressed first and the pushed
/// manifest is an OCI manifest naming them; without, the stored manifest goes as it is (its
/// digest unchanged).
pub fn push_image(
    store: &Store,
    client: &Client,
    local: &str,
    target: &ImageRef,
    compression: Option<PushCompression>,
    n_parallel: usize,
    progress: Progress,
) -> Result<PushReport, RegistryError> {
    let image = store.resolve(local).map_err(store_error)?;
    let _pin = store.pin().map_err(store_error)?;
    let what = format!("manifest {}", image.manifest_digest);
    let config_digest =
        kiln_digest(image.manifest.config().digest(), &what).map_err(store_error)?;
    let config_size = image.manifest.config().size();
    let layer_digests = image.layer_digests().map_err(store_error)?;

    // Recompressed layers wait in temp files until the upload is over.
    let mut temp_files: HashMap<Digest, std::path::PathBuf> = HashMap::new();
    let mut temp_holders: Vec<tempfile::NamedTempFile> = Vec::new();
    let (manifest_bytes, manifest_media_type, layers) = match compression {
        None => (
            image.manifest_bytes.clone(),
            image.manifest_media_type.clone(),
            layer_digests
                .iter()
                .zip(image.layers())
                .map(|(digest, descriptor)| (digest.clone(), descriptor.size()))
                .collect::<Vec<_>>(),
        ),
        Some(compression) => {
            let recompressed: Vec<Recompressed> = layer_digests
                .par_iter()
                .map(|digest| recompress(store, digest, compression))
                .collect::<Result<_, _>>()?;
            let converted: Vec<(Digest, u64, Compression)> = recompressed
                .iter()
                .map(|r| (r.digest.clone(), r.size, r.compression))
                .collect();
            for layer in &recompressed {
                if let Some(file) = &layer.file {
                    temp_files.insert(layer.digest.clone(), file.path().to_path_buf());
                }
            }
            temp_holders.extend(recompressed.into_iter().filter_map(|r| r.file));
            let unchanged =
                converted
                    .iter()
                    .zip(image.layers())
                    .all(|((digest, _, c), descriptor)| {
                        kiln_digest(descriptor.digest(), &what).ok().as_ref() == Some(digest)
                            && Compression::from_layer_media_type(descriptor.media_type().as_ref())
                                == Some(*c)
                    });
            if unchanged {
                (
                    image.manifest_bytes.clone(),
                    image.manifest_media_type.clone(),
                    converted.iter().map(|(d, s, _)| (d.clone(), *s)).collect(),
                )
            } else {
                let layers_json: Vec<serde_json::Value> = converted
                    .iter()
                    .map(|(digest, size, c)| {
                        serde_json::json!({
                            "mediaType": c.oci_layer_media_type(),
                            "digest": digest.to_string(),
                            "size": size,
                        })
                    })
                    .collect();
                let manifest = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": config_digest.to_string(),
                        "size": config_size,
                    },
                    "layers": layers_json,
                });
                (
                    serde_json::to_vec(&manifest).expect("JSON value serializes"),
                    MEDIA_TYPE_OCI_MANIFEST.to_string(),
                    converted.iter().map(|(d, s, _)| (d.clone(), *s)).collect(),
                )
            }
        }
    };

    let mounts = mount_sources(store, target);
    let mut blobs: Vec<(Digest, u64)> = vec![(config_digest, config_size)];
    for layer in layers {
        if !blobs.iter().any(|(d, _)| *d == layer.0) {
            blobs.push(layer);
        }
    }
    let uploads = blobs
        .iter()
        .map(|(digest, size)| BlobUpload {
            digest: digest.clone(),
            size: *size,
            source: Box::new(
                temp_files
                    .get(digest)
                    .cloned()
                    .unwrap_or_else(|| store.blob_path(digest)),
            ) as Box<dyn BlobSource>,
            mount_from: mounts.get(digest).cloned(),
        })
        .collect();
    let outcomes = transfer::all_ok(transfer::upload_blobs_with_progress(
        client,
        target.repository(),
        uploads,
        n_parallel,
        progress,
    )?)?;
    let reference = match target.digest() {
        Some(_) => Digest::of_bytes(&manifest_bytes).to_string(),
        None => target.manifest_reference(),
    };
    let manifest_digest = client.put_manifest(
        target.repository(),
        &reference,
        &manifest_media_type,
        &manifest_bytes,
    )?;
    Ok(PushReport {
        manifest_digest,
        manifest_size: manifest_bytes.len() as u64,
        blobs: blobs.into_iter().map(|(d, _)| d).zip(outcomes).collect(),
    })
}
