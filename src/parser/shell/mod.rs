//! Shell-word processing as BuildKit does it for Dockerfile instruction arguments: quotes,
//! escapes and `$VAR` / `${VAR...}` expansion, with optional word splitting.
//!
//! This is a port of the behaviour of BuildKit's `frontend/dockerfile/shell` lexer, checked
//! against its test tables (`tests/shell_expansion_conformance.rs`). The build calls it once
//! per instruction argument with the ARG/ENV scope in force at that step; the names it looked
//! up (found or not) tell the build which build args a step depends on.
//!
//! It owns only text processing. It does no I/O and knows nothing of the Dockerfile grammar,
//! of stages or of where a scope came from; the caller picks the escape token (from the
//! `# escape=` directive) and which instructions get expanded (see [`variable_expansion`]).
//!
//! Rules, as in BuildKit:
//! - outside quotes the escape token escapes any next character, and a trailing one is dropped;
//! - inside `"..."` it escapes only `"`, `$` and itself, and stays as written before anything
//!   else; `$` expands;
//! - inside `'...'` nothing is special;
//! - `$name`, `${name}` and the `:-`, `-`, `:+`, `+`, `:?`, `?`, `#`, `##`, `%`, `%%`, `/`,
//!   `//` forms; positional and special parameters (`$1`, `$@`, `$$`, ...) are never set;
//! - `${}`, `${:...}`, `${{...}`, `${VAR:=x}` and other unknown modifiers are errors.
//!
//! Where kiln deliberately differs from the BuildKit source it follows (none of these is
//! covered by the conformance tables):
//! - in split mode BuildKit's lexer reuses one word buffer for nested `${VAR:-...}` words, which
//!   drops the text before them (`80${P:-/tcp}` splits to `/tcp`); kiln keeps it (`80/tcp`);
//! - with `SkipUnsetEnv`, an unset `${VAR//a/b}` is written back with `//`, not `/`.
//!
//! Hand-written rather than built on a shell crate: no crate reproduces BuildKit's deviations
//! from POSIX sh (literal `[...]` in patterns, `${VAR?}` vs `${VAR:?}` messages, its word
//! splitting of expansions), and those are what the conformance tables pin down.

mod chars;
mod env;
mod keywords;
mod pattern;

use std::collections::BTreeSet;

pub use env::Env;
pub use keywords::{expands_variables, variable_expansion, VariableExpansion};

use chars::{is_go_digit, is_go_letter};

/// A failure to process a word. `word` is the whole input and `offset` the byte offset in it
/// of the construct that failed (the opening quote, or the `$` of `${...}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    #[error(
        "failed to process {word:?}: unexpected end of statement while looking for matching \
         {} (opened at byte {offset})",
        if *quote == '\'' { "single-quote" } else { "double-quote" }
    )]
    UnterminatedQuote {
        word: String,
        offset: usize,
        quote: char,
    },
    #[error("failed to process {word:?}: syntax error: missing '}}' for '${{' at byte {offset}")]
    MissingBrace { word: String, offset: usize },
    #[error("failed to process {word:?}: syntax error: bad substitution at byte {offset}")]
    BadSubstitution { word: String, offset: usize },
    #[error("failed to process {word:?}: syntax error: missing '/' in ${{}} at byte {offset}")]
    MissingSlash { word: String, offset: usize },
    #[error(
        "failed to process {word:?}: unsupported modifier ({modifier}) in substitution at byte \
         {offset}"
    )]
    UnsupportedModifier {
        word: String,
        offset: usize,
        modifier: String,
    },
    /// `${name?message}` with `name` unset, or `${name:?message}` with it unset or empty.
    #[error("failed to process {word:?}: {name}: {message}")]
    Required {
        word: String,
        offset: usize,
        name: String,
        message: String,
    },
    #[error(
        "failed to process {word:?}: invalid pattern ({pattern}) in substitution at byte \
         {offset}: {reason}"
    )]
    InvalidPattern {
        word: String,
        offset: usize,
        pattern: String,
        reason: String,
    },
}

impl ShellError {
    /// The word that failed to process.
    pub fn word(&self) -> &str {
        match self {
            ShellError::UnterminatedQuote { word, .. }
            | ShellError::MissingBrace { word, .. }
            | ShellError::BadSubstitution { word, .. }
            | ShellError::MissingSlash { word, .. }
            | ShellError::UnsupportedModifier { word, .. }
            | ShellError::Required { word, .. }
            | ShellError::InvalidPattern { word, .. } => word,
        }
    }

