//! ARG/ENV scoping as Docker does it: the global scope of `FROM` lines (automatic platform
//! ARGs and the ARGs before the first FROM), and the scope inside a stage (the image config's
//! ENV over the stage's declared ARGs).
//!
//! Knows variable names and values only; the dispatcher decides what to put in them.

use super::options::Platform;
use crate::parser::shell::Env;

/// The predefined proxy ARGs: usable without an `ARG` line, and then kept out of history and
/// cache keys.
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// `PATH` of a RUN step whose image sets none, and of `FROM scratch` images (BuildKit's
/// `system.DefaultPathEnv` for Linux).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn is_proxy_arg(name: &str) -> bool {
    PROXY_ARGS.contains(&name)
}

/// The automatic platform ARGs, in BuildKit's order, with their values.
pub fn platform_args(target: &Platform, build: &Platform) -> Vec<(String, String)> {
    let pairs = [
        ("BUILDPLATFORM", build.to_string()),
        ("BUILDOS", build.os.clone()),
        ("BUILDARCH", build.architecture.clone()),
        ("BUILDVARIANT", build.variant_or_empty().to_string()),
        ("TARGETPLATFORM", target.to_string()),
        ("TARGETOS", target.os.clone()),
        ("TARGETARCH", target.architecture.clone()),
        ("TARGETVARIANT", target.variant_or_empty().to_string()),
    ];
    pairs
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
}

/// The scope inside a stage: the config env wins over ARGs of the same name ("Environment
/// variables defined using the ENV instruction always override an ARG instruction of the same
/// name"), whatever their order; an ARG declared without a value is unset.
pub struct StageScope<'a> {
    pub env: &'a [String],
    pub args: &'a [(String, Option<String>)],
}

impl Env for StageScope<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.env.lookup(name).or_else(|| arg_value(self.args, name))
    }
}

/// The value the last declaration of `name` that has one gives it.
pub fn arg_value<'a>(args: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    args.iter()
        .rev()
        .filter(|(key, _)| key == name)
        .find_map(|(_, value)| value.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_args_and_valueless_args_are_unset() {
        let env = vec!["A=from-env".to_string()];
        let args = vec![
            ("A".to_string(), Some("from-arg".to_string())),
            ("B".to_string(), Some("b1".to_string())),
            ("B".to_string(), None),
            ("C".to_string(), None),
        ];
        let scope = StageScope {
            env: &env,
            args: &args,
        };
        assert_eq!(scope.lookup("A"), Some("from-env"));
        assert_eq!(scope.lookup("B"), Some("b1"));
        assert_eq!(scope.lookup("C"), None);
        assert_eq!(scope.lookup("D"), None);
    }

    #[test]
    fn platform_args_have_go_names() {
        let target: Platform = "linux/arm/v7".parse().unwrap();
        let build: Platform = "linux/amd64".parse().unwrap();
        let args = platform_args(&target, &build);
        assert!(args.contains(&("TARGETVARIANT".to_string(), "v7".to_string())));
        assert!(args.contains(&("BUILDARCH".to_string(), "amd64".to_string())));
        assert!(args.contains(&("BUILDVARIANT".to_string(), String::new())));
    }
}
