//! `.dockerignore` reading and matching with Docker's semantics (moby/patternmatcher:
//! `ignorefile.ReadAll` and `MatchesOrParentMatches`).
//!
//! Reading: a UTF-8 BOM is stripped from the first line only; a line whose first byte is `#`
//! is a comment; lines are trimmed and empty ones skipped; a leading `!` marks an exception
//! (trimmed again after the `!`); the pattern is cleaned like Go `filepath.Clean` and one
//! leading `/` is removed.
//!
//! Matching: every pattern is anchored at the context root; the last pattern that matches the
//! path *or any of its parent directories* decides (`!` patterns re-include); `*` and `?` do
//! not cross `/`; `**` spans any number of directories; `[...]` and `\` work as in Go
//! `filepath.Match`; the path `.` never matches. Syntax errors, including
//! `illegal exclusion pattern: "!"`, are reported when the [`Matcher`] is built, never while
//! matching.
//!
//! Why regex and not globset: Go's rules cannot be expressed as globset globs. globset reads
//! `{a,b}` as alternation and `[!a]` as negation (both are literal / a plain class member in
//! Go), and it has no form for patternmatcher's fast paths, which are part of the observable
//! semantics: a pattern that *starts* with `**` followed only by literal text is a plain
//! suffix test (`**file` matches `dir/myfile`), and literal text followed by a final `**` is a
//! plain prefix test (`abc**` matches `abcdef`). So each pattern is compiled here, by hand,
//! into the same four forms patternmatcher uses (exact, prefix, suffix, regex); the regex
//! form is built token by token exactly like upstream's translation, with two deliberate
//! differences where upstream leaks regex syntax through: `\x` always means the literal `x`
//! (upstream turns `\d` into a digit class), and a `[...]` class is translated as one unit
//! with Go `filepath.Match` rules (upstream copies `*`/`?` inside a class as regex
//! fragments). A reversed class range such as `[Local-Only]`'s `l-O` is a syntax error, as
//! upstream's regex compiler reports it, but here at build time.
//!
//! This module knows nothing about walking, hashing or COPY.

use std::io::Read;
use std::path::{Path, PathBuf};

use regex::Regex;

use super::gomatch;

/// A bad pattern list. The messages match moby/patternmatcher's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    #[error("syntax error in pattern {pattern:?}")]
    Syntax { pattern: String },
}

/// Failure to read an ignore file or to build its matcher.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error("failed to read ignore file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: line longer than {MAX_LINE} bytes")]
    LineTooLong { path: PathBuf, line: usize },
    #[error("{path}: invalid pattern")]
    Pattern {
        path: PathBuf,
        #[source]
        source: PatternError,
    },
}

/// Go's `bufio.Scanner` refuses longer lines (`bufio.MaxScanTokenSize` less the newline).
pub const MAX_LINE: usize = 64 * 1024 - 1;

/// `ignorefile.ReadAll`: the patterns of a `.dockerignore` text, in order. `origin` names the
/// file in errors.
pub fn read_all(bytes: &[u8], origin: &Path) -> Result<Vec<String>, IgnoreError> {
    let mut patterns = Vec::new();
    let mut lines = bytes.split(|&b| b == b'\n').peekable();
    let mut line_no = 0;
    while let Some(line) = lines.next() {
        // The text after a final `\n` is not a line (bufio.ScanLines).
        if line.is_empty() && lines.peek().is_none() {
            break;
        }
        line_no += 1;
        let mut line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE {
            return Err(IgnoreError::LineTooLong {
                path: origin.to_path_buf(),
                line: line_no,
            });
        }
        if line_no == 1 {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.first() == Some(&b'#') {
            continue;
        }
        let text = String::from_utf8_lossy(line);
        let mut pattern = text.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = gomatch::clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        patterns.push(cleaned);
    }
    Ok(patterns)
}

/// The ignore file that applies to a build, and its patterns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IgnoreFile {
    /// The file that was read; `None` when there is none (no patterns).
    pub path: Option<PathBuf>,
    pub patterns: Vec<String>,
}

impl IgnoreFile {
    /// The ignore file for a build of `dockerfile_path` in `context_dir`:
    /// `<Dockerfile>.dockerignore` next to the Dockerfile when it exists (it wins), otherwise
    /// `<context_dir>/.dockerignore`, otherwise none.
    pub fn for_dockerfile(
        context_dir: &Path,
        dockerfile_path: &Path,
    ) -> Result<IgnoreFile, IgnoreError> {
        if let Some(name) = dockerfile_path.file_name() {
            let mut specific_name = name.to_os_string();
            specific_name.push(".dockerignore");
            let specific = dockerfile_path.with_file_name(specific_name);
            if let Some(found) = IgnoreFile::read_if_present(&specific)? {
                return Ok(found);
            }
        }
        IgnoreFile::for_context(context_dir)
    }

