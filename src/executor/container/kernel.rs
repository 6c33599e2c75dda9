//! The one door to the kernel for container set-up: every namespace, mount, device, credential
//! and process call the set-up logic makes goes through the [`Kernel`] trait, so the logic in
//! `setup`, `rootfs` and `init` is unit-tested with [`tests::Recorder`], a recording fake.
//!
//! [`Linux`] is the real implementation. It uses nix where nix has the call and raw `libc`
//! syscalls where it does not (the new mount API `fsopen`/`fsconfig`/`fsmount`/`move_mount`,
//! `capset`, `PR_CAPBSET_DROP`, the loopback `SIOCSIFFLAGS` ioctl): those few calls are written
//! by hand because no pre-built crate here covers them and each is a handful of lines.
//!
//! This module knows nothing about images, specs or Docker semantics.

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Pid, Uid};
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What `lstat` found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    File,
    Symlink,
    Other,
}

/// Outcome of `fork` as seen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    Parent { child: Pid },
    Child,
}

/// How a child ended, from `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// The shell convention: a code as is, a signal `n` as `128 + n`.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
        }
    }
}

/// Every kernel call container set-up makes. Methods map one to one onto system calls (or a
/// fixed short sequence of them, such as the new mount API's four calls for one overlay).
pub trait Kernel {
    fn unshare(&mut self, flags: CloneFlags) -> Result<(), Errno>;
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    /// Mounts an overlay with the new mount API: `fsopen("overlay")`, one `fsconfig` per
    /// option, one `lowerdir+` per lower dir (top first; no length limit), `fsmount`,
    /// `move_mount` onto `target`. With `target == None` only the superblock is created (a probe
    /// that leaves nothing mounted anywhere).
    fn mount_overlay_fsconfig(
        &mut self,
        lowerdirs_top_first: &[PathBuf],
        upperdir: &Path,
        workdir: &Path,
        options: &[(&str, &str)],
        target: Option<&Path>,
    ) -> Result<(), Errno>;
    fn umount(&mut self, target: &Path, flags: MntFlags) -> Result<(), Errno>;
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> Result<(), Errno>;
    fn chdir(&mut self, path: &Path) -> Result<(), Errno>;
    fn mkdir(&mut self, path: &Path, mode: u32) -> Result<(), Errno>;
    /// Creates an empty regular file (exclusive).
    fn create_file(&mut self, path: &Path, mode: u32) -> Result<(), Errno>;
    fn write_file(&mut self, path: &Path, contents: &[u8]) -> Result<(), Errno>;
    fn read_file(&mut self, path: &Path) -> Result<Vec<u8>, Errno>;
    fn file_kind(&mut self, path: &Path) -> Result<Option<FileKind>, Errno>;
    fn read_link(&mut self, path: &Path) -> Result<PathBuf, Errno>;
    fn symlink(&mut self, target: &Path, link: &Path) -> Result<(), Errno>;
    fn mknod(&mut self, path: &Path, kind: SFlag, mode: u32, dev: u64) -> Result<(), Errno>;
    fn lchown(&mut self, path: &Path, uid: u32, gid: u32) -> Result<(), Errno>;
    fn sethostname(&mut self, name: &str) -> Result<(), Errno>;
    /// Brings the loopback interface of the current network namespace up.
    fn loopback_up(&mut self) -> Result<(), Errno>;
    fn setsid(&mut self) -> Result<(), Errno>;
    /// Makes fd 0 (a terminal) the controlling terminal of the calling session.
    fn set_controlling_tty(&mut self) -> Result<(), Errno>;
    fn set_parent_death_signal(&mut self, signal: i32) -> Result<(), Errno>;
    fn getppid(&mut self) -> Pid;
    /// Forks. Only called from the freshly exec'd, single-threaded `kiln init` process.
    fn fork(&mut self) -> Result<Forked, Errno>;
    fn kill(&mut self, pid: Pid, signal: i32) -> Result<(), Errno>;
    /// Waits for any child without blocking; `None` when no child has exited yet.
    fn reap_any(&mut self) -> Result<Option<(Pid, Exit)>, Errno>;
    /// Blocks the given signals (so they can be waited for) or restores an empty mask.
    fn block_signals(&mut self, signals: &[i32]) -> Result<(), Errno>;
    fn unblock_all_signals(&mut self) -> Result<(), Errno>;
    /// Waits for one of the blocked signals.
    fn wait_signal(&mut self, signals: &[i32]) -> Result<i32, Errno>;
    /// Drops every capability not in `keep` from the bounding set, clears the ambient set and
    /// sets effective = permitted = `keep`, inheritable = empty.
    fn limit_capabilities(&mut self, keep: &[u32]) -> Result<(), Errno>;
    fn set_no_new_privs(&mut self) -> Result<(), Errno>;
    fn set_credentials(&mut self, uid: u32, gid: u32, groups: &[u32]) -> Result<(), Errno>;
    fn set_cloexec(&mut self, fd: i32) -> Result<(), Errno>;
    /// Replaces the process image; returns only on failure.
    fn execve(&mut self, path: &Path, argv: &[String], env: &[String]) -> Errno;
    /// `Some(true)`: a non-directory with an execute bit (following symlinks); `Some(false)`: a
    /// non-directory without; `None`: absent or a directory.
    fn is_executable(&mut self, path: &Path) -> Result<Option<bool>, Errno>;
    fn set_umask(&mut self, mask: u32);
    /// Marks every fd from 3 up close-on-exec (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`), so
    /// the workload starts with exactly stdin, stdout and stderr.
    fn cloexec_from_3(&mut self) -> Result<(), Errno>;
    /// Opens a new pseudo-terminal pair in the current `/dev/ptmx`; returns (master, slave).
    fn open_pty(&mut self) -> Result<(i32, i32), Errno>;
    /// Sends `fd` over the unix socket `socket` (SCM_RIGHTS).
    fn send_fd(&mut self, socket: i32, fd: i32) -> Result<(), Errno>;
    /// Blocks until one byte arrives on `fd` (or it reaches end of file): the hand-shake that
    /// keeps the workload from exec'ing before kiln has sized its terminal.
    fn wait_byte(&mut self, fd: i32) -> Result<(), Errno>;
    fn dup2(&mut self, from: i32, to: i32) -> Result<(), Errno>;
    fn close(&mut self, fd: i32);
    /// Points fds 0, 1 and 2 at `/dev/null`, so a supervisor holds no end of the caller's
    /// output pipes.
    fn stdio_to_null(&mut self) -> Result<(), Errno>;
    /// Waits (blocking) for any child; `None` once there are no children left.
    fn wait_any(&mut self) -> Result<Option<(Pid, Exit)>, Errno>;
    /// Writes `bytes` to `fd` (the status and exit pipes).
    fn write_fd(&mut self, fd: i32, bytes: &[u8]) -> Result<(), Errno>;
}

