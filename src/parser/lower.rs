//! BuildKit's raw nodes -> the typed [`Dockerfile`] (what BuildKit's `instructions` package
//! does): argument counts, typed flags (`--mount`, `--network`, `--chown`, durations, ...),
//! stages and meta ARGs, ONBUILD trigger rules. Every error is collected with its place.
//!
//! Values stay as written: no variable expansion happens here (that needs the build's ARG
//! and ENV scope, which only the planner has).

use super::ast::*;
use super::error::{ParseError, ParseErrorKind};
use super::grammar;
use super::raw::{parse_heredoc, RawParse};
use std::time::Duration;

#[derive(Clone, Copy, PartialEq)]
enum FlagKind {
    Bool,
    String,
    Strings,
}

const FROM_FLAGS: &[(&str, FlagKind)] = &[("platform", FlagKind::String)];
const RUN_FLAGS: &[(&str, FlagKind)] = &[
    ("mount", FlagKind::Strings),
    ("network", FlagKind::String),
    ("security", FlagKind::String),
];
const COPY_FLAGS: &[(&str, FlagKind)] = &[
    ("from", FlagKind::String),
    ("chown", FlagKind::String),
    ("chmod", FlagKind::String),
    ("link", FlagKind::Bool),
    ("parents", FlagKind::Bool),
    ("exclude", FlagKind::Strings),
];
const ADD_FLAGS: &[(&str, FlagKind)] = &[
    ("chown", FlagKind::String),
    ("chmod", FlagKind::String),
    ("link", FlagKind::Bool),
    ("keep-git-dir", FlagKind::Bool),
    ("checksum", FlagKind::String),
    ("unpack", FlagKind::Bool),
    ("exclude", FlagKind::Strings),
];
const HEALTHCHECK_FLAGS: &[(&str, FlagKind)] = &[
    ("interval", FlagKind::String),
    ("timeout", FlagKind::String),
    ("start-period", FlagKind::String),
    ("start-interval", FlagKind::String),
    ("retries", FlagKind::String),
];

fn flag_spec(instruction: &str) -> &'static [(&'static str, FlagKind)] {
    match instruction {
        "FROM" => FROM_FLAGS,
        "RUN" => RUN_FLAGS,
        "COPY" => COPY_FLAGS,
        "ADD" => ADD_FLAGS,
        "HEALTHCHECK" => HEALTHCHECK_FLAGS,
        _ => &[],
    }
}

/// The flag names (without `--`) an instruction accepts.
pub fn allowed_flags(instruction: &str) -> Vec<&'static str> {
    flag_spec(instruction)
        .iter()
        .map(|(name, _)| *name)
        .collect()
}

/// Flags as parsed by BuildKit's `BFlags`: name -> values (one per use).
struct Flags {
    values: Vec<(&'static str, String)>,
}

impl Flags {
    fn string(&self, name: &str) -> Option<String> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }

