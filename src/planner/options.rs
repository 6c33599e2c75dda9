//! What a build is asked to do besides the Dockerfile: target stage, build args, labels,
//! platform, default network, cache switch. Plain data the cli fills from its flags.
//!
//! Knows nothing of Dockerfile syntax, of the disk or of execution.

use std::fmt;
use std::str::FromStr;

/// An OCI platform `os/architecture[/variant]` (`linux/amd64`, `linux/arm/v7`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// A platform string that is not `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {value:?}: expected os/arch[/variant], e.g. linux/amd64")]
pub struct PlatformError {
    pub value: String,
}

impl Platform {
    /// The platform of this host: `linux` and `std::env::consts::ARCH` mapped to the Go
    /// architecture names OCI images use (`x86_64` -> `amd64`, `aarch64` -> `arm64`, ...).
    pub fn host() -> Platform {
        let (architecture, variant) = go_arch(std::env::consts::ARCH);
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// The variant, or the empty string (what `TARGETVARIANT` holds).
    pub fn variant_or_empty(&self) -> &str {
        self.variant.as_deref().unwrap_or("")
    }
}

/// Rust's target architecture name to Go's `GOARCH` (and the default variant for 32-bit arm).
fn go_arch(rust_arch: &str) -> (&str, Option<&str>) {
    match rust_arch {
        "x86_64" => ("amd64", None),
        "x86" => ("386", None),
        "aarch64" => ("arm64", None),
        "arm" => ("arm", Some("v7")),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        "loongarch64" => ("loong64", None),
        "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
        "mips64" => ("mips64", None),
        other => (other, None),
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// Parses `os/arch[/variant]`; the names are lowercased, as containerd's `platforms.Parse`
    /// normalizes them, and `x86_64`/`aarch64` become `amd64`/`arm64`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let error = || PlatformError {
            value: value.to_string(),
        };
        let parts: Vec<&str> = value.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|part| part.is_empty()) {
            return Err(error());
        }
        let valid = |part: &str| {
            part.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        };
        if !parts.iter().all(|part| valid(part)) {
            return Err(error());
        }
        let architecture = match parts[1].to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" => "amd64".to_string(),
            "aarch64" => "arm64".to_string(),
            other => other.to_string(),
        };
        let mut variant = parts.get(2).map(|v| v.to_ascii_lowercase());
        // containerd normalizes arm64/v8 to arm64 (v8 is the only arm64 variant).
        if architecture == "arm64" && variant.as_deref() == Some("v8") {
            variant = None;
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture,
            variant,
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// The network a RUN step gets (`RUN --network=`, or the build's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Network {
    /// The builder's default: an isolated network namespace with outside access.
    #[default]
    Default,
    /// No network at all (loopback only).
    None,
    /// The host's network namespace.
    Host,
}

impl Network {
    pub fn as_str(&self) -> &'static str {
        match self {
            Network::Default => "default",
            Network::None => "none",
            Network::Host => "host",
        }
    }
}

/// `RUN --security=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Security {
    #[default]
    Sandbox,
    Insecure,
}

impl Security {
    pub fn as_str(&self) -> &'static str {
        match self {
            Security::Sandbox => "sandbox",
            Security::Insecure => "insecure",
        }
    }
}

/// The build's options, as `docker build` takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Names the Dockerfile in error locations (`Dockerfile:3:1: ...`).
    pub file_name: String,
    /// The Dockerfile text, only used to turn byte offsets into columns in errors; without it
    /// an error points at column 1 of the instruction's first line.
    pub source: Option<String>,
    /// `--target`: the stage to build; `None` builds the last stage.
    pub target: Option<String>,
    /// `--build-arg KEY=VALUE` (`Some`) or `--build-arg KEY` (`None`: the value is read from
    /// the planner's process environment, and the arg is left unset when that is unset too).
    pub build_args: Vec<(String, Option<String>)>,
    /// `--label KEY=VALUE`: added to the target stage's final config (no history entry).
    pub labels: Vec<(String, String)>,
    /// `--platform`: the target platform; `None` is the host's.
    pub platform: Option<Platform>,
    /// `--network`: the network of RUN steps that give no `--network`.
    pub network: Network,
    /// `--no-cache`: copied into the graph for the executor; the plan itself is the same.
    pub no_cache: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            file_name: "Dockerfile".to_string(),
            source: None,
            target: None,
            build_args: Vec::new(),
            labels: Vec::new(),
            platform: None,
            network: Network::Default,
            no_cache: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &str) {
        let got = match input.parse::<Platform>() {
            Ok(platform) => platform.to_string(),
            Err(error) => format!("error: {error}"),
        };
        assert_eq!(got, expect, "{input}");
    }

    #[test]
    fn platforms_parse_and_normalize() {
        check("linux/amd64", "linux/amd64");
        check("linux/arm/v7", "linux/arm/v7");
        check("Linux/x86_64", "linux/amd64");
        check("linux/arm64/v8", "linux/arm64");
        check(
            "linux",
            "error: invalid platform \"linux\": expected os/arch[/variant], e.g. linux/amd64",
        );
        check(
            "linux//v7",
            "error: invalid platform \"linux//v7\": expected os/arch[/variant], e.g. linux/amd64",
        );
    }

    #[test]
    fn host_platform_uses_go_names() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.to_string(), "linux/amd64");
        }
        assert!(!host.architecture.contains('_'));
    }
}
