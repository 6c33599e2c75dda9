//! `kiln init`: the three processes of a container after the caller's exec.
//!
//! 1. The supervisor (this freshly exec'd process, host namespaces): new session, blocks the
//!    signals it forwards, `unshare(CLONE_NEWPID)`, forks pid 1, then waits. A forwarded
//!    signal goes to pid 1; a signal arriving after the caller died (its `PR_SET_PDEATHSIG`)
//!    kills pid 1 — and with it the whole pid namespace — and removes the state directory.
//! 2. Pid 1 (kiln code, new pid namespace): `PR_SET_PDEATHSIG(SIGKILL)`, unshares mount, uts,
//!    ipc (and net), runs `setup::setup_root`, forks the workload, then reaps every child and
//!    forwards signals until the workload exits, whose status becomes its own exit code (the
//!    kernel then kills whatever the workload left behind).
//! 3. The workload: new session (and the pty as controlling terminal), `setup::prepare_process`,
//!    unblocks signals, `execve`.
//!
//! Failures are written as JSON [`Failure`]s to the status pipe, whose write end is
//! close-on-exec in the workload only: the caller reads EOF exactly when the exec succeeded.

use super::kernel::{Forked, Kernel, Linux};
use super::setup::{self, SetupError};
use super::{read_spec, Failure, InitSpec};
use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// Exit code when kiln itself failed to start the container (Docker's 125).
const EXIT_SETUP: i32 = 125;

/// Signals the supervisor and pid 1 pass on to the workload.
const FORWARDED: [i32; 8] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
];

fn waited_signals() -> Vec<i32> {
    let mut signals = FORWARDED.to_vec();
    signals.push(libc::SIGCHLD);
    signals
}

fn report(status_fd: i32, failure: &Failure) {
    if let Ok(json) = serde_json::to_vec(failure) {
        let _ = Linux.write_fd(status_fd, &json);
    }
}

fn failure_of(err: &SetupError) -> (Failure, i32) {
    match err {
        SetupError::CommandNotFound { command } => (Failure::CommandNotFound(command.clone()), 127),
        SetupError::NotExecutable { command } => (Failure::NotExecutable(command.clone()), 126),
        SetupError::Exec { command, errno } if *errno == nix::errno::Errno::ENOENT => {
            (Failure::CommandNotFound(command.clone()), 127)
        }
        SetupError::Exec { command, .. } => (Failure::NotExecutable(command.clone()), 126),
        SetupError::User(user_error) => (Failure::User(user_error.to_string()), EXIT_SETUP),
        other => (Failure::Setup(other.to_string()), EXIT_SETUP),
    }
}

fn fail(status_fd: i32, err: &SetupError) -> ! {
    let (failure, code) = failure_of(err);
    report(status_fd, &failure);
    std::process::exit(code)
}

/// Entry point of the hidden `kiln init --spec-fd N`. Returns the supervisor's exit code (the
/// container's); the container's own processes never return from here.
pub fn init_main(spec_fd: i32) -> i32 {
    let spec = match read_spec(spec_fd) {
        Ok(spec) => spec,
        Err(message) => {
            eprintln!("kiln init: {message}");
            return EXIT_SETUP;
        }
    };
    supervise(&mut Linux, &spec)
}

/// Whether the caller that started this helper is gone or going: it is no longer our parent,
/// or the thread that started us is exiting. The second case matters when the caller is
/// SIGKILLed: its threads exit one by one, the starting thread's exit sends our
/// `PR_SET_PDEATHSIG`, and we may be reparented to another of its still-exiting threads, so
/// `getppid` still names the caller. Taking that for a forwarded SIGTERM would end the
/// container without anyone left to remove its state directory.
fn caller_gone<K: Kernel>(kernel: &mut K, spec: &InitSpec) -> bool {
    kernel.getppid().as_raw() != spec.parent_pid
        || (spec.parent_tid > 0 && thread_exiting(spec.parent_pid, spec.parent_tid))
}

/// `PF_EXITING` (set as a thread starts to exit), a zombie or dead state, or no such thread.
fn thread_exiting(pid: i32, tid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Some(fields) =
        crate::store::sweep::proc_stat_fields(&format!("/proc/{pid}/task/{tid}/stat"))
    else {
        return true;
    };
    let state = fields.first().and_then(|s| s.chars().next());
    let flags: u64 = fields.get(9 - 3).and_then(|f| f.parse().ok()).unwrap_or(0);
    matches!(state, Some('Z' | 'X' | 'x')) || flags & PF_EXITING != 0
}

