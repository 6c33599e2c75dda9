//! BuildKit's parse: Dockerfile text -> the raw node list ([`Node`]), directives and
//! warnings, exactly as moby/buildkit `frontend/dockerfile/parser.Parse` builds them, plus
//! the `result` dump format of its golden tests.
//!
//! Why this part is hand-written and not a pest grammar: the line structure is
//! context-dependent. The continuation character is chosen by an `# escape=` directive read
//! on an earlier line; comment and empty lines are skipped only *inside* a continuation;
//! heredoc bodies end at a terminator named on the instruction line (several per line, `<<-`
//! tab stripping), and whether a line opens heredocs at all depends on the instruction and
//! on whether its arguments parse as JSON. This loop follows BuildKit's scanner loop step by
//! step; the context-free pieces (directive lines, heredoc openers, `--mount` CSV, durations)
//! are pest rules in `grammar/dockerfile.pest` (see `grammar.rs`). JSON arrays are read with
//! serde_json.
//!
//! Known deviations from Go (documented, deliberate): Go walks builder flags byte by byte and
//! treats the UTF-8 continuation bytes 0x85/0xA0 as spaces and re-encodes other non-ASCII
//! bytes as Latin-1; kiln treats non-ASCII characters in flags as ordinary characters. Input
//! must be UTF-8 (the caller rejects other bytes).
//!
//! Knows text only: nothing about building, images or caching.

use super::ast::{Directives, Heredoc, Node, Span, Warning};
use super::error::{ParseError, ParseErrorKind};
use super::grammar;

/// Every instruction keyword BuildKit knows, lowercased.
pub const INSTRUCTIONS: [&str; 18] = [
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// BuildKit reads lines with a `bufio.Scanner` of 64 KiB: a longer line is an error.
pub const MAX_LINE_LENGTH: usize = 65535;

/// The outcome of the raw parse: everything that parsed, and every error found.
#[derive(Debug, Clone)]
pub struct RawParse {
    pub directives: Directives,
    pub nodes: Vec<Node>,
    pub warnings: Vec<Warning>,
    pub errors: Vec<ParseError>,
}

/// One physical line: its start offset and its text including the newline.
struct Line<'a> {
    start: usize,
    text: &'a str,
}

/// Splits like BuildKit's `scanLines`: tokens keep their `\n`; a last line without one is
/// a token too.
fn split_lines(source: &str) -> Vec<Line<'_>> {
    let mut lines = Vec::new();
    let mut start = 0;
    for piece in source.split_inclusive('\n') {
        lines.push(Line { start, text: piece });
        start += piece.len();
    }
    lines
}

/// Recognises parser directives at the top of the file (BuildKit's `DirectiveParser`).
struct DirectiveParser {
    line: usize,
    done: bool,
    seen: Vec<String>,
}

impl DirectiveParser {
    fn parse_line(&mut self, line: &str) -> Result<Option<(String, String)>, ParseErrorKind> {
        self.line += 1;
        if self.done {
            return Ok(None);
        }
        if self.line == 1 && line.starts_with("#!") {
            return Ok(None);
        }
        let Some((name, value)) = grammar::directive(line) else {
            self.done = true;
            return Ok(None);
        };
        let name = name.to_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&name) {
            return Err(ParseErrorKind::DuplicateDirective { name });
        }
        self.seen.push(name.clone());
        Ok(Some((name, value)))
    }
}

/// Go's `unicode.IsSpace` (the Unicode White_Space property, as Rust's `is_whitespace`).
fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// BuildKit's `reWhitespace`: `[\t\v\f\r ]`.
fn is_split_space(c: char) -> bool {
    matches!(c, '\t' | '\u{0B}' | '\u{0C}' | '\r' | ' ')
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches(is_space).starts_with('#')
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

/// If `line` ends with the escape token (trailing blanks allowed) that is not itself
/// escaped, returns the line without it and `false` (not the end of the logical line).
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    if let Some(before) = trimmed.strip_suffix(escape) {
        if !before.ends_with(escape) {
            return (before, false);
        }
    }
    (line, true)
}

/// A logical line being assembled from physical lines, remembering where each piece came
/// from in the source.
#[derive(Default)]
struct LogicalLine {
    text: String,
    segments: Vec<(usize, usize)>,
}

impl LogicalLine {
    fn push(&mut self, piece: &str, source_offset: usize) {
        if piece.is_empty() {
            return;
        }
        self.segments.push((self.text.len(), source_offset));
        self.text.push_str(piece);
    }
}

