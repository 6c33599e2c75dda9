//! Conformance of kiln's Dockerfile parser with BuildKit, on the shared corpus
//! (`KILN_CONFORMANCE_DIR`, default `<CARGO_MANIFEST_DIR>/../shared/conformance`):
//! BuildKit's golden files, its negative files, the cases written out of its Go tests, and
//! 51 real-world Dockerfiles with BuildKit-generated expectations.
//!
//! Every case counts; a test prints `passed/total` and fails below 100%. Cases that cannot
//! apply to kiln are listed in `NOT_APPLICABLE` with the reason.

use kiln::parser::{self, lower, raw, CommandForm, Instruction, Node, Span};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Cases of the corpus that test something kiln does not have, with the reason.
const NOT_APPLICABLE: &[(&str, &str)] = &[(
    "transcribed/instructions_misc.json too_many_arguments/blank_names as parse input",
    "these are synthetic ASTs, not Dockerfile text; they are checked by building the node by hand",
)];

fn conformance_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("KILN_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"),
    };
    if dir.join("buildkit-parser").is_dir() {
        return Some(dir);
    }
    let message = format!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !! conformance corpus not found at {}\n\
         !! set KILN_CONFORMANCE_DIR; parser conformance was NOT checked\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
        dir.display()
    );
    eprintln!("{message}");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "conformance corpus missing under CI=true: {}",
            dir.display()
        );
    }
    None
}

/// Tally of one group of cases.
struct Tally {
    name: &'static str,
    total: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(name: &'static str) -> Self {
        Tally {
            name,
            total: 0,
            failures: Vec::new(),
        }
    }

    fn check(&mut self, case: impl Into<String>, result: Result<(), String>) {
        self.total += 1;
        if let Err(reason) = result {
            self.failures.push(format!("{}: {reason}", case.into()));
        }
    }

