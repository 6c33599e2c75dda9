//! Go's `path/filepath.Clean` and `path/filepath.Match` (Unix flavour), byte for byte.
//!
//! Docker's `.dockerignore` reading cleans every pattern with `filepath.Clean` and checks its
//! syntax with `filepath.Match`; `COPY` wildcards are matched per path with `filepath.Match`.
//! These are written by hand because no crate reproduces Go's corner cases: `\` escapes the
//! next byte, `[^...]` negates a class (`[!...]` does not), a class bound may itself be
//! `\`-escaped, `*` and `?` stop at `/` but a class does not, and a syntax error anywhere in
//! the pattern is reported even after the name has stopped matching. The conformance tables
//! (`filepath_match_tests`) pin these down.
//!
//! This module knows nothing about files, contexts or ignore lists.

/// The pattern is malformed (Go's `filepath.ErrBadPattern`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPattern;

/// Go `filepath.Clean` for `/`-separated paths: collapse `//`, drop `.`, resolve `..` lexically,
/// drop a trailing `/`; `""` becomes `"."`, a rooted `/..` becomes `/`.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => match parts.last() {
                Some(last) if *last != ".." => {
                    parts.pop();
                }
                // `/..` is `/`: there is nothing above the root.
                _ if rooted => {}
                _ => parts.push(".."),
            },
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// Go `filepath.Match(pattern, name)` on Unix: whether `name` matches the shell pattern as a
/// whole. `*` matches any run of non-`/` bytes, `?` one non-`/` character, `[...]` a class
/// (`^` negates, `a-z` ranges, `\` escapes), `\` escapes the next character.
pub fn match_path(pattern: &[u8], name: &[u8]) -> Result<bool, BadPattern> {
    let mut pattern = pattern;
    let mut name = name;
    'chunks: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing `*` matches the rest of the name unless it holds a `/`.
            return Ok(!name.contains(&b'/'));
        }
        // Try the chunk at the current position.
        let at_here = match_chunk(chunk, name);
        if let Ok(Some(tail)) = at_here {
            // The last chunk must consume the whole name, otherwise a star may still help.
            if tail.is_empty() || !pattern.is_empty() {
                name = tail;
                continue;
            }
        }
        at_here?;
        if star {
            // Let the star eat 1, 2, ... bytes, never a `/`.
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                if let Some(tail) = match_chunk(chunk, &name[i + 1..])? {
                    if pattern.is_empty() && !tail.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = tail;
                    continue 'chunks;
                }
                i += 1;
            }
        }
        // No match: still report a syntax error in the rest of the pattern.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Whether a pattern is well formed (Go: `filepath.Match(pattern, ".")` returns no error).
pub fn check_pattern(pattern: &[u8]) -> Result<(), BadPattern> {
    match_path(pattern, b".").map(|_| ())
}

/// Splits off the leading stars and the following chunk (up to the next `*` outside a class).
fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut start = 0;
    while start < pattern.len() && pattern[start] == b'*' {
        start += 1;
    }
    let star = start > 0;
    let pattern = &pattern[start..];
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            // A dangling `\` is reported by match_chunk.
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// Matches one star-free chunk at the start of `s`; `Ok(Some(rest))` on a match. Once the
/// match has failed the chunk is still parsed to the end so syntax errors surface.
fn match_chunk<'a>(chunk: &[u8], s: &'a [u8]) -> Result<Option<&'a [u8]>, BadPattern> {
    let mut chunk = chunk;
    let mut s = s;
    let mut failed = false;
    while !chunk.is_empty() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match chunk[0] {
            b'[' => {
                let mut rune = None;
                if !failed {
                    let (r, n) = decode_rune(s);
                    s = &s[n..];
                    rune = Some(r);
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if chunk.first() == Some(&b'^') {
                    negated = true;
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut n_ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && n_ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = class_char(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = class_char(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if let Some(r) = rune {
                        if lo <= r && r <= hi {
                            matched = true;
                        }
                    }
                    n_ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            b'\\' => {
                chunk = &chunk[1..];
                if chunk.is_empty() {
                    return Err(BadPattern);
                }
                literal_byte(&mut chunk, &mut s, &mut failed);
            }
            _ => literal_byte(&mut chunk, &mut s, &mut failed),
        }
    }
    if failed {
        Ok(None)
    } else {
        Ok(Some(s))
    }
}

fn literal_byte(chunk: &mut &[u8], s: &mut &[u8], failed: &mut bool) {
    if !*failed {
        if chunk[0] != s[0] {
            *failed = true;
        }
        *s = &s[1..];
    }
    *chunk = &chunk[1..];
}

/// One (possibly `\`-escaped) character of a class; a class may not end right after it.
fn class_char(chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    let mut chunk = chunk;
    if chunk.is_empty() || chunk[0] == b'-' || chunk[0] == b']' {
        return Err(BadPattern);
    }
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
        if chunk.is_empty() {
            return Err(BadPattern);
        }
    }
    let (rune, n) = decode_rune(chunk);
    if rune == REPLACEMENT && n == 1 {
        return Err(BadPattern);
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((rune, rest))
}

const REPLACEMENT: u32 = 0xFFFD;

/// Go `utf8.DecodeRune`: the first character and its width; invalid bytes decode as U+FFFD
/// with width 1. `bytes` must not be empty.
pub(crate) fn decode_rune(bytes: &[u8]) -> (u32, usize) {
    let end = bytes.len().min(4);
    let valid = match std::str::from_utf8(&bytes[..end]) {
        Ok(text) => text,
        Err(error) => std::str::from_utf8(&bytes[..error.valid_up_to()]).unwrap_or(""),
    };
    match valid.chars().next() {
        Some(c) => (c as u32, c.len_utf8()),
        None => (REPLACEMENT, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, name: &str, expect: Result<bool, BadPattern>) {
        assert_eq!(
            match_path(pattern.as_bytes(), name.as_bytes()),
            expect,
            "Match({pattern:?}, {name:?})"
        );
    }

    #[test]
    fn clean_follows_go() {
        for (input, expect) in [
            ("", "."),
            ("./a", "a"),
            ("a/../b", "b"),
            ("a//b", "a/b"),
            ("c/", "c"),
            ("/", "/"),
            ("..", ".."),
            ("../..", "../.."),
            ("a/../..", ".."),
            ("/../x", "/x"),
            ("!/x/", "!/x"),
            ("./", "."),
        ] {
            assert_eq!(clean(input), expect, "Clean({input:?})");
        }
    }

    #[test]
    fn match_follows_go() {
        check("a*b*c*d*e*/f", "axbxcxdxe/f", Ok(true));
        check("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", Ok(false));
        check("a*b?c*x", "abxbbxdbxebxczzx", Ok(true));
        check("a[^a]b", "a\u{263a}b", Ok(true));
        check("a???b", "a\u{263a}b", Ok(false));
        check("[\\-x]", "-", Ok(true));
        check("a\\*b", "ab", Ok(false));
        check("*x", "xxx", Ok(true));
        check("[x-]", "z", Err(BadPattern));
        check("a[", "ab", Err(BadPattern));
        check("\\", "a", Err(BadPattern));
        // The error is found even though `b` already failed to match.
        check("b[", "a", Err(BadPattern));
        check("a/b", "a/b", Ok(true));
        check("a[/]b", "a/b", Ok(true));
    }
}
