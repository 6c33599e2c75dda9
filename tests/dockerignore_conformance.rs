//! `.dockerignore` conformance against moby/patternmatcher's own tables (conformance README,
//! section 3): every row of `patternmatcher_cases.json`, `patternmatcher_single.tsv`,
//! `ignorefile_readall.json` and `generated_cases.json` must pass.
//!
//! The data is read from `KILN_CONFORMANCE_DIR` (default `<manifest>/../shared/conformance`).
//! When it is absent the test prints a loud warning and passes, except under `CI=true`, where
//! that is a failure.
//!
//! Matching rows run through `matches_or_parent_matches`, the equivalent of patternmatcher's
//! `MatchesOrParentMatches(path, patterns)` (build the list, then match). That includes
//! `filepath_match_tests`, which upstream runs through the deprecated `Matches()`: for these
//! single-pattern rows both functions agree. The `compile` section is reference only (it
//! pins upstream's internal regex strings, a hint at the fast-path design, not behaviour),
//! so it is not checked here. One documented difference: `[Local-Only]/` is refused when the
//! list is built, where upstream's `New()` accepts it and every match call fails; the row is
//! checked for the same error text.

use std::path::{Path, PathBuf};

use kiln::context::ignore::{matches_or_parent_matches, read_all, Matcher};
use kiln::context::IgnoreFile;
use serde_json::Value;

fn conformance_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("KILN_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"),
    };
    if dir.join("dockerignore").is_dir() {
        return Some(dir.join("dockerignore"));
    }
    let message = format!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! conformance data not found at {}/dockerignore\n\
         !!! set KILN_CONFORMANCE_DIR; the .dockerignore conformance suite did NOT run\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
        dir.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    eprintln!("{message}");
    None
}

fn load_json(dir: &Path, name: &str) -> Value {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect()
}

/// Pass/fail bookkeeping for one section; failures are collected, then reported together.
struct Tally {
    section: String,
    n_passed: usize,
    n_skipped: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(section: &str) -> Tally {
        Tally {
            section: section.to_string(),
            n_passed: 0,
            n_skipped: 0,
            failures: Vec::new(),
        }
    }

    fn check(&mut self, ok: bool, describe: impl FnOnce() -> String) {
        if ok {
            self.n_passed += 1;
        } else {
            self.failures.push(describe());
        }
    }

    fn finish(self, all_failures: &mut Vec<String>) {
        let total = self.n_passed + self.failures.len();
        println!(
            "{:<45} {:>3}/{:<3} passed{}",
            self.section,
            self.n_passed,
            total,
            if self.n_skipped > 0 {
                format!(" ({} windows-only rows not applicable)", self.n_skipped)
            } else {
                String::new()
            }
        );
        assert!(total > 0, "{}: no cases found", self.section);
        all_failures.extend(
            self.failures
                .into_iter()
                .map(|f| format!("{}: {f}", self.section)),
        );
    }
}

/// One `MatchesOrParentMatches` row: expected match, or an error containing `error`.
fn check_match(tally: &mut Tally, patterns: &[String], path: &str, want: &Value) {
    let expected_error = want.get("error").and_then(Value::as_str);
    let got = matches_or_parent_matches(path, patterns);
    match (expected_error, got) {
        (Some(error), Err(got)) => tally.check(got.to_string().contains(error), || {
            format!("{patterns:?} {path:?}: error {got:?}, want {error:?}")
        }),
        (Some(error), Ok(got)) => tally.check(false, || {
            format!("{patterns:?} {path:?}: matched={got}, want error {error:?}")
        }),
        (None, Err(got)) => tally.check(false, || {
            format!("{patterns:?} {path:?}: unexpected error {got}")
        }),
        (None, Ok(got)) => {
            let expect = want["match"].as_bool().expect("match is a bool");
            tally.check(got == expect, || {
                format!("{patterns:?} {path:?}: matched={got}, want {expect}")
            })
        }
    }
}

