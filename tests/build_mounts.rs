//! `RUN --mount` (bind, cache, tmpfs, secret, ssh) and `COPY --exclude/--parents/--chmod/
//! --link`, for real: builds over a busybox base imported into a temporary store, observed
//! from inside RUN and by reading the built layers' tar entries.

mod common;

use common::build::{build, context, flatten, image, mode_of, read, store_with_base};

use common::{kiln, run_fail, run_ok, stderr_of, stdout_of};
use std::io::Read;
use std::path::Path;

fn build_fail(root: &Path, context: &Path, extra: &[&str]) -> String {
    let output = run_fail(
        kiln(root)
            .arg("build")
            .arg("--progress=plain")
            .args(extra)
            .arg(context),
    );
    stderr_of(&output)
}

/// The uncompressed tars of the layers the build added (the base's are skipped).
fn built_layers(root: &Path, name: &str) -> Vec<Vec<u8>> {
    let store = kiln::store::Store::open(root).unwrap();
    let n_base = image(root, "base:1").layer_digests().unwrap().len();
    image(root, name)
        .layer_digests()
        .unwrap()
        .iter()
        .skip(n_base)
        .map(|digest| {
            let mut bytes = Vec::new();
            store
                .read_layer_uncompressed(digest)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            bytes
        })
        .collect()
}

/// Every entry name of the layers the build added.
fn built_entries(root: &Path, name: &str) -> Vec<String> {
    let mut names = Vec::new();
    for bytes in built_layers(root, name) {
        let mut archive = tar::Archive::new(&bytes[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            names.push(entry.path().unwrap().to_string_lossy().into_owned());
        }
    }
    names
}

fn assert_no_entry_under(entries: &[String], prefix: &str) {
    let found: Vec<&String> = entries
        .iter()
        .filter(|e| e.trim_end_matches('/') == prefix || e.starts_with(&format!("{prefix}/")))
        .collect();
    assert!(
        found.is_empty(),
        "{prefix} must not be in a layer: {found:?}"
    );
}

/// `#N [..] DESCRIPTION` lines of plain progress and whether each said CACHED.
fn cached(stderr: &str, description_start: &str) -> bool {
    let mut number = None;
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((n, text)) = rest.split_once(' ') else {
            continue;
        };
        if let Some((_, description)) = text.split_once("] ") {
            if text.starts_with('[') && description.starts_with(description_start) {
                number = Some(n.to_string());
            }
        }
    }
    let number = number.unwrap_or_else(|| panic!("no step {description_start:?} in:\n{stderr}"));
    stderr
        .lines()
        .any(|line| line == format!("#{number} CACHED"))
}