struct Parser<'a> {
    source: &'a str,
    file: &'a str,
    lines: Vec<Line<'a>>,
    next_line: usize,
    directive_parser: DirectiveParser,
    directives: Directives,
    nodes: Vec<Node>,
    warnings: Vec<Warning>,
    errors: Vec<ParseError>,
}

/// Parses `source` into BuildKit's node list. Errors are collected, not returned early,
/// except where BuildKit's scanner cannot go on (a line that is too long, an unterminated
/// heredoc that swallows the rest of the file).
pub fn parse_nodes(source: &str, file: &str) -> RawParse {
    let mut parser = Parser {
        source,
        file,
        lines: split_lines(source),
        next_line: 0,
        directive_parser: DirectiveParser {
            line: 0,
            done: false,
            seen: Vec::new(),
        },
        directives: Directives::default(),
        nodes: Vec::new(),
        warnings: Vec::new(),
        errors: Vec::new(),
    };
    // Roughly one instruction per two lines in real files; saves regrowing a large vector.
    parser.nodes.reserve(parser.lines.len() / 2);
    parser.run();
    RawParse {
        directives: parser.directives,
        nodes: parser.nodes,
        warnings: parser.warnings,
        errors: parser.errors,
    }
}

impl<'a> Parser<'a> {
    fn error_at(&mut self, kind: ParseErrorKind, offset: usize, span: Span) {
        self.errors
            .push(ParseError::at(kind, self.file, self.source, offset, span));
    }

    fn line_span(&self, first: usize, last: usize) -> Span {
        let start = self.lines.get(first).map_or(self.source.len(), |l| l.start);
        let end = self
            .lines
            .get(last)
            .map_or(self.source.len(), |l| l.start + trim_newline(l.text).len());
        Span {
            start,
            end,
            start_line: first + 1,
            end_line: last + 1,
        }
    }

    /// BuildKit's `processLine`: newline off, optional left trim, directive check, comment
    /// lines become empty. Returns the text and its source offset.
    fn process_line(
        &mut self,
        index: usize,
        strip_left: bool,
    ) -> Result<(&'a str, usize), ParseErrorKind> {
        let line = &self.lines[index];
        let mut text = trim_newline(line.text);
        let mut offset = line.start;
        if index == 0 {
            if let Some(rest) = text.strip_prefix('\u{FEFF}') {
                text = rest;
                offset += '\u{FEFF}'.len_utf8();
            }
        }
        if strip_left {
            let trimmed = text.trim_start_matches(is_space);
            offset += text.len() - trimmed.len();
            text = trimmed;
        }
        if let Some((name, value)) = self.directive_parser.parse_line(text)? {
            match name.as_str() {
                "escape" => {
                    let mut chars = value.chars();
                    match (chars.next(), chars.next()) {
                        (Some(c @ ('\\' | '`')), None) => self.directives.escape = c,
                        _ => return Err(ParseErrorKind::InvalidEscapeToken { value }),
                    }
                }
                "syntax" => self.directives.syntax = Some(value),
                _ => self.directives.check = Some(value),
            }
        }
        if is_comment(text) {
            return Ok(("", offset));
        }
        Ok((text, offset))
    }

