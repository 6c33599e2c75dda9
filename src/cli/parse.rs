//! `kiln parse`: reads a Dockerfile (file or stdin), parses it and prints the syntax tree as
//! JSON (for scripts), as an indented tree (for people) or in BuildKit's `result` dump format
//! (byte-exact with BuildKit's golden files). Owns only output; parsing is `crate::parser`.

use super::GlobalOpts;
use crate::parser::{self, CommandForm, Dockerfile, HealthcheckTest, Instruction, Span};
use anyhow::Context;
use std::io::{Read, Write};
use std::path::PathBuf;

/// Output format of `kiln parse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ParseFormat {
    /// The typed syntax tree as JSON (directives, meta ARGs, stages, instructions, spans).
    Json,
    /// An indented tree for people.
    Tree,
    /// BuildKit's AST dump, one `(instruction ...)` line per instruction. Like BuildKit's
    /// parser, this level accepts unknown instructions and flags.
    Buildkit,
}

/// Arguments of `kiln parse`.
#[derive(Debug, clap::Args)]
pub struct ParseArgs {
    /// The Dockerfile to read; `-` reads standard input.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        default_value = "Dockerfile"
    )]
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ParseFormat::Tree)]
    pub format: ParseFormat,
}

fn read_source(file: &PathBuf) -> anyhow::Result<(String, String)> {
    let (bytes, name) = if file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("read Dockerfile from stdin")?;
        (bytes, "<stdin>".to_string())
    } else {
        let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
        (bytes, file.display().to_string())
    };
    match String::from_utf8(bytes) {
        Ok(source) => Ok((source, name)),
        Err(err) => anyhow::bail!(
            "{name}: not UTF-8 text (invalid byte at offset {})",
            err.utf8_error().valid_up_to()
        ),
    }
}

pub fn run(args: ParseArgs, _global: &GlobalOpts) -> anyhow::Result<i32> {
    let (source, name) = read_source(&args.file)?;
    let mut stdout = std::io::stdout().lock();
    match args.format {
        ParseFormat::Buildkit => {
            let raw = parser::parse_nodes(&source, &name)?;
            print_warnings(&name, &raw.warnings);
            stdout.write_all(parser::dump_buildkit(&raw.nodes).as_bytes())?;
        }
        ParseFormat::Json => {
            let dockerfile = parser::parse(&source, &name)?;
            print_warnings(&name, &dockerfile.warnings);
            let mut json = serde_json::to_string_pretty(&dockerfile)?;
            json.push('\n');
            stdout.write_all(json.as_bytes())?;
        }
        ParseFormat::Tree => {
            let dockerfile = parser::parse(&source, &name)?;
            print_warnings(&name, &dockerfile.warnings);
            stdout.write_all(render_tree(&dockerfile).as_bytes())?;
        }
    }
    stdout.flush()?;
    Ok(0)
}

fn print_warnings(name: &str, warnings: &[parser::Warning]) {
    for warning in warnings {
        eprintln!(
            "{name}:{}: warning: {} ({})",
            warning.span.end_line, warning.message, warning.detail
        );
    }
}

fn lines(span: &Span) -> String {
    if span.start_line == span.end_line {
        format!("line {}", span.start_line)
    } else {
        format!("lines {}-{}", span.start_line, span.end_line)
    }
}

fn command(form: &CommandForm) -> String {
    match form {
        CommandForm::Shell(line) => format!("shell {line:?}"),
        CommandForm::Exec(args) => format!("exec {args:?}"),
    }
}

