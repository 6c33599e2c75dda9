//! Issue 5: `kiln build` end to end, for real (root, overlayfs, namespaced containers), over a
//! busybox base image imported into a temporary store. Results are checked by flattening the
//! built image's layers from the store and by its config.

mod common;

use common::build::{build, context, flatten, image, mode_of, read, store_with_base};

use common::{kiln, require_root, run_fail, run_ok, stderr_of, stdout_of};
use std::path::Path;
use std::time::Instant;

fn config(root: &Path, name: &str) -> serde_json::Value {
    serde_json::from_slice(&image(root, name).config_bytes).unwrap()
}

fn layer_digests(root: &Path, name: &str) -> Vec<String> {
    image(root, name)
        .layer_digests()
        .unwrap()
        .iter()
        .map(|d| d.to_string())
        .collect()
}

/// The steps in the plain progress output: (instruction, whether it said CACHED).
fn cached_steps(stderr: &str) -> Vec<(String, bool)> {
    let mut steps: Vec<(String, String)> = Vec::new();
    let mut cached = std::collections::BTreeSet::new();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((number, text)) = rest.split_once(' ') else {
            continue;
        };
        if text == "CACHED" {
            cached.insert(number.to_string());
        } else if text.starts_with('[') {
            let description = text.split_once("] ").map(|(_, d)| d).unwrap_or(text);
            steps.push((number.to_string(), description.to_string()));
        }
    }
    steps
        .into_iter()
        .map(|(number, description)| {
            let hit = cached.contains(&number);
            (description, hit)
        })
        .collect()
}

fn was_cached(stderr: &str, description_start: &str) -> bool {
    let steps = cached_steps(stderr);
    let found: Vec<&(String, bool)> = steps
        .iter()
        .filter(|(d, _)| d.starts_with(description_start))
        .collect();
    assert_eq!(found.len(), 1, "step {description_start:?} in:\n{stderr}");
    found[0].1
}

fn owner_of(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid())
}

const EVERYTHING: &str = r#"FROM base:1
ARG GREETING=hi
ENV APP_HOME=/app PATH=/app/bin:$PATH
LABEL com.example.version="1.0" other=x
MAINTAINER someone@example.com
EXPOSE 8080/udp 80
VOLUME ["/data"]
WORKDIR $APP_HOME/work
COPY --chown=kiln:daemon --chmod=750 script.sh bin/
COPY src/ /app/src/
COPY a.txt b.txt /app/many/
COPY a.txt /app/renamed.txt
ADD archive.tar.gz /app/unpacked/
ADD plain.txt /app/plain/
COPY <<EOF /app/heredoc.txt
greeting=${GREETING}
EOF
RUN <<EOT
echo "$GREETING from $(pwd)" > /app/run.txt
id -u >> /app/run.txt
EOT
SHELL ["/bin/sh", "-e", "-c"]
RUN echo shell-ok > /app/shell.txt
USER kiln
RUN id -u > /tmp/user.txt
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --retries=2 CMD true
ENTRYPOINT ["/bin/sh"]
CMD ["-c", "echo hi"]
"#;