#[test]
fn bind_mounts_from_context_and_stage_are_seen_and_never_committed() {
    let root = store_with_base();
    let dir = context(&[
        (
            "Dockerfile",
            "FROM base:1 AS tools\n\
             RUN mkdir -p /out && echo from-stage > /out/tool.txt\n\
             FROM base:1 AS broken\n\
             RUN exit 1\n\
             FROM base:1\n\
             RUN --mount=type=bind,source=data,target=/mnt/ctx cat /mnt/ctx/a.txt > /seen-ctx && (touch /mnt/ctx/new 2>/dev/null && echo writable || echo readonly) > /ctx-ro\n\
             RUN --mount=type=bind,from=tools,source=/out,target=/mnt/tools cat /mnt/tools/tool.txt > /seen-stage && (touch /mnt/tools/x 2>/dev/null && echo writable || echo readonly) > /stage-ro\n\
             RUN --mount=type=bind,source=data,target=/mnt/rw,rw echo scribble > /mnt/rw/a.txt && cat /mnt/rw/a.txt > /seen-rw\n\
             RUN --mount=type=bind,from=tools,target=/mnt/whole,rw echo more >> /mnt/whole/out/tool.txt && cat /mnt/whole/out/tool.txt > /seen-stage-rw\n\
             RUN --mount=type=bind,from=base:1,source=/bin,target=/mnt/img test -x /mnt/img/busybox && echo image > /seen-image\n",
        ),
        ("data/a.txt", "context-data\n"),
    ]);
    build(root.path(), dir.path(), &["-t", "b:1"]);
    let fs = flatten(root.path(), "b:1");
    assert_eq!(read(&fs.path().join("seen-ctx")), "context-data\n");
    assert_eq!(read(&fs.path().join("ctx-ro")), "readonly\n");
    assert_eq!(read(&fs.path().join("seen-stage")), "from-stage\n");
    assert_eq!(read(&fs.path().join("stage-ro")), "readonly\n");
    assert_eq!(read(&fs.path().join("seen-rw")), "scribble\n");
    assert_eq!(read(&fs.path().join("seen-image")), "image\n");
    assert_eq!(read(&fs.path().join("seen-stage-rw")), "from-stage\nmore\n");
    // rw writes are thrown away: the context and the stage are untouched.
    assert_eq!(read(&dir.path().join("data/a.txt")), "context-data\n");
    assert!(!dir.path().join("data/new").exists());
    let entries = built_entries(root.path(), "b:1");
    assert_no_entry_under(&entries, "mnt");
    assert_no_entry_under(&entries, "out");
    for file in ["seen-ctx", "seen-stage", "seen-rw", "seen-stage-rw"] {
        assert!(entries.contains(&file.to_string()), "{file} in {entries:?}");
    }
    // The stage a mount reads is built only when something needs it.
    let target_only = context(&[(
        "Dockerfile",
        "FROM base:1 AS tools\n\
             RUN echo building-tools && exit 7\n\
             FROM base:1 AS app\n\
             RUN --mount=type=bind,from=tools,target=/t true\n\
             FROM base:1 AS other\n\
             RUN echo other > /o\n",
    )]);
    let output = build(
        root.path(),
        target_only.path(),
        &["--target", "other", "-t", "o:1"],
    );
    assert!(!stderr_of(&output).contains("building-tools"));
    let stderr = build_fail(root.path(), target_only.path(), &["--target", "app"]);
    assert!(
        stderr.contains("exit code: 7"),
        "the mounted stage runs first and fails: {stderr}"
    );
}

#[test]
fn bind_mount_content_is_part_of_the_cache_key() {
    let root = store_with_base();
    let dir = context(&[
        (
            "Dockerfile",
            "FROM base:1\nRUN --mount=type=bind,source=data,target=/d cat /d/a.txt > /x\n",
        ),
        ("data/a.txt", "one\n"),
        ("other.txt", "unrelated\n"),
    ]);
    build(root.path(), dir.path(), &["-t", "k:1"]);
    let again = build(root.path(), dir.path(), &["-t", "k:1"]);
    assert!(cached(&stderr_of(&again), "RUN --mount"));
    std::fs::write(dir.path().join("other.txt"), "changed\n").unwrap();
    let unrelated = build(root.path(), dir.path(), &["-t", "k:1"]);
    assert!(cached(&stderr_of(&unrelated), "RUN --mount"));
    std::fs::write(dir.path().join("data/a.txt"), "two\n").unwrap();
    let changed = build(root.path(), dir.path(), &["-t", "k:2"]);
    assert!(!cached(&stderr_of(&changed), "RUN --mount"));
    assert_eq!(read(&flatten(root.path(), "k:2").path().join("x")), "two\n");
}

#[test]
fn bind_mount_of_the_context_hides_dockerignored_files() {
    let root = store_with_base();
    let dir = context(&[
        (
            "Dockerfile",
            "FROM base:1\nRUN --mount=type=bind,target=/ctx ls /ctx > /listing\n",
        ),
        (".dockerignore", "secret.env\n"),
        ("secret.env", "hidden\n"),
        ("visible.txt", "shown\n"),
    ]);
    build(root.path(), dir.path(), &["-t", "i:1"]);
    let listing = read(&flatten(root.path(), "i:1").path().join("listing"));
    assert!(listing.contains("visible.txt"), "{listing}");
    assert!(!listing.contains("secret.env"), "{listing}");
}

