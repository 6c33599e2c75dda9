//! index.json: the list of images and their names. Each name is a descriptor whose
//! `org.opencontainers.image.ref.name` annotation holds the full normalised reference, so other
//! OCI tools (`skopeo inspect oci:<root>:<ref>`, umoci) find images by the same names. An image
//! without a name (built untagged, or whose name moved to another image) keeps one descriptor
//! without the annotation, as docker keeps `<none>` images.
//!
//! index.json is replaced whole (temp file, fsync, rename) while the writer lock is held.

use super::{blob, kiln_digest, Reference, Result, Store, StoreError};
use crate::digest::Digest;
use oci_spec::image::{Descriptor, ImageIndex, MediaType};
use std::collections::HashMap;

/// The annotation OCI layouts name images with.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One descriptor of index.json.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub descriptor: Descriptor,
    pub manifest: Digest,
    /// The full normalised reference, when the entry names the image.
    pub name: Option<String>,
}

impl IndexEntry {
    pub fn new(manifest: &Digest, size: u64, media_type: &str, name: Option<&Reference>) -> Self {
        let mut descriptor = Descriptor::new(
            MediaType::from(media_type),
            size,
            super::oci_digest(manifest),
        );
        if let Some(name) = name {
            let mut annotations = HashMap::new();
            annotations.insert(REF_NAME.to_string(), name.whole());
            descriptor.set_annotations(Some(annotations));
        }
        IndexEntry {
            descriptor,
            manifest: manifest.clone(),
            name: name.map(Reference::whole),
        }
    }

    fn from_descriptor(descriptor: Descriptor) -> Result<Self> {
        let manifest = kiln_digest(descriptor.digest(), "index.json")?;
        let name = descriptor
            .annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME).cloned());
        Ok(IndexEntry {
            descriptor,
            manifest,
            name,
        })
    }

    /// Whether this entry points at a single-image manifest (OCI or Docker schema 2).
    pub fn is_image_manifest(&self) -> bool {
        is_manifest_media_type(self.descriptor.media_type().as_ref())
    }
}

/// OCI and Docker schema 2 image manifest media types.
pub fn is_manifest_media_type(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.v2+json"
    )
}

pub(crate) fn empty_index() -> Vec<IndexEntry> {
    Vec::new()
}

/// Reads index.json.
pub fn read_index(store: &Store) -> Result<Vec<IndexEntry>> {
    let path = store.index_path();
    let bytes = std::fs::read(&path).map_err(|source| StoreError::ReadFile {
        path: path.clone(),
        source,
    })?;
    let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
        what: path.display().to_string(),
        source,
    })?;
    index
        .manifests()
        .iter()
        .cloned()
        .map(IndexEntry::from_descriptor)
        .collect()
}

/// Replaces index.json atomically. The caller holds the writer lock.
pub(crate) fn write_index(store: &Store, entries: &[IndexEntry]) -> Result<()> {
    let mut index = ImageIndex::default();
    index.set_media_type(Some(MediaType::ImageIndex));
    index.set_manifests(entries.iter().map(|e| e.descriptor.clone()).collect());
    // Through Value so object keys come out sorted: the same index always gives the same bytes.
    let value = serde_json::to_value(&index).map_err(|source| StoreError::Json {
        what: "index.json".into(),
        source,
    })?;
    let bytes = serde_json::to_vec(&value).map_err(|source| StoreError::Json {
        what: "index.json".into(),
        source,
    })?;
    blob::write_file_atomic(&store.tmp_dir(), &store.index_path(), &bytes)
}

/// Gives `name` to the manifest `entry` describes, in `entries`: the name leaves any other image
/// (which stays, unnamed, if it has no name left) and an unnamed entry of the same image is
/// dropped.
pub fn apply_name(entries: &mut Vec<IndexEntry>, target: &IndexEntry, name: &Reference) {
    let whole = name.whole();
    let mut orphaned: Option<IndexEntry> = None;
    if let Some(pos) = entries
        .iter()
        .position(|e| e.name.as_deref() == Some(whole.as_str()))
    {
        let old = entries.remove(pos);
        if old.manifest == target.manifest {
            // Already named so.
            entries.insert(pos, old);
            return;
        }
        if !entries.iter().any(|e| e.manifest == old.manifest) {
            orphaned = Some(old);
        }
    }
    entries.retain(|e| !(e.manifest == target.manifest && e.name.is_none()));
    entries.push(IndexEntry::new(
        &target.manifest,
        target.descriptor.size(),
        target.descriptor.media_type().as_ref(),
        Some(name),
    ));
    if let Some(old) = orphaned {
        entries.push(IndexEntry::new(
            &old.manifest,
            old.descriptor.size(),
            old.descriptor.media_type().as_ref(),
            None,
        ));
    }
}

