//! COPY/ADD source selection over a scanned context (paths, directories, wildcards,
//! symlinks, refusals) and the canonical source digest used in COPY cache keys.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln::context::{source_digest, ContextError, ContextIndex, Matcher, Selection};

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A context with files, nested directories and symlinks (inside and pointing out).
fn fixture(root: &Path) {
    write(root, "a.txt", "a");
    write(root, "b.txt", "b");
    write(root, "c.md", "c");
    write(root, "src/app/main.go", "package main");
    write(root, "src/lib/main.go", "package lib");
    write(root, "src/lib/util.go", "package lib // util");
    write(root, "src/README", "readme");
    write(root, "secret/key", "k");
    write(root, ".hidden", "h");
    symlink("src/app", root.join("app-link")).unwrap();
    symlink("a.txt", root.join("file-link")).unwrap();
    symlink("/etc/passwd", root.join("abs-link")).unwrap();
    symlink("../../outside", root.join("src/up-link")).unwrap();
    symlink("loop-b", root.join("loop-a")).unwrap();
    symlink("loop-a", root.join("loop-b")).unwrap();
    symlink("src/../b.txt", root.join("dotdot-link")).unwrap();
}

fn scan(root: &Path) -> ContextIndex {
    ContextIndex::scan(root, &Matcher::new(&["secret"]).unwrap(), None).unwrap()
}