#[test]
fn issue5_instructions_and_flags_build_a_real_image() {
    let root = store_with_base();
    let mut tar_builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(6);
    header.set_mode(0o640);
    header.set_uid(7);
    header.set_gid(8);
    tar_builder
        .append_data(&mut header, "inside/packed.txt", &b"packed"[..])
        .unwrap();
    let tar_bytes = tar_builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar_bytes).unwrap();
    let dir = context(&[
        ("Dockerfile", EVERYTHING),
        ("script.sh", "#!/bin/sh\necho script\n"),
        ("src/main.c", "int main(){}\n"),
        ("src/sub/lib.c", "lib\n"),
        ("a.txt", "A\n"),
        ("b.txt", "B\n"),
        ("plain.txt", "not an archive\n"),
    ]);
    std::fs::write(dir.path().join("archive.tar.gz"), gz.finish().unwrap()).unwrap();
    let iid = dir.path().join("iid");
    let output = run_ok(
        kiln(root.path())
            .arg("build")
            .args(["-q", "-t", "app:1", "-t", "app:latest"])
            .args(["--build-arg", "GREETING=hello", "--label", "built.by=kiln"])
            .arg("--iidfile")
            .arg(&iid)
            .arg(dir.path()),
    );
    let id = stdout_of(&output).trim().to_string();
    assert!(
        id.starts_with("sha256:") && id.len() == 71,
        "-q prints the ID: {id:?}"
    );
    assert_eq!(read(&iid), id);
    assert!(
        stderr_of(&output).is_empty(),
        "-q is silent: {}",
        stderr_of(&output)
    );
    assert_eq!(image(root.path(), "app:1").id().to_string(), id);
    assert_eq!(image(root.path(), "app:latest").id().to_string(), id);

    let config = config(root.path(), "app:1");
    let inner = &config["config"];
    let env: Vec<String> = serde_json::from_value(inner["Env"].clone()).unwrap();
    assert!(env.contains(&"APP_HOME=/app".to_string()), "{env:?}");
    assert!(
        env.iter().any(|e| e.starts_with("PATH=/app/bin:")),
        "{env:?}"
    );
    assert_eq!(inner["Labels"]["com.example.version"], "1.0");
    assert_eq!(inner["Labels"]["built.by"], "kiln");
    assert!(inner["ExposedPorts"]["8080/udp"].is_object(), "{inner}");
    assert!(inner["ExposedPorts"]["80/tcp"].is_object(), "{inner}");
    assert!(inner["Volumes"]["/data"].is_object());
    assert_eq!(inner["WorkingDir"], "/app/work");
    assert_eq!(inner["User"], "kiln");
    assert_eq!(inner["StopSignal"], "SIGTERM");
    assert_eq!(inner["Shell"], serde_json::json!(["/bin/sh", "-e", "-c"]));
    assert_eq!(
        inner["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "true"])
    );
    assert_eq!(inner["Healthcheck"]["Interval"], 5_000_000_000i64);
    assert_eq!(inner["Healthcheck"]["Retries"], 2);
    assert_eq!(inner["Entrypoint"], serde_json::json!(["/bin/sh"]));
    assert_eq!(inner["Cmd"], serde_json::json!(["-c", "echo hi"]));
    assert_eq!(config["author"], "someone@example.com");
    let history = config["history"].as_array().unwrap();
    let n_layers = layer_digests(root.path(), "app:1").len();
    let n_non_empty = history
        .iter()
        .filter(|h| !h["empty_layer"].as_bool().unwrap_or(false))
        .count();
    assert_eq!(
        n_layers, n_non_empty,
        "one layer per non-empty history entry"
    );
    assert!(history.len() > 20, "a history entry per step: {history:?}");
    let media_types: Vec<String> = image(root.path(), "app:1")
        .layers()
        .iter()
        .skip(1)
        .map(|l| l.media_type().to_string())
        .collect();
    assert!(media_types
        .iter()
        .all(|m| m == "application/vnd.oci.image.layer.v1.tar+zstd"));

    let fs = flatten(root.path(), "app:1");
    let at = |p: &str| fs.path().join(p.trim_start_matches('/'));
    assert_eq!(
        read(&at("/app/work/bin/script.sh")),
        "#!/bin/sh\necho script\n"
    );
    assert_eq!(mode_of(&at("/app/work/bin/script.sh")), 0o750);
    assert_eq!(owner_of(&at("/app/work/bin/script.sh")), (1000, 1));
    assert_eq!(read(&at("/app/src/sub/lib.c")), "lib\n");
    assert!(
        !at("/app/src/src").exists(),
        "a directory source copies its contents"
    );
    assert_eq!(owner_of(&at("/app/src/main.c")), (0, 0));
    assert_eq!(read(&at("/app/many/a.txt")), "A\n");
    assert_eq!(read(&at("/app/many/b.txt")), "B\n");
    assert_eq!(read(&at("/app/renamed.txt")), "A\n");
    assert_eq!(read(&at("/app/unpacked/inside/packed.txt")), "packed");
    assert_eq!(owner_of(&at("/app/unpacked/inside/packed.txt")), (7, 8));
    assert_eq!(read(&at("/app/plain/plain.txt")), "not an archive\n");
    assert_eq!(read(&at("/app/heredoc.txt")), "greeting=hello\n");
    assert_eq!(read(&at("/app/run.txt")), "hello from /app/work\n0\n");
    assert_eq!(read(&at("/app/shell.txt")), "shell-ok\n");
    assert_eq!(read(&at("/tmp/user.txt")), "1000\n");
    assert!(at("/app/work").is_dir());
    // Mount stubs never reach a layer.
    assert!(!at("/etc/resolv.conf").exists() && !at("/etc/hosts").exists());
}

