//! The typed Dockerfile syntax tree the parser produces, plus BuildKit's raw node list.
//!
//! Two levels live here:
//! - [`Node`]: BuildKit's AST, one node per top-level instruction, exactly as BuildKit's
//!   `parser.Parse` builds it (keyword as written, builder flags, args, original line,
//!   heredocs, start/end line, JSON form). The `buildkit` dump and the conformance tests are
//!   defined on it.
//! - [`Dockerfile`]: the typed tree (directives, meta ARGs, stages of [`Instruction`]s with
//!   typed flags). Values are NOT variable-expanded: the planner expands each step with the
//!   ARG/ENV scope in force at that point, so every string here is as written in the file.
//!
//! This module knows nothing about execution, images or caching.

use serde::Serialize;
use std::time::Duration;

/// A region of the source: byte range (`start..end`, UTF-8 offsets into the file) and the
/// 1-based first and last line it covers (continuation and heredoc lines included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub start_line: usize,
    pub end_line: usize,
}

/// Parser directives from the top of the file (`# syntax=`, `# escape=`, `# check=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directives {
    /// The frontend image named by `# syntax=`, as written.
    pub syntax: Option<String>,
    /// The escape token: `\` (default) or `` ` ``.
    pub escape: char,
    /// The `# check=` value, as written (for example `skip=all;error=true`).
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

/// A non-fatal finding, such as an empty line inside a continuation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// BuildKit's short text, e.g. `Empty continuation line found in: RUN a b`.
    pub message: String,
    /// Longer explanation.
    pub detail: String,
    /// Documentation link for the rule.
    pub url: String,
    pub span: Span,
}

/// A whole parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dockerfile {
    pub directives: Directives,
    /// `ARG` instructions before the first `FROM` (usable in `FROM` lines).
    pub meta_args: Vec<ArgInstruction>,
    pub stages: Vec<Stage>,
    pub warnings: Vec<Warning>,
    /// BuildKit's raw node list (one per top-level instruction, FROMs included).
    pub nodes: Vec<Node>,
}

/// One build stage: a `FROM` line and the instructions up to the next `FROM`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// The `AS name`, lowercased as BuildKit does.
    pub name: Option<String>,
    /// `--platform` of the `FROM`, as written.
    pub platform: Option<String>,
    /// The base image (or earlier stage name, or `scratch`), as written, not expanded.
    pub base: String,
    /// The span of the `FROM` line.
    pub span: Span,
    /// Comment text directly above the `FROM` that starts with `<name> `, BuildKit's doc
    /// comment (empty when there is none).
    pub doc_comment: String,
    /// The instructions after the `FROM` (the `FROM` itself is not repeated here).
    pub instructions: Vec<Instruction>,
}

/// One Dockerfile instruction with its typed flags and arguments.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "instruction", content = "value", rename_all = "lowercase")]
pub enum Instruction {
    From(FromInstruction),
    Run(RunInstruction),
    Cmd(CommandInstruction),
    Label(KeyValueInstruction),
    Maintainer(StringInstruction),
    Expose(ExposeInstruction),
    Env(KeyValueInstruction),
    Add(AddInstruction),
    Copy(CopyInstruction),
    Entrypoint(CommandInstruction),
    Volume(VolumeInstruction),
    User(StringInstruction),
    Workdir(StringInstruction),
    Arg(ArgInstruction),
    /// `ONBUILD <trigger>`: the trigger instruction; its `span` and `original` are those of
    /// the trigger text (the part after `ONBUILD`).
    Onbuild(Box<Instruction>),
    Stopsignal(StringInstruction),
    Healthcheck(HealthcheckInstruction),
    Shell(ShellInstruction),
}

/// Shell form (`RUN make all`, the rest of the line as written) or exec form
/// (`RUN ["make", "all"]`, the JSON array's strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandForm {
    Shell(String),
    Exec(Vec<String>),
}

/// A here-document opened on an instruction line (`<<EOF`, `<<-EOF`, `<<'EOF'`, `3<<EOF`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word with quotes removed.
    pub name: String,
    /// The body without the terminator line, as written (tabs kept even for `<<-`).
    pub content: String,
    /// False when any part of the delimiter was quoted: the body is not expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from body lines (by whoever consumes the body).
    pub chomp: bool,
    /// The file descriptor before `<<` (0 when none was given).
    pub file_descriptor: u32,
}

impl Heredoc {
    /// The body with BuildKit's `<<-` treatment applied: leading tabs stripped from every
    /// line when `chomp` is set, otherwise unchanged.
    pub fn chomped_content(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        chomp_heredoc_content(&self.content)
    }
}

/// Strips leading TABs (only tabs) from every line, as BuildKit's `ChompHeredocContent`.
pub fn chomp_heredoc_content(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|line| line.trim_start_matches('\t'))
        .collect()
}

