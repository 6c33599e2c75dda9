//! The OCI Distribution operations against one registry, over blocking HTTP (`ureq`).
//!
//! Every request goes through one private `send`, which adds credentials (Basic, or a Bearer token
//! cached per scope set and renewed on expiry or on a 401), retries connection failures and
//! 5xx answers with doubling backoff a bounded number of times, and turns 401/403/404 into
//! errors naming the registry and repository. Blobs are streamed: downloads go into any
//! `Write` through a hasher and are refused if the digest differs; uploads read from a
//! [`BlobSource`] that can be opened again for a retry.
//!
//! This file knows the protocol, not the store: callers decide where bytes come from and go.

use super::auth::{self, Challenge, Token, TokenRequest};
use super::credentials::{Credential, DockerConfig, Secret};
use super::reference::{ImageRef, RegistryConfig};
use super::{
    RegistryError, MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
};
use crate::digest::{Digest, DigestWriter};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Manifests larger than this are refused (containerd and Distribution use the same bound).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// A sensible chunk size for [`Client::upload_blob_chunked`] (each chunk is held in memory).
pub const DEFAULT_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Where an upload's bytes come from. `open` is called once per attempt, so a retried upload
/// starts again from the first byte.
pub trait BlobSource: Send + Sync {
    fn open(&self) -> io::Result<Box<dyn Read + Send>>;
}

impl BlobSource for Vec<u8> {
    fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(io::Cursor::new(self.clone())))
    }
}

impl BlobSource for std::path::PathBuf {
    fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(std::fs::File::open(self)?))
    }
}

/// A [`BlobSource`] made from a closure (the store's blob reader, a test's slow reader).
pub struct FnSource<F>(pub F);

impl<F> BlobSource for FnSource<F>
where
    F: Fn() -> io::Result<Box<dyn Read + Send>> + Send + Sync,
{
    fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        (self.0)()
    }
}

/// A manifest as the registry served it: the exact bytes, their media type and digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// What a manifest HEAD tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
    pub size: Option<u64>,
}

/// The answer to a cross-repository mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountOutcome {
    /// The registry linked the blob into the repository (201).
    Mounted,
    /// The registry could not mount and opened an upload session instead (202).
    UploadStarted { location: String },
}

/// What [`Client::push_blob`] had to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    AlreadyPresent,
    Mounted,
    Uploaded,
}

/// The repositories a request touches, which decides the token scopes.
#[derive(Clone, Debug)]
struct Access<'a> {
    repository: &'a str,
    push: bool,
    mount_from: Option<&'a str>,
}

impl Access<'_> {
    fn scopes(&self) -> Vec<String> {
        let mut scopes = Vec::new();
        if !self.repository.is_empty() {
            let actions = if self.push { "pull,push" } else { "pull" };
            scopes.push(format!("repository:{}:{actions}", self.repository));
        }
        if let Some(from) = self.mount_from {
            scopes.push(format!("repository:{from}:pull"));
        }
        scopes
    }

    fn what(&self) -> String {
        if self.repository.is_empty() {
            "the registry API".to_string()
        } else {
            self.repository.to_string()
        }
    }
}

/// A failed upload attempt, and whether starting over could help (boxed: errors are large).
type UploadFailure = Box<(RegistryError, bool)>;

enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    Source {
        source: &'a dyn BlobSource,
        len: u64,
    },
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    tokens: HashMap<String, Token>,
}

/// A client for one registry. Cheap to share between threads (`&Client` is `Sync`).
pub struct Client {
    registry: String,
    base_url: String,
    agent: ureq::Agent,
    credential: Option<Credential>,
    config: RegistryConfig,
    auth_state: Mutex<AuthState>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("registry", &self.registry)
            .field("base_url", &self.base_url)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// Remembers a read error of an upload source, so it is reported as such and not as a network
/// failure (ureq folds both into one transport error).
struct TrackingReader {
    inner: Box<dyn Read + Send>,
    failure: Arc<Mutex<Option<io::Error>>>,
}

impl Read for TrackingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => Ok(n),
            Err(err) => {
                let copy = io::Error::new(err.kind(), err.to_string());
                *self.failure.lock().unwrap() = Some(err);
                Err(copy)
            }
        }
    }
}

/// TLS with the system's root certificates (`/etc/ssl/certs` and friends, via
/// `rustls-native-certs`), loaded on the first HTTPS connection of the process rather than when
/// an agent is built: parsing a few hundred certificates is wasted work for a plain-HTTP
/// registry and noticeable for every short `kiln` command.
struct SystemRootsTls;