    /// Byte offset in [`ShellError::word`] of the construct that failed.
    pub fn offset(&self) -> usize {
        match self {
            ShellError::UnterminatedQuote { offset, .. }
            | ShellError::MissingBrace { offset, .. }
            | ShellError::BadSubstitution { offset, .. }
            | ShellError::MissingSlash { offset, .. }
            | ShellError::UnsupportedModifier { offset, .. }
            | ShellError::Required { offset, .. }
            | ShellError::InvalidPattern { offset, .. } => *offset,
        }
    }
}

/// The default `\` escape token, without options.
impl Default for ShellLex {
    fn default() -> ShellLex {
        ShellLex::new('\\')
    }
}

/// One processed word and the variable names it looked up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expansion {
    pub value: String,
    /// Names that were looked up and set (even if set to the empty string).
    pub matched: BTreeSet<String>,
    /// Names that were looked up and not set.
    pub unmatched: BTreeSet<String>,
}

/// A word split into words after expansion, and the variable names it looked up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WordsExpansion {
    pub words: Vec<String>,
    pub matched: BTreeSet<String>,
    pub unmatched: BTreeSet<String>,
}

/// The shell-word processor for one escape token, plus BuildKit's option switches.
///
/// Cheap to copy and free of state: it can be shared between threads and reused per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellLex {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_process_quotes: bool,
    skip_unset_env: bool,
}

