//! Dockerfile text -> `Dockerfile { directives, meta_args, stages }` with source spans;
//! shell-word expansion (`shell`). No I/O, no knowledge of execution, images or caching.
//!
//! Layers: `raw` reproduces BuildKit's parser (node list, directives, heredocs, the `result`
//! dump); `lower` turns nodes into typed instructions (BuildKit's `instructions` package);
//! `grammar` holds the pest rules for the context-free pieces of a line; `error` renders
//! `file:line:col: message` with the line and a caret.
pub mod ast;
pub mod error;
pub mod grammar;
pub mod lower;
pub mod raw;
pub mod shell;

pub use ast::*;
pub use error::{ParseError, ParseErrorKind, ParseErrors};

/// Parses a Dockerfile into the typed tree. `file_name` only names the file in errors.
/// Every error in the file is collected and returned together, in file order.
pub fn parse(source: &str, file_name: &str) -> Result<Dockerfile, ParseErrors> {
    let mut raw = raw::parse_nodes(source, file_name);
    let mut errors = std::mem::take(&mut raw.errors);
    let (dockerfile, lower_errors) = lower::lower(raw, file_name, source);
    errors.extend(lower_errors);
    match dockerfile {
        Some(dockerfile) if errors.is_empty() => Ok(dockerfile),
        _ => {
            errors.sort_by_key(|error| (error.line, error.column));
            Err(ParseErrors { errors })
        }
    }
}

/// Parses only as far as BuildKit's `parser.Parse` does: the raw node list (unknown
/// instructions and unknown flags are not errors at this level, exactly as in BuildKit).
pub fn parse_nodes(source: &str, file_name: &str) -> Result<raw::RawParse, ParseErrors> {
    let raw = raw::parse_nodes(source, file_name);
    if raw.errors.is_empty() {
        Ok(raw)
    } else {
        Err(ParseErrors { errors: raw.errors })
    }
}

/// BuildKit's `result` dump of a node list (byte-exact with BuildKit's golden files).
pub fn dump_buildkit(nodes: &[Node]) -> String {
    raw::dump_nodes(nodes)
}