fn system_roots_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable system stores leave the set empty: every HTTPS request then fails with a
        // certificate error naming the registry, which is the honest outcome.
        if let Ok(certificates) = rustls_native_certs::load_native_certs() {
            roots.add_parsable_certificates(certificates);
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Arc::new(config)
    }))
}

impl ureq::TlsConnector for SystemRootsTls {
    fn connect(
        &self,
        dns_name: &str,
        io: Box<dyn ureq::ReadWrite>,
    ) -> Result<Box<dyn ureq::ReadWrite>, ureq::Error> {
        system_roots_config().connect(dns_name, io)
    }
}

fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `errors[].code: message` from a registry error body, else the start of the body.
fn error_detail(response: ureq::Response) -> String {
    let mut body = String::new();
    let _ = response.into_reader().take(8192).read_to_string(&mut body);
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(errors) = serde_json::from_str::<Errors>(&body) {
        let parts: Vec<String> = errors
            .errors
            .into_iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.code.unwrap_or_default(),
                    e.message.unwrap_or_default()
                )
            })
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let trimmed: String = body.trim().chars().take(300).collect();
    if trimmed.is_empty() {
        "no details".to_string()
    } else {
        trimmed
    }
}

fn content_type(response: &ureq::Response) -> Option<String> {
    response
        .header("Content-Type")
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
        .filter(|v| !v.is_empty())
}

