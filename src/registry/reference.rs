//! Image references resolved as Docker does, and how to reach the registry that serves them.
//!
//! Name normalisation is `oci_spec::distribution::Reference` (a port of Distribution's own
//! `normalize.go`): `busybox` is `docker.io/library/busybox:latest`. This file only adds what
//! the wire needs: docker.io is served from `registry-1.docker.io`, and plain HTTP is used for
//! loopback registries and those the user listed as insecure, HTTPS otherwise.

use super::RegistryError;
use crate::digest::Digest;
use std::fmt;
use std::str::FromStr;

/// Docker Hub's name in references, and the host that serves its API.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The key Docker uses for Docker Hub in `config.json` `auths`.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// A validated image reference: registry, repository, and a tag or a digest (a digest wins
/// when both are given, as Docker does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// The registry as named in references (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What goes after `/manifests/`: the digest if there is one, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The same repository, pinned to `digest`.
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl FromStr for ImageRef {
    type Err = RegistryError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| RegistryError::InvalidReference {
            reference: text.to_string(),
            reason,
        };
        let parsed = oci_spec::distribution::Reference::try_from(text)
            .map_err(|err| invalid(err.to_string()))?;
        // The grammar lets a first component with capitals pass as a domain; Docker refuses
        // capitals anywhere in a repository path.
        if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository name must be lowercase".to_string()));
        }
        let digest = match parsed.digest() {
            Some(digest) => Some(
                digest
                    .parse::<Digest>()
                    .map_err(|err| invalid(err.to_string()))?,
            ),
            None => None,
        };
        Ok(ImageRef {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            tag: parsed.tag().map(str::to_string),
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// How to reach registries: which ones speak plain HTTP, and how patient to be.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Registries (`host` or `host:port`) reached over plain HTTP (`--insecure-registry`).
    pub insecure: Vec<String>,
    /// Attempts per request on connection failures and 5xx answers (at least 1).
    pub attempts: u32,
    /// First delay between attempts; doubled after each failure.
    pub backoff: std::time::Duration,
    /// Connect timeout, and read/write timeout for one socket operation.
    pub connect_timeout: std::time::Duration,
    pub io_timeout: std::time::Duration,
    /// Blobs transferred at once by the `transfer` helpers.
    pub parallel_transfers: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            attempts: 4,
            backoff: std::time::Duration::from_millis(250),
            connect_timeout: std::time::Duration::from_secs(15),
            io_timeout: std::time::Duration::from_secs(120),
            parallel_transfers: 4,
        }
    }
}

impl RegistryConfig {
    /// The host (and port) that serves `registry`'s API.
    pub fn api_host(registry: &str) -> &str {
        if registry == DOCKER_HUB || registry == "index.docker.io" {
            DOCKER_HUB_API_HOST
        } else {
            registry
        }
    }

    /// True if `registry` is spoken to over plain HTTP: loopback, or listed as insecure.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let host = host_without_port(registry);
        if host == "localhost" || host.starts_with("127.") || host == "[::1]" || host == "::1" {
            return true;
        }
        self.insecure
            .iter()
            .any(|entry| normalize_registry(entry) == registry || entry == host)
    }

    /// `http(s)://host[:port]` for `registry`'s API.
    pub fn base_url(&self, registry: &str) -> String {
        let scheme = if self.is_insecure(registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", Self::api_host(registry))
    }
}

fn host_without_port(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry.split_once(']').map_or(registry, |(host, _)| host);
    }
    registry.rsplit_once(':').map_or(registry, |(host, _)| host)
}

/// A registry as the user typed it (`https://index.docker.io/v1/`, `localhost:5000/`) reduced
/// to the name references use (`docker.io`, `localhost:5000`).
pub fn normalize_registry(text: &str) -> String {
    let without_scheme = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(text);
    let host = without_scheme.split('/').next().unwrap_or("");
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, registry: &str, repository: &str, manifest_reference: &str) {
        let image_ref: ImageRef = text.parse().unwrap();
        assert_eq!(image_ref.registry(), registry, "{text}");
        assert_eq!(image_ref.repository(), repository, "{text}");
        assert_eq!(image_ref.manifest_reference(), manifest_reference, "{text}");
    }

    #[test]
    fn resolves_names_as_docker_does() {
        check("busybox", "docker.io", "library/busybox", "latest");
        check("user/app:1.2", "docker.io", "user/app", "1.2");
        check("localhost:5000/a/b:t", "localhost:5000", "a/b", "t");
        check("127.0.0.1:5000/app", "127.0.0.1:5000", "app", "latest");
        let digest = format!("sha256:{}", "a".repeat(64));
        check(&format!("quay.io/x/y@{digest}"), "quay.io", "x/y", &digest);
        check(
            &format!("quay.io/x/y:t@{digest}"),
            "quay.io",
            "x/y",
            &digest,
        );
        assert!("UPPER/case".parse::<ImageRef>().is_err());
        assert!("".parse::<ImageRef>().is_err());
        assert!(format!("x@sha256:{}", "a".repeat(10))
            .parse::<ImageRef>()
            .is_err());
    }

    #[test]
    fn chooses_host_and_scheme() {
        let config = RegistryConfig {
            insecure: vec!["myreg.lan:5000".into(), "other.lan".into()],
            ..RegistryConfig::default()
        };
        assert_eq!(config.base_url("docker.io"), "https://registry-1.docker.io");
        assert_eq!(config.base_url("localhost:5000"), "http://localhost:5000");
        assert_eq!(config.base_url("127.0.0.1:41000"), "http://127.0.0.1:41000");
        assert_eq!(config.base_url("myreg.lan:5000"), "http://myreg.lan:5000");
        assert_eq!(config.base_url("other.lan:443"), "http://other.lan:443");
        assert_eq!(config.base_url("quay.io"), "https://quay.io");
    }

    #[test]
    fn normalizes_typed_registries() {
        assert_eq!(
            normalize_registry("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(normalize_registry("registry-1.docker.io"), "docker.io");
        assert_eq!(
            normalize_registry("http://localhost:5000/"),
            "localhost:5000"
        );
        assert_eq!(normalize_registry("quay.io"), "quay.io");
    }
}
