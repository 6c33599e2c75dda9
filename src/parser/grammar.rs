//! The pest grammar (`grammar/dockerfile.pest`) for the context-free pieces of a Dockerfile
//! line: parser directives, heredoc openers, `--mount=` CSV records and Go durations.
//!
//! The line structure around them (continuations, heredoc bodies) is context-dependent and
//! lives in `raw.rs`. This module knows nothing about instructions.

use pest::Parser;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/dockerfile.pest"]
struct LineParser;

/// A `# name = value` directive line: the name (as written) and the value.
pub fn directive(line: &str) -> Option<(String, String)> {
    directive_with(Rule::directive, line)
}

/// A `// name = value` directive line (only `DetectSyntax` accepts these).
pub fn slash_directive(line: &str) -> Option<(String, String)> {
    directive_with(Rule::slash_directive, line)
}

fn directive_with(rule: Rule, line: &str) -> Option<(String, String)> {
    let mut pairs = LineParser::parse(rule, line).ok()?;
    let directive = pairs.next()?;
    let mut name = String::new();
    let mut value = String::new();
    for pair in directive.into_inner() {
        match pair.as_rule() {
            Rule::directive_name => name = pair.as_str().to_string(),
            Rule::directive_value => value = pair.as_str().to_string(),
            _ => {}
        }
    }
    Some((name, value))
}

/// The parts of a heredoc opener word `[fd]<<[-][space]rest`.
#[derive(Debug, PartialEq, Eq)]
pub struct HeredocOpener {
    pub file_descriptor: u32,
    pub chomp: bool,
    pub rest: String,
}

/// Matches a heredoc opener word; None when the word is not one.
pub fn heredoc_opener(word: &str) -> Option<HeredocOpener> {
    let mut pairs = LineParser::parse(Rule::heredoc_opener, word).ok()?;
    let opener = pairs.next()?;
    let mut result = HeredocOpener {
        file_descriptor: 0,
        chomp: false,
        rest: String::new(),
    };
    for pair in opener.into_inner() {
        match pair.as_rule() {
            // Go's ParseUint error (overflow, empty) yields 0, so does this.
            Rule::heredoc_fd => result.file_descriptor = pair.as_str().parse().unwrap_or(0),
            Rule::heredoc_chomp => result.chomp = true,
            Rule::heredoc_rest => result.rest = pair.as_str().to_string(),
            _ => {}
        }
    }
    Some(result)
}

/// Splits one CSV record as Go's `encoding/csv` does (quoted fields with `""` escapes).
/// None when the record is malformed (a bare `"` or an unterminated quote).
pub fn csv_record(record: &str) -> Option<Vec<String>> {
    if !record.contains('"') {
        // No quoting: a plain split is the same record, without building a parse tree.
        return Some(record.split(',').map(str::to_string).collect());
    }
    let mut pairs = LineParser::parse(Rule::csv_record, record).ok()?;
    let mut fields = Vec::new();
    for pair in pairs.next()?.into_inner() {
        match pair.as_rule() {
            Rule::csv_bare => fields.push(pair.as_str().to_string()),
            Rule::csv_quoted => {
                let inner = pair.into_inner().next().map(|p| p.as_str()).unwrap_or("");
                fields.push(inner.replace("\"\"", "\""));
            }
            _ => {}
        }
    }
    Some(fields)
}

/// Parses a Go `time.ParseDuration` string into signed nanoseconds. None when malformed or
/// out of range.
pub fn duration_nanos(text: &str) -> Option<i128> {
    let mut pairs = LineParser::parse(Rule::duration, text).ok()?;
    let mut negative = false;
    let mut total: i128 = 0;
    for pair in pairs.next()?.into_inner() {
        match pair.as_rule() {
            Rule::duration_zero => return Some(0),
            Rule::duration_sign => negative = pair.as_str() == "-",
            Rule::duration_part => {
                let mut inner = pair.into_inner();
                let number = inner.next()?.as_str();
                let unit: i128 = match inner.next()?.as_str() {
                    "ns" => 1,
                    "us" | "\u{B5}s" | "\u{3BC}s" => 1_000,
                    "ms" => 1_000_000,
                    "s" => 1_000_000_000,
                    "m" => 60_000_000_000,
                    "h" => 3_600_000_000_000,
                    _ => return None,
                };
                let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
                let whole: i128 = if whole.is_empty() {
                    0
                } else {
                    whole.parse().ok()?
                };
                let mut part = whole.checked_mul(unit)?;
                let mut scale = unit;
                for digit in fraction.chars().take(30) {
                    scale /= 10;
                    if scale == 0 {
                        break;
                    }
                    part += i128::from(digit.to_digit(10)?) * scale;
                }
                total = total.checked_add(part)?;
            }
            _ => {}
        }
    }
    if total > i128::from(i64::MAX) {
        return None;
    }
    Some(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directive_lines() {
        assert_eq!(
            directive("# escape = `"),
            Some(("escape".into(), "`".into()))
        );
        assert_eq!(
            directive("#syntax=docker/dockerfile:1  "),
            Some(("syntax".into(), "docker/dockerfile:1".into()))
        );
        assert_eq!(
            directive("# key = FOO bar"),
            Some(("key".into(), "FOO bar".into()))
        );
        assert_eq!(directive("# just a comment"), None);
        assert_eq!(directive("#escape="), None);
    }

    #[test]
    fn heredoc_openers() {
        let opener = heredoc_opener("3<<-EOF").unwrap();
        assert_eq!(
            opener,
            HeredocOpener {
                file_descriptor: 3,
                chomp: true,
                rest: "EOF".into()
            }
        );
        assert_eq!(heredoc_opener("<< EOF").unwrap().rest, "EOF");
        assert!(heredoc_opener("<<<EOF").is_none());
        assert!(heredoc_opener("<EOF").is_none());
        assert_eq!(heredoc_opener("<<").unwrap().rest, "");
    }

    #[test]
    fn csv_records() {
        assert_eq!(
            csv_record("type=cache,target=/x").unwrap(),
            vec!["type=cache", "target=/x"]
        );
        assert_eq!(csv_record("\"a,b\",c").unwrap(), vec!["a,b", "c"]);
        assert_eq!(csv_record("a\"b"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(duration_nanos("5s"), Some(5_000_000_000));
        assert_eq!(duration_nanos("1m30s"), Some(90_000_000_000));
        assert_eq!(duration_nanos("1.5ms"), Some(1_500_000));
        assert_eq!(duration_nanos("50ns"), Some(50));
        assert_eq!(duration_nanos("0"), Some(0));
        assert_eq!(duration_nanos("-2h"), Some(-7_200_000_000_000));
        assert_eq!(duration_nanos("5"), None);
        assert_eq!(duration_nanos("abc"), None);
    }
}
