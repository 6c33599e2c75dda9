//! Character classes as Go's `unicode` package defines them, which decide where BuildKit ends
//! a variable name (`$名前x`) and what counts as word-splitting whitespace.
//!
//! Rust's `char::is_alphabetic` / `is_numeric` use wider Unicode properties (`Alphabetic`
//! includes combining vowel signs, `is_numeric` includes `No`/`Nl`), so names would end in
//! different places. Go's `IsLetter` is general category `L` and `IsDigit` is `Nd`; for
//! non-ASCII characters those categories are read from `regex`'s Unicode tables. Go's
//! `IsSpace` and Rust's `is_whitespace` are both the `White_Space` property, so no helper is
//! needed for that.

use std::sync::LazyLock;

use regex::Regex;

static LETTER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A\p{L}\z").expect("static regex for Unicode letters"));
static DIGIT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A\p{Nd}\z").expect("static regex for Unicode decimal digits"));

fn in_class(class: &Regex, c: char) -> bool {
    let mut buf = [0u8; 4];
    class.is_match(c.encode_utf8(&mut buf))
}

/// Go's `unicode.IsLetter`: general category L.
pub(crate) fn is_go_letter(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        in_class(&LETTER, c)
    }
}

/// Go's `unicode.IsDigit`: general category Nd.
pub(crate) fn is_go_digit(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        in_class(&DIGIT, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_and_digits_follow_go() {
        for c in ['a', 'Z', '안', 'é', 'ß', 'ж'] {
            assert!(is_go_letter(c), "{c:?} is a letter");
        }
        // Alphabetic in Rust but not category L: Roman numeral (Nl), Devanagari vowel sign (Mc).
        for c in ['_', '1', '-', 'Ⅻ', '\u{093F}', ' '] {
            assert!(!is_go_letter(c), "{c:?} is not a letter");
        }
        for c in ['0', '9', '٣', '३'] {
            assert!(is_go_digit(c), "{c:?} is a digit");
        }
        for c in ['a', '½', '²', 'Ⅻ'] {
            assert!(!is_go_digit(c), "{c:?} is not a digit");
        }
    }
}