#[test]
fn issue5_cache_hits_and_invalidation() {
    let root = store_with_base();
    let dir = context(&[
        (
            "Dockerfile",
            "FROM base:1\nRUN echo one > /one\nCOPY a.txt /a.txt\nARG FLAVOUR=plain\nRUN echo $FLAVOUR > /flavour\nCOPY b.txt /b.txt\nRUN cat /a.txt /b.txt > /ab\n",
        ),
        ("a.txt", "a1\n"),
        ("b.txt", "b1\n"),
    ]);
    let first = build(root.path(), dir.path(), &["-t", "c:1"]);
    assert!(cached_steps(&stderr_of(&first)).iter().all(|(_, hit)| !hit));
    let layers_first = layer_digests(root.path(), "c:1");
    let id_first = image(root.path(), "c:1").id();

    // 1. Unchanged: nothing runs, same layers, same image.
    let second = build(root.path(), dir.path(), &["-t", "c:1"]);
    let stderr = stderr_of(&second);
    for step in [
        "RUN echo one",
        "COPY a.txt",
        "RUN echo $FLAVOUR",
        "COPY b.txt",
        "RUN cat",
    ] {
        assert!(was_cached(&stderr, step), "{step} cached:\n{stderr}");
    }
    assert_eq!(layer_digests(root.path(), "c:1"), layers_first);
    assert_eq!(image(root.path(), "c:1").id(), id_first);
    let history = run_ok(kiln(root.path()).args(["history", "--no-trunc", "c:1"]));
    assert!(
        stdout_of(&history).contains("kiln: cached"),
        "{}",
        stdout_of(&history)
    );

    // 2. One file changed: only from the COPY that reads it.
    std::fs::write(dir.path().join("b.txt"), "b2\n").unwrap();
    let third = build(root.path(), dir.path(), &["-t", "c:1"]);
    let stderr = stderr_of(&third);
    assert!(was_cached(&stderr, "RUN echo one"));
    assert!(was_cached(&stderr, "COPY a.txt"));
    assert!(was_cached(&stderr, "RUN echo $FLAVOUR"));
    assert!(!was_cached(&stderr, "COPY b.txt"), "{stderr}");
    assert!(!was_cached(&stderr, "RUN cat"), "{stderr}");
    let layers_third = layer_digests(root.path(), "c:1");
    assert_eq!(layers_third[..4], layers_first[..4]);
    assert_ne!(layers_third[4], layers_first[4]);
    assert_eq!(
        read(&flatten(root.path(), "c:1").path().join("ab")),
        "a1\nb2\n"
    );

    // 3. A build arg changed: only the steps that see it.
    let fourth = build(
        root.path(),
        dir.path(),
        &["-t", "c:1", "--build-arg", "FLAVOUR=spicy"],
    );
    let stderr = stderr_of(&fourth);
    assert!(was_cached(&stderr, "RUN echo one"));
    assert!(was_cached(&stderr, "COPY a.txt"));
    assert!(!was_cached(&stderr, "RUN echo $FLAVOUR"), "{stderr}");
    let layers_fourth = layer_digests(root.path(), "c:1");
    assert_eq!(layers_fourth[..3], layers_first[..3]);
    assert_ne!(layers_fourth[3], layers_third[3]);

    // 4. --no-cache runs everything.
    let fifth = build(root.path(), dir.path(), &["-t", "c:1", "--no-cache"]);
    assert!(
        cached_steps(&stderr_of(&fifth)).iter().all(|(_, hit)| !hit),
        "{}",
        stderr_of(&fifth)
    );
}

#[test]
fn issue5_multi_stage_target_and_unused_failing_stage() {
    let root = store_with_base();
    let dir = context(&[(
        "Dockerfile",
        "FROM base:1 AS broken\nRUN exit 7\n\nFROM base:1 AS builder\nRUN echo built > /artifact\n\nFROM builder AS tester\nRUN cp /artifact /tested\n\nFROM base:1\nCOPY --from=builder /artifact /final\nCOPY --from=1 /artifact /by-index\n",
    )]);
    let output = build(root.path(), dir.path(), &["-t", "ms:1"]);
    let stderr = stderr_of(&output);
    assert!(
        !stderr.contains("exit 7"),
        "the unused failing stage never runs:\n{stderr}"
    );
    assert!(
        !stderr.contains("cp /artifact"),
        "stages the target does not need are not run"
    );
    let fs = flatten(root.path(), "ms:1");
    assert_eq!(read(&fs.path().join("final")), "built\n");
    assert_eq!(read(&fs.path().join("by-index")), "built\n");

    let output = build(
        root.path(),
        dir.path(),
        &["-t", "ms:tester", "--target", "tester"],
    );
    let fs = flatten(root.path(), "ms:tester");
    assert_eq!(read(&fs.path().join("tested")), "built\n");
    assert!(!stderr_of(&output).contains("exit 7"));

    let failed = run_fail(
        kiln(root.path())
            .args(["build", "--progress=plain", "--target", "nosuch"])
            .arg(dir.path()),
    );
    assert!(
        stderr_of(&failed).contains("nosuch"),
        "{}",
        stderr_of(&failed)
    );
}