fn remove_state_dir(spec: &InitSpec) {
    let _ = std::fs::remove_dir_all(&spec.state_dir);
}

fn supervise<K: Kernel>(kernel: &mut K, spec: &InitSpec) -> i32 {
    let status_fd = spec.status_fd;
    let early = |err: SetupError| -> i32 {
        let (failure, code) = failure_of(&err);
        report(status_fd, &failure);
        code
    };
    // Out of the caller's session and process group: a terminal's ^C reaches the caller only,
    // which forwards it once.
    let _ = kernel.setsid();
    let signals = waited_signals();
    if let Err(errno) = kernel.block_signals(&signals) {
        return early(SetupError::Signals(errno));
    }
    if caller_gone(kernel, spec) {
        remove_state_dir(spec);
        return EXIT_SETUP;
    }
    if let Err(errno) = kernel.unshare(CloneFlags::CLONE_NEWPID) {
        return early(SetupError::Unshare(errno));
    }
    let pid1 = match kernel.fork() {
        Ok(Forked::Parent { child }) => child,
        Ok(Forked::Child) => container_init(kernel, spec),
        Err(errno) => return early(SetupError::Fork(errno)),
    };
    // Our copies of the pipes must not keep the caller from seeing EOF.
    kernel.close(status_fd);
    kernel.close(spec.exit_fd);
    let _ = kernel.stdio_to_null();
    loop {
        let signal = match kernel.wait_signal(&signals) {
            Ok(signal) => signal,
            Err(_) => continue,
        };
        if signal == libc::SIGCHLD {
            while let Ok(Some((pid, exit))) = kernel.reap_any() {
                if pid == pid1 {
                    return exit.code();
                }
            }
            continue;
        }
        if caller_gone(kernel, spec) {
            // The caller is gone: nothing of the container may outlive it.
            let _ = kernel.kill(pid1, libc::SIGKILL);
            loop {
                match kernel.reap_any() {
                    Ok(Some((pid, _))) if pid == pid1 => break,
                    Ok(_) => {
                        let _ = kernel.wait_signal(&[libc::SIGCHLD]);
                    }
                    Err(_) => break,
                }
            }
            remove_state_dir(spec);
            return 128 + libc::SIGKILL;
        }
        let _ = kernel.kill(pid1, signal);
    }
}

/// Pid 1 of the container.
fn container_init<K: Kernel>(kernel: &mut K, spec: &InitSpec) -> ! {
    let status_fd = spec.status_fd;
    if let Err(errno) = kernel.set_parent_death_signal(libc::SIGKILL) {
        fail(status_fd, &SetupError::ParentDeathSignal(errno));
    }
    // Device nodes and stubs get exactly the modes asked for.
    kernel.set_umask(0);
    if let Err(errno) = kernel.unshare(setup::namespaces(spec.network)) {
        fail(status_fd, &SetupError::Unshare(errno));
    }
    if let Err(err) = setup::setup_root(kernel, spec) {
        fail(status_fd, &err);
    }
    let workload = match kernel.fork() {
        Ok(Forked::Parent { child }) => child,
        Ok(Forked::Child) => workload(kernel, spec),
        Err(errno) => fail(status_fd, &SetupError::Fork(errno)),
    };
    kernel.close(status_fd);
    let _ = kernel.stdio_to_null();
    let code = reap_until(kernel, workload);
    finish(kernel, spec.exit_fd, code);
    std::process::exit(code)
}

/// After the workload: kill whatever it left behind (nothing may write to the upper dir once
/// the caller hears the exit code), reap it all, then report the code. Pid 1's own exit, which
/// tears the namespaces down, then runs while the caller already goes on.
fn finish<K: Kernel>(kernel: &mut K, exit_fd: i32, code: i32) {
    let _ = kernel.kill(Pid::from_raw(-1), libc::SIGKILL);
    while let Ok(Some(_)) = kernel.wait_any() {}
    let _ = kernel.write_fd(exit_fd, &code.to_ne_bytes());
}

