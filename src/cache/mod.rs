//! Cache keys: a sha256 over a step's normalised definition and its parent's key.
//!
//! `CacheKey = sha256("kiln-cache-v1" ‖ parent ‖ op fields)`, where every field is written
//! with a tag and a length prefix so no two different field lists encode to the same bytes
//! (`["ab", "c"]` and `["a", "bc"]` differ). The encoding is versioned: adding a field to any
//! op means a new version string, so old records can never be mistaken for new ones.
//!
//! This module knows only bytes and `Digest`s: the planner decides which fields an op has
//! (argv after expansion, env, the build args a step sees, the content digest of copied
//! sources), and things that must not change a key (progress labels, `--jobs`) never reach it.

use crate::digest::Digest;
use sha2::{Digest as _, Sha256};
use std::fmt;

/// The version string at the start of every key's preimage.
pub const CACHE_KEY_VERSION: &str = "kiln-cache-v1";

/// The key of one build step: equal keys mean the stored result can be reused.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct CacheKey(Digest);

impl CacheKey {
    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

impl From<Digest> for CacheKey {
    fn from(digest: Digest) -> Self {
        CacheKey(digest)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.0)
    }
}

/// What a step's key starts from: the key of the step before it, or the digest of the base
/// image (its manifest digest), or nothing (`FROM scratch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parent<'a> {
    Scratch,
    Image(&'a Digest),
    Step(&'a CacheKey),
}

/// Builds a key field by field. Field names are part of the encoding, so a value moved from
/// one field to another changes the key.
pub struct CacheKeyBuilder {
    hasher: Sha256,
}

impl CacheKeyBuilder {
    /// Starts a key for an op of kind `op` (`"exec"`, `"copy"`, `"meta"`, ...).
    pub fn new(parent: Parent<'_>, op: &str) -> Self {
        let mut builder = CacheKeyBuilder {
            hasher: Sha256::new(),
        };
        builder.raw(CACHE_KEY_VERSION.as_bytes());
        match parent {
            Parent::Scratch => builder.raw(b"scratch"),
            Parent::Image(digest) => {
                builder.raw(b"image");
                builder.raw(digest.to_string().as_bytes());
            }
            Parent::Step(key) => {
                builder.raw(b"step");
                builder.raw(key.to_string().as_bytes());
            }
        }
        builder.raw(op.as_bytes());
        builder
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
    }

    /// A named string field.
    pub fn str(mut self, name: &str, value: &str) -> Self {
        self.raw(name.as_bytes());
        self.raw(b"s");
        self.raw(value.as_bytes());
        self
    }

    /// A named optional string field (absent differs from empty).
    pub fn opt(mut self, name: &str, value: Option<&str>) -> Self {
        self.raw(name.as_bytes());
        match value {
            None => self.raw(b"none"),
            Some(value) => {
                self.raw(b"some");
                self.raw(value.as_bytes());
            }
        }
        self
    }

    /// A named list of strings, order kept (argv, env in order).
    pub fn list<I, S>(mut self, name: &str, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.raw(name.as_bytes());
        self.raw(b"l");
        let values: Vec<S> = values.into_iter().collect();
        self.hasher.update((values.len() as u64).to_le_bytes());
        for value in &values {
            self.raw(value.as_ref().as_bytes());
        }
        self
    }

    /// A named map, encoded sorted by key so insertion order never matters.
    pub fn map<'a, I>(mut self, name: &str, pairs: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut pairs: Vec<(&str, &str)> = pairs.into_iter().collect();
        pairs.sort();
        self.raw(name.as_bytes());
        self.raw(b"m");
        self.hasher.update((pairs.len() as u64).to_le_bytes());
        for (key, value) in pairs {
            self.raw(key.as_bytes());
            self.raw(value.as_bytes());
        }
        self
    }

    /// A named digest field (the content digest of copied sources, a mounted stage's key).
    pub fn digest(self, name: &str, digest: &Digest) -> Self {
        self.str(name, &digest.to_string())
    }

    /// A named boolean field.
    pub fn flag(self, name: &str, value: bool) -> Self {
        self.str(name, if value { "true" } else { "false" })
    }

    pub fn finish(self) -> CacheKey {
        CacheKey(Digest::from_sha256(self.hasher.finalize().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_key(parent: Parent<'_>, argv: &[&str]) -> CacheKey {
        CacheKeyBuilder::new(parent, "exec")
            .list("argv", argv)
            .finish()
    }

    #[test]
    fn same_definition_same_key() {
        assert_eq!(
            exec_key(Parent::Scratch, &["sh", "-c", "true"]),
            exec_key(Parent::Scratch, &["sh", "-c", "true"])
        );
    }

    #[test]
    fn field_boundaries_are_part_of_the_key() {
        assert_ne!(
            exec_key(Parent::Scratch, &["ab", "c"]),
            exec_key(Parent::Scratch, &["a", "bc"])
        );
        assert_ne!(
            exec_key(Parent::Scratch, &["abc"]),
            exec_key(Parent::Scratch, &["abc", ""])
        );
    }

    #[test]
    fn parent_changes_the_key() {
        let base = Digest::of_bytes(b"base image manifest");
        let from_image = exec_key(Parent::Image(&base), &["true"]);
        assert_ne!(from_image, exec_key(Parent::Scratch, &["true"]));
        let after = exec_key(Parent::Step(&from_image), &["true"]);
        assert_ne!(after, from_image);
    }

    #[test]
    fn field_names_and_op_kinds_matter() {
        let a = CacheKeyBuilder::new(Parent::Scratch, "meta")
            .str("user", "root")
            .finish();
        let b = CacheKeyBuilder::new(Parent::Scratch, "meta")
            .str("workdir", "root")
            .finish();
        let c = CacheKeyBuilder::new(Parent::Scratch, "exec")
            .str("user", "root")
            .finish();
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn maps_ignore_insertion_order_and_options_tell_absent_from_empty() {
        let one = CacheKeyBuilder::new(Parent::Scratch, "exec")
            .map("args", [("A", "1"), ("B", "2")])
            .finish();
        let two = CacheKeyBuilder::new(Parent::Scratch, "exec")
            .map("args", [("B", "2"), ("A", "1")])
            .finish();
        assert_eq!(one, two);
        let absent = CacheKeyBuilder::new(Parent::Scratch, "exec")
            .opt("user", None)
            .finish();
        let empty = CacheKeyBuilder::new(Parent::Scratch, "exec")
            .opt("user", Some(""))
            .finish();
        assert_ne!(absent, empty);
    }

    #[test]
    fn key_is_stable_across_releases() {
        // Pinned: a change here silently invalidates every user's cache, so it must come with
        // a new CACHE_KEY_VERSION.
        let key = CacheKeyBuilder::new(Parent::Scratch, "exec")
            .list("argv", ["/bin/sh", "-c", "true"])
            .finish();
        assert_eq!(key.to_string(), PINNED_KEY);
    }

    const PINNED_KEY: &str =
        "sha256:8d904548280d6760b59d243e92fc304beed4a5c055bd62f464da06d88fab588b";
}