    /// `<context_dir>/.dockerignore`, or no patterns when it does not exist.
    pub fn for_context(context_dir: &Path) -> Result<IgnoreFile, IgnoreError> {
        Ok(IgnoreFile::read_if_present(&context_dir.join(".dockerignore"))?.unwrap_or_default())
    }

    /// Reads `path`; `Ok(None)` when it does not exist.
    pub fn read_if_present(path: &Path) -> Result<Option<IgnoreFile>, IgnoreError> {
        let mut bytes = Vec::new();
        match std::fs::File::open(path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes)
                    .map_err(|source| IgnoreError::Read {
                        path: path.to_path_buf(),
                        source,
                    })?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(IgnoreError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        Ok(Some(IgnoreFile {
            path: Some(path.to_path_buf()),
            patterns: read_all(&bytes, path)?,
        }))
    }

    /// The matcher for these patterns; a bad pattern is an error naming the file.
    pub fn matcher(&self) -> Result<Matcher, IgnoreError> {
        Matcher::new(&self.patterns).map_err(|source| IgnoreError::Pattern {
            path: self
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from(".dockerignore")),
            source,
        })
    }
}

/// How one pattern matches a path (patternmatcher's match types).
#[derive(Debug, Clone)]
enum Form {
    /// The path equals the pattern.
    Exact,
    /// Literal text then a final `**`: the path starts with the text.
    Prefix(String),
    /// A leading `**` then literal text: the path ends with the text (or, when the text
    /// starts with `/`, equals it without the `/`).
    Suffix(String),
    Regex(Regex),
}

/// One compiled `.dockerignore` pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: String,
    exclusion: bool,
    form: Form,
    /// The literal text every matching path starts with (up to the first wildcard or `\`).
    literal_prefix: String,
}

impl Pattern {
    /// The cleaned pattern, without its `!`.
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether this is a `!` exception.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// Whether this pattern matches exactly `path` (no parent-directory rule).
    pub fn matches_exactly(&self, path: &str) -> bool {
        match &self.form {
            Form::Exact => path == self.cleaned,
            Form::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Form::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|bare| path == bare)
            }
            Form::Regex(regex) => regex.is_match(path),
        }
    }

    /// Whether this pattern could match some path below directory `dir`.
    fn could_match_below(&self, dir: &str) -> bool {
        let dir_slash = format!("{dir}/");
        self.literal_prefix.starts_with(&dir_slash) || dir_slash.starts_with(&self.literal_prefix)
    }

    fn compile(cleaned: String, exclusion: bool) -> Result<Pattern, PatternError> {
        let syntax = || PatternError::Syntax {
            pattern: cleaned.clone(),
        };
        // filepath.Match's syntax check, as patternmatcher.New does it.
        gomatch::check_pattern(cleaned.as_bytes()).map_err(|_| syntax())?;

        #[derive(PartialEq)]
        enum Kind {
            Exact,
            Prefix,
            Suffix,
            Regex,
        }
        let chars: Vec<char> = cleaned.chars().collect();
        let mut regex = String::from("^");
        let mut kind = Kind::Exact;
        let mut pos = 0;
        let mut n_tokens = 0;
        while pos < chars.len() {
            let ch = chars[pos];
            pos += 1;
            match ch {
                '*' if chars.get(pos) == Some(&'*') => {
                    pos += 1;
                    // `**/` is the same as `**`.
                    if chars.get(pos) == Some(&'/') {
                        pos += 1;
                    }
                    if pos == chars.len() {
                        if kind == Kind::Exact {
                            kind = Kind::Prefix;
                        } else {
                            regex.push_str(".*");
                            kind = Kind::Regex;
                        }
                    } else {
                        regex.push_str("(.*/)?");
                        kind = Kind::Regex;
                    }
                    if n_tokens == 0 {
                        kind = Kind::Suffix;
                    }
                }
                '*' => {
                    regex.push_str("[^/]*");
                    kind = Kind::Regex;
                }
                '?' => {
                    regex.push_str("[^/]");
                    kind = Kind::Regex;
                }
                '\\' => {
                    // check_pattern refused a trailing `\`.
                    let next = chars.get(pos).ok_or_else(syntax)?;
                    pos += 1;
                    push_literal(&mut regex, *next);
                    kind = Kind::Regex;
                }
                '[' => {
                    pos = push_class(&mut regex, &chars, pos).ok_or_else(syntax)?;
                    kind = Kind::Regex;
                }
                ']' => {
                    push_literal(&mut regex, ']');
                    kind = Kind::Regex;
                }
                other => push_literal(&mut regex, other),
            }
            n_tokens += 1;
        }
        let form = match kind {
            Kind::Exact => Form::Exact,
            Kind::Prefix => Form::Prefix(cleaned[..cleaned.len() - 2].to_string()),
            Kind::Suffix => Form::Suffix(cleaned[2..].to_string()),
            Kind::Regex => {
                regex.push('$');
                Form::Regex(Regex::new(&regex).map_err(|_| syntax())?)
            }
        };
        let literal_end = match form {
            Form::Suffix(_) => 0,
            _ => cleaned.find(['*', '?', '[', '\\']).unwrap_or(cleaned.len()),
        };
        Ok(Pattern {
            literal_prefix: cleaned[..literal_end].to_string(),
            cleaned,
            exclusion,
            form,
        })
    }
}

