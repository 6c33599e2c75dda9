//! Image reference parsing: [`parse`] is oci-spec's `Reference::from_str` with a regex-free
//! fast path in front.
//!
//! oci-spec matches references against one big regex whose tag class is Unicode `\w`;
//! compiling it costs about 20 ms of CPU the first time a process parses a name, which was the
//! largest single cost of a no-op `kiln build` (it parses its `-t` names and every `FROM`).
//! This module recognises the same grammar for ASCII input by hand, without a regex, and then
//! builds the `Reference` exactly as oci-spec does after its match (default tag `latest`,
//! Docker Hub domain and `library/` normalisation, the length and digest checks).
//!
//! It only ever says "matches" for strings the regex matches with the same captures; on
//! anything else (non-ASCII, malformed, unusual) it answers `None` and the caller falls back to
//! oci-spec, so errors and corner cases keep oci-spec's exact behaviour. The equivalence is
//! checked by a property test against oci-spec itself. Hand-written because no crate offers a
//! regex-free docker reference parser with oci-spec's output type.
//!
//! Knows the distribution reference grammar only; no I/O, nothing of the store or planner.

use oci_spec::distribution::{ParseError, Reference};

/// Parses and normalises an image reference exactly as oci-spec's `Reference::from_str`
/// (`busybox` -> `docker.io/library/busybox:latest`), without compiling its regex for the
/// usual ASCII names.
pub fn parse(text: &str) -> Result<Reference, ParseError> {
    match parse_fast(text) {
        Some(reference) => Ok(reference),
        None => text.parse::<Reference>(),
    }
}

/// `NAME_TOTAL_LENGTH_MAX` of the distribution grammar (checked on the repository part).
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Parses `text` like oci-spec's `Reference::from_str` when it is sure to agree with it, else
/// `None` (the caller must then use oci-spec).
pub fn parse_fast(text: &str) -> Option<Reference> {
    if text.is_empty() || !text.is_ascii() {
        return None;
    }
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (text, None),
    };
    if let Some(digest) = digest {
        if !is_digest(digest) {
            return None;
        }
    }
    // A ':' after the last '/' starts the tag; any other ':' must be a port in the domain.
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if last_slash.map_or(true, |slash| colon > slash) => {
            (&rest[..colon], Some(&rest[colon + 1..]))
        }
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        if !is_tag(tag) {
            return None;
        }
    }
    if !is_name(name) {
        return None;
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return None;
    }
    if let Some(digest) = digest {
        let (algorithm, hex) = digest.split_once(':')?;
        let expected = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return None,
        };
        if hex.len() != expected {
            return None;
        }
    }
    Some(match (tag, digest) {
        (None, None) => Reference::with_tag(registry, repository, "latest".to_string()),
        (Some(tag), None) => Reference::with_tag(registry, repository, tag.to_string()),
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.to_string()),
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(
            registry,
            repository,
            tag.to_string(),
            digest.to_string(),
        ),
    })
}

/// `[\w][\w.-]{0,127}` with ASCII `\w` (the input is ASCII).
fn is_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][[:xdigit:]]{32,}`
fn is_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let bytes = part.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphabetic()
            && bytes.iter().all(|b| b.is_ascii_alphanumeric())
    });
    algorithm_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The name: an optional `domain[:port]/` then path components joined by `/`.
fn is_name(name: &str) -> bool {
    let components: Vec<&str> = name.split('/').collect();
    let (first, rest) = components.split_first().expect("split yields one item");
    let first_ok = is_path_component(first) || (!rest.is_empty() && is_domain(first));
    first_ok && rest.iter().all(|c| is_path_component(c))
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`: lower-case alphanumeric runs separated by one
/// `.`, one `_`, `__`, or any number of `-`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &bytes[start..i];
        let ok = separator == b"."
            || separator == b"_"
            || separator == b"__"
            || separator.iter().all(|&b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `label(\.label)*(:[0-9]+)?` where a label is `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    host.split('.').all(|label| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// Docker's `splitDomain`, as oci-spec writes it.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains('.') || left.contains(':') || left == "localhost" => {
            (left.to_string(), right.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".to_string();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slow(text: &str) -> Option<Reference> {
        text.parse::<Reference>().ok()
    }

    const CASES: &[&str] = &[
        "busybox",
        "kbase/busybox:1",
        "kbench/big-layer:kiln",
        "docker.io/library/busybox:latest",
        "index.docker.io/busybox",
        "test.com:tag",
        "test.com:5000",
        "test.com/repo:tag",
        "test:5000/repo",
        "test:5000/repo:tag",
        "localhost/foo",
        "localhost:5000/a/b/c:v1.2-rc_3",
        "127.0.0.1:5000/kbase/busybox:1",
        "lowercase:Uppercase",
        "Uppercase:tag",
        "UPPER/lower:tag",
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "xn--n3h.com/myimage:xn--n3h.com",
        "foo_bar.com:8080",
        "foo/foo_bar.com:8080",
        "a__b/c---d/e.f_g",
        "a___b",
        "a..b",
        "-a",
        "a-",
        "a:",
        ":a",
        "a/",
        "/a",
        "a//b",
        "a:b:c",
        "a@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "a:t@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "a@sha256:fff",
        "a@sha512:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "a@md5:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "a@foo+bar.x-y_z:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "a@@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "héllo",
        "a:tág",
        "",
    ];

    #[test]
    fn agrees_with_oci_spec_on_known_cases() {
        for case in CASES {
            let fast = parse_fast(case);
            if let Some(fast) = &fast {
                assert_eq!(Some(fast), slow(case).as_ref(), "{case:?}");
            }
        }
        // The common shapes take the fast path.
        for case in [
            "busybox",
            "kbase/busybox:1",
            "127.0.0.1:5000/kbase/busybox:1",
        ] {
            assert!(parse_fast(case).is_some(), "{case:?}");
        }
    }

    #[test]
    fn long_tags_and_names_follow_the_limits() {
        let tag = "t".repeat(128);
        assert!(parse_fast(&format!("a:{tag}")).is_some());
        assert!(parse_fast(&format!("a:{tag}x")).is_none());
        let long = format!("a/{}", "b".repeat(300));
        assert!(parse_fast(&long).is_none());
        assert!(slow(&long).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn never_disagrees_with_oci_spec(text in "[a-cA-C0-9._:/@+-]{0,24}") {
            if let Some(fast) = parse_fast(&text) {
                prop_assert_eq!(Some(fast), slow(&text));
            }
        }

        #[test]
        fn takes_the_fast_path_whenever_oci_spec_accepts_plain_names(
            text in "([a-z0-9]{1,3}([._-]|__)?[a-z0-9]{1,3}/){0,2}[a-z0-9]{1,4}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,6})?"
        ) {
            let slow = slow(&text);
            prop_assert_eq!(parse_fast(&text), slow);
        }

        #[test]
        fn digests_agree(hex in "[0-9a-fA-F]{30,66}", algo in "(sha256|sha512|Sha256|a[-+._]b)") {
            let text = format!("x/y:1@{algo}:{hex}");
            if let Some(fast) = parse_fast(&text) {
                prop_assert_eq!(Some(fast), slow(&text));
            }
        }
    }
}