    fn strings(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn bool(&self, name: &str) -> Option<bool> {
        self.string(name).map(|v| v == "true")
    }
}

type Failure = (ParseErrorKind, usize);

fn parse_flags(node: &Node, instruction: &'static str) -> Result<Flags, Failure> {
    let spec = flag_spec(instruction);
    let mut flags = Flags { values: Vec::new() };
    for (index, raw) in node.flags.iter().enumerate() {
        let offset = node
            .flag_offsets
            .get(index)
            .copied()
            .unwrap_or(node.keyword_offset);
        let fail = |kind| Err((kind, offset));
        let Some(body) = raw.strip_prefix("--") else {
            return fail(ParseErrorKind::FlagSyntax { flag: raw.clone() });
        };
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let Some((spec_name, kind)) = spec.iter().find(|(n, _)| *n == name).copied() else {
            return fail(ParseErrorKind::UnknownFlag {
                flag: name.to_string(),
                instruction,
            });
        };
        if kind != FlagKind::Strings && flags.values.iter().any(|(n, _)| *n == spec_name) {
            return fail(ParseErrorKind::DuplicateFlag {
                flag: name.to_string(),
            });
        }
        let value = match (kind, value) {
            (FlagKind::Bool, None) => "true".to_string(),
            (FlagKind::Bool, Some("")) | (_, None) => {
                return fail(ParseErrorKind::FlagMissingValue {
                    flag: name.to_string(),
                })
            }
            (FlagKind::Bool, Some(v)) => match v.to_lowercase().as_str() {
                lower @ ("true" | "false") => lower.to_string(),
                _ => {
                    return fail(ParseErrorKind::FlagNotBool {
                        flag: name.to_string(),
                        value: v.to_string(),
                    })
                }
            },
            (_, Some(v)) => v.to_string(),
        };
        flags.values.push((spec_name, value));
    }
    Ok(flags)
}

/// Source offset of argument `index` when the args are verbatim pieces of the line
/// (whitespace-split forms); the keyword's offset otherwise.
fn arg_offset(node: &Node, index: usize) -> usize {
    let mut cursor = node
        .original
        .find(char::is_whitespace)
        .unwrap_or(node.original.len());
    for (i, arg) in node.args.iter().enumerate().take(index + 1) {
        match node.original[cursor..].find(arg.as_str()) {
            Some(found) if !arg.is_empty() => {
                if i == index {
                    return node.source_offset(cursor + found);
                }
                cursor += found + arg.len();
            }
            _ => return node.keyword_offset,
        }
    }
    node.keyword_offset
}

fn flag_offset(node: &Node, name: &str) -> usize {
    let prefix = format!("--{name}");
    node.flags
        .iter()
        .position(|f| f == &prefix || f.starts_with(&format!("{prefix}=")))
        .and_then(|i| node.flag_offsets.get(i).copied())
        .unwrap_or(node.keyword_offset)
}

/// The canonical upper-case keyword for a known instruction.
fn canonical(keyword: &str) -> Option<&'static str> {
    let all = [
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "MAINTAINER",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
    ];
    all.into_iter().find(|k| keyword.eq_ignore_ascii_case(k))
}

fn command_form(node: &Node) -> CommandForm {
    if node.json_form {
        CommandForm::Exec(node.args.clone())
    } else {
        CommandForm::Shell(node.args.join(" "))
    }
}

/// BuildKit's `handleJSONArgs`: JSON args as they are, otherwise one string joining them
/// (nothing for no args).
pub fn handle_json_args(args: &[String], json: bool) -> Vec<String> {
    if args.is_empty() {
        return Vec::new();
    }
    if json {
        return args.to_vec();
    }
    vec![args.join(" ")]
}

/// BuildKit's doc comment: the text after `<name> ` in a comment line directly above.
fn doc_comment(comments: &[String], name: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    let prefix = format!("{name} ");
    comments
        .iter()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or("")
        .to_string()
}

fn parse_duration_flag(
    flags: &Flags,
    name: &str,
    node: &Node,
) -> Result<Option<Duration>, Failure> {
    let Some(value) = flags.string(name) else {
        return Ok(None);
    };
    let offset = flag_offset(node, name);
    let Some(nanos) = grammar::duration_nanos(&value) else {
        return Err((
            ParseErrorKind::InvalidDuration {
                flag: name.to_string(),
                value,
            },
            offset,
        ));
    };
    if nanos == 0 {
        return Ok(Some(Duration::ZERO));
    }
    if nanos < 1_000_000 {
        return Err((
            ParseErrorKind::DurationTooShort {
                flag: name.to_string(),
            },
            offset,
        ));
    }
    Ok(Some(Duration::from_nanos(nanos as u64)))
}