impl Client {
    /// A client for `registry` (as references name it: `docker.io`, `localhost:5000`).
    pub fn new(registry: &str, config: &RegistryConfig, credential: Option<Credential>) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(config.connect_timeout)
            .timeout_read(config.io_timeout)
            .timeout_write(config.io_timeout)
            .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
            .tls_connector(Arc::new(SystemRootsTls))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            registry: registry.to_string(),
            base_url: config.base_url(registry),
            agent,
            credential,
            config: config.clone(),
            auth_state: Mutex::new(AuthState::default()),
        }
    }

    /// A client for `image_ref`'s registry with the credentials `docker_config` holds for it.
    pub fn for_reference(
        image_ref: &ImageRef,
        config: &RegistryConfig,
        docker_config: &DockerConfig,
    ) -> Result<Client, RegistryError> {
        let credential = docker_config.lookup(image_ref.registry())?;
        Ok(Client::new(image_ref.registry(), config, credential))
    }

    /// A client for `image_ref`'s registry with the credentials Docker's config holds for it
    /// (`$DOCKER_CONFIG` or `~/.docker`); anonymous when there is no such directory.
    pub fn from_environment(
        image_ref: &ImageRef,
        config: &RegistryConfig,
    ) -> Result<Client, RegistryError> {
        match DockerConfig::from_env() {
            Ok(docker_config) => Client::for_reference(image_ref, config, &docker_config),
            Err(_) => Ok(Client::new(image_ref.registry(), config, None)),
        }
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// `http(s)://host[:port]` this client talks to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /v2/`, authenticating as the registry asks: proves the registry speaks the API and,
    /// with credentials, that they are accepted (what `kiln login` checks).
    pub fn ping(&self) -> Result<(), RegistryError> {
        let access = Access {
            repository: "",
            push: false,
            mount_from: None,
        };
        let response = self.send("GET", "/v2/", &access, &[], Body::Empty, true)?;
        self.expect(response, &[200], "GET", "/v2/", &access, "API root")?;
        Ok(())
    }

    /// Fetches a manifest by tag or digest. Accepts OCI index/manifest and Docker schema2
    /// list/manifest. Fetched by digest, the bytes must hash to it.
    pub fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        let access = Access {
            repository,
            push: false,
            mount_from: None,
        };
        let path = format!("/v2/{repository}/manifests/{reference}");
        let accept = self.accept_header();
        let response = self.send(
            "GET",
            &path,
            &access,
            &[("Accept", accept)],
            Body::Empty,
            true,
        )?;
        let response = self.expect(
            response,
            &[200],
            "GET",
            &path,
            &access,
            &format!("manifest {reference}"),
        )?;
        let header_type = content_type(&response);
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|err| self.unreachable(1, format!("reading manifest {reference}: {err}")))?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(self.bad_manifest(
                repository,
                format!("manifest {reference} is larger than {MAX_MANIFEST_BYTES} bytes"),
            ));
        }
        let digest = Digest::of_bytes(&bytes);
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: self.registry.clone(),
                    repository: repository.to_string(),
                    what: format!("manifest {reference}"),
                    expected,
                    actual: digest,
                });
            }
        }
        let media_type = self.manifest_media_type(repository, header_type, &bytes)?;
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// `HEAD` a manifest: its digest, media type and size, or `None` if the registry does not
    /// have it.
    pub fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        let access = Access {
            repository,
            push: false,
            mount_from: None,
        };
        let path = format!("/v2/{repository}/manifests/{reference}");
        let response = self.send(
            "HEAD",
            &path,
            &access,
            &[("Accept", self.accept_header())],
            Body::Empty,
            true,
        )?;
        if response.status() == 404 {
            return Ok(None);
        }
        let response = self.expect(
            response,
            &[200],
            "HEAD",
            &path,
            &access,
            &format!("manifest {reference}"),
        )?;
        let size = response
            .header("Content-Length")
            .and_then(|v| v.trim().parse().ok());
        let media_type = content_type(&response);
        let digest = response
            .header("Docker-Content-Digest")
            .and_then(|v| v.trim().parse::<Digest>().ok());
        match (digest, media_type) {
            (Some(digest), Some(media_type)) => Ok(Some(ManifestHead {
                digest,
                media_type,
                size,
            })),
            // Some registries omit the digest header: fetch the manifest to know it.
            _ => {
                let manifest = self.get_manifest(repository, reference)?;
                Ok(Some(ManifestHead {
                    digest: manifest.digest,
                    media_type: manifest.media_type,
                    size: Some(manifest.bytes.len() as u64),
                }))
            }
        }
    }

    /// `PUT` a manifest under a tag or its digest. Returns its digest.
    pub fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let access = Access {
            repository,
            push: true,
            mount_from: None,
        };
        let path = format!("/v2/{repository}/manifests/{reference}");
        let digest = Digest::of_bytes(bytes);
        let response = self.send(
            "PUT",
            &path,
            &access,
            &[("Content-Type", media_type.to_string())],
            Body::Bytes(bytes),
            true,
        )?;
        let response = self.expect(
            response,
            &[200, 201],
            "PUT",
            &path,
            &access,
            &format!("manifest {reference}"),
        )?;
        if let Some(answered) = response
            .header("Docker-Content-Digest")
            .and_then(|v| v.trim().parse::<Digest>().ok())
        {
            if answered != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: self.registry.clone(),
                    repository: repository.to_string(),
                    what: format!("pushed manifest {reference}"),
                    expected: digest,
                    actual: answered,
                });
            }
        }
        Ok(digest)
    }

    /// `HEAD` a blob: its size if the repository has it, `None` if not.
    pub fn head_blob(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        self.head_blob_as(repository, digest, false)
    }

    fn head_blob_as(
        &self,
        repository: &str,
        digest: &Digest,
        push: bool,
    ) -> Result<Option<u64>, RegistryError> {
        let access = Access {
            repository,
            push,
            mount_from: None,
        };
        let path = format!("/v2/{repository}/blobs/{digest}");
        let response = self.send("HEAD", &path, &access, &[], Body::Empty, true)?;
        if response.status() == 404 {
            return Ok(None);
        }
        let response = self.expect(
            response,
            &[200],
            "HEAD",
            &path,
            &access,
            &format!("blob {digest}"),
        )?;
        Ok(Some(
            response
                .header("Content-Length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        ))
    }

    /// Streams blob `digest` into `writer`, checking its size (when known) and digest. A
    /// connection lost midway is resumed with a `Range` request (bounded attempts). On any error
    /// the bytes written so far must be discarded by the caller; nothing is returned as good
    /// unless every byte hashed to `digest`. Returns the number of bytes.
    pub fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
        expected_size: Option<u64>,
        writer: &mut dyn Write,
    ) -> Result<u64, RegistryError> {
        let access = Access {
            repository,
            push: false,
            mount_from: None,
        };
        let path = format!("/v2/{repository}/blobs/{digest}");
        let what = format!("blob {digest}");
        let mut digest_writer = DigestWriter::new(writer);
        let mut failures = 0u32;
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let offset = digest_writer.n_bytes();
            let mut headers = Vec::new();
            if offset > 0 {
                headers.push(("Range", format!("bytes={offset}-")));
            }
            let response = self.send("GET", &path, &access, &headers, Body::Empty, true)?;
            if offset > 0 && response.status() == 200 {
                // The registry ignored the Range: the bytes already written cannot be taken
                // back, so this download is lost (the caller discards it).
                return Err(self.unreachable(
                    failures,
                    format!(
                        "reading {what} from {repository}: connection lost after {offset} bytes and the registry cannot resume (no Range support)"
                    ),
                ));
            }
            let wanted: &[u16] = if offset > 0 { &[206] } else { &[200] };
            let response = self.expect(response, wanted, "GET", &path, &access, &what)?;
            let mut reader = response.into_reader();
            let read_error = loop {
                let n = match reader.read(&mut buffer) {
                    Ok(0) => break None,
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => break Some(err),
                };
                digest_writer.write_all(&buffer[..n]).map_err(|source| {
                    RegistryError::WriteBlob {
                        registry: self.registry.clone(),
                        repository: repository.to_string(),
                        digest: digest.clone(),
                        source,
                    }
                })?;
                if let Some(expected) = expected_size {
                    if digest_writer.n_bytes() > expected {
                        return Err(RegistryError::SizeMismatch {
                            registry: self.registry.clone(),
                            repository: repository.to_string(),
                            digest: digest.clone(),
                            expected,
                            actual: digest_writer.n_bytes(),
                        });
                    }
                }
            };
            match read_error {
                None => break,
                Some(err) => {
                    failures += 1;
                    if failures >= self.config.attempts.max(1) {
                        return Err(self.unreachable(
                            failures,
                            format!("reading {what} from {repository}: {err}"),
                        ));
                    }
                    std::thread::sleep(self.backoff(failures));
                }
            }
        }
        digest_writer
            .flush()
            .map_err(|source| RegistryError::WriteBlob {
                registry: self.registry.clone(),
                repository: repository.to_string(),
                digest: digest.clone(),
                source,
            })?;
        let (actual, n_bytes, _) = digest_writer.finish();
        if let Some(expected) = expected_size {
            if n_bytes != expected {
                return Err(RegistryError::SizeMismatch {
                    registry: self.registry.clone(),
                    repository: repository.to_string(),
                    digest: digest.clone(),
                    expected,
                    actual: n_bytes,
                });
            }
        }
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                registry: self.registry.clone(),
                repository: repository.to_string(),
                what,
                expected: digest.clone(),
                actual,
            });
        }
        Ok(n_bytes)
    }

    /// Asks the registry to link blob `digest` from repository `from` into `repository`.
    pub fn mount_blob(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<MountOutcome, RegistryError> {
        let access = Access {
            repository,
            push: true,
            mount_from: Some(from),
        };
        let path = format!(
            "/v2/{repository}/blobs/uploads/?mount={}&from={}",
            percent_encode(&digest.to_string()),
            percent_encode(from)
        );
        let response = self.send("POST", &path, &access, &[], Body::Empty, true)?;
        let status = response.status();
        let response = self.expect(
            response,
            &[201, 202],
            "POST",
            &path,
            &access,
            &format!("blob {digest}"),
        )?;
        if status == 201 {
            return Ok(MountOutcome::Mounted);
        }
        let location = self.location(&response, "POST", &path)?;
        Ok(MountOutcome::UploadStarted { location })
    }

    /// Uploads a blob in one `PUT` (after the `POST` that opens the session), streaming it from
    /// `source`. The whole upload is retried (bounded) if the connection fails midway.
    pub fn upload_blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
    ) -> Result<(), RegistryError> {
        self.retry_upload(|| self.upload_once(repository, digest, size, source, None, None))
    }

    /// Uploads a blob as `PATCH` chunks of `chunk_bytes` with `Content-Range`, then a closing
    /// `PUT`. The whole upload is retried (bounded) if the connection fails midway.
    pub fn upload_blob_chunked(
        &self,
        repository: &str,
        digest: &Digest,
        source: &dyn BlobSource,
        chunk_bytes: usize,
    ) -> Result<(), RegistryError> {
        let chunk_bytes = chunk_bytes.max(1);
        self.retry_upload(|| {
            self.upload_once(repository, digest, 0, source, Some(chunk_bytes), None)
        })
    }

    /// Makes sure `repository` has blob `digest`: nothing to do if a `HEAD` finds it, else a
    /// cross-repository mount from `mount_from` if given, else (or if the mount is refused) an
    /// upload from `source`.
    pub fn push_blob(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
        mount_from: Option<&str>,
    ) -> Result<PushOutcome, RegistryError> {
        if self.head_blob_as(repository, digest, true)?.is_some() {
            return Ok(PushOutcome::AlreadyPresent);
        }
        let mut session = None;
        if let Some(from) = mount_from.filter(|from| *from != repository) {
            match self.mount_blob(repository, digest, from)? {
                MountOutcome::Mounted => return Ok(PushOutcome::Mounted),
                MountOutcome::UploadStarted { location } => session = Some(location),
            }
        }
        let mut first = session;
        self.retry_upload(|| {
            self.upload_once(repository, digest, size, source, None, first.take())
        })?;
        Ok(PushOutcome::Uploaded)
    }

    fn retry_upload(
        &self,
        mut attempt: impl FnMut() -> Result<(), UploadFailure>,
    ) -> Result<(), RegistryError> {
        let mut n_failures = 0;
        loop {
            match attempt() {
                Ok(()) => return Ok(()),
                Err(failure) => {
                    let (err, retryable) = *failure;
                    n_failures += 1;
                    if !retryable || n_failures >= self.config.attempts.max(1) {
                        return Err(err);
                    }
                    std::thread::sleep(self.backoff(n_failures));
                }
            }
        }
    }

    /// One upload attempt. Errors come with whether starting over could help (the connection
    /// broke or the registry failed while the bytes were flowing).
    fn upload_once(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
        chunk_bytes: Option<usize>,
        session: Option<String>,
    ) -> Result<(), UploadFailure> {
        let access = Access {
            repository,
            push: true,
            mount_from: None,
        };
        let fatal = |err| Box::new((err, false));
        let mut location = match session {
            Some(location) => location,
            None => {
                let path = format!("/v2/{repository}/blobs/uploads/");
                let response = self
                    .send("POST", &path, &access, &[], Body::Empty, true)
                    .map_err(fatal)?;
                let response = self
                    .expect(
                        response,
                        &[202],
                        "POST",
                        &path,
                        &access,
                        &format!("upload of blob {digest}"),
                    )
                    .map_err(fatal)?;
                self.location(&response, "POST", &path).map_err(fatal)?
            }
        };
        let streaming_error = |err: RegistryError| {
            let retryable = match &err {
                RegistryError::Unreachable { .. } => true,
                RegistryError::Http { status, .. } => retryable_status(*status),
                _ => false,
            };
            Box::new((err, retryable))
        };
        let octet = ("Content-Type", "application/octet-stream".to_string());
        match chunk_bytes {
            None => {
                let url = append_query(&location, "digest", &digest.to_string());
                let response = self
                    .send(
                        "PUT",
                        &url,
                        &access,
                        &[octet],
                        Body::Source { source, len: size },
                        false,
                    )
                    .map_err(streaming_error)?;
                self.expect(
                    response,
                    &[201],
                    "PUT",
                    &url,
                    &access,
                    &format!("blob {digest}"),
                )
                .map_err(streaming_error)?;
            }
            Some(chunk_bytes) => {
                let mut reader = source.open().map_err(|source| {
                    fatal(RegistryError::ReadSource {
                        registry: self.registry.clone(),
                        repository: repository.to_string(),
                        digest: digest.clone(),
                        source,
                    })
                })?;
                let mut offset = 0u64;
                let mut chunk = Vec::with_capacity(chunk_bytes);
                loop {
                    chunk.clear();
                    (&mut reader)
                        .take(chunk_bytes as u64)
                        .read_to_end(&mut chunk)
                        .map_err(|source| {
                            fatal(RegistryError::ReadSource {
                                registry: self.registry.clone(),
                                repository: repository.to_string(),
                                digest: digest.clone(),
                                source,
                            })
                        })?;
                    if chunk.is_empty() {
                        break;
                    }
                    let end = offset + chunk.len() as u64 - 1;
                    let headers = [octet.clone(), ("Content-Range", format!("{offset}-{end}"))];
                    let response = self
                        .send(
                            "PATCH",
                            &location,
                            &access,
                            &headers,
                            Body::Bytes(&chunk),
                            false,
                        )
                        .map_err(streaming_error)?;
                    let response = self
                        .expect(
                            response,
                            &[202],
                            "PATCH",
                            &location,
                            &access,
                            &format!("blob {digest}"),
                        )
                        .map_err(streaming_error)?;
                    location = self
                        .location(&response, "PATCH", &location)
                        .map_err(fatal)?;
                    offset = end + 1;
                }
                let url = append_query(&location, "digest", &digest.to_string());
                let response = self
                    .send("PUT", &url, &access, &[octet], Body::Bytes(&[]), false)
                    .map_err(streaming_error)?;
                self.expect(
                    response,
                    &[201],
                    "PUT",
                    &url,
                    &access,
                    &format!("blob {digest}"),
                )
                .map_err(streaming_error)?;
            }
        }
        Ok(())
    }

    fn accept_header(&self) -> String {
        [
            MEDIA_TYPE_OCI_INDEX,
            MEDIA_TYPE_OCI_MANIFEST,
            MEDIA_TYPE_DOCKER_LIST,
            MEDIA_TYPE_DOCKER_MANIFEST,
        ]
        .join(", ")
    }

    /// The media type of a fetched manifest: the `Content-Type` the registry gave, else the
    /// document's own `mediaType`, else what its shape says.
    fn manifest_media_type(
        &self,
        repository: &str,
        header_type: Option<String>,
        bytes: &[u8],
    ) -> Result<String, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Shape {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
            layers: Option<serde_json::Value>,
        }
        let shape: Shape = serde_json::from_slice(bytes)
            .map_err(|err| self.bad_manifest(repository, format!("not JSON: {err}")))?;
        let known = [
            MEDIA_TYPE_OCI_INDEX,
            MEDIA_TYPE_OCI_MANIFEST,
            MEDIA_TYPE_DOCKER_LIST,
            MEDIA_TYPE_DOCKER_MANIFEST,
        ];
        if let Some(header_type) = header_type.filter(|t| known.contains(&t.as_str())) {
            return Ok(header_type);
        }
        if let Some(media_type) = shape.media_type.filter(|t| known.contains(&t.as_str())) {
            return Ok(media_type);
        }
        if shape.manifests.is_some() {
            return Ok(MEDIA_TYPE_OCI_INDEX.to_string());
        }
        if shape.layers.is_some() {
            return Ok(MEDIA_TYPE_OCI_MANIFEST.to_string());
        }
        Err(self.bad_manifest(
            repository,
            "neither an image manifest nor an index (schema 1 manifests are not supported)"
                .to_string(),
        ))
    }

    fn bad_manifest(&self, repository: &str, reason: String) -> RegistryError {
        RegistryError::BadManifest {
            registry: self.registry.clone(),
            repository: repository.to_string(),
            reason,
        }
    }

    fn unreachable(&self, attempts: u32, detail: String) -> RegistryError {
        RegistryError::Unreachable {
            registry: self.registry.clone(),
            attempts,
            detail,
        }
    }

    fn backoff(&self, n_failures: u32) -> Duration {
        self.config.backoff * 2u32.saturating_pow(n_failures.saturating_sub(1).min(6))
    }

    /// The absolute URL of an upload session from a `Location` header.
    fn location(
        &self,
        response: &ureq::Response,
        method: &'static str,
        path: &str,
    ) -> Result<String, RegistryError> {
        let location = response
            .header("Location")
            .ok_or_else(|| RegistryError::BadResponse {
                registry: self.registry.clone(),
                method,
                path: path.to_string(),
                reason: "no Location header".to_string(),
            })?;
        Ok(self.absolute(location))
    }

    fn absolute(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else if path_or_url.starts_with('/') {
            format!("{}{path_or_url}", self.base_url)
        } else {
            format!("{}/{path_or_url}", self.base_url)
        }
    }

    /// Turns an answer whose status is not in `ok` into the error it means.
    fn expect(
        &self,
        response: ureq::Response,
        ok: &[u16],
        method: &'static str,
        path: &str,
        access: &Access,
        what: &str,
    ) -> Result<ureq::Response, RegistryError> {
        let status = response.status();
        if ok.contains(&status) {
            return Ok(response);
        }
        let detail = error_detail(response);
        let registry = self.registry.clone();
        let repository = access.what();
        Err(match status {
            401 => RegistryError::Unauthorized {
                registry,
                repository,
                detail,
            },
            403 => RegistryError::Denied {
                registry,
                repository,
                detail,
            },
            404 => RegistryError::NotFound {
                registry,
                repository,
                what: what.to_string(),
            },
            _ => RegistryError::Http {
                registry,
                repository,
                method,
                path: strip_base(path, &self.base_url),
                status,
                detail,
            },
        })
    }

    /// Sends one request: authentication, bounded retries, error mapping for the transport.
    /// Returns the response whatever its status, except that a 401 is answered (once with a
    /// fresh token or credentials, once more if that token is refused) before giving up, and
    /// 5xx answers are retried when `retry` is set.
    fn send(
        &self,
        method: &'static str,
        path_or_url: &str,
        access: &Access,
        headers: &[(&str, String)],
        body: Body<'_>,
        retry: bool,
    ) -> Result<ureq::Response, RegistryError> {
        let url = self.absolute(path_or_url);
        let scopes = access.scopes();
        let token_key = scopes.join(" ");
        let max_attempts = if retry {
            self.config.attempts.max(1)
        } else {
            1
        };
        let mut n_failures = 0u32;
        let mut n_auth_rounds = 0u32;
        loop {
            let authorization = self.authorization(&token_key, &scopes, &access.what())?;
            let mut request = self.agent.request(method, &url);
            for (name, value) in headers {
                request = request.set(name, value);
            }
            if let Some(authorization) = &authorization {
                request = request.set("Authorization", authorization.expose());
            }
            let source_failure = Arc::new(Mutex::new(None));
            let result = match &body {
                Body::Empty => request.call(),
                Body::Bytes(bytes) => request.send_bytes(bytes),
                Body::Source { source, len } => {
                    let reader = source.open().map_err(|source| RegistryError::ReadSource {
                        registry: self.registry.clone(),
                        repository: access.what(),
                        digest: path_digest(&url).unwrap_or_else(|| Digest::of_bytes(b"")),
                        source,
                    })?;
                    request
                        .set("Content-Length", &len.to_string())
                        .send(TrackingReader {
                            inner: reader,
                            failure: Arc::clone(&source_failure),
                        })
                }
            };
            if let Some(source) = source_failure.lock().unwrap().take() {
                return Err(RegistryError::ReadSource {
                    registry: self.registry.clone(),
                    repository: access.what(),
                    digest: path_digest(&url).unwrap_or_else(|| Digest::of_bytes(b"")),
                    source,
                });
            }
            match result {
                Ok(response) => return Ok(response),
                Err(ureq::Error::Status(401, response)) => {
                    n_auth_rounds += 1;
                    let header = response.header("WWW-Authenticate").map(str::to_string);
                    let detail = error_detail(response);
                    if n_auth_rounds > 2 {
                        return Err(self.unauthorized(access, authorization.is_some(), detail));
                    }
                    let header = header.ok_or_else(|| {
                        self.unauthorized(access, authorization.is_some(), detail.clone())
                    })?;
                    let challenge = auth::parse_challenge(&header).ok_or_else(|| {
                        RegistryError::BadChallenge {
                            registry: self.registry.clone(),
                            header: header.clone(),
                        }
                    })?;
                    match &challenge {
                        Challenge::Basic => {
                            if authorization.is_some()
                                || !matches!(self.credential, Some(Credential::Basic { .. }))
                            {
                                return Err(self.unauthorized(
                                    access,
                                    authorization.is_some(),
                                    detail,
                                ));
                            }
                        }
                        Challenge::Bearer {
                            realm,
                            service,
                            scope,
                        } => {
                            let mut wanted = scopes.clone();
                            if let Some(scope) = scope {
                                for scope in scope.split(' ') {
                                    if !scope.is_empty() && !wanted.iter().any(|s| s == scope) {
                                        wanted.push(scope.to_string());
                                    }
                                }
                            }
                            let what = access.what();
                            let token = auth::fetch_token(
                                &self.agent,
                                &TokenRequest {
                                    registry: &self.registry,
                                    repository: &what,
                                    realm,
                                    service: service.as_deref(),
                                    scopes: &wanted,
                                    credential: self.credential.as_ref(),
                                    attempts: self.config.attempts,
                                    backoff: self.config.backoff,
                                },
                            )?;
                            self.auth_state
                                .lock()
                                .unwrap()
                                .tokens
                                .insert(token_key.clone(), token);
                        }
                    }
                    self.auth_state.lock().unwrap().challenge = Some(challenge);
                }
                Err(ureq::Error::Status(status, response)) if retryable_status(status) => {
                    n_failures += 1;
                    if n_failures >= max_attempts {
                        return Ok(response);
                    }
                    drop(response);
                    std::thread::sleep(self.backoff(n_failures));
                }
                Err(ureq::Error::Status(_, response)) => return Ok(response),
                Err(ureq::Error::Transport(transport)) => {
                    n_failures += 1;
                    let permanent = matches!(
                        transport.kind(),
                        ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme
                    );
                    if permanent || n_failures >= max_attempts {
                        return Err(self.unreachable(
                            n_failures,
                            format!(
                                "{method} {}: {}",
                                strip_base(&url, &self.base_url),
                                transport_detail(&transport)
                            ),
                        ));
                    }
                    std::thread::sleep(self.backoff(n_failures));
                }
            }
        }
    }

    /// The `Authorization` value to send first: Basic once the registry asked for it, or a fresh
    /// token for these scopes (fetched now if the registry speaks Bearer and the cached one
    /// expired).
    fn authorization(
        &self,
        token_key: &str,
        scopes: &[String],
        what: &str,
    ) -> Result<Option<Secret>, RegistryError> {
        let (challenge, token) = {
            let state = self.auth_state.lock().unwrap();
            (
                state.challenge.clone(),
                state
                    .tokens
                    .get(token_key)
                    .filter(|t| t.is_fresh())
                    .cloned(),
            )
        };
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(match &self.credential {
                Some(Credential::Basic { username, password }) => {
                    Some(auth::basic_header(username, password))
                }
                _ => None,
            }),
            Some(Challenge::Bearer { realm, service, .. }) => {
                if let Some(token) = token {
                    return Ok(Some(token.header()));
                }
                let token = auth::fetch_token(
                    &self.agent,
                    &TokenRequest {
                        registry: &self.registry,
                        repository: what,
                        realm: &realm,
                        service: service.as_deref(),
                        scopes,
                        credential: self.credential.as_ref(),
                        attempts: self.config.attempts,
                        backoff: self.config.backoff,
                    },
                )?;
                let header = token.header();
                self.auth_state
                    .lock()
                    .unwrap()
                    .tokens
                    .insert(token_key.to_string(), token);
                Ok(Some(header))
            }
        }
    }

    fn unauthorized(
        &self,
        access: &Access,
        sent_credentials: bool,
        detail: String,
    ) -> RegistryError {
        let detail = match (&self.credential, sent_credentials) {
            (None, _) => format!(
                "{detail} (no credentials: run kiln login {})",
                self.registry
            ),
            (Some(Credential::Basic { username, .. }), true) => {
                format!("{detail} (credentials of user {username:?} refused)")
            }
            (Some(_), _) => detail,
        };
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            repository: access.what(),
            detail,
        }
    }
}