    fn run(&mut self) {
        // The scanner gives up on an over-long line; so does kiln, reporting every one.
        let mut too_long = false;
        for index in 0..self.lines.len() {
            if trim_newline(self.lines[index].text).len() > MAX_LINE_LENGTH {
                let span = self.line_span(index, index);
                let offset = self.lines[index].start;
                self.error_at(ParseErrorKind::LineTooLong, offset, span);
                too_long = true;
            }
        }
        if too_long {
            return;
        }

        let mut comments: Vec<String> = Vec::new();
        while self.next_line < self.lines.len() {
            let first = self.next_line;
            let raw = self.lines[first].text;
            if is_comment(raw) {
                // BuildKit drops the first byte (usually the `#`) and trims.
                let mut chars = raw.chars();
                chars.next();
                let comment = chars.as_str().trim();
                if comment.is_empty() {
                    comments.clear();
                } else {
                    comments.push(comment.to_string());
                }
            }
            let processed = self.process_line(first, true);
            self.next_line += 1;
            let (text, offset) = match processed {
                Ok(result) => result,
                Err(kind) => {
                    let span = self.line_span(first, first);
                    self.error_at(kind, span.start, span);
                    continue;
                }
            };
            let escape = self.directives.escape;
            let (text, mut end_of_line) = trim_continuation(text, escape);
            if end_of_line && text.is_empty() {
                continue;
            }
            let mut logical = LogicalLine::default();
            logical.push(text, offset);
            let mut has_empty_continuation = false;
            while !end_of_line && self.next_line < self.lines.len() {
                let index = self.next_line;
                let processed = self.process_line(index, false);
                self.next_line += 1;
                let (text, offset) = match processed {
                    Ok(result) => result,
                    Err(kind) => {
                        let span = self.line_span(index, index);
                        self.error_at(kind, span.start, span);
                        continue;
                    }
                };
                if is_comment(self.lines[index].text) {
                    continue;
                }
                if text.trim_start_matches(is_space).is_empty() {
                    has_empty_continuation = true;
                    continue;
                }
                let (text, eol) = trim_continuation(text, escape);
                end_of_line = eol;
                logical.push(text, offset);
            }
            let last = self.next_line - 1;
            let mut span = self.line_span(first, last);
            span.start = offset;

            let line = logical.text;
            let mut node = match build_node(&line, 0, escape) {
                Ok(node) => node,
                Err((kind, index)) => {
                    let source_offset = source_offset_in(&logical.segments, index, offset);
                    self.error_at(kind, source_offset, span);
                    comments.clear();
                    continue;
                }
            };
            for flag_offset in node.flag_offsets.iter_mut() {
                *flag_offset = source_offset_in(&logical.segments, *flag_offset, offset);
            }
            if let Some(child) = node.child.as_mut() {
                for flag_offset in child.flag_offsets.iter_mut() {
                    *flag_offset = source_offset_in(&logical.segments, *flag_offset, offset);
                }
            }
            node.original_segments = logical.segments;
            node.keyword_offset = offset;
            node.prev_comment = std::mem::take(&mut comments);
            if let Some(child) = node.child.as_mut() {
                let start = child
                    .original_segments
                    .first()
                    .map_or(0, |segment| segment.1);
                child.original_segments = shift_segments(&node.original_segments, start);
                child.keyword_offset = source_offset_in(&child.original_segments, 0, offset);
                child.span = span;
                child.span.start = child.keyword_offset;
            }
            if has_empty_continuation {
                self.warnings.push(Warning {
                    message: format!("Empty continuation line found in: {line}"),
                    detail: "Empty continuation lines will become errors in a future release"
                        .into(),
                    url: "https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/".into(),
                    span,
                });
            }

            if node.can_contain_heredoc() && line.contains("<<") {
                match heredocs_from_line(&line) {
                    Ok(heredocs) => {
                        for mut heredoc in heredocs {
                            let mut terminated = false;
                            while self.next_line < self.lines.len() {
                                let body_line = self.lines[self.next_line].text;
                                self.next_line += 1;
                                let mut candidate = trim_newline(body_line);
                                if heredoc.chomp {
                                    candidate = candidate.trim_start_matches('\t');
                                }
                                if candidate == heredoc.name {
                                    terminated = true;
                                    break;
                                }
                                heredoc.content.push_str(body_line);
                            }
                            if !terminated {
                                let whole =
                                    self.line_span(first, self.lines.len().saturating_sub(1));
                                self.error_at(
                                    ParseErrorKind::UnterminatedHeredoc {
                                        name: heredoc.name.clone(),
                                    },
                                    offset,
                                    Span {
                                        start: offset,
                                        ..whole
                                    },
                                );
                                return;
                            }
                            node.heredocs.push(heredoc);
                        }
                    }
                    Err(kind) => {
                        self.error_at(kind, offset, span);
                        continue;
                    }
                }
                let last = self.next_line - 1;
                span = Span {
                    start: offset,
                    ..self.line_span(first, last)
                };
            }
            node.span = span;
            if let Some(child) = node.child.as_mut() {
                child.span.end = span.end;
                child.span.end_line = span.end_line;
                child.heredocs = node.heredocs.clone();
            }
            self.nodes.push(node);
        }

        if self.nodes.is_empty() && self.errors.is_empty() {
            let end = self.source.len();
            let line = self.lines.len().max(1);
            let span = Span {
                start: end,
                end,
                start_line: line,
                end_line: line,
            };
            self.error_at(ParseErrorKind::NoInstructions, end, span);
        }
    }
}

