//! The shell patterns of `${VAR#pat}`, `##`, `%`, `%%`, `${VAR/pat/repl}` and `//`.
//!
//! Patterns are translated to a `regex` the way BuildKit translates them to a Go regexp: `*` is
//! any string (lazy for the shortest-match forms, greedy otherwise), `?` is one character,
//! `\*`, `\?` and `\\` are literals, `\}` and `\/` stand for `}` and `/` (the backslash only
//! kept them out of the `${...}` syntax), any other `\x` is an error, and everything else is
//! literal. Bracket expressions (`[...]`) are literal too: BuildKit does not support them, and
//! matching it matters more here than matching bash. The backslash is the pattern escape even
//! under `# escape=``, as in BuildKit.
//!
//! Hand-written on purpose: `globset`/`glob` anchor the whole string and have no
//! shortest-prefix search, and the replacement template (`$0`, `$$`) must follow Go's
//! `Regexp.Expand`, which no crate reproduces. Matching itself is done by `regex`, whose
//! leftmost-first semantics are those of Go's `regexp`.
//!
//! This module knows only strings; it never sees the environment or the word being processed.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use regex::Regex;

use super::chars::{is_go_digit, is_go_letter};

/// Why a pattern could not be turned into a matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PatternError {
    /// A backslash followed by something other than `*`, `?`, `\`, `}` or `/`.
    InvalidEscape(char),
    /// A backslash at the end of the pattern.
    TrailingEscape,
    /// The translated regex was rejected (in practice only for size limits).
    Regex(String),
}

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PatternError::InvalidEscape(c) => write!(f, "invalid escape '\\{c}'"),
            PatternError::TrailingEscape => write!(f, "invalid escape '\\' at end of pattern"),
            PatternError::Regex(reason) => write!(f, "{reason}"),
        }
    }
}

/// Translates a shell pattern into regex syntax; `anchored` matches at the start only.
pub(crate) fn to_regex(
    pattern: &str,
    greedy: bool,
    anchored: bool,
) -> Result<String, PatternError> {
    // Go's text/scanner, which BuildKit reads the pattern with, drops a leading byte-order mark.
    let pattern = pattern.strip_prefix('\u{feff}').unwrap_or(pattern);
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str(star),
            '?' => out.push('.'),
            '\\' => match chars.peek() {
                // `}` and `/` were escaped for the `${...}` syntax, not for the pattern.
                Some('}') | Some('/') => {}
                Some(&next @ ('*' | '?' | '\\')) => {
                    chars.next();
                    out.push('\\');
                    out.push(next);
                }
                Some(&other) => return Err(PatternError::InvalidEscape(other)),
                None => return Err(PatternError::TrailingEscape),
            },
            literal => {
                let mut buf = [0u8; 4];
                out.push_str(&regex::escape(literal.encode_utf8(&mut buf)));
            }
        }
    }
    Ok(out)
}

/// Compiled patterns by regex source. Building a regex with `.` costs ~0.1 ms (Unicode
/// automata), and a build expands the same few patterns for every step and platform; a hit
/// is a hash lookup. The regex is shared through an `Arc` rather than cloned, because a
/// cloned `Regex` starts with an empty search cache. Bounded: cleared when full.
static COMPILED: LazyLock<Mutex<HashMap<String, Arc<Regex>>>> = LazyLock::new(Default::default);
const COMPILED_CAPACITY: usize = 256;