/// Parses one `--mount=` value as BuildKit's `parseMount` does (without expansion).
pub fn parse_mount(raw: &str) -> Result<Mount, String> {
    let fields = grammar::csv_record(raw).ok_or_else(|| "malformed CSV".to_string())?;
    let mut mount = Mount {
        mount_type: MountType::Bind,
        target: None,
        source: None,
        from: None,
        readonly: None,
        id: None,
        sharing: None,
        mode: None,
        uid: None,
        gid: None,
        required: None,
        size: None,
        env: None,
        raw: raw.to_string(),
    };
    let parse_bool = |key: &str, value: &str| match value.to_lowercase().as_str() {
        "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        _ => Err(format!("invalid value for {key}: {value}")),
    };
    for field in fields {
        let (key, value) = match field.split_once('=') {
            Some((key, value)) => (key.to_lowercase(), Some(value.to_string())),
            None => (field.to_lowercase(), None),
        };
        let Some(value) = value else {
            match key.as_str() {
                "readonly" | "ro" => mount.readonly = Some(true),
                "readwrite" | "rw" => mount.readonly = Some(false),
                "required" => mount.required = Some(true),
                _ => return Err(format!("invalid field '{field}' must be a key=value pair")),
            }
            continue;
        };
        match key.as_str() {
            "type" => {
                mount.mount_type = match value.to_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    _ => return Err(format!("unsupported mount type {value:?}")),
                }
            }
            "from" => mount.from = Some(value),
            "source" | "src" => mount.source = Some(value),
            "target" | "dst" | "destination" => mount.target = Some(value),
            "readonly" | "ro" => mount.readonly = Some(parse_bool(&key, &value)?),
            "readwrite" | "rw" => mount.readonly = Some(!parse_bool(&key, &value)?),
            "required" => mount.required = Some(parse_bool(&key, &value)?),
            "id" => mount.id = Some(value),
            "sharing" => {
                mount.sharing = Some(match value.to_lowercase().as_str() {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    _ => return Err(format!("unsupported sharing value {value:?}")),
                })
            }
            "mode" => mount.mode = Some(value),
            "uid" => mount.uid = Some(value),
            "gid" => mount.gid = Some(value),
            "size" => mount.size = Some(value),
            "env" => mount.env = Some(value),
            _ => return Err(format!("unexpected key '{key}' in '{field}'")),
        }
    }
    // No target check: BuildKit accepts `--mount=from=stage` (a bind mount whose target
    // defaults at build time), and real Dockerfiles use it.
    if mount.required.is_some() && !matches!(mount.mount_type, MountType::Secret | MountType::Ssh) {
        return Err("required is only valid for secret and ssh mounts".to_string());
    }
    if mount.sharing.is_some() && mount.mount_type != MountType::Cache {
        return Err("sharing is only valid for cache mounts".to_string());
    }
    Ok(mount)
}

fn is_valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'))
}

/// Splits COPY/ADD args into source paths, heredocs and the destination.
fn sources_and_dest(
    node: &Node,
    instruction: &'static str,
) -> Result<(Vec<String>, Vec<Heredoc>, String), Failure> {
    let at = node.keyword_offset;
    match node.args.len() {
        0 => return Err((ParseErrorKind::AtLeastTwoArguments { instruction }, at)),
        1 => return Err((ParseErrorKind::NoDestination { instruction }, at)),
        _ => {}
    }
    let (sources, dest) = node.args.split_at(node.args.len() - 1);
    let dest = dest[0].clone();
    let mut paths = Vec::new();
    let mut heredocs = Vec::new();
    if node.json_form {
        return Ok((sources.to_vec(), heredocs, dest));
    }
    if matches!(parse_heredoc(&dest), Ok(Some(_))) {
        return Err((
            ParseErrorKind::HeredocDestination { instruction },
            arg_offset(node, node.args.len() - 1),
        ));
    }
    for source in sources {
        match parse_heredoc(source) {
            Ok(Some(opener)) => {
                let body = node.heredocs.iter().find(|h| h.name == opener.name);
                heredocs.push(Heredoc {
                    content: body.map(|h| h.content.clone()).unwrap_or_default(),
                    ..opener
                });
            }
            Ok(None) => paths.push(source.clone()),
            Err(kind) => return Err((kind, at)),
        }
    }
    Ok((paths, heredocs, dest))
}

