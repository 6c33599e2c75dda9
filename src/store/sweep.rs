//! The automatic sweep: removes the per-container state dirs under `containers/` and the
//! staging entries under `tmp/` whose owning kiln process is gone (killed, crashed), so a CI
//! machine that cancels jobs does not collect them until `prune`.
//!
//! Ownership is in the entry's *name*: `kiln-<pidns>-<pid>-<start>-<label>`, where `<start>` is
//! the owner's start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot) so a reused
//! pid is not taken for the owner, and `<pidns>` the inode of its pid namespace (a pid from
//! another namespace means nothing here: such entries are never swept). The name is given by
//! the same `mkdir`/`open(O_EXCL)` that creates the entry, so there is no window in which an
//! entry exists without its owner (an `owner` file or an flock taken after creation would have
//! one, and the state dirs of `Rootfs::prepare` must not exist beforehand). Entries without
//! such a name (older kilns, foreign files) are never swept; `prune` still empties `tmp/`.
//!
//! Removal of a stale entry: detach-unmount whatever is still mounted under it in this mount
//! namespace (normally nothing: container mounts die with the container's namespace), rename
//! it to a `tmp/` name owned by the sweeping process (so two sweepers never remove the same
//! tree, and a sweeper killed half-way leaves an entry the next sweep takes), then remove it
//! without ever crossing into another filesystem (a mount the sweep did not see is an error,
//! never a deleted volume), opening mode-000 directories (overlay's `work/work`) on the way.
//! When only kiln was killed, its container supervisor (pdeathsig) kills the container and
//! removes the state dir itself; a sweep running at that moment may share the work, which is
//! harmless (the container is already being killed; vanishing files are not errors).
//!
//! Knows processes, mounts and directory trees; nothing about what the entries hold.

use super::Store;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const PREFIX: &str = "kiln-";

/// The process that owns a store entry: pid namespace inode, pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pidns: u64,
    pub pid: u32,
    pub start: u64,
}

/// What the sweep can say about an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Dead,
    /// Another pid namespace: not ours to judge.
    Unknown,
}

/// The fields of a `/proc/.../stat` file from field 3 (the state letter) on: index `n - 3`
/// is field `n` of proc(5). `None` when the file cannot be read (no such process or thread).
pub(crate) fn proc_stat_fields(path: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// State letter and start time (field 3 and field 22) of `/proc/<pid>/stat`.
fn proc_stat(pid: &str) -> Option<(char, u64)> {
    let fields = proc_stat_fields(&format!("/proc/{pid}/stat"))?;
    let state = fields.first()?.chars().next()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start))
}

fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let text = link.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

impl Owner {
    /// This process, or `None` without a usable `/proc` (then entries are left unowned).
    pub fn current() -> Option<Owner> {
        static CURRENT: OnceLock<Option<Owner>> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let (_, start) = proc_stat("self")?;
            Some(Owner {
                pidns: pid_namespace()?,
                pid: std::process::id(),
                start,
            })
        })
    }

    /// The name of an entry of this owner: `kiln-<pidns>-<pid>-<start>-<label>`, numbers in
    /// base 36 (unix socket paths under a container dir must stay below 108 bytes).
    pub fn name(&self, label: &str) -> String {
        format!(
            "{PREFIX}{}-{}-{}-{label}",
            base36(self.pidns),
            base36(self.pid.into()),
            base36(self.start)
        )
    }

    /// The owner and the rest of an owned entry name.
    pub fn parse_name(name: &str) -> Option<(Owner, &str)> {
        let mut parts = name.strip_prefix(PREFIX)?.splitn(4, '-');
        let mut number = || u64::from_str_radix(parts.next()?, 36).ok();
        let pidns = number()?;
        let pid = u32::try_from(number()?).ok()?;
        let start = number()?;
        let rest = parts.next()?;
        Some((Owner { pidns, pid, start }, rest))
    }

    /// Whether the owner still runs: same pid, same start time, not a zombie.
    pub fn liveness(&self) -> Liveness {
        if pid_namespace() != Some(self.pidns) {
            return Liveness::Unknown;
        }
        match proc_stat(&self.pid.to_string()) {
            Some((state, start)) if start == self.start && state != 'Z' && state != 'X' => {
                Liveness::Alive
            }
            _ => Liveness::Dead,
        }
    }
}

