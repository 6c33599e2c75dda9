//! Conformance of `kiln::parser::shell` with BuildKit's shell lexer, using the tables in
//! `shared/conformance/shell-expansion/` (README section 2): `envVarTest` (single words),
//! `wordsTest` (word splitting), `process_word_with_matches.json` (patterns, replacement,
//! matched/unmatched names) and `process_word_extra.json` (`${VAR?msg}`, a platform template,
//! env lookup).
//!
//! The data is read from `KILN_CONFORMANCE_DIR`, default `<CARGO_MANIFEST_DIR>/../shared/
//! conformance`. Every Unix-applicable case must pass; the Windows-only cases are listed in
//! `WINDOWS_ONLY` with the reason.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln::parser::shell::{Env, ShellLex};
use serde_json::Value;

/// `envVarTest` rows marked `W`: on Windows env names are case-insensitive, so `$pwd` finds
/// `PWD`. kiln builds Linux images only and looks names up case-sensitively; the matching `U`
/// rows (same inputs, expecting the empty expansion) are checked instead.
const WINDOWS_ONLY: [&str; 2] = ["he$pwd.", "안녕$pwd."];

/// The `envVarTest` environment (README 2.1, step 4).
const ENV_VAR_TEST_ENV: [&str; 4] = ["PWD=/home", "SHELL=bash", "KOREAN=한국어", "NULL="];

fn conformance_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"));
    if dir.join("shell-expansion").is_dir() {
        return Some(dir);
    }
    let message = format!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! shell-expansion conformance data NOT FOUND at {}\n\
         !!! set KILN_CONFORMANCE_DIR to the shared/conformance folder; NOTHING WAS CHECKED\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
        dir.join("shell-expansion").display()
    );
    eprintln!("{message}");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("conformance data is required under CI=true: {message}");
    }
    None
}

fn read(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join("shell-expansion").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

fn read_json(dir: &std::path::Path, name: &str) -> Value {
    let text = read(dir, name);
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("parse {name}: {error}"))
}

/// Lines as Go's `bufio.Scanner` yields them: split on `\n`, a trailing `\r` removed.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .enumerate()
        .map(|(index, line)| (index + 1, line))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected a JSON array, got {value}"))
        .iter()
        .map(|item| item.as_str().expect("string").to_string())
        .collect()
}

/// Pass/fail tally for one data file; fails the test below 100%.
struct Tally {
    name: &'static str,
    passed: usize,
    failures: Vec<String>,
    skipped: Vec<String>,
}

impl Tally {
    fn new(name: &'static str) -> Tally {
        Tally {
            name,
            passed: 0,
            failures: Vec::new(),
            skipped: Vec::new(),
        }
    }

    fn record(&mut self, ok: bool, describe: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
        } else {
            self.failures.push(describe());
        }
    }

    fn finish(self) {
        let total = self.passed + self.failures.len();
        println!("{}: {}/{} cases pass", self.name, self.passed, total);
        for skipped in &self.skipped {
            println!("{}: not run (Windows only): {skipped}", self.name);
        }
        assert!(total > 0, "{}: no cases found", self.name);
        assert!(
            self.failures.is_empty(),
            "{}: {} of {} cases failed:\n{}",
            self.name,
            self.failures.len(),
            total,
            self.failures.join("\n")
        );
    }
}

/// Single-word processing of one `envVarTest` row; `expected` `error` means it must fail.
fn check_env_var_case(tally: &mut Tally, line: usize, input: &str, expected: Option<&str>) {
    let lex = ShellLex::new('\\');
    let got = lex.process_word(input, &ENV_VAR_TEST_ENV);
    let ok = match (&got, expected) {
        (Ok(value), Some(want)) => value == want,
        (Err(_), None) => true,
        _ => false,
    };
    tally.record(ok, || {
        format!(
            "line {line}: {input:?}: got {got:?}, want {}",
            expected.map_or("an error".to_string(), |w| format!("{w:?}"))
        )
    });
}

