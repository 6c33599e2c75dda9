//! Image configs as the planner sees them, and the `BaseImageResolver` the planner asks for
//! base images (`FROM alpine`, `COPY --from=alpine`).
//!
//! The planner does no I/O: whoever calls it (the cli, with the store and the registry)
//! implements [`BaseImageResolver`]. This module knows nothing of registries or the store.

use super::options::Platform;
use crate::digest::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The parts of an OCI/Docker image config a Dockerfile reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageConfig {
    /// `KEY=VALUE` entries in order (`Config.Env`).
    pub env: Vec<String>,
    /// `Config.WorkingDir` (empty: `/`).
    pub working_dir: String,
    /// `Config.User` (empty: root).
    pub user: String,
    /// `Config.Shell` (empty: `/bin/sh -c`).
    pub shell: Vec<String>,
    /// `Config.OnBuild`: trigger instructions as written (`RUN make`).
    pub on_build: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    /// `Config.ExposedPorts` keys (`80/tcp`).
    pub exposed_ports: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<Healthcheck>,
    /// `Author` (MAINTAINER).
    pub author: Option<String>,
    /// `Config.ArgsEscaped`, set by BuildKit whenever CMD is set.
    pub args_escaped: bool,
}

impl ImageConfig {
    /// The value of `key` in `env` (last entry wins).
    pub fn env_value(&self, key: &str) -> Option<&str> {
        self.env.iter().rev().find_map(|entry| {
            let (name, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
            (name == key).then_some(value)
        })
    }

    /// Sets `key=value` in `env`, replacing an existing entry in place (Docker's `addEnv`).
    pub fn set_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        for existing in &mut self.env {
            let name = existing
                .split_once('=')
                .map_or(existing.as_str(), |(name, _)| name);
            if name == key {
                *existing = entry;
                return;
            }
        }
        self.env.push(entry);
    }
}

/// `Config.Healthcheck`. `test` is `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", line]`;
/// zero durations mean "inherit the default".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub start_interval: Duration,
    pub retries: i64,
}

/// A base image as the resolver found it for one platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The digest that pins the image (its manifest digest for that platform).
    pub digest: Digest,
    pub config: ImageConfig,
}

/// Why an image could not be resolved (not found, registry down, ...), as the resolver says.
pub type ResolveError = Box<dyn std::error::Error + Send + Sync>;

/// Finds base images for the planner. `reference` is normalized
/// (`docker.io/library/alpine:latest`, or with `@sha256:...`).
pub trait BaseImageResolver {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, ResolveError>;
}