/// The name for a new store entry owned by this process: `kiln-<pidns>-<pid>-<start>-<label>`
/// (just `label` when `/proc` tells nothing; such an entry is never swept). Use it as the
/// tempfile prefix or the directory name of anything created under `tmp/` or `containers/`.
pub fn owned_name(label: &str) -> String {
    match Owner::current() {
        Some(owner) => owner.name(label),
        None => label.to_string(),
    }
}

fn base36(mut value: u64) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8(digits).expect("ascii digits")
}

/// What a sweep removed, and what it could not.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub n_containers: usize,
    pub n_temp: usize,
    /// Snapshots an earlier boot made unsynced (see `store::snapshot`), dropped so they are
    /// unpacked again from their blobs.
    pub n_snapshots: usize,
    pub bytes: u64,
    /// `<path>: <error>` for stale entries left in place.
    pub failures: Vec<String>,
}

impl SweepReport {
    /// Hands the summary line to `log` when there is one.
    pub fn log(&self, log: impl FnOnce(String)) {
        if let Some(line) = self.summary() {
            log(line);
        }
    }

    /// One progress line (`swept N stale containers (X MiB)`), or `None` when nothing happened.
    pub fn summary(&self) -> Option<String> {
        if self.n_containers == 0
            && self.n_temp == 0
            && self.n_snapshots == 0
            && self.failures.is_empty()
        {
            return None;
        }
        let mut line = format!("swept {} stale containers", self.n_containers);
        if self.n_temp > 0 {
            line.push_str(&format!(" and {} temporary entries", self.n_temp));
        }
        if self.n_snapshots > 0 {
            line.push_str(&format!(
                ", dropped {} snapshots an earlier boot left unsynced",
                self.n_snapshots
            ));
        }
        line.push_str(&format!(" ({:.1} MiB)", self.bytes as f64 / 1048576.0));
        if !self.failures.is_empty() {
            line.push_str(&format!("; left in place: {}", self.failures.join("; ")));
        }
        Some(line)
    }
}

