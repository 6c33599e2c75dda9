//! The planner proper: walks the stages the target needs (depth first from the target, so a
//! stage nobody uses is never looked at), expands every instruction with the scope in force
//! at that point and turns it into a node.
//!
//! Follows BuildKit's `dockerfile2llb` dispatcher: the same scoping, the same shell wrapping,
//! the same history text. Knows the Dockerfile and the options; does no I/O except through the
//! `BaseImageResolver`, and reads the process environment only for `--build-arg KEY`.

use super::graph::{
    BuildGraph, CacheSharingMode, ConfigChange, CopyOp, CopySource, ExecFile, ExecMount, ExecOp,
    HistoryEntry, Location, MetaOp, MountKind, Node, NodeId, Op, SourceOp, StageBase, StageInfo,
};
use super::history::{go_list, go_port_map, go_quote_list, healthcheck_created_by};
use super::image::{BaseImageResolver, Healthcheck, ImageConfig, ResolvedImage};
use super::options::{BuildOptions, Network, Platform, Security};
use super::scope::{arg_value, is_proxy_arg, platform_args, StageScope, DEFAULT_PATH};
use super::PlanError;
use crate::parser::ast::{
    CacheSharing, CommandForm, Dockerfile, HealthcheckTest, Heredoc, Instruction, MountType,
    NetworkMode, SecurityMode, Span,
};
use crate::parser::raw::parse_heredoc;
use crate::parser::shell::{Env, ShellError, ShellLex};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

enum Slot {
    NotStarted,
    InProgress,
    Done(Box<StageInfo>),
}

/// The state of the stage being dispatched.
struct StageState {
    index: usize,
    name: Option<String>,
    platform: Platform,
    config: ImageConfig,
    /// The ARGs declared so far in this stage, in order, with their values (BuildKit's
    /// `d.buildArgs`): every RUN sees all of them.
    args: Vec<(String, Option<String>)>,
    last: NodeId,
    /// CMD was set in this stage (then ENTRYPOINT does not reset it).
    cmd_set: bool,
}

pub(crate) struct Planner<'a> {
    dockerfile: &'a Dockerfile,
    options: &'a BuildOptions,
    resolver: &'a dyn BaseImageResolver,
    lex: ShellLex,
    target_platform: Platform,
    /// Resolved `--build-arg` values.
    build_args: BTreeMap<String, String>,
    /// The scope of FROM lines: platform ARGs, then the global ARGs that have a value.
    global_scope: Vec<(String, String)>,
    /// Platform ARGs and global ARGs with their values (`None`: declared without one), for
    /// `ARG NAME` inside a stage.
    meta_args: Vec<(String, Option<String>)>,
    declared_args: BTreeSet<String>,
    nodes: Vec<Node>,
    graph: DiGraph<NodeId, ()>,
    slots: Vec<Slot>,
    image_nodes: HashMap<(String, Platform), (NodeId, ResolvedImage)>,
}