/// The real kernel.
#[derive(Debug, Default)]
pub struct Linux;

fn cstring(path: &OsStr) -> Result<CString, Errno> {
    CString::new(path.as_bytes()).map_err(|_| Errno::EINVAL)
}

fn errno_of(err: std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;

#[repr(C)]
struct IfreqFlags {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn syscall_result(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn fd_guard(fd: libc::c_long) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// Sets `key` to `value`, or sets the flag `key` when `value` is empty (flag parameters such
/// as overlay's `volatile` refuse a string value).
fn fsconfig_string(fs_fd: i32, key: &str, value: &OsStr) -> Result<(), Errno> {
    let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
    if value.is_empty() {
        // SAFETY: valid fd and a NUL-terminated key that outlives the call.
        return syscall_result(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs_fd,
                FSCONFIG_SET_FLAG,
                key.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        })
        .map(drop);
    }
    let value = cstring(value)?;
    // SAFETY: valid fd and NUL-terminated strings that outlive the call.
    syscall_result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs_fd,
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    })
    .map(drop)
}

impl Kernel for Linux {
    fn unshare(&mut self, flags: CloneFlags) -> Result<(), Errno> {
        nix::sched::unshare(flags)
    }

    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn mount_overlay_fsconfig(
        &mut self,
        lowerdirs_top_first: &[PathBuf],
        upperdir: &Path,
        workdir: &Path,
        options: &[(&str, &str)],
        target: Option<&Path>,
    ) -> Result<(), Errno> {
        use std::os::fd::AsRawFd;
        let fstype = CString::new("overlay").expect("static string");
        // SAFETY: plain syscalls on valid NUL-terminated strings; fds are wrapped at once.
        let fs_fd = fd_guard(syscall_result(unsafe {
            libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC)
        })?);
        let raw = fs_fd.as_raw_fd();
        for lower in lowerdirs_top_first {
            fsconfig_string(raw, "lowerdir+", lower.as_os_str())?;
        }
        fsconfig_string(raw, "upperdir", upperdir.as_os_str())?;
        fsconfig_string(raw, "workdir", workdir.as_os_str())?;
        for (key, value) in options {
            fsconfig_string(raw, key, OsStr::new(value))?;
        }
        // SAFETY: as above.
        syscall_result(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                raw,
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        })?;
        let Some(target) = target else {
            return Ok(());
        };
        // SAFETY: as above.
        let mnt_fd = fd_guard(syscall_result(unsafe {
            libc::syscall(libc::SYS_fsmount, raw, FSMOUNT_CLOEXEC, 0)
        })?);
        let empty = CString::new("").expect("static string");
        let target = cstring(target.as_os_str())?;
        // SAFETY: as above.
        syscall_result(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mnt_fd.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        })
        .map(drop)
    }

    fn umount(&mut self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        nix::mount::umount2(target, flags)
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chdir(&mut self, path: &Path) -> Result<(), Errno> {
        nix::unistd::chdir(path)
    }

    fn mkdir(&mut self, path: &Path, mode: u32) -> Result<(), Errno> {
        nix::unistd::mkdir(path, Mode::from_bits_truncate(mode))
    }

    fn create_file(&mut self, path: &Path, mode: u32) -> Result<(), Errno> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map(drop)
            .map_err(errno_of)
    }

    fn write_file(&mut self, path: &Path, contents: &[u8]) -> Result<(), Errno> {
        std::fs::write(path, contents).map_err(errno_of)
    }

    fn read_file(&mut self, path: &Path) -> Result<Vec<u8>, Errno> {
        std::fs::read(path).map_err(errno_of)
    }

    fn file_kind(&mut self, path: &Path) -> Result<Option<FileKind>, Errno> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                let file_type = meta.file_type();
                Ok(Some(if file_type.is_dir() {
                    FileKind::Directory
                } else if file_type.is_file() {
                    FileKind::File
                } else if file_type.is_symlink() {
                    FileKind::Symlink
                } else {
                    FileKind::Other
                }))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(errno_of(err)),
        }
    }

    fn read_link(&mut self, path: &Path) -> Result<PathBuf, Errno> {
        std::fs::read_link(path).map_err(errno_of)
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> Result<(), Errno> {
        std::os::unix::fs::symlink(target, link).map_err(errno_of)
    }

    fn mknod(&mut self, path: &Path, kind: SFlag, mode: u32, dev: u64) -> Result<(), Errno> {
        nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(mode), dev)
    }

    fn lchown(&mut self, path: &Path, uid: u32, gid: u32) -> Result<(), Errno> {
        nix::unistd::fchownat(
            None,
            path,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
    }

    fn sethostname(&mut self, name: &str) -> Result<(), Errno> {
        nix::unistd::sethostname(name)
    }

    fn loopback_up(&mut self) -> Result<(), Errno> {
        use std::os::fd::AsRawFd;
        // SAFETY: socket(2) with constant arguments; the fd is wrapped at once.
        let sock = fd_guard(syscall_result(unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
        } as libc::c_long)?);
        let mut request = IfreqFlags {
            name: [0; 16],
            flags: 0,
            pad: [0; 22],
        };
        request.name[..2].copy_from_slice(b"lo");
        // SAFETY: `request` is a properly sized `struct ifreq` for the flags ioctls.
        syscall_result(unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                SIOCGIFFLAGS,
                &mut request as *mut IfreqFlags,
            )
        } as libc::c_long)?;
        request.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        // SAFETY: as above.
        syscall_result(unsafe {
            libc::ioctl(
                sock.as_raw_fd(),
                SIOCSIFFLAGS,
                &mut request as *mut IfreqFlags,
            )
        } as libc::c_long)
        .map(drop)
    }

    fn setsid(&mut self) -> Result<(), Errno> {
        nix::unistd::setsid().map(drop)
    }

    fn set_controlling_tty(&mut self) -> Result<(), Errno> {
        // SAFETY: TIOCSCTTY on fd 0 takes an int argument.
        syscall_result(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } as libc::c_long).map(drop)
    }

    fn set_parent_death_signal(&mut self, signal: i32) -> Result<(), Errno> {
        // SAFETY: prctl with integer arguments.
        syscall_result(
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) } as libc::c_long,
        )
        .map(drop)
    }

    fn getppid(&mut self) -> Pid {
        nix::unistd::getppid()
    }

    fn fork(&mut self) -> Result<Forked, Errno> {
        // SAFETY: `kiln init` is a freshly exec'd process that never starts a thread, so the
        // child may allocate and lock freely.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent { child }),
            nix::unistd::ForkResult::Child => Ok(Forked::Child),
        }
    }

    fn kill(&mut self, pid: Pid, signal: i32) -> Result<(), Errno> {
        // SAFETY: kill(2) with integer arguments.
        syscall_result(unsafe { libc::kill(pid.as_raw(), signal) } as libc::c_long).map(drop)
    }

    fn reap_any(&mut self) -> Result<Option<(Pid, Exit)>, Errno> {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => return Ok(Some((pid, Exit::Code(code)))),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    return Ok(Some((pid, Exit::Signal(signal as i32))))
                }
                Ok(WaitStatus::StillAlive) => return Ok(None),
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(err) => return Err(err),
            }
        }
    }

    fn block_signals(&mut self, signals: &[i32]) -> Result<(), Errno> {
        let set = sigset(signals)?;
        set.thread_block()
    }

    fn unblock_all_signals(&mut self) -> Result<(), Errno> {
        nix::sys::signal::SigSet::empty().thread_set_mask()
    }

    fn wait_signal(&mut self, signals: &[i32]) -> Result<i32, Errno> {
        let set = sigset(signals)?;
        loop {
            match set.wait() {
                Ok(signal) => return Ok(signal as i32),
                Err(Errno::EINTR) => continue,
                Err(err) => return Err(err),
            }
        }
    }

    fn limit_capabilities(&mut self, keep: &[u32]) -> Result<(), Errno> {
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .unwrap_or(40);
        for cap in 0..=last_cap {
            if !keep.contains(&cap) {
                // SAFETY: prctl with integer arguments.
                syscall_result(unsafe {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0)
                } as libc::c_long)?;
            }
        }
        // SAFETY: as above.
        syscall_result(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        } as libc::c_long)?;
        let mut data = [CapData::default(); 2];
        for cap in keep {
            let slot = &mut data[(*cap / 32) as usize];
            slot.effective |= 1 << (cap % 32);
            slot.permitted |= 1 << (cap % 32);
        }
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        // SAFETY: header and a two-element data array as capset(2) v3 expects.
        syscall_result(unsafe {
            libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            )
        })
        .map(drop)
    }

    fn set_no_new_privs(&mut self) -> Result<(), Errno> {
        // SAFETY: prctl with integer arguments.
        syscall_result(
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long,
        )
        .map(drop)
    }

    fn set_credentials(&mut self, uid: u32, gid: u32, groups: &[u32]) -> Result<(), Errno> {
        let groups: Vec<Gid> = groups.iter().map(|gid| Gid::from_raw(*gid)).collect();
        nix::unistd::setgroups(&groups)?;
        let gid = Gid::from_raw(gid);
        nix::unistd::setresgid(gid, gid, gid)?;
        let uid = Uid::from_raw(uid);
        nix::unistd::setresuid(uid, uid, uid)
    }

    fn set_cloexec(&mut self, fd: i32) -> Result<(), Errno> {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(drop)
    }

    fn execve(&mut self, path: &Path, argv: &[String], env: &[String]) -> Errno {
        let to_c = |items: &[String]| -> Result<Vec<CString>, Errno> {
            items
                .iter()
                .map(|item| CString::new(item.as_bytes()).map_err(|_| Errno::EINVAL))
                .collect()
        };
        let (path, argv, env) = match (cstring(path.as_os_str()), to_c(argv), to_c(env)) {
            (Ok(path), Ok(argv), Ok(env)) => (path, argv, env),
            _ => return Errno::EINVAL,
        };
        match nix::unistd::execve(&path, &argv, &env) {
            Ok(never) => match never {},
            Err(err) => err,
        }
    }

    fn is_executable(&mut self, path: &Path) -> Result<Option<bool>, Errno> {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => Ok(None),
            Ok(meta) => Ok(Some(meta.permissions().mode() & 0o111 != 0)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) if err.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(err) => Err(errno_of(err)),
        }
    }

    fn set_umask(&mut self, mask: u32) {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask));
    }

    fn cloexec_from_3(&mut self) -> Result<(), Errno> {
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 4;
        // SAFETY: close_range with integer arguments.
        syscall_result(unsafe {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC)
        })
        .map(drop)
    }

    fn open_pty(&mut self) -> Result<(i32, i32), Errno> {
        use std::os::fd::IntoRawFd;
        let master = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open("/dev/ptmx")
            .map_err(errno_of)?;
        use std::os::fd::AsRawFd;
        let mut unlock: libc::c_int = 0;
        let mut number: libc::c_uint = 0;
        // SAFETY: TIOCSPTLCK takes an int*, TIOCGPTN an unsigned int*.
        unsafe {
            if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) < 0
                || libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut number) < 0
            {
                return Err(Errno::last());
            }
        }
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(format!("/dev/pts/{number}"))
            .map_err(errno_of)?;
        Ok((master.into_raw_fd(), slave.into_raw_fd()))
    }

    fn wait_byte(&mut self, fd: i32) -> Result<(), Errno> {
        let mut byte = [0u8; 1];
        loop {
            // SAFETY: reads at most one byte into a live one-byte buffer.
            let read = unsafe { libc::read(fd, byte.as_mut_ptr() as *mut libc::c_void, 1) };
            match read {
                n if n >= 0 => return Ok(()),
                _ if Errno::last() == Errno::EINTR => continue,
                _ => return Err(Errno::last()),
            }
        }
    }

    fn send_fd(&mut self, socket: i32, fd: i32) -> Result<(), Errno> {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr() as *mut libc::c_void,
            iov_len: 1,
        };
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        message.msg_controllen = space as _;
        // SAFETY: the control buffer has room for one SCM_RIGHTS header and one int.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(header) as *mut i32, fd);
        }
        // SAFETY: a fully initialised msghdr.
        syscall_result(
            unsafe { libc::sendmsg(socket, &message, libc::MSG_NOSIGNAL) } as libc::c_long,
        )
        .map(drop)
    }

    fn dup2(&mut self, from: i32, to: i32) -> Result<(), Errno> {
        nix::unistd::dup2(from, to).map(drop)
    }

    fn close(&mut self, fd: i32) {
        let _ = nix::unistd::close(fd);
    }

    fn stdio_to_null(&mut self) -> Result<(), Errno> {
        use std::os::fd::AsRawFd;
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(errno_of)?;
        for fd in 0..3 {
            nix::unistd::dup2(null.as_raw_fd(), fd)?;
        }
        Ok(())
    }

    fn wait_any(&mut self) -> Result<Option<(Pid, Exit)>, Errno> {
        use nix::sys::wait::{waitpid, WaitStatus};
        loop {
            match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(pid, code)) => return Ok(Some((pid, Exit::Code(code)))),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    return Ok(Some((pid, Exit::Signal(signal as i32))))
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return Ok(None),
                Err(err) => return Err(err),
            }
        }
    }

    fn write_fd(&mut self, fd: i32, bytes: &[u8]) -> Result<(), Errno> {
        use std::io::Write;
        use std::os::fd::FromRawFd;
        // SAFETY: the fd stays owned by the caller: ManuallyDrop never closes it.
        let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
        file.write_all(bytes).map_err(errno_of)
    }
}