fn push_literal(regex: &mut String, ch: char) {
    let mut buf = [0u8; 4];
    regex.push_str(&regex::escape(ch.encode_utf8(&mut buf)));
}

/// Translates the class starting after `[` at `chars[pos]` with Go `filepath.Match` rules;
/// returns the position after its `]`, or `None` for a malformed or reversed class.
fn push_class(regex: &mut String, chars: &[char], mut pos: usize) -> Option<usize> {
    fn class_char(chars: &[char], pos: &mut usize) -> Option<char> {
        let mut ch = *chars.get(*pos)?;
        if ch == '-' || ch == ']' {
            return None;
        }
        if ch == '\\' {
            *pos += 1;
            ch = *chars.get(*pos)?;
        }
        *pos += 1;
        Some(ch)
    }
    regex.push('[');
    if chars.get(pos) == Some(&'^') {
        regex.push('^');
        pos += 1;
    }
    let mut n_ranges = 0;
    loop {
        if chars.get(pos) == Some(&']') && n_ranges > 0 {
            pos += 1;
            break;
        }
        let lo = class_char(chars, &mut pos)?;
        let mut hi = lo;
        if chars.get(pos) == Some(&'-') {
            pos += 1;
            hi = class_char(chars, &mut pos)?;
        }
        if lo > hi {
            return None;
        }
        regex.push_str(&format!("\\x{{{:x}}}", lo as u32));
        if hi != lo {
            regex.push_str(&format!("-\\x{{{:x}}}", hi as u32));
        }
        n_ranges += 1;
    }
    regex.push(']');
    Some(pos)
}

/// A compiled `.dockerignore` pattern list (patternmatcher's `PatternMatcher`).
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
    has_exclusions: bool,
}

/// For each pattern of a [`Matcher`], whether it matched a directory or one of its parents;
/// carried down a walk so each path is tested once per pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParentMatches(Vec<bool>);

impl Matcher {
    /// patternmatcher `New`: trims and cleans each pattern, drops empty ones, and checks the
    /// syntax of all of them.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Matcher, PatternError> {
        let mut matcher = Matcher::default();
        for raw in patterns {
            let trimmed = raw.as_ref().trim();
            if trimmed.is_empty() {
                continue;
            }
            let mut cleaned = gomatch::clean(trimmed);
            let exclusion = cleaned.starts_with('!');
            if exclusion {
                if cleaned.len() == 1 {
                    return Err(PatternError::IllegalExclusion);
                }
                cleaned.remove(0);
                matcher.has_exclusions = true;
            }
            matcher.patterns.push(Pattern::compile(cleaned, exclusion)?);
        }
        Ok(matcher)
    }

    /// A matcher that excludes nothing.
    pub fn empty() -> Matcher {
        Matcher::default()
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern is a `!` exception.
    pub fn has_exclusions(&self) -> bool {
        self.has_exclusions
    }

    /// `MatchesOrParentMatches`: whether `path` (slash-separated, relative to the context root)
    /// is excluded. The path is cleaned first; `.` is never excluded.
    pub fn matches(&self, path: &str) -> bool {
        let file = gomatch::clean(path);
        if file == "." || self.patterns.is_empty() {
            return false;
        }
        // Go: the prefixes of strings.Split(filepath.Dir(file), "/").
        let mut parents = Vec::new();
        if let Some(last_slash) = file.rfind('/') {
            let dir = if last_slash == 0 {
                "/"
            } else {
                &file[..last_slash]
            };
            let parts: Vec<&str> = dir.split('/').collect();
            for i in 1..=parts.len() {
                parents.push(parts[..i].join("/"));
            }
        }
        for pattern in self.patterns.iter().rev() {
            if pattern.matches_exactly(&file) || parents.iter().any(|d| pattern.matches_exactly(d))
            {
                return !pattern.exclusion;
            }
        }
        false
    }

    /// The per-pattern results for `path` given its parent directory's results
    /// (`ParentMatches::default()` at the context root). `path` must be clean and relative.
    /// Feed the result to [`Matcher::decide`], and to the children if `path` is a directory.
    pub fn match_step(&self, path: &str, parent: &ParentMatches) -> ParentMatches {
        ParentMatches(
            self.patterns
                .iter()
                .enumerate()
                .map(|(i, pattern)| {
                    parent.0.get(i).copied().unwrap_or(false) || pattern.matches_exactly(path)
                })
                .collect(),
        )
    }

    /// Whether the path whose results these are is excluded: the last matching pattern wins.
    pub fn decide(&self, matches: &ParentMatches) -> bool {
        match matches.0.iter().rposition(|&m| m) {
            Some(i) => !self.patterns[i].exclusion,
            None => false,
        }
    }

    /// For an excluded directory `dir` with results `matches`: whether some exception could
    /// still re-include a path below it, so a walker must descend instead of pruning.
    pub fn may_reinclude_below(&self, dir: &str, matches: &ParentMatches) -> bool {
        let last = matches.0.iter().rposition(|&m| m).unwrap_or(0);
        self.patterns[last..]
            .iter()
            .any(|pattern| pattern.exclusion && pattern.could_match_below(dir))
    }
}