/// Mount points in this mount namespace at or under `path` (already canonical), deepest first.
fn mounts_under(path: &Path) -> io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|point| point.starts_with(path))
        .collect();
    found.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    found.dedup();
    Ok(found)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unmount_detach(point: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(point.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: umount2 on a NUL-terminated path.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes a tree on filesystem `dev` and returns the bytes of its files. A directory on
/// another filesystem is an error (a mount), never descended into. Something vanishing
/// meanwhile is not an error: a container supervisor that outlived its kiln may still be
/// removing the same tree (it started before the claiming rename; it never starts after).
fn remove_tree(path: &Path, dev: u64) -> io::Result<u64> {
    let gone = |result: io::Result<()>| match result {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        other => other?,
    };
    if !meta.is_dir() {
        gone(std::fs::remove_file(path))?;
        return Ok(meta.len());
    }
    if meta.dev() != dev {
        return Err(io::Error::other(format!(
            "{} is on another filesystem (a mount point)",
            path.display()
        )));
    }
    // Overlay leaves `work/work` with mode 000; without CAP_DAC_OVERRIDE it cannot be read.
    if meta.mode() & 0o700 != 0o700 {
        gone(std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(0o700),
        ))?;
    }
    let mut bytes = 0;
    let read_dir = match std::fs::read_dir(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        other => other?,
    };
    for entry in read_dir {
        bytes += remove_tree(&entry?.path(), dev)?;
    }
    gone(std::fs::remove_dir(path))?;
    Ok(bytes)
}

impl Store {
    /// Where a new container `id` of this process keeps its state: `containers/<owned name>`
    /// with the id's first 8 characters (the owner part already tells processes apart, a clash
    /// is refused by `Rootfs::prepare`, and forwarding sockets under the dir need short paths).
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir()
            .join(owned_name(id.get(..8).unwrap_or(id)))
    }

    /// `sweep`, handing its summary line (if any) to `log`: the CLI's one-line call.
    pub fn sweep_logged(&self, log: impl FnOnce(String)) {
        self.sweep().log(log);
    }

    /// `sweep_logged` when there is a store (`kiln run --rootfs` has none).
    pub fn sweep_some(store: Option<&Store>, log: impl FnOnce(String)) {
        if let Some(store) = store {
            store.sweep_logged(log);
        }
    }

    /// Drops the snapshots an earlier boot left unsynced (`drop_unsynced_snapshots`), then
    /// removes the entries of `containers/`, `tmp/` and `cache/mounts/` (a cache mount's
    /// half-seeded `new-` dir) whose owner process is gone. Never
    /// touches an entry whose owner is alive, unknown, or not recorded. Best effort: an entry
    /// that cannot be removed is reported in `failures` and left.
    pub fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        match self.drop_unsynced_snapshots() {
            Ok(n) => report.n_snapshots = n,
            Err(err) => report
                .failures
                .push(format!("{}: {err}", self.snapshots_dir().display())),
        }
        let cache_mounts = self.cache_dir().join("mounts");
        for (dir, is_container) in [
            (self.containers_dir(), true),
            (self.tmp_dir(), false),
            (cache_mounts, false),
        ] {
            let Ok(read_dir) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in read_dir.filter_map(|e| e.ok()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some((owner, _)) = Owner::parse_name(&name) else {
                    continue;
                };
                if owner.liveness() != Liveness::Dead {
                    continue;
                }
                match self.remove_stale(&entry.path()) {
                    Ok(Some(bytes)) => {
                        report.bytes += bytes;
                        if is_container {
                            report.n_containers += 1;
                        } else {
                            report.n_temp += 1;
                        }
                    }
                    Ok(None) => {}
                    Err(err) => report
                        .failures
                        .push(format!("{}: {err}", entry.path().display())),
                }
            }
        }
        report
    }

    /// Unmounts, claims (rename into `tmp/` under this process's name) and removes one stale
    /// entry. `None` when another sweeper claimed it first.
    fn remove_stale(&self, path: &Path) -> io::Result<Option<u64>> {
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(None);
        }
        // The parent resolved, not the entry: a stale symlink is removed, never followed.
        let name = path.file_name().unwrap_or_default();
        let canonical = std::fs::canonicalize(path.parent().unwrap_or(path))?.join(name);
        for point in mounts_under(&canonical)? {
            // EINVAL: already gone (a parent's detach took it along).
            match unmount_detach(&point) {
                Err(err) if err.raw_os_error() != Some(libc::EINVAL) => return Err(err),
                _ => {}
            }
        }
        if let Some(point) = mounts_under(&canonical)?.first() {
            return Err(io::Error::other(format!(
                "{} is still mounted",
                point.display()
            )));
        }
        // A counter keeps two claims of this process apart (rename would replace a file).
        static N_CLAIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N_CLAIMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = name.to_string_lossy();
        let claimed = self.tmp_dir().join(owned_name(&format!("swept{n}-{name}")));
        match std::fs::rename(path, &claimed) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        }
        let dev = std::fs::symlink_metadata(self.tmp_dir())?.dev();
        remove_tree(&claimed, dev).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `name` and checks the owner's liveness.
    fn check(name: &str, expect: Option<Liveness>) {
        let got = Owner::parse_name(name).map(|(owner, _)| owner.liveness());
        assert_eq!(got, expect, "{name}");
    }

    fn me() -> Owner {
        Owner::current().expect("/proc is mounted")
    }

    #[test]
    fn this_process_is_alive_and_names_round_trip() {
        let name = owned_name("copy-x1");
        let (owner, rest) = Owner::parse_name(&name).unwrap();
        assert_eq!(owner, me());
        assert_eq!(rest, "copy-x1");
        check(&name, Some(Liveness::Alive));
    }

    #[test]
    fn a_reused_pid_with_another_start_time_is_dead() {
        let owner = me();
        check(
            &Owner {
                start: owner.start + 1,
                ..owner
            }
            .name("x"),
            Some(Liveness::Dead),
        );
    }

    #[test]
    fn an_exited_process_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let (_, start) = proc_stat(&pid.to_string()).unwrap_or(('R', 0));
        child.wait().unwrap();
        check(
            &Owner { pid, start, ..me() }.name("x"),
            Some(Liveness::Dead),
        );
    }

    #[test]
    fn other_namespaces_and_foreign_names_are_never_judged() {
        let owner = me();
        check(
            &Owner {
                pidns: owner.pidns + 1,
                ..owner
            }
            .name("x"),
            Some(Liveness::Unknown),
        );
        check(".tmpAbc", None);
        check("0123abcd", None);
        check("kiln-1-2-x!-y", None);
        assert_eq!(base36(0), "0");
        assert_eq!(base36(4026531836), "1ulajuk");
        assert_eq!(u64::from_str_radix("1ulajuk", 36), Ok(4026531836));
    }

    #[test]
    fn sweep_removes_dead_entries_only_and_opens_mode_000_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = me();
        let dead = Owner {
            start: owner.start + 7,
            ..owner
        }
        .name("");
        let stale = store.containers_dir().join(format!("{dead}abc"));
        std::fs::create_dir_all(stale.join("work/work")).unwrap();
        std::fs::write(stale.join("upper-file"), vec![0u8; 2048]).unwrap();
        std::fs::set_permissions(stale.join("work/work"), PermissionsExt::from_mode(0o000))
            .unwrap();
        std::fs::write(store.tmp_dir().join(format!("{dead}ingest-1")), b"x").unwrap();
        let live = store.containers_dir().join(owned_name("live"));
        std::fs::create_dir_all(&live).unwrap();
        let live_tmp = store.tmp_dir().join(owned_name("copy-2"));
        std::fs::write(&live_tmp, b"y").unwrap();
        let foreign = store.containers_dir().join("0123456789ab");
        std::fs::create_dir_all(&foreign).unwrap();

        let report = store.sweep();
        assert_eq!(
            (report.n_containers, report.n_temp, report.bytes),
            (1, 1, 2049)
        );
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(
            report.summary().unwrap(),
            "swept 1 stale containers and 1 temporary entries (0.0 MiB)"
        );
        assert!(!stale.exists());
        assert!(live.is_dir() && live_tmp.is_file() && foreign.is_dir());
        let mut left: Vec<_> = std::fs::read_dir(store.tmp_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        left.retain(|p| p != &live_tmp);
        assert!(left.is_empty(), "{left:?}");
        assert!(store.sweep().summary().is_none());
    }

    /// Mounts a fresh tmpfs at `point` (needs root: a test without it fails, never skips).
    fn mount_tmpfs(point: &Path) {
        std::fs::create_dir_all(point).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "sweep-test", point.to_str().unwrap()])
            .status()
            .expect("run mount(8)");
        assert!(status.success(), "mounting a tmpfs needs root");
    }

    #[test]
    fn a_mount_left_under_a_stale_entry_is_detached_before_removal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = me();
        let stale = store.containers_dir().join(
            Owner {
                start: owner.start + 3,
                ..owner
            }
            .name("m"),
        );
        mount_tmpfs(&stale.join("merged"));
        std::fs::write(stale.join("merged/file"), b"in tmpfs").unwrap();
        let report = store.sweep();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(report.n_containers, 1);
        assert!(!stale.exists());
        let canonical = std::fs::canonicalize(dir.path()).unwrap();
        assert!(mounts_under(&canonical).unwrap().is_empty());
    }

    #[test]
    fn removal_never_crosses_into_another_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("tree/volume");
        mount_tmpfs(&volume);
        std::fs::write(volume.join("precious"), b"data").unwrap();
        let dev = std::fs::symlink_metadata(dir.path()).unwrap().dev();
        let err = remove_tree(&dir.path().join("tree"), dev).unwrap_err();
        let kept = std::fs::read(volume.join("precious"));
        unmount_detach(&volume).unwrap();
        assert!(err.to_string().contains("another filesystem"), "{err}");
        assert_eq!(kept.unwrap(), b"data");
    }

    #[test]
    fn concurrent_sweeps_remove_each_stale_entry_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = me();
        for index in 0..40 {
            let dead = Owner {
                start: owner.start + 1 + index,
                ..owner
            };
            let stale = store.containers_dir().join(dead.name("c"));
            std::fs::create_dir_all(stale.join("upper/d")).unwrap();
            std::fs::write(stale.join("upper/d/f"), b"1234").unwrap();
            std::fs::write(store.tmp_dir().join(dead.name("t")), b"12").unwrap();
        }
        let reports: Vec<SweepReport> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| store.sweep())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total = |f: fn(&SweepReport) -> u64| reports.iter().map(f).sum::<u64>();
        assert_eq!(total(|r| r.n_containers as u64), 40);
        assert_eq!(total(|r| r.n_temp as u64), 40);
        assert_eq!(total(|r| r.bytes), 40 * 6);
        assert!(reports.iter().all(|r| r.failures.is_empty()), "{reports:?}");
        assert_eq!(
            std::fs::read_dir(store.containers_dir()).unwrap().count(),
            0
        );
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