#[test]
fn issue5_independent_stages_run_at_the_same_time() {
    let root = store_with_base();
    // Warm the base snapshot so the timing measures the steps.
    let warm = context(&[("Dockerfile", "FROM base:1\nRUN true\n")]);
    build(root.path(), warm.path(), &[]);
    let dir = context(&[(
        "Dockerfile",
        "FROM base:1 AS a\nRUN sleep 2 && echo a > /a\n\nFROM base:1 AS b\nRUN sleep 2 && echo b > /b\n\nFROM base:1\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
    )]);
    // Time the two stages from the live progress events (process start-up and store opening
    // are not what this measures; the machine running the tests may be busy).
    let started = Instant::now();
    let mut child = kiln(root.path())
        .args(["build", "--progress=rawjson", "-t", "par:1"])
        .arg(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut first_run_start = None;
    let mut last_run_done = None;
    let mut run_steps = std::collections::BTreeSet::new();
    let mut log = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let line = line.unwrap();
        let now = started.elapsed();
        log.push_str(&line);
        log.push('\n');
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let step = event["step"].as_u64();
        match event["event"].as_str() {
            Some("started")
                if event["description"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("RUN sleep") =>
            {
                run_steps.insert(step);
                first_run_start.get_or_insert(now);
            }
            Some("done") if run_steps.contains(&step) => last_run_done = Some(now),
            _ => {}
        }
    }
    let status = child.wait().unwrap();
    let total = started.elapsed();
    assert!(status.success(), "{log}");
    assert_eq!(run_steps.len(), 2, "{log}");
    let span = last_run_done.unwrap() - first_run_start.unwrap();
    assert!(
        span.as_secs_f64() < 3.0,
        "two independent 2 s stages took {span:?} (they must overlap); whole build {total:?}\n{log}"
    );
    eprintln!("two 2 s stages: {span:?}; whole build including start-up: {total:?}");
    let fs = flatten(root.path(), "par:1");
    assert!(fs.path().join("a").is_file() && fs.path().join("b").is_file());
}

#[test]
fn issue5_failing_step_reports_and_keeps_tags_and_cache() {
    let root = store_with_base();
    let dir = context(&[("Dockerfile", "FROM base:1\nRUN echo first > /first\n")]);
    build(root.path(), dir.path(), &["-t", "f:1"]);
    let before = image(root.path(), "f:1").id();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM base:1\nRUN echo first > /first\nRUN echo some output; echo the last words >&2; exit 3\n",
    )
    .unwrap();
    let failed = run_fail(
        kiln(root.path())
            .args(["build", "--progress=plain", "-t", "f:1"])
            .arg(dir.path()),
    );
    assert_eq!(failed.status.code(), Some(1));
    let stderr = stderr_of(&failed);
    assert!(
        stderr.contains("Dockerfile:3"),
        "names the step's place:\n{stderr}"
    );
    assert!(stderr.contains("exit code: 3"), "{stderr}");
    assert!(stderr.contains("the last words"), "{stderr}");
    assert!(was_cached(&stderr, "RUN echo first"), "{stderr}");
    assert_eq!(
        image(root.path(), "f:1").id(),
        before,
        "the tag did not move"
    );
    let store = kiln::store::Store::open(root.path()).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(store.containers_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no container state left: {leftovers:?}"
    );
}