/// The parser directives at the top of `source` in order (BuildKit's
/// `DirectiveParser.ParseAll`): known names only, lowercased; a repeated one is an error.
pub fn parse_directives(source: &str) -> Result<Vec<(String, String)>, ParseErrorKind> {
    let source = source.strip_prefix('\u{FEFF}').unwrap_or(source);
    let mut directive_parser = DirectiveParser {
        line: 0,
        done: false,
        seen: Vec::new(),
    };
    let mut found = Vec::new();
    for line in source.split_inclusive('\n') {
        if directive_parser.done {
            break;
        }
        if let Some(directive) = directive_parser.parse_line(trim_newline(line))? {
            found.push(directive);
        }
    }
    Ok(found)
}

/// A directive found by [`find_directive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDirective {
    /// The first word of the value (for `syntax`, the frontend reference).
    pub value: String,
    /// The whole value as written.
    pub cmdline: String,
    /// 1-based line.
    pub line: usize,
}

/// BuildKit's `ParseDirective(key, dt)`: looks for `key` among the leading directives,
/// after an optional BOM and `#!` line. `allow_extra_forms` (what `DetectSyntax` does for
/// `syntax`) also accepts a whole-file JSON object `{"syntax": "..."}` and `//` comments.
pub fn find_directive(key: &str, source: &str, allow_extra_forms: bool) -> Option<FoundDirective> {
    let mut source = source.strip_prefix('\u{FEFF}').unwrap_or(source);
    let mut line_number = 0;
    if source.starts_with("#!") {
        source = source.split_once('\n').map_or("", |(_, rest)| rest);
        line_number = 1;
    }
    if allow_extra_forms {
        if let Ok(map) =
            serde_json::from_str::<std::collections::HashMap<String, serde_json::Value>>(source)
        {
            if let Some(serde_json::Value::String(value)) = map.get(key) {
                return Some(FoundDirective {
                    value: value.clone(),
                    cmdline: value.clone(),
                    line: line_number + 1,
                });
            }
        }
    }
    type DirectiveForm = fn(&str) -> Option<(String, String)>;
    let mut forms: Vec<DirectiveForm> = Vec::new();
    if allow_extra_forms {
        forms.push(grammar::slash_directive);
    }
    forms.push(grammar::directive);
    for form in forms {
        for (index, line) in source.split_inclusive('\n').enumerate() {
            let Some((name, value)) = form(trim_newline(line)) else {
                break;
            };
            if name.eq_ignore_ascii_case(key) {
                let first = value.split(is_split_space).next().unwrap_or("").to_string();
                return Some(FoundDirective {
                    value: first,
                    cmdline: value,
                    line: line_number + index + 1,
                });
            }
        }
    }
    None
}

/// Source offset of byte `index` of a logical line described by `segments`.
fn source_offset_in(segments: &[(usize, usize)], index: usize, fallback: usize) -> usize {
    let position = segments.partition_point(|(start, _)| *start <= index);
    match position.checked_sub(1).and_then(|i| segments.get(i)) {
        Some((start, offset)) => offset + (index - start),
        None => fallback,
    }
}

/// The segments of `line[start..]`.
fn shift_segments(segments: &[(usize, usize)], start: usize) -> Vec<(usize, usize)> {
    let mut shifted = vec![(0, source_offset_in(segments, start, 0))];
    for (segment_start, offset) in segments {
        if *segment_start > start {
            shifted.push((segment_start - start, *offset));
        }
    }
    shifted
}

impl Node {
    /// BuildKit's `canContainHeredoc`: RUN/COPY/ADD (directly or as ONBUILD trigger) in
    /// shell form.
    pub fn can_contain_heredoc(&self) -> bool {
        let node = match &self.child {
            Some(child) if self.keyword.eq_ignore_ascii_case("onbuild") => child,
            _ => self,
        };
        let keyword = node.keyword.to_lowercase();
        matches!(keyword.as_str(), "run" | "copy" | "add") && !node.json_form
    }
}