impl<'a> Planner<'a> {
    pub(crate) fn new(
        dockerfile: &'a Dockerfile,
        options: &'a BuildOptions,
        resolver: &'a dyn BaseImageResolver,
    ) -> Planner<'a> {
        let mut build_args = BTreeMap::new();
        for (key, value) in &options.build_args {
            // `--build-arg KEY` takes the value from the environment, and is left unset when the
            // environment has none (docker's behaviour).
            let value = match value {
                Some(value) => Some(value.clone()),
                None => std::env::var(key).ok(),
            };
            if let Some(value) = value {
                build_args.insert(key.clone(), value);
            }
        }
        let target_platform = options.platform.clone().unwrap_or_else(Platform::host);
        Planner {
            dockerfile,
            options,
            resolver,
            lex: ShellLex::new(dockerfile.directives.escape),
            target_platform,
            build_args,
            global_scope: Vec::new(),
            meta_args: Vec::new(),
            declared_args: BTreeSet::new(),
            nodes: Vec::new(),
            graph: DiGraph::new(),
            slots: dockerfile.stages.iter().map(|_| Slot::NotStarted).collect(),
            image_nodes: HashMap::new(),
        }
    }

    pub(crate) fn plan(mut self) -> Result<BuildGraph, PlanError> {
        if self.dockerfile.stages.is_empty() {
            return Err(PlanError::NoStages);
        }
        let target_stage = match &self.options.target {
            None => self.dockerfile.stages.len() - 1,
            Some(target) => self
                .dockerfile
                .stages
                .iter()
                .position(|stage| {
                    stage
                        .name
                        .as_deref()
                        .is_some_and(|name| name.eq_ignore_ascii_case(target))
                })
                .ok_or_else(|| PlanError::UnknownTarget {
                    target: target.clone(),
                    stages: self
                        .dockerfile
                        .stages
                        .iter()
                        .enumerate()
                        .map(|(index, stage)| {
                            stage
                                .name
                                .clone()
                                .unwrap_or_else(|| format!("#{index} (unnamed)"))
                        })
                        .collect(),
                })?,
        };
        self.global_scope_setup()?;
        self.plan_stage(target_stage, None)?;

        let mut stages = Vec::new();
        for slot in std::mem::take(&mut self.slots) {
            if let Slot::Done(info) = slot {
                stages.push(*info);
            }
        }
        let target_info = stages
            .iter_mut()
            .find(|stage| stage.index == target_stage)
            .expect("the target stage was planned");
        for (key, value) in &self.options.labels {
            target_info.config.labels.insert(key.clone(), value.clone());
        }
        let target = target_info.last;

        let mut unused: Vec<&String> = self
            .build_args
            .keys()
            .filter(|key| !self.declared_args.contains(*key) && !is_proxy_arg(key))
            .collect();
        unused.sort();
        let mut warnings = Vec::new();
        if !unused.is_empty() {
            let names: Vec<&str> = unused.iter().map(|name| name.as_str()).collect();
            warnings.push(format!(
                "[Warning] One or more build-args [{}] were not consumed",
                names.join(" ")
            ));
        }
        Ok(BuildGraph {
            graph: self.graph,
            nodes: self.nodes,
            stages,
            target_stage,
            target,
            warnings,
            no_cache: self.options.no_cache,
        })
    }

    fn location(&self, span: Span) -> Location {
        let column = match &self.options.source {
            Some(source) if span.start <= source.len() && source.is_char_boundary(span.start) => {
                let line_start = source[..span.start].rfind('\n').map_or(0, |i| i + 1);
                source[line_start..span.start].chars().count() + 1
            }
            _ => 1,
        };
        Location {
            file: self.options.file_name.clone(),
            line: span.start_line,
            column,
        }
    }

    /// Platform ARGs, then the ARGs before the first FROM: a build arg overrides a default,
    /// defaults are expanded with what is declared before them.
    fn global_scope_setup(&mut self) -> Result<(), PlanError> {
        let build_platform = Platform::host();
        for (key, value) in platform_args(&self.target_platform, &build_platform) {
            self.meta_args.push((key.clone(), Some(value.clone())));
            self.global_scope.push((key, value));
        }
        for instruction in &self.dockerfile.meta_args {
            let location = self.location(instruction.span);
            for def in &instruction.args {
                self.declared_args.insert(def.key.clone());
                let value = if let Some(value) = self.build_args.get(&def.key) {
                    Some(value.clone())
                } else if let Some(default) = &def.value {
                    Some(expand(
                        &self.lex,
                        default,
                        &self.global_scope,
                        &location,
                        "ARG",
                    )?)
                } else {
                    None
                };
                if let Some(value) = &value {
                    self.global_scope.push((def.key.clone(), value.clone()));
                }
                self.meta_args.push((def.key.clone(), value));
            }
        }
        Ok(())
    }

    fn stage_label(&self, index: usize) -> String {
        self.dockerfile.stages[index]
            .name
            .clone()
            .unwrap_or_else(|| index.to_string())
    }

    /// Plans stage `index` (and what it needs) once; returns its last node.
    fn plan_stage(
        &mut self,
        index: usize,
        used_at: Option<&Location>,
    ) -> Result<NodeId, PlanError> {
        match &self.slots[index] {
            Slot::Done(info) => return Ok(info.last),
            Slot::InProgress => {
                let stage = &self.dockerfile.stages[index];
                return Err(PlanError::CircularDependency {
                    location: used_at
                        .cloned()
                        .unwrap_or_else(|| self.location(stage.span)),
                    stage: self.stage_label(index),
                });
            }
            Slot::NotStarted => {}
        }
        self.slots[index] = Slot::InProgress;
        let dockerfile = self.dockerfile;
        let stage = &dockerfile.stages[index];
        let location = self.location(stage.span);

        let platform = match &stage.platform {
            Some(written) => {
                let value = expand(&self.lex, written, &self.global_scope, &location, "FROM")?;
                Platform::from_str(&value).map_err(|source| PlanError::InvalidPlatform {
                    location: location.clone(),
                    source,
                })?
            }
            None => self.target_platform.clone(),
        };
        let base_name = expand(
            &self.lex,
            &stage.base,
            &self.global_scope,
            &location,
            "FROM",
        )?;
        if base_name.is_empty() {
            return Err(PlanError::EmptyBase {
                location,
                written: stage.base.clone(),
            });
        }
        let description = stage_from_text(stage);
        let (base, root, mut config) = if base_name == "scratch" {
            let root = self.push_node(
                index,
                Op::Source(SourceOp::Scratch),
                None,
                description,
                Some(location.clone()),
                None,
            );
            let config = ImageConfig {
                env: vec![format!("PATH={DEFAULT_PATH}")],
                ..ImageConfig::default()
            };
            (StageBase::Scratch, root, config)
        } else if let Some(base_stage) = self.find_stage(&base_name, index) {
            let last = self.plan_stage(base_stage, Some(&location))?;
            let Slot::Done(info) = &self.slots[base_stage] else {
                unreachable!("plan_stage marks the stage done");
            };
            (StageBase::Stage(base_stage), last, info.config.clone())
        } else {
            let (node, image) = self.image_node(index, &base_name, &platform, &location)?;
            let SourceOp::Image {
                reference, digest, ..
            } = source_of(&self.nodes[node.index()].op)
            else {
                unreachable!("image_node returns an image source");
            };
            (
                StageBase::Image {
                    reference: reference.clone(),
                    digest: digest.clone(),
                },
                node,
                image.config,
            )
        };
        let triggers = std::mem::take(&mut config.on_build);
        let mut state = StageState {
            index,
            name: stage.name.clone(),
            platform,
            config,
            args: Vec::new(),
            last: root,
            cmd_set: false,
        };
        // ONBUILD triggers of the base run right after FROM, before the stage's own steps.
        for trigger in &triggers {
            let instruction =
                parse_trigger(trigger).map_err(|reason| PlanError::OnbuildTrigger {
                    location: location.clone(),
                    trigger: trigger.clone(),
                    reason,
                })?;
            self.dispatch(&mut state, &instruction, location.clone())?;
        }
        for instruction in &stage.instructions {
            let location = self.location(instruction.span());
            self.dispatch(&mut state, instruction, location)?;
        }
        self.slots[index] = Slot::Done(Box::new(StageInfo {
            index,
            name: state.name,
            base,
            platform: state.platform,
            last: state.last,
            config: state.config,
        }));
        Ok(state.last)
    }

    /// The stage (other than `current`) called `name`, case-insensitively.
    fn find_stage(&self, name: &str, current: usize) -> Option<usize> {
        self.dockerfile
            .stages
            .iter()
            .enumerate()
            .position(|(index, stage)| {
                index != current
                    && stage
                        .name
                        .as_deref()
                        .is_some_and(|stage_name| stage_name.eq_ignore_ascii_case(name))
            })
    }

    /// The Source node of image `name` for `platform`, made and resolved once per build.
    fn image_node(
        &mut self,
        stage: usize,
        name: &str,
        platform: &Platform,
        location: &Location,
    ) -> Result<(NodeId, ResolvedImage), PlanError> {
        let reference =
            crate::reference::parse(name).map_err(|error| PlanError::InvalidReference {
                location: location.clone(),
                reference: name.to_string(),
                reason: error.to_string(),
            })?;
        let reference = reference.whole();
        let key = (reference.clone(), platform.clone());
        if let Some((node, image)) = self.image_nodes.get(&key) {
            return Ok((*node, image.clone()));
        }
        let image = self
            .resolver
            .resolve(&reference, platform)
            .map_err(|source| PlanError::Resolve {
                location: location.clone(),
                reference: reference.clone(),
                platform: platform.to_string(),
                source,
            })?;
        let op = Op::Source(SourceOp::Image {
            reference: reference.clone(),
            digest: image.digest.clone(),
            platform: platform.clone(),
        });
        let node = self.push_node(
            stage,
            op,
            None,
            format!("FROM {reference}"),
            Some(location.clone()),
            None,
        );
        self.image_nodes.insert(key, (node, image.clone()));
        Ok((node, image))
    }

    /// The node a `--from=` names: a stage index, a stage name, or an image.
    fn resolve_from(
        &mut self,
        state: &StageState,
        from: &str,
        location: &Location,
    ) -> Result<NodeId, PlanError> {
        if let Ok(index) = from.parse::<usize>() {
            if index >= state.index {
                return Err(PlanError::StageIndex {
                    location: location.clone(),
                    index,
                });
            }
            return self.plan_stage(index, Some(location));
        }
        if let Some(stage) = self.find_stage(from, usize::MAX) {
            if stage == state.index {
                return Err(PlanError::CircularDependency {
                    location: location.clone(),
                    stage: self.stage_label(stage),
                });
            }
            return self.plan_stage(stage, Some(location));
        }
        let platform = state.platform.clone();
        Ok(self.image_node(state.index, from, &platform, location)?.0)
    }

    fn push_node(
        &mut self,
        stage: usize,
        op: Op,
        parent: Option<NodeId>,
        description: String,
        location: Option<Location>,
        history: Option<HistoryEntry>,
    ) -> NodeId {
        let id = NodeId(self.nodes.len() as u32);
        let mut inputs: Vec<NodeId> = parent.into_iter().collect();
        for node in op.referenced_nodes() {
            if !inputs.contains(&node) {
                inputs.push(node);
            }
        }
        let index = self.graph.add_node(id);
        debug_assert_eq!(index.index(), id.index());
        for input in &inputs {
            self.graph
                .add_edge(NodeIndex::new(input.index()), index, ());
        }
        self.nodes.push(Node {
            id,
            stage,
            op,
            parent,
            inputs,
            description,
            location,
            history,
        });
        id
    }

    fn step(
        &mut self,
        state: &mut StageState,
        op: Op,
        instruction: &Instruction,
        location: Location,
        history: Option<HistoryEntry>,
    ) {
        let description = match instruction {
            Instruction::Onbuild(trigger) => format!("ONBUILD {}", trigger.original().trim()),
            _ => instruction.original().trim().to_string(),
        };
        state.last = self.push_node(
            state.index,
            op,
            Some(state.last),
            description,
            Some(location),
            history,
        );
    }

    fn meta(
        &mut self,
        state: &mut StageState,
        change: ConfigChange,
        instruction: &Instruction,
        location: Location,
        created_by: Option<String>,
    ) {
        change.apply(&mut state.config);
        let history = created_by.map(|created_by| HistoryEntry {
            created_by,
            empty_layer: true,
        });
        self.step(
            state,
            Op::Meta(MetaOp { change }),
            instruction,
            location,
            history,
        );
    }

    fn dispatch(
        &mut self,
        state: &mut StageState,
        instruction: &Instruction,
        location: Location,
    ) -> Result<(), PlanError> {
        let lex = self.lex;
        let keyword = instruction.keyword();
        // The scope in force before this instruction (ENV A=1 B=$A reads the old A).
        let env = state.config.env.clone();
        let args = state.args.clone();
        let scope = StageScope {
            env: &env,
            args: &args,
        };
        let word = |value: &str| expand(&lex, value, &scope, &location, keyword);
        match instruction {
            Instruction::From(_) => {
                return Err(PlanError::Unexpected {
                    location,
                    instruction: "FROM",
                });
            }
            Instruction::Run(run) => {
                let op = self.run_op(state, run, &scope, &location)?;
                let created_by = format!(
                    "RUN {} # buildkit",
                    run_command_string(&op.argv, &state.args, &state.config)
                );
                let history = HistoryEntry {
                    created_by,
                    empty_layer: false,
                };
                self.step(state, Op::Exec(op), instruction, location, Some(history));
            }
            Instruction::Copy(copy) => {
                let from = copy.from.as_deref().map(word).transpose()?;
                let from_node = match &from {
                    Some(from) => Some(self.resolve_from(state, from, &location)?),
                    None => None,
                };
                let spec = CopySpec {
                    add: false,
                    sources: &copy.sources,
                    heredocs: &copy.heredocs,
                    dest: &copy.dest,
                    chown: copy.chown.as_deref(),
                    chmod: copy.chmod.as_deref(),
                    link: copy.link,
                    parents: copy.parents,
                    exclude: &copy.exclude,
                    checksum: None,
                    keep_git_dir: false,
                    unpack: None,
                };
                let (op, created_by) =
                    copy_op(&lex, &spec, from_node, &scope, &state.config, &location)?;
                let history = HistoryEntry {
                    created_by,
                    empty_layer: false,
                };
                self.step(state, Op::Copy(op), instruction, location, Some(history));
            }
            Instruction::Add(add) => {
                let spec = CopySpec {
                    add: true,
                    sources: &add.sources,
                    heredocs: &add.heredocs,
                    dest: &add.dest,
                    chown: add.chown.as_deref(),
                    chmod: add.chmod.as_deref(),
                    link: add.link,
                    parents: false,
                    exclude: &add.exclude,
                    checksum: add.checksum.as_deref(),
                    keep_git_dir: add.keep_git_dir.unwrap_or(false),
                    unpack: add.unpack,
                };
                let (op, created_by) =
                    copy_op(&lex, &spec, None, &scope, &state.config, &location)?;
                let history = HistoryEntry {
                    created_by,
                    empty_layer: false,
                };
                self.step(state, Op::Copy(op), instruction, location, Some(history));
            }
            Instruction::Env(env_instruction) | Instruction::Label(env_instruction) => {
                let mut pairs = Vec::new();
                for pair in &env_instruction.pairs {
                    pairs.push((word(&pair.key)?, word(&pair.value)?));
                }
                let text: Vec<String> = pairs.iter().map(|(k, v)| format!(" {k}={v}")).collect();
                let created_by = format!("{keyword}{}", text.concat());
                let change = if matches!(instruction, Instruction::Env(_)) {
                    ConfigChange::Env(pairs)
                } else {
                    ConfigChange::Label(pairs)
                };
                self.meta(state, change, instruction, location, Some(created_by));
            }
            Instruction::Expose(expose) => {
                let mut ports = Vec::new();
                for port in &expose.ports {
                    let words =
                        lex.process_words(port, &scope)
                            .map_err(|source| PlanError::Expand {
                                location: location.clone(),
                                instruction: keyword,
                                source: Box::new(source),
                            })?;
                    for word in words {
                        ports.extend(parse_port_spec(&word).ok_or_else(|| {
                            PlanError::InvalidPort {
                                location: location.clone(),
                                port: word.clone(),
                            }
                        })?);
                    }
                }
                let created_by = format!("EXPOSE {}", go_port_map(&ports));
                self.meta(
                    state,
                    ConfigChange::Expose(ports),
                    instruction,
                    location,
                    Some(created_by),
                );
            }
            Instruction::Volume(volume) => {
                let mut paths = Vec::new();
                for path in &volume.paths {
                    let path = word(path)?;
                    if path.is_empty() {
                        return Err(PlanError::EmptyVolume { location });
                    }
                    paths.push(path);
                }
                let created_by = format!("VOLUME {}", go_list(&paths));
                self.meta(
                    state,
                    ConfigChange::Volume(paths),
                    instruction,
                    location,
                    Some(created_by),
                );
            }
            Instruction::User(user) => {
                let user = word(&user.value)?;
                let created_by = format!("USER {user}");
                self.meta(
                    state,
                    ConfigChange::User(user),
                    instruction,
                    location,
                    Some(created_by),
                );
            }
            Instruction::Workdir(workdir) => {
                let path = resolve_workdir(&state.config.working_dir, &word(&workdir.value)?);
                let create = path != "/";
                let created_by = format!("WORKDIR {path}");
                let change = ConfigChange::Workdir {
                    path,
                    create,
                    user: state.config.user.clone(),
                };
                change.apply(&mut state.config);
                let history = HistoryEntry {
                    created_by,
                    empty_layer: !create,
                };
                self.step(
                    state,
                    Op::Meta(MetaOp { change }),
                    instruction,
                    location,
                    Some(history),
                );
            }
            Instruction::Stopsignal(signal) => {
                let signal = word(&signal.value)?;
                if !valid_signal(&signal) {
                    return Err(PlanError::InvalidSignal { location, signal });
                }
                let created_by = format!("STOPSIGNAL {signal}");
                self.meta(
                    state,
                    ConfigChange::StopSignal(signal),
                    instruction,
                    location,
                    Some(created_by),
                );
            }
            Instruction::Cmd(cmd) => {
                let argv = command_argv(&cmd.command, &state.config);
                let created_by = format!("CMD {}", go_quote_list(&argv));
                state.cmd_set = true;
                self.meta(
                    state,
                    ConfigChange::Cmd(argv),
                    instruction,
                    location,
                    Some(created_by),
                );
            }
            Instruction::Entrypoint(entrypoint) => {
                let argv = command_argv(&entrypoint.command, &state.config);
                let created_by = format!("ENTRYPOINT {}", go_quote_list(&argv));
                let change = ConfigChange::Entrypoint {
                    argv,
                    reset_cmd: !state.cmd_set,
                };
                self.meta(state, change, instruction, location, Some(created_by));
            }
            Instruction::Shell(shell) => {
                let created_by = format!("SHELL {}", go_list(&shell.shell));
                self.meta(
                    state,
                    ConfigChange::Shell(shell.shell.clone()),
                    instruction,
                    location,
                    Some(created_by),
                );
            }
            Instruction::Healthcheck(check) => {
                let healthcheck = match &check.test {
                    HealthcheckTest::None => Healthcheck {
                        test: check.docker_test(),
                        ..Healthcheck::default()
                    },
                    HealthcheckTest::Cmd(_) => Healthcheck {
                        test: check.docker_test(),
                        interval: check.interval.unwrap_or_default(),
                        timeout: check.timeout.unwrap_or_default(),
                        start_period: check.start_period.unwrap_or_default(),
                        start_interval: check.start_interval.unwrap_or_default(),
                        retries: check.retries.unwrap_or(0),
                    },
                };
                let created_by = healthcheck_created_by(&healthcheck);
                self.meta(
                    state,
                    ConfigChange::Healthcheck(healthcheck),
                    instruction,
                    location,
                    Some(created_by),
                );
            }
            Instruction::Maintainer(maintainer) => {
                let created_by = format!("MAINTAINER {}", maintainer.value);
                self.meta(
                    state,
                    ConfigChange::Author(maintainer.value.clone()),
                    instruction,
                    location,
                    Some(created_by),
                );
            }
            Instruction::Onbuild(trigger) => {
                // Stored as written, not run and not expanded; BuildKit writes no history.
                let change = ConfigChange::Onbuild(trigger.original().trim().to_string());
                self.meta(state, change, instruction, location, None);
            }
            Instruction::Arg(arg) => {
                let mut declared = Vec::new();
                for def in &arg.args {
                    self.declared_args.insert(def.key.clone());
                    let value = if let Some(value) = self.build_args.get(&def.key) {
                        Some(value.clone())
                    } else if let Some(default) = &def.value {
                        // Earlier ARGs of this same line are visible (ARG A=1 B=$A).
                        let scope = StageScope {
                            env: &env,
                            args: &state.args,
                        };
                        Some(expand(&lex, default, &scope, &location, keyword)?)
                    } else {
                        // `ARG NAME` picks up the global value (global ARGs, platform ARGs).
                        self.meta_args
                            .iter()
                            .rev()
                            .find(|(key, _)| *key == def.key)
                            .and_then(|(_, value)| value.clone())
                    };
                    state.args.push((def.key.clone(), value.clone()));
                    declared.push((def.key.clone(), value));
                }
                let text: Vec<String> = declared
                    .iter()
                    .map(|(key, value)| match value {
                        Some(value) => format!("{key}={value}"),
                        None => key.clone(),
                    })
                    .collect();
                let created_by = format!("ARG {}", text.join(" "));
                self.meta(
                    state,
                    ConfigChange::Arg(declared),
                    instruction,
                    location,
                    Some(created_by),
                );
            }
        }
        Ok(())
    }

    fn run_op(
        &mut self,
        state: &StageState,
        run: &crate::parser::ast::RunInstruction,
        scope: &StageScope<'_>,
        location: &Location,
    ) -> Result<ExecOp, PlanError> {
        let lex = self.lex;
        let word = |value: &str| expand(&lex, value, scope, location, "RUN");
        let opt_word = |value: &Option<String>| value.as_deref().map(word).transpose();
        let workdir = if state.config.working_dir.is_empty() {
            "/".to_string()
        } else {
            state.config.working_dir.clone()
        };

        let mut mounts = Vec::new();
        for mount in &run.mounts {
            let invalid = |name: &str, value: &str, reason: &str| PlanError::InvalidMount {
                location: location.clone(),
                name: name.to_string(),
                value: value.to_string(),
                reason: reason.to_string(),
            };
            let kind = match mount.mount_type {
                MountType::Bind => MountKind::Bind,
                MountType::Cache => MountKind::Cache,
                MountType::Tmpfs => MountKind::Tmpfs,
                MountType::Secret => MountKind::Secret,
                MountType::Ssh => MountKind::Ssh,
            };
            let id = opt_word(&mount.id)?;
            let target = match opt_word(&mount.target)? {
                Some(target) if target.starts_with('/') => clean_path(&target),
                Some(target) => clean_path(&format!("{workdir}/{target}")),
                // `env=` alone exposes a secret only as a variable (BuildKit): no file.
                None if kind == MountKind::Secret && mount.env.is_some() => String::new(),
                None => match kind {
                    MountKind::Secret => format!("/run/secrets/{}", id.clone().unwrap_or_default()),
                    MountKind::Ssh => "/run/buildkit/ssh_agent.0".to_string(),
                    _ => return Err(invalid("target", "", "a target is required")),
                },
            };
            let id = match (kind, id) {
                (_, Some(id)) => Some(id),
                (MountKind::Cache, None) => Some(target.clone()),
                (MountKind::Secret, None) => target.rsplit('/').next().map(str::to_string),
                (MountKind::Ssh, None) => Some("default".to_string()),
                _ => None,
            };
            let from = match opt_word(&mount.from)? {
                Some(from) => Some(self.resolve_from(state, &from, location)?),
                None => None,
            };
            let mode = match opt_word(&mount.mode)? {
                Some(mode) => Some(
                    u32::from_str_radix(&mode, 8)
                        .map_err(|_| invalid("mode", &mode, "expected an octal mode"))?,
                ),
                None => None,
            };
            let parse_id = |name: &str, value: Option<String>| -> Result<Option<u32>, PlanError> {
                match value {
                    Some(value) => value
                        .parse::<u32>()
                        .map(Some)
                        .map_err(|_| invalid(name, &value, "expected a number")),
                    None => Ok(None),
                }
            };
            let uid = parse_id("uid", opt_word(&mount.uid)?)?;
            let gid = parse_id("gid", opt_word(&mount.gid)?)?;
            let readonly_default =
                matches!(kind, MountKind::Bind | MountKind::Secret | MountKind::Ssh);
            mounts.push(ExecMount {
                kind,
                target,
                from,
                source: opt_word(&mount.source)?,
                readonly: mount.readonly.unwrap_or(readonly_default),
                id,
                sharing: mount.sharing.map(|sharing| match sharing {
                    CacheSharing::Shared => CacheSharingMode::Shared,
                    CacheSharing::Private => CacheSharingMode::Private,
                    CacheSharing::Locked => CacheSharingMode::Locked,
                }),
                mode,
                uid,
                gid,
                required: mount.required.unwrap_or(false),
                size: opt_word(&mount.size)?,
                env: opt_word(&mount.env)?,
            });
        }

        let mut files = Vec::new();
        let argv = match &run.command {
            CommandForm::Exec(argv) => {
                if !run.heredocs.is_empty() {
                    return Err(PlanError::HeredocExecForm {
                        location: location.clone(),
                    });
                }
                argv.clone()
            }
            CommandForm::Shell(line) => {
                let body = heredoc_command(line, &run.heredocs, &mut files);
                with_shell(&state.config, &[body])
            }
        };

        // The process env: config env, then the ARGs ENV does not override (a later ARG of a
        // name replaces an earlier one), then PATH when nothing set it.
        let mut env = state.config.env.clone();
        for (key, value) in &state.args {
            if let Some(value) = value {
                if state.config.env_value(key).is_none() {
                    let mut only_args = ImageConfig {
                        env,
                        ..ImageConfig::default()
                    };
                    only_args.set_env(key, value);
                    env = only_args.env;
                }
            }
        }
        if !env.iter().any(|entry| entry.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        let proxy_env = self
            .build_args
            .iter()
            .filter(|(key, _)| {
                is_proxy_arg(key) && !state.args.iter().any(|(name, _)| name == *key)
            })
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Ok(ExecOp {
            argv,
            env,
            build_args: state.args.clone(),
            proxy_env,
            user: state.config.user.clone(),
            workdir,
            network: match run.network {
                Some(NetworkMode::Default) => Network::Default,
                Some(NetworkMode::None) => Network::None,
                Some(NetworkMode::Host) => Network::Host,
                None => self.options.network,
            },
            security: match run.security {
                Some(SecurityMode::Insecure) => Security::Insecure,
                Some(SecurityMode::Sandbox) | None => Security::Sandbox,
            },
            mounts,
            files,
        })
    }
}

