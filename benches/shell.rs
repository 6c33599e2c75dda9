//! Throughput of shell-word expansion on words typical of Dockerfiles: plain paths, `$VAR`
//! references, default/alternative forms, and the pattern forms (which build a regex per use).
//!
//! `cargo bench --bench shell`; prints nanoseconds of this thread's CPU time per word for each
//! kind (CPU time rather than wall time, so a busy machine inflates the figures less). Not a
//! test: it asserts nothing about timing.

use std::hint::black_box;

use kiln::parser::shell::ShellLex;

const ENV: [&str; 9] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "NAME=node",
    "VERSION=v22.11.0",
    "TARGETOS=linux",
    "TARGETARCH=arm",
    "TARGETVARIANT=v7",
    "UID=1000",
    "GID=1000",
    "FILE=archive.tar.gz",
];

const CASES: [(&str, &str); 6] = [
    ("literal path", "/usr/src/app/package.json"),
    ("plain $VAR", "$PATH:/opt/bin"),
    ("braced + quotes", "--chown=\"${UID}:${GID}\" 'lit$eral'"),
    (
        "release template",
        "https://example.org/${NAME}-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz",
    ),
    ("pattern ${FILE%%.*}", "${FILE%%.*}"),
    ("replace ${PATH//:/ }", "${PATH//:/ }"),
];

/// CPU time consumed by the calling thread, in nanoseconds.
fn thread_cpu_nanos() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}

fn main() {
    let lex = ShellLex::new('\\');
    let iterations = 20_000;
    for (label, word) in CASES {
        // Warm up (and fail loudly if a case stops expanding).
        lex.process_word(word, &ENV).expect("bench word expands");
        let start = thread_cpu_nanos();
        for _ in 0..iterations {
            black_box(lex.process_word(black_box(word), black_box(&ENV)).unwrap());
        }
        let per_word = (thread_cpu_nanos() - start) / iterations as u128;
        let start = thread_cpu_nanos();
        for _ in 0..iterations {
            black_box(lex.process_words(black_box(word), black_box(&ENV)).unwrap());
        }
        let per_split = (thread_cpu_nanos() - start) / iterations as u128;
        println!("{label:<22} process_word {per_word:>7} ns   process_words {per_split:>7} ns");
    }
}