impl ShellLex {
    /// A processor using `escape` (`\`, or `` ` `` under `# escape=``) as escape token.
    pub fn new(escape: char) -> ShellLex {
        ShellLex {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// The processor BuildKit uses for heredoc bodies whose delimiter is unquoted
    /// (`COPY <<EOF`, not `<<"EOF"`): escape token always `\` whatever `# escape=` says, and
    /// quotes left as written because they belong to the file's text, not to the Dockerfile.
    pub fn for_heredoc() -> ShellLex {
        ShellLex::new('\\').with_skip_process_quotes(true)
    }

    /// The escape token.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Keep the quote characters in the output (BuildKit `RawQuotes`).
    pub fn with_raw_quotes(mut self, raw_quotes: bool) -> ShellLex {
        self.raw_quotes = raw_quotes;
        self
    }

    /// Keep escape tokens in the output (BuildKit `RawEscapes`).
    pub fn with_raw_escapes(mut self, raw_escapes: bool) -> ShellLex {
        self.raw_escapes = raw_escapes;
        self
    }

    /// Treat quotes as ordinary characters (BuildKit `SkipProcessQuotes`).
    pub fn with_skip_process_quotes(mut self, skip_process_quotes: bool) -> ShellLex {
        self.skip_process_quotes = skip_process_quotes;
        self
    }

    /// Leave references to unset variables as written, e.g. `$X` or `${X:-y}` (BuildKit
    /// `SkipUnsetEnv`).
    pub fn with_skip_unset_env(mut self, skip_unset_env: bool) -> ShellLex {
        self.skip_unset_env = skip_unset_env;
        self
    }

    /// Processes `word` as one word: quotes removed, escapes processed, variables expanded;
    /// whitespace does not split it.
    pub fn process_word<E: Env + ?Sized>(&self, word: &str, env: &E) -> Result<String, ShellError> {
        Ok(self.run(word, env, false)?.value)
    }

    /// Processes `word` and splits it into words at unquoted whitespace, including whitespace
    /// that comes from an expanded variable. Quoted text never splits.
    pub fn process_words<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<Vec<String>, ShellError> {
        Ok(self.run(word, env, true)?.words)
    }

    /// [`ShellLex::process_word`], also returning which names were looked up and found or not.
    pub fn process_word_with_matches<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<Expansion, ShellError> {
        let processed = self.run(word, env, false)?;
        Ok(Expansion {
            value: processed.value,
            matched: processed.matched,
            unmatched: processed.unmatched,
        })
    }

    /// [`ShellLex::process_words`], also returning which names were looked up and found or not.
    pub fn process_words_with_matches<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<WordsExpansion, ShellError> {
        let processed = self.run(word, env, true)?;
        Ok(WordsExpansion {
            words: processed.words,
            matched: processed.matched,
            unmatched: processed.unmatched,
        })
    }

    fn run<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
        split: bool,
    ) -> Result<Processed, ShellError> {
        // Go's text/scanner, which BuildKit reads the word with, drops a leading byte-order mark.
        let start = if word.starts_with('\u{feff}') {
            '\u{feff}'.len_utf8()
        } else {
            0
        };
        let mut scanner = Scanner {
            lex: self,
            source: word,
            pos: start,
            env,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        let (value, words) = scanner.process_until(None, self.raw_escapes, split)?;
        Ok(Processed {
            value,
            words,
            matched: scanner.matched,
            unmatched: scanner.unmatched,
        })
    }
}

struct Processed {
    value: String,
    words: Vec<String>,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

/// Word splitting as BuildKit does it: unquoted whitespace ends a non-empty word; quoted and
/// escaped text is added as is.
struct WordSplitter {
    enabled: bool,
    words: Vec<String>,
    current: String,
}

impl WordSplitter {
    fn new(enabled: bool) -> WordSplitter {
        WordSplitter {
            enabled,
            words: Vec::new(),
            current: String::new(),
        }
    }

    fn add_char(&mut self, c: char) {
        if !self.enabled {
            return;
        }
        if c.is_whitespace() {
            if !self.current.is_empty() {
                self.words.push(std::mem::take(&mut self.current));
            }
        } else {
            self.current.push(c);
        }
    }

    fn add_str(&mut self, text: &str) {
        if self.enabled {
            text.chars().for_each(|c| self.add_char(c));
        }
    }

    fn add_raw_char(&mut self, c: char) {
        if self.enabled {
            self.current.push(c);
        }
    }

    fn add_raw_str(&mut self, text: &str) {
        if self.enabled {
            self.current.push_str(text);
        }
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.words.push(self.current);
        }
        self.words
    }
}

/// The processing state of one word: a cursor over it plus the names looked up so far.
struct Scanner<'a, E: ?Sized> {
    lex: &'a ShellLex,
    source: &'a str,
    pos: usize,
    env: &'a E,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl<E: Env + ?Sized> Scanner<'_, E> {
    fn peek(&self) -> Option<char> {
        self.source[self.pos..].chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.source.len()
    }

    fn word(&self) -> String {
        self.source.to_string()
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        match self.env.lookup(name) {
            Some(value) => {
                self.matched.insert(name.to_string());
                Some(value.to_string())
            }
            None => {
                self.unmatched.insert(name.to_string());
                None
            }
        }
    }

    /// Processes up to `stop` (consumed) or, with `None`, to the end. With `raw_escapes` the
    /// escape tokens are kept (pattern and replacement text keeps them for the pattern code).
    ///
    /// Reaching the end while looking for `stop` is an error; callers report it as the
    /// missing `}` or `/` of their `${...}`.
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
        split: bool,
    ) -> Result<(String, Vec<String>), ShellError> {
        let mut result = String::new();
        let mut words = WordSplitter::new(split);
        let quotes = !self.lex.skip_process_quotes;
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            if c == '$' {
                let value = self.process_dollar()?;
                words.add_str(&value);
                result.push_str(&value);
            } else if quotes && c == '\'' {
                let value = self.process_single_quote()?;
                words.add_raw_str(&value);
                result.push_str(&value);
            } else if quotes && c == '"' {
                let value = self.process_double_quote(raw_escapes)?;
                words.add_raw_str(&value);
                result.push_str(&value);
            } else {
                self.next();
                if c == self.lex.escape {
                    if raw_escapes {
                        words.add_raw_char(c);
                        result.push(c);
                    }
                    // An escape token at the very end escapes nothing and is dropped.
                    let Some(escaped) = self.next() else { break };
                    words.add_raw_char(escaped);
                    result.push(escaped);
                } else {
                    words.add_char(c);
                    result.push(c);
                }
            }
        }
        match stop {
            None => Ok((result, words.finish())),
            Some('/') => Err(ShellError::MissingSlash {
                word: self.word(),
                offset: self.pos,
            }),
            Some(_) => Err(ShellError::MissingBrace {
                word: self.word(),
                offset: self.pos,
            }),
        }
    }