#[test]
fn cache_mounts_persist_with_no_cache_and_locked_sharing_serialises() {
    let root = store_with_base();
    let dir = context(&[(
        "Dockerfile",
        "FROM base:1\n\
         RUN --mount=type=cache,target=/var/cache/app,uid=1000,mode=0750 echo x >> /var/cache/app/log && wc -l < /var/cache/app/log > /count && stat -c '%u %a' /var/cache/app > /owner\n",
    )]);
    build(root.path(), dir.path(), &["-t", "c:1"]);
    build(root.path(), dir.path(), &["-t", "c:2", "--no-cache"]);
    let fs = flatten(root.path(), "c:2");
    assert_eq!(read(&fs.path().join("count")).trim(), "2");
    assert_eq!(read(&fs.path().join("owner")).trim(), "1000 750");
    let entries = built_entries(root.path(), "c:2");
    assert_no_entry_under(&entries, "var/cache");

    // Two stages run at once; with sharing=locked they never overlap in the cache.
    let step = "RUN --mount=type=cache,id=shared,target=/c,sharing=locked sh -c 'if [ -e /c/busy ]; then echo overlap >> /c/overlaps; fi; touch /c/busy; sleep 1; rm /c/busy; echo done >> /c/runs'";
    let locked = context(&[(
        "Dockerfile",
        &format!(
            "FROM base:1 AS a\n{step}\nRUN echo a > /a\n\
             FROM base:1 AS b\n{step}\nRUN echo b > /b\n\
             FROM base:1\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n\
             RUN --mount=type=cache,id=shared,target=/c cat /c/runs > /runs && (cat /c/overlaps 2>/dev/null || true) > /overlaps\n"
        ),
    )]);
    build(root.path(), locked.path(), &["-t", "l:1"]);
    let fs = flatten(root.path(), "l:1");
    assert_eq!(read(&fs.path().join("runs")), "done\ndone\n");
    assert_eq!(
        read(&fs.path().join("overlaps")),
        "",
        "locked users overlapped"
    );

    // sharing=private: concurrent users get their own instances; from=/source= seed a new
    // cache with a stage's files.
    let private = context(&[(
        "Dockerfile",
        "FROM base:1 AS seed\nRUN mkdir /seed && echo seeded > /seed/s.txt\n\
         FROM base:1 AS a\nRUN --mount=type=cache,id=priv,target=/c,sharing=private sh -c 'touch /c/a; sleep 1; ls /c > /seen'\n\
         FROM base:1 AS b\nRUN --mount=type=cache,id=priv,target=/c,sharing=private sh -c 'touch /c/b; sleep 1; ls /c > /seen'\n\
         FROM base:1\nCOPY --from=a /seen /a-seen\nCOPY --from=b /seen /b-seen\n\
         RUN --mount=type=cache,id=seeded,from=seed,source=/seed,target=/c cat /c/s.txt > /from-seed\n\
         RUN --mount=type=cache,id=twice,target=/c1,sharing=locked --mount=type=cache,id=twice,target=/c2,sharing=locked sh -c 'echo same > /c1/f && cat /c2/f > /twice'\n",
    )]);
    build(root.path(), private.path(), &["-t", "p:1"]);
    let fs = flatten(root.path(), "p:1");
    assert_eq!(read(&fs.path().join("a-seen")), "a\n");
    assert_eq!(read(&fs.path().join("b-seen")), "b\n");
    assert_eq!(read(&fs.path().join("from-seed")), "seeded\n");
    assert_eq!(read(&fs.path().join("twice")), "same\n");
}

