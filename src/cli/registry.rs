//! The registry commands: pull, push, login, logout.
//!
//! `pull` and `push` move whole images between the store and a registry
//! (`registry::image`); progress lines go to stderr, the pulled name or pushed digest to stdout.
//!
//! `login` checks the credentials against the registry's `/v2/` (Basic, or the token endpoint
//! the registry names) before it stores them in Docker's config.json, so a typo never gets
//! saved. Passwords are read from `-p`, `--password-stdin` or a no-echo prompt and only ever
//! held in `Secret`.

use super::GlobalOpts;
use crate::digest::Digest;
use crate::registry::image::{pull_image, push_image, PushCompression};
use crate::registry::reference::normalize_registry;
use crate::registry::transfer::BlobStatus;
use crate::registry::{
    Client, Credential, DockerConfig, ImageRef, Platform, RegistryConfig, Secret,
};
use crate::store::Store;
use anyhow::{bail, Context as _};
use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};

/// Options every registry command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryOpts {
    /// A registry (HOST or HOST:PORT) to reach over plain HTTP instead of HTTPS (repeatable).
    /// localhost and 127.0.0.0/8 always are.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
}

impl RegistryOpts {
    pub fn config(&self) -> RegistryConfig {
        RegistryConfig {
            insecure: self
                .insecure_registry
                .iter()
                .map(|r| normalize_registry(r))
                .collect(),
            ..RegistryConfig::default()
        }
    }
}

fn client_for(image_ref: &ImageRef, opts: &RegistryOpts) -> anyhow::Result<Client> {
    Ok(Client::from_environment(image_ref, &opts.config())?)
}

fn open_store(global: &GlobalOpts) -> anyhow::Result<Store> {
    let root = global.store_root();
    Store::open(&root).with_context(|| format!("cannot open store {}", root.display()))
}

/// Arguments of `kiln pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The image: NAME, NAME:TAG or NAME@DIGEST (docker.io/library/ is implied for short names).
    #[arg(value_name = "NAME[:TAG|@DIGEST]")]
    pub name: String,
    /// The platform to choose from a multi-platform image (os/arch[/variant]). Default: this
    /// machine's.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Print only the image name.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry_opts: RegistryOpts,
}

pub fn pull(args: PullArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let image_ref: ImageRef = args.name.parse()?;
    let platform = match &args.platform {
        Some(text) => text.parse::<Platform>().map_err(anyhow::Error::msg)?,
        None => Platform::host(),
    };
    let store = open_store(global)?;
    let client = client_for(&image_ref, &args.registry_opts)?;
    if !args.quiet {
        eprintln!(
            "{}: Pulling from {}",
            image_ref.manifest_reference(),
            image_ref.repository()
        );
    }
    let config = args.registry_opts.config();
    let quiet = args.quiet;
    let progress = move |digest: &Digest, status: BlobStatus| {
        if !quiet {
            eprintln!("{}: {}", digest.short(), status_text(status, true));
        }
    };
    let report = pull_image(
        &store,
        &client,
        &image_ref,
        &platform,
        config.parallel_transfers,
        &progress,
    )
    .with_context(|| format!("pull {image_ref} failed"))?;
    if !args.quiet {
        eprintln!(
            "Digest: {}",
            report
                .index_digest
                .as_ref()
                .unwrap_or(&report.manifest_digest)
        );
        if report.fetched.is_empty() {
            eprintln!("Status: Image is up to date for {}", report.name);
        } else {
            eprintln!("Status: Downloaded newer image for {}", report.name);
        }
    }
    println!("{}", report.name);
    Ok(0)
}

/// Docker's words for what happened to a blob.
fn status_text(status: BlobStatus, pulling: bool) -> &'static str {
    match status {
        BlobStatus::AlreadyExists if pulling => "Already exists",
        BlobStatus::AlreadyExists => "Layer already exists",
        BlobStatus::Downloaded => "Pull complete",
        BlobStatus::Mounted => "Mounted",
        BlobStatus::Pushed => "Pushed",
        BlobStatus::Failed => "Failed",
    }
}

/// Layer compression for `kiln push --compression`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
}

/// Arguments of `kiln push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The stored image to push; without DEST, also its name in the registry: NAME or NAME:TAG.
    #[arg(value_name = "NAME[:TAG]")]
    pub name: String,
    /// Push it under this name instead (as `buildah push IMAGE DEST`); the store's names are
    /// not changed.
    #[arg(value_name = "DEST[:TAG]")]
    pub destination: Option<String>,
    /// Recompress layers to this before pushing (the manifest then becomes an OCI manifest).
    /// Default: push layers as they are stored.
    #[arg(long, value_enum)]
    pub compression: Option<CompressionArg>,
    /// Print only the pushed manifest digest.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry_opts: RegistryOpts,
}

