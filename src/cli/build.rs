//! `kiln build`: reads the Dockerfile, plans it against the images in the store, scans the
//! context, runs the graph (`executor::build`) and names the image. Owns the flags and all
//! output: progress on stderr (`cli::progress`), only the image ID on stdout with `-q`.

use super::progress::{self, ProgressMode};
use super::{ExitCode, GlobalOpts, EXIT_FAILURE, EXIT_USAGE};
use crate::context::{ContextIndex, IgnoreFile};
use crate::error_chain;
use crate::executor::build::image::{RegistryPull, StepOffsetSink, StoreResolver};
use crate::executor::build::mounts::{
    parse_secret_flag, parse_ssh_flag, SecretSource, SessionInputs, SshAgent, SshSource,
};
use crate::executor::build::progress::{Event, ProgressSink};
use crate::executor::build::remote_cache::{self, CacheExport, CacheImport, RemoteCache};
use crate::executor::build::{self, BuildInputs, ExecOptions};
use crate::executor::container::NetworkMode;
use crate::planner::{self, BuildOptions, Network};
use crate::registry::RegistryConfig;
use crate::store::{parse_reference, Store};
use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Arguments of `kiln build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Name the image (repeatable), e.g. `-t app:1 -t app:latest`.
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile); `-` reads it from stdin. It may lie
    /// outside the context.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// A build argument (repeatable); `KEY` alone takes the value from the environment.
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,
    /// Build this stage (and what it needs) instead of the last one.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Run every step; do not use the build cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Always ask the registry for tagged base images and use what it serves now (a base
    /// image missing from the store is pulled with or without this flag). Fails when the
    /// registry cannot be reached.
    #[arg(long)]
    pub pull: bool,
    /// Set an image label (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Network of RUN steps: host (default, as BuildKit without CNI) or none.
    #[arg(long, value_name = "MODE", default_value = "host")]
    pub network: String,
    /// Progress output: auto (live view on a terminal, else plain), tty, plain, quiet, rawjson.
    #[arg(long, value_enum, env = "BUILDKIT_PROGRESS", default_value = "auto")]
    pub progress: ProgressMode,
    /// Print only the image ID on stdout; no progress output.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Write the image ID to this file.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Export the build cache (repeatable): `type=registry,ref=HOST/REPO:TAG[,mode=min|max]
    /// [,ignore-error=true]` pushes it to a registry as an OCI artifact; mode=min (default)
    /// exports the steps of the final image's layers, mode=max every step of every stage; a
    /// failed export fails the command (after the image is stored) unless ignore-error=true.
    /// `type=inline` writes the final image's cache records into its config.
    #[arg(long = "cache-to", value_name = "CACHE")]
    pub cache_to: Vec<String>,
    /// Import a build cache (repeatable): `type=registry,ref=REF` (a `--cache-to type=registry`
    /// artifact, or an image built with `--cache-to type=inline`), or just `REF`, which also
    /// takes such an image from the local store. Steps whose keys match are cache hits; only
    /// their layers are downloaded. An unreachable or missing cache is a warning and the build
    /// goes on without it.
    #[arg(long = "cache-from", value_name = "CACHE")]
    pub cache_from: Vec<String>,
    /// Steps to run at once at most (default: as many as are ready).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub jobs: usize,
    /// A secret RUN steps may mount (repeatable): `id=ID,src=FILE` or `id=ID,env=VAR`
    /// (`id=VAR` alone reads the variable). Never stored in a layer, the cache or the history.
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,
    /// An ssh agent RUN steps may mount (repeatable): `default` (uses $SSH_AUTH_SOCK),
    /// `ID=SOCKET`, or `ID=KEY[,KEY]` (key files, loaded into an ssh-agent run for the build).
    #[arg(long = "ssh", value_name = "SPEC")]
    pub ssh: Vec<String>,
    #[command(flatten)]
    pub registry_opts: super::registry::RegistryOpts,
    /// The build context directory, or `-` for a Dockerfile on stdin and no context.
    #[arg(value_name = "CONTEXT")]
    pub context: String,
}