/// BuildKit's `newNodeFromLine` on `full[start..]`. Errors carry an index into `full`.
fn build_node(full: &str, start: usize, escape: char) -> Result<Node, (ParseErrorKind, usize)> {
    let line = &full[start..];
    let lead = line.len() - line.trim_start_matches(is_space).len();
    let trimmed = line.trim_matches(is_space);
    let base = start + lead;
    let (keyword, rest, rest_index) = match trimmed.find(is_split_space) {
        Some(i) => {
            let after = trimmed[i..].trim_start_matches(is_split_space);
            (&trimmed[..i], after, base + trimmed.len() - after.len())
        }
        None => (trimmed, "", base + trimmed.len()),
    };
    let (args_index_in_rest, flags) = extract_builder_flags(rest);
    let args_raw = &rest[args_index_in_rest..];
    let args_lead = args_raw.len() - args_raw.trim_start_matches(is_space).len();
    let args_text = args_raw.trim_matches(is_space);
    let args_index = rest_index + args_index_in_rest + args_lead;

    let mut node = Node {
        keyword: keyword.to_string(),
        flags: flags.iter().map(|(flag, _)| flag.clone()).collect(),
        args: Vec::new(),
        child: None,
        json_form: false,
        original: line.to_string(),
        heredocs: Vec::new(),
        prev_comment: Vec::new(),
        span: Span::default(),
        keyword_offset: 0,
        flag_offsets: flags.iter().map(|(_, index)| rest_index + index).collect(),
        original_segments: Vec::new(),
    };
    let fail = |kind: ParseErrorKind| (kind, args_index);
    let known = INSTRUCTIONS
        .iter()
        .find(|name| keyword.eq_ignore_ascii_case(name))
        .copied();
    match known.unwrap_or("") {
        "add" | "copy" | "volume" => {
            let (args, json) = parse_maybe_json_to_list(args_text).map_err(fail)?;
            node.args = args;
            node.json_form = json;
        }
        "arg" => node.args = parse_words(args_text, escape),
        "cmd" | "entrypoint" | "run" | "shell" => {
            let (args, json) = parse_maybe_json(args_text).map_err(fail)?;
            node.args = args;
            node.json_form = json;
        }
        "env" => node.args = parse_name_val(args_text, "ENV", escape).map_err(fail)?,
        "label" => node.args = parse_name_val(args_text, "LABEL", escape).map_err(fail)?,
        "expose" | "from" => node.args = split_whitespace(args_text),
        "healthcheck" => {
            let (args, json) = parse_health_config(args_text).map_err(fail)?;
            node.args = args;
            node.json_form = json;
        }
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if !args_text.is_empty() {
                node.args = vec![args_text.to_string()];
            }
        }
        "onbuild" => {
            if !args_text.is_empty() {
                // The trigger is `full[args_index..]`; `build_node` trims its trailing space.
                let mut child = build_node(full, args_index, escape)?;
                child.original = args_text.to_string();
                // Remember where the trigger starts in the line; `run` turns this into
                // source segments.
                child.original_segments = vec![(0, args_index)];
                node.child = Some(Box::new(child));
            }
        }
        _ => node.args = vec![String::new()],
    }
    Ok(node)
}

/// BuildKit's `extractBuilderFlags`: leading `--flag` words (quotes removed, `\` escapes
/// processed), a bare `--` ends them. Returns the index where the arguments start and the
/// flags with their index in `rest`.
fn extract_builder_flags(rest: &str) -> (usize, Vec<(String, usize)>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    // Fast path: most lines have no flags; `rest` is already left-trimmed by the caller.
    if !rest.trim_start_matches(is_space).starts_with("--") {
        return (
            rest.len() - rest.trim_start_matches(is_space).len(),
            Vec::new(),
        );
    }
    // Only the flag words are scanned, so collect just the part of the line that can hold
    // them: everything up to the first whitespace-separated word that does not start with
    // `--` (quotes cannot hide that boundary: a quote inside a flag word keeps the scan
    // going until its closing quote, and the cut only happens after the last `--` word).
    let limit = flag_region_end(rest);
    let chars: Vec<(usize, char)> = rest[..limit].char_indices().collect();
    let rest = &rest[..limit];
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut word_start = 0;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    loop {
        let at_end = pos == chars.len();
        let (byte_index, ch) = if at_end {
            (rest.len(), '\0')
        } else {
            chars[pos]
        };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_space(ch) {
                pos += 1;
                continue;
            }
            let next_is_dash = chars.get(pos + 1).map(|(_, c)| *c) == Some('-');
            if ch != '-' || !next_is_dash {
                return (byte_index, words);
            }
            phase = Phase::Word;
            word_start = byte_index;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push((word, word_start));
            }
            return (rest.len(), words);
        }
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if word == "--" {
                    return (byte_index, words);
                }
                if blank_ok || !word.is_empty() {
                    words.push((std::mem::take(&mut word), word_start));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            let mut ch = ch;
            if ch == '\\' {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = chars[pos].1;
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        let mut ch = ch;
        if ch == '\\' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = chars[pos].1;
        }
        word.push(ch);
        pos += 1;
    }
    (rest.len(), words)
}

