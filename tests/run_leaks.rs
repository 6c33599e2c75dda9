//! Nothing of a container outlives it: a hundred `kiln run`s, some of them SIGKILLed while the
//! container runs, leave no mounts, no processes and no state directories.

mod common;

use common::kiln;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Processes whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .as_deref()
                == Some(&wanted[..])
        })
        .collect()
}

#[test]
fn a_hundred_runs_including_killed_ones_leave_nothing() {
    common::require_root();
    let root = common::temp_root();
    let rootfs = root.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    assert!(Command::new("tar")
        .arg("-xf")
        .arg(common::busybox_rootfs_tar())
        .arg("-C")
        .arg(&rootfs)
        .status()
        .unwrap()
        .success());
    let store = root.path().join("store");
    let sleeper = ["sleep", "987654"];

    for i in 0..100 {
        if i % 5 == 4 {
            // Killed while running: SIGKILL the kiln parent itself.
            let mut child = kiln(&store)
                .args(["run", "--rootfs"])
                .arg(&rootfs)
                .args(["sh", "-c", "echo ready; exec sleep 987654"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line, "ready\n");
            child.kill().unwrap();
            child.wait().unwrap();
        } else {
            let status = kiln(&store)
                .args(["run", "--rootfs"])
                .arg(&rootfs)
                .args(["sh", "-c", "sleep 0.01 & echo $$ > /dev/null"])
                .stdin(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    // The supervisors of killed runs clean up asynchronously: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let containers = store.join("containers");
    loop {
        let sleepers = processes_running(&sleeper);
        let left: Vec<_> = std::fs::read_dir(&containers)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name != ".overlay-probe")
            .collect();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounted: Vec<&str> = mountinfo
            .lines()
            .filter(|line| line.contains(&*root.path().to_string_lossy()))
            .collect();
        if sleepers.is_empty() && left.is_empty() && mounted.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: processes {sleepers:?}, state dirs {left:?}, mounts {mounted:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // No temp files next to the state dirs either.
    let tmp_left: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(tmp_left, vec![std::ffi::OsString::from("containers")]);
}