fn read_dockerfile(args: &BuildArgs) -> anyhow::Result<(String, String, Option<PathBuf>)> {
    let from_stdin =
        args.context == "-" && args.file.is_none() || args.file.as_deref() == Some(Path::new("-"));
    if from_stdin {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("read the Dockerfile from stdin")?;
        let text = String::from_utf8(bytes).context("the Dockerfile on stdin is not UTF-8")?;
        return Ok((text, "Dockerfile".to_string(), None));
    }
    let path = match &args.file {
        Some(file) => file.clone(),
        None => Path::new(&args.context).join("Dockerfile"),
    };
    let bytes =
        std::fs::read(&path).with_context(|| format!("read Dockerfile {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("Dockerfile {} is not UTF-8", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Dockerfile".into());
    Ok((text, name, Some(path)))
}

fn split_pair(text: &str) -> (String, Option<String>) {
    match text.split_once('=') {
        Some((key, value)) => (key.to_string(), Some(value.to_string())),
        None => (text.to_string(), None),
    }
}

pub fn run(args: BuildArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let network: NetworkMode = args
        .network
        .parse()
        .map_err(|err| anyhow::anyhow!("--network: {err}"))?;
    let mut labels = Vec::new();
    for label in &args.labels {
        match split_pair(label) {
            (key, Some(value)) if !key.is_empty() => labels.push((key, value)),
            _ => bail!("--label {label:?}: expected KEY=VALUE"),
        }
    }
    let tags = args
        .tags
        .iter()
        .map(|tag| parse_reference(tag).with_context(|| format!("-t {tag}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache_to = args
        .cache_to
        .iter()
        .map(|text| remote_cache::parse_cache_to(text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage_error)?;
    let cache_from = args
        .cache_from
        .iter()
        .map(|text| remote_cache::parse_cache_from(text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage_error)?;
    let mode = if args.quiet {
        ProgressMode::Quiet
    } else {
        args.progress
    };
    let sink: Box<dyn ProgressSink> = progress::sink(mode);

    let (source, file_name, dockerfile_path) = read_dockerfile(&args)?;
    let dockerfile = crate::parser::parse(&source, &file_name)?;
    for warning in &dockerfile.warnings {
        sink.event(Event::Note {
            message: format!(
                "{file_name}:{}: warning: {} ({})",
                warning.span.end_line, warning.message, warning.detail
            ),
        });
    }
    let store = Store::open(&global.store_root())
        .with_context(|| format!("open store {}", global.store_root().display()))?;
    store.sweep_logged(|message| sink.event(Event::Note { message }));
    let options = BuildOptions {
        file_name: file_name.clone(),
        source: None,
        target: args.target.clone(),
        build_args: args.build_args.iter().map(|a| split_pair(a)).collect(),
        labels,
        platform: None,
        network: match network {
            NetworkMode::Host => Network::Default,
            NetworkMode::None => Network::None,
        },
        no_cache: args.no_cache,
    };
    let registry_pull = RegistryPull {
        config: args.registry_opts.config(),
        always: args.pull,
    };
    let resolver = StoreResolver::with_registry(&store, registry_pull, sink.as_ref());
    let graph = planner::plan(&dockerfile, &options, &resolver).map_err(|err| match err {
        // Its message already holds the resolver's whole chain.
        planner::PlanError::Resolve { .. } => anyhow::anyhow!("{err}"),
        other => other.into(),
    })?;
    // The executor numbers its steps from 1; the pulls took the first numbers.
    let sink = StepOffsetSink {
        inner: sink.as_ref(),
        offset: resolver.n_progress_steps(),
    };
    for warning in &graph.warnings {
        sink.event(Event::Note {
            message: format!("warning: {warning}"),
        });
    }

    let context_index = if args.context == "-" {
        None
    } else {
        let context_dir = PathBuf::from(&args.context);
        if !context_dir.is_dir() {
            bail!("build context {} is not a directory", context_dir.display());
        }
        let ignore = match &dockerfile_path {
            Some(path) => IgnoreFile::for_dockerfile(&context_dir, path)?,
            None => IgnoreFile::for_context(&context_dir)?,
        };
        let matcher = ignore.matcher()?;
        let stat_cache = store.cache_dir().join("context-stat-cache");
        Some(
            ContextIndex::scan(&context_dir, &matcher, Some(&stat_cache))
                .with_context(|| format!("scan build context {}", context_dir.display()))?,
        )
    };
    let remote = import_caches(&store, &args.registry_opts.config(), &cache_from, &sink);
    let inputs = BuildInputs {
        context: context_index.as_ref(),
        images: resolver.images(),
        session: session_inputs(&args, &store)?,
        remote_cache: (!remote.is_empty()).then_some(&remote),
    };
    let exec_options = ExecOptions {
        jobs: args.jobs,
        no_cache: args.no_cache,
        network,
        kiln_binary: None,
        inline_cache: cache_to.contains(&CacheExport::Inline),
        all_stages: cache_to.iter().any(|export| {
            matches!(
                export,
                CacheExport::Registry {
                    mode: remote_cache::CacheMode::Max,
                    ..
                }
            )
        }),
    };
    let result = match build::execute(&graph, &store, &inputs, &exec_options, &sink) {
        Ok(result) => result,
        Err(err) => {
            return Err(ExitCode {
                code: EXIT_FAILURE,
                message: format!("build failed: {}", error_chain(&err)),
            }
            .into())
        }
    };
    let id = result.image.id();
    sink.event(Event::Note {
        message: format!(
            "writing image {id} done ({} steps, {} cached)",
            result.n_steps, result.n_cached
        ),
    });
    if !tags.is_empty() {
        store
            .set_names(&tags, &result.image.manifest_digest)
            .context("name the image")?;
        for tag in &tags {
            sink.event(Event::Note {
                message: format!("naming to {}", tag.whole()),
            });
        }
    }
    if let Some(path) = &args.iidfile {
        std::fs::write(path, id.to_string())
            .with_context(|| format!("write --iidfile {}", path.display()))?;
    }
    if args.quiet {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{id}")?;
    }
    export_caches(
        &store,
        &args.registry_opts.config(),
        &cache_to,
        &result.steps,
        &remote,
        &id,
        &sink,
    )?;
    Ok(0)
}

/// `--secret` and `--ssh` as the executor's session inputs.
fn session_inputs(args: &BuildArgs, store: &Store) -> anyhow::Result<SessionInputs> {
    let mut session = SessionInputs::default();
    for text in &args.secrets {
        let (id, source) =
            parse_secret_flag(text).map_err(|err| anyhow::anyhow!("--secret {text:?}: {err}"))?;
        // As buildx: a missing file is a usage error before anything runs.
        if let SecretSource::File(path) = &source {
            std::fs::metadata(path)
                .with_context(|| format!("--secret {text:?}: {}", path.display()))?;
        }
        session.secrets.insert(id, source);
    }
    let agent = std::env::var("SSH_AUTH_SOCK").ok();
    for text in &args.ssh {
        let (id, source) = parse_ssh_flag(text, agent.as_deref())
            .map_err(|err| anyhow::anyhow!("--ssh {text:?}: {err}"))?;
        let socket = match source {
            SshSource::Socket(socket) => socket,
            SshSource::Keys(keys) => {
                std::fs::create_dir_all(store.tmp_dir())
                    .with_context(|| format!("create {}", store.tmp_dir().display()))?;
                let agent = SshAgent::start(&keys, &store.tmp_dir())
                    .map_err(|err| anyhow::anyhow!("--ssh {text:?}: {err}"))?;
                let socket = agent.socket().to_path_buf();
                session.agents.push(std::sync::Arc::new(agent));
                socket
            }
        };
        session.ssh.insert(id, socket);
    }
    Ok(session)
}

/// A malformed flag value is a usage error (exit 2), as clap's own.
fn usage_error(err: remote_cache::RemoteCacheError) -> anyhow::Error {
    ExitCode {
        code: EXIT_USAGE,
        message: err.to_string(),
    }
    .into()
}

/// Imports every `--cache-from` cache; one that cannot be read is a warning (as in BuildKit):
/// the build goes on without it.
/// The cache registries are reached as the base-image pulls are (`--insecure-registry`, plain
/// HTTP for localhost/127.0.0.0/8).
fn import_caches(
    store: &Store,
    registry: &RegistryConfig,
    imports: &[CacheImport],
    sink: &dyn ProgressSink,
) -> RemoteCache {
    let mut remote = RemoteCache::new();
    for import in imports {
        match remote.import(store, registry, import) {
            Ok(n_records) => sink.event(Event::Note {
                message: format!(
                    "importing cache manifest from {} ({n_records} records)",
                    import.reference
                ),
            }),
            Err(err) => sink.event(Event::Note {
                message: format!(
                    "warning: --cache-from {}: cannot import the cache, building without it: {}",
                    import.reference,
                    error_chain(&err)
                ),
            }),
        }
    }
    remote
}

/// Exports the build's cache to every `--cache-to`. Runs after the image is stored and named,
/// so a failure here leaves the image in place and says so.
fn export_caches(
    store: &Store,
    registry: &RegistryConfig,
    exports: &[CacheExport],
    steps: &[crate::executor::build::StepKey],
    imported: &RemoteCache,
    id: &crate::digest::Digest,
    sink: &dyn ProgressSink,
) -> anyhow::Result<()> {
    for export in exports {
        // type=inline went into the image config during the build.
        let CacheExport::Registry {
            reference,
            mode,
            ignore_error,
        } = export
        else {
            continue;
        };
        let records = remote_cache::records_to_export(store, steps, *mode);
        match remote_cache::export(
            store,
            registry,
            reference,
            &records,
            Some(imported),
        ) {
            Ok(report) => sink.event(Event::Note {
                message: format!(
                    "exporting cache to {} done: {} records, {} layers ({} already there, {} mounted), manifest {}",
                    reference,
                    report.n_records,
                    report.n_layers,
                    report.n_layers_present,
                    report.n_layers_mounted,
                    report.manifest_digest
                ),
            }),
            Err(err) if *ignore_error => sink.event(Event::Note {
                message: format!(
                    "warning: --cache-to {}: cache export failed (ignore-error=true): {}",
                    reference,
                    error_chain(&err)
                ),
            }),
            Err(err) => {
                return Err(ExitCode {
                    code: EXIT_FAILURE,
                    message: format!(
                        "--cache-to {}: cache export failed (the image {id} was built and stored): {}",
                        reference,
                        error_chain(&err)
                    ),
                }
                .into())
            }
        }
    }
    Ok(())
}