fn source_of(op: &Op) -> &SourceOp {
    match op {
        Op::Source(source) => source,
        _ => &SourceOp::Scratch,
    }
}

fn stage_from_text(stage: &crate::parser::ast::Stage) -> String {
    let mut text = String::from("FROM ");
    if let Some(platform) = &stage.platform {
        text.push_str(&format!("--platform={platform} "));
    }
    text.push_str(&stage.base);
    if let Some(name) = &stage.name {
        text.push_str(&format!(" AS {name}"));
    }
    text
}

/// Expands one word, naming the instruction and place on failure.
fn expand<E: Env + ?Sized>(
    lex: &ShellLex,
    value: &str,
    env: &E,
    location: &Location,
    instruction: &'static str,
) -> Result<String, PlanError> {
    lex.process_word(value, env)
        .map_err(|source: ShellError| PlanError::Expand {
            location: location.clone(),
            instruction,
            source: Box::new(source),
        })
}

/// Parses one ONBUILD trigger from an image config with the real parser.
fn parse_trigger(trigger: &str) -> Result<Instruction, String> {
    let text = format!("FROM scratch\n{trigger}\n");
    let dockerfile = crate::parser::parse(&text, "ONBUILD").map_err(|errors| {
        errors
            .errors
            .iter()
            .map(|error| error.kind.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let n_stages = dockerfile.stages.len();
    let mut instructions = dockerfile
        .stages
        .into_iter()
        .flat_map(|stage| stage.instructions)
        .collect::<Vec<_>>();
    if instructions.len() != 1 || n_stages != 1 {
        return Err("onbuild trigger should be a single expression".to_string());
    }
    Ok(instructions.remove(0))
}

/// BuildKit's `withShell`: the config's SHELL (default `/bin/sh -c`) plus the joined words.
fn with_shell(config: &ImageConfig, args: &[String]) -> Vec<String> {
    let mut argv = if config.shell.is_empty() {
        vec!["/bin/sh".to_string(), "-c".to_string()]
    } else {
        config.shell.clone()
    };
    argv.push(args.join(" "));
    argv
}

/// CMD/ENTRYPOINT argv: exec form as written, shell form wrapped with the SHELL.
fn command_argv(command: &CommandForm, config: &ImageConfig) -> Vec<String> {
    match command {
        CommandForm::Exec(argv) => argv.clone(),
        CommandForm::Shell(line) => with_shell(config, std::slice::from_ref(line)),
    }
}

/// The shell-form RUN body with heredocs, as BuildKit's `dispatchRun` builds it:
/// - `RUN <<EOF` alone: the body is the command (or, starting with `#!`, a file
///   `/dev/pipes/EOF` (0755) that is run);
/// - otherwise the line and every heredoc (body then terminator) go to the shell, which
///   handles the redirections itself.
fn heredoc_command(line: &str, heredocs: &[Heredoc], files: &mut Vec<ExecFile>) -> String {
    if heredocs.is_empty() {
        return line.to_string();
    }
    if let Ok(Some(_)) = parse_heredoc(line.trim()) {
        let heredoc = &heredocs[0];
        let data = heredoc.chomped_content();
        if data.starts_with("#!") {
            let path = format!("/dev/pipes/{}", heredoc.name);
            files.push(ExecFile {
                path: path.clone(),
                contents: data,
                mode: 0o755,
            });
            return path;
        }
        return data;
    }
    let mut full = line.to_string();
    for heredoc in heredocs {
        full.push('\n');
        full.push_str(&heredoc.content);
        full.push_str(&heredoc.name);
    }
    full
}

/// BuildKit's `runCommandString`: `|N K=V ... argv...` when the stage declared ARGs, each
/// ARG's value taken from the env (ENV wins) or its own value; repeated names once.
fn run_command_string(
    argv: &[String],
    args: &[(String, Option<String>)],
    config: &ImageConfig,
) -> String {
    let mut entries: Vec<(String, String)> = Vec::new();
    for (key, value) in args {
        let value = config
            .env_value(key)
            .map(str::to_string)
            .or_else(|| arg_value(args, key).map(str::to_string))
            .or_else(|| value.clone())
            .unwrap_or_default();
        match entries.iter_mut().find(|(name, _)| name == key) {
            Some(entry) => entry.1 = value,
            None => entries.push((key.clone(), value)),
        }
    }
    let mut words: Vec<String> = Vec::new();
    if !entries.is_empty() {
        words.push(format!("|{}", entries.len()));
        words.extend(
            entries
                .into_iter()
                .map(|(key, value)| format!("{key}={value}")),
        );
    }
    words.extend(argv.iter().cloned());
    words.join(" ")
}

struct CopySpec<'a> {
    add: bool,
    sources: &'a [String],
    heredocs: &'a [Heredoc],
    dest: &'a str,
    chown: Option<&'a str>,
    chmod: Option<&'a str>,
    link: bool,
    parents: bool,
    exclude: &'a [String],
    checksum: Option<&'a str>,
    keep_git_dir: bool,
    unpack: Option<bool>,
}

fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

fn is_git(source: &str) -> bool {
    source.starts_with("git@")
        || source.starts_with("git://")
        || (is_url(source) && source.ends_with(".git"))
}

/// COPY/ADD after expansion, and its history text.
fn copy_op(
    lex: &ShellLex,
    spec: &CopySpec<'_>,
    from: Option<NodeId>,
    scope: &StageScope<'_>,
    config: &ImageConfig,
    location: &Location,
) -> Result<(CopyOp, String), PlanError> {
    let instruction = if spec.add { "ADD" } else { "COPY" };
    let word = |value: &str| expand(lex, value, scope, location, instruction);
    let mut created_by = String::from(instruction);
    let mut sources = Vec::new();
    for source in spec.sources {
        let path = word(source)?;
        created_by.push(' ');
        created_by.push_str(&path);
        let source = if let Some(node) = from {
            CopySource::Node { node, path }
        } else if is_url(&path) || is_git(&path) {
            if !spec.add {
                return Err(PlanError::CopyUrl {
                    location: location.clone(),
                    url: path,
                });
            }
            CopySource::Url {
                url: path,
                extract_archive: spec.unpack.unwrap_or(false),
            }
        } else {
            CopySource::Context {
                path,
                extract_archive: spec.add && spec.unpack.unwrap_or(true),
            }
        };
        sources.push(source);
    }
    // Heredoc bodies are expanded unless the delimiter was quoted; quotes in the body are
    // text, not shell quoting.
    let body_lex = ShellLex::for_heredoc();
    for heredoc in spec.heredocs {
        let data = heredoc.chomped_content();
        let contents = if heredoc.expand {
            expand(&body_lex, &data, scope, location, instruction)?
        } else {
            data
        };
        created_by.push_str(&format!(" <<{}", heredoc.name));
        sources.push(CopySource::Heredoc {
            name: heredoc.name.clone(),
            contents,
        });
    }
    let dest_written = word(spec.dest)?;
    created_by.push(' ');
    created_by.push_str(&dest_written);
    created_by.push_str(" # buildkit");
    let dir_hint = dest_written.ends_with('/')
        || dest_written == "."
        || dest_written.ends_with("/.")
        || dest_written.is_empty();
    if sources.len() > 1 && !dest_written.ends_with('/') {
        return Err(PlanError::DestinationNotDirectory {
            location: location.clone(),
            instruction,
        });
    }
    let workdir = if config.working_dir.is_empty() {
        "/"
    } else {
        &config.working_dir
    };
    let mut dest = if dest_written.starts_with('/') {
        clean_path(&dest_written)
    } else {
        clean_path(&format!("{workdir}/{dest_written}"))
    };
    if dir_hint && dest != "/" {
        dest.push('/');
    }
    let exclude = spec
        .exclude
        .iter()
        .map(|pattern| word(pattern))
        .collect::<Result<Vec<_>, _>>()?;
    let op = CopyOp {
        add: spec.add,
        sources,
        dest,
        chown: spec.chown.map(word).transpose()?,
        chmod: spec.chmod.map(word).transpose()?,
        link: spec.link,
        parents: spec.parents,
        exclude,
        checksum: spec.checksum.map(word).transpose()?,
        keep_git_dir: spec.keep_git_dir,
    };
    Ok((op, created_by))
}

/// Go's `path.Clean` for absolute paths: no `.`/`..`/empty elements, no trailing slash.
pub(crate) fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// WORKDIR: absolute paths replace, relative ones are joined to the current directory.
fn resolve_workdir(current: &str, path: &str) -> String {
    if path.starts_with('/') {
        clean_path(path)
    } else {
        let current = if current.is_empty() { "/" } else { current };
        clean_path(&format!("{current}/{path}"))
    }
}

/// docker's `nat.ParsePortSpecs` for EXPOSE: `80`, `80/udp`, `8000-8002/tcp`,
/// `ip:host:container`; returns the `port/proto` keys.
fn parse_port_spec(spec: &str) -> Option<Vec<String>> {
    let (port, proto) = match spec.rsplit_once('/') {
        Some((port, proto)) => (port, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return None;
    }
    let container = port.rsplit(':').next()?;
    let (start, end) = match container.split_once('-') {
        Some((start, end)) => (start.parse::<u16>().ok()?, end.parse::<u16>().ok()?),
        None => {
            let port = container.parse::<u16>().ok()?;
            (port, port)
        }
    };
    if end < start {
        return None;
    }
    Some(
        (start..=end)
            .map(|port| format!("{port}/{proto}"))
            .collect(),
    )
}

/// moby's `signal.ParseSignal`: a number or a known name, with or without `SIG`.
fn valid_signal(signal: &str) -> bool {
    const NAMES: [&str; 31] = [
        "ABRT", "ALRM", "BUS", "CHLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
        "PIPE", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
        "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU",
    ];
    if let Ok(number) = signal.parse::<u32>() {
        return number > 0 && number < 65;
    }
    let name = signal.strip_prefix("SIG").unwrap_or(signal);
    NAMES.contains(&name)
        || name == "XFSZ"
        || name.starts_with("RTMIN")
        || name.starts_with("RTMAX")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_clean_like_go() {
        assert_eq!(clean_path("/a/./b/../c/"), "/a/c");
        assert_eq!(clean_path("/../x"), "/x");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(resolve_workdir("", "app"), "/app");
        assert_eq!(resolve_workdir("/app", "sub/"), "/app/sub");
        assert_eq!(resolve_workdir("/app", "/abs"), "/abs");
    }

    #[test]
    fn port_specs() {
        assert_eq!(parse_port_spec("80"), Some(vec!["80/tcp".to_string()]));
        assert_eq!(parse_port_spec("53/UDP"), Some(vec!["53/udp".to_string()]));
        assert_eq!(
            parse_port_spec("8000-8001"),
            Some(vec!["8000/tcp".to_string(), "8001/tcp".to_string()])
        );
        assert_eq!(parse_port_spec("http"), None);
        assert_eq!(parse_port_spec("80/foo"), None);
    }

    #[test]
    fn signals() {
        assert!(valid_signal("SIGTERM"));
        assert!(valid_signal("KILL"));
        assert!(valid_signal("9"));
        assert!(!valid_signal("SIGNOPE"));
        assert!(!valid_signal("0"));
    }
}