/// A byte index after which no builder flag can start: the start of the first word (after
/// whitespace outside quotes) that does not begin with `--`.
fn flag_region_end(rest: &str) -> usize {
    let bytes = rest.as_bytes();
    let mut index = 0;
    let mut quote: Option<u8> = None;
    let mut at_word_start = true;
    while index < bytes.len() {
        let byte = bytes[index];
        match quote {
            Some(q) => {
                if byte == b'\\' {
                    index += 1;
                } else if byte == q {
                    quote = None;
                }
            }
            None => {
                if byte.is_ascii_whitespace() || byte == 0x0B {
                    at_word_start = true;
                } else {
                    if at_word_start && !rest[index..].starts_with("--") {
                        return index;
                    }
                    at_word_start = false;
                    if byte == b'\\' {
                        index += 1;
                    } else if byte == b'"' || byte == b'\'' {
                        quote = Some(byte);
                    }
                }
            }
        }
        index += 1;
    }
    rest.len()
}

/// BuildKit's `parseWords`: split on unquoted whitespace, keeping quotes and escape tokens
/// as written (used for ENV, LABEL and ARG).
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    loop {
        let at_end = pos == chars.len();
        let mut ch = if at_end { '\0' } else { chars[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_space(ch) {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

/// BuildKit's `parseNameVal` for ENV and LABEL: triples `key value sep`.
pub fn parse_name_val(
    rest: &str,
    instruction: &str,
    escape: char,
) -> Result<Vec<String>, ParseErrorKind> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.contains('=') {
        let Some(split) = rest.find(is_split_space) else {
            return Err(ParseErrorKind::MissingValue {
                instruction: instruction.to_string(),
            });
        };
        let value = rest[split..].trim_start_matches(is_split_space);
        return Ok(vec![
            rest[..split].to_string(),
            value.to_string(),
            String::new(),
        ]);
    }
    let mut nodes = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(ParseErrorKind::MissingEquals { word });
        };
        nodes.push(key.to_string());
        nodes.push(value.to_string());
        nodes.push("=".to_string());
    }
    Ok(nodes)
}

/// Splits on runs of `[\t\v\f\r ]` (BuildKit's `parseStringsWhitespaceDelimited`).
fn split_whitespace(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split(is_split_space)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Outcome of trying to read the arguments as a JSON array.
pub enum JsonArgs {
    Strings(Vec<String>),
    NotJson,
    NotStrings,
}

/// BuildKit's `parseJSON`.
pub fn parse_json_array(rest: &str) -> JsonArgs {
    let rest = rest.trim_start_matches(is_space);
    if !rest.starts_with('[') {
        return JsonArgs::NotJson;
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(rest) else {
        return JsonArgs::NotJson;
    };
    let mut strings = Vec::with_capacity(values.len());
    for value in values {
        match value {
            serde_json::Value::String(s) => strings.push(s),
            _ => return JsonArgs::NotStrings,
        }
    }
    JsonArgs::Strings(strings)
}

fn parse_maybe_json(rest: &str) -> Result<(Vec<String>, bool), ParseErrorKind> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    match parse_json_array(rest) {
        JsonArgs::Strings(args) => Ok((args, true)),
        JsonArgs::NotStrings => Err(ParseErrorKind::JsonNotStrings),
        JsonArgs::NotJson => Ok((vec![rest.to_string()], false)),
    }
}

fn parse_maybe_json_to_list(rest: &str) -> Result<(Vec<String>, bool), ParseErrorKind> {
    match parse_json_array(rest) {
        JsonArgs::Strings(args) => Ok((args, true)),
        JsonArgs::NotStrings => Err(ParseErrorKind::JsonNotStrings),
        JsonArgs::NotJson => Ok((split_whitespace(rest), false)),
    }
}

fn parse_health_config(rest: &str) -> Result<(Vec<String>, bool), ParseErrorKind> {
    let sep = rest.find(is_space).unwrap_or(rest.len());
    if sep == 0 {
        return Ok((Vec::new(), false));
    }
    let after = rest[sep..].trim_start_matches(is_space);
    let (command, json) = parse_maybe_json(after)?;
    let mut args = vec![rest[..sep].to_string()];
    args.extend(command);
    Ok((args, json))
}

/// Splits `input` into shell words the way BuildKit's lexer does with an empty
/// environment and `$` left alone. `raw_quotes` keeps quote characters, `raw_escapes` keeps
/// the `\` of escapes. Errors on an unterminated quote.
fn lex_words(input: &str, raw_quotes: bool, raw_escapes: bool) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut got_word = false;
    let mut chars = input.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            c if is_space(c) => {
                if got_word || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                got_word = false;
            }
            '\'' => {
                got_word = true;
                if raw_quotes {
                    word.push('\'');
                }
                loop {
                    match chars.next() {
                        None => return Err(
                            "unexpected end of statement while looking for matching single-quote"
                                .into(),
                        ),
                        Some('\'') => break,
                        Some(c) => word.push(c),
                    }
                }
                if raw_quotes {
                    word.push('\'');
                }
            }
            '"' => {
                got_word = true;
                if raw_quotes {
                    word.push('"');
                }
                loop {
                    match chars.next() {
                        None => return Err(
                            "unexpected end of statement while looking for matching double-quote"
                                .into(),
                        ),
                        Some('"') => break,
                        Some('\\') => match chars.peek().copied() {
                            None => {}
                            Some(c @ ('"' | '$' | '\\')) => {
                                chars.next();
                                if raw_escapes {
                                    word.push('\\');
                                }
                                word.push(c);
                            }
                            Some(_) => word.push('\\'),
                        },
                        Some(c) => word.push(c),
                    }
                }
                if raw_quotes {
                    word.push('"');
                }
            }
            '\\' => {
                got_word = true;
                if let Some(c) = chars.next() {
                    if raw_escapes {
                        word.push('\\');
                    }
                    word.push(c);
                }
            }
            c => word.push(c),
        }
    }
    if got_word || !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}

