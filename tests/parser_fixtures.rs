//! Data-driven parser cases run through the real `kiln parse` binary:
//! `fixtures/parser/<case>/Dockerfile` with `expected.tree` and `expected.buildkit` for good
//! inputs, or `expected.error` (the rendered errors: `file:line:col: message`, the line, a
//! caret) for bad ones. `KILN_REGENERATE=1` rewrites the expectations from the current
//! output (review the diff before committing).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture_dirs() -> Vec<PathBuf> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/parser");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&base)
        .unwrap_or_else(|e| panic!("read {}: {e}", base.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn kiln_parse(dir: &Path, format: &str) -> std::process::Output {
    Command::new(common::kiln_bin())
        .current_dir(dir)
        .args(["parse", "-f", "Dockerfile", "--format", format])
        .output()
        .expect("run kiln parse")
}

fn compare(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("KILN_REGENERATE").is_some() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{}:\n--- expected\n{expected}--- got\n{actual}",
            path.display()
        )),
        Err(e) => failures.push(format!(
            "{}: {e} (run with KILN_REGENERATE=1 to create it)",
            path.display()
        )),
    }
}

#[test]
fn parser_fixtures() {
    let mut failures = Vec::new();
    let dirs = fixture_dirs();
    assert!(
        dirs.len() >= 10,
        "expected the parser fixtures, found {}",
        dirs.len()
    );
    for dir in &dirs {
        let is_error_case = dir.join("expected.error").exists()
            || (std::env::var_os("KILN_REGENERATE").is_some()
                && !kiln_parse(dir, "tree").status.success());
        if is_error_case {
            let output = kiln_parse(dir, "tree");
            if output.status.success() {
                failures.push(format!(
                    "{}: parsed but an error was expected",
                    dir.display()
                ));
                continue;
            }
            let stderr = String::from_utf8_lossy(&output.stderr).to_string();
            if !stderr.starts_with("error: Dockerfile:") {
                failures.push(format!(
                    "{}: error does not start with file:line:col: {stderr}",
                    dir.display()
                ));
            }
            compare(&dir.join("expected.error"), &stderr, &mut failures);
            continue;
        }
        for (format, file) in [("tree", "expected.tree"), ("buildkit", "expected.buildkit")] {
            let output = kiln_parse(dir, format);
            if !output.status.success() {
                failures.push(format!(
                    "{} ({format}): {}",
                    dir.display(),
                    String::from_utf8_lossy(&output.stderr)
                ));
                continue;
            }
            compare(
                &dir.join(file),
                &String::from_utf8_lossy(&output.stdout),
                &mut failures,
            );
        }
        let output = kiln_parse(dir, "json");
        let json: Result<serde_json::Value, _> = serde_json::from_slice(&output.stdout);
        if !output.status.success() || json.is_err() {
            failures.push(format!("{} (json): not valid JSON", dir.display()));
        }
    }
    println!(
        "parser fixtures: {}/{} cases pass",
        dirs.len() - failures.len().min(dirs.len()),
        dirs.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn parse_reads_stdin_and_reports_missing_files() {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(common::kiln_bin())
        .args(["parse", "-f", "-", "--format", "buildkit"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln parse");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from a\nRun echo \\\n  hi\nfoo bar\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "(from \"a\")\n(run \"echo   hi\")\n(foo \"\")\n"
    );

    // The typed formats reject what only the raw BuildKit level accepts, naming the place.
    let mut child = Command::new(common::kiln_bin())
        .args(["parse", "-f", "-", "--format", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kiln parse");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from a\nfoo bar\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: <stdin>:2:1: unknown instruction: foo"),
        "{stderr}"
    );

    let output = Command::new(common::kiln_bin())
        .args(["parse", "-f", "/nonexistent/Dockerfile"])
        .output()
        .expect("run kiln parse");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/Dockerfile"));
}