/// `FROM [--platform=P] base [AS name]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FromInstruction {
    pub base: String,
    pub name: Option<String>,
    pub platform: Option<String>,
    pub span: Span,
    pub original: String,
}

/// `RUN [--mount=...]... [--network=...] [--security=...] command`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInstruction {
    pub command: CommandForm,
    pub mounts: Vec<Mount>,
    pub network: Option<NetworkMode>,
    pub security: Option<SecurityMode>,
    pub heredocs: Vec<Heredoc>,
    pub span: Span,
    pub original: String,
}

/// `RUN --network=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Default,
    None,
    Host,
}

/// `RUN --security=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    Sandbox,
    Insecure,
}

/// `--mount=type=...` of RUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

/// `--mount=type=cache,sharing=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

/// One `RUN --mount=` flag. String fields are as written (they may hold `$VARS` the planner
/// expands).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub mount_type: MountType,
    /// `target=`, `dst=`, `destination=`.
    pub target: Option<String>,
    /// `source=`, `src=`.
    pub source: Option<String>,
    /// `from=` (a stage name or image).
    pub from: Option<String>,
    /// `readonly`/`ro` (true) or `readwrite`/`rw` (false); None when not given.
    pub readonly: Option<bool>,
    /// `id=` (cache id or secret/ssh id).
    pub id: Option<String>,
    pub sharing: Option<CacheSharing>,
    /// `mode=` as written (octal, e.g. `0755`).
    pub mode: Option<String>,
    pub uid: Option<String>,
    pub gid: Option<String>,
    /// `required` for secret/ssh mounts.
    pub required: Option<bool>,
    /// `size=` of a tmpfs mount, as written.
    pub size: Option<String>,
    /// `env=` of a secret mount.
    pub env: Option<String>,
    /// The flag value as written (`type=cache,target=/root/.cache`).
    pub raw: String,
}

/// `CMD` and `ENTRYPOINT`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandInstruction {
    pub command: CommandForm,
    pub span: Span,
    pub original: String,
}

/// One `key=value` (or legacy `key value`) pair of ENV/LABEL. `key` and `value` are as
/// written: quotes and escapes are still in them (the planner's word expansion removes them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// True for the legacy `ENV KEY value with spaces` form (no `=`).
    pub legacy: bool,
}

/// `ENV` and `LABEL`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyValueInstruction {
    pub pairs: Vec<KeyValue>,
    pub span: Span,
    pub original: String,
}

/// `MAINTAINER`, `USER`, `WORKDIR`, `STOPSIGNAL`: one argument, the rest of the line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StringInstruction {
    pub value: String,
    pub span: Span,
    pub original: String,
}

/// `EXPOSE port[/proto]...`, as written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExposeInstruction {
    pub ports: Vec<String>,
    pub span: Span,
    pub original: String,
}

/// `VOLUME path...` or `VOLUME ["path", ...]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeInstruction {
    pub paths: Vec<String>,
    pub span: Span,
    pub original: String,
}

/// `COPY`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopyInstruction {
    /// Source paths as written (heredoc openers excluded: they are in `heredocs`).
    pub sources: Vec<String>,
    pub dest: String,
    pub heredocs: Vec<Heredoc>,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
    pub span: Span,
    pub original: String,
}

/// `ADD`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AddInstruction {
    /// Source paths/URLs as written (heredoc openers excluded: they are in `heredocs`).
    pub sources: Vec<String>,
    pub dest: String,
    pub heredocs: Vec<Heredoc>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub keep_git_dir: Option<bool>,
    pub checksum: Option<String>,
    pub unpack: Option<bool>,
    pub exclude: Vec<String>,
    pub span: Span,
    pub original: String,
}

/// One name of an `ARG` line, with its default as written (quotes kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDef {
    pub key: String,
    pub value: Option<String>,
    /// BuildKit's doc comment for this ARG (comment above starting with `<key> `).
    pub doc_comment: String,
}

/// `ARG name[=default] ...`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArgInstruction {
    pub args: Vec<ArgDef>,
    pub span: Span,
    pub original: String,
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [flags] CMD command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthcheckTest {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    /// `HEALTHCHECK CMD ...`; Docker stores shell form as `["CMD-SHELL", line]` and exec form
    /// as `["CMD", args...]` (see [`HealthcheckInstruction::docker_test`]).
    Cmd(CommandForm),
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthcheckInstruction {
    pub test: HealthcheckTest,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
    pub retries: Option<i64>,
    pub span: Span,
    pub original: String,
}

impl HealthcheckInstruction {
    /// The image-config `Healthcheck.Test` list Docker writes for this instruction.
    pub fn docker_test(&self) -> Vec<String> {
        match &self.test {
            HealthcheckTest::None => vec!["NONE".to_string()],
            HealthcheckTest::Cmd(CommandForm::Shell(line)) => {
                vec!["CMD-SHELL".to_string(), line.clone()]
            }
            HealthcheckTest::Cmd(CommandForm::Exec(args)) => {
                let mut test = vec!["CMD".to_string()];
                test.extend(args.iter().cloned());
                test
            }
        }
    }
}

/// `SHELL ["executable", "param", ...]` (JSON form only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShellInstruction {
    pub shell: Vec<String>,
    pub span: Span,
    pub original: String,
}