/// BuildKit's `ParseHeredoc` for one word: `Ok(None)` when the word opens no heredoc, an
/// error when it looks like one but its quoting is broken.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, ParseErrorKind> {
    if !word.contains("<<") {
        return Ok(None);
    }
    let Some(opener) = grammar::heredoc_opener(word) else {
        return Ok(None);
    };
    if opener.rest.is_empty() {
        return Ok(None);
    }
    let invalid = |reason: String| ParseErrorKind::InvalidHeredoc {
        word: word.to_string(),
        reason,
    };
    let words = lex_words(&opener.rest, false, false).map_err(invalid)?;
    if words.len() != 1 {
        return Ok(None);
    }
    let raw_words = lex_words(&opener.rest, true, false).map_err(invalid)?;
    let count_quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let expand = raw_words.len() == 1 && count_quotes(&words[0]) == count_quotes(&raw_words[0]);
    Ok(Some(Heredoc {
        name: words[0].clone(),
        content: String::new(),
        expand,
        chomp: opener.chomp,
        file_descriptor: opener.file_descriptor,
    }))
}

/// BuildKit's `heredocsFromLine`: the heredocs an instruction line opens, in order. Quoted
/// `'<<EOF'` opens none; `<< EOF` (a space after the operator) opens `EOF`.
pub fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, ParseErrorKind> {
    let Ok(words) = lex_words(line, true, true) else {
        return Ok(Vec::new());
    };
    let mut heredocs = Vec::new();
    let mut index = 0;
    while index < words.len() {
        let mut word = words[index].clone();
        if let Some(opener) = grammar::heredoc_opener(&word) {
            if opener.rest.is_empty() {
                if let Some(next) = words.get(index + 1).filter(|next| !next.contains('<')) {
                    word.push(' ');
                    word.push_str(next);
                    index += 1;
                }
            }
        }
        if let Some(heredoc) = parse_heredoc(&word)? {
            heredocs.push(heredoc);
        }
        index += 1;
    }
    Ok(heredocs)
}

/// Go's `strconv.Quote`.
pub fn go_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0B}' => out.push_str("\\v"),
            c if is_go_print(c) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII
/// space. Approximated without Unicode tables: controls, non-ASCII spaces, format
/// characters, private-use and non-characters are not printable.
fn is_go_print(c: char) -> bool {
    let code = c as u32;
    if code < 0x80 {
        return (0x20..0x7F).contains(&code);
    }
    if code <= 0xFF {
        return code >= 0xA1 && code != 0xAD;
    }
    if c.is_whitespace() || c.is_control() {
        return false;
    }
    let format = matches!(code,
        0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF
        | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F);
    let private_or_surrogate = matches!(code, 0xD800..=0xF8FF | 0xF0000..=0x10FFFF);
    let nonchar = matches!(code, 0xFDD0..=0xFDEF) || (code & 0xFFFE) == 0xFFFE;
    !(format || private_or_surrogate || nonchar)
}

