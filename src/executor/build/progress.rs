//! Build progress events: what the executor reports while it walks a `BuildGraph` (a step
//! started, was found in the cache, printed output, finished or failed). The executor only
//! emits events to a [`ProgressSink`]; how they are shown (live view, plain lines, JSON, nothing)
//! is the command line's business (`cli::progress`).

use std::time::Duration;

/// One step of the build as progress output names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInfo {
    /// 1-based number in the order steps were started (`#N`).
    pub number: usize,
    /// `[stage k/n]`-style label: the stage's name (or index) and the step's position.
    pub label: String,
    /// The instruction as written (`RUN make`).
    pub description: String,
}

/// Which stream a chunk of step output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Something that happened during a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A step began (or was looked up in the cache).
    Started(StepInfo),
    /// The step's result came from the cache: nothing ran.
    Cached { number: usize },
    /// Bytes the step's process wrote.
    Output {
        number: usize,
        stream: Stream,
        bytes: Vec<u8>,
    },
    /// The step finished successfully after `elapsed`.
    Done { number: usize, elapsed: Duration },
    /// The step failed; `message` says why.
    Failed { number: usize, message: String },
    /// A note not tied to a step (exporting, naming the image).
    Note { message: String },
}

/// Receives events; called from several threads at once (parallel stages).
pub trait ProgressSink: Send + Sync {
    fn event(&self, event: Event);
}

/// A sink that drops everything.
pub struct NullSink;

impl ProgressSink for NullSink {
    fn event(&self, _event: Event) {}
}