/// Lowers one node to a typed instruction.
pub fn lower_node(node: &Node) -> Result<Instruction, Failure> {
    let at = node.keyword_offset;
    let Some(instruction) = canonical(&node.keyword) else {
        return Err((
            ParseErrorKind::UnknownInstruction {
                keyword: node.keyword.clone(),
            },
            at,
        ));
    };
    let flags = parse_flags(node, instruction)?;
    let span = node.span;
    let original = node.original.clone();
    let args = &node.args;
    let exactly_one = || -> Result<String, Failure> {
        match args.as_slice() {
            [value] => Ok(value.clone()),
            _ => Err((ParseErrorKind::ExactlyOneArgument { instruction }, at)),
        }
    };
    let at_least_one = || -> Result<(), Failure> {
        if args.is_empty() {
            return Err((ParseErrorKind::AtLeastOneArgument { instruction }, at));
        }
        Ok(())
    };
    let lowered = match instruction {
        "FROM" => {
            let is_alias = args.len() == 3 && args[1].eq_ignore_ascii_case("AS");
            if !(args.len() == 1 || is_alias) {
                return Err((ParseErrorKind::FromArguments, at));
            }
            let name = if is_alias {
                let name = args[2].to_lowercase();
                if !is_valid_stage_name(&name) {
                    return Err((
                        ParseErrorKind::InvalidStageName {
                            name: args[2].clone(),
                        },
                        arg_offset(node, 2),
                    ));
                }
                Some(name)
            } else {
                None
            };
            Instruction::From(FromInstruction {
                base: args[0].clone(),
                name,
                platform: flags.string("platform"),
                span,
                original,
            })
        }
        "RUN" => {
            let mut mounts = Vec::new();
            for raw in flags.strings("mount") {
                let mount = parse_mount(&raw).map_err(|reason| {
                    (
                        ParseErrorKind::InvalidMount {
                            mount: raw.clone(),
                            reason,
                        },
                        flag_offset(node, "mount"),
                    )
                })?;
                mounts.push(mount);
            }
            let network = match flags.string("network") {
                None => None,
                Some(value) => Some(match value.as_str() {
                    "default" => NetworkMode::Default,
                    "none" => NetworkMode::None,
                    "host" => NetworkMode::Host,
                    _ => {
                        return Err((
                            ParseErrorKind::InvalidNetwork { value },
                            flag_offset(node, "network"),
                        ))
                    }
                }),
            };
            let security = match flags.string("security") {
                None => None,
                Some(value) => Some(match value.as_str() {
                    "sandbox" => SecurityMode::Sandbox,
                    "insecure" => SecurityMode::Insecure,
                    _ => {
                        return Err((
                            ParseErrorKind::InvalidSecurity { value },
                            flag_offset(node, "security"),
                        ))
                    }
                }),
            };
            Instruction::Run(RunInstruction {
                command: command_form(node),
                mounts,
                network,
                security,
                heredocs: node.heredocs.clone(),
                span,
                original,
            })
        }
        "CMD" | "ENTRYPOINT" => {
            let command = CommandInstruction {
                command: command_form(node),
                span,
                original,
            };
            if instruction == "CMD" {
                Instruction::Cmd(command)
            } else {
                Instruction::Entrypoint(command)
            }
        }
        "SHELL" => {
            at_least_one()?;
            if !node.json_form {
                return Err((ParseErrorKind::ShellNotJson, at));
            }
            Instruction::Shell(ShellInstruction {
                shell: args.clone(),
                span,
                original,
            })
        }
        "ENV" | "LABEL" => {
            at_least_one()?;
            if args.len() % 3 != 0 {
                return Err((ParseErrorKind::TooManyArguments { instruction }, at));
            }
            let mut pairs = Vec::with_capacity(args.len() / 3);
            for triple in args.chunks(3) {
                if triple[0].trim().is_empty() {
                    return Err((ParseErrorKind::BlankName { instruction }, at));
                }
                pairs.push(KeyValue {
                    key: triple[0].clone(),
                    value: triple[1].clone(),
                    legacy: triple[2].is_empty(),
                });
            }
            let lowered = KeyValueInstruction {
                pairs,
                span,
                original,
            };
            if instruction == "ENV" {
                Instruction::Env(lowered)
            } else {
                Instruction::Label(lowered)
            }
        }
        "MAINTAINER" | "USER" | "WORKDIR" | "STOPSIGNAL" => {
            let lowered = StringInstruction {
                value: exactly_one()?,
                span,
                original,
            };
            match instruction {
                "MAINTAINER" => Instruction::Maintainer(lowered),
                "USER" => Instruction::User(lowered),
                "WORKDIR" => Instruction::Workdir(lowered),
                _ => Instruction::Stopsignal(lowered),
            }
        }
        "EXPOSE" => {
            at_least_one()?;
            Instruction::Expose(ExposeInstruction {
                ports: args.clone(),
                span,
                original,
            })
        }
        "VOLUME" => {
            at_least_one()?;
            if let Some(index) = args.iter().position(|path| path.trim().is_empty()) {
                return Err((ParseErrorKind::EmptyVolume, arg_offset(node, index)));
            }
            Instruction::Volume(VolumeInstruction {
                paths: args.clone(),
                span,
                original,
            })
        }
        "COPY" => {
            let (sources, heredocs, dest) = sources_and_dest(node, "COPY")?;
            Instruction::Copy(CopyInstruction {
                sources,
                dest,
                heredocs,
                from: flags.string("from"),
                chown: flags.string("chown"),
                chmod: flags.string("chmod"),
                link: flags.bool("link").unwrap_or(false),
                parents: flags.bool("parents").unwrap_or(false),
                exclude: flags.strings("exclude"),
                span,
                original,
            })
        }
        "ADD" => {
            let (sources, heredocs, dest) = sources_and_dest(node, "ADD")?;
            Instruction::Add(AddInstruction {
                sources,
                dest,
                heredocs,
                chown: flags.string("chown"),
                chmod: flags.string("chmod"),
                link: flags.bool("link").unwrap_or(false),
                keep_git_dir: flags.bool("keep-git-dir"),
                checksum: flags.string("checksum"),
                unpack: flags.bool("unpack"),
                exclude: flags.strings("exclude"),
                span,
                original,
            })
        }
        "ARG" => {
            at_least_one()?;
            let args = args
                .iter()
                .map(|word| {
                    let (key, value) = match word.split_once('=') {
                        Some((key, value)) => (key.to_string(), Some(value.to_string())),
                        None => (word.clone(), None),
                    };
                    let doc_comment = doc_comment(&node.prev_comment, &key);
                    ArgDef {
                        key,
                        value,
                        doc_comment,
                    }
                })
                .collect();
            Instruction::Arg(ArgInstruction {
                args,
                span,
                original,
            })
        }
        "ONBUILD" => {
            let Some(child) = &node.child else {
                return Err((ParseErrorKind::AtLeastOneArgument { instruction }, at));
            };
            let trigger = child.keyword.to_uppercase();
            match trigger.as_str() {
                "ONBUILD" => return Err((ParseErrorKind::OnbuildChain, child.keyword_offset)),
                "FROM" | "MAINTAINER" => {
                    return Err((
                        ParseErrorKind::OnbuildForbidden { trigger },
                        child.keyword_offset,
                    ))
                }
                _ => {}
            }
            Instruction::Onbuild(Box::new(lower_node(child)?))
        }
        "HEALTHCHECK" => {
            at_least_one()?;
            let kind = args[0].to_uppercase();
            let test = match kind.as_str() {
                "NONE" => {
                    if args.len() != 1 || !node.flags.is_empty() {
                        return Err((ParseErrorKind::HealthcheckNoneArguments, at));
                    }
                    HealthcheckTest::None
                }
                "CMD" => {
                    let command = &args[1..];
                    if command.is_empty() {
                        return Err((ParseErrorKind::HealthcheckMissingCommand, at));
                    }
                    HealthcheckTest::Cmd(if node.json_form {
                        CommandForm::Exec(command.to_vec())
                    } else {
                        CommandForm::Shell(command.join(" "))
                    })
                }
                _ => {
                    return Err((
                        ParseErrorKind::HealthcheckUnknownType {
                            kind: args[0].clone(),
                        },
                        arg_offset(node, 0),
                    ))
                }
            };
            let retries = match flags.string("retries") {
                None => None,
                Some(value) => {
                    let offset = flag_offset(node, "retries");
                    let parsed: i64 = value.parse().map_err(|_| {
                        (
                            ParseErrorKind::InvalidRetries {
                                value: value.clone(),
                            },
                            offset,
                        )
                    })?;
                    if parsed < 0 {
                        return Err((ParseErrorKind::NegativeRetries { value: parsed }, offset));
                    }
                    Some(parsed)
                }
            };
            Instruction::Healthcheck(HealthcheckInstruction {
                test,
                interval: parse_duration_flag(&flags, "interval", node)?,
                timeout: parse_duration_flag(&flags, "timeout", node)?,
                start_period: parse_duration_flag(&flags, "start-period", node)?,
                start_interval: parse_duration_flag(&flags, "start-interval", node)?,
                retries,
                span,
                original,
            })
        }
        other => {
            return Err((
                ParseErrorKind::UnknownInstruction {
                    keyword: other.to_string(),
                },
                at,
            ))
        }
    };
    Ok(lowered)
}