fn compile(pattern: &str, greedy: bool, anchored: bool) -> Result<Arc<Regex>, PatternError> {
    let source = to_regex(pattern, greedy, anchored)?;
    // A panic while holding the lock cannot leave the map inconsistent, so poisoning is ignored.
    let lock = || {
        COMPILED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    if let Some(regex) = lock().get(&source) {
        return Ok(regex.clone());
    }
    let regex =
        Arc::new(Regex::new(&source).map_err(|error| PatternError::Regex(error.to_string()))?);
    let mut compiled = lock();
    if compiled.len() >= COMPILED_CAPACITY {
        compiled.clear();
    }
    compiled.insert(source, regex.clone());
    Ok(regex)
}

/// `${VAR#pattern}` (shortest) and `${VAR##pattern}` (`greedy`, longest): removes the
/// matching prefix of `value`.
pub(crate) fn trim_prefix(
    pattern: &str,
    value: &str,
    greedy: bool,
) -> Result<String, PatternError> {
    let regex = compile(pattern, greedy, true)?;
    Ok(match regex.find(value) {
        Some(found) => value[found.end()..].to_string(),
        None => value.to_string(),
    })
}

/// `${VAR%pattern}` (shortest) and `${VAR%%pattern}` (longest): removes the matching suffix.
///
/// A regex cannot find the shortest match that ends at the end of the string, so both the
/// pattern and the value are reversed and the prefix search is used.
pub(crate) fn trim_suffix(
    pattern: &str,
    value: &str,
    greedy: bool,
) -> Result<String, PatternError> {
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverses a pattern but keeps each `\x` escape pair in order (`a\*c` -> `c\*a`).
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut units: Vec<&[char]> = Vec::with_capacity(chars.len());
    let mut index = 0;
    while index < chars.len() {
        let width = if chars[index] == '\\' && index + 1 < chars.len() {
            2
        } else {
            1
        };
        units.push(&chars[index..index + width]);
        index += width;
    }
    units.iter().rev().flat_map(|unit| unit.iter()).collect()
}

/// `${VAR/pattern/replacement}` and, with `all`, `${VAR//pattern/replacement}`.
///
/// The first-match form inserts `replacement` literally. The all-matches form treats it as a
/// Go `Regexp.Expand` template, as BuildKit's `ReplaceAllString` does: `$$` is `$`, `$0` /
/// `${0}` is the matched text, any other well-formed reference is empty, and a malformed one
/// stays literal.
pub(crate) fn replace(
    pattern: &str,
    value: &str,
    replacement: &str,
    all: bool,
) -> Result<String, PatternError> {
    let regex = compile(pattern, true, false)?;
    if !all {
        return Ok(match regex.find(value) {
            Some(found) => {
                let mut out = String::with_capacity(value.len() + replacement.len());
                out.push_str(&value[..found.start()]);
                out.push_str(replacement);
                out.push_str(&value[found.end()..]);
                out
            }
            None => value.to_string(),
        });
    }
    // Go's replaceAll loop: an empty match right after the previous match is not replaced,
    // and the search always moves on by at least one character.
    let mut out = String::with_capacity(value.len());
    let mut last_match_end = 0;
    let mut search_pos = 0;
    while search_pos <= value.len() {
        let Some(found) = regex.find_at(value, search_pos) else {
            break;
        };
        out.push_str(&value[last_match_end..found.start()]);
        if found.end() > last_match_end || found.start() == 0 {
            expand_template(&mut out, replacement, found.as_str());
        }
        last_match_end = found.end();
        let width = value[search_pos..].chars().next().map_or(0, char::len_utf8);
        if search_pos + width > found.end() {
            search_pos += width;
        } else if search_pos + 1 > found.end() {
            search_pos += 1;
        } else {
            search_pos = found.end();
        }
    }
    out.push_str(&value[last_match_end..]);
    Ok(out)
}

/// Go's `Regexp.Expand` for a regex without capture groups: only group 0 exists.
fn expand_template(out: &mut String, template: &str, matched: &str) {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match extract_reference(rest) {
            Some((name, after)) => {
                if name == "0" {
                    out.push_str(matched);
                }
                rest = after;
            }
            None => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// A `name` or `{name}` reference at the start of `text` (Go's `regexp.extract`): the name is
/// letters, digits and `_`; returns the name and the text after the reference.
fn extract_reference(text: &str) -> Option<(&str, &str)> {
    let (braced, body) = match text.strip_prefix('{') {
        Some(body) => (true, body),
        None => (false, text),
    };
    let name_len = body
        .char_indices()
        .find(|&(_, c)| !(is_go_letter(c) || is_go_digit(c) || c == '_'))
        .map_or(body.len(), |(index, _)| index);
    if name_len == 0 {
        return None;
    }
    let name = &body[..name_len];
    let after = &body[name_len..];
    if braced {
        return after.strip_prefix('}').map(|after| (name, after));
    }
    Some((name, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy)]
    enum Op {
        Prefix { greedy: bool },
        Suffix { greedy: bool },
        Replace { all: bool },
    }

    fn check(op: Op, pattern: &str, value: &str, replacement: &str, expect: Result<&str, ()>) {
        let got = match op {
            Op::Prefix { greedy } => trim_prefix(pattern, value, greedy),
            Op::Suffix { greedy } => trim_suffix(pattern, value, greedy),
            Op::Replace { all } => replace(pattern, value, replacement, all),
        };
        match (got, expect) {
            (Ok(got), Ok(expect)) => assert_eq!(got, expect, "pattern {pattern:?} on {value:?}"),
            (Err(_), Err(())) => {}
            (got, expect) => {
                panic!("pattern {pattern:?} on {value:?}: got {got:?}, want {expect:?}")
            }
        }
    }

    const SHORT: Op = Op::Prefix { greedy: false };
    const LONG: Op = Op::Prefix { greedy: true };
    const SHORT_SUFFIX: Op = Op::Suffix { greedy: false };
    const LONG_SUFFIX: Op = Op::Suffix { greedy: true };
    const FIRST: Op = Op::Replace { all: false };
    const ALL: Op = Op::Replace { all: true };

    #[test]
    fn regex_translation_matches_buildkit_reference() {
        assert_eq!(to_regex("*", true, true).unwrap(), "^.*");
        assert_eq!(to_regex("?", true, true).unwrap(), "^.");
        assert_eq!(to_regex("\\*", true, true).unwrap(), "^\\*");
        assert_eq!(
            to_regex("(()[]{\\}^$.\\*\\?|\\\\", true, true).unwrap(),
            "^\\(\\(\\)\\[\\]\\{\\}\\^\\$\\.\\*\\?\\|\\\\"
        );
        assert_eq!(to_regex("a*b", false, false).unwrap(), "a.*?b");
        assert_eq!(to_regex("\\/x", false, false).unwrap(), "/x");
        assert_eq!(
            to_regex("\\", true, true),
            Err(PatternError::TrailingEscape)
        );
        assert_eq!(
            to_regex("\\x", true, true),
            Err(PatternError::InvalidEscape('x'))
        );
        assert_eq!(
            to_regex("\\\\\\", true, true),
            Err(PatternError::TrailingEscape)
        );
    }

    #[test]
    fn prefix_and_suffix() {
        check(SHORT, "*x*y", "xxyy", "", Ok("y"));
        check(SHORT, "*", "xxyy", "", Ok("xxyy"));
        check(LONG, "*x", "xxyy", "", Ok("yy"));
        check(SHORT, "?\\?", "???y", "", Ok("?y"));
        check(SHORT, "", "abc", "", Ok("abc"));
        check(SHORT, "b", "abc", "", Ok("abc"));
        check(SHORT_SUFFIX, "x", "xxyy", "", Ok("xxyy"));
        check(SHORT_SUFFIX, "y*", "xxyy", "", Ok("xxy"));
        check(LONG_SUFFIX, "y*", "xxyy", "", Ok("xx"));
        check(LONG_SUFFIX, "\\**", "xx**", "", Ok("xx"));
        check(LONG_SUFFIX, "\\**\\*", "a***yy*", "", Ok("a"));
        check(SHORT_SUFFIX, ".tar.*", "a.tar.tar.gz", "", Ok("a.tar"));
        check(LONG_SUFFIX, ".tar.*", "a.tar.tar.gz", "", Ok("a"));
        check(SHORT, "안", "안녕", "", Ok("녕"));
        check(SHORT_SUFFIX, "?", "안녕", "", Ok("안"));
    }

    #[test]
    fn brackets_are_literal_like_buildkit() {
        check(SHORT, "[ab]", "[ab]x", "", Ok("x"));
        check(SHORT, "[ab]", "ax", "", Ok("ax"));
    }

    #[test]
    fn bad_escapes_fail() {
        check(SHORT, "\\x", "x", "", Err(()));
        check(SHORT_SUFFIX, "a\\", "a", "", Err(()));
        check(ALL, "\\d", "d", "", Err(()));
    }

    #[test]
    fn replace_first_and_all() {
        check(FIRST, "\\*/", "/foo*/*/*.txt", ".", Ok("/foo.*/*.txt"));
        check(ALL, "\\*/", "/foo*/*/*.txt", ".", Ok("/foo..*.txt"));
        check(FIRST, "/?/", "/a/foo/b/c.txt", "/", Ok("/foo/b/c.txt"));
        check(ALL, "/?/", "/a/foo/b/c.txt", "/", Ok("/foo/c.txt"));
        check(ALL, "\\/", "/tmp/foo.txt", "\\/", Ok("\\/tmp\\/foo.txt"));
        check(FIRST, "", "xxyy", "ww", Ok("wwxxyy"));
        check(ALL, "", "ab", "-", Ok("-a-b-"));
        check(ALL, "*", "abc", "x", Ok("x"));
        check(FIRST, "q", "abc", "x", Ok("abc"));
    }

    #[test]
    fn replace_all_uses_go_expand_templates() {
        check(ALL, "o", "foo", "[$0]", Ok("f[o][o]"));
        check(ALL, "o", "foo", "${0}", Ok("foo"));
        check(ALL, "o", "foo", "$$", Ok("f$$"));
        check(ALL, "o", "foo", "$1", Ok("f"));
        check(ALL, "o", "foo", "$00", Ok("f"));
        check(ALL, "o", "foo", "$", Ok("f$$"));
        check(ALL, "o", "foo", "${0", Ok("f${0${0"));
        // The first-match form is literal.
        check(FIRST, "o", "foo", "$0", Ok("f$0o"));
    }

    #[test]
    fn reverse_keeps_escape_pairs() {
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("\\**"), "*\\*");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
    }
}
