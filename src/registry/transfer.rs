//! Many blobs at once: downloads into caller-given writers and uploads from caller-given
//! sources, on a dedicated thread pool (network-bound work, so it does not take the global
//! rayon pool that hashing and compression use).
//!
//! Results come back per blob, in input order, so the caller commits the blobs that verified
//! and discards the rest; this file never decides where bytes live.

use super::client::{BlobSource, Client, PushOutcome};
use super::RegistryError;
use crate::digest::Digest;
use rayon::prelude::*;
use std::io::Write;

/// One blob to fetch into `writer` (for the store: an ingest temp file).
pub struct BlobDownload<W> {
    pub digest: Digest,
    pub size: Option<u64>,
    pub writer: W,
}

/// One blob to push, with the repository it may be mounted from.
pub struct BlobUpload {
    pub digest: Digest,
    pub size: u64,
    pub source: Box<dyn BlobSource>,
    pub mount_from: Option<String>,
}

/// What happened to one blob, reported as soon as it is known (from the transfer threads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobStatus {
    /// The destination already had it.
    AlreadyExists,
    /// Downloaded and verified.
    Downloaded,
    /// Linked from another repository of the same registry.
    Mounted,
    /// Uploaded.
    Pushed,
    /// The transfer failed (the error comes back in the results).
    Failed,
}

/// A progress callback; called from several threads at once.
pub type Progress<'a> = &'a (dyn Fn(&Digest, BlobStatus) + Sync);

/// A progress callback that ignores everything.
pub fn no_progress(_: &Digest, _: BlobStatus) {}

fn pool(n_threads: usize) -> Result<rayon::ThreadPool, RegistryError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n_threads.max(1))
        .thread_name(|i| format!("kiln-transfer-{i}"))
        .build()
        .map_err(RegistryError::ThreadPool)
}

/// Downloads every blob, `n_threads` at a time. Each result holds the writer back once its
/// bytes verified, or the error (the writer is then dropped: a `NamedTempFile` is deleted).
pub fn download_blobs<W: Write + Send>(
    client: &Client,
    repository: &str,
    downloads: Vec<BlobDownload<W>>,
    n_threads: usize,
) -> Result<Vec<Result<W, RegistryError>>, RegistryError> {
    download_blobs_with_progress(client, repository, downloads, n_threads, &no_progress)
}

/// [`download_blobs`], reporting each blob as it finishes.
pub fn download_blobs_with_progress<W: Write + Send>(
    client: &Client,
    repository: &str,
    downloads: Vec<BlobDownload<W>>,
    n_threads: usize,
    progress: Progress,
) -> Result<Vec<Result<W, RegistryError>>, RegistryError> {
    let pool = pool(n_threads)?;
    Ok(pool.install(|| {
        downloads
            .into_par_iter()
            .map(|mut download| {
                let result = client
                    .get_blob(
                        repository,
                        &download.digest,
                        download.size,
                        &mut download.writer,
                    )
                    .map(|_| download.writer);
                let status = match result {
                    Ok(_) => BlobStatus::Downloaded,
                    Err(_) => BlobStatus::Failed,
                };
                progress(&download.digest, status);
                result
            })
            .collect()
    }))
}

/// Pushes every blob (HEAD-skip, mount, upload), `n_threads` at a time.
pub fn upload_blobs(
    client: &Client,
    repository: &str,
    uploads: Vec<BlobUpload>,
    n_threads: usize,
) -> Result<Vec<Result<PushOutcome, RegistryError>>, RegistryError> {
    upload_blobs_with_progress(client, repository, uploads, n_threads, &no_progress)
}

/// [`upload_blobs`], reporting each blob as it finishes.
pub fn upload_blobs_with_progress(
    client: &Client,
    repository: &str,
    uploads: Vec<BlobUpload>,
    n_threads: usize,
    progress: Progress,
) -> Result<Vec<Result<PushOutcome, RegistryError>>, RegistryError> {
    let pool = pool(n_threads)?;
    Ok(pool.install(|| {
        uploads
            .into_par_iter()
            .map(|upload| {
                let result = client.push_blob(
                    repository,
                    &upload.digest,
                    upload.size,
                    upload.source.as_ref(),
                    upload.mount_from.as_deref(),
                );
                let status = match result {
                    Ok(PushOutcome::AlreadyPresent) => BlobStatus::AlreadyExists,
                    Ok(PushOutcome::Mounted) => BlobStatus::Mounted,
                    Ok(PushOutcome::Uploaded) => BlobStatus::Pushed,
                    Err(_) => BlobStatus::Failed,
                };
                progress(&upload.digest, status);
                result
            })
            .collect()
    }))
}

/// All values, or the first error.
pub fn all_ok<T>(results: Vec<Result<T, RegistryError>>) -> Result<Vec<T>, RegistryError> {
    results.into_iter().collect()
}
