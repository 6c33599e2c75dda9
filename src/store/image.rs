//! Images: the config (oci-spec's `ImageConfiguration` plus the Docker fields it lacks),
//! manifests kept as raw bytes beside their parsed form, chain IDs, and the store operations
//! that create, find, name and unname images.
//!
//! A manifest or config that came from elsewhere is never re-serialised: its digest is the
//! digest of the bytes kept. Configs kiln writes are serialised with sorted keys so the same
//! config always has the same ID.

use super::index::{self, IndexEntry};
use super::{kiln_digest, parse_reference, Reference, Result, Store, StoreError};
use crate::digest::Digest;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};

/// Docker's HEALTHCHECK settings (durations in nanoseconds), as Docker and BuildKit write them
/// inside the config's `config` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

/// An image config: the OCI fields plus Docker's `Healthcheck`, `OnBuild`, `Shell` and
/// `ArgsEscaped`, which live in the same `config` object (as BuildKit writes OCI configs) so
/// docker and BuildKit read them back.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageConfig {
    pub oci: ImageConfiguration,
    pub healthcheck: Option<Healthcheck>,
    pub on_build: Option<Vec<String>>,
    pub shell: Option<Vec<String>>,
    pub args_escaped: Option<bool>,
}

impl ImageConfig {
    pub fn new(oci: ImageConfiguration) -> Self {
        ImageConfig {
            oci,
            healthcheck: None,
            on_build: None,
            shell: None,
            args_escaped: None,
        }
    }

    /// Parses config bytes.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<ImageConfig> {
        let json_error = |source| StoreError::Json {
            what: what.to_string(),
            source,
        };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json_error)?;
        let oci: ImageConfiguration = serde_json::from_value(value.clone()).map_err(json_error)?;
        let inner = &value["config"];
        let field = |name: &str| -> Result<Option<serde_json::Value>> {
            Ok(match &inner[name] {
                serde_json::Value::Null => None,
                other => Some(other.clone()),
            })
        };
        let healthcheck = field("Healthcheck")?
            .map(serde_json::from_value)
            .transpose()
            .map_err(json_error)?;
        let on_build = field("OnBuild")?
            .map(serde_json::from_value)
            .transpose()
            .map_err(json_error)?;
        let shell = field("Shell")?
            .map(serde_json::from_value)
            .transpose()
            .map_err(json_error)?;
        let args_escaped = field("ArgsEscaped")?
            .map(serde_json::from_value)
            .transpose()
            .map_err(json_error)?;
        Ok(ImageConfig {
            oci,
            healthcheck,
            on_build,
            shell,
            args_escaped,
        })
    }

    /// Serialises the config canonically (sorted keys, no whitespace).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let json_error = |source| StoreError::Json {
            what: "image config".into(),
            source,
        };
        let mut value = serde_json::to_value(&self.oci).map_err(json_error)?;
        let extras: Vec<(&str, serde_json::Value)> = [
            (
                "Healthcheck",
                self.healthcheck.as_ref().map(serde_json::to_value),
            ),
            ("OnBuild", self.on_build.as_ref().map(serde_json::to_value)),
            ("Shell", self.shell.as_ref().map(serde_json::to_value)),
            (
                "ArgsEscaped",
                self.args_escaped.as_ref().map(serde_json::to_value),
            ),
        ]
        .into_iter()
        .filter_map(|(key, v)| v.map(|v| v.map(|v| (key, v))))
        .collect::<Result<_, _>>()
        .map_err(json_error)?;
        if !extras.is_empty() {
            let object = value
                .as_object_mut()
                .expect("an ImageConfiguration serialises to an object");
            let config = object
                .entry("config")
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let Some(config) = config.as_object_mut() {
                for (key, v) in extras {
                    config.insert(key.to_string(), v);
                }
            }
        }
        serde_json::to_vec(&value).map_err(json_error)
    }

    /// The layer diff IDs, parsed.
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        self.oci
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| {
                d.parse().map_err(|_| StoreError::BadDigest {
                    what: "config rootfs.diff_ids".into(),
                    value: d.clone(),
                })
            })
            .collect()
    }
}

