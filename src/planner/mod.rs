//! Turns a parsed `Dockerfile` and build options into a `BuildGraph` (petgraph). Resolves
//! ARG/ENV expansion and stage references; does no I/O except through what it is given.
//!
//! Entry point: [`plan`]. The graph holds only what the target stage needs: stages are
//! planned depth first from the target, following `FROM <stage>`, `COPY --from=` and
//! `RUN --mount=...,from=`, so an unused stage is never expanded, resolved or checked.
//! Base images come from the caller's [`BaseImageResolver`] (digest + config); the planner
//! never touches the network or the disk. It reads the process environment only for
//! `--build-arg KEY` without a value, as docker does.
//!
//! Decisions, where Docker leaves room:
//! - WORKDIR is a Meta op that also creates its directory (0755, owned by the current USER,
//!   as BuildKit does): its history entry is not empty-layer except for `WORKDIR /`; the
//!   executor marks it empty when the directory already existed (empty diff).
//! - ENV beats an ARG of the same name whatever their order, as the Dockerfile reference
//!   states (BuildKit's implementation lets an ARG declared after the ENV win for expansion).
//! - Every ARG declared in a stage before a RUN is in that RUN's env, build args and key
//!   (Docker: "all RUN instructions following an ARG use it implicitly"); args declared later,
//!   in other stages, global ones not redeclared, and undeclared ones are not.
//! - Undeclared proxy build args go to `ExecOp::proxy_env` (outside key and history).
//! - A `--build-arg` that no planned stage and no global ARG declares gives one warning.
//! - The ONBUILD triggers of a base (image or stage) run right after its FROM, expanded with
//!   the child's scope; their nodes point at the FROM line.
//!
//! Modules: `options` (BuildOptions, Platform), `image` (ImageConfig, the resolver trait),
//! `graph` (BuildGraph, Node, Op, cache keys), `scope` (ARG/ENV scoping rules), `history`
//! (BuildKit's `created_by` text), `dispatch` (the per-instruction planner).

mod dispatch;
pub mod graph;
pub mod history;
pub mod image;
pub mod options;
pub mod scope;

pub use graph::{
    BuildGraph, CacheKeyError, CacheSharingMode, ConfigChange, CopyOp, CopySource, ExecFile,
    ExecMount, ExecOp, HistoryEntry, Location, MetaOp, MountKind, Node, NodeId, Op, ResolvedInputs,
    SourceOp, StageBase, StageInfo,
};
pub use image::{BaseImageResolver, Healthcheck, ImageConfig, ResolveError, ResolvedImage};
pub use options::{BuildOptions, Network, Platform, PlatformError, Security};

use crate::parser::ast::Dockerfile;
use crate::parser::shell::ShellError;

/// Why a Dockerfile could not be planned. Every variant tied to an instruction names its
/// place as `file:line:col`.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the Dockerfile has no build stages")]
    NoStages,
    #[error("target stage {target:?} could not be found; stages are: {}", stages.join(", "))]
    UnknownTarget { target: String, stages: Vec<String> },
    #[error("{location}: {instruction}: {source}")]
    Expand {
        location: Location,
        instruction: &'static str,
        #[source]
        source: Box<ShellError>,
    },
    #[error("{location}: base name ({written}) should not be blank")]
    EmptyBase { location: Location, written: String },
    #[error("{location}: invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        location: Location,
        reference: String,
        reason: String,
    },
    #[error("{location}: {source}")]
    InvalidPlatform {
        location: Location,
        #[source]
        source: PlatformError,
    },
    #[error("{location}: failed to resolve image {reference} for {platform}: {source}")]
    Resolve {
        location: Location,
        reference: String,
        /// The platform asked for (`linux/amd64`).
        platform: String,
        #[source]
        source: ResolveError,
    },
    #[error("{location}: circular dependency detected on stage {stage}")]
    CircularDependency { location: Location, stage: String },
    #[error("{location}: invalid stage index {index}: --from can only name an earlier stage")]
    StageIndex { location: Location, index: usize },
    #[error(
        "{location}: when using {instruction} with more than one source file, the destination \
         must be a directory and end with a /"
    )]
    DestinationNotDirectory {
        location: Location,
        instruction: &'static str,
    },
    #[error("{location}: source can't be a URL for COPY: {url}")]
    CopyUrl { location: Location, url: String },
    #[error("{location}: invalid ONBUILD trigger {trigger:?} in the base image: {reason}")]
    OnbuildTrigger {
        location: Location,
        trigger: String,
        reason: String,
    },
    #[error("{location}: RUN in exec form cannot take a heredoc")]
    HeredocExecForm { location: Location },
    #[error("{location}: invalid port specification {port:?}")]
    InvalidPort { location: Location, port: String },
    #[error("{location}: VOLUME specified can not be an empty string")]
    EmptyVolume { location: Location },
    #[error("{location}: invalid --mount option {name}={value:?}: {reason}")]
    InvalidMount {
        location: Location,
        name: String,
        value: String,
        reason: String,
    },
    #[error("{location}: invalid signal {signal:?}")]
    InvalidSignal { location: Location, signal: String },
    #[error("{location}: {instruction} is not allowed here")]
    Unexpected {
        location: Location,
        instruction: &'static str,
    },
}

/// Plans the build of `options.target` (or the last stage) of `dockerfile`.
pub fn plan(
    dockerfile: &Dockerfile,
    options: &BuildOptions,
    resolver: &dyn BaseImageResolver,
) -> Result<BuildGraph, PlanError> {
    dispatch::Planner::new(dockerfile, options, resolver).plan()
}

#[cfg(test)]
mod tests;