    fn finish(self) {
        let passed = self.total - self.failures.len();
        println!("{}: {passed}/{} cases pass", self.name, self.total);
        for (case, reason) in NOT_APPLICABLE
            .iter()
            .filter(|(case, _)| case.starts_with(self.name))
        {
            println!("  not applicable: {case} ({reason})");
        }
        assert!(self.total > 0, "{}: no cases found", self.name);
        assert!(
            self.failures.is_empty(),
            "{}: {passed}/{} pass; failures:\n{}",
            self.name,
            self.total,
            self.failures.join("\n")
        );
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    entries
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn nodes_of(source: &str) -> Result<Vec<Node>, String> {
    parser::parse_nodes(source, "Dockerfile")
        .map(|r| r.nodes)
        .map_err(|e| e.to_string())
}

fn heredocs_json(node: &Node) -> Value {
    if node.heredocs.is_empty() {
        return Value::Null;
    }
    Value::Array(
        node.heredocs
            .iter()
            .map(|h| {
                serde_json::json!({
                    "name": h.name, "content": h.content, "expand": h.expand,
                    "chomp": h.chomp, "file_descriptor": h.file_descriptor,
                })
            })
            .collect(),
    )
}

#[test]
fn buildkit_testfiles_dump_byte_equal() {
    let Some(dir) = conformance_dir() else { return };
    let mut tally = Tally::new("buildkit-parser/testfiles");
    for case in sorted_dirs(&dir.join("buildkit-parser/testfiles")) {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let source = read(&case.join("Dockerfile"));
        let expected = read(&case.join("result"));
        tally.check(
            name,
            nodes_of(&source).and_then(|nodes| {
                let dump = parser::dump_buildkit(&nodes);
                if dump == expected {
                    Ok(())
                } else {
                    Err(format!(
                        "dump differs:\n--- expected\n{expected}--- got\n{dump}"
                    ))
                }
            }),
        );
    }
    tally.finish();
}

#[test]
fn buildkit_negative_testfiles_fail() {
    let Some(dir) = conformance_dir() else { return };
    let expected_messages = [
        ("empty_dockerfile", "file with no instructions"),
        ("only_comments", "file with no instructions"),
        ("env_no_value", "ENV must have two arguments"),
        (
            "shykes-nested-json",
            "when using JSON array syntax, arrays must be comprised of strings only",
        ),
    ];
    let mut tally = Tally::new("buildkit-parser/testfiles-negative");
    for case in sorted_dirs(&dir.join("buildkit-parser/testfiles-negative")) {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let source = read(&case.join("Dockerfile"));
        let wanted = expected_messages
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m);
        let result = match (parser::parse(&source, "Dockerfile"), wanted) {
            (Ok(_), _) => Err("parsed without error".to_string()),
            (Err(errors), Some(message)) if !errors.to_string().contains(message) => {
                Err(format!("error {errors} lacks {message:?}"))
            }
            (Err(_), _) => Ok(()),
        };
        tally.check(name, result);
    }
    tally.finish();
}

#[test]
fn buildkit_line_numbers() {
    let Some(dir) = conformance_dir() else { return };
    let mut tally = Tally::new("transcribed/parser_line_numbers.json");
    let spec = read_json(&dir.join("buildkit-parser/transcribed/parser_line_numbers.json"));
    let source = read(&dir.join("buildkit-parser/testfile-line/Dockerfile"));
    let nodes = nodes_of(&source).expect("testfile-line parses");
    tally.check(
        "children",
        if nodes.len() as u64 == spec["children"].as_u64().unwrap() {
            Ok(())
        } else {
            Err(format!("{} children", nodes.len()))
        },
    );
    let lines: Vec<(u64, u64)> = nodes
        .iter()
        .map(|n| (n.start_line() as u64, n.end_line() as u64))
        .collect();
    let expected: Vec<(u64, u64)> = spec["child_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_u64().unwrap()))
        .collect();
    tally.check(
        "child_lines",
        if lines == expected {
            Ok(())
        } else {
            Err(format!("{lines:?}"))
        },
    );
    let whole = (lines.first().map(|l| l.0), lines.last().map(|l| l.1));
    let want = (
        spec["ast_start_line"].as_u64(),
        spec["ast_end_line"].as_u64(),
    );
    tally.check(
        "ast lines",
        if whole == want {
            Ok(())
        } else {
            Err(format!("{whole:?}"))
        },
    );
    tally.finish();
}

#[test]
fn transcribed_heredoc_extract() {
    let Some(dir) = conformance_dir() else { return };
    let mut tally = Tally::new("transcribed/parser_heredoc_extract.json");
    let spec = read_json(&dir.join("buildkit-parser/transcribed/parser_heredoc_extract.json"));
    let nodes = nodes_of(spec["dockerfile"].as_str().unwrap()).expect("heredoc file parses");
    for case in spec["expected"].as_array().unwrap() {
        let index = case["child_index"].as_u64().unwrap() as usize;
        let result = match nodes.get(index) {
            None => Err("missing child".to_string()),
            Some(node) if node.original != case["original"].as_str().unwrap() => {
                Err(format!("original {:?}", node.original))
            }
            Some(node) if heredocs_json(node) != case["heredocs"] => {
                Err(format!("heredocs {}", heredocs_json(node)))
            }
            Some(_) => Ok(()),
        };
        tally.check(format!("child {index}"), result);
    }
    tally.finish();
}

#[test]
fn transcribed_heredoc_helpers() {
    let Some(dir) = conformance_dir() else { return };
    let mut tally = Tally::new("transcribed/parser_heredoc_helpers.json");
    let spec = read_json(&dir.join("buildkit-parser/transcribed/parser_heredoc_helpers.json"));
    let words = &spec["parse_heredoc_word"];
    for word in strings(&words["valid_name_EOF"]) {
        let result = match raw::parse_heredoc(&word) {
            Ok(Some(h)) if h.name == "EOF" => Ok(()),
            other => Err(format!("{other:?}")),
        };
        tally.check(format!("valid {word:?}"), result);
    }
    for word in strings(&words["invalid"]) {
        let result = match raw::parse_heredoc(&word) {
            Err(_) => Ok(()),
            other => Err(format!("{other:?}")),
        };
        tally.check(format!("invalid {word:?}"), result);
    }
    for word in strings(&words["not_heredoc"]) {
        let result = match raw::parse_heredoc(&word) {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        };
        tally.check(format!("not heredoc {word:?}"), result);
    }
    for case in spec["heredocs_from_line"]["cases"].as_array().unwrap() {
        let line = case["line"].as_str().unwrap();
        let expected = strings(&case["names"]);
        let result = match raw::heredocs_from_line(line) {
            Ok(docs) => {
                let names: Vec<String> = docs.into_iter().map(|h| h.name).collect();
                if names == expected {
                    Ok(())
                } else {
                    Err(format!("{names:?}"))
                }
            }
            Err(e) => Err(e.to_string()),
        };
        tally.check(format!("line {line:?}"), result);
    }
    for case in spec["chomp"].as_array().unwrap() {
        let got = parser::chomp_heredoc_content(case["input"].as_str().unwrap());
        let want = case["expected"].as_str().unwrap();
        tally.check(
            "chomp",
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            },
        );
    }
    let nodes = nodes_of(
        spec["json_form_has_no_heredocs"]["dockerfile"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    for index in 1..=3 {
        let result = match nodes.get(index) {
            Some(node) if node.heredocs.is_empty() && node.json_form => Ok(()),
            other => Err(format!("{other:?}")),
        };
        tally.check(format!("json form child {index}"), result);
    }
    tally.finish();
}

#[test]
fn transcribed_directives() {
    let Some(dir) = conformance_dir() else { return };
    let mut tally = Tally::new("transcribed/parser_directives.json");
    let spec = read_json(&dir.join("buildkit-parser/transcribed/parser_directives.json"));
    for case in spec["parse_all"].as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        let expected: Vec<(String, String)> = case["expected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["name"].as_str().unwrap().to_string(),
                    d["value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let result = match raw::parse_directives(input) {
            Ok(found) if found == expected => Ok(()),
            other => Err(format!("{other:?}")),
        };
        tally.check(format!("parse_all {input:?}"), result);
    }
    let directive_cases = spec["detect_syntax"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ("syntax", true, c))
        .chain(
            spec["parse_directive_check"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| ("check", false, c)),
        );
    for (key, extra_forms, case) in directive_cases {
        let mut input = case["input"].as_str().unwrap().to_string();
        if case["input_hex_prefix"].as_str() == Some("efbbbf") {
            input.insert(0, '\u{FEFF}');
        }
        let found = raw::find_directive(key, &input, extra_forms);
        let mut problems = Vec::new();
        if found.is_some() != case["found"].as_bool().unwrap() {
            problems.push(format!("found = {found:?}"));
        }
        if let Some(found) = &found {
            let value_key = if key == "syntax" { "ref" } else { "value" };
            if let Some(want) = case[value_key].as_str() {
                if found.value != want {
                    problems.push(format!("value {:?}", found.value));
                }
            }
            if let Some(want) = case["cmdline"].as_str() {
                if found.cmdline != want {
                    problems.push(format!("cmdline {:?}", found.cmdline));
                }
            }
            if let Some(want) = case["start_line"].as_u64() {
                if found.line as u64 != want {
                    problems.push(format!("line {}", found.line));
                }
            }
        }
        tally.check(
            format!("{key} {input:?}"),
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join(", "))
            },
        );
    }
    tally.finish();
}

#[test]
fn transcribed_json_arrays_words_name_val() {
    let Some(dir) = conformance_dir() else { return };
    let mut tally = Tally::new("transcribed json arrays / parse words / name val");
    let base = dir.join("buildkit-parser/transcribed");
    let spec = read_json(&base.join("parser_json_arrays.json"));
    for input in strings(&spec["invalid_not_all_strings"]) {
        let result = match raw::parse_json_array(&input) {
            raw::JsonArgs::NotStrings => Ok(()),
            _ => Err("not rejected".to_string()),
        };
        tally.check(format!("json {input:?}"), result);
        let dockerfile = format!("FROM a\nCMD {input}\n");
        let result = if parser::parse(&dockerfile, "Dockerfile").is_err() {
            Ok(())
        } else {
            Err("CMD accepted".into())
        };
        tally.check(format!("CMD {input:?}"), result);
    }
    for case in spec["valid"].as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        let result = match raw::parse_json_array(input) {
            raw::JsonArgs::Strings(got) if got == strings(&case["expected"]) => Ok(()),
            raw::JsonArgs::Strings(got) => Err(format!("{got:?}")),
            _ => Err("not parsed".to_string()),
        };
        tally.check(format!("json {input:?}"), result);
    }
    let spec = read_json(&base.join("parser_parse_words.json"));
    for case in spec["cases"].as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        let got = raw::parse_words(input, '\\');
        let want = strings(&case["expected"]);
        tally.check(
            format!("words {input:?}"),
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            },
        );
    }
    let spec = read_json(&base.join("parser_name_val.json"));
    for case in spec["cases"].as_array().unwrap() {
        let instruction = case["instruction"].as_str().unwrap();
        let rest = case["rest"].as_str().unwrap();
        let got = raw::parse_name_val(rest, instruction, '\\');
        let result = match (&got, case["error"].as_str()) {
            (Err(e), Some(want)) if e.to_string() == want => Ok(()),
            (Ok(nodes), None) if *nodes == strings(&case["nodes"]) => Ok(()),
            _ => Err(format!("{got:?}")),
        };
        tally.check(format!("{instruction} {rest:?}"), result);
    }
    tally.finish();
}