#[test]
fn env_var_test_table() {
    let Some(dir) = conformance_dir() else { return };
    let mut tally = Tally::new("envVarTest");
    let mut windows_seen = Vec::new();
    for (line_number, raw) in lines(&read(&dir, "envVarTest")) {
        if raw.starts_with('#') {
            continue;
        }
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(
            fields.len(),
            3,
            "envVarTest line {line_number}: need 3 fields: {raw:?}"
        );
        let (platform, input, expected) = (fields[0], fields[1], fields[2]);
        match platform {
            "A" | "U" => {}
            "W" => {
                assert!(
                    WINDOWS_ONLY.contains(&input),
                    "envVarTest line {line_number}: unlisted Windows-only case {input:?}"
                );
                windows_seen.push(input.to_string());
                tally
                    .skipped
                    .push(format!("line {line_number}: {input:?} -> {expected:?}"));
                continue;
            }
            other => panic!("envVarTest line {line_number}: unknown platform {other:?}"),
        }
        let expected = (expected != "error").then_some(expected);
        check_env_var_case(&mut tally, line_number, input, expected);
    }
    assert_eq!(windows_seen, WINDOWS_ONLY, "the Windows-only cases changed");
    assert_eq!(
        tally.passed + tally.failures.len(),
        228,
        "envVarTest should have 228 Unix cases"
    );
    tally.finish();
}

#[test]
fn env_var_test_json() {
    let Some(dir) = conformance_dir() else { return };
    let data = read_json(&dir, "envVarTest.json");
    assert_eq!(data["escape"], "\\");
    assert_eq!(strings(&data["env"]), ENV_VAR_TEST_ENV);
    let mut tally = Tally::new("envVarTest.json");
    for case in data["cases"].as_array().expect("cases") {
        let line = case["line"].as_u64().expect("line") as usize;
        let input = case["input"].as_str().expect("input");
        match case["platform"].as_str().expect("platform") {
            "W" => {
                assert!(
                    WINDOWS_ONLY.contains(&input),
                    "unlisted Windows-only case {input:?}"
                );
                tally.skipped.push(format!("line {line}: {input:?}"));
                continue;
            }
            "A" | "U" => {}
            other => panic!("unknown platform {other:?}"),
        }
        let expected = if case["error"] == true {
            None
        } else {
            Some(case["expected"].as_str().expect("expected"))
        };
        check_env_var_case(&mut tally, line, input, expected);
    }
    assert_eq!(tally.skipped.len(), 2);
    tally.finish();
}

fn check_words_case(
    tally: &mut Tally,
    line: usize,
    input: &str,
    env: &[String],
    expected: Option<&[String]>,
) {
    let got = ShellLex::new('\\').process_words(input, env);
    let ok = match (&got, expected) {
        (Ok(words), Some(want)) => words == want,
        (Err(_), None) => true,
        _ => false,
    };
    tally.record(ok, || {
        format!("line {line}: {input:?} with {env:?}: got {got:?}, want {expected:?}")
    });
}

#[test]
fn words_test_table() {
    let Some(dir) = conformance_dir() else { return };
    let mut tally = Tally::new("wordsTest");
    let mut env: Vec<String> = Vec::new();
    for (line_number, line) in lines(&read(&dir, "wordsTest")) {
        if line.starts_with('#') {
            continue;
        }
        if let Some(entry) = line.strip_prefix("ENV ") {
            // Trailing spaces are part of the value (`ENV trailing=ab c   `).
            env.push(entry.trim_start_matches(' ').to_string());
            continue;
        }
        let parts: Vec<&str> = line.split('|').collect();
        assert_eq!(
            parts.len(),
            2,
            "wordsTest line {line_number}: need exactly one '|': {line:?}"
        );
        let input = parts[0].trim();
        let expected: Vec<String> = parts[1]
            .trim_start_matches(' ')
            .split(',')
            .map(str::to_string)
            .collect();
        let expected = (expected != ["error"]).then_some(expected);
        check_words_case(&mut tally, line_number, input, &env, expected.as_deref());
    }
    assert!(
        env.iter().any(|entry| entry == "trailing=ab c   "),
        "wordsTest lost its trailing spaces: {env:?}"
    );
    tally.finish();
}

