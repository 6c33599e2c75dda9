//! README.md's CLI reference is the binary's own `--help`, command by command, and every
//! command `kiln --help` lists has its section. When this fails after a flag changed, run
//! `scripts/update-readme-cli.sh` and review the diff.

mod common;

use std::path::Path;
use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

fn help(args: &[&str]) -> String {
    let output = Command::new(common::kiln_bin())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success(), "kiln {args:?} --help failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_string()
}

/// The ```text block that follows `heading` (a whole line of the README).
fn block_after(readme: &str, heading: &str) -> Option<String> {
    let start = readme.find(&format!("\n{heading}\n"))? + heading.len() + 2;
    let rest = readme[start..].trim_start_matches('\n');
    let body = rest.strip_prefix("```text\n")?;
    let end = body.find("\n```")?;
    Some(body[..end].to_string())
}

/// The subcommands `kiln --help` lists (without `help`).
fn commands(top_help: &str) -> Vec<String> {
    top_help
        .split("Commands:\n")
        .nth(1)
        .expect("kiln --help lists commands")
        .lines()
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_cli_reference_is_the_binarys_help() {
    let readme = readme();
    let top = help(&[]);
    assert_eq!(
        block_after(&readme, "## CLI reference").as_deref(),
        Some(top.as_str()),
        "README's top-level reference differs from `kiln --help`; run scripts/update-readme-cli.sh"
    );
    let commands = commands(&top);
    assert!(commands.len() >= 17, "{commands:?}");
    let mut stale = Vec::new();
    for command in &commands {
        let heading = format!("### kiln {command}");
        match block_after(&readme, &heading) {
            None => stale.push(format!("{heading}: missing")),
            Some(block) if block != help(&[command]) => stale.push(format!("{heading}: differs")),
            Some(_) => {}
        }
    }
    assert!(
        stale.is_empty(),
        "README CLI reference out of date (run scripts/update-readme-cli.sh): {stale:?}"
    );
}