/// One node in BuildKit's dump format, without the surrounding parentheses.
pub fn dump_node(node: &Node) -> String {
    let mut out = node.keyword.to_lowercase();
    if !node.flags.is_empty() {
        let flags: Vec<String> = node.flags.iter().map(|f| go_quote(f)).collect();
        out.push_str(" [");
        out.push_str(&flags.join(" "));
        out.push(']');
    }
    if let Some(child) = &node.child {
        out.push_str(" (");
        out.push_str(&dump_node(child));
        out.push(')');
    }
    for arg in &node.args {
        out.push(' ');
        out.push_str(&go_quote(arg));
    }
    out.trim_matches(is_space).to_string()
}

/// The whole file in BuildKit's `result` format: one `(node)` line per instruction.
pub fn dump_nodes(nodes: &[Node]) -> String {
    let mut out = String::new();
    for node in nodes {
        out.push('(');
        out.push_str(&dump_node(node));
        out.push_str(")\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(source: &str, expected_dump: &str) {
        let parse = parse_nodes(source, "Dockerfile");
        assert!(parse.errors.is_empty(), "{:?}", parse.errors);
        assert_eq!(dump_nodes(&parse.nodes), expected_dump);
    }

    #[test]
    fn continuation_and_comments() {
        check(
            "FROM a\nRUN echo \\\n# c\n  hi\n",
            "(from \"a\")\n(run \"echo   hi\")\n",
        );
    }

    #[test]
    fn escaped_escape_is_not_a_continuation() {
        check(
            "FROM a\nENV C x\\\\\nENV D y\n",
            "(from \"a\")\n(env \"C\" \"x\\\\\\\\\" \"\")\n(env \"D\" \"y\" \"\")\n",
        );
    }

    #[test]
    fn backtick_escape() {
        check(
            "# escape=`\nFROM a\nRUN a `\n b\n",
            "(from \"a\")\n(run \"a  b\")\n",
        );
    }

    #[test]
    fn flags_and_json() {
        check(
            "FROM a\nCOPY --from=b -- x y\nCMD [\"a\"]\n",
            "(from \"a\")\n(copy [\"--from=b\"] \"x\" \"y\")\n(cmd \"a\")\n",
        );
    }

    #[test]
    fn quoted_flags_with_spaces() {
        check(
            "FROM a\nCOPY --chown=\"a b\" --from='x y' --x=\\  src dst\n",
            "(from \"a\")\n(copy [\"--chown=a b\" \"--from=x y\" \"--x= \"] \"src\" \"dst\")\n",
        );
        check(
            "FROM a\nRUN --a -- --b c\n",
            "(from \"a\")\n(run [\"--a\"] \"--b c\")\n",
        );
    }

    #[test]
    fn onbuild_nests() {
        check(
            "FROM a\nONBUILD RUN echo hi\n",
            "(from \"a\")\n(onbuild (run \"echo hi\"))\n",
        );
    }

    #[test]
    fn unknown_keeps_empty_arg() {
        check("FROM a\nFOO bar baz\n", "(from \"a\")\n(foo \"\")\n");
    }

    #[test]
    fn quote_like_go() {
        assert_eq!(
            go_quote("a\"b\\c\td\u{1}é\u{a0}"),
            "\"a\\\"b\\\\c\\td\\x01é\\u00a0\""
        );
        assert_eq!(go_quote("\u{7f}"), "\"\\x7f\"");
    }

    #[test]
    fn heredoc_bodies_are_read() {
        let parse = parse_nodes("FROM a\nRUN <<EOF\necho hi\nEOF\nRUN x\n", "Dockerfile");
        assert_eq!(parse.nodes.len(), 3);
        assert_eq!(parse.nodes[1].heredocs[0].content, "echo hi\n");
        assert_eq!(parse.nodes[1].span.end_line, 4);
    }

    #[test]
    fn empty_file_is_an_error() {
        let parse = parse_nodes("# only a comment\n", "Dockerfile");
        assert_eq!(parse.errors[0].kind, ParseErrorKind::NoInstructions);
    }
}