#[test]
fn words_test_json() {
    let Some(dir) = conformance_dir() else { return };
    let data = read_json(&dir, "wordsTest.json");
    assert_eq!(data["escape"], "\\");
    let mut tally = Tally::new("wordsTest.json");
    for case in data["cases"].as_array().expect("cases") {
        let line = case["line"].as_u64().expect("line") as usize;
        let input = case["input"].as_str().expect("input");
        let env = strings(&case["env"]);
        let expected = if case["error"] == true {
            None
        } else {
            Some(strings(&case["expected_words"]))
        };
        check_words_case(&mut tally, line, input, &env, expected.as_deref());
    }
    tally.finish();
}

#[test]
fn process_word_with_matches() {
    let Some(dir) = conformance_dir() else { return };
    let data = read_json(&dir, "process_word_with_matches.json");
    let mut tally = Tally::new("process_word_with_matches.json");
    let lex = ShellLex::new('\\');
    for (index, case) in data.as_array().expect("cases").iter().enumerate() {
        let input = case["input"].as_str().expect("input");
        let env: BTreeMap<String, String> = case["env"]
            .as_object()
            .expect("env object")
            .iter()
            .map(|(key, value)| {
                (
                    key.clone(),
                    value.as_str().expect("string value").to_string(),
                )
            })
            .collect();
        let got = lex.process_word_with_matches(input, &env);
        let ok = if case["error"] == true {
            got.is_err()
        } else {
            match &got {
                Ok(expansion) => {
                    expansion.value == case["expected"].as_str().expect("expected")
                        && expansion.matched.iter().cloned().collect::<Vec<_>>()
                            == strings(&case["matched"])
                        && expansion.unmatched.iter().cloned().collect::<Vec<_>>()
                            == strings(&case["unmatched"])
                }
                Err(_) => false,
            }
        };
        tally.record(ok, || {
            format!(
                "case {index}: {input:?} with {env:?}: got {got:?}, want error={} value={} matched={} unmatched={}",
                case["error"], case["expected"], case["matched"], case["unmatched"]
            )
        });
    }
    assert_eq!(tally.passed + tally.failures.len(), 47, "47 cases expected");
    tally.finish();
}

#[test]
fn process_word_extra() {
    let Some(dir) = conformance_dir() else { return };
    let data = read_json(&dir, "process_word_extra.json");
    assert_eq!(data["escape"], "\\");
    let lex = ShellLex::new('\\');

    let mut mandatory = Tally::new("process_word_extra.json mandatory");
    for (index, case) in data["mandatory"]["cases"]
        .as_array()
        .expect("mandatory")
        .iter()
        .enumerate()
    {
        let input = case["input"].as_str().expect("input");
        let env = strings(&case["env"]);
        let got = lex.process_word(input, &env);
        let ok = match (
            &got,
            case["expected"].as_str(),
            case["error_contains"].as_str(),
        ) {
            (Ok(value), Some(want), None) => value == want,
            (Err(error), None, Some(want)) => error.to_string().contains(want),
            _ => false,
        };
        mandatory.record(ok, || {
            format!("case {index}: {input:?} with {env:?}: got {got:?}, want {case}")
        });
    }
    mandatory.finish();

    let mut platform = Tally::new("process_word_extra.json platform");
    let input = data["platform"]["input"].as_str().expect("input");
    for (index, case) in data["platform"]["cases"]
        .as_array()
        .expect("platform")
        .iter()
        .enumerate()
    {
        let env = strings(&case["env"]);
        let want = case["expected"].as_str().expect("expected");
        let got = lex.process_word(input, &env);
        platform.record(got.as_deref() == Ok(want), || {
            format!("case {index}: with {env:?}: got {got:?}, want {want:?}")
        });
    }
    platform.finish();

    let mut get_env = Tally::new("process_word_extra.json get_env");
    for (index, case) in data["get_env"]["cases"]
        .as_array()
        .expect("get_env")
        .iter()
        .enumerate()
    {
        let env = strings(&case["env"]);
        let key = case["key"].as_str().expect("key");
        let want = case["expected"].as_str().expect("expected");
        let got = env.lookup(key).unwrap_or("");
        // The same lookup seen through the lexer.
        let through_lexer = lex.process_word(&format!("${{{key}}}"), &env);
        get_env.record(got == want && through_lexer.as_deref() == Ok(want), || {
            format!(
                "case {index}: {key:?} in {env:?}: got {got:?} / {through_lexer:?}, want {want:?}"
            )
        });
    }
    get_env.finish();
}
