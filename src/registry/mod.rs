//! The OCI Distribution protocol client: references, auth, manifests, blobs up and down.
//!
//! Blocking HTTP through `ureq` (no async runtime). The client reads blobs from a
//! [`BlobSource`] and writes them into any `std::io::Write`, checking digests as the bytes
//! flow. Only [`image`] joins the client to the store, through the store's public API (blob
//! writers, `put_manifest`, `set_name`); nothing here knows the store's on-disk layout,
//! Dockerfiles or the build.
//!
//! - [`reference`](mod@reference): docker-style name resolution, which host serves it, HTTP or HTTPS.
//! - [`credentials`]: `~/.docker/config.json` (`auths`, `credsStore`, `credHelpers`) and the
//!   [`Secret`] wrapper that keeps passwords and tokens out of every log, error and `Debug`.
//! - [`auth`]: the `WWW-Authenticate` challenge, Basic and Bearer tokens.
//! - [`client`]: the protocol operations on one registry.
//! - [`platform`]: choosing the host's manifest from an index.
//! - [`transfer`]: many blobs at once on a thread pool.
//! - [`gzip`]: parallel (pigz-style) gzip for recompressing layers on push.
//! - [`image`]: whole images between the store and a registry (`kiln pull`, `kiln push`).

pub mod auth;
pub mod client;
pub mod credentials;
pub mod gzip;
pub mod image;
pub mod platform;
pub mod reference;
pub mod transfer;

pub use client::{BlobSource, Client, Manifest, ManifestHead, MountOutcome, PushOutcome};
pub use credentials::{Credential, CredentialError, DockerConfig, Secret};
pub use platform::Platform;
pub use reference::{ImageRef, RegistryConfig};

use crate::digest::Digest;

/// Media types a manifest GET accepts, best first.
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// True for the two index media types (OCI index, Docker manifest list).
pub fn is_index_media_type(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_INDEX || media_type == MEDIA_TYPE_DOCKER_LIST
}

/// Everything that can go wrong talking to a registry. Every variant names the registry (and
/// the repository where there is one); none ever holds a password or token.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("registry {registry} is unreachable ({attempts} attempts): {detail}")]
    Unreachable {
        registry: String,
        attempts: u32,
        detail: String,
    },
    #[error("registry {registry}: authentication required for {repository}: {detail}")]
    Unauthorized {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("registry {registry}: access to {repository} denied: {detail}")]
    Denied {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("registry {registry}: {what} not found in {repository}")]
    NotFound {
        registry: String,
        repository: String,
        what: String,
    },
    #[error(
        "registry {registry}: {method} {path} for {repository} failed with HTTP {status}: {detail}"
    )]
    Http {
        registry: String,
        repository: String,
        method: &'static str,
        path: String,
        status: u16,
        detail: String,
    },
    #[error("registry {registry}: bad authentication challenge {header:?}")]
    BadChallenge { registry: String, header: String },
    #[error("registry {registry}: token request to {realm} failed: {detail}")]
    Token {
        registry: String,
        realm: String,
        detail: String,
    },
    #[error(
        "registry {registry}: {what} in {repository} has digest {actual}, expected {expected}; refused"
    )]
    DigestMismatch {
        registry: String,
        repository: String,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "registry {registry}: blob {digest} in {repository} is {actual} bytes, expected {expected}"
    )]
    SizeMismatch {
        registry: String,
        repository: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("registry {registry}: bad manifest for {repository}: {reason}")]
    BadManifest {
        registry: String,
        repository: String,
        reason: String,
    },
    #[error(
        "registry {registry}: {repository} has no manifest for platform {platform} (available: {available})"
    )]
    NoPlatform {
        registry: String,
        repository: String,
        platform: String,
        available: String,
    },
    #[error("registry {registry}: bad response to {method} {path}: {reason}")]
    BadResponse {
        registry: String,
        method: &'static str,
        path: String,
        reason: String,
    },
    #[error("failed to write blob {digest} from {registry}/{repository}")]
    WriteBlob {
        registry: String,
        repository: String,
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read blob {digest} to push to {registry}/{repository}")]
    ReadSource {
        registry: String,
        repository: String,
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start the transfer thread pool")]
    ThreadPool(#[source] rayon::ThreadPoolBuildError),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error(transparent)]
    Store(Box<crate::store::StoreError>),
    #[error("failed to recompress layer {digest}")]
    Recompress {
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
}