/// Chain IDs of a layer stack: `chain(0) = diff(0)`, `chain(n) = sha256(chain(n-1) + " " +
/// diff(n))`, as the OCI image spec defines them.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::of_bytes(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// A stored image: its manifest and config, raw and parsed, and its names.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest: ImageManifest,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
    /// Full normalised references naming this image, in index order.
    pub names: Vec<String>,
}

impl Image {
    /// The image ID: the config digest, as docker shows it.
    pub fn id(&self) -> Digest {
        Digest::of_bytes(&self.config_bytes)
    }
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }
    pub fn layers(&self) -> &[Descriptor] {
        self.manifest.layers()
    }
    /// Layer blob digests, in order.
    pub fn layer_digests(&self) -> Result<Vec<Digest>> {
        self.layers()
            .iter()
            .map(|l| kiln_digest(l.digest(), "manifest layers"))
            .collect()
    }
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        self.config.diff_ids()
    }
    pub fn chain_ids(&self) -> Result<Vec<Digest>> {
        Ok(chain_ids(&self.diff_ids()?))
    }
    /// Bytes the image's layers take in the store.
    pub fn size(&self) -> u64 {
        self.layers().iter().map(|l| l.size()).sum()
    }
    /// The creation time from the config, if any.
    pub fn created(&self) -> Option<chrono::DateTime<chrono::FixedOffset>> {
        self.config
            .oci
            .created()
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
    }
}

/// Parses manifest bytes and checks it is a single-image manifest whose layers kiln can read.
pub fn parse_manifest(bytes: &[u8], what: &str) -> Result<ImageManifest> {
    let manifest: ImageManifest =
        serde_json::from_slice(bytes).map_err(|source| StoreError::Json {
            what: what.to_string(),
            source,
        })?;
    if let Some(media_type) = manifest.media_type() {
        if !index::is_manifest_media_type(media_type.as_ref()) {
            return Err(StoreError::UnknownMediaType {
                what: what.to_string(),
                media_type: media_type.to_string(),
            });
        }
    }
    let config_type = manifest.config().media_type().to_string();
    if !matches!(
        config_type.as_str(),
        "application/vnd.oci.image.config.v1+json"
            | "application/vnd.docker.container.image.v1+json"
    ) {
        return Err(StoreError::UnknownMediaType {
            what: format!("config of {what}"),
            media_type: config_type,
        });
    }
    for layer in manifest.layers() {
        let media_type = layer.media_type().to_string();
        if super::Compression::from_layer_media_type(&media_type).is_none() {
            return Err(StoreError::UnknownMediaType {
                what: format!("layer {} of {what}", layer.digest()),
                media_type,
            });
        }
    }
    Ok(manifest)
}

/// The media type a manifest declares (Docker schema 2 manifests always declare it; an OCI
/// manifest may omit it).
fn manifest_media_type(manifest: &ImageManifest) -> String {
    manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_else(|| MediaType::ImageManifest.to_string())
}

/// Serialises with sorted keys and no whitespace.
pub(crate) fn canonical_json<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>> {
    let json_error = |source| StoreError::Json {
        what: what.to_string(),
        source,
    };
    let value = serde_json::to_value(value).map_err(json_error)?;
    serde_json::to_vec(&value).map_err(json_error)
}

impl Store {
    /// Loads the image a manifest digest names (names left empty).
    pub fn image(&self, manifest_digest: &Digest) -> Result<Image> {
        let manifest_bytes = self.read_blob_bytes(manifest_digest)?;
        let what = format!("manifest {manifest_digest}");
        let manifest = parse_manifest(&manifest_bytes, &what)?;
        let config_digest = kiln_digest(manifest.config().digest(), &what)?;
        let config_bytes = self.read_blob_bytes(&config_digest)?;
        let config = ImageConfig::from_bytes(&config_bytes, &format!("config {config_digest}"))?;
        Ok(Image {
            manifest_digest: manifest_digest.clone(),
            manifest_media_type: manifest_media_type(&manifest),
            manifest_bytes,
            manifest,
            config_bytes,
            config,
            names: Vec::new(),
        })
    }