#[test]
fn tmpfs_mounts_are_tmpfs_sized_and_never_committed() {
    let root = store_with_base();
    let dir = context(&[(
        "Dockerfile",
        "FROM base:1\n\
         RUN --mount=type=tmpfs,target=/scratch/t,size=1m grep ' /scratch/t ' /proc/mounts | cut -d' ' -f3 > /fstype && echo x > /scratch/t/f && (dd if=/dev/zero of=/scratch/t/big bs=1024 count=2048 2>/dev/null && echo fit || echo full) > /size\n\
         RUN --mount=type=tmpfs,target=/tmp/t echo gone > /tmp/t/f\n",
    )]);
    build(root.path(), dir.path(), &["-t", "t:1"]);
    let fs = flatten(root.path(), "t:1");
    assert_eq!(read(&fs.path().join("fstype")).trim(), "tmpfs");
    assert_eq!(read(&fs.path().join("size")).trim(), "full");
    assert_no_entry_under(&built_entries(root.path(), "t:1"), "scratch");
    // A step that only wrote into its tmpfs changes nothing: no layer at all.
    assert_eq!(built_layers(root.path(), "t:1").len(), 1);
}

const SECRET: &str = "TOP-SECRET-VALUE-8461";

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[test]
fn secrets_are_mounted_but_never_stored_or_printed() {
    let root = store_with_base();
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("token");
    std::fs::write(&secret_file, SECRET).unwrap();
    let dir = context(&[(
        "Dockerfile",
        "FROM base:1\n\
         RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /len && stat -c '%a %u' /run/secrets/tok > /perm\n\
         RUN --mount=type=secret,id=tok,target=/etc/app/tok,mode=0440,uid=1000 stat -c '%a %u' /etc/app/tok > /perm2\n\
         RUN --mount=type=secret,id=fromenv,env=APP_TOKEN sh -c 'printf %s \"$APP_TOKEN\" | sha256sum | cut -d\" \" -f1 > /envsum; test -e /run/secrets/fromenv || echo no-file > /nofile'\n\
         RUN --mount=type=secret,id=absent ls /run/secrets > /absent 2>&1 || echo none > /absent\n",
    )]);
    let output = run_ok(
        kiln(root.path())
            .args(["build", "--progress=plain", "-t", "s:1"])
            .arg(format!("--secret=id=tok,src={}", secret_file.display()))
            .arg("--secret=id=fromenv,env=KILN_TEST_SECRET")
            .env("KILN_TEST_SECRET", SECRET)
            .arg(dir.path()),
    );
    let fs = flatten(root.path(), "s:1");
    assert_eq!(
        read(&fs.path().join("len")).trim(),
        SECRET.len().to_string()
    );
    assert_eq!(read(&fs.path().join("perm")).trim(), "400 0");
    assert_eq!(read(&fs.path().join("perm2")).trim(), "440 1000");
    let expected_sum = kiln::digest::Digest::of_bytes(SECRET.as_bytes())
        .hex()
        .to_string();
    assert_eq!(read(&fs.path().join("envsum")).trim(), expected_sum);
    assert_eq!(read(&fs.path().join("nofile")), "no-file\n");
    // Not required and not given: the mount is skipped.
    assert!(!read(&fs.path().join("absent")).contains("absent"));

    // Nowhere: layers, config, manifest, progress, history, or any file of the store.
    for layer in built_layers(root.path(), "s:1") {
        assert!(!contains(&layer, SECRET), "secret in a layer");
    }
    let entries = built_entries(root.path(), "s:1");
    // Not even the copied-up /run that making the mount point needed.
    assert_no_entry_under(&entries, "run");
    assert_no_entry_under(&entries, "etc/app");
    let image = image(root.path(), "s:1");
    assert!(!contains(&image.config_bytes, SECRET));
    assert!(!contains(&image.config_bytes, "KILN_TEST_SECRET"));
    assert!(!contains(&output.stderr, SECRET) && !contains(&output.stdout, SECRET));
    let history = run_ok(kiln(root.path()).args(["history", "--no-trunc", "s:1"]));
    assert!(!contains(&history.stdout, SECRET));
    for entry in walkdir::WalkDir::new(root.path()) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                !contains(&bytes, SECRET),
                "secret stored in {}",
                entry.path().display()
            );
        }
    }

    // required and missing: a clear error naming the secret.
    let required = context(&[(
        "Dockerfile",
        "FROM base:1\nRUN --mount=type=secret,id=must,required=true cat /run/secrets/must\n",
    )]);
    let stderr = build_fail(root.path(), required.path(), &[]);
    assert!(stderr.contains("secret must not found"), "{stderr}");
    assert!(stderr.contains("Dockerfile:2"), "{stderr}");
}

