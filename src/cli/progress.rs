//! Build progress output on stderr: the sinks `kiln build --progress` chooses between.
//!
//! - `plain`: lines `#N [stage k/n] INSTRUCTION`, `#N CACHED`, the step's output prefixed
//!   `#N `, `#N DONE 1.2s`, `#N ERROR ...`.
//! - `tty`: an indicatif live view (one spinner per running step, the last output line under
//!   it); finished steps stay as plain-looking lines. `auto` picks it when stderr is a terminal.
//! - `rawjson`: one JSON object per event.
//! - `quiet`: nothing.
//!
//! No colour at all when `NO_COLOR` is set; colour never carries meaning on its own.

use crate::executor::build::progress::{Event, ProgressSink, Stream};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

/// `--progress` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    Auto,
    Tty,
    Plain,
    Quiet,
    Rawjson,
}

impl std::str::FromStr for ProgressMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(ProgressMode::Auto),
            "tty" => Ok(ProgressMode::Tty),
            "plain" => Ok(ProgressMode::Plain),
            "quiet" => Ok(ProgressMode::Quiet),
            "rawjson" => Ok(ProgressMode::Rawjson),
            other => Err(format!(
                "invalid progress mode {other:?} (expected auto, tty, plain, quiet or rawjson)"
            )),
        }
    }
}

/// The sink for `mode` (auto resolved against stderr).
pub fn sink(mode: ProgressMode) -> Box<dyn ProgressSink> {
    let mode = match mode {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
        ProgressMode::Auto => ProgressMode::Plain,
        other => other,
    };
    match mode {
        ProgressMode::Tty => Box::new(TtySink::new()),
        ProgressMode::Plain | ProgressMode::Auto => Box::new(PlainSink::default()),
        ProgressMode::Rawjson => Box::new(JsonSink),
        ProgressMode::Quiet => Box::new(crate::executor::build::progress::NullSink),
    }
}

fn seconds(elapsed: std::time::Duration) -> String {
    format!("{:.1}s", elapsed.as_secs_f64())
}

/// Plain lines; partial output lines are held per step until their newline.
#[derive(Default)]
pub struct PlainSink {
    partial: Mutex<HashMap<usize, Vec<u8>>>,
}

impl PlainSink {
    fn line(&self, text: &str) {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{text}");
    }

    fn flush_partial(&self, number: usize) {
        let rest = self
            .partial
            .lock()
            .ok()
            .and_then(|mut map| map.remove(&number));
        if let Some(rest) = rest {
            if !rest.is_empty() {
                self.line(&format!("#{number} {}", String::from_utf8_lossy(&rest)));
            }
        }
    }
}

impl ProgressSink for PlainSink {
    fn event(&self, event: Event) {
        match event {
            Event::Started(step) => self.line(&format!(
                "#{} {} {}",
                step.number, step.label, step.description
            )),
            Event::Cached { number } => self.line(&format!("#{number} CACHED")),
            Event::Output { number, bytes, .. } => {
                let mut lines = Vec::new();
                if let Ok(mut map) = self.partial.lock() {
                    let buffer = map.entry(number).or_default();
                    buffer.extend_from_slice(&bytes);
                    while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buffer.drain(..=pos).collect();
                        lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
                    }
                }
                for line in lines {
                    self.line(&format!("#{number} {}", line.trim_end_matches('\r')));
                }
            }
            Event::Done { number, elapsed } => {
                self.flush_partial(number);
                self.line(&format!("#{number} DONE {}", seconds(elapsed)));
            }
            Event::Failed { number, message } => {
                self.flush_partial(number);
                let first = message.lines().next().unwrap_or_default();
                self.line(&format!("#{number} ERROR {first}"));
            }
            Event::Note { message } => self.line(&message),
        }
    }
}

/// JSON lines.
pub struct JsonSink;

impl ProgressSink for JsonSink {
    fn event(&self, event: Event) {
        let value = match event {
            Event::Started(step) => serde_json::json!({
                "event": "started", "step": step.number, "label": step.label,
                "description": step.description,
            }),
            Event::Cached { number } => serde_json::json!({"event": "cached", "step": number}),
            Event::Output {
                number,
                stream,
                bytes,
            } => serde_json::json!({
                "event": "output", "step": number,
                "stream": match stream { Stream::Stdout => "stdout", Stream::Stderr => "stderr" },
                "data": String::from_utf8_lossy(&bytes),
            }),
            Event::Done { number, elapsed } => serde_json::json!({
                "event": "done", "step": number, "seconds": elapsed.as_secs_f64(),
            }),
            Event::Failed { number, message } => serde_json::json!({
                "event": "failed", "step": number, "error": message,
            }),
            Event::Note { message } => serde_json::json!({"event": "note", "message": message}),
        };
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{value}");
    }
}

/// indicatif live view.
pub struct TtySink {
    multi: indicatif::MultiProgress,
    bars: Mutex<HashMap<usize, (indicatif::ProgressBar, String)>>,
    colour: bool,
}

impl TtySink {
    pub fn new() -> Self {
        TtySink {
            multi: indicatif::MultiProgress::with_draw_target(
                indicatif::ProgressDrawTarget::stderr(),
            ),
            bars: Mutex::new(HashMap::new()),
            colour: std::env::var_os("NO_COLOR").map_or(true, |v| v.is_empty()),
        }
    }

    fn finish(&self, number: usize, status: &str) {
        if let Some((bar, title)) = self.bars.lock().ok().and_then(|mut m| m.remove(&number)) {
            let text = if self.colour && status == "CACHED" {
                format!("\x1b[34m#{number} {title} {status}\x1b[0m")
            } else if self.colour && status.starts_with("ERROR") {
                format!("\x1b[31m#{number} {title} {status}\x1b[0m")
            } else {
                format!("#{number} {title} {status}")
            };
            bar.finish_and_clear();
            let _ = self.multi.println(text);
        }
    }
}

impl Default for TtySink {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressSink for TtySink {
    fn event(&self, event: Event) {
        match event {
            Event::Started(step) => {
                let bar = self.multi.add(indicatif::ProgressBar::new_spinner());
                let title = format!("{} {}", step.label, step.description);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} {prefix} {elapsed} {wide_msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar.set_prefix(format!("#{} {title}", step.number));
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                if let Ok(mut bars) = self.bars.lock() {
                    bars.insert(step.number, (bar, title));
                }
            }
            Event::Cached { number } => self.finish(number, "CACHED"),
            Event::Output { number, bytes, .. } => {
                if let Some((bar, _)) = self.bars.lock().ok().and_then(|m| m.get(&number).cloned())
                {
                    let text = String::from_utf8_lossy(&bytes);
                    if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                        bar.set_message(last.to_string());
                    }
                }
            }
            Event::Done { number, elapsed } => {
                self.finish(number, &format!("DONE {}", seconds(elapsed)))
            }
            Event::Failed { number, message } => {
                let first = message.lines().next().unwrap_or_default().to_string();
                self.finish(number, &format!("ERROR {first}"))
            }
            Event::Note { message } => {
                let _ = self.multi.println(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("plain".parse::<ProgressMode>(), Ok(ProgressMode::Plain));
        assert_eq!("rawjson".parse::<ProgressMode>(), Ok(ProgressMode::Rawjson));
        assert!("fancy".parse::<ProgressMode>().is_err());
    }
}