/// Builds the typed tree from a raw parse. Returns the tree (when there were no errors) and
/// every error found.
pub fn lower(raw: RawParse, file: &str, source: &str) -> (Option<Dockerfile>, Vec<ParseError>) {
    let mut errors = Vec::new();
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &raw.nodes {
        let instruction = match lower_node(node) {
            Ok(instruction) => instruction,
            Err((kind, offset)) => {
                errors.push(ParseError::at(kind, file, source, offset, node.span));
                continue;
            }
        };
        match instruction {
            Instruction::From(from) => {
                if let Some(name) = &from.name {
                    if stages.iter().any(|stage| stage.name.as_ref() == Some(name)) {
                        let kind = ParseErrorKind::DuplicateStageName { name: name.clone() };
                        errors.push(ParseError::at(
                            kind,
                            file,
                            source,
                            node.keyword_offset,
                            node.span,
                        ));
                    }
                }
                stages.push(Stage {
                    doc_comment: doc_comment(
                        &node.prev_comment,
                        from.name.as_deref().unwrap_or(""),
                    ),
                    name: from.name,
                    platform: from.platform,
                    base: from.base,
                    span: from.span,
                    instructions: Vec::new(),
                });
            }
            Instruction::Arg(arg) if stages.is_empty() => meta_args.push(arg),
            other => match stages.last_mut() {
                Some(stage) => stage.instructions.push(other),
                None => {
                    let kind = ParseErrorKind::NoStage {
                        instruction: node.keyword.clone(),
                    };
                    errors.push(ParseError::at(
                        kind,
                        file,
                        source,
                        node.keyword_offset,
                        node.span,
                    ));
                }
            },
        }
    }
    if !errors.is_empty() {
        return (None, errors);
    }
    let dockerfile = Dockerfile {
        directives: raw.directives,
        meta_args,
        stages,
        warnings: raw.warnings,
        nodes: raw.nodes,
    };
    (Some(dockerfile), errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::raw::parse_nodes;

    /// Lowers the last instruction of `source` (after `FROM x`) and compares its Debug form
    /// (or the error message) with `expect`.
    fn check(source: &str, expect: &str) {
        let raw = parse_nodes(&format!("FROM x\n{source}"), "Dockerfile");
        let actual = match (raw.errors.first(), raw.nodes.last()) {
            (Some(error), _) => format!("error: {}", error.kind),
            (None, Some(node)) => match lower_node(node) {
                Ok(instruction) => format!("{instruction:?}"),
                Err((kind, _)) => format!("error: {kind}"),
            },
            (None, None) => "no node".to_string(),
        };
        assert!(
            actual.contains(expect),
            "{source:?}:\n  got {actual}\n  want {expect}"
        );
    }

    #[test]
    fn run_flags() {
        check(
            "RUN --mount=type=cache,target=/c,id=x,sharing=private,uid=1 make",
            "mount_type: Cache, target: Some(\"/c\")",
        );
        check(
            "RUN --mount=type=cache,target=/c,sharing=private make",
            "sharing: Some(Private)",
        );
        check(
            "RUN --mount=type=secret,id=tok,required make",
            "required: Some(true)",
        );
        check(
            "RUN --mount=type=bind,src=.,dst=/s,ro make",
            "readonly: Some(true)",
        );
        check(
            "RUN --mount=type=tmpfs,target=/t,size=1m make",
            "size: Some(\"1m\")",
        );
        check("RUN --mount=type=ssh make", "mount_type: Ssh");
        check(
            "RUN --mount=type=nfs,target=/x make",
            "error: invalid --mount \"type=nfs,target=/x\": unsupported mount type \"nfs\"",
        );
        check(
            "RUN --mount=target=/x,colour=red make",
            "unexpected key 'colour'",
        );
        check(
            "RUN --network=host --security=insecure make",
            "network: Some(Host), security: Some(Insecure)",
        );
        check(
            "RUN --network=bridge make",
            "error: unsupported network mode \"bridge\"",
        );
        check(
            "RUN --security=yes make",
            "error: unsupported security mode",
        );
        check(
            "RUN --network make",
            "error: missing a value on flag: --network",
        );
        check(
            "RUN --network=none --network=host make",
            "error: duplicate flag specified: --network",
        );
        check("RUN [\"a\", \"b\"]", "Exec([\"a\", \"b\"])");
        check("RUN echo $HOME", "Shell(\"echo $HOME\")");
    }

    #[test]
    fn copy_and_add_flags() {
        check(
            "COPY --from=build --chown=1:2 --chmod=755 --link --parents --exclude=a --exclude=b x y /d/",
            "sources: [\"x\", \"y\"], dest: \"/d/\", heredocs: [], from: Some(\"build\"), chown: Some(\"1:2\"), chmod: Some(\"755\"), link: true, parents: true, exclude: [\"a\", \"b\"]",
        );
        check("COPY --link=false a b", "link: false");
        check(
            "COPY --link=maybe a b",
            "error: expecting boolean value for flag --link, not: maybe",
        );
        check(
            "ADD --keep-git-dir=true --checksum=sha256:00 https://x/y.git /src",
            "keep_git_dir: Some(true), checksum: Some(\"sha256:00\")",
        );
        check("ADD --from=x a b", "error: unknown flag: --from");
        check("COPY [\"a b\", \"/c\"]", "sources: [\"a b\"], dest: \"/c\"");
    }

    #[test]
    fn healthcheck() {
        check(
            "HEALTHCHECK --interval=1m30s --retries=2 CMD true",
            "interval: Some(90s)",
        );
        check(
            "HEALTHCHECK --retries=-1 CMD true",
            "error: --retries cannot be negative (-1)",
        );
        check(
            "HEALTHCHECK --timeout=soon CMD true",
            "error: invalid duration \"soon\" for --timeout",
        );
        check(
            "HEALTHCHECK NONE extra",
            "error: HEALTHCHECK NONE takes no arguments",
        );
        check(
            "HEALTHCHECK CMD",
            "error: Missing command after HEALTHCHECK CMD",
        );
        check(
            "HEALTHCHECK PING x",
            "error: Unknown type \"PING\" in HEALTHCHECK (try CMD)",
        );
        check("healthcheck cmd [\"a\"]", "Cmd(Exec([\"a\"]))");
    }

    #[test]
    fn key_values_and_args() {
        check(
            "ENV A=1 B=\"two words\"",
            "KeyValue { key: \"B\", value: \"\\\"two words\\\"\", legacy: false }",
        );
        check(
            "ENV A one two",
            "KeyValue { key: \"A\", value: \"one two\", legacy: true }",
        );
        check("LABEL a=1 b", "error: Syntax error - can't find = in \"b\"");
        check("ARG A B=2", "ArgDef { key: \"A\", value: None");
        check("ARG", "error: ARG requires at least one argument");
        check("EXPOSE", "error: EXPOSE requires at least one argument");
        check("SHELL [\"bash\", \"-c\"]", "shell: [\"bash\", \"-c\"]");
        check(
            "STOPSIGNAL",
            "error: STOPSIGNAL requires exactly one argument",
        );
    }

    #[test]
    fn from_and_onbuild() {
        check(
            "FROM --platform=linux/arm64 img AS Build",
            "name: Some(\"build\"), platform: Some(\"linux/arm64\")",
        );
        check(
            "FROM a b",
            "error: FROM requires either one or three arguments",
        );
        check(
            "FROM a AS b c",
            "error: FROM requires either one or three arguments",
        );
        check("FROM --pull a", "error: unknown flag: --pull");
        check(
            "ONBUILD MAINTAINER me",
            "error: MAINTAINER isn't allowed as an ONBUILD trigger",
        );
        check(
            "ONBUILD RUN --network=none make",
            "Onbuild(Run(RunInstruction { command: Shell(\"make\")",
        );
        check("ONBUILD --x RUN a", "error: unknown flag: --x");
        check("ONBUILD RUNN a", "error: unknown instruction: RUNN");
    }

    #[test]
    fn stages_and_meta_args() {
        let raw = parse_nodes(
            "ARG V=1\nFROM a AS one\nRUN x\nFROM one\nARG V\nFROM b AS one\n",
            "Dockerfile",
        );
        let (dockerfile, errors) = lower(raw, "Dockerfile", "");
        assert!(dockerfile.is_none());
        assert_eq!(
            errors[0].kind,
            ParseErrorKind::DuplicateStageName { name: "one".into() }
        );

        let raw = parse_nodes(
            "ARG V=1\nFROM a AS one\nRUN x\nFROM one\nARG V\n",
            "Dockerfile",
        );
        let (dockerfile, errors) = lower(raw, "Dockerfile", "");
        assert!(errors.is_empty());
        let dockerfile = dockerfile.unwrap();
        assert_eq!(dockerfile.meta_args.len(), 1);
        assert_eq!(dockerfile.stages.len(), 2);
        assert_eq!(dockerfile.stages[1].base, "one");
        assert_eq!(dockerfile.stages[0].instructions.len(), 1);
        assert_eq!(dockerfile.stages[1].instructions[0].keyword(), "ARG");
    }
}
