//! kiln: a Dockerfile build engine.
//!
//! Data flows one way: `parser` (text -> `Dockerfile`) -> `planner` (-> `BuildGraph`) ->
//! `executor` (containers, snapshots, layers) -> `store` (OCI image layout). `registry` moves
//! blobs between a store and a remote. `cli` wires them together and owns all output.
//! ARCHITECTURE.md is the map.

pub mod cache;
pub mod cli;
pub mod context;
pub mod digest;
pub mod executor;
pub mod layer;
pub mod parser;
pub mod planner;
pub mod reference;
pub mod registry;
pub mod store;

/// An error and its causes on one line, `outer: cause: root cause`, for messages and progress
/// lines that must say everything in one place.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_joins_every_cause() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let outer = std::io::Error::other(OuterError(inner));
        assert_eq!(super::error_chain(&outer), "read config: no such file");
    }

    #[derive(Debug)]
    struct OuterError(std::io::Error);
    impl std::fmt::Display for OuterError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("read config")
        }
    }
    impl std::error::Error for OuterError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