pub fn push(args: PushArgs, global: &GlobalOpts) -> anyhow::Result<i32> {
    let image_ref: ImageRef = args.destination.as_deref().unwrap_or(&args.name).parse()?;
    let store = open_store(global)?;
    let client = client_for(&image_ref, &args.registry_opts)?;
    let compression = args.compression.map(|c| match c {
        CompressionArg::Gzip => PushCompression::Gzip,
        CompressionArg::Zstd => PushCompression::Zstd,
    });
    if !args.quiet {
        eprintln!(
            "The push refers to repository [{}/{}]",
            image_ref.registry(),
            image_ref.repository()
        );
    }
    let config = args.registry_opts.config();
    let quiet = args.quiet;
    let progress = move |digest: &Digest, status: BlobStatus| {
        if !quiet {
            eprintln!("{}: {}", digest.short(), status_text(status, false));
        }
    };
    let report = push_image(
        &store,
        &client,
        &args.name,
        &image_ref,
        compression,
        config.parallel_transfers,
        &progress,
    )
    .with_context(|| format!("push {image_ref} failed"))?;
    if !args.quiet {
        eprintln!(
            "{}: digest: {} size: {}",
            image_ref.manifest_reference(),
            report.manifest_digest,
            report.manifest_size
        );
    }
    println!("{}", report.manifest_digest);
    Ok(0)
}

/// Arguments of `kiln login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Username.
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (visible to other users in the process list: prefer --password-stdin).
    #[arg(short = 'p', long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// The registry (default: docker.io).
    #[arg(value_name = "REGISTRY")]
    pub registry: Option<String>,
    #[command(flatten)]
    pub registry_opts: RegistryOpts,
}

pub fn login(args: LoginArgs, _global: &GlobalOpts) -> anyhow::Result<i32> {
    let registry = normalize_registry(args.registry.as_deref().unwrap_or("docker.io"));
    if registry.is_empty() {
        bail!("login: empty registry name");
    }
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let username = match args.username {
        Some(username) => username,
        None if interactive && !args.password_stdin => prompt("Username: ", true)?,
        None => bail!("login to {registry}: a username is required (-u USER)"),
    };
    if username.is_empty() {
        bail!("login to {registry}: empty username");
    }
    let password = if let Some(password) = args.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        Secret::new(password)
    } else if args.password_stdin {
        let mut text = String::new();
        stdin
            .lock()
            .read_to_string(&mut text)
            .context("failed to read the password from standard input")?;
        Secret::new(text.trim_end_matches(['\n', '\r']).to_string())
    } else if interactive {
        Secret::new(prompt("Password: ", false)?)
    } else {
        bail!("login to {registry}: no password: use --password-stdin or -p");
    };
    if password.expose().is_empty() {
        bail!("login to {registry}: empty password");
    }
    let config = args.registry_opts.config();
    let credential = Credential::Basic {
        username: username.clone(),
        password: password.clone(),
    };
    Client::new(&registry, &config, Some(credential))
        .ping()
        .with_context(|| format!("login to {registry} as {username:?} failed"))?;
    let docker_config = DockerConfig::from_env()?;
    docker_config
        .store(&registry, &username, &password)
        .with_context(|| format!("login to {registry}: could not save the credentials"))?;
    eprintln!(
        "Login Succeeded (credentials for {registry} saved in {})",
        docker_config.path().display()
    );
    Ok(0)
}

/// Reads one line from the terminal, echoing it or not.
fn prompt(label: &str, echo: bool) -> anyhow::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    eprint!("{label}");
    std::io::stderr().flush().ok();
    let stdin = std::io::stdin();
    let saved = if echo {
        None
    } else {
        let saved = tcgetattr(&stdin).context("failed to read the terminal settings")?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("failed to turn echo off")?;
        Some(saved)
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
        eprintln!();
    }
    read.context("failed to read from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Arguments of `kiln logout`.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The registry (default: docker.io).
    #[arg(value_name = "REGISTRY")]
    pub registry: Option<String>,
}

pub fn logout(args: LogoutArgs, _global: &GlobalOpts) -> anyhow::Result<i32> {
    let registry = normalize_registry(args.registry.as_deref().unwrap_or("docker.io"));
    let docker_config = DockerConfig::from_env()?;
    let removed = docker_config
        .remove(&registry)
        .with_context(|| format!("logout from {registry}"))?;
    if removed {
        eprintln!("Removing login credentials for {registry}");
    } else {
        eprintln!("Not logged in to {registry}");
    }
    Ok(0)
}
