//! The context walk: `.dockerignore` applied while walking (pruning, re-inclusion under an
//! excluded directory), entry metadata and digests, the `<Dockerfile>.dockerignore` rule, and
//! the stat cache proving that an unchanged file is not read again.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln::context::walk::RACY_WINDOW_NS;
use kiln::context::{ContextError, ContextIndex, EntryKind, IgnoreFile, Matcher};
use kiln::digest::Digest;

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn paths(index: &ContextIndex) -> Vec<String> {
    index
        .entries()
        .iter()
        .map(|e| e.path.to_string_lossy().into_owned())
        .collect()
}

fn matcher(patterns: &[&str]) -> Matcher {
    Matcher::new(patterns).unwrap()
}

/// Waits until files written now are older than the stat cache's racy window.
fn settle() {
    std::thread::sleep(Duration::from_nanos(RACY_WINDOW_NS as u64) + Duration::from_millis(50));
}

#[test]
fn scan_lists_entries_with_metadata_and_digests() {
    let context = tempfile::tempdir().unwrap();
    let root = context.path();
    write(root, "a.txt", "hello");
    write(root, "dir/b.bin", "bytes");
    std::fs::set_permissions(
        root.join("dir/b.bin"),
        std::fs::Permissions::from_mode(0o4751),
    )
    .unwrap();
    std::fs::create_dir(root.join("empty")).unwrap();
    std::os::unix::fs::symlink("dir/b.bin", root.join("link")).unwrap();

    let index = ContextIndex::scan(root, &Matcher::empty(), None).unwrap();
    assert_eq!(
        paths(&index),
        ["a.txt", "dir", "dir/b.bin", "empty", "link"]
    );
    let a = index.get(Path::new("a.txt")).unwrap();
    assert_eq!(a.kind, EntryKind::File);
    assert_eq!(a.size, 5);
    assert_eq!(a.digest, Some(Digest::of_bytes(b"hello")));
    let b = index.get(Path::new("dir/b.bin")).unwrap();
    assert_eq!(b.mode, 0o4751);
    assert_eq!(b.uid, nix::unistd::geteuid().as_raw());
    assert_eq!(b.digest, Some(Digest::of_bytes(b"bytes")));
    let dir = index.get(Path::new("dir")).unwrap();
    assert_eq!(
        (dir.kind, dir.size, dir.digest.clone()),
        (EntryKind::Dir, 0, None)
    );
    let link = index.get(Path::new("link")).unwrap();
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(link.link_target.as_deref(), Some(Path::new("dir/b.bin")));
    assert_eq!(link.digest, None);
    assert_eq!(index.root(), std::fs::canonicalize(root).unwrap());
    let stats = index.stats();
    assert_eq!(
        (
            stats.n_files,
            stats.n_dirs,
            stats.n_symlinks,
            stats.n_files_read
        ),
        (2, 2, 1, 2)
    );
    assert_eq!(
        index
            .subtree(Path::new("dir"))
            .iter()
            .map(|e| e.path.clone())
            .collect::<Vec<_>>(),
        [PathBuf::from("dir/b.bin")]
    );
}

#[test]
fn dockerignore_excludes_and_reincludes_while_walking() {
    let context = tempfile::tempdir().unwrap();
    let root = context.path();
    for rel in [
        "docs/a.txt",
        "docs/keep/b.txt",
        "docs/keep/c/d.txt",
        "node_modules/x/y.js",
        "src/main.rs",
        "src/x.tmp",
        "README.md",
        "notes.md",
    ] {
        write(root, rel, rel);
    }
    let index = ContextIndex::scan(
        root,
        &matcher(&[
            "docs",
            "!docs/keep/**",
            "node_modules",
            "*.md",
            "!README.md",
            "src/*.tmp",
        ]),
        None,
    )
    .unwrap();
    assert_eq!(
        paths(&index),
        [
            "README.md",
            // Excluded themselves, listed because something below them is kept.
            "docs",
            "docs/keep",
            "docs/keep/b.txt",
            "docs/keep/c",
            "docs/keep/c/d.txt",
            "src",
            "src/main.rs",
        ]
    );
    // node_modules has no exception that could reach below it: never walked.
    assert_eq!(index.stats().n_pruned_dirs, 1);
    // docs, docs/a.txt, node_modules, notes.md, src/x.tmp (docs/keep is re-included by its
    // children, not by a pattern, so it is counted as excluded too).
    assert_eq!(index.stats().n_excluded, 6);

    // A wildcard exception also keeps an excluded directory from being pruned.
    let index = ContextIndex::scan(root, &matcher(&["*", "!**/*.rs"]), None).unwrap();
    assert_eq!(paths(&index), ["src", "src/main.rs"]);
    assert_eq!(index.stats().n_pruned_dirs, 0);
}

