//! Platforms (`linux/amd64`, `linux/arm64/v8`) and choosing one image manifest from an OCI
//! index or Docker manifest list.
//!
//! Knows the index JSON shape only as far as choosing needs (descriptors with a `platform`);
//! the chosen manifest is fetched by digest, so it is verified like any digest fetch.

use super::client::{Client, Manifest};
use super::{is_index_media_type, RegistryError};
use crate::digest::Digest;
use std::fmt;
use std::str::FromStr;

/// An `os/architecture[/variant]` triple with Go's (and the OCI spec's) names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform kiln runs on: linux and `std::env::consts::ARCH` in Go's words.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
            "mips64" => ("mips64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// The variant, with arm64's implied `v8` made explicit so `linux/arm64` matches
    /// `linux/arm64/v8`.
    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None) => Some("v8"),
            (_, variant) => variant,
        }
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split('/').collect();
        let bad = || format!("invalid platform {text:?}: expected os/arch[/variant]");
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        match parts.as_slice() {
            [os, architecture] => Ok(Platform {
                os: os.to_string(),
                architecture: architecture.to_string(),
                variant: None,
            }),
            [os, architecture, variant] => Ok(Platform {
                os: os.to_string(),
                architecture: architecture.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// One manifest an index lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<Platform>,
}

/// The manifests an index lists, in order.
pub fn parse_index(bytes: &[u8]) -> Result<Vec<IndexEntry>, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        manifests: Vec<Descriptor>,
    }
    #[derive(serde::Deserialize)]
    struct Descriptor {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        digest: Digest,
        size: u64,
        platform: Option<PlatformJson>,
    }
    #[derive(serde::Deserialize)]
    struct PlatformJson {
        os: String,
        architecture: String,
        variant: Option<String>,
    }
    let index: Index = serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
    Ok(index
        .manifests
        .into_iter()
        .map(|d| IndexEntry {
            media_type: d.media_type,
            digest: d.digest,
            size: d.size,
            platform: d.platform.map(|p| Platform {
                os: p.os,
                architecture: p.architecture,
                variant: p.variant.filter(|v| !v.is_empty()),
            }),
        })
        .collect())
}

/// The entry for `wanted`: same os and architecture; an exact variant beats an entry without
/// one; an entry with another variant never matches.
pub fn select<'a>(entries: &'a [IndexEntry], wanted: &Platform) -> Option<&'a IndexEntry> {
    let mut best: Option<(&IndexEntry, u8)> = None;
    for entry in entries {
        let Some(platform) = &entry.platform else {
            continue;
        };
        if platform.os != wanted.os || platform.architecture != wanted.architecture {
            continue;
        }
        let rank = match (wanted.normalized_variant(), platform.normalized_variant()) {
            (Some(a), Some(b)) if a == b => 2,
            (None, None) => 2,
            (_, None) => 1,
            (None, Some(_)) => 1,
            _ => continue,
        };
        if best.map_or(true, |(_, best_rank)| rank > best_rank) {
            best = Some((entry, rank));
        }
    }
    best.map(|(entry, _)| entry)
}

/// An image manifest and, if it was reached through one, the index that named it.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    pub index: Option<Manifest>,
    pub manifest: Manifest,
}

/// Fetches `reference` from `repository`; if it is an index, follows the entry for `platform`.
pub fn fetch_image_manifest(
    client: &Client,
    repository: &str,
    reference: &str,
    platform: &Platform,
) -> Result<ResolvedImage, RegistryError> {
    let first = client.get_manifest(repository, reference)?;
    if !is_index_media_type(&first.media_type) {
        return Ok(ResolvedImage {
            index: None,
            manifest: first,
        });
    }
    let entries = parse_index(&first.bytes).map_err(|reason| RegistryError::BadManifest {
        registry: client.registry().to_string(),
        repository: repository.to_string(),
        reason: format!("index {}: {reason}", first.digest),
    })?;
    let entry = select(&entries, platform).ok_or_else(|| RegistryError::NoPlatform {
        registry: client.registry().to_string(),
        repository: repository.to_string(),
        platform: platform.to_string(),
        available: entries
            .iter()
            .filter_map(|e| e.platform.as_ref().map(|p| p.to_string()))
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let manifest = client.get_manifest(repository, &entry.digest.to_string())?;
    if is_index_media_type(&manifest.media_type) {
        return Err(RegistryError::BadManifest {
            registry: client.registry().to_string(),
            repository: repository.to_string(),
            reason: format!("index entry {} is itself an index", entry.digest),
        });
    }
    Ok(ResolvedImage {
        index: Some(first),
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[&str]) -> Vec<IndexEntry> {
        platforms
            .iter()
            .enumerate()
            .map(|(i, p)| IndexEntry {
                media_type: super::super::MEDIA_TYPE_OCI_MANIFEST.into(),
                digest: Digest::of_bytes(&[i as u8]),
                size: 1,
                platform: Some(p.parse().unwrap()),
            })
            .collect()
    }

    fn check(platforms: &[&str], wanted: &str, expect: Option<usize>) {
        let entries = index(platforms);
        let chosen = select(&entries, &wanted.parse().unwrap());
        let expected = expect.map(|i| &entries[i]);
        assert_eq!(chosen, expected, "{platforms:?} {wanted}");
    }

    #[test]
    fn chooses_the_platform() {
        let all = [
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm64/v8",
            "linux/amd64",
            "unknown/unknown",
        ];
        check(&all, "linux/amd64", Some(3));
        check(&all, "linux/arm64", Some(2));
        check(&all, "linux/arm/v7", Some(1));
        check(&all, "linux/arm/v5", None);
        check(&all, "linux/s390x", None);
        check(
            &["linux/arm64", "linux/arm64/v8"],
            "linux/arm64/v8",
            Some(0),
        );
        check(&["windows/amd64", "linux/amd64"], "linux/amd64", Some(1));
    }

    #[test]
    fn host_platform_is_linux_in_go_names() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.to_string(), "linux/amd64");
        }
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
    }

    #[test]
    fn parses_docker_manifest_lists() {
        let digest = Digest::of_bytes(b"m");
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{digest}","size":527,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let entries = parse_index(text.as_bytes()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].digest, digest);
        assert_eq!(
            entries[0].platform.as_ref().unwrap().to_string(),
            "linux/amd64"
        );
        assert!(parse_index(b"{}").is_err());
    }
}