#[test]
fn ssh_agent_socket_is_forwarded_and_required_without_one_fails() {
    let root = store_with_base();
    let agent_dir = tempfile::tempdir().unwrap();
    let socket = agent_dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let dir = context(&[(
        "Dockerfile",
        "FROM base:1\nRUN --mount=type=ssh sh -c 'test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /sock && stat -c \"%u %a\" \"$SSH_AUTH_SOCK\" > /sockstat'\n\
         RUN --mount=type=ssh,id=default,target=/agent,uid=1000,mode=0660 stat -c '%u %a' /agent > /sockstat2\n",
    )]);
    build(
        root.path(),
        dir.path(),
        &[
            "-t",
            "ssh:1",
            &format!("--ssh=default={}", socket.display()),
        ],
    );
    let fs = flatten(root.path(), "ssh:1");
    assert_eq!(
        read(&fs.path().join("sock")).trim(),
        "/run/buildkit/ssh_agent.0"
    );
    // The step's socket has BuildKit's defaults (root, 0600) or the mount's own.
    assert_eq!(read(&fs.path().join("sockstat")).trim(), "0 600");
    assert_eq!(read(&fs.path().join("sockstat2")).trim(), "1000 660");
    assert_no_entry_under(&built_entries(root.path(), "ssh:1"), "run/buildkit");

    let required = context(&[(
        "Dockerfile",
        "FROM base:1\nRUN --mount=type=ssh,required=true true\n",
    )]);
    let stderr = build_fail(root.path(), required.path(), &[]);
    assert!(stderr.contains("no SSH key \"default\""), "{stderr}");
    // Not required: skipped.
    let optional = context(&[(
        "Dockerfile",
        "FROM base:1\nRUN --mount=type=ssh sh -c 'test -e /run/buildkit/ssh_agent.0 || echo none > /none'\n",
    )]);
    build(root.path(), optional.path(), &["-t", "ssh:2"]);
    assert_eq!(
        read(&flatten(root.path(), "ssh:2").path().join("none")),
        "none\n"
    );
    // Key files: loaded into an ssh-agent kiln runs for the build (checked from the host
    // with ssh-add while the step runs), gone afterwards.
    let keygen = common::require_program("ssh-keygen", "openssh-client");
    let ssh_add = common::require_program("ssh-add", "openssh-client");
    let key = agent_dir.path().join("id_ed25519");
    run_ok(
        std::process::Command::new(keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test-key", "-f"])
            .arg(&key),
    );
    let keyed = context(&[(
        "Dockerfile",
        "FROM base:1
RUN --mount=type=ssh,required=true sh -c 'test -S \"$SSH_AUTH_SOCK\" && echo ok > /agent-ok; sleep 3'\n",
    )]);
    let mut child = kiln(root.path())
        .args(["build", "--progress=plain", "-t", "ssh:3"])
        .arg(format!("--ssh=default={}", key.display()))
        .arg(keyed.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tmp = root.path().join("tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let listed = loop {
        // The step's own socket (kiln's forwarder to the agent), found from the host while
        // the step sleeps: ssh-add talks the agent protocol through it.
        let sockets: Vec<std::path::PathBuf> = std::fs::read_dir(root.path().join("containers"))
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .map(|e| e.path().join("mounts/0/ssh.sock"))
                    .filter(|p| p.exists())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(socket) = sockets.first() {
            let output = std::process::Command::new(&ssh_add)
                .arg("-l")
                .env("SSH_AUTH_SOCK", socket)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            if text.contains("kiln-test-key") {
                break text;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no forwarded agent holding the key appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(listed.contains("ED25519"), "{listed}");
    assert!(child.wait().unwrap().success());
    assert_eq!(
        read(&flatten(root.path(), "ssh:3").path().join("agent-ok")),
        "ok\n"
    );
    let leftover: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ssh-agent-"))
        .collect();
    assert!(
        leftover.is_empty(),
        "the agent outlived the build: {leftover:?}"
    );
    // Neither a socket nor a file: a clear usage error.
    let output = run_fail(
        kiln(root.path())
            .args(["build", "--progress=plain"])
            .arg(format!("--ssh=default={}", agent_dir.path().display()))
            .arg(optional.path()),
    );
    assert!(stderr_of(&output).contains("neither an ssh-agent socket nor a key file"));
}

#[test]
fn copy_exclude_parents_chmod_and_link() {
    let root = store_with_base();
    let dir = context(&[
        (
            "Dockerfile",
            "FROM base:1\n\
             COPY --exclude=*.txt src/ /ex1/\n\
             COPY --exclude=sub src/ /ex2/\n\
             COPY --exclude=node_modules --exclude=*.md --exclude=Dockerfile . /ex3/\n\
             COPY --exclude=*.md src/* /ex4/\n\
             COPY --parents pkg/*/package.json /par1/\n\
             COPY --parents ./pkg/./two/other.txt /par2/\n\
             COPY --parents src/sub /par3/\n\
             COPY --chmod=u+x,go-w src/a.txt /chm/a\n\
             COPY --chmod=a=rX src/ /chm2/\n\
             COPY --chmod=0705 src/a.txt /chm3/a\n\
             COPY --link src/a.txt /linked/a.txt\n",
        ),
        ("src/a.txt", "a\n"),
        ("src/b.md", "b\n"),
        ("src/sub/c.txt", "c\n"),
        ("src/sub/d.go", "d\n"),
        ("node_modules/x.js", "x\n"),
        ("top.txt", "top\n"),
        ("notes.md", "notes\n"),
        ("pkg/one/package.json", "1\n"),
        ("pkg/two/package.json", "2\n"),
        ("pkg/two/other.txt", "o\n"),
    ]);
    for (path, mode) in [
        ("src/a.txt", 0o644),
        ("src/b.md", 0o600),
        ("src/sub", 0o755),
    ] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join(path), std::fs::Permissions::from_mode(mode))
            .unwrap();
    }
    build(root.path(), dir.path(), &["-t", "cp:1"]);
    let fs = flatten(root.path(), "cp:1");
    let p = |path: &str| fs.path().join(path);
    let exists = |path: &str| p(path).symlink_metadata().is_ok();
    // --exclude=*.txt: top-level .txt of the copied directory only (patterns are anchored).
    assert!(!exists("ex1/a.txt"));
    assert_eq!(read(&p("ex1/b.md")), "b\n");
    assert_eq!(read(&p("ex1/sub/c.txt")), "c\n");
    assert_eq!(read(&p("ex1/sub/d.go")), "d\n");
    // A directory and all below it.
    assert!(exists("ex2/a.txt") && exists("ex2/b.md"));
    assert!(!exists("ex2/sub"));
    // Several patterns.
    assert!(!exists("ex3/node_modules"));
    assert!(!exists("ex3/notes.md") && !exists("ex3/Dockerfile"));
    assert_eq!(read(&p("ex3/src/b.md")), "b\n");
    assert_eq!(read(&p("ex3/top.txt")), "top\n");
    // Wildcard matches are themselves excluded.
    assert!(exists("ex4/a.txt") && !exists("ex4/b.md"));
    assert_eq!(read(&p("ex4/c.txt")), "c\n");
    // --parents keeps the matched path, or what follows the /./ pivot.
    assert_eq!(read(&p("par1/pkg/one/package.json")), "1\n");
    assert_eq!(read(&p("par1/pkg/two/package.json")), "2\n");
    assert!(!exists("par1/package.json") && !exists("par1/pkg/two/other.txt"));
    assert_eq!(read(&p("par2/two/other.txt")), "o\n");
    assert!(!exists("par2/pkg"));
    assert_eq!(read(&p("par3/src/sub/c.txt")), "c\n");
    assert_eq!(read(&p("par3/src/sub/d.go")), "d\n");
    // Symbolic and octal --chmod.
    assert_eq!(mode_of(&p("chm/a")), 0o744);
    assert_eq!(mode_of(&p("chm2/a.txt")), 0o444);
    assert_eq!(mode_of(&p("chm2/b.md")), 0o444);
    assert_eq!(mode_of(&p("chm2/sub")), 0o555);
    assert_eq!(mode_of(&p("chm3/a")), 0o705);
    // --link: same content and mode as a plain COPY.
    assert_eq!(read(&p("linked/a.txt")), "a\n");
    assert_eq!(mode_of(&p("linked/a.txt")), 0o644);

    // An excluded file may change without invalidating the COPY.
    std::fs::write(dir.path().join("src/a.txt"), "changed\n").unwrap();
    let output = build(root.path(), dir.path(), &["-t", "cp:2"]);
    assert!(cached(
        &stderr_of(&output),
        "COPY --exclude=*.txt src/ /ex1/"
    ));
    assert!(!cached(
        &stderr_of(&output),
        "COPY --exclude=sub src/ /ex2/"
    ));
}

#[test]
fn bad_mount_and_chmod_input_names_the_place() {
    let root = store_with_base();
    for (dockerfile, expect) in [
        (
            "FROM base:1\nRUN --mount=type=bogus,target=/x true\n",
            "Dockerfile:2:5: invalid --mount \"type=bogus,target=/x\": unsupported mount type \"bogus\"",
        ),
        (
            "FROM base:1\nRUN --mount=type=cache,target=/x,colour=blue true\n",
            "Dockerfile:2:5: invalid --mount \"type=cache,target=/x,colour=blue\": unexpected key 'colour'",
        ),
        (
            "FROM base:1\nRUN --mount=type=tmpfs,target=/x,size=lots true\n",
            "Dockerfile:2:1: RUN --mount=type=tmpfs,target=/x,size=lots true: tmpfs size \"lots\"",
        ),
        (
            "FROM base:1\nCOPY --chmod=u+q Dockerfile /x\n",
            "Dockerfile:2:1: COPY --chmod=u+q Dockerfile /x: invalid --chmod=u+q",
        ),
    ] {
        let dir = context(&[("Dockerfile", dockerfile)]);
        let stderr = build_fail(root.path(), dir.path(), &[]);
        assert!(stderr.contains(expect), "{dockerfile:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let dir = context(&[("Dockerfile", "FROM base:1\n")]);
    let output = run_fail(
        kiln(root.path())
            .args(["build", "--secret", "id=x,bogus=1"])
            .arg(dir.path()),
    );
    let missing = run_fail(
        kiln(root.path())
            .args(["build", "--secret", "id=x,src=/nonexistent/secret"])
            .arg(dir.path()),
    );
    assert!(
        stderr_of(&missing).contains("/nonexistent/secret"),
        "{}",
        stderr_of(&missing)
    );
    assert!(
        stderr_of(&output).contains("--secret"),
        "{}",
        stderr_of(&output)
    );
    let _ = stdout_of(&output);
}