/// `patternmatcher.MatchesOrParentMatches(path, patterns)`: builds the list and matches once.
pub fn matches_or_parent_matches<S: AsRef<str>>(
    path: &str,
    patterns: &[S],
) -> Result<bool, PatternError> {
    Ok(Matcher::new(patterns)?.matches(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(patterns: &[&str], path: &str, expect: bool) {
        let matcher = Matcher::new(patterns).unwrap();
        assert_eq!(matcher.matches(path), expect, "{patterns:?} vs {path:?}");
        // The incremental form used by the walker agrees.
        let mut state = ParentMatches::default();
        let clean = gomatch::clean(path);
        let parts: Vec<&str> = clean.split('/').collect();
        for i in 1..=parts.len() {
            state = matcher.match_step(&parts[..i].join("/"), &state);
        }
        assert_eq!(
            matcher.decide(&state),
            expect,
            "incremental {patterns:?} vs {path:?}"
        );
    }

    #[test]
    fn fast_path_forms_keep_upstream_semantics() {
        check(&["**file"], "dir/myfile", true);
        check(&["abc**"], "abcdef", true);
        check(&["**/dir"], "xdir", false);
        check(&["**/dir"], "a/dir/b", true);
        check(&["{a,b}"], "a", false);
        check(&["{a,b}"], "{a,b}", true);
        check(&["[!a]"], "!", true);
        check(&["[!a]"], "b", false);
        check(&["a\\d"], "ad", true);
        check(&["a\\d"], "a1", false);
        check(&["[*]"], "*", true);
        check(&["[*]"], "x", false);
    }

    #[test]
    fn last_match_wins_with_parents() {
        check(&["a", "!a/b", "a"], "a/b", true);
        check(&["docs", "!docs/keep/**"], "docs/keep", true);
        check(&["docs", "!docs/keep/**"], "docs/keep/b.txt", false);
        check(&["*.go"], ".", false);
    }

    #[test]
    fn build_errors() {
        assert_eq!(
            Matcher::new(&["!"]).unwrap_err(),
            PatternError::IllegalExclusion
        );
        assert_eq!(
            Matcher::new(&["[Local-Only]/"]).unwrap_err().to_string(),
            "syntax error in pattern \"[Local-Only]\""
        );
        assert!(Matcher::new(&["a\\"]).is_err());
    }

    #[test]
    fn pruning_knows_which_exceptions_reach_below() {
        let matcher = Matcher::new(&["docs", "!docs/keep/**", "vendor", "!*.md"]).unwrap();
        let docs = matcher.match_step("docs", &ParentMatches::default());
        assert!(matcher.may_reinclude_below("docs", &docs));
        let vendor = matcher.match_step("vendor", &ParentMatches::default());
        // Conservative: `*.md` has no literal prefix, so it might reach below anything.
        assert!(matcher.may_reinclude_below("vendor", &vendor));
        let matcher = Matcher::new(&["!keep", "build"]).unwrap();
        let build = matcher.match_step("build", &ParentMatches::default());
        assert!(!matcher.may_reinclude_below("build", &build));
        let matcher = Matcher::new(&["build", "!**/*.rs"]).unwrap();
        let build = matcher.match_step("build", &ParentMatches::default());
        assert!(matcher.may_reinclude_below("build", &build));
    }

    #[test]
    fn read_all_rules() {
        let origin = Path::new(".dockerignore");
        let got = read_all(
            b"\xEF\xBB\xBF#c\nfoo\r\n  # x\n! /a/\n\xEF\xBB\xBFbar",
            origin,
        )
        .unwrap();
        assert_eq!(got, vec!["foo", "# x", "!a", "\u{feff}bar"]);
        let long = vec![b'a'; MAX_LINE + 1];
        assert!(matches!(
            read_all(&long, origin),
            Err(IgnoreError::LineTooLong { line: 1, .. })
        ));
    }
}