#[test]
fn dockerignore_conformance() {
    let Some(dir) = conformance_dir() else {
        return;
    };
    let mut failures = Vec::new();
    let cases = load_json(&dir, "patternmatcher_cases.json");

    let mut tally = Tally::new("patternmatcher_cases.json single_pattern");
    for row in cases["single_pattern"].as_array().expect("single_pattern") {
        if row["os"] == "windows" {
            tally.n_skipped += 1;
            continue;
        }
        let pattern = row["pattern"].as_str().unwrap().to_string();
        check_match(&mut tally, &[pattern], row["path"].as_str().unwrap(), row);
    }
    tally.finish(&mut failures);

    let mut tally = Tally::new("patternmatcher_cases.json multi_pattern");
    for row in cases["multi_pattern"].as_array().expect("multi_pattern") {
        check_match(
            &mut tally,
            &strings(&row["patterns"]),
            row["path"].as_str().unwrap(),
            row,
        );
    }
    tally.finish(&mut failures);

    let mut tally = Tally::new("patternmatcher_cases.json filepath_match_tests");
    for row in cases["filepath_match_tests"]
        .as_array()
        .expect("filepath_match_tests")
    {
        if row["os"] == "windows" {
            tally.n_skipped += 1;
            continue;
        }
        let pattern = row["pattern"].as_str().unwrap().to_string();
        check_match(&mut tally, &[pattern], row["path"].as_str().unwrap(), row);
    }
    tally.finish(&mut failures);

    let mut tally = Tally::new("patternmatcher_cases.json small_cases");
    for row in cases["small_cases"].as_array().expect("small_cases") {
        check_match(
            &mut tally,
            &strings(&row["patterns"]),
            row["path"].as_str().unwrap(),
            row,
        );
    }
    tally.finish(&mut failures);

    let mut tally = Tally::new("patternmatcher_cases.json pattern_list_cleaning");
    for row in cases["pattern_list_cleaning"]
        .as_array()
        .expect("pattern_list_cleaning")
    {
        let patterns = strings(&row["patterns"]);
        let built = Matcher::new(&patterns);
        if let Some(error) = row.get("error").and_then(Value::as_str) {
            tally.check(
                built
                    .as_ref()
                    .is_err_and(|got| got.to_string().contains(error)),
                || format!("{patterns:?}: got {built:?}, want error {error:?}"),
            );
            continue;
        }
        let Ok(matcher) = built else {
            tally.check(false, || {
                format!("{patterns:?}: unexpected error {built:?}")
            });
            continue;
        };
        if let Some(count) = row.get("cleaned_count").and_then(Value::as_u64) {
            tally.check(matcher.len() as u64 == count, || {
                format!("{patterns:?}: {} patterns, want {count}", matcher.len())
            });
        }
        if let Some(exclusions) = row.get("has_exclusions").and_then(Value::as_bool) {
            tally.check(matcher.has_exclusions() == exclusions, || {
                format!("{patterns:?}: has_exclusions={}", matcher.has_exclusions())
            });
        }
    }
    tally.finish(&mut failures);

    // The TSV holds the single_pattern rows again, as text.
    let mut tally = Tally::new("patternmatcher_single.tsv");
    let tsv_path = dir.join("patternmatcher_single.tsv");
    let tsv = std::fs::read_to_string(&tsv_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", tsv_path.display()));
    let mut lines = tsv.lines();
    assert_eq!(lines.next(), Some("pattern\tpath\tmatch\tos"), "TSV header");
    for line in lines.filter(|line| !line.is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 4, "TSV row {line:?}");
        if fields[3] == "windows" {
            tally.n_skipped += 1;
            continue;
        }
        let want = serde_json::json!({ "match": fields[2] == "true" });
        check_match(&mut tally, &[fields[0].to_string()], fields[1], &want);
    }
    tally.finish(&mut failures);

    let mut tally = Tally::new("ignorefile_readall.json");
    let readall = load_json(&dir, "ignorefile_readall.json");
    for row in readall["cases"].as_array().expect("cases") {
        let expected = strings(&row["expected"]);
        let got = match row["input"].as_str() {
            Some(input) => {
                read_all(input.as_bytes(), Path::new(".dockerignore")).map_err(|e| e.to_string())
            }
            // A nil reader: a context without any ignore file.
            None => {
                let context = tempfile::tempdir().unwrap();
                IgnoreFile::for_context(context.path())
                    .map(|file| file.patterns)
                    .map_err(|e| e.to_string())
            }
        };
        tally.check(got.as_ref() == Ok(&expected), || {
            format!("input {:?}: got {got:?}, want {expected:?}", row["input"])
        });
    }
    tally.finish(&mut failures);

    let mut tally = Tally::new("generated_cases.json");
    let generated = load_json(&dir, "generated_cases.json");
    for row in generated["cases"].as_array().expect("cases") {
        check_match(
            &mut tally,
            &strings(&row["patterns"]),
            row["path"].as_str().unwrap(),
            row,
        );
    }
    tally.finish(&mut failures);

    assert!(
        failures.is_empty(),
        "{} conformance failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