/// What went wrong on the wire, without the URL ureq puts in its own message (the caller names
/// the request already).
fn transport_detail(transport: &ureq::Transport) -> String {
    let mut detail = transport.kind().to_string();
    if let Some(message) = transport.message() {
        detail.push_str(": ");
        detail.push_str(message);
    }
    if let Some(source) = std::error::Error::source(transport) {
        detail.push_str(": ");
        detail.push_str(&source.to_string());
    }
    detail
}

fn strip_base(url: &str, base_url: &str) -> String {
    url.strip_prefix(base_url).unwrap_or(url).to_string()
}

/// The `sha256:...` in an upload URL's `digest=` query, for error messages.
fn path_digest(url: &str) -> Option<Digest> {
    let (_, query) = url.split_once("digest=")?;
    let value = query.split('&').next()?.replace("%3A", ":");
    value.parse().ok()
}

fn append_query(url: &str, key: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{key}={}", percent_encode(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_cover_push_and_mount_source() {
        let access = Access {
            repository: "a/b",
            push: true,
            mount_from: Some("c/d"),
        };
        assert_eq!(
            access.scopes(),
            vec!["repository:a/b:pull,push", "repository:c/d:pull"]
        );
        let pull = Access {
            repository: "x",
            push: false,
            mount_from: None,
        };
        assert_eq!(pull.scopes(), vec!["repository:x:pull"]);
    }

    #[test]
    fn upload_urls() {
        let digest = Digest::of_bytes(b"x");
        let url = append_query(
            "http://h/v2/r/blobs/uploads/u?_state=abc",
            "digest",
            &digest.to_string(),
        );
        assert!(
            url.ends_with(&format!("&digest=sha256%3A{}", digest.hex())),
            "{url}"
        );
        assert_eq!(path_digest(&url), Some(digest.clone()));
        let client = Client::new("127.0.0.1:5000", &RegistryConfig::default(), None);
        assert_eq!(client.absolute("/v2/x"), "http://127.0.0.1:5000/v2/x");
        assert_eq!(client.absolute("https://s3/x"), "https://s3/x");
    }

    #[test]
    fn system_roots_make_a_tls_config() {
        let config = system_roots_config();
        assert!(Arc::ptr_eq(&config, &system_roots_config()), "built once");
    }

    #[test]
    fn debug_hides_credentials() {
        let client = Client::new(
            "quay.io",
            &RegistryConfig::default(),
            Some(Credential::Basic {
                username: "u".into(),
                password: Secret::new("topsecret"),
            }),
        );
        let shown = format!("{client:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
    }
}