/// `(matched, resolved, [paths relative to the root])` for each root.
fn summary(selection: &Selection<'_>) -> Vec<(String, String, Vec<String>)> {
    selection
        .roots
        .iter()
        .map(|root| {
            (
                root.matched.display().to_string(),
                root.resolved.display().to_string(),
                root.subtree
                    .iter()
                    .map(|e| root.relative_path(e).display().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn plain_paths_and_directories() {
    let context = tempfile::tempdir().unwrap();
    fixture(context.path());
    let index = scan(context.path());

    for source in ["a.txt", "/a.txt", "./a.txt", "src/../a.txt", "//a.txt"] {
        let selection = index.select(source).unwrap();
        assert_eq!(
            summary(&selection),
            [("a.txt".into(), "a.txt".into(), vec![])],
            "{source}"
        );
        assert!(!selection.roots[0].is_dir());
        assert_eq!(selection.roots[0].name().unwrap(), "a.txt");
        assert_eq!(selection.entries().len(), 1);
    }

    let dir = index.select("src/lib/").unwrap();
    assert!(dir.roots[0].is_dir());
    assert_eq!(
        summary(&dir),
        [(
            "src/lib".into(),
            "src/lib".into(),
            strs(&["main.go", "util.go"])
        )]
    );
    // The directory's own entry plus its contents.
    assert_eq!(dir.entries().len(), 3);

    for source in [".", "/", "./"] {
        let all = index.select(source).unwrap();
        assert_eq!(all.roots.len(), 1);
        assert!(all.roots[0].entry.is_none());
        assert_eq!(all.roots[0].subtree.len(), index.entries().len());
    }
}

#[test]
fn wildcards_match_like_filepath_match() {
    let context = tempfile::tempdir().unwrap();
    fixture(context.path());
    let index = scan(context.path());

    let txt = index.select("*.txt").unwrap();
    assert_eq!(
        summary(&txt),
        [
            ("a.txt".into(), "a.txt".into(), vec![]),
            ("b.txt".into(), "b.txt".into(), vec![]),
        ]
    );
    let mains = index.select("src/*/main.go").unwrap();
    assert_eq!(
        mains
            .roots
            .iter()
            .map(|r| r.matched.display().to_string())
            .collect::<Vec<_>>(),
        ["src/app/main.go", "src/lib/main.go"]
    );
    // `*` does not cross `/`; a matched directory selects its contents.
    let dirs = index.select("src/l?b").unwrap();
    assert_eq!(
        summary(&dirs),
        [(
            "src/lib".into(),
            "src/lib".into(),
            strs(&["main.go", "util.go"])
        )]
    );
    // Dotfiles are not special, and `[...]` classes work.
    assert_eq!(index.select(".h*").unwrap().roots.len(), 1);
    assert_eq!(index.select("[ab].txt").unwrap().roots.len(), 2);
    assert_eq!(index.select("[^a].txt").unwrap().roots.len(), 1);
    // A wildcard-matched symlink is followed, but keeps its own name.
    let link = index.select("file-l*").unwrap();
    assert_eq!(
        summary(&link),
        [("file-link".into(), "a.txt".into(), vec![])]
    );
    assert_eq!(link.roots[0].name().unwrap(), "file-link");

    let error = index.select("*.nothing").unwrap_err();
    assert!(matches!(error, ContextError::NoMatch { .. }), "{error}");
    assert!(error.to_string().contains("*.nothing"), "{error}");
    let error = index.select("src/[").unwrap_err();
    assert!(matches!(error, ContextError::BadPattern { .. }), "{error}");
}

#[test]
fn symlinks_are_followed_inside_the_context_only() {
    let context = tempfile::tempdir().unwrap();
    fixture(context.path());
    let index = scan(context.path());

    // A symlink root is followed; a symlink on the way is too.
    let app = index.select("app-link").unwrap();
    assert_eq!(
        summary(&app),
        [("app-link".into(), "src/app".into(), strs(&["main.go"]))]
    );
    let through = index.select("app-link/main.go").unwrap();
    assert_eq!(through.roots[0].resolved, PathBuf::from("src/app/main.go"));
    let dotdot = index.select("dotdot-link").unwrap();
    assert_eq!(dotdot.roots[0].resolved, PathBuf::from("b.txt"));

    for (source, needle) in [
        ("../x", "`..` climbs above the context root"),
        ("/../a.txt", "`..` climbs above the context root"),
        ("abs-link", "absolute path /etc/passwd"),
        (
            "src/up-link",
            "symlink src/up-link points above the context root",
        ),
    ] {
        let error = index.select(source).unwrap_err();
        assert!(
            matches!(error, ContextError::OutsideContext { .. }),
            "{source}: {error}"
        );
        let text = error.to_string();
        assert!(text.contains(source) && text.contains(needle), "{text}");
    }
    let error = index.select("loop-a").unwrap_err();
    assert!(matches!(error, ContextError::SymlinkLoop { .. }), "{error}");
    // Inside a selected directory, symlinks are entries, not followed.
    let src = index.select("src").unwrap();
    assert!(src.roots[0]
        .subtree
        .iter()
        .any(|e| e.path == Path::new("src/up-link")));
}

#[test]
fn missing_and_excluded_sources_are_errors_naming_them() {
    let context = tempfile::tempdir().unwrap();
    fixture(context.path());
    let index = scan(context.path());

    let error = index.select("nope.txt").unwrap_err();
    assert!(matches!(
        error,
        ContextError::SourceNotFound {
            excluded: false,
            ..
        }
    ));
    assert!(error.to_string().contains("\"nope.txt\""), "{error}");
    let error = index.select("secret/key").unwrap_err();
    assert!(
        error.to_string().contains("excluded by .dockerignore"),
        "{error}"
    );
    let error = index.select("a.txt/x").unwrap_err();
    assert!(
        matches!(error, ContextError::NotADirectoryInPath { .. }),
        "{error}"
    );
    assert!(matches!(
        index.select("").unwrap_err(),
        ContextError::EmptySource { .. }
    ));
}

#[test]
fn source_digest_covers_content_and_metadata_not_times_or_location() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    fixture(first.path());
    fixture(second.path());
    // Different mtimes in the second copy.
    let old = nix::sys::time::TimeSpec::new(1_000_000, 0);
    nix::sys::stat::utimensat(
        None,
        &second.path().join("src/lib/main.go"),
        &old,
        &old,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    let digest = |root: &Path, source: &str| source_digest(&scan(root).select(source).unwrap());

    for source in ["src", "*.txt", "a.txt", ".", "app-link"] {
        assert_eq!(
            digest(first.path(), source),
            digest(second.path(), source),
            "{source}"
        );
    }
    let base = digest(first.path(), "src");
    assert_ne!(base, digest(first.path(), "src/lib"));

    // Content.
    write(second.path(), "src/lib/util.go", "package lib // UTIL");
    assert_ne!(base, digest(second.path(), "src"));
    write(second.path(), "src/lib/util.go", "package lib // util");
    assert_eq!(base, digest(second.path(), "src"));
    // Mode.
    let util = second.path().join("src/lib/util.go");
    std::fs::set_permissions(&util, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_ne!(base, digest(second.path(), "src"));
    std::fs::set_permissions(&util, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(base, digest(second.path(), "src"));
    // Owner.
    nix::unistd::chown(&util, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
    assert_ne!(base, digest(second.path(), "src"));
    nix::unistd::chown(&util, Some(nix::unistd::geteuid()), None).unwrap();
    // Symlink target.
    std::fs::remove_file(second.path().join("src/up-link")).unwrap();
    symlink("../../elsewhere", second.path().join("src/up-link")).unwrap();
    assert_ne!(base, digest(second.path(), "src"));
    // A file copied under another name is a different copy.
    assert_ne!(
        digest(first.path(), "a.txt"),
        digest(first.path(), "file-link")
    );
    // The same bytes named differently by a wildcard, too.
    write(first.path(), "z.md", "c");
    assert_ne!(digest(first.path(), "c.md"), digest(first.path(), "z.md"));
}