#[test]
fn transcribed_warnings_and_scanner_error() {
    let Some(dir) = conformance_dir() else { return };
    let mut tally = Tally::new("transcribed warnings / scanner error");
    let base = dir.join("buildkit-parser/transcribed");
    let spec = read_json(&base.join("parser_warnings.json"));
    let parse =
        parser::parse_nodes(spec["dockerfile"].as_str().unwrap(), "Dockerfile").expect("parses");
    let count = spec["warning_count"].as_u64().unwrap() as usize;
    tally.check(
        "warning count",
        if parse.warnings.len() == count {
            Ok(())
        } else {
            Err(format!("{:?}", parse.warnings))
        },
    );
    for (index, needles) in spec["warnings_contain"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let result = match parse.warnings.get(index) {
            Some(warning) => match strings(needles)
                .into_iter()
                .find(|n| !warning.message.contains(n.as_str()))
            {
                None => Ok(()),
                Some(missing) => Err(format!("{:?} lacks {missing:?}", warning.message)),
            },
            None => Err("missing warning".into()),
        };
        tally.check(format!("warning {index}"), result);
    }
    let detail = spec["warning_detail_contains"].as_str().unwrap();
    tally.check(
        "warning detail",
        if parse.warnings.iter().all(|w| w.detail.contains(detail)) {
            Ok(())
        } else {
            Err("detail".into())
        },
    );

    let spec = read_json(&base.join("parser_scanner_error.json"));
    let source = spec["dockerfile_template"]
        .as_str()
        .unwrap()
        .replace("{A}", &"a".repeat(65536));
    let result = match parser::parse(&source, "Dockerfile") {
        Err(errors)
            if errors.errors[0].kind.to_string() == spec["error_equals"].as_str().unwrap() =>
        {
            Ok(())
        }
        other => Err(format!("{:?}", other.map(|_| ()))),
    };
    tally.check("line too long", result);
    tally.finish();
}