#[test]
fn issue5_dockerignore_stdin_and_outside_dockerfile() {
    let root = store_with_base();
    let dir = context(&[
        ("Dockerfile", "FROM base:1\nCOPY . /ctx/\n"),
        (".dockerignore", "secret*\n*.log\n!keep.log\n"),
        ("secret.txt", "s"),
        ("app.log", "l"),
        ("keep.log", "k"),
        ("code.txt", "c"),
    ]);
    build(root.path(), dir.path(), &["-t", "ign:1"]);
    let fs = flatten(root.path(), "ign:1");
    let ctx = fs.path().join("ctx");
    assert!(ctx.join("code.txt").is_file() && ctx.join("keep.log").is_file());
    assert!(!ctx.join("secret.txt").exists() && !ctx.join("app.log").exists());

    // A Dockerfile outside the context.
    let elsewhere = context(&[("other.Dockerfile", "FROM base:1\nCOPY code.txt /code\n")]);
    let file = elsewhere.path().join("other.Dockerfile");
    build(
        root.path(),
        dir.path(),
        &["-t", "out:1", "-f", file.to_str().unwrap()],
    );
    assert!(flatten(root.path(), "out:1").path().join("code").is_file());

    // `-`: the Dockerfile on stdin, no context.
    let mut child = kiln(root.path())
        .args(["build", "--progress=plain", "-t", "stdin:1", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"FROM base:1\nRUN echo from-stdin > /s\n",
    )
    .unwrap();
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        read(&flatten(root.path(), "stdin:1").path().join("s")),
        "from-stdin\n"
    );
}

/// Serves `body` to every request on 127.0.0.1 and returns the URL.
fn serve(body: &'static [u8]) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = std::io::Write::write_all(&mut stream, head.as_bytes());
            let _ = std::io::Write::write_all(&mut stream, body);
        }
    });
    format!("http://127.0.0.1:{port}/files/tool.txt")
}

#[test]
fn issue5_add_url_with_checksum() {
    let root = store_with_base();
    let url = serve(b"downloaded bytes\n");
    let sum = kiln::digest::Digest::of_bytes(b"downloaded bytes\n");
    let dockerfile =
        format!("FROM base:1\nADD --checksum={sum} {url} /opt/\nADD {url} /named.txt\n");
    let dir = context(&[("Dockerfile", &dockerfile)]);
    build(root.path(), dir.path(), &["-t", "url:1"]);
    let fs = flatten(root.path(), "url:1");
    assert_eq!(read(&fs.path().join("opt/tool.txt")), "downloaded bytes\n");
    assert_eq!(mode_of(&fs.path().join("opt/tool.txt")), 0o600);
    assert_eq!(read(&fs.path().join("named.txt")), "downloaded bytes\n");

    let bad_dockerfile = format!(
        "FROM base:1\nADD --checksum=sha256:{} {url} /opt/\n",
        "0".repeat(64)
    );
    let bad = context(&[("Dockerfile", &bad_dockerfile)]);
    let failed = run_fail(
        kiln(root.path())
            .args(["build", "--progress=plain"])
            .arg(bad.path()),
    );
    assert!(
        stderr_of(&failed).contains("checksum mismatch"),
        "{}",
        stderr_of(&failed)
    );
}

#[test]
fn issue5_onbuild_triggers_run_in_the_child() {
    let root = store_with_base();
    let parent = context(&[(
        "Dockerfile",
        "FROM base:1\nONBUILD COPY marker.txt /marker.txt\nONBUILD RUN echo triggered > /triggered\n",
    )]);
    build(root.path(), parent.path(), &["-t", "parent:1"]);
    let on_build = &config(root.path(), "parent:1")["config"]["OnBuild"];
    assert_eq!(on_build.as_array().map(|a| a.len()), Some(2), "{on_build}");
    let child = context(&[
        ("Dockerfile", "FROM parent:1\nRUN true\n"),
        ("marker.txt", "m\n"),
    ]);
    build(root.path(), child.path(), &["-t", "child:1"]);
    let fs = flatten(root.path(), "child:1");
    assert_eq!(read(&fs.path().join("triggered")), "triggered\n");
    assert_eq!(read(&fs.path().join("marker.txt")), "m\n");
    assert!(config(root.path(), "child:1")["config"]["OnBuild"].is_null());
}

#[test]
fn issue5_missing_base_and_parse_errors_are_clear() {
    let root = store_with_base();
    let dir = context(&[("Dockerfile", "FROM nosuch/image:9\nRUN true\n")]);
    let failed = run_fail(
        kiln(root.path())
            .args(["build", "--progress=plain"])
            .arg(dir.path()),
    );
    let stderr = stderr_of(&failed);
    assert!(
        stderr.contains("nosuch/image:9") && stderr.contains("Dockerfile:1"),
        "{stderr}"
    );

    let dir = context(&[("Dockerfile", "FROM base:1\nRUNN true\n")]);
    let failed = run_fail(
        kiln(root.path())
            .args(["build", "--progress=plain"])
            .arg(dir.path()),
    );
    let stderr = stderr_of(&failed);
    assert!(stderr.contains("Dockerfile:2:"), "{stderr}");
}