    /// Every image in index.json (single-image manifests only), with its names, in index order.
    pub fn images(&self) -> Result<Vec<Image>> {
        let entries = self.index_entries()?;
        let mut images: Vec<Image> = Vec::new();
        for entry in entries.iter().filter(|e| e.is_image_manifest()) {
            if let Some(image) = images
                .iter_mut()
                .find(|i| i.manifest_digest == entry.manifest)
            {
                image.names.extend(entry.name.clone());
                continue;
            }
            let mut image = self.image(&entry.manifest)?;
            image.names.extend(entry.name.clone());
            images.push(image);
        }
        Ok(images)
    }

    /// Finds an image by name (`busybox`, `docker.io/library/busybox:latest`,
    /// `name@sha256:<manifest digest>`), by full ID (`sha256:<hex>` or 64 hex) or by a unique
    /// ID prefix, as docker does.
    pub fn resolve(&self, query: &str) -> Result<Image> {
        if let Some(image) = self.resolve_name(query)? {
            return Ok(image);
        }
        let images = self.images()?;
        let hex_part = query.strip_prefix("sha256:").unwrap_or(query);
        let is_hex = !hex_part.is_empty()
            && hex_part
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if is_hex && hex_part.len() == 64 {
            return images
                .into_iter()
                .find(|i| i.id().hex() == hex_part || i.manifest_digest.hex() == hex_part)
                .ok_or_else(|| StoreError::NoSuchImage(query.to_string()));
        }
        if let Ok(reference) = parse_reference(query) {
            let whole = reference.whole();
            // The exact name first: a digest pull stores `repo@sha256:...` as the name.
            if let Some(image) = images.iter().find(|i| i.names.contains(&whole)) {
                return Ok(image.clone());
            }
            if let Some(digest) = reference.digest() {
                // Otherwise any image of the same repository with that manifest digest
                // (`repo:tag` or `repo@digest` names), as docker's repo digests do.
                let repo = format!("{}/{}", reference.registry(), reference.repository());
                let in_repo = |name: &String| {
                    name.strip_prefix(repo.as_str())
                        .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@'))
                };
                if let Some(image) = images.iter().find(|i| {
                    i.manifest_digest.to_string() == digest && i.names.iter().any(in_repo)
                }) {
                    return Ok(image.clone());
                }
            }
        }
        if is_hex {
            let matches: Vec<&Image> = images
                .iter()
                .filter(|i| i.id().hex().starts_with(hex_part))
                .collect();
            match matches.len() {
                0 => {}
                1 => return Ok(matches[0].clone()),
                n_matches => {
                    return Err(StoreError::AmbiguousId {
                        prefix: query.to_string(),
                        n_matches,
                    })
                }
            }
        }
        Err(StoreError::NoSuchImage(query.to_string()))
    }

    /// The common case of [`Store::resolve`], a tagged name listed in index.json, reading only
    /// that image's manifest and config rather than every image's (a `kiln build` resolves
    /// each `FROM`; with 40 images in the store that was 80 blob reads and JSON parses).
    /// `None` when the query is not such a name: the full search decides then.
    fn resolve_name(&self, query: &str) -> Result<Option<Image>> {
        let hex_part = query.strip_prefix("sha256:").unwrap_or(query);
        if hex_part.len() == 64 && hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let Ok(reference) = parse_reference(query) else {
            return Ok(None);
        };
        if reference.digest().is_some() {
            return Ok(None);
        }
        let whole = reference.whole();
        let entries = self.index_entries()?;
        let Some(found) = entries
            .iter()
            .find(|e| e.is_image_manifest() && e.name.as_deref() == Some(whole.as_str()))
        else {
            return Ok(None);
        };
        let mut image = self.image(&found.manifest)?;
        image.names = entries
            .iter()
            .filter(|e| e.is_image_manifest() && e.manifest == found.manifest)
            .filter_map(|e| e.name.clone())
            .collect();
        Ok(Some(image))
    }

