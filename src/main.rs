//! The `kiln` binary: parses the command line, runs it, maps the outcome to an exit code.
//!
//! Exit codes: 0 success; 1 the command failed (bad input, a failed build step, I/O, registry);
//! 2 usage error (clap); `kiln run` exits with the container's own status, or 125 when kiln
//! itself failed before the container's process started (as `docker run` does).

fn main() {
    std::process::exit(kiln::cli::main());
}
