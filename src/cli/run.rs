//! `kiln run` and the hidden `kiln init` container set-up helper.
//!
//! `kiln run` turns docker-style flags plus the image's config (ENTRYPOINT, CMD, Env,
//! WorkingDir, User) into a `ContainerSpec`, prepares a root file system in
//! `<root>/containers/<id>/`, runs the container with the terminal's signals forwarded to it,
//! removes the state directory and exits with the container's exit code (125/126/127 when the
//! container could not start, as `docker run`). IMAGE is resolved in the store, whose layer
//! snapshots become the overlay's lower dirs. With `--rootfs`, IMAGE is a root file system
//! directory instead (podman's flag), used read-only as the single lower layer.

use super::{ExitCode, GlobalOpts};
use crate::executor::container::{
    self, BindMount, CommandLine, ContainerError, ContainerIo, ContainerSpec, NetworkMode, Rootfs,
    StorageDriver,
};
use anyhow::{bail, Context};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Arguments of `kiln run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Remove the container when it exits (kiln always does; accepted for docker compatibility).
    #[arg(long)]
    pub rm: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to pass kiln's own value).
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines, # comments).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Bind-mount a host path: HOST:CONTAINER[:ro|:rw].
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    pub volume: Vec<String>,
    /// Working directory inside the container (created if missing).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User as name|uid[:group|gid], resolved in the image's /etc/passwd and /etc/group.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Override the image's ENTRYPOINT (an empty string clears it).
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Network: host (share kiln's) or none (loopback only).
    #[arg(long, default_value = "host", value_name = "MODE")]
    pub network: String,
    /// Container hostname (default: the container id).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Keep stdin open and connect it to the container.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Snapshotter: overlay, copy, or auto (overlay when the kernel and file system allow).
    #[arg(
        long = "storage-driver",
        default_value = "auto",
        env = "KILN_STORAGE_DRIVER"
    )]
    pub storage_driver: String,
    /// IMAGE is a root file system directory, not an image name.
    #[arg(long)]
    pub rootfs: bool,
    /// Image to run (or, with --rootfs, a directory).
    pub image: String,
    /// Command and arguments (replace the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Arguments of the hidden `kiln init`: the container spec arrives as JSON on an inherited fd.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// File descriptor holding the container spec.
    #[arg(long, value_name = "FD")]
    pub spec_fd: i32,
}

/// What an image contributes to a container: its layers and the config fields `docker run`
/// honours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    /// Layer snapshot directories, bottom first.
    pub lowerdirs: Vec<PathBuf>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// Docker's rule: `--entrypoint` replaces ENTRYPOINT and drops the image's CMD; a command on
/// the line replaces CMD; the result is ENTRYPOINT + CMD, run in exec form.
pub fn command_line(
    image: &ImageDefaults,
    entrypoint: Option<&str>,
    command: &[String],
) -> Vec<String> {
    let (entrypoint, image_cmd): (Vec<String>, &[String]) = match entrypoint {
        Some("") => (Vec::new(), &[]),
        Some(entrypoint) => (vec![entrypoint.to_string()], &[]),
        None => (image.entrypoint.clone(), &image.cmd),
    };
    let mut argv = entrypoint;
    if command.is_empty() {
        argv.extend(image_cmd.iter().cloned());
    } else {
        argv.extend(command.iter().cloned());
    }
    argv
}

/// Image env first, then `--env-file`s, then `-e`; a later KEY replaces an earlier one.
pub fn merge_env(
    image_env: &[String],
    env_files: &[PathBuf],
    env_flags: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut env: Vec<String> = image_env.to_vec();
    let mut set = |entry: &str| {
        let entry = match entry.split_once('=') {
            Some(_) => entry.to_string(),
            None => match std::env::var(entry) {
                Ok(value) => format!("{entry}={value}"),
                // docker drops a bare KEY that kiln's environment does not have.
                Err(_) => return,
            },
        };
        let key = entry.split('=').next().unwrap_or_default().to_string();
        env.retain(|existing| existing.split('=').next() != Some(key.as_str()));
        env.push(entry);
    };
    for file in env_files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("read env file {}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('=') {
                bail!(
                    "{}:{}: invalid environment line {line:?}",
                    file.display(),
                    n + 1
                );
            }
            set(line);
        }
    }
    for entry in env_flags {
        if entry.is_empty() || entry.starts_with('=') {
            bail!("invalid environment variable {entry:?}");
        }
        set(entry);
    }
    Ok(env)
}

/// Parses `-v HOST:CONTAINER[:ro|:rw]`; HOST is made absolute from kiln's working directory.
pub fn parse_volume(spec: &str) -> anyhow::Result<BindMount> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, destination, read_only) = match parts.as_slice() {
        [source, destination] => (*source, *destination, false),
        [source, destination, "ro"] => (*source, *destination, true),
        [source, destination, "rw"] => (*source, *destination, false),
        _ => bail!("invalid volume {spec:?}: expected HOST:CONTAINER[:ro|:rw]"),
    };
    if source.is_empty() || !destination.starts_with('/') {
        bail!("invalid volume {spec:?}: the host path must be given and the container path must be absolute");
    }
    let source = std::path::absolute(source)
        .with_context(|| format!("invalid volume {spec:?}: host path"))?;
    if std::fs::symlink_metadata(&source).is_err() {
        bail!(
            "invalid volume {spec:?}: bind source path does not exist: {}",
            source.display()
        );
    }
    Ok(BindMount {
        source,
        destination: destination.to_string(),
        read_only,
    })
}

fn container_id() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().gen();
    hex::encode(bytes)
}

/// The config fields `docker run` honours, from a stored image.
pub fn image_config_defaults(config: &crate::store::ImageConfig) -> ImageDefaults {
    let Some(config) = config.oci.config() else {
        return ImageDefaults::default();
    };
    ImageDefaults {
        lowerdirs: Vec::new(),
        entrypoint: config.entrypoint().clone().unwrap_or_default(),
        cmd: config.cmd().clone().unwrap_or_default(),
        env: config.env().clone().unwrap_or_default(),
        working_dir: config.working_dir().clone().unwrap_or_default(),
        user: config.user().clone().unwrap_or_default(),
    }
}

/// Resolves IMAGE: a stored image (its config and its layers unpacked as snapshots), or with
/// `--rootfs` a directory. The returned pin keeps `prune` away from the snapshots while the
/// container runs.
fn image_defaults(
    args: &RunArgs,
    global: &GlobalOpts,
) -> anyhow::Result<(ImageDefaults, Option<crate::store::Store>)> {
    if args.rootfs {
        let dir = PathBuf::from(&args.image);
        if !dir.is_dir() {
            bail!("root file system {} is not a directory", dir.display());
        }
        return Ok((
            ImageDefaults {
                lowerdirs: vec![std::path::absolute(&dir)?],
                ..ImageDefaults::default()
            },
            None,
        ));
    }
    let root = global.store_root();
    let store = crate::store::Store::open(&root)
        .with_context(|| format!("cannot open store {}", root.display()))?;
    let image = store
        .resolve(&args.image)
        .with_context(|| format!("unable to find image {:?}", args.image))?;
    let mut lowerdirs = store
        .snapshot_lowerdirs(&image)
        .with_context(|| format!("cannot unpack the layers of {}", args.image))?;
    // The store lists them top first (overlay's lowerdir order); Rootfs wants bottom first.
    lowerdirs.reverse();
    let mut defaults = image_config_defaults(&image.config);
    defaults.lowerdirs = lowerdirs;
    Ok((defaults, Some(store)))
}

/// Signals `kiln run` passes on to the container.
const FORWARDED: [nix::sys::signal::Signal; 5] = [
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGHUP,
    nix::sys::signal::Signal::SIGQUIT,
    nix::sys::signal::Signal::SIGWINCH,
];

/// Blocks the forwarded signals in this (still single-threaded) process and starts a thread
/// that sends each one to the container once it runs. SIGWINCH resizes the container's tty
/// instead (the kernel then signals the processes on it).
fn forward_signals() -> Arc<Mutex<Option<container::ContainerControl>>> {
    let mut set = nix::sys::signal::SigSet::empty();
    for signal in FORWARDED {
        set.add(signal);
    }
    let _ = set.thread_block();
    let running: Arc<Mutex<Option<container::ContainerControl>>> = Arc::new(Mutex::new(None));
    let thread_running = Arc::clone(&running);
    std::thread::spawn(move || loop {
        let Ok(signal) = set.wait() else { continue };
        let guard = match thread_running.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match (guard.as_ref(), signal) {
            (Some(running), nix::sys::signal::Signal::SIGWINCH) => {
                running.resize_tty_from(std::io::stdout().as_raw_fd())
            }
            (Some(running), signal) => running.signal(signal as i32),
            (None, nix::sys::signal::Signal::SIGWINCH) => {}
            // Before the container exists: behave as if unhandled.
            (None, signal) => std::process::exit(128 + signal as i32),
        }
    });
    running
}

pub fn run(args: RunArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let to_exit = |err: anyhow::Error| -> anyhow::Error {
        ExitCode {
            code: 125,
            message: format!("{err:#}"),
        }
        .into()
    };
    let network: NetworkMode = args
        .network
        .parse()
        .map_err(|e: ContainerError| to_exit(e.into()))?;
    let driver: StorageDriver = args
        .storage_driver
        .parse()
        .map_err(|e: ContainerError| to_exit(e.into()))?;
    let mounts = args
        .volume
        .iter()
        .map(|volume| parse_volume(volume))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(to_exit)?;
    let (image, store) = image_defaults(&args, global).map_err(to_exit)?;
    crate::store::Store::sweep_some(store.as_ref(), |line| eprintln!("{line}"));
    let _pin = match &store {
        Some(store) => Some(store.pin().map_err(|err| to_exit(err.into()))?),
        None => None,
    };
    let env = merge_env(&image.env, &args.env_file, &args.env).map_err(to_exit)?;
    let argv = command_line(&image, args.entrypoint.as_deref(), &args.command);
    if argv.is_empty() {
        return Err(to_exit(ContainerError::EmptyCommand.into()));
    }
    let id = container_id();
    let spec = ContainerSpec {
        command: CommandLine::Exec(argv),
        env,
        cwd: args.workdir.clone().unwrap_or(image.working_dir.clone()),
        user: args.user.clone().unwrap_or(image.user.clone()),
        hostname: args
            .hostname
            .clone()
            .unwrap_or_else(|| id[..12].to_string()),
        network,
        mounts,
        extra_mounts: Vec::new(),
        tty: args.tty,
        stdin: args.interactive,
        kiln_binary: None,
    };

    let containers_dir = match &store {
        Some(store) => store.containers_dir(),
        None => global.store_root().join("containers"),
    };
    std::fs::create_dir_all(&containers_dir)
        .with_context(|| format!("create {}", containers_dir.display()))
        .map_err(to_exit)?;
    let state_dir: PathBuf = containers_dir.join(crate::store::owned_name(&id));
    let rootfs =
        Rootfs::prepare(&state_dir, &image.lowerdirs, driver).map_err(|err| to_exit(err.into()))?;
    let result = run_prepared(&rootfs, &spec);
    let cleaned = container::cleanup(rootfs);
    let status = result.map_err(|err| -> anyhow::Error {
        ExitCode {
            code: err.exit_code(),
            message: err.to_string(),
        }
        .into()
    })?;
    cleaned.map_err(|err| to_exit(err.into()))?;
    Ok(status)
}

fn run_prepared(rootfs: &Rootfs, spec: &ContainerSpec) -> Result<i32, ContainerError> {
    let slot = forward_signals();
    let running = container::spawn(rootfs, spec, ContainerIo::inherit())?;
    match slot.lock() {
        Ok(mut guard) => *guard = Some(running.control()),
        Err(poisoned) => *poisoned.into_inner() = Some(running.control()),
    }
    Ok(running.wait()?.code)
}

/// Runs the container helper; its exit code is the container's.
pub fn init(args: InitArgs) -> anyhow::Result<i32> {
    Ok(container::init_main(args.spec_fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/entry".into(), "-x".into()],
            cmd: vec!["default".into()],
            ..ImageDefaults::default()
        }
    }

    fn check(entrypoint: Option<&str>, command: &[&str], expect: &[&str]) {
        let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        assert_eq!(command_line(&image(), entrypoint, &command), expect);
    }

    #[test]
    fn entrypoint_and_cmd_follow_docker() {
        check(None, &[], &["/entry", "-x", "default"]);
        check(None, &["ls", "-l"], &["/entry", "-x", "ls", "-l"]);
        check(Some("/bin/sh"), &[], &["/bin/sh"]);
        check(Some("/bin/sh"), &["-c", "id"], &["/bin/sh", "-c", "id"]);
        check(Some(""), &["id"], &["id"]);
        let no_entrypoint = ImageDefaults {
            cmd: vec!["sh".into()],
            ..ImageDefaults::default()
        };
        assert_eq!(command_line(&no_entrypoint, None, &[]), vec!["sh"]);
    }

    #[test]
    fn env_flags_override_the_image() {
        let scratch = tempfile::tempdir().unwrap();
        let file = scratch.path().join("env");
        std::fs::write(&file, "# comment\nB=file\nC=file\n\n").unwrap();
        let env = merge_env(
            &["A=image".into(), "B=image".into()],
            &[file],
            &["C=flag".into(), "D=".into()],
        )
        .unwrap();
        assert_eq!(env, vec!["A=image", "B=file", "C=flag", "D="]);
        assert!(merge_env(&[], &[], &["=x".into()]).is_err());
    }

    #[test]
    fn volumes_parse_with_modes() {
        let volume = parse_volume("/tmp:/data:ro").unwrap();
        assert_eq!(volume.source, PathBuf::from("/tmp"));
        assert_eq!(volume.destination, "/data");
        assert!(volume.read_only);
        assert!(!parse_volume("/tmp:/data").unwrap().read_only);
        assert!(parse_volume("/tmp:data").is_err());
        assert!(parse_volume("/tmp:/data:xx").is_err());
        let err = parse_volume("/no/such/kiln/dir:/data")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bind source path does not exist: /no/such/kiln/dir"),
            "{err}"
        );
    }
}