#[test]
fn dockerfile_specific_ignore_file_wins() {
    let context = tempfile::tempdir().unwrap();
    let root = context.path();
    write(root, ".dockerignore", "a\n");
    write(root, "build/Dockerfile", "FROM scratch\n");
    write(root, "a", "a");
    write(root, "b", "b");
    let generic = IgnoreFile::for_dockerfile(root, &root.join("build/Dockerfile")).unwrap();
    assert_eq!(generic.path, Some(root.join(".dockerignore")));
    assert_eq!(generic.patterns, ["a"]);
    write(
        root,
        "build/Dockerfile.dockerignore",
        "\u{feff}# only b\n/b/\n",
    );
    let specific = IgnoreFile::for_dockerfile(root, &root.join("build/Dockerfile")).unwrap();
    assert_eq!(
        specific.path,
        Some(root.join("build/Dockerfile.dockerignore"))
    );
    assert_eq!(specific.patterns, ["b"]);
    let index = ContextIndex::scan(root, &specific.matcher().unwrap(), None).unwrap();
    assert!(index.get(Path::new("a")).is_some());
    assert!(index.get(Path::new("b")).is_none());

    write(root, "build/Dockerfile.dockerignore", "ok\n!\n");
    let error = IgnoreFile::for_dockerfile(root, &root.join("build/Dockerfile"))
        .unwrap()
        .matcher()
        .unwrap_err();
    let text = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert!(text.contains("Dockerfile.dockerignore"), "{text}");
    assert!(text.contains("illegal exclusion pattern: \"!\""), "{text}");

    let none =
        IgnoreFile::for_dockerfile(&root.join("build"), Path::new("/nonexistent/Df")).unwrap();
    assert_eq!(none, IgnoreFile::default());
}

#[test]
fn special_files_are_skipped_and_errors_name_the_path() {
    let context = tempfile::tempdir().unwrap();
    let root = context.path();
    write(root, "f", "x");
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let index = ContextIndex::scan(root, &Matcher::empty(), None).unwrap();
    assert_eq!(paths(&index), ["f"]);
    assert_eq!(index.stats().n_special_skipped, 1);

    let missing = root.join("nope");
    let error = ContextIndex::scan(&missing, &Matcher::empty(), None).unwrap_err();
    assert!(matches!(error, ContextError::OpenContext { .. }));
    assert!(error.to_string().contains("nope"), "{error}");
    let error = ContextIndex::scan(&root.join("f"), &Matcher::empty(), None).unwrap_err();
    assert!(
        matches!(error, ContextError::NotADirectory { .. }),
        "{error}"
    );
}

fn set_mtime(path: &Path, seconds: i64, nanos: i64) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let time = TimeSpec::new(seconds, nanos);
    utimensat(None, path, &time, &time, UtimensatFlags::NoFollowSymlink).unwrap();
}