fn sigset(signals: &[i32]) -> Result<nix::sys::signal::SigSet, Errno> {
    let mut set = nix::sys::signal::SigSet::empty();
    for signal in signals {
        set.add(nix::sys::signal::Signal::try_from(*signal)?);
    }
    Ok(set)
}

#[cfg(test)]
pub mod tests {
    //! The recording fake: logs every call as one line and answers file questions from a
    //! small in-memory table.

    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Default)]
    pub struct Recorder {
        pub calls: Vec<String>,
        /// Paths that exist, with their kind; everything else is absent.
        pub files: BTreeMap<PathBuf, FileKind>,
        pub contents: BTreeMap<PathBuf, Vec<u8>>,
        pub links: BTreeMap<PathBuf, PathBuf>,
        /// Answers for `is_executable`.
        pub executables: BTreeMap<PathBuf, bool>,
        /// Signals `wait_signal` returns, in order (then SIGCHLD forever).
        pub signals: std::collections::VecDeque<i32>,
        /// Children `reap_any` reports, in order (then none).
        pub exits: std::collections::VecDeque<(Pid, Exit)>,
        /// Calls (by their first word) that fail with the given errno.
        pub failures: BTreeMap<String, Errno>,
        /// Calls containing the text that fail with the given errno.
        pub failures_containing: Vec<(String, Errno)>,
    }

    /// `MsFlags(MS_BIND | MS_REC)` -> `MS_BIND | MS_REC`.
    fn bits<T: std::fmt::Debug>(flags: T) -> String {
        let text = format!("{flags:?}");
        match (text.find('('), text.rfind(')')) {
            (Some(open), Some(close)) if &text[open + 1..close] == "0x0" => "-".into(),
            (Some(open), Some(close)) => text[open + 1..close].to_string(),
            _ => text,
        }
    }

    impl Recorder {
        pub fn with_dirs(dirs: &[&str]) -> Recorder {
            let mut recorder = Recorder::default();
            for dir in dirs {
                recorder
                    .files
                    .insert(PathBuf::from(dir), FileKind::Directory);
            }
            recorder
        }

        fn log(&mut self, line: String) -> Result<(), Errno> {
            let word = line.split(' ').next().unwrap_or_default().to_string();
            let refused = self
                .failures_containing
                .iter()
                .find(|(text, _)| line.contains(text.as_str()))
                .map(|(_, errno)| *errno);
            self.calls.push(line);
            match self.failures.get(&word).copied().or(refused) {
                Some(errno) => Err(errno),
                None => Ok(()),
            }
        }

        pub fn has(&self, needle: &str) -> bool {
            self.calls.iter().any(|call| call == needle)
        }

        pub fn position(&self, needle: &str) -> usize {
            self.calls
                .iter()
                .position(|call| call == needle)
                .unwrap_or_else(|| panic!("no call {needle:?} in {:#?}", self.calls))
        }
    }

    impl Kernel for Recorder {
        fn unshare(&mut self, flags: CloneFlags) -> Result<(), Errno> {
            self.log(format!("unshare {}", bits(flags)))
        }
        fn mount(
            &mut self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> Result<(), Errno> {
            self.log(format!(
                "mount {} {} {} {} {}",
                source
                    .map(|p| p.display().to_string())
                    .unwrap_or("-".into()),
                target.display(),
                fstype.unwrap_or("-"),
                bits(flags),
                data.unwrap_or("-")
            ))
        }
        fn mount_overlay_fsconfig(
            &mut self,
            lowerdirs_top_first: &[PathBuf],
            upperdir: &Path,
            workdir: &Path,
            options: &[(&str, &str)],
            target: Option<&Path>,
        ) -> Result<(), Errno> {
            self.log(format!(
                "fsconfig-overlay {:?} {} {} {:?} {:?}",
                lowerdirs_top_first,
                upperdir.display(),
                workdir.display(),
                options,
                target
            ))
        }
        fn umount(&mut self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
            self.log(format!("umount {} {}", target.display(), bits(flags)))
        }
        fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
            self.log(format!(
                "pivot_root {} {}",
                new_root.display(),
                put_old.display()
            ))
        }
        fn chdir(&mut self, path: &Path) -> Result<(), Errno> {
            self.log(format!("chdir {}", path.display()))
        }
        fn mkdir(&mut self, path: &Path, mode: u32) -> Result<(), Errno> {
            self.log(format!("mkdir {} {mode:o}", path.display()))?;
            self.files.insert(path.to_path_buf(), FileKind::Directory);
            Ok(())
        }
        fn create_file(&mut self, path: &Path, mode: u32) -> Result<(), Errno> {
            self.log(format!("create {} {mode:o}", path.display()))?;
            self.files.insert(path.to_path_buf(), FileKind::File);
            Ok(())
        }
        fn write_file(&mut self, path: &Path, contents: &[u8]) -> Result<(), Errno> {
            self.log(format!("write {}", path.display()))?;
            self.contents.insert(path.to_path_buf(), contents.to_vec());
            Ok(())
        }
        fn read_file(&mut self, path: &Path) -> Result<Vec<u8>, Errno> {
            self.calls.push(format!("read {}", path.display()));
            self.contents.get(path).cloned().ok_or(Errno::ENOENT)
        }
        fn file_kind(&mut self, path: &Path) -> Result<Option<FileKind>, Errno> {
            Ok(self.files.get(path).copied())
        }
        fn read_link(&mut self, path: &Path) -> Result<PathBuf, Errno> {
            self.links.get(path).cloned().ok_or(Errno::EINVAL)
        }
        fn symlink(&mut self, target: &Path, link: &Path) -> Result<(), Errno> {
            self.log(format!("symlink {} {}", target.display(), link.display()))
        }
        fn mknod(&mut self, path: &Path, kind: SFlag, mode: u32, dev: u64) -> Result<(), Errno> {
            let major = nix::sys::stat::major(dev);
            let minor = nix::sys::stat::minor(dev);
            self.log(format!(
                "mknod {} {} {mode:o} {major}:{minor}",
                path.display(),
                bits(kind)
            ))
        }
        fn lchown(&mut self, path: &Path, uid: u32, gid: u32) -> Result<(), Errno> {
            self.log(format!("lchown {} {uid}:{gid}", path.display()))
        }
        fn sethostname(&mut self, name: &str) -> Result<(), Errno> {
            self.log(format!("sethostname {name}"))
        }
        fn loopback_up(&mut self) -> Result<(), Errno> {
            self.log("loopback_up".into())
        }
        fn setsid(&mut self) -> Result<(), Errno> {
            self.log("setsid".into())
        }
        fn set_controlling_tty(&mut self) -> Result<(), Errno> {
            self.log("set_controlling_tty".into())
        }
        fn set_parent_death_signal(&mut self, signal: i32) -> Result<(), Errno> {
            self.log(format!("pdeathsig {signal}"))
        }
        fn getppid(&mut self) -> Pid {
            Pid::from_raw(1)
        }
        fn fork(&mut self) -> Result<Forked, Errno> {
            self.log("fork".into())?;
            Ok(Forked::Child)
        }
        fn kill(&mut self, pid: Pid, signal: i32) -> Result<(), Errno> {
            self.log(format!("kill {pid} {signal}"))
        }
        fn reap_any(&mut self) -> Result<Option<(Pid, Exit)>, Errno> {
            self.log("reap".into())?;
            Ok(self.exits.pop_front())
        }
        fn block_signals(&mut self, signals: &[i32]) -> Result<(), Errno> {
            self.log(format!("block {signals:?}"))
        }
        fn unblock_all_signals(&mut self) -> Result<(), Errno> {
            self.log("unblock".into())
        }
        fn wait_signal(&mut self, signals: &[i32]) -> Result<i32, Errno> {
            self.log(format!("sigwait {signals:?}"))?;
            Ok(self.signals.pop_front().unwrap_or(libc::SIGCHLD))
        }
        fn limit_capabilities(&mut self, keep: &[u32]) -> Result<(), Errno> {
            self.log(format!("caps {keep:?}"))
        }
        fn set_no_new_privs(&mut self) -> Result<(), Errno> {
            self.log("no_new_privs".into())
        }
        fn set_credentials(&mut self, uid: u32, gid: u32, groups: &[u32]) -> Result<(), Errno> {
            self.log(format!("credentials {uid} {gid} {groups:?}"))
        }
        fn set_cloexec(&mut self, fd: i32) -> Result<(), Errno> {
            self.log(format!("cloexec {fd}"))
        }
        fn execve(&mut self, path: &Path, argv: &[String], env: &[String]) -> Errno {
            let _ = self.log(format!("execve {} {argv:?} {env:?}", path.display()));
            Errno::ENOEXEC
        }
        fn is_executable(&mut self, path: &Path) -> Result<Option<bool>, Errno> {
            Ok(self.executables.get(path).copied())
        }
        fn set_umask(&mut self, mask: u32) {
            let _ = self.log(format!("umask {mask:o}"));
        }
        fn cloexec_from_3(&mut self) -> Result<(), Errno> {
            self.log("cloexec_from_3".into())
        }
        fn open_pty(&mut self) -> Result<(i32, i32), Errno> {
            self.log("open_pty".into())?;
            Ok((100, 101))
        }
        fn send_fd(&mut self, socket: i32, fd: i32) -> Result<(), Errno> {
            self.log(format!("send_fd {socket} {fd}"))
        }
        fn wait_byte(&mut self, fd: i32) -> Result<(), Errno> {
            self.log(format!("wait_byte {fd}"))
        }
        fn dup2(&mut self, from: i32, to: i32) -> Result<(), Errno> {
            self.log(format!("dup2 {from} {to}"))
        }
        fn close(&mut self, fd: i32) {
            let _ = self.log(format!("close {fd}"));
        }
        fn stdio_to_null(&mut self) -> Result<(), Errno> {
            self.log("stdio_to_null".into())
        }
        fn wait_any(&mut self) -> Result<Option<(Pid, Exit)>, Errno> {
            self.log("wait_any".into())?;
            Ok(self.exits.pop_front())
        }
        fn write_fd(&mut self, fd: i32, bytes: &[u8]) -> Result<(), Errno> {
            self.log(format!("write_fd {fd} {bytes:?}"))
        }
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(Exit::Code(3).code(), 3);
        assert_eq!(Exit::Signal(9).code(), 137);
        assert_eq!(Exit::Signal(15).code(), 143);
    }

    #[test]
    fn recorder_fails_on_request() {
        let mut recorder = Recorder::default();
        recorder.failures.insert("umount".into(), Errno::EBUSY);
        assert_eq!(
            recorder.umount(Path::new("/x"), MntFlags::MNT_DETACH),
            Err(Errno::EBUSY)
        );
        assert!(recorder.has("umount /x MNT_DETACH"));
    }
}
