//! The command line: clap definitions, dispatch, error printing and exit codes.
//!
//! Each command area lives in its own file (`parse`, `image`, `run`, `build`, `registry`) with
//! its clap `Args` and a `run` function returning the process exit code. `anyhow` is used only
//! here and in `main.rs`; library modules return their own `thiserror` enums.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub mod build;
pub mod image;
pub mod parse;
pub mod progress;
pub mod registry;
pub mod run;

/// Exit code for a usage error (bad flag or argument), as clap uses.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a command that failed (bad input, failed build step, I/O, registry).
pub const EXIT_FAILURE: i32 = 1;

/// kiln: build OCI images from Dockerfiles, fast, in real containers, without a daemon.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalOpts {
    /// Store root (an OCI image layout plus kiln's snapshots and cache). Default: /var/lib/kiln
    /// for root, $XDG_DATA_HOME/kiln otherwise.
    #[arg(long, global = true, env = "KILN_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
}

impl GlobalOpts {
    /// The store root this invocation uses.
    pub fn store_root(&self) -> PathBuf {
        if let Some(root) = &self.root {
            return root.clone();
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/kiln");
        }
        match std::env::var_os("XDG_DATA_HOME") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("kiln"),
            _ => {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
                PathBuf::from(home).join(".local/share/kiln")
            }
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse a Dockerfile and print its syntax tree.
    Parse(parse::ParseArgs),
    /// Build an image from a Dockerfile and a context.
    Build(build::BuildArgs),
    /// Run a command in a new container from an image.
    Run(run::RunArgs),
    /// Import a root-filesystem tarball as a one-layer image.
    Import(image::ImportArgs),
    /// List images.
    Images(image::ImagesArgs),
    /// Give an image another name.
    Tag(image::TagArgs),
    /// Remove image names.
    Rmi(image::RmiArgs),
    /// Show an image's details.
    Inspect(image::InspectArgs),
    /// Show an image's history.
    History(image::HistoryArgs),
    /// Save images to a tarball (docker-archive and OCI layout at once).
    Save(image::SaveArgs),
    /// Load images from a docker-archive or OCI-archive tarball.
    Load(image::LoadArgs),
    /// Verify every blob and reference in the store.
    Fsck(image::FsckArgs),
    /// Remove blobs, snapshots and temporary files nothing references.
    Prune(image::PruneArgs),
    /// Pull an image from a registry.
    Pull(registry::PullArgs),
    /// Push an image to a registry.
    Push(registry::PushArgs),
    /// Log in to a registry.
    Login(registry::LoginArgs),
    /// Log out from a registry.
    Logout(registry::LogoutArgs),
    /// Container set-up helper; kiln runs it itself, never call it by hand.
    #[command(hide = true)]
    Init(run::InitArgs),
}

/// Parses the command line, runs it and returns the exit code. Errors are printed here, once,
/// as a chain.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parse(args) => parse::run(args, &cli.global),
        Command::Build(args) => build::run(args, &cli.global),
        Command::Run(args) => run::run(args, &cli.global),
        Command::Init(args) => run::init(args),
        Command::Import(args) => image::import(args, &cli.global),
        Command::Images(args) => image::images(args, &cli.global),
        Command::Tag(args) => image::tag(args, &cli.global),
        Command::Rmi(args) => image::rmi(args, &cli.global),
        Command::Inspect(args) => image::inspect(args, &cli.global),
        Command::History(args) => image::history(args, &cli.global),
        Command::Save(args) => image::save(args, &cli.global),
        Command::Load(args) => image::load(args, &cli.global),
        Command::Fsck(args) => image::fsck(args, &cli.global),
        Command::Prune(args) => image::prune(args, &cli.global),
        Command::Pull(args) => registry::pull(args, &cli.global),
        Command::Push(args) => registry::push(args, &cli.global),
        Command::Login(args) => registry::login(args, &cli.global),
        Command::Logout(args) => registry::logout(args, &cli.global),
    };
    match result {
        Ok(code) => code,
        Err(err) => report(&err),
    }
}

/// Prints an error chain to stderr and returns its exit code. A broken pipe on stdout is not
/// an error (`kiln images | head` must exit 0).
pub fn report(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(io_err) = cause.downcast_ref::<std::io::Error>() {
            if io_err.kind() == std::io::ErrorKind::BrokenPipe {
                return 0;
            }
        }
    }
    if let Some(exit) = err.downcast_ref::<ExitCode>() {
        if exit.message.is_empty() {
            return exit.code;
        }
    }
    eprintln!("error: {err:#}");
    match err.downcast_ref::<ExitCode>() {
        Some(exit) => exit.code,
        None => EXIT_FAILURE,
    }
}

/// An error that asks for a particular exit code (for example `kiln run`'s 125/126/127).
/// An empty message prints nothing (the cause was already shown, for example a failed step's
/// output).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitCode {
    pub code: i32,
    pub message: String,
}
