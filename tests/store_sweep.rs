//! "Nothing is lost": a `kiln build` or `kiln run` killed with SIGKILL leaves its container
//! state dir and staging entries behind; the next kiln command sweeps them (owner gone), never
//! the entries of a kiln that still runs. Real processes, real overlay containers over the
//! busybox base (as in build_issue5.rs).

mod common;

use common::{kiln, require_root, run_ok, stderr_of};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A store with the busybox rootfs imported as `base:1`.
fn store_with_base() -> tempfile::TempDir {
    require_root();
    let root = common::temp_root();
    run_ok(
        kiln(root.path())
            .arg("import")
            .arg(common::busybox_rootfs_tar())
            .arg("base:1"),
    );
    root
}

/// A context directory holding just `dockerfile`.
fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    dir
}

/// The entry paths of `<root>/containers`, `<root>/tmp` and `<root>/cache/mounts`, but the
/// overlay driver's store-wide probe result (`containers/.overlay-probe`, kept on purpose).
fn entries(root: &Path) -> BTreeSet<PathBuf> {
    ["containers", "tmp", "cache/mounts"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(root.join(dir)).ok())
        .flat_map(|read_dir| read_dir.map(|e| e.unwrap().path()))
        .filter(|path| !path.ends_with(".overlay-probe"))
        .collect()
}

fn container_dirs(root: &Path) -> Vec<PathBuf> {
    entries(root)
        .into_iter()
        .filter(|path| path.starts_with(root.join("containers")))
        .collect()
}

/// Pids of container processes (not kiln itself) whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(bytes) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let text = String::from_utf8_lossy(&bytes);
            let program = text.split('\0').next().unwrap_or("");
            !program.ends_with("kiln") && text.contains(marker)
        })
        .collect()
}

/// Waits up to `limit` for `condition`, panicking with `what` and the child's state.
fn wait_for(what: &str, limit: Duration, child: &mut Child, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("kiln exited ({status}) while waiting for {what}");
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mount points in this namespace under `root`.
fn mounts_under(root: &Path) -> Vec<String> {
    let root = std::fs::canonicalize(root).unwrap();
    let root = root.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
        .filter(|point| point.starts_with(&root))
        .collect()
}

/// How a test kills kiln.
#[derive(Clone, Copy, PartialEq)]
enum Kill {
    /// SIGKILL to the kiln process only: its container supervisor notices (pdeathsig), kills
    /// the container and removes the state dir itself; the sweep takes whatever else is left.
    Kiln,
    /// SIGKILL to kiln and its descendants in this pid namespace, container supervisor
    /// included (a CI job cancelled: its cgroup is killed); all stopped first so none cleans
    /// up after another. Only the sweep can reclaim the state dir. The container's own
    /// processes (another pid namespace) are left to die of their pdeathsig.
    Tree,
}

fn pid_namespace(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// `pid` and its descendants that share our pid namespace.
fn host_tree(pid: u32) -> Vec<u32> {
    let ours = pid_namespace(std::process::id());
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            Some((p, rest.split_whitespace().nth(1)?.parse().ok()?))
        })
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for (p, pp) in &parents {
            if *pp == parent && !tree.contains(p) && pid_namespace(*p) == ours {
                tree.push(*p);
            }
        }
        i += 1;
    }
    tree
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a pid of our own child's tree.
    unsafe { libc::kill(pid as i32, signal) };
}