fn lower_first(source: &str) -> Result<Instruction, String> {
    let nodes = nodes_of(source)?;
    lower::lower_node(&nodes[0]).map_err(|(kind, _)| kind.to_string())
}

#[test]
fn transcribed_instructions_heredoc_and_errors() {
    let Some(dir) = conformance_dir() else { return };
    let mut tally = Tally::new("transcribed/instructions_heredoc_and_errors.json");
    let spec =
        read_json(&dir.join("buildkit-parser/transcribed/instructions_heredoc_and_errors.json"));
    for case in spec["error_cases"].as_array().unwrap() {
        let want = case["error_contains"].as_str().unwrap();
        let result = match parser::parse(case["dockerfile"].as_str().unwrap(), "Dockerfile") {
            Err(errors)
                if errors
                    .errors
                    .iter()
                    .any(|e| e.kind.to_string().contains(want)) =>
            {
                Ok(())
            }
            Err(errors) => Err(format!("errors lack {want:?}: {errors}")),
            Ok(_) => Err("no error".into()),
        };
        tally.check(case["name"].as_str().unwrap().to_string(), result);
    }
    for case in spec["copy_heredoc"].as_array().unwrap() {
        let dockerfile = case["dockerfile"].as_str().unwrap();
        let result = match lower_first(dockerfile) {
            Ok(Instruction::Copy(copy)) => {
                let contents: Vec<Value> = copy
                    .heredocs
                    .iter()
                    .map(|h| serde_json::json!({"path": h.name, "data": h.chomped_content(), "expand": h.expand}))
                    .collect();
                if copy.dest != case["dest_path"].as_str().unwrap() {
                    Err(format!("dest {:?}", copy.dest))
                } else if copy.sources != strings(&case["source_paths"]) {
                    Err(format!("sources {:?}", copy.sources))
                } else if Value::Array(contents.clone()) != case["source_contents"] {
                    Err(format!("contents {contents:?}"))
                } else {
                    Ok(())
                }
            }
            other => Err(format!("{other:?}")),
        };
        tally.check(format!("copy {dockerfile:?}"), result);
    }
    for case in spec["run_heredoc"].as_array().unwrap() {
        let dockerfile = case["dockerfile"].as_str().unwrap();
        let result = match lower_first(dockerfile) {
            Ok(Instruction::Run(run)) => {
                let (prepend_shell, cmd_line) = match &run.command {
                    CommandForm::Shell(line) => (true, vec![line.clone()]),
                    CommandForm::Exec(args) => (false, args.clone()),
                };
                let files: Vec<Value> = run
                    .heredocs
                    .iter()
                    .map(|h| serde_json::json!({"name": h.name, "data": h.content, "chomp": h.chomp}))
                    .collect();
                if prepend_shell != case["prepend_shell"].as_bool().unwrap() {
                    Err("prepend_shell".into())
                } else if cmd_line != strings(&case["cmd_line"]) {
                    Err(format!("cmd_line {cmd_line:?}"))
                } else if Value::Array(files.clone()) != case["files"] {
                    Err(format!("files {files:?}"))
                } else {
                    Ok(())
                }
            }
            other => Err(format!("{other:?}")),
        };
        tally.check(format!("run {dockerfile:?}"), result);
    }
    tally.finish();
}