fn describe(instruction: &Instruction) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut opt = |name: &str, value: &Option<String>| {
        if let Some(value) = value {
            parts.push(format!("--{name}={value}"));
        }
    };
    match instruction {
        Instruction::From(from) => {
            opt("platform", &from.platform);
            parts.push(from.base.clone());
        }
        Instruction::Run(run) => {
            for mount in &run.mounts {
                parts.push(format!("--mount={}", mount.raw));
            }
            if let Some(network) = run.network {
                parts.push(format!("--network={network:?}").to_lowercase());
            }
            if let Some(security) = run.security {
                parts.push(format!("--security={security:?}").to_lowercase());
            }
            parts.push(command(&run.command));
            for heredoc in &run.heredocs {
                parts.push(format!(
                    "heredoc {} ({} bytes)",
                    heredoc.name,
                    heredoc.content.len()
                ));
            }
        }
        Instruction::Cmd(cmd) | Instruction::Entrypoint(cmd) => parts.push(command(&cmd.command)),
        Instruction::Label(kv) | Instruction::Env(kv) => {
            for pair in &kv.pairs {
                parts.push(format!("{}={}", pair.key, pair.value));
            }
        }
        Instruction::Maintainer(s)
        | Instruction::User(s)
        | Instruction::Workdir(s)
        | Instruction::Stopsignal(s) => parts.push(s.value.clone()),
        Instruction::Expose(expose) => parts.extend(expose.ports.iter().cloned()),
        Instruction::Volume(volume) => parts.extend(volume.paths.iter().cloned()),
        Instruction::Copy(copy) => {
            opt("from", &copy.from);
            opt("chown", &copy.chown);
            opt("chmod", &copy.chmod);
            if copy.link {
                parts.push("--link".into());
            }
            if copy.parents {
                parts.push("--parents".into());
            }
            for exclude in &copy.exclude {
                parts.push(format!("--exclude={exclude}"));
            }
            parts.extend(copy.sources.iter().cloned());
            parts.extend(copy.heredocs.iter().map(|h| format!("<<{}", h.name)));
            parts.push(format!("-> {}", copy.dest));
        }
        Instruction::Add(add) => {
            opt("chown", &add.chown);
            opt("chmod", &add.chmod);
            opt("checksum", &add.checksum);
            if add.link {
                parts.push("--link".into());
            }
            for exclude in &add.exclude {
                parts.push(format!("--exclude={exclude}"));
            }
            parts.extend(add.sources.iter().cloned());
            parts.extend(add.heredocs.iter().map(|h| format!("<<{}", h.name)));
            parts.push(format!("-> {}", add.dest));
        }
        Instruction::Arg(arg) => {
            for def in &arg.args {
                match &def.value {
                    Some(value) => parts.push(format!("{}={}", def.key, value)),
                    None => parts.push(def.key.clone()),
                }
            }
        }
        Instruction::Onbuild(trigger) => {
            parts.push(format!("{} {}", trigger.keyword(), describe(trigger)))
        }
        Instruction::Healthcheck(check) => {
            for (name, value) in [
                ("interval", check.interval),
                ("timeout", check.timeout),
                ("start-period", check.start_period),
                ("start-interval", check.start_interval),
            ] {
                if let Some(value) = value {
                    parts.push(format!("--{name}={value:?}"));
                }
            }
            if let Some(retries) = check.retries {
                parts.push(format!("--retries={retries}"));
            }
            match &check.test {
                HealthcheckTest::None => parts.push("NONE".into()),
                HealthcheckTest::Cmd(form) => parts.push(format!("CMD {}", command(form))),
            }
        }
        Instruction::Shell(shell) => parts.push(format!("{:?}", shell.shell)),
    }
    parts.join(" ")
}

/// The human-readable tree.
pub fn render_tree(dockerfile: &Dockerfile) -> String {
    let mut out = String::new();
    let directives = &dockerfile.directives;
    out.push_str(&format!("escape {:?}", directives.escape));
    if let Some(syntax) = &directives.syntax {
        out.push_str(&format!(", syntax {syntax}"));
    }
    if let Some(check) = &directives.check {
        out.push_str(&format!(", check {check}"));
    }
    out.push('\n');
    for arg in &dockerfile.meta_args {
        out.push_str(&format!(
            "ARG {}  ({})\n",
            describe(&Instruction::Arg(arg.clone())),
            lines(&arg.span)
        ));
    }
    for (index, stage) in dockerfile.stages.iter().enumerate() {
        let name = stage
            .name
            .as_deref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        let platform = stage
            .platform
            .as_deref()
            .map(|p| format!(" --platform={p}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "stage {index}{name}: FROM{platform} {}  ({})\n",
            stage.base,
            lines(&stage.span)
        ));
        for instruction in &stage.instructions {
            out.push_str(&format!(
                "  {} {}  ({})\n",
                instruction.keyword(),
                describe(instruction),
                lines(&instruction.span())
            ));
        }
    }
    out
}