    /// Writes a config and a manifest over already-stored layers and lists the image in
    /// index.json (unnamed until `set_name`). Returns the stored image.
    pub fn put_image(&self, config: &ImageConfig, layers: Vec<Descriptor>) -> Result<Image> {
        let config_bytes = config.to_bytes()?;
        let config_info = self.write_blob_bytes(&config_bytes)?;
        let manifest = oci_spec::image::ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_info.descriptor(MediaType::ImageConfig.as_ref()))
            .layers(layers)
            .build()
            .map_err(|err| StoreError::Invalid(format!("cannot build manifest: {err}")))?;
        let manifest_bytes = canonical_json(&manifest, "image manifest")?;
        self.put_manifest(&manifest_bytes)
    }

    /// Stores manifest bytes as they are (a pulled or loaded manifest keeps its digest) after
    /// checking the config and every layer it names are present with the sizes it says, and
    /// lists the image in index.json (unnamed until `set_name`).
    pub fn put_manifest(&self, manifest_bytes: &[u8]) -> Result<Image> {
        let manifest_digest = Digest::of_bytes(manifest_bytes);
        let what = format!("manifest {manifest_digest}");
        let manifest = parse_manifest(manifest_bytes, &what)?;
        for descriptor in std::iter::once(manifest.config()).chain(manifest.layers()) {
            let digest = kiln_digest(descriptor.digest(), &what)?;
            let size = self.blob_size(&digest)?;
            if size != descriptor.size() {
                return Err(StoreError::SizeMismatch {
                    digest,
                    expected: descriptor.size(),
                    actual: size,
                });
            }
        }
        let config_digest = kiln_digest(manifest.config().digest(), &what)?;
        let config_bytes = self.read_blob_bytes(&config_digest)?;
        let config = ImageConfig::from_bytes(&config_bytes, &format!("config {config_digest}"))?;
        let diff_ids = config.diff_ids()?;
        if diff_ids.len() != manifest.layers().len() {
            return Err(StoreError::Invalid(format!(
                "{what} has {} layers but its config lists {} diff IDs",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        let info = self.write_blob_bytes(manifest_bytes)?;
        let image = Image {
            manifest_digest: info.digest.clone(),
            manifest_media_type: manifest_media_type(&manifest),
            manifest_bytes: manifest_bytes.to_vec(),
            manifest,
            config_bytes,
            config,
            names: Vec::new(),
        };
        let entry = IndexEntry::new(&info.digest, info.size, &image.manifest_media_type, None);
        self.update_index(|entries| {
            index::apply_unnamed(entries, &entry);
            Ok(())
        })?;
        Ok(image)
    }

    /// Names the image with manifest `manifest_digest` (which must be stored). The name leaves
    /// whichever image had it.
    pub fn set_name(&self, name: &Reference, manifest_digest: &Digest) -> Result<()> {
        self.set_names(std::slice::from_ref(name), manifest_digest)
    }

    /// `set_name` for several names in one index update.
    pub fn set_names(&self, names: &[Reference], manifest_digest: &Digest) -> Result<()> {
        let image = self.image(manifest_digest)?;
        let entry = IndexEntry::new(
            manifest_digest,
            image.manifest_bytes.len() as u64,
            &image.manifest_media_type,
            None,
        );
        self.update_index(|entries| {
            for name in names {
                index::apply_name(entries, &entry, name);
            }
            if names.is_empty() {
                index::apply_unnamed(entries, &entry);
            }
            Ok(())
        })
    }

    /// Removes a name (`kiln rmi busybox`): the image goes from index.json when it has no name
    /// left. Returns the image's manifest digest.
    pub fn remove_name(&self, name: &str) -> Result<Digest> {
        let reference = parse_reference(name)?;
        let whole = reference.whole();
        self.update_index(|entries| {
            let pos = entries
                .iter()
                .position(|e| e.name.as_deref() == Some(whole.as_str()))
                .ok_or_else(|| StoreError::NoSuchImage(name.to_string()))?;
            Ok(entries.remove(pos).manifest)
        })
    }

    /// Removes an image and all its names from index.json. Its blobs stay until `prune`.
    pub fn remove_image(&self, manifest_digest: &Digest) -> Result<usize> {
        self.update_index(|entries| {
            let before = entries.len();
            entries.retain(|e| e.manifest != *manifest_digest);
            Ok(before - entries.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_fields_survive_a_round_trip() {
        let raw = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Healthcheck":{"Test":["CMD","true"],"Interval":1000000000,"Retries":3},"OnBuild":["RUN echo hi"],"Shell":["/bin/bash","-c"],"ArgsEscaped":true},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config = ImageConfig::from_bytes(raw, "test").unwrap();
        assert_eq!(
            config.shell.as_deref(),
            Some(&["/bin/bash".to_string(), "-c".into()][..])
        );
        assert_eq!(config.healthcheck.as_ref().unwrap().retries, Some(3));
        let again = ImageConfig::from_bytes(&config.to_bytes().unwrap(), "again").unwrap();
        assert_eq!(again, config);
        // Canonical: serialising twice gives the same bytes.
        assert_eq!(again.to_bytes().unwrap(), config.to_bytes().unwrap());
    }

    /// A store holding one empty image named `names`; returns its manifest digest.
    fn store_with_image(names: &[&str]) -> (tempfile::TempDir, Store, Digest) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let raw = br#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config = ImageConfig::from_bytes(raw, "test").unwrap();
        let image = store.put_image(&config, Vec::new()).unwrap();
        let digest = image.manifest_digest.clone();
        for name in names {
            let name = name.replace("DIGEST", &digest.to_string());
            store
                .set_name(&crate::store::parse_reference(&name).unwrap(), &digest)
                .unwrap();
        }
        (dir, store, digest)
    }

    #[test]
    fn a_digest_name_resolves_by_itself() {
        // What `kiln pull host:port/repo@sha256:...` stores: the name with the digest only.
        let (_dir, store, digest) = store_with_image(&["127.0.0.1:5000/repo@DIGEST"]);
        let name = format!("127.0.0.1:5000/repo@{digest}");
        assert_eq!(store.resolve(&name).unwrap().manifest_digest, digest);
        // Another repository with the same digest is not that image.
        let other = format!("127.0.0.1:5000/other@{digest}");
        assert!(matches!(
            store.resolve(&other),
            Err(StoreError::NoSuchImage(_))
        ));
        // A repository whose name only starts like this one is not it either.
        let longer = format!("127.0.0.1:5000/rep@{digest}");
        assert!(store.resolve(&longer).is_err());
    }

    #[test]
    fn a_tagged_image_resolves_by_repo_and_digest() {
        let (_dir, store, digest) = store_with_image(&["127.0.0.1:5000/repo:1"]);
        let name = format!("127.0.0.1:5000/repo@{digest}");
        assert_eq!(store.resolve(&name).unwrap().manifest_digest, digest);
        assert_eq!(
            store
                .resolve("127.0.0.1:5000/repo:1")
                .unwrap()
                .manifest_digest,
            digest
        );
    }

    #[test]
    fn resolving_a_name_reads_only_that_image_and_keeps_all_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config = |cmd: &str| {
            let raw = format!(
                r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["{cmd}"]}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#
            );
            ImageConfig::from_bytes(raw.as_bytes(), "test").unwrap()
        };
        let first = store.put_image(&config("one"), Vec::new()).unwrap();
        let second = store.put_image(&config("two"), Vec::new()).unwrap();
        let name = |text: &str| parse_reference(text).unwrap();
        store
            .set_names(&[name("a:1"), name("b:2")], &first.manifest_digest)
            .unwrap();
        store
            .set_name(&name("c:1"), &second.manifest_digest)
            .unwrap();
        let expected = store.resolve("docker.io/library/b:2").unwrap();
        // The full search would now fail on the broken second image; a name does not need it.
        std::fs::remove_file(store.blob_path(&second.manifest_digest)).unwrap();
        assert!(store.images().is_err());
        let found = store.resolve("b:2").unwrap();
        assert_eq!(found.manifest_digest, first.manifest_digest);
        assert_eq!(found.names, expected.names);
        assert_eq!(
            found.names,
            vec![
                "docker.io/library/a:1".to_string(),
                "docker.io/library/b:2".to_string()
            ]
        );
        // Names not in the index, and IDs, still go through the full search.
        assert!(store.resolve("nothere:1").is_err());
        assert!(store.resolve(first.id().hex()).is_err());
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::of_bytes(b"a");
        let b = Digest::of_bytes(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::of_bytes(format!("{a} {b}").as_bytes()));
    }
}
