//! `kiln run` end to end over a busybox root file system (`--rootfs`): docker's flags, exit
//! codes, streams, tty, stdin, signal forwarding and clear errors for bad input.

mod common;

use common::{kiln, stderr_of, stdout_of};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Lab {
    root: tempfile::TempDir,
    rootfs: PathBuf,
}

fn lab() -> Lab {
    common::require_root();
    let root = common::temp_root();
    let rootfs = root.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(common::busybox_rootfs_tar())
        .arg("-C")
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(status.success(), "tar -xf busybox rootfs");
    Lab { root, rootfs }
}

impl Lab {
    /// `kiln --root R run <flags> --rootfs ROOTFS <command...>`
    fn run(&self, flags: &[&str], command: &[&str]) -> Command {
        let mut cmd = kiln(&self.root.path().join("store"));
        cmd.arg("run")
            .args(flags)
            .arg("--rootfs")
            .arg(&self.rootfs)
            .args(command);
        cmd
    }

    fn output(&self, flags: &[&str], command: &[&str]) -> (i32, String, String) {
        let output = self
            .run(flags, command)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            stdout_of(&output),
            stderr_of(&output),
        )
    }

    fn assert_nothing_left(&self) {
        let containers = self.root.path().join("store/containers");
        let left: Vec<_> = std::fs::read_dir(&containers)
            .map(|dir| {
                dir.map(|e| e.unwrap().file_name())
                    .filter(|name| name != ".overlay-probe")
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "left in {}: {left:?}",
            containers.display()
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.root.path().to_string_lossy().into_owned();
        assert!(!mountinfo.contains(&root), "a mount is left:\n{mountinfo}");
    }
}

fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

#[test]
fn exit_code_and_separate_streams() {
    let lab = lab();
    let (code, out, err) = lab.output(&[], &sh("echo out; echo err >&2; exit 7"));
    assert_eq!((code, out.as_str(), err.as_str()), (7, "out\n", "err\n"));
    let (code, _, _) = lab.output(&["--rm"], &["true"]);
    assert_eq!(code, 0);
    lab.assert_nothing_left();
}

#[test]
fn env_workdir_user_hostname_flags() {
    let lab = lab();
    let env_file = lab.root.path().join("env");
    std::fs::write(&env_file, "# settings\nFROM_FILE=file\nBOTH=file\n").unwrap();
    let env_file = env_file.to_string_lossy().into_owned();
    let (code, out, err) = lab.output(
        &[
            "-e",
            "A=1",
            "-e",
            "BOTH=flag",
            "--env-file",
            &env_file,
            "-w",
            "/srv/app",
            "-u",
            "kiln",
            "--hostname",
            "web1",
        ],
        &sh("echo $A $FROM_FILE $BOTH; pwd; id -u; id -G; hostname"),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "1 file flag\n/srv/app\n1000\n1000 1\nweb1\n");
}

#[test]
fn entrypoint_override() {
    let lab = lab();
    let (code, out, _) = lab.output(&["--entrypoint", "echo"], &["hello", "world"]);
    assert_eq!((code, out.as_str()), (0, "hello world\n"));
}

#[test]
fn volumes_and_network_none() {
    let lab = lab();
    let data = lab.root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f"), "host\n").unwrap();
    let ro = format!("{}:/data:ro", data.display());
    let (code, out, err) = lab.output(
        &["-v", &ro, "--network", "none"],
        &sh("cat /data/f; touch /data/g 2>/dev/null || echo RO; ls /sys/class/net"),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "host\nRO\nlo\n");
    let rw = format!("{}:/data", data.display());
    let (code, _, _) = lab.output(&["-v", &rw], &sh("echo made > /data/g"));
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(data.join("g")).unwrap(), "made\n");
    lab.assert_nothing_left();
}

#[test]
fn tty_and_stdin() {
    let lab = lab();
    let (code, out, _) = lab.output(&["-t"], &sh("test -t 0 && test -t 1 && echo TTY; tty"));
    assert_eq!(code, 0);
    assert_eq!(out, "TTY\r\n/dev/pts/0\r\n");
    let (_, out, _) = lab.output(&[], &sh("test -t 1 || echo NOTTY"));
    assert_eq!(out, "NOTTY\n");

    let mut child = lab
        .run(&["-i"], &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(stdout_of(&output), "through stdin\n");
    // Without -i the container's stdin is empty.
    let (code, out, _) = lab.output(&[], &["cat"]);
    assert_eq!((code, out.as_str()), (0, ""));
}

fn start_sleeper(lab: &Lab) -> std::process::Child {
    let mut child = lab
        .run(&[], &sh("echo ready; exec sleep 1000"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    child
}

#[test]
fn sigterm_and_sigint_reach_the_container() {
    let lab = lab();
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let mut child = start_sleeper(&lab);
        std::thread::sleep(std::time::Duration::from_millis(100));
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "signal {signal}");
    }
    lab.assert_nothing_left();
}

#[test]
fn bad_input_gives_clear_errors_and_leaves_nothing() {
    let lab = lab();
    let (code, _, err) = lab.output(&[], &["foo"]);
    assert_eq!(code, 127);
    assert!(
        err.contains("exec: \"foo\": executable file not found in $PATH"),
        "{err}"
    );

    let (code, _, err) = lab.output(&[], &["/etc/passwd"]);
    assert_eq!(code, 126, "{err}");

    let (code, _, err) = lab.output(&["-u", "ghost"], &["id"]);
    assert_eq!(code, 125);
    assert!(
        err.contains("unable to find user ghost: no matching entries in passwd file"),
        "{err}"
    );

    let (code, _, err) = lab.output(&["-v", "/no/such/kiln/path:/x"], &["true"]);
    assert_eq!(code, 125);
    assert!(
        err.contains("bind source path does not exist: /no/such/kiln/path"),
        "{err}"
    );

    let (code, _, err) = lab.output(&["--network", "bridge"], &["true"]);
    assert_eq!(code, 125);
    assert!(err.contains("unknown network mode \"bridge\""), "{err}");

    let missing = lab.root.path().join("nope");
    let output = kiln(&lab.root.path().join("store"))
        .args(["run", "--rootfs"])
        .arg(&missing)
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125));
    assert!(stderr_of(&output).contains("is not a directory"));
    lab.assert_nothing_left();
}

#[test]
fn copy_storage_driver_is_selectable() {
    let lab = lab();
    let (code, out, err) = lab.output(
        &["--storage-driver", "copy"],
        &sh("mount | head -1 | cut -d' ' -f5; echo changed > /bin/new"),
    );
    assert_eq!(code, 0, "{err}");
    assert_ne!(out.trim(), "overlay");
    assert!(!Path::new(&lab.rootfs).join("bin/new").exists());
    let (code, _, err) = lab.output(&["--storage-driver", "zfs"], &["true"]);
    assert_eq!(code, 125);
    assert!(err.contains("unknown storage driver"), "{err}");
    lab.assert_nothing_left();
}

#[test]
fn tty_gets_the_callers_terminal_size() {
    let lab = lab();
    common::require_program("script", "bsdutils");
    let kiln_line = format!(
        "stty cols 100 rows 30; {} --root {} run -t --rootfs {} stty size",
        common::kiln_bin().display(),
        lab.root.path().join("store").display(),
        lab.rootfs.display()
    );
    let output = Command::new("script")
        .args(["-qc", &kiln_line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = stdout_of(&output);
    assert!(out.contains("30 100"), "{out:?}");
}