    /// `'...'`: everything up to the next `'` as written.
    fn process_single_quote(&mut self) -> Result<String, ShellError> {
        let open = self.pos;
        let mut result = String::new();
        self.next();
        if self.lex.raw_quotes {
            result.push('\'');
        }
        loop {
            match self.next() {
                None => {
                    return Err(ShellError::UnterminatedQuote {
                        word: self.word(),
                        offset: open,
                        quote: '\'',
                    })
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    /// `"..."`: `$` expands; the escape token escapes only `"`, `$` and itself.
    fn process_double_quote(&mut self, raw_escapes: bool) -> Result<String, ShellError> {
        let open = self.pos;
        let mut result = String::new();
        self.next();
        if self.lex.raw_quotes {
            result.push('"');
        }
        loop {
            match self.peek() {
                None => {
                    return Err(ShellError::UnterminatedQuote {
                        word: self.word(),
                        offset: open,
                        quote: '"',
                    })
                }
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                }
                Some(_) => {
                    let mut c = self.next().unwrap_or_default();
                    if c == self.lex.escape {
                        if raw_escapes {
                            result.push(c);
                        }
                        match self.peek() {
                            // A trailing escape token is dropped; the quote is then unterminated.
                            None => continue,
                            Some(next) if next == '"' || next == '$' || next == self.lex.escape => {
                                self.next();
                                c = next;
                            }
                            // Before anything else the escape token stays as written.
                            Some(_) => {}
                        }
                    }
                    result.push(c);
                }
            }
        }
    }

    /// A variable name after `$` or `${`: a run of digits (positional parameter), one special
    /// parameter character, or letters, digits and `_`. Empty if none of those follow.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        let Some(first) = self.peek() else {
            return name;
        };
        if is_go_digit(first) {
            while let Some(c) = self.peek().filter(|&c| is_go_digit(c)) {
                self.next();
                name.push(c);
            }
            return name;
        }
        if matches!(first, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
            self.next();
            name.push(first);
            return name;
        }
        while let Some(c) = self
            .peek()
            .filter(|&c| is_go_letter(c) || is_go_digit(c) || c == '_')
        {
            self.next();
            name.push(c);
        }
        name
    }

    /// `$name` or `${...}`, with the cursor on the `$`.
    fn process_dollar(&mut self) -> Result<String, ShellError> {
        let dollar = self.pos;
        self.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.get_env(&name) {
                Some(value) => value,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None => {
                return Err(ShellError::MissingBrace {
                    word: self.word(),
                    offset: dollar,
                })
            }
            Some('{' | '}' | ':') => {
                return Err(ShellError::BadSubstitution {
                    word: self.word(),
                    offset: dollar,
                })
            }
            Some(_) => {}
        }
        let name = self.process_name();
        match self.next() {
            Some('}') => Ok(match self.get_env(&name) {
                Some(value) => value,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':') => match self.next() {
                Some(op) => self.process_modifier(dollar, name, true, op),
                None => Err(ShellError::MissingBrace {
                    word: self.word(),
                    offset: dollar,
                }),
            },
            Some(op @ ('+' | '-' | '?' | '#' | '%')) => {
                self.process_modifier(dollar, name, false, op)
            }
            Some('/') => self.process_replace(dollar, name),
            Some(other) => Err(ShellError::UnsupportedModifier {
                word: self.word(),
                offset: dollar,
                modifier: other.to_string(),
            }),
            None => Err(ShellError::MissingBrace {
                word: self.word(),
                offset: dollar,
            }),
        }
    }

    /// Turns an error from inside `${...}` into "missing `}`/`/`" when it ran off the end, as
    /// BuildKit does; other errors (a nested bad substitution) pass through.
    fn inside_braces(&self, dollar: usize, error: ShellError, missing_slash: bool) -> ShellError {
        if !self.at_end() {
            return error;
        }
        if missing_slash {
            ShellError::MissingSlash {
                word: self.word(),
                offset: dollar,
            }
        } else {
            ShellError::MissingBrace {
                word: self.word(),
                offset: dollar,
            }
        }
    }

    /// `${name<op>word}` and `${name:<op>word}` (`null_is_unset`), cursor after the operator.
    fn process_modifier(
        &mut self,
        dollar: usize,
        name: String,
        null_is_unset: bool,
        op: char,
    ) -> Result<String, ShellError> {
        let modifier = if null_is_unset {
            format!(":{op}")
        } else {
            op.to_string()
        };
        let unsupported = |scanner: &Self| ShellError::UnsupportedModifier {
            word: scanner.word(),
            offset: dollar,
            modifier: modifier.clone(),
        };
        let is_pattern = op == '#' || op == '%';
        if null_is_unset && is_pattern {
            return Err(unsupported(self));
        }
        // Pattern text keeps its escapes: `\*` must reach the pattern code as a literal star.
        let (word, _) = self
            .process_until(Some('}'), is_pattern, false)
            .map_err(|error| self.inside_braces(dollar, error, false))?;
        let value = self.get_env(&name);
        if value.is_none() && self.lex.skip_unset_env {
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        let set = value.is_some();
        let value = value.unwrap_or_default();
        // `:` makes an empty value count as unset.
        let null = !set || (null_is_unset && value.is_empty());
        match op {
            '-' => Ok(if null { word } else { value }),
            '+' => Ok(if null { String::new() } else { word }),
            '?' if null => {
                let default = if set {
                    "is not allowed to be empty"
                } else {
                    "is not allowed to be unset"
                };
                Err(ShellError::Required {
                    word: self.word(),
                    offset: dollar,
                    name,
                    message: if word.is_empty() {
                        default.to_string()
                    } else {
                        word
                    },
                })
            }
            '?' => Ok(value),
            '#' => self.trim(dollar, false, &word, &value),
            '%' => self.trim(dollar, true, &word, &value),
            _ => Err(unsupported(self)),
        }
    }

    /// `#`/`##` (prefix) and `%`/`%%` (suffix): a doubled operator, seen as the first character
    /// of the processed pattern word, asks for the longest match.
    fn trim(
        &self,
        dollar: usize,
        suffix: bool,
        word: &str,
        value: &str,
    ) -> Result<String, ShellError> {
        let op = if suffix { '%' } else { '#' };
        let (pattern, greedy) = match word.strip_prefix(op) {
            Some(rest) => (rest, true),
            None => (word, false),
        };
        let trimmed = if suffix {
            pattern::trim_suffix(pattern, value, greedy)
        } else {
            pattern::trim_prefix(pattern, value, greedy)
        };
        trimmed.map_err(|error| ShellError::InvalidPattern {
            word: self.word(),
            offset: dollar,
            pattern: pattern.to_string(),
            reason: error.to_string(),
        })
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`, cursor after the
    /// first `/`.
    fn process_replace(&mut self, dollar: usize, name: String) -> Result<String, ShellError> {
        let all = self.peek() == Some('/');
        if all {
            self.next();
        }
        let (pattern, _) = self
            .process_until(Some('/'), true, false)
            .map_err(|error| self.inside_braces(dollar, error, true))?;
        let (replacement, _) = self
            .process_until(Some('}'), true, false)
            .map_err(|error| self.inside_braces(dollar, error, false))?;
        let value = self.get_env(&name);
        let value = match value {
            Some(value) => value,
            // BuildKit writes `${name/...}` back even for `//`, which changes the meaning; kiln
            // keeps the operator as written.
            None if self.lex.skip_unset_env => {
                let slashes = if all { "//" } else { "/" };
                return Ok(format!("${{{name}{slashes}{pattern}/{replacement}}}"));
            }
            None => String::new(),
        };
        pattern::replace(&pattern, &value, &replacement, all).map_err(|error| {
            ShellError::InvalidPattern {
                word: self.word(),
                offset: dollar,
                pattern: pattern.clone(),
                reason: error.to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How a case should come out: the single processed word, the split words, or an error
    /// whose message contains the given text.
    enum Expect<'a> {
        Word(&'a str),
        Words(&'a [&'a str]),
        Error(&'a str),
    }
    use Expect::{Error, Word, Words};

    fn check(input: &str, env: &[&str], expect: Expect) {
        let lex = ShellLex::new('\\');
        match expect {
            Word(want) => match lex.process_word(input, env) {
                Ok(got) => assert_eq!(got, want, "process_word({input:?}) with {env:?}"),
                Err(error) => panic!("process_word({input:?}) with {env:?} failed: {error}"),
            },
            Words(want) => match lex.process_words(input, env) {
                Ok(got) => assert_eq!(got, want, "process_words({input:?}) with {env:?}"),
                Err(error) => panic!("process_words({input:?}) with {env:?} failed: {error}"),
            },
            Error(want) => match lex.process_word(input, env) {
                Ok(got) => panic!("process_word({input:?}) with {env:?} gave {got:?}, want error"),
                Err(error) => {
                    let message = error.to_string();
                    assert!(message.contains(want), "error {message:?} lacks {want:?}");
                    assert_eq!(error.word(), input);
                }
            },
        }
    }

    const ENV: &[&str] = &["PWD=/home", "SHELL=bash", "NULL=", "SP=a  b"];

    #[test]
    fn quotes_and_escapes() {
        check("he'll'o", ENV, Word("hello"));
        check("he\\'llo", ENV, Word("he'llo"));
        check("abc\\tdef", ENV, Word("abctdef"));
        check("\"abc\\tdef\"", ENV, Word("abc\\tdef"));
        check("\"a\\\"b\\\\c\\$d\"", ENV, Word("a\"b\\c$d"));
        check("'a\\$PWD\"'", ENV, Word("a\\$PWD\""));
        check("hello\\", ENV, Word("hello"));
        check("\"''\"", ENV, Word("''"));
        check("he'llo", ENV, Error("single-quote"));
        check("\"hello\\\"", ENV, Error("double-quote"));
    }

    #[test]
    fn plain_and_braced_variables() {
        check("he$PWD", ENV, Word("he/home"));
        check("he\\$PWD", ENV, Word("he$PWD"));
        check("he${PWD}x", ENV, Word("he/homex"));
        check("$pwd.", ENV, Word("."));
        check("$.", ENV, Word("$."));
        check("a$", ENV, Word("a$"));
        check("${aaa}}", ENV, Word("}"));
        check("$1x$@@${999}$$", ENV, Word("x@"));
    }

    #[test]
    fn default_alternative_and_required() {
        check("${X:-${Y:-yyy}}", ENV, Word("yyy"));
        check("${NULL-d}|${NULL:-d}", ENV, Word("|d"));
        check("${NULL+a}|${NULL:+a}|${PWD:+$SHELL}", ENV, Word("a||bash"));
        check("${NULL?}", ENV, Word(""));
        check("${NULL:?}", ENV, Error("NULL: is not allowed to be empty"));
        check("${X?}", ENV, Error("X: is not allowed to be unset"));
        check("${X:?need $SHELL here}", ENV, Error("X: need bash here"));
    }

    #[test]
    fn syntax_errors_name_the_place() {
        check("${}", ENV, Error("bad substitution"));
        check("a${.}", ENV, Error("unsupported modifier (.)"));
        check("${:}", ENV, Error("bad substitution"));
        check("${PWD:=x}", ENV, Error("unsupported modifier (:=)"));
        check("${PWD:#x}", ENV, Error("unsupported modifier (:#)"));
        check("${PWD", ENV, Error("missing '}'"));
        check("${X:-\"a}", ENV, Error("missing '}'"));
        check("${X/a", ENV, Error("missing '/'"));
        check("${PWD#\\x}", ENV, Error("invalid pattern (\\x)"));
        let error = ShellLex::new('\\')
            .process_word("ab${X:-${}}", ENV)
            .unwrap_err();
        assert!(
            matches!(error, ShellError::BadSubstitution { offset: 7, .. }),
            "{error:?}"
        );
        let error = ShellLex::new('\\').process_word("ab'cd", ENV).unwrap_err();
        assert_eq!(error.offset(), 2);
    }

    #[test]
    fn patterns_and_replacement() {
        check("${PWD#/}", ENV, Word("home"));
        check("${PWD##*o}", ENV, Word("me"));
        check("${PWD%%o*}", ENV, Word("/h"));
        check("${PWD%e}", ENV, Word("/hom"));
        check("${PWD/o/0}", ENV, Word("/h0me"));
        check("${SHELL//?/-}", ENV, Word("----"));
        check("${X//a/b}", ENV, Word(""));
    }

    #[test]
    fn splitting_words() {
        check("a b", ENV, Words(&["a", "b"]));
        check("x${SP}y", ENV, Words(&["xa", "by"]));
        check("x\"${SP}\"y", ENV, Words(&["xa  by"]));
        check("a\\ b '' c", ENV, Words(&["a b", "c"]));
        check("${X:-p q}", ENV, Words(&["p", "q"]));
        check("  ", ENV, Words(&[]));
    }

    #[test]
    fn backtick_escape() {
        let lex = ShellLex::new('`');
        assert_eq!(
            lex.process_word("C:\\dir`$PWD", ENV).unwrap(),
            "C:\\dir$PWD"
        );
        assert_eq!(lex.process_word("\"a``b`\"\"", ENV).unwrap(), "a`b\"");
        assert_eq!(lex.process_word("${PWD#`/}", ENV).unwrap(), "/home");
    }

    #[test]
    fn matches_record_found_and_missing_names() {
        let lex = ShellLex::new('\\');
        let expansion = lex
            .process_word_with_matches("${NULL:-$A}$PWD${B+x}", ENV)
            .unwrap();
        assert_eq!(expansion.value, "/home");
        assert_eq!(
            expansion.matched,
            BTreeSet::from(["NULL".into(), "PWD".into()])
        );
        assert_eq!(
            expansion.unmatched,
            BTreeSet::from(["A".into(), "B".into()])
        );
        let words = lex.process_words_with_matches("$SP $Z", ENV).unwrap();
        assert_eq!(words.words, ["a", "b"]);
        assert_eq!(words.unmatched, BTreeSet::from(["Z".into()]));
    }

    #[test]
    fn options() {
        let raw = ShellLex::new('\\').with_raw_quotes(true);
        assert_eq!(
            raw.process_word("'a'\"$PWD\"", ENV).unwrap(),
            "'a'\"/home\""
        );
        let skip = ShellLex::new('\\').with_skip_unset_env(true);
        assert_eq!(
            skip.process_word("$X ${Y} ${Z:-d} ${W//a/b} $PWD", ENV)
                .unwrap(),
            "$X ${Y} ${Z:-d} ${W//a/b} /home"
        );
        let no_quotes = ShellLex::new('\\').with_skip_process_quotes(true);
        assert_eq!(no_quotes.process_word("'$PWD'", ENV).unwrap(), "'/home'");
        let raw_escapes = ShellLex::new('\\').with_raw_escapes(true);
        assert_eq!(raw_escapes.process_word("a\\$b", ENV).unwrap(), "a\\$b");
    }

    #[test]
    fn nested_words_keep_the_text_before_them() {
        check("80${P:-/tcp}", ENV, Words(&["80/tcp"]));
        check("a${X:-b c}d e", ENV, Words(&["ab", "cd", "e"]));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_errors_point_into_the_word(
            input in "[a-c0-9_ \\t$'\"\\\\`{}:?#%/*+=.@!안-]{0,24}",
        ) {
            let env = ["a=x y", "b=", "c=/p/q"];
            for escape in ['\\', '`'] {
                let lex = ShellLex::new(escape);
                let word = lex.process_word(&input, &env);
                let words = lex.process_words(&input, &env);
                proptest::prop_assert_eq!(word.is_ok(), words.is_ok());
                if let Err(error) = word {
                    proptest::prop_assert_eq!(error.word(), input.as_str());
                    proptest::prop_assert!(input.is_char_boundary(error.offset()));
                    proptest::prop_assert!(error.offset() < input.len());
                }
            }
        }

        #[test]
        fn without_whitespace_a_word_is_one_word(input in "[a-c$'\"\\\\{}:?#%/*+=.-]{0,24}") {
            let env = ["a=x", "b=", "c=/p/q"];
            let lex = ShellLex::new('\\');
            if let Ok(value) = lex.process_word(&input, &env) {
                let words = lex.process_words(&input, &env).unwrap();
                let expect: Vec<String> = if value.is_empty() { vec![] } else { vec![value] };
                proptest::prop_assert_eq!(words, expect);
            }
        }

        #[test]
        fn escaping_every_character_gives_the_text_back(text in "\\PC{0,24}") {
            let escaped: String = text.chars().flat_map(|c| ['\\', c]).collect();
            let got = ShellLex::new('\\').process_word(&escaped, &ENV).unwrap();
            proptest::prop_assert_eq!(got, text);
        }
    }

    #[test]
    fn heredoc_bodies_keep_quotes() {
        let body = "echo \"$PWD\" '$SHELL' \\$HOME\nline 2\n";
        let got = ShellLex::for_heredoc().process_word(body, ENV).unwrap();
        assert_eq!(got, "echo \"/home\" 'bash' $HOME\nline 2\n");
        assert_eq!(ShellLex::default(), ShellLex::new('\\'));
    }

    #[test]
    fn leading_byte_order_mark_is_dropped() {
        check("\u{feff}$PWD", ENV, Word("/home"));
        check("a\u{feff}", ENV, Word("a\u{feff}"));
    }
}
