//! Real containers through the library API over the busybox rootfs: isolation, exit codes,
//! signals, output streams, env, users, working directory, bind mounts, bad input.

mod common;

use kiln::executor::container::{
    self, BindMount, CommandLine, ContainerError, ContainerIo, ContainerSpec, NetworkMode,
    OutputSink, Rootfs, StorageDriver, UsedDriver,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A shared in-memory sink.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Lab {
    scratch: tempfile::TempDir,
    lower: PathBuf,
}

fn lab() -> Lab {
    common::require_root();
    let scratch = tempfile::Builder::new()
        .prefix("kiln-ctr-test-")
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
    Lab { scratch, lower }
}

struct Outcome {
    result: Result<i32, ContainerError>,
    stdout: String,
    stderr: String,
}

impl Lab {
    fn containers(&self) -> PathBuf {
        let dir = self.scratch.path().join("containers");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn spec(&self, script: &str) -> ContainerSpec {
        ContainerSpec {
            command: CommandLine::shell(script),
            hostname: "kilnbox".into(),
            kiln_binary: Some(common::kiln_bin()),
            ..ContainerSpec::default()
        }
    }

    fn run_with(&self, spec: &ContainerSpec, driver: StorageDriver) -> (Outcome, Rootfs) {
        let name = format!("c{}", rand_suffix());
        let rootfs = Rootfs::prepare(
            &self.containers().join(name),
            std::slice::from_ref(&self.lower),
            driver,
        )
        .unwrap();
        let stdout = Captured::default();
        let stderr = Captured::default();
        let result = container::run(
            &rootfs,
            spec,
            ContainerIo {
                stdout: OutputSink::Writer(Box::new(stdout.clone())),
                stderr: OutputSink::Writer(Box::new(stderr.clone())),
            },
        )
        .map(|status| status.code);
        (
            Outcome {
                result,
                stdout: stdout.text(),
                stderr: stderr.text(),
            },
            rootfs,
        )
    }

    fn run(&self, spec: &ContainerSpec) -> Outcome {
        let (outcome, rootfs) = self.run_with(spec, StorageDriver::Auto);
        rootfs.cleanup().unwrap();
        outcome
    }

    fn sh(&self, script: &str) -> Outcome {
        self.run(&self.spec(script))
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn ok(outcome: &Outcome) -> &str {
    match &outcome.result {
        Ok(0) => &outcome.stdout,
        other => panic!(
            "container failed: {other:?}\nstdout:\n{}\nstderr:\n{}",
            outcome.stdout, outcome.stderr
        ),
    }
}

#[test]
fn runs_a_command_and_streams_stdout_and_stderr_separately() {
    let lab = lab();
    let outcome = lab.sh("echo out; echo err >&2; echo out2");
    assert_eq!(ok(&outcome), "out\nout2\n");
    assert_eq!(outcome.stderr, "err\n");
}

#[test]
fn exit_codes_and_signals_come_back() {
    let lab = lab();
    assert_eq!(lab.sh("exit 3").result.unwrap(), 3);
    assert_eq!(lab.sh("kill -TERM $$").result.unwrap(), 128 + 15);
    assert_eq!(lab.sh("kill -KILL $$").result.unwrap(), 128 + 9);
}

#[test]
fn isolation_pid_hostname_proc_and_root() {
    let lab = lab();
    let outcome = lab.sh(
        "echo pid=$$; hostname; cat /proc/sys/kernel/hostname; ls /proc | grep -c '^[0-9]'; \
         cat /proc/1/cmdline | tr '\\0' ' '; echo",
    );
    let out = ok(&outcome);
    let lines: Vec<&str> = out.lines().collect();
    // pid 1 is kiln's reaper, the workload is pid 2: the container has its own pid namespace.
    assert_eq!(lines[0], "pid=2", "{out}");
    assert_eq!(lines[1], "kilnbox");
    assert_eq!(lines[2], "kilnbox");
    let n_procs: usize = lines[3].trim().parse().unwrap();
    assert!(
        n_procs <= 5,
        "only the container's processes are visible: {out}"
    );
    assert!(lines[4].contains(" init --spec-fd "), "{out}");
    // The host's hostname did not change.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim(),
        "kilnbox"
    );
}

/// The overlay root is mounted `volatile` (Linux 5.10+), so tearing the container down does
/// not `syncfs` the whole disk under its upper dir (a build waited there for the RUN's whole
/// output before committing it).
#[test]
fn the_overlay_root_is_volatile() {
    let lab = lab();
    let (outcome, rootfs) = lab.run_with(
        &lab.spec("grep ' / / ' /proc/self/mountinfo"),
        StorageDriver::Overlay,
    );
    rootfs.cleanup().unwrap();
    let root = ok(&outcome);
    assert!(root.contains(" - overlay "), "{root}");
    assert!(root.contains("volatile"), "{root}");
}

#[test]
fn writes_cannot_leave_the_root() {
    let lab = lab();
    let marker = format!("kiln-escape-{}", rand_suffix());
    let host_target = lab.scratch.path().join(&marker);
    let outcome = lab.sh(&format!(
        "mkdir -p {dir}; echo x > {target}; echo y > /{marker}; cat {target}; \
         mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED; \
         ls /proc/1/root/ >/dev/null 2>&1 && echo SAWROOT; \
         echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo PROCSYS; \
         touch /sys/kernel/kiln 2>/dev/null && echo SYS; true",
        target = host_target.display(),
        dir = lab.scratch.path().display()
    ));
    let out = ok(&outcome);
    assert_eq!(out, "x\n", "{out}");
    assert!(!host_target.exists(), "the write landed on the host");
    assert!(!Path::new("/").join(&marker).exists());
}

#[test]
fn capabilities_no_new_privs_and_masks_are_dockers() {
    let lab = lab();
    let out = lab.sh(
        "grep -E '^(CapEff|CapBnd|CapInh|CapAmb|NoNewPrivs)' /proc/self/status; \
         wc -c < /proc/keys; grep -c . /proc/timer_list || true; ls /sys/firmware | wc -l",
    );
    let out = ok(&out);
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapInh:\t0000000000000000"), "{out}");
    assert!(out.contains("CapAmb:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    let tail: Vec<&str> = out.lines().skip(5).map(str::trim).collect();
    assert_eq!(tail, vec!["0", "0", "0"], "{out}");

    let mut user = lab.spec("grep -E '^(CapEff|CapPrm)' /proc/self/status");
    user.user = "kiln".into();
    let out = lab.run(&user);
    assert_eq!(
        ok(&out),
        "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n"
    );
}

#[test]
fn network_none_has_only_loopback_and_no_route_out() {
    let lab = lab();
    let mut spec = lab.spec("ls /sys/class/net; ip route; ip route get 1.1.1.1 2>/dev/null || echo NOROUTE; ping -c1 -W1 127.0.0.1 >/dev/null && echo LOOPBACK");
    spec.network = NetworkMode::None;
    let out = lab.run(&spec);
    assert_eq!(ok(&out), "lo\nNOROUTE\nLOOPBACK\n", "{}", out.stderr);

    let host = lab.sh("ls /sys/class/net | grep -vc '^lo$'");
    assert_ne!(
        ok(&host).trim(),
        "0",
        "host network shares the host's interfaces"
    );
}

#[test]
fn env_defaults_and_overrides() {
    let lab = lab();
    let mut spec = lab.spec("echo $PATH; echo $HOME; echo $HOSTNAME; echo $GREETING");
    spec.env = vec!["GREETING=hello world".into()];
    let out = lab.run(&spec);
    assert_eq!(
        ok(&out),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/root\nkilnbox\nhello world\n"
    );
    spec.env = vec!["PATH=/bin".into(), "HOME=/tmp".into()];
    assert_eq!(ok(&lab.run(&spec)), "/bin\n/tmp\nkilnbox\n\n");
}

#[test]
fn users_by_name_and_number_with_supplementary_groups() {
    let lab = lab();
    let check = |user: &str, expect: &str| {
        let mut spec = lab.spec("id; echo $HOME");
        spec.user = user.into();
        assert_eq!(ok(&lab.run(&spec)), expect, "user {user}");
    };
    check(
        "kiln",
        "uid=1000(kiln) gid=1000(kiln) groups=1(daemon),1000(kiln)\n/home/kiln\n",
    );
    check(
        "1000:daemon",
        "uid=1000(kiln) gid=1(daemon) groups=1(daemon)\n/home/kiln\n",
    );
    check("4242:4343", "uid=4242 gid=4343 groups=4343\n/\n");
    check(
        "daemon",
        "uid=1(daemon) gid=1(daemon) groups=1(daemon)\n/usr/sbin\n",
    );

    let mut ghost = lab.spec("id");
    ghost.user = "ghost".into();
    let outcome = lab.run(&ghost);
    let err = outcome.result.unwrap_err();
    assert_eq!(
        err.to_string(),
        "unable to find user ghost: no matching entries in passwd file"
    );
    assert_eq!(err.exit_code(), 125);
}

#[test]
fn working_directory_is_created() {
    let lab = lab();
    let mut spec = lab.spec("pwd; ls -ld . | cut -c1-10");
    spec.cwd = "/deep/new/dir".into();
    spec.user = "kiln".into();
    assert_eq!(ok(&lab.run(&spec)), "/deep/new/dir\ndrwxr-xr-x\n");
}

#[test]
fn bind_mounts_read_write_and_read_only() {
    let lab = lab();
    let shared = lab.scratch.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("in"), "from host\n").unwrap();
    let mut spec = lab.spec(
        "cat /rw/in; echo back > /rw/out; cat /ro/in; echo no > /ro/out 2>/dev/null || echo READONLY",
    );
    spec.mounts = vec![
        BindMount {
            source: shared.clone(),
            destination: "/rw".into(),
            read_only: false,
        },
        BindMount {
            source: shared.clone(),
            destination: "/ro".into(),
            read_only: true,
        },
    ];
    assert_eq!(ok(&lab.run(&spec)), "from host\nfrom host\nREADONLY\n");
    assert_eq!(
        std::fs::read_to_string(shared.join("out")).unwrap(),
        "back\n"
    );

    spec.mounts = vec![BindMount {
        source: lab.scratch.path().join("missing"),
        destination: "/x".into(),
        read_only: false,
    }];
    let err = lab.run(&spec).result.unwrap_err();
    assert!(matches!(err, ContainerError::BindSource { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("bind mount source path does not exist"));
}

#[test]
fn command_not_found_and_not_executable_match_docker() {
    let lab = lab();
    let mut spec = lab.spec("");
    spec.command = CommandLine::Exec(vec!["foo".into()]);
    let err = lab.run(&spec).result.unwrap_err();
    assert_eq!(
        err.to_string(),
        "exec: \"foo\": executable file not found in $PATH"
    );
    assert_eq!(err.exit_code(), 127);

    spec.command = CommandLine::Exec(vec!["/etc/passwd".into()]);
    let err = lab.run(&spec).result.unwrap_err();
    assert_eq!(err.exit_code(), 126, "{err}");

    // Shell form: the shell reports it, as in docker.
    let outcome = lab.sh("nosuchcommand");
    assert_eq!(outcome.result.unwrap(), 127);
    assert!(outcome.stderr.contains("nosuchcommand: not found"));
    let leftovers: Vec<_> = std::fs::read_dir(lab.containers())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != ".overlay-probe")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn orphans_are_reaped_by_pid_1() {
    let lab = lab();
    let out = lab.sh("sh -c 'sleep 0.2 &' ; sleep 0.5; ps -o pid,stat,comm | grep -c ' Z' || true");
    assert_eq!(ok(&out).trim(), "0");
}

#[test]
fn signals_reach_the_process() {
    let lab = lab();
    let rootfs = Rootfs::prepare(
        &lab.containers().join(format!("sig{}", rand_suffix())),
        std::slice::from_ref(&lab.lower),
        StorageDriver::Auto,
    )
    .unwrap();
    let mut spec = lab.spec("");
    spec.command = CommandLine::Exec(vec!["sleep".into(), "100".into()]);
    let running = container::spawn(
        &rootfs,
        &spec,
        ContainerIo {
            stdout: OutputSink::Null,
            stderr: OutputSink::Null,
        },
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    running.signal(libc::SIGTERM);
    assert_eq!(running.wait().unwrap().code, 143);
    rootfs.cleanup().unwrap();
}

#[test]
fn mount_stubs_stay_out_of_the_upper_dir() {
    let lab = lab();
    let shared = lab.scratch.path().join("vol");
    std::fs::create_dir(&shared).unwrap();
    let mut spec = lab.spec("echo data > /made-by-run");
    spec.mounts = vec![BindMount {
        source: shared,
        destination: "/mnt/vol/deep".into(),
        read_only: false,
    }];
    let (outcome, rootfs) = lab.run_with(&spec, StorageDriver::Auto);
    ok(&outcome);
    let changes = rootfs.changes_dir();
    if rootfs.driver() == UsedDriver::Overlay {
        // busybox has no /etc/hosts: kiln had to create a mount point for it.
        assert!(changes.join("etc/hosts").exists());
    }
    let removed = container::remove_mount_stubs(&rootfs).unwrap();
    assert!(removed.contains(&PathBuf::from("etc/hosts")), "{removed:?}");
    assert!(
        removed.contains(&PathBuf::from("mnt/vol/deep")),
        "{removed:?}"
    );
    for stub in [
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "mnt/vol/deep",
        "mnt/vol",
    ] {
        assert!(
            !changes.join(stub).exists(),
            "{stub} is still in {}",
            changes.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(changes.join("made-by-run")).unwrap(),
        "data\n"
    );
    rootfs.cleanup().unwrap();
}

#[test]
fn copy_driver_runs_the_same_container() {
    let lab = lab();
    let (outcome, rootfs) = lab.run_with(
        &lab.spec("echo hi > /f; cat /f; hostname"),
        StorageDriver::Copy,
    );
    assert_eq!(ok(&outcome), "hi\nkilnbox\n");
    assert_eq!(rootfs.driver(), UsedDriver::Copy);
    assert!(
        !lab.lower.join("f").exists(),
        "the lower dir must stay untouched"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.changes_dir().join("f")).unwrap(),
        "hi\n"
    );
    // The commit sees only the change, not the image nor kiln's mount points.
    container::remove_mount_stubs(&rootfs).unwrap();
    let diff = rootfs.changes().unwrap();
    assert_eq!(std::fs::read_to_string(diff.join("f")).unwrap(), "hi\n");
    for absent in ["bin/busybox", "etc/hosts", "etc/resolv.conf", "etc/passwd"] {
        assert!(!diff.join(absent).exists(), "{absent} is in the diff");
    }
    rootfs.cleanup().unwrap();
}

#[test]
fn overlay_over_many_long_named_layers() {
    let lab = lab();
    // 80 layers with long paths: the options would be ~10 KiB, past mount(2)'s one page.
    let layers_dir = lab.scratch.path().join("snapshots");
    let mut lowers = vec![lab.lower.clone()];
    for i in 0..80 {
        let layer = layers_dir.join(format!("{i:03}-{}", "x".repeat(100)));
        std::fs::create_dir_all(&layer).unwrap();
        std::fs::write(layer.join(format!("layer{i}")), format!("{i}\n")).unwrap();
        std::fs::write(layer.join("top"), format!("{i}\n")).unwrap();
        lowers.push(layer);
    }
    let rootfs = Rootfs::prepare(
        &lab.containers().join(format!("many{}", rand_suffix())),
        &lowers,
        StorageDriver::Overlay,
    )
    .unwrap();
    let stdout = Captured::default();
    let status = container::run(
        &rootfs,
        &lab.spec("cat /layer0 /layer79 /top; ls / | grep -c '^layer'"),
        ContainerIo {
            stdout: OutputSink::Writer(Box::new(stdout.clone())),
            stderr: OutputSink::Inherit,
        },
    )
    .unwrap();
    assert_eq!(status.code, 0);
    assert_eq!(stdout.text(), "0\n79\n79\n80\n");
    rootfs.cleanup().unwrap();
}