/// Starts `kiln <args>` on `root` in the background, output discarded.
fn spawn(root: &Path, args: &[&str]) -> Child {
    kiln(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGKILLs `child` (as `kill` says) once its container runs `marker`, checks the container's
/// processes die (pdeathsig) and, for `Kill::Tree`, that the killed command left a container
/// dir behind. Returns the entries left.
fn kill_when_running(
    root: &Path,
    child: &mut Child,
    marker: &str,
    kill: Kill,
) -> BTreeSet<PathBuf> {
    let limit = Duration::from_secs(60);
    wait_for("the container dir", limit, child, || {
        !container_dirs(root).is_empty()
    });
    wait_for("the container's command", limit, child, || {
        !processes_with(marker).is_empty()
    });
    match kill {
        Kill::Kiln => signal(child.id(), libc::SIGKILL),
        Kill::Tree => {
            // Stopped processes fork no more: stop, look again, then kill them all.
            for pid in host_tree(child.id()) {
                signal(pid, libc::SIGSTOP);
            }
            let tree = host_tree(child.id());
            assert!(
                tree.len() >= 2,
                "no container supervisor under kiln: {tree:?}"
            );
            for pid in tree {
                signal(pid, libc::SIGKILL);
            }
        }
    }
    child.wait().unwrap();
    let start = Instant::now();
    while !processes_with(marker).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the container outlived the killed kiln: {:?}",
            processes_with(marker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = entries(root);
    assert!(
        kill == Kill::Kiln || !container_dirs(root).is_empty(),
        "the killed command left no container dir (nothing to sweep): {left:?}"
    );
    left
}

/// After the sweeping command: nothing of the killed one is left, no mount, fsck passes, and
/// with `Kill::Tree` the command said it swept the container.
fn check_swept(root: &Path, left: &BTreeSet<PathBuf>, stderr: &str, kill: Kill) {
    let now = entries(root);
    let still: Vec<_> = left.intersection(&now).collect();
    assert!(still.is_empty(), "not swept: {still:?}\n{stderr}");
    assert!(
        container_dirs(root).is_empty(),
        "{:?}",
        container_dirs(root)
    );
    assert!(
        kill == Kill::Kiln || stderr.contains("swept 1 stale containers"),
        "no sweep line:\n{stderr}"
    );
    assert_eq!(mounts_under(root), Vec::<String>::new());
    run_ok(kiln(root).arg("fsck"));
}

#[test]
fn a_build_killed_with_its_supervisor_is_swept_by_the_next_build() {
    killed_build_then_build(Kill::Tree, "tree");
}

#[test]
fn a_build_killed_alone_leaves_nothing_after_the_next_build() {
    killed_build_then_build(Kill::Kiln, "kiln");
}

fn killed_build_then_build(kill: Kill, label: &str) {
    let root = store_with_base();
    let marker = format!("sweep-build-{label}-{}", std::process::id());
    let slow = context(&format!("FROM base:1\nRUN sleep 30 && echo {marker}\n"));
    let mut child = spawn(
        root.path(),
        &["build", "--progress=plain", slow.path().to_str().unwrap()],
    );
    let left = kill_when_running(root.path(), &mut child, &marker, kill);

    let quick = context("FROM base:1\nRUN echo ok > /ok\n");
    let output = run_ok(
        kiln(root.path())
            .args(["build", "--progress=plain", "-t", "quick:1"])
            .arg(quick.path()),
    );
    check_swept(root.path(), &left, &stderr_of(&output), kill);
    // The store still builds and the next build has nothing to sweep.
    let output = run_ok(
        kiln(root.path())
            .args(["build", "--progress=plain", "--no-cache"])
            .arg(quick.path()),
    );
    assert!(
        !stderr_of(&output).contains("swept"),
        "{}",
        stderr_of(&output)
    );
    assert!(entries(root.path())
        .iter()
        .all(|p| !p.starts_with(root.path().join("containers"))));
}

#[test]
fn a_run_killed_with_its_supervisor_is_swept_by_the_next_run() {
    let root = store_with_base();
    let marker = format!("sweep-run-{}", std::process::id());
    let script = format!("sleep 30 && echo {marker}");
    let mut child = spawn(root.path(), &["run", "base:1", "sh", "-c", &script]);
    let left = kill_when_running(root.path(), &mut child, &marker, Kill::Tree);

    let output = run_ok(kiln(root.path()).args(["run", "base:1", "true"]));
    check_swept(root.path(), &left, &stderr_of(&output), Kill::Tree);
}

#[test]
fn a_killed_builds_ssh_agent_dir_is_swept_too() {
    let root = store_with_base();
    let keygen = common::require_program("ssh-keygen", "openssh-client");
    common::require_program("ssh-agent", "openssh-client");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id_ed25519");
    run_ok(
        std::process::Command::new(keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
    );
    let marker = format!("sweep-ssh-{}", std::process::id());
    let slow = context(&format!(
        "FROM base:1\nRUN --mount=type=ssh sh -c 'sleep 30 && echo {marker}'\n"
    ));
    let ssh = format!("--ssh=default={}", key.display());
    let mut child = spawn(
        root.path(),
        &[
            "build",
            "--progress=plain",
            &ssh,
            slow.path().to_str().unwrap(),
        ],
    );
    let left = kill_when_running(root.path(), &mut child, &marker, Kill::Tree);
    let tmp = root.path().join("tmp");
    assert!(
        left.iter()
            .any(|p| p.starts_with(&tmp) && p.to_string_lossy().contains("ssh-agent-")),
        "no ssh agent dir left in tmp/: {left:?}"
    );
    let quick = context("FROM base:1\nRUN echo ok > /ok\n");
    let output = run_ok(
        kiln(root.path())
            .args(["build", "--progress=plain"])
            .arg(quick.path()),
    );
    check_swept(root.path(), &left, &stderr_of(&output), Kill::Tree);
}

#[test]
fn prune_sweeps_a_killed_build() {
    let root = store_with_base();
    let marker = format!("sweep-prune-{}", std::process::id());
    let slow = context(&format!("FROM base:1\nRUN sleep 30 && echo {marker}\n"));
    let mut child = spawn(
        root.path(),
        &["build", "--progress=plain", slow.path().to_str().unwrap()],
    );
    let left = kill_when_running(root.path(), &mut child, &marker, Kill::Tree);
    let output = run_ok(kiln(root.path()).arg("prune"));
    check_swept(root.path(), &left, &stderr_of(&output), Kill::Tree);
    assert_eq!(entries(root.path()), BTreeSet::new());
}

#[test]
fn a_live_run_is_not_swept_by_another_command() {
    let root = store_with_base();
    let marker = format!("sweep-live-{}", std::process::id());
    let script = format!("sleep 5 && echo {marker}");
    let mut live = kiln(root.path())
        .args(["run", "base:1", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let limit = Duration::from_secs(60);
    wait_for("the container's command", limit, &mut live, || {
        !processes_with(&marker).is_empty()
    });
    let live_dirs = container_dirs(root.path());
    assert_eq!(live_dirs.len(), 1, "{live_dirs:?}");

    let quick = context("FROM base:1\nRUN echo ok > /ok\n");
    let build = run_ok(
        kiln(root.path())
            .args(["build", "--progress=plain"])
            .arg(quick.path()),
    );
    let run = run_ok(kiln(root.path()).args(["run", "base:1", "true"]));
    for output in [&build, &run] {
        assert!(
            !stderr_of(output).contains("swept"),
            "{}",
            stderr_of(output)
        );
    }
    assert!(live_dirs[0].is_dir(), "the live container's dir was swept");
    assert!(
        !processes_with(&marker).is_empty(),
        "the live container stopped early"
    );

    let output = live.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the live run failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(&marker));
    assert!(container_dirs(root.path()).is_empty());
}
