//! Context scan benchmark: 10,000 small files in 100 directories, scanned without a stat
//! cache (every file read and hashed; the page cache is warm, so this measures hashing and
//! syscalls, not the disk), then with a stat cache that is first filled and then used
//! (no file is read). Run with `cargo bench --bench context`; set `KILN_BENCH_DIR` to put the
//! files somewhere other than the system temp dir (e.g. a real disk instead of tmpfs).

use std::time::{Duration, Instant};

use kiln::context::walk::RACY_WINDOW_NS;
use kiln::context::{ContextIndex, Matcher};

const N_FILES: usize = 10_000;
const N_ROUNDS: usize = 7;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// CPU time (user + system, all threads) this process has used so far.
fn cpu_time() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let user = usage.user_time();
    let system = usage.system_time();
    Duration::new(user.tv_sec() as u64, user.tv_usec() as u32 * 1000)
        + Duration::new(system.tv_sec() as u64, system.tv_usec() as u32 * 1000)
}

/// Wall time per round, and the CPU time all rounds used (less sensitive to a busy machine).
fn report(label: &str, samples: Vec<Duration>, cpu: Duration) {
    let min = *samples.iter().min().unwrap();
    println!(
        "{label:<48} wall median {:>7.4} s  min {:>7.4} s  | cpu/round {:>7.4} s  ({} rounds)",
        median(samples.clone()).as_secs_f64(),
        min.as_secs_f64(),
        cpu.as_secs_f64() / samples.len() as f64,
        samples.len()
    );
}

fn main() {
    let base = std::env::var_os("KILN_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::tempdir_in(&base).expect("temp dir for the benchmark");
    let context = work.path().join("context");
    for i in 0..N_FILES {
        let dir = context.join(format!("d{:03}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(
            dir.join(format!("f{i:05}.txt")),
            format!("file number {i}\n").repeat(8),
        )
        .unwrap();
    }
    std::fs::write(context.join(".dockerignore"), "**/*.tmp\n!keep.tmp\n").unwrap();
    // Let the files age past the racy window so the stat cache may record them.
    std::thread::sleep(Duration::from_nanos(RACY_WINDOW_NS as u64) + Duration::from_millis(50));
    let matcher = Matcher::new(&["**/*.tmp", "!keep.tmp"]).unwrap();
    println!(
        "context scan: {N_FILES} files of ~150 bytes in 100 dirs, {} rayon threads, under {}",
        rayon::current_num_threads(),
        base.display()
    );

    if std::env::var_os("KILN_BENCH_WARM_ONLY").is_some() {
        // For profiling: fill a stat cache once, then only warm scans.
        let cache = work.path().join("statcache-profile");
        ContextIndex::scan(&context, &matcher, Some(&cache)).unwrap();
        let (mut warm, cpu_before) = (Vec::new(), cpu_time());
        for _ in 0..50 {
            let started = Instant::now();
            ContextIndex::scan(&context, &matcher, Some(&cache)).unwrap();
            warm.push(started.elapsed());
        }
        report("warm only", warm, cpu_time() - cpu_before);
        return;
    }

    let mut cold = Vec::new();
    let cpu_before = cpu_time();
    for _ in 0..N_ROUNDS {
        let started = Instant::now();
        let index = ContextIndex::scan(&context, &matcher, None).unwrap();
        cold.push(started.elapsed());
        assert_eq!(index.stats().n_files_read, N_FILES + 1);
    }
    report(
        "cold (no stat cache, all files hashed)",
        cold,
        cpu_time() - cpu_before,
    );

    let mut fill = Vec::new();
    let mut warm = Vec::new();
    let (mut fill_cpu, mut warm_cpu) = (Duration::ZERO, Duration::ZERO);
    for round in 0..N_ROUNDS {
        let cache = work.path().join(format!("statcache-{round}"));
        let cpu_before = cpu_time();
        let started = Instant::now();
        let index = ContextIndex::scan(&context, &matcher, Some(&cache)).unwrap();
        fill.push(started.elapsed());
        fill_cpu += cpu_time() - cpu_before;
        assert!(index.stats().stat_cache_written);
        drop(index);
        let cpu_before = cpu_time();
        let started = Instant::now();
        let index = ContextIndex::scan(&context, &matcher, Some(&cache)).unwrap();
        warm.push(started.elapsed());
        warm_cpu += cpu_time() - cpu_before;
        assert_eq!(index.stats().n_files_read, 0);
        assert_eq!(index.stats().n_cache_hits, N_FILES + 1);
    }
    report(
        "cold + stat cache fill (hash all, write cache)",
        fill,
        fill_cpu,
    );
    report("warm (stat cache hit, no file read)", warm, warm_cpu);
}