impl Instruction {
    /// The source span of this instruction.
    pub fn span(&self) -> Span {
        match self {
            Instruction::From(i) => i.span,
            Instruction::Run(i) => i.span,
            Instruction::Cmd(i) | Instruction::Entrypoint(i) => i.span,
            Instruction::Label(i) | Instruction::Env(i) => i.span,
            Instruction::Maintainer(i)
            | Instruction::User(i)
            | Instruction::Workdir(i)
            | Instruction::Stopsignal(i) => i.span,
            Instruction::Expose(i) => i.span,
            Instruction::Add(i) => i.span,
            Instruction::Copy(i) => i.span,
            Instruction::Volume(i) => i.span,
            Instruction::Arg(i) => i.span,
            Instruction::Onbuild(i) => i.span(),
            Instruction::Healthcheck(i) => i.span,
            Instruction::Shell(i) => i.span,
        }
    }

    /// The logical line as written after continuation joining (for ONBUILD: the trigger).
    pub fn original(&self) -> &str {
        match self {
            Instruction::From(i) => &i.original,
            Instruction::Run(i) => &i.original,
            Instruction::Cmd(i) | Instruction::Entrypoint(i) => &i.original,
            Instruction::Label(i) | Instruction::Env(i) => &i.original,
            Instruction::Maintainer(i)
            | Instruction::User(i)
            | Instruction::Workdir(i)
            | Instruction::Stopsignal(i) => &i.original,
            Instruction::Expose(i) => &i.original,
            Instruction::Add(i) => &i.original,
            Instruction::Copy(i) => &i.original,
            Instruction::Volume(i) => &i.original,
            Instruction::Arg(i) => &i.original,
            Instruction::Onbuild(i) => i.original(),
            Instruction::Healthcheck(i) => &i.original,
            Instruction::Shell(i) => &i.original,
        }
    }

    /// The instruction keyword in upper case (`RUN`, `COPY`, ...).
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Label(_) => "LABEL",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Env(_) => "ENV",
            Instruction::Add(_) => "ADD",
            Instruction::Copy(_) => "COPY",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Volume(_) => "VOLUME",
            Instruction::User(_) => "USER",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::Arg(_) => "ARG",
            Instruction::Onbuild(_) => "ONBUILD",
            Instruction::Stopsignal(_) => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Shell(_) => "SHELL",
        }
    }
}

/// One node of BuildKit's AST: a top-level instruction as `parser.Parse` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The instruction keyword as written (`run`, `RUN`, `Run`, or an unknown word).
    pub keyword: String,
    /// Leading `--flag` words, quotes removed (`--from=builder`).
    pub flags: Vec<String>,
    /// Argument values (for unknown instructions a single empty string; for ONBUILD empty,
    /// the trigger is in `child`).
    pub args: Vec<String>,
    /// ONBUILD's trigger node.
    pub child: Option<Box<Node>>,
    /// True when the args came from a JSON array.
    pub json_form: bool,
    /// The joined logical line after continuation processing.
    pub original: String,
    /// Heredocs opened on this line (empty when none; BuildKit's `null`).
    pub heredocs: Vec<Heredoc>,
    /// Comment lines directly above the instruction (`#` and surrounding space removed).
    pub prev_comment: Vec<String>,
    /// Whole instruction, continuation and heredoc lines included.
    pub span: Span,
    /// Byte offset of the keyword.
    pub keyword_offset: usize,
    /// Source byte offset of each flag word.
    #[serde(skip)]
    pub flag_offsets: Vec<usize>,
    /// Where the pieces of `original` come from: `(index in original, source offset)`,
    /// sorted (continuation lines are not contiguous in the file). Used for error columns.
    #[serde(skip)]
    pub original_segments: Vec<(usize, usize)>,
}

impl Node {
    pub fn start_line(&self) -> usize {
        self.span.start_line
    }

    pub fn end_line(&self) -> usize {
        self.span.end_line
    }

    /// The source byte offset of byte `index` of `original`.
    pub fn source_offset(&self, index: usize) -> usize {
        let position = self
            .original_segments
            .partition_point(|(start, _)| *start <= index);
        match position
            .checked_sub(1)
            .and_then(|i| self.original_segments.get(i))
        {
            Some((start, offset)) => offset + (index - start),
            None => self.span.start,
        }
    }
}
