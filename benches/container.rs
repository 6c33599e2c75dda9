//! Container start-to-exit latency: `true` in a fresh container over the busybox rootfs
//! (prepare the overlay state dir, exec `kiln init`, namespaces, mounts, pivot_root, exec,
//! exit, wait, remove the state dir). Prints the median over 50 runs; the target is < 30 ms.
//!
//! `cargo bench --bench container` (root needed).

#[path = "../tests/common/mod.rs"]
mod common;

use kiln::executor::container::{
    self, CommandLine, ContainerIo, ContainerSpec, OutputSink, Rootfs, StorageDriver,
};
use std::time::{Duration, Instant};

fn main() {
    common::require_root();
    let scratch = tempfile::Builder::new()
        .prefix("kiln-bench-container-")
        .tempdir()
        .unwrap();
    let lower = scratch.path().join("lower");
    std::fs::create_dir(&lower).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xf")
        .arg(common::busybox_rootfs_tar())
        .arg("-C")
        .arg(&lower)
        .status()
        .unwrap();
    assert!(status.success(), "tar -xf busybox rootfs");
    let containers = scratch.path().join("containers");
    std::fs::create_dir(&containers).unwrap();
    let spec = ContainerSpec {
        command: CommandLine::Exec(vec!["true".into()]),
        hostname: "bench".into(),
        kiln_binary: Some(common::kiln_bin()),
        ..ContainerSpec::default()
    };

    let n_runs = 50;
    let mut samples: Vec<Duration> = Vec::with_capacity(n_runs);
    // One warm-up run (page cache, the overlay probe).
    for i in 0..=n_runs {
        let started = Instant::now();
        let rootfs = Rootfs::prepare(
            &containers.join(format!("c{i}")),
            std::slice::from_ref(&lower),
            StorageDriver::Auto,
        )
        .unwrap();
        let status = container::run(
            &rootfs,
            &spec,
            ContainerIo {
                stdout: OutputSink::Null,
                stderr: OutputSink::Null,
            },
        )
        .unwrap();
        rootfs.cleanup().unwrap();
        let elapsed = started.elapsed();
        assert!(status.success());
        if i > 0 {
            samples.push(elapsed);
        }
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "container start-to-exit of `true` over {n_runs} runs: median {:.1} ms, min {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(samples[n_runs / 2]),
        ms(samples[0]),
        ms(samples[n_runs * 9 / 10]),
        ms(samples[n_runs - 1])
    );
}
