//! Parse errors: what went wrong (`ParseErrorKind`), where (`Span`, line, column) and how it
//! renders (`file:line:col: message`, the offending line, a caret, what was expected).
//!
//! Knows source text and spans only; nothing about execution.

use super::ast::Span;
use std::fmt;

/// What went wrong. Messages follow BuildKit's wording where BuildKit has one, so that a
/// message search for BuildKit's text finds kiln's too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("dockerfile line greater than max allowed size of 65535")]
    LineTooLong,
    #[error("invalid escape token '{value}' does not match ` or \\")]
    InvalidEscapeToken { value: String },
    #[error("only one {name} parser directive can be used")]
    DuplicateDirective { name: String },
    #[error("file with no instructions")]
    NoInstructions,
    #[error("unterminated heredoc {name:?}")]
    UnterminatedHeredoc { name: String },
    #[error("invalid heredoc {word:?}: {reason}")]
    InvalidHeredoc { word: String, reason: String },
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    JsonNotStrings,
    #[error("{instruction} must have two arguments")]
    MissingValue { instruction: String },
    #[error("Syntax error - can't find = in {word:?}. Must be of the form: name=value")]
    MissingEquals { word: String },
    #[error("unknown instruction: {keyword}")]
    UnknownInstruction { keyword: String },
    #[error("{instruction} requires exactly one argument")]
    ExactlyOneArgument { instruction: &'static str },
    #[error("{instruction} requires at least one argument")]
    AtLeastOneArgument { instruction: &'static str },
    #[error("{instruction} requires at least two arguments")]
    AtLeastTwoArguments { instruction: &'static str },
    #[error("{instruction} requires at least two arguments, but only one was provided. Destination could not be determined")]
    NoDestination { instruction: &'static str },
    #[error("Bad input to {instruction}, too many arguments")]
    TooManyArguments { instruction: &'static str },
    #[error("{instruction} names can not be blank")]
    BlankName { instruction: &'static str },
    #[error("FROM requires either one or three arguments")]
    FromArguments,
    #[error(
        "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
    )]
    InvalidStageName { name: String },
    #[error("duplicate stage name {name:?}")]
    DuplicateStageName { name: String },
    #[error("{instruction} cannot accept a heredoc as a destination")]
    HeredocDestination { instruction: &'static str },
    #[error("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")]
    OnbuildChain,
    #[error("{trigger} isn't allowed as an ONBUILD trigger")]
    OnbuildForbidden { trigger: String },
    #[error("unknown flag: --{flag}")]
    UnknownFlag {
        flag: String,
        instruction: &'static str,
    },
    #[error("flag should start with -- : {flag}")]
    FlagSyntax { flag: String },
    #[error("missing a value on flag: --{flag}")]
    FlagMissingValue { flag: String },
    #[error("expecting boolean value for flag --{flag}, not: {value}")]
    FlagNotBool { flag: String, value: String },
    #[error("duplicate flag specified: --{flag}")]
    DuplicateFlag { flag: String },
    #[error("invalid --mount {mount:?}: {reason}")]
    InvalidMount { mount: String, reason: String },
    #[error("unsupported network mode {value:?}")]
    InvalidNetwork { value: String },
    #[error("unsupported security mode {value:?}")]
    InvalidSecurity { value: String },
    #[error("HEALTHCHECK NONE takes no arguments")]
    HealthcheckNoneArguments,
    #[error("Missing command after HEALTHCHECK CMD")]
    HealthcheckMissingCommand,
    #[error("Unknown type {kind:?} in HEALTHCHECK (try CMD)")]
    HealthcheckUnknownType { kind: String },
    #[error("invalid duration {value:?} for --{flag}")]
    InvalidDuration { flag: String, value: String },
    #[error("--{flag} cannot be less than 1ms")]
    DurationTooShort { flag: String },
    #[error("invalid --retries value {value:?}")]
    InvalidRetries { value: String },
    #[error("--retries cannot be negative ({value})")]
    NegativeRetries { value: i64 },
    #[error("SHELL requires the arguments to be in JSON form")]
    ShellNotJson,
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    #[error("{instruction} has no build stage in current context: a FROM must come first")]
    NoStage { instruction: String },
}

impl ParseErrorKind {
    /// A hint saying what was expected at the error position, when there is a useful one.
    pub fn expected(&self) -> Option<String> {
        match self {
            ParseErrorKind::UnknownInstruction { keyword } => {
                let mut hint = String::from("expected one of ");
                hint.push_str(&super::raw::INSTRUCTIONS.join(", ").to_uppercase());
                if let Some(close) = closest_instruction(keyword) {
                    hint.push_str(&format!(" (did you mean {close}?)"));
                }
                Some(hint)
            }
            ParseErrorKind::UnknownFlag { instruction, .. } => {
                let flags = super::lower::allowed_flags(instruction);
                if flags.is_empty() {
                    Some(format!("{instruction} takes no flags"))
                } else {
                    let list: Vec<String> = flags.iter().map(|f| format!("--{f}")).collect();
                    Some(format!("expected one of {}", list.join(", ")))
                }
            }
            ParseErrorKind::InvalidNetwork { .. } => Some("expected default, none or host".into()),
            ParseErrorKind::InvalidSecurity { .. } => Some("expected sandbox or insecure".into()),
            ParseErrorKind::UnterminatedHeredoc { name } => Some(format!(
                "expected a line holding only {name} to end the heredoc"
            )),
            ParseErrorKind::FromArguments => {
                Some("expected FROM [--platform=P] image [AS name]".into())
            }
            _ => None,
        }
    }
}

/// The known instruction closest to `keyword` by edit distance, if close enough.
fn closest_instruction(keyword: &str) -> Option<String> {
    let keyword = keyword.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for candidate in super::raw::INSTRUCTIONS {
        let distance = edit_distance(&keyword, candidate);
        if distance <= 2 && best.map_or(true, |(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, name)| name.to_uppercase())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            current.push(
                (previous[j] + cost)
                    .min(previous[j + 1] + 1)
                    .min(current[j] + 1),
            );
        }
        previous = current;
    }
    previous[b.len()]
}

/// One error with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {kind}")]
pub struct ParseError {
    pub kind: ParseErrorKind,
    /// The file name as given to `parse`.
    pub file: String,
    /// Where the error points (`start` is the caret position).
    pub span: Span,
    /// 1-based line of the caret.
    pub line: usize,
    /// 1-based column (in characters) of the caret.
    pub column: usize,
    /// The text of the line holding the caret, without its newline.
    pub source_line: String,
}

impl ParseError {
    /// Builds an error pointing at byte `offset` of `source`, covering `span`.
    pub fn at(kind: ParseErrorKind, file: &str, source: &str, offset: usize, span: Span) -> Self {
        let offset = floor_char_boundary(source, offset.min(source.len()));
        let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[offset..]
            .find('\n')
            .map_or(source.len(), |i| offset + i);
        let line = source[..line_start].matches('\n').count() + 1;
        let column = source[line_start..offset].chars().count() + 1;
        let source_line = source[line_start..line_end]
            .trim_end_matches('\r')
            .to_string();
        ParseError {
            kind,
            file: file.to_string(),
            span,
            line,
            column,
            source_line,
        }
    }

    /// The full rendering: `file:line:col: message`, the line, a caret, the expectation.
    pub fn render(&self) -> String {
        let mut out = format!("{self}\n");
        let number = self.line.to_string();
        let pad = " ".repeat(number.len());
        // Long lines (up to 64 KiB) are cut around the caret so the output stays readable.
        let chars: Vec<char> = self.source_line.chars().collect();
        let caret = self.column.saturating_sub(1).min(chars.len());
        let window_start = caret.saturating_sub(60);
        let window_end = (caret + 60).min(chars.len());
        let mut shown: String = chars[window_start..window_end].iter().collect();
        let mut caret_col = caret - window_start;
        if window_start > 0 {
            shown.insert_str(0, "...");
            caret_col += 3;
        }
        if window_end < chars.len() {
            shown.push_str("...");
        }
        let caret_pad: String = shown
            .chars()
            .take(caret_col)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        out.push_str(&format!(" {number} | {shown}\n {pad} | {caret_pad}^\n"));
        if let Some(expected) = self.kind.expected() {
            out.push_str(&format!(" {pad} = {expected}\n"));
        }
        out
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while index > 0 && !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// All errors found in one file, in file order. Displays every error fully rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseErrors {
    pub errors: Vec<ParseError>,
}

impl fmt::Display for ParseErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n_errors = self.errors.len();
        for (index, error) in self.errors.iter().enumerate() {
            let rendered = error.render();
            if index + 1 == n_errors {
                write!(f, "{}", rendered.trim_end())?;
            } else {
                write!(f, "{rendered}")?;
            }
        }
        Ok(())
    }
}

impl ParseErrors {
    /// The first error (there is always at least one).
    pub fn first(&self) -> Option<&ParseError> {
        self.errors.first()
    }
}