#[test]
fn stat_cache_skips_reading_unchanged_files() {
    let context = tempfile::tempdir().unwrap();
    let root = context.path();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("cache/context.statcache");
    for i in 0..200 {
        write(root, &format!("d{}/f{i}", i % 7), &format!("file {i}"));
    }
    settle();

    let cold = ContextIndex::scan(root, &Matcher::empty(), Some(&cache)).unwrap();
    assert_eq!(cold.stats().n_files_read, 200);
    assert_eq!(cold.stats().n_cache_hits, 0);
    assert!(cold.stats().stat_cache_written);
    assert!(cache.is_file());

    let warm = ContextIndex::scan(root, &Matcher::empty(), Some(&cache)).unwrap();
    assert_eq!(
        warm.stats().n_files_read,
        0,
        "a warm scan must read no file"
    );
    assert_eq!(warm.stats().n_cache_hits, 200);
    assert!(
        !warm.stats().stat_cache_written,
        "nothing changed, nothing to write"
    );
    assert_eq!(warm.entries(), cold.entries());

    // Same size, same mtime, different bytes: ctime still moves, so the file is read again.
    let victim = root.join("d0/f0");
    let before = std::fs::metadata(&victim).unwrap();
    std::fs::write(&victim, "FILE 0").unwrap();
    use std::os::unix::fs::MetadataExt;
    set_mtime(&victim, before.mtime(), before.mtime_nsec());
    // Only touching another file's mtime re-reads it too.
    set_mtime(&root.join("d1/f1"), 1_000_000_000, 0);
    settle();
    let third = ContextIndex::scan(root, &Matcher::empty(), Some(&cache)).unwrap();
    assert_eq!(third.stats().n_files_read, 2);
    assert_eq!(third.stats().n_cache_hits, 198);
    assert_eq!(
        third.get(Path::new("d0/f0")).unwrap().digest,
        Some(Digest::of_bytes(b"FILE 0"))
    );
    assert!(third.stats().stat_cache_written);

    // A deleted file drops out of the cache; the rest still hit.
    std::fs::remove_file(root.join("d2/f2")).unwrap();
    let fourth = ContextIndex::scan(root, &Matcher::empty(), Some(&cache)).unwrap();
    assert_eq!(fourth.stats().n_files_read, 0);
    assert_eq!(fourth.stats().n_cache_hits, 199);
    assert!(fourth.stats().stat_cache_written);
}

#[test]
fn files_changed_just_before_the_scan_are_not_cached() {
    let context = tempfile::tempdir().unwrap();
    let root = context.path();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("statcache");
    write(root, "old", "old");
    settle();
    write(root, "new", "new");
    let first = ContextIndex::scan(root, &Matcher::empty(), Some(&cache)).unwrap();
    assert_eq!(first.stats().n_files_read, 2);
    let second = ContextIndex::scan(root, &Matcher::empty(), Some(&cache)).unwrap();
    // `new` was written within the racy window of the first scan, so it is read again.
    assert_eq!(second.stats().n_files_read, 1);
    assert_eq!(second.stats().n_cache_hits, 1);
}

#[test]
fn a_corrupt_stat_cache_is_ignored_and_rewritten() {
    let context = tempfile::tempdir().unwrap();
    let root = context.path();
    write(root, "f", "x");
    settle();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("statcache");
    std::fs::write(&cache, b"not a cache").unwrap();
    let index = ContextIndex::scan(root, &Matcher::empty(), Some(&cache)).unwrap();
    assert!(index.stats().stat_cache_discarded);
    assert!(index.stats().stat_cache_written);
    let again = ContextIndex::scan(root, &Matcher::empty(), Some(&cache)).unwrap();
    assert_eq!(again.stats().n_cache_hits, 1);
}

#[test]
fn non_utf8_names_are_kept_and_matched_lossily() {
    use std::os::unix::ffi::OsStrExt;
    let context = tempfile::tempdir().unwrap();
    let root = context.path();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::write(root.join(name), "latin-1").unwrap();
    write(root, "skip.log", "x");
    let index = ContextIndex::scan(root, &matcher(&["*.log"]), None).unwrap();
    assert_eq!(index.entries().len(), 1);
    let entry = index.get(Path::new(name)).unwrap();
    assert_eq!(entry.digest, Some(Digest::of_bytes(b"latin-1")));
    let index = ContextIndex::scan(root, &matcher(&["caf?.txt"]), None).unwrap();
    assert_eq!(paths(&index), ["skip.log"]);
}