/// Adds an unnamed entry for a manifest unless it is already listed.
pub fn apply_unnamed(entries: &mut Vec<IndexEntry>, target: &IndexEntry) {
    if !entries.iter().any(|e| e.manifest == target.manifest) {
        let mut unnamed = target.clone();
        unnamed.name = None;
        if let Some(annotations) = unnamed.descriptor.annotations().clone() {
            let mut annotations = annotations;
            annotations.remove(REF_NAME);
            unnamed
                .descriptor
                .set_annotations(if annotations.is_empty() {
                    None
                } else {
                    Some(annotations)
                });
        }
        entries.push(unnamed);
    }
}

impl Store {
    /// The entries of index.json.
    pub fn index_entries(&self) -> Result<Vec<IndexEntry>> {
        read_index(self)
    }

    /// Read-modify-write of index.json under the writer lock. A change that changes nothing
    /// (a rebuild naming the image it already named) writes nothing: no temp file, no fsync.
    pub fn update_index<T>(
        &self,
        change: impl FnOnce(&mut Vec<IndexEntry>) -> Result<T>,
    ) -> Result<T> {
        let _lock = self.lock()?;
        let mut entries = read_index(self)?;
        let before: Vec<Descriptor> = entries.iter().map(|e| e.descriptor.clone()).collect();
        let out = change(&mut entries)?;
        let unchanged = entries.len() == before.len()
            && entries.iter().zip(&before).all(|(e, b)| &e.descriptor == b);
        if !unchanged {
            write_index(self, &entries)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, name: Option<&str>) -> IndexEntry {
        let digest = Digest::of_bytes(&[n]);
        let reference = name.map(|n| super::super::parse_reference(n).unwrap());
        IndexEntry::new(
            &digest,
            1,
            "application/vnd.oci.image.manifest.v1+json",
            reference.as_ref(),
        )
    }

    fn names(entries: &[IndexEntry]) -> Vec<(u8, Option<String>)> {
        entries
            .iter()
            .map(|e| {
                let n = (0..=255u8)
                    .find(|n| Digest::of_bytes(&[*n]) == e.manifest)
                    .unwrap();
                (n, e.name.clone())
            })
            .collect()
    }

    #[test]
    fn moving_a_name_leaves_the_old_image_unnamed() {
        let mut entries = vec![entry(1, Some("busybox"))];
        apply_name(
            &mut entries,
            &entry(2, None),
            &super::super::parse_reference("busybox").unwrap(),
        );
        assert_eq!(
            names(&entries),
            vec![
                (2, Some("docker.io/library/busybox:latest".into())),
                (1, None)
            ]
        );
        apply_unnamed(&mut entries, &entry(2, None));
        assert_eq!(entries.len(), 2);
        apply_name(
            &mut entries,
            &entry(1, None),
            &super::super::parse_reference("other:1").unwrap(),
        );
        assert_eq!(
            names(&entries),
            vec![
                (2, Some("docker.io/library/busybox:latest".into())),
                (1, Some("docker.io/library/other:1".into()))
            ]
        );
    }

    #[test]
    fn an_update_that_changes_nothing_leaves_index_json_alone() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let target = entry(1, Some("app:1"));
        store
            .update_index(|entries| {
                entries.push(target.clone());
                Ok(())
            })
            .unwrap();
        let inode = std::fs::metadata(store.index_path()).unwrap().ino();
        store
            .update_index(|entries| {
                let name = super::super::parse_reference("app:1").unwrap();
                apply_name(entries, &target, &name);
                Ok(())
            })
            .unwrap();
        assert_eq!(std::fs::metadata(store.index_path()).unwrap().ino(), inode);
        store
            .update_index(|entries| {
                let name = super::super::parse_reference("app:2").unwrap();
                apply_name(entries, &target, &name);
                Ok(())
            })
            .unwrap();
        assert_ne!(std::fs::metadata(store.index_path()).unwrap().ino(), inode);
        assert_eq!(store.index_entries().unwrap().len(), 2);
    }
}
