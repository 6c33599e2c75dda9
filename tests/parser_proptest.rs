//! The parser never panics: random Dockerfile-like text and mutated real Dockerfiles (the
//! real-world corpus plus kiln's own fixtures) go through `parse`, `parse_nodes`, the
//! BuildKit dump and error rendering. Spans and error places must stay inside the input.

use kiln::parser::{dump_buildkit, parse, parse_nodes};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn seeds() -> &'static [String] {
    static SEEDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(load_seeds)
}

fn load_seeds() -> Vec<String> {
    let mut seeds = Vec::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/parser");
    for entry in std::fs::read_dir(&fixtures).expect("fixtures/parser") {
        let path = entry.unwrap().path().join("Dockerfile");
        if let Ok(text) = std::fs::read_to_string(&path) {
            seeds.push(text);
        }
    }
    let corpus = match std::env::var_os("KILN_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"),
    };
    let real_world = corpus.join("real-world");
    match std::fs::read_dir(&real_world) {
        Ok(entries) => {
            for entry in entries {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "Dockerfile") {
                    seeds.push(std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        Err(_) => {
            eprintln!(
                "\n!!!! conformance corpus not found at {}: mutating only kiln's fixtures !!!!\n",
                real_world.display()
            );
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "conformance corpus missing under CI=true: {}",
                    real_world.display()
                );
            }
        }
    }
    seeds
}

fn check_no_panic(source: &str) {
    let len = source.len();
    match parse_nodes(source, "Dockerfile") {
        Ok(raw) => {
            let dump = dump_buildkit(&raw.nodes);
            assert_eq!(
                dump.lines().count(),
                raw.nodes.len(),
                "one dump line per node"
            );
            for node in &raw.nodes {
                assert!(
                    node.span.start <= node.span.end && node.span.end <= len,
                    "{:?}",
                    node.span
                );
                assert!(node.span.start_line >= 1 && node.span.start_line <= node.span.end_line);
            }
        }
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
    match parse(source, "Dockerfile") {
        Ok(dockerfile) => {
            let _ = serde_json::to_string(&dockerfile).unwrap();
            for stage in &dockerfile.stages {
                for instruction in &stage.instructions {
                    assert!(instruction.span().end <= len);
                }
            }
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty());
            for error in &errors.errors {
                assert!(error.line >= 1 && error.column >= 1);
                let rendered = error.render();
                assert!(
                    rendered.starts_with(&format!("Dockerfile:{}:{}: ", error.line, error.column))
                );
            }
        }
    }
}

/// Pieces Dockerfiles are made of, so random text reaches deep parser paths.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FROM ".to_string()),
        Just("RUN ".to_string()),
        Just("COPY ".to_string()),
        Just("ADD ".to_string()),
        Just("ONBUILD ".to_string()),
        Just("HEALTHCHECK ".to_string()),
        Just("ENV ".to_string()),
        Just("LABEL ".to_string()),
        Just("ARG ".to_string()),
        Just("SHELL ".to_string()),
        Just("CMD ".to_string()),
        Just("--mount=type=cache,target=/x ".to_string()),
        Just("--network=none ".to_string()),
        Just("--from=".to_string()),
        Just("--interval=".to_string()),
        Just("<<EOF".to_string()),
        Just("<<-'EOF'".to_string()),
        Just("EOF".to_string()),
        Just("\tEOF".to_string()),
        Just("# escape=`\n".to_string()),
        Just("# syntax=x\n".to_string()),
        Just("\\\n".to_string()),
        Just("`\n".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("# c\n".to_string()),
        Just("[\"a\", \"b\"]".to_string()),
        Just("[1]".to_string()),
        Just("[\"".to_string()),
        Just("=".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just(" AS ".to_string()),
        Just("\u{FEFF}".to_string()),
        Just("é".to_string()),
        Just("\u{a0}".to_string()),
        "[ -~]{0,12}",
        any::<String>().prop_map(|s| s.chars().take(8).collect()),
    ]
}

fn floor_boundary(text: &str, mut index: usize) -> usize {
    index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, String),
    DuplicateLine(usize),
    Truncate(usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0usize..64).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), token()).prop_map(|(at, t)| Mutation::Insert(at, t)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let len = text.len().max(1);
    match mutation {
        Mutation::Delete(at, n) => {
            let start = floor_boundary(text, at % len);
            let end = floor_boundary(text, start + n);
            format!("{}{}", &text[..start], &text[end..])
        }
        Mutation::Insert(at, token) => {
            let at = floor_boundary(text, at % len);
            format!("{}{}{}", &text[..at], token, &text[at..])
        }
        Mutation::DuplicateLine(at) | Mutation::Truncate(at) | Mutation::SwapLines(at, _) => {
            let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
            if lines.is_empty() {
                return text.to_string();
            }
            let i = at % lines.len();
            match mutation {
                Mutation::DuplicateLine(_) => lines.insert(i, lines[i]),
                Mutation::Truncate(_) => lines.truncate(i),
                Mutation::SwapLines(_, b) => {
                    let j = b % lines.len();
                    lines.swap(i, j);
                }
                _ => {}
            }
            lines.concat()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(tokens in proptest::collection::vec(token(), 0..40)) {
        check_no_panic(&tokens.concat());
    }

    #[test]
    fn arbitrary_strings_never_panic(source in any::<String>()) {
        check_no_panic(&source);
    }

    #[test]
    fn mutated_real_dockerfiles_never_panic(
        seed in any::<usize>(),
        mutations in proptest::collection::vec(mutation(), 1..8),
    ) {
        let seeds = seeds();
        let mut text = seeds[seed % seeds.len()].clone();
        for mutation in &mutations {
            text = apply(&text, mutation);
        }
        check_no_panic(&text);
    }
}