/// Pid 1's loop: forward signals to the workload, reap every child (orphans included), return
/// the workload's exit code once it is gone.
fn reap_until<K: Kernel>(kernel: &mut K, workload: Pid) -> i32 {
    let signals = waited_signals();
    loop {
        let signal = match kernel.wait_signal(&signals) {
            Ok(signal) => signal,
            Err(_) => continue,
        };
        if signal != libc::SIGCHLD {
            let _ = kernel.kill(workload, signal);
            continue;
        }
        loop {
            match kernel.reap_any() {
                Ok(Some((pid, exit))) if pid == workload => return exit.code(),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
}

fn workload<K: Kernel>(kernel: &mut K, spec: &InitSpec) -> ! {
    let status_fd = spec.status_fd;
    let _ = kernel.setsid();
    if let Some(socket) = spec.tty_socket_fd {
        if let Err(err) = setup::attach_pty(kernel, socket) {
            fail(status_fd, &err);
        }
    }
    let executable = match setup::prepare_process(kernel, spec) {
        Ok(executable) => executable,
        Err(err) => fail(status_fd, &err),
    };
    kernel.set_umask(0o022);
    // Only stdin, stdout and stderr cross into the workload; the status pipe closes on exec.
    kernel.close(spec.exit_fd);
    if let Err(errno) = kernel.cloexec_from_3() {
        fail(status_fd, &SetupError::CloseFds(errno));
    }
    let _ = kernel.unblock_all_signals();
    let errno = kernel.execve(&executable.path, &executable.argv, &executable.env);
    fail(
        status_fd,
        &SetupError::Exec {
            command: spec.argv[0].clone(),
            errno,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_thread_counts_as_gone_once_it_exited() {
        let pid = std::process::id() as i32;
        assert!(!thread_exiting(pid, nix::unistd::gettid().as_raw()));
        let tid = std::thread::spawn(|| nix::unistd::gettid().as_raw())
            .join()
            .unwrap();
        assert!(thread_exiting(pid, tid));
        assert!(thread_exiting(pid, i32::MAX));
    }

    #[test]
    fn exit_codes_for_setup_failures() {
        let (failure, code) = failure_of(&SetupError::CommandNotFound {
            command: "foo".into(),
        });
        assert_eq!(
            (failure, code),
            (Failure::CommandNotFound("foo".into()), 127)
        );
        let (_, code) = failure_of(&SetupError::Exec {
            command: "/x".into(),
            errno: nix::errno::Errno::EACCES,
        });
        assert_eq!(code, 126);
        let (failure, code) = failure_of(&SetupError::Loopback(nix::errno::Errno::EPERM));
        assert_eq!(code, 125);
        assert_eq!(
            failure,
            Failure::Setup("bring loopback up: EPERM: Operation not permitted".into())
        );
    }

    #[test]
    fn pid_1_reaps_orphans_forwards_signals_and_returns_the_workloads_status() {
        use super::super::kernel::tests::Recorder;
        use super::super::kernel::Exit;
        let mut recorder = Recorder::default();
        // SIGTERM arrives first and is forwarded; then an orphan (pid 9) is reaped, then the
        // workload (pid 2) dies of the SIGTERM.
        recorder.signals.extend([libc::SIGTERM, libc::SIGCHLD]);
        let workload = Pid::from_raw(2);
        recorder.exits.push_back((Pid::from_raw(9), Exit::Code(1)));
        recorder
            .exits
            .push_back((workload, Exit::Signal(libc::SIGTERM)));
        let code = reap_until(&mut recorder, workload);
        assert!(recorder.has("kill 2 15"), "{:#?}", recorder.calls);
        assert_eq!(recorder.calls.iter().filter(|c| *c == "reap").count(), 2);
        assert_eq!(code, 143);
    }

    #[test]
    fn exit_code_is_reported_only_after_everything_is_dead() {
        use super::super::kernel::tests::Recorder;
        use super::super::kernel::Exit;
        let mut recorder = Recorder::default();
        recorder
            .exits
            .push_back((Pid::from_raw(7), Exit::Signal(9)));
        finish(&mut recorder, 12, 3);
        assert_eq!(
            recorder.calls,
            vec![
                "kill -1 9",
                "wait_any",
                "wait_any",
                "write_fd 12 [3, 0, 0, 0]"
            ]
        );
    }

    #[test]
    fn forwarded_signals_include_the_terminal_ones() {
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            assert!(waited_signals().contains(&signal));
        }
        assert!(waited_signals().contains(&libc::SIGCHLD));
    }
}