#[test]
fn issue5_network_none_isolates_run() {
    let root = store_with_base();
    let list = "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '";
    let dockerfile =
        format!("FROM base:1\nRUN --network=none {list} > /isolated\nRUN {list} > /host\n");
    let dir = context(&[("Dockerfile", &dockerfile)]);
    build(root.path(), dir.path(), &["-t", "net:1"]);
    let fs = flatten(root.path(), "net:1");
    assert_eq!(read(&fs.path().join("isolated")), "lo\n");
    let host = read(&fs.path().join("host"));
    assert!(
        host.lines().count() > 1,
        "host network by default: {host:?}"
    );

    let dockerfile = format!("FROM base:1\nRUN {list} > /flag\n");
    let dir = context(&[("Dockerfile", &dockerfile)]);
    build(
        root.path(),
        dir.path(),
        &["-t", "net:2", "--network", "none"],
    );
    let fs = flatten(root.path(), "net:2");
    assert_eq!(read(&fs.path().join("flag")), "lo\n");
}

#[test]
fn issue5_example_hello_builds_twice_and_runs() {
    require_root();
    let root = common::temp_root();
    run_ok(
        kiln(root.path())
            .arg("import")
            .arg(common::busybox_rootfs_tar())
            .arg("kiln-demo/busybox:1"),
    );
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    let first = build(root.path(), &example, &["-t", "kiln-demo/hello:1"]);
    assert!(
        stderr_of(&first).contains("(9 steps, 0 cached)"),
        "{}",
        stderr_of(&first)
    );
    let second = build(root.path(), &example, &["-t", "kiln-demo/hello:1"]);
    assert!(
        stderr_of(&second).contains("(9 steps, 9 cached)"),
        "{}",
        stderr_of(&second)
    );
    let output = run_ok(kiln(root.path()).args(["run", "--rm", "kiln-demo/hello:1"]));
    let stdout = stdout_of(&output);
    assert!(stdout.starts_with("hello from kiln\n"), "{stdout}");
    assert!(stdout.contains("message.txt"), "{stdout}");
}

#[test]
fn issue5_run_mounts_entrypoint_reset_and_workdir_owner() {
    let root = store_with_base();
    let parent = context(&[("Dockerfile", "FROM base:1\nCMD [\"inherited\"]\n")]);
    build(root.path(), parent.path(), &["-t", "withcmd:1"]);
    let dir = context(&[
        (
            "Dockerfile",
            "FROM withcmd:1\nRUN --mount=type=bind,source=data.txt,target=/mnt/data.txt cp /mnt/data.txt /copied\nRUN --mount=type=cache,target=/cache echo x >> /cache/log && wc -l < /cache/log > /count\nUSER kiln\nWORKDIR /home/kiln/work\nENTRYPOINT [\"/bin/echo\"]\n",
        ),
        ("data.txt", "bound\n"),
    ]);
    build(root.path(), dir.path(), &["-t", "m:1", "--jobs", "1"]);
    let fs = flatten(root.path(), "m:1");
    assert_eq!(read(&fs.path().join("copied")), "bound\n");
    assert!(
        !fs.path().join("mnt/data.txt").exists(),
        "bind mounts stay out of layers"
    );
    assert!(
        !fs.path().join("cache/log").exists(),
        "cache mounts stay out of layers"
    );
    assert_eq!(read(&fs.path().join("count")).trim(), "1");
    assert_eq!(owner_of(&fs.path().join("home/kiln/work")), (1000, 1000));
    let inner = &config(root.path(), "m:1")["config"];
    assert_eq!(inner["Entrypoint"], serde_json::json!(["/bin/echo"]));
    assert!(
        inner["Cmd"].is_null(),
        "ENTRYPOINT resets the inherited CMD: {inner}"
    );

    // The cache mount persists across builds.
    build(root.path(), dir.path(), &["-t", "m:2", "--no-cache"]);
    let fs = flatten(root.path(), "m:2");
    assert_eq!(read(&fs.path().join("count")).trim(), "2");
}
