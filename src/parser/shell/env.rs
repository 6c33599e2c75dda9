//! Variable scopes for shell-word expansion: the `Env` trait and its impls for the shapes the
//! build keeps its ARG/ENV scope in.
//!
//! A scope only answers "what is the value of NAME, and is it set at all". It knows nothing of
//! Dockerfile instructions or of where the values came from. Names are compared exactly (case
//! sensitive), as on Linux; kiln builds Linux images only, so BuildKit's Windows rule
//! (case-insensitive names) is deliberately absent.

use std::collections::{BTreeMap, HashMap};

/// A variable scope the shell lexer reads from.
pub trait Env {
    /// The value of `name`: `None` when it is not set, `Some("")` when it is set but empty.
    fn lookup(&self, name: &str) -> Option<&str>;
}

/// Splits a `KEY=VALUE` entry at the first `=`; a bare `KEY` is set to the empty value.
fn split_entry(entry: &str) -> (&str, &str) {
    entry.split_once('=').unwrap_or((entry, ""))
}

/// Looks `name` up in `KEY=VALUE` entries; the last occurrence of a key wins.
fn lookup_entries<'a, I>(entries: I, name: &str) -> Option<&'a str>
where
    I: DoubleEndedIterator<Item = &'a str>,
{
    entries.rev().find_map(|entry| {
        let (key, value) = split_entry(entry);
        (key == name).then_some(value)
    })
}

/// `KEY=VALUE` entries in order (Docker's `[]string` env form); the last occurrence wins.
impl Env for [String] {
    fn lookup(&self, name: &str) -> Option<&str> {
        lookup_entries(self.iter().map(String::as_str), name)
    }
}

/// `KEY=VALUE` entries in order; the last occurrence wins.
impl Env for [&str] {
    fn lookup(&self, name: &str) -> Option<&str> {
        lookup_entries(self.iter().copied(), name)
    }
}

/// `(key, value)` pairs in order; the last occurrence of a key wins.
impl Env for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// `(key, value)` pairs in order; the last occurrence of a key wins.
impl Env for [(&str, &str)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| *value)
    }
}

impl<T> Env for Vec<T>
where
    [T]: Env,
{
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

impl<T, const N: usize> Env for [T; N]
where
    [T]: Env,
{
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl<S: std::hash::BuildHasher> Env for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl<T: Env + ?Sized> Env for &T {
    fn lookup(&self, name: &str) -> Option<&str> {
        (**self).lookup(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(env: &[&str], key: &str, expect: Option<&str>) {
        assert_eq!(env.lookup(key), expect, "env {env:?}, key {key:?}");
        let owned: Vec<String> = env.iter().map(|entry| entry.to_string()).collect();
        assert_eq!(owned.lookup(key), expect, "owned env {env:?}, key {key:?}");
        let pairs: Vec<(String, String)> = env
            .iter()
            .map(|entry| {
                let (key, value) = split_entry(entry);
                (key.to_string(), value.to_string())
            })
            .collect();
        assert_eq!(pairs.lookup(key), expect, "pairs {env:?}, key {key:?}");
    }

    #[test]
    fn missing_bare_and_empty_entries() {
        check(&[], "foo", None);
        check(&["foo"], "foo", Some(""));
        check(&["foo="], "foo", Some(""));
        check(&["foo=bar"], "foo", Some("bar"));
        check(&["foo=a=b"], "foo", Some("a=b"));
        check(&["foo=bar"], "fo", None);
        check(&["foo=bar"], "FOO", None);
    }

    #[test]
    fn last_occurrence_wins() {
        check(&["foo=bar", "car=hat"], "foo", Some("bar"));
        check(&["foo=bar", "car=hat", "car=bike"], "car", Some("bike"));
        check(&["car=bike", "car"], "car", Some(""));
    }

    #[test]
    fn maps_and_references() {
        let mut map = BTreeMap::new();
        map.insert("A".to_string(), "1".to_string());
        assert_eq!(map.lookup("A"), Some("1"));
        let by_reference: &dyn Env = &&map;
        assert_eq!(by_reference.lookup("B"), None);
        let hash: HashMap<String, String> = map.into_iter().collect();
        assert_eq!(hash.lookup("A"), Some("1"));
        assert_eq!([("A", "x"), ("A", "y")].lookup("A"), Some("y"));
    }
}
