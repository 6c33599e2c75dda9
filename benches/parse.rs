//! Parser throughput: parses a generated 10,000-instruction Dockerfile (every instruction
//! kind, flags, continuations, heredocs, JSON and shell forms) and reports the time per
//! parse. Run with `cargo bench --bench parse`.

use std::fmt::Write;
use std::time::{Duration, Instant};

fn generate(n_instructions: usize) -> String {
    let mut out = String::from("# syntax=docker/dockerfile:1\nARG BASE=alpine:3.20\n");
    let mut count = 1;
    let mut stage = 0;
    while count < n_instructions {
        writeln!(
            out,
            "FROM --platform=$BUILDPLATFORM ${{BASE}} AS stage{stage}"
        )
        .unwrap();
        count += 1;
        for i in 0..48 {
            if count >= n_instructions {
                break;
            }
            let line = match i % 12 {
                0 => format!("RUN --mount=type=cache,target=/root/.cache,sharing=locked set -eux; \\\n    apt-get update; \\\n    # comment {i}\n    apt-get install -y pkg{i}"),
                1 => format!("COPY --from=stage{stage} --chown=1000:1000 --link src/{i} /app/{i}/"),
                2 => format!("ENV KEY{i}=\"value {i}\" OTHER{i}=x\\ y"),
                3 => format!("LABEL org.example.{i}=\"label {i}\""),
                4 => format!("RUN [\"/bin/sh\", \"-c\", \"echo {i}\"]"),
                5 => "RUN <<EOF\necho heredoc\nls -la\nEOF".to_string(),
                6 => format!("WORKDIR /work/{i}"),
                7 => format!("ARG A{i}=1 B{i}"),
                8 => format!("ADD --checksum=sha256:abc https://example.com/{i}.tar.gz /tmp/"),
                9 => "HEALTHCHECK --interval=30s --timeout=3s --retries=3 CMD curl -f http://localhost/ || exit 1".to_string(),
                10 => format!("EXPOSE {}/tcp", 8000 + i),
                _ => format!("USER user{i}"),
            };
            out.push_str(&line);
            out.push('\n');
            count += 1;
        }
        stage += 1;
    }
    out
}

/// CPU time of this thread: the machine running the benchmark may be shared, and wall time
/// then measures the neighbours too.
fn thread_cpu_time() -> Duration {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut spec) };
    Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
}

fn main() {
    let source = generate(10_000);
    let n_instructions = kiln::parser::parse_nodes(&source, "Dockerfile")
        .expect("generated file parses")
        .nodes
        .len();
    let mut timings = Vec::new();
    let mut cpu_timings = Vec::new();
    let started = Instant::now();
    while timings.len() < 20 || (started.elapsed() < Duration::from_secs(3) && timings.len() < 200)
    {
        let begin = Instant::now();
        let begin_cpu = thread_cpu_time();
        let dockerfile = kiln::parser::parse(&source, "Dockerfile").expect("generated file parses");
        cpu_timings.push(thread_cpu_time() - begin_cpu);
        timings.push(begin.elapsed());
        std::hint::black_box(dockerfile);
    }
    timings.sort();
    cpu_timings.sort();
    let median = timings[timings.len() / 2];
    let best = timings[0];
    println!(
        "parse: {n_instructions} instructions, {} bytes: median {:.2} ms, best {:.2} ms over {} runs ({:.0} MB/s)",
        source.len(),
        median.as_secs_f64() * 1e3,
        best.as_secs_f64() * 1e3,
        timings.len(),
        source.len() as f64 / median.as_secs_f64() / 1e6
    );
    println!(
        "parse: CPU time median {:.2} ms, best {:.2} ms",
        cpu_timings[cpu_timings.len() / 2].as_secs_f64() * 1e3,
        cpu_timings[0].as_secs_f64() * 1e3
    );
}