fn synthetic_node(keyword: &str, args: &[&str], original: &str) -> Node {
    Node {
        keyword: keyword.to_string(),
        flags: Vec::new(),
        args: args.iter().map(|a| a.to_string()).collect(),
        child: None,
        json_form: false,
        original: original.to_string(),
        heredocs: Vec::new(),
        prev_comment: Vec::new(),
        span: Span::default(),
        keyword_offset: 0,
        flag_offsets: Vec::new(),
        original_segments: Vec::new(),
    }
}

#[test]
fn transcribed_instructions_misc() {
    let Some(dir) = conformance_dir() else { return };
    let mut tally = Tally::new("transcribed/instructions_misc.json");
    let spec = read_json(&dir.join("buildkit-parser/transcribed/instructions_misc.json"));
    for group in [
        "exactly_one_argument",
        "at_least_one_argument",
        "no_destination",
    ] {
        let template = spec[group]["error_template"].as_str().unwrap();
        for dockerfile in strings(&spec[group]["dockerfiles"]) {
            let command = dockerfile.split(' ').next().unwrap();
            let want = template.replace("{CMD}", command);
            let result = match lower_first(&dockerfile) {
                Err(message) if message == want => Ok(()),
                other => Err(format!("{other:?}")),
            };
            tally.check(format!("{group} {dockerfile:?}"), result);
        }
    }
    for group in ["too_many_arguments", "blank_names"] {
        let case = &spec[group];
        let args = strings(&case["ast_args"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for instruction in strings(&case["instructions"]) {
            let original = case["original_template"]
                .as_str()
                .unwrap_or("")
                .replace("{CMD}", &instruction);
            let node = synthetic_node(&instruction, &args, &original);
            let want = case["error_template"]
                .as_str()
                .unwrap()
                .replace("{CMD}", &instruction);
            let result = match lower::lower_node(&node) {
                Err((kind, _)) if kind.to_string() == want => Ok(()),
                other => Err(format!("{other:?}")),
            };
            tally.check(format!("{group} {instruction}"), result);
        }
    }
    let case = &spec["healthcheck_cmd_shell"];
    let ast = strings(&case["ast"]);
    let args: Vec<&str> = ast[1..].iter().map(String::as_str).collect();
    let result = match lower::lower_node(&synthetic_node(&ast[0], &args, "")) {
        Ok(Instruction::Healthcheck(check))
            if check.docker_test() == strings(&case["expected_test"]) =>
        {
            Ok(())
        }
        other => Err(format!("{other:?}")),
    };
    tally.check("healthcheck_cmd_shell", result);
    for case in spec["healthcheck_interval"].as_array().unwrap() {
        let value = case["value"].as_str().unwrap();
        let got = lower_first(&format!("HEALTHCHECK --interval={value} CMD true"));
        let result = match (&got, case["error_contains"].as_str()) {
            (Err(message), Some(want)) if message.contains(want) => Ok(()),
            (Ok(_), None) => Ok(()),
            _ => Err(format!("{got:?}")),
        };
        tally.check(format!("interval {value}"), result);
    }
    for case in spec["handle_json_args"].as_array().unwrap() {
        let args = strings(&case["args"]);
        let got = lower::handle_json_args(&args, case["json"].as_bool().unwrap());
        let want = strings(&case["expected"]);
        tally.check(
            format!("handle_json_args {args:?}"),
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            },
        );
    }
    let case = &spec["run_flags_used"];
    let dockerfile = case["dockerfile"].as_str().unwrap();
    let nodes = nodes_of(dockerfile).unwrap();
    let used: Vec<String> = nodes[0]
        .flags
        .iter()
        .map(|f| {
            f.trim_start_matches("--")
                .split('=')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let mounts_ok =
        matches!(lower::lower_node(&nodes[0]), Ok(Instruction::Run(run)) if run.mounts.len() == 1);
    tally.check(
        "run_flags_used",
        if used == strings(&case["flags_used"]) && mounts_ok {
            Ok(())
        } else {
            Err(format!("{used:?}"))
        },
    );
    let case = &spec["doc_comments"];
    let expected = &case["expected"];
    let result = match parser::parse(case["dockerfile"].as_str().unwrap(), "Dockerfile") {
        Ok(dockerfile) => {
            let mut problems = Vec::new();
            if dockerfile.stages[0].doc_comment != expected["stage0_doc_comment"].as_str().unwrap()
            {
                problems.push(format!("stage doc {:?}", dockerfile.stages[0].doc_comment));
            }
            let meta: Vec<Value> = dockerfile
                .meta_args
                .iter()
                .flat_map(|a| a.args.iter())
                .map(|a| serde_json::json!({"key": a.key, "doc_comment": a.doc_comment}))
                .collect();
            if Value::Array(meta.clone()) != expected["meta_args"] {
                problems.push(format!("meta args {meta:?}"));
            }
            let commands: Vec<Value> = dockerfile.stages[0]
                .instructions
                .iter()
                .map(|i| match i {
                    Instruction::Arg(arg) => {
                        serde_json::json!({"type": "ARG", "args": arg.args.iter()
                        .map(|a| serde_json::json!({"key": a.key, "doc_comment": a.doc_comment}))
                        .collect::<Vec<_>>()})
                    }
                    other => serde_json::json!({"type": other.keyword()}),
                })
                .collect();
            if Value::Array(commands.clone()) != expected["stage0_commands"] {
                problems.push(format!("commands {commands:?}"));
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            }
        }
        Err(errors) => Err(errors.to_string()),
    };
    tally.check("doc_comments", result);
    tally.finish();
}

#[test]
fn real_world_dockerfiles() {
    let Some(dir) = conformance_dir() else { return };
    let mut tally = Tally::new("real-world");
    let base = dir.join("real-world");
    for path in sorted_dirs(&base) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".Dockerfile") else {
            continue;
        };
        let source = read(&path);
        let expected_dump = read(&base.join("expected").join(format!("{stem}.result")));
        let parsed = read_json(&base.join("expected").join(format!("{stem}.parsed.json")));
        let nodes = match nodes_of(&source) {
            Ok(nodes) => nodes,
            Err(e) => {
                tally.check(format!("{name} parse"), Err(e));
                continue;
            }
        };
        let dump = parser::dump_buildkit(&nodes);
        tally.check(
            format!("{name} dump"),
            if dump == expected_dump {
                Ok(())
            } else {
                Err(format!("dump differs:\n{dump}"))
            },
        );
        tally.check(
            format!("{name} typed parse"),
            parser::parse(&source, &name)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
        let raw = parser::parse_nodes(&source, &name).unwrap();
        let escape = parsed["escape_token"].as_str().unwrap();
        tally.check(
            format!("{name} escape/warnings"),
            if raw.directives.escape.to_string() == escape
                && raw.warnings.len() == parsed["warnings"].as_array().unwrap().len()
            {
                Ok(())
            } else {
                Err(format!("{:?} {:?}", raw.directives.escape, raw.warnings))
            },
        );
        let children = parsed["children"].as_array().unwrap();
        if children.len() != nodes.len() {
            tally.check(
                format!("{name} children"),
                Err(format!("{} vs {}", nodes.len(), children.len())),
            );
            continue;
        }
        for (index, (node, child)) in nodes.iter().zip(children).enumerate() {
            let mut problems = Vec::new();
            if node.keyword != child["instruction"].as_str().unwrap() {
                problems.push(format!("instruction {:?}", node.keyword));
            }
            if node.start_line() as u64 != child["start_line"].as_u64().unwrap()
                || node.end_line() as u64 != child["end_line"].as_u64().unwrap()
            {
                problems.push(format!("lines {}-{}", node.start_line(), node.end_line()));
            }
            if node.flags != strings(&child["flags"]) {
                problems.push(format!("flags {:?}", node.flags));
            }
            let args: Vec<String> = match &node.child {
                Some(sub) => vec![format!("<<subcommand: {}>>", raw::dump_node(sub))],
                None => node.args.clone(),
            };
            if args != strings(&child["args"]) {
                problems.push(format!("args {args:?}"));
            }
            if node.json_form != child["json_form"].as_bool().unwrap() {
                problems.push("json_form".into());
            }
            if node.original != child["original"].as_str().unwrap() {
                problems.push(format!("original {:?}", node.original));
            }
            if heredocs_json(node) != child["heredocs"] {
                problems.push(format!("heredocs {}", heredocs_json(node)));
            }
            if raw::dump_node(node) != child["dump"].as_str().unwrap() {
                problems.push("dump".into());
            }
            tally.check(
                format!("{name} child {index}"),
                if problems.is_empty() {
                    Ok(())
                } else {
                    Err(problems.join(", "))
                },
            );
        }
    }
    tally.finish();
}
