//! Issues 5 and 6: `FROM` (and `COPY --from=<image>`) pull from a registry what the store
//! lacks during `kiln build`; `--pull` always asks the registry. Against the real Distribution
//! registry (`docker-registry`), with the busybox base pushed by `kiln push` from another store.
//! Builds run for real (root, overlayfs, namespaced containers) and their results run with
//! `kiln run`.

mod common;
mod registry_support;

use common::{kiln, require_root, run_fail, run_ok, stderr_of, stdout_of};
use kiln::executor::build::image::{RegistryPull, StoreResolver};
use kiln::executor::build::progress::{Event, ProgressSink};
use kiln::planner::{BaseImageResolver, Platform};
use kiln::registry::RegistryConfig;
use registry_support::{Registry, RegistryAuth};
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Imports the busybox rootfs into a scratch store as `name` and pushes it with `kiln push`.
/// Returns the pushed manifest digest.
fn push_base(name: &str, docker_config: Option<&Path>) -> String {
    let root = common::temp_root();
    run_ok(
        kiln(root.path())
            .arg("import")
            .arg(common::busybox_rootfs_tar())
            .arg(name),
    );
    let mut push = kiln(root.path());
    if let Some(dir) = docker_config {
        push.env("DOCKER_CONFIG", dir);
    }
    let output = run_ok(push.args(["push", name]));
    stdout_of(&output).trim().to_string()
}

/// A context directory holding only `Dockerfile`.
fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    dir
}

fn build_command(root: &Path, context: &Path, extra: &[&str]) -> Command {
    let mut command = kiln(root);
    command
        .arg("build")
        .arg("--progress=plain")
        .args(extra)
        .arg(context);
    command
}

fn build(root: &Path, context: &Path, extra: &[&str]) -> String {
    stderr_of(&run_ok(&mut build_command(root, context, extra)))
}

fn run_in(root: &Path, image: &str, argv: &[&str]) -> String {
    let output = run_ok(
        kiln(root)
            .args(["run", "--rm", image])
            .args(argv)
            .stdin(Stdio::null()),
    );
    stdout_of(&output)
}

fn image_digest(root: &Path, name: &str) -> Option<String> {
    kiln::store::Store::open(root)
        .unwrap()
        .resolve(name)
        .ok()
        .map(|image| image.manifest_digest.to_string())
}

/// The plain-progress lines announcing a pull of `reference`.
fn pull_lines(stderr: &str, reference: &str) -> usize {
    stderr
        .lines()
        .filter(|line| line.ends_with(&format!("[internal] pull {reference}")))
        .count()
}

/// True when every RUN/COPY step said CACHED (FROM and pull steps are never cache hits).
fn all_cached(stderr: &str) -> bool {
    let mut started = Vec::new();
    let mut cached = Vec::new();
    for line in stderr.lines() {
        let Some((number, text)) = line.strip_prefix('#').and_then(|r| r.split_once(' ')) else {
            continue;
        };
        if text == "CACHED" {
            cached.push(number.to_string());
        } else if text.starts_with('[')
            && !text.starts_with("[internal]")
            && !text.contains("] FROM ")
        {
            started.push(number.to_string());
        }
    }
    !started.is_empty() && started.iter().all(|n| cached.contains(n))
}

/// GET requests for `repository`'s manifests in the registry's access log.
fn manifest_gets(registry: &Registry, repository: &str) -> usize {
    let needle = format!("\"GET /v2/{repository}/manifests/");
    registry.log().matches(&needle).count()
}

#[test]
fn from_a_registry_image_pulls_once_then_builds_from_the_store_and_pull_follows_the_tag() {
    require_root();
    let mut registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let base = format!("{host}/base:1");
    let pushed = push_base(&base, None);

    // A fresh store: the base is pulled during the build, which then runs.
    let root = common::temp_root();
    let dir = context(&format!(
        "FROM {base}\nRUN echo built-on-pulled-base > /greeting\n"
    ));
    let iid = dir.path().join("iid");
    let iid_arg = format!("--iidfile={}", iid.display());
    let stderr = build(root.path(), dir.path(), &["-t", "app:1", &iid_arg]);
    assert_eq!(pull_lines(&stderr, &base), 1, "{stderr}");
    assert!(stderr.contains(&format!("digest {pushed}")), "{stderr}");
    assert!(stderr.contains("pull complete"), "{stderr}");
    // The executor's steps are numbered after the pull.
    assert!(stderr.contains("#2 [1/2] FROM"), "{stderr}");
    assert_eq!(image_digest(root.path(), &base).as_deref(), Some(&*pushed));
    assert_eq!(
        run_in(root.path(), "app:1", &["cat", "/greeting"]),
        "built-on-pulled-base\n"
    );
    let first_id = std::fs::read_to_string(&iid).unwrap();
    let app_digest = image_digest(root.path(), "app:1").unwrap();

    // Registry gone: without --pull the store's base is used, every step is cached.
    registry.stop();
    let stderr = build(root.path(), dir.path(), &["-t", "app:1", &iid_arg]);
    assert_eq!(pull_lines(&stderr, &base), 0, "{stderr}");
    assert!(all_cached(&stderr), "{stderr}");
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), first_id);

    // --pull must reach the registry: a clear error naming the reference and the registry,
    // and no tag moves.
    let output = run_fail(&mut build_command(
        root.path(),
        dir.path(),
        &["--pull", "-t", "app:1", "-t", "app:new"],
    ));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&format!("pull {base} from registry {host}"))
            && stderr.contains("unreachable"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(image_digest(root.path(), "app:1"), Some(app_digest.clone()));
    assert_eq!(image_digest(root.path(), "app:new"), None);
    assert_eq!(image_digest(root.path(), &base).as_deref(), Some(&*pushed));

    // A different base under the same tag.
    registry.restart();
    let other = common::temp_root();
    let v2 = context(&format!("FROM {base}\nRUN echo v2 > /v2\n"));
    build(other.path(), v2.path(), &["-t", &base]);
    let pushed_v2 = stdout_of(&run_ok(kiln(other.path()).args(["push", &base])))
        .trim()
        .to_string();
    assert_ne!(pushed_v2, pushed);

    // Without --pull: still the stored base, still cached, same image.
    let stderr = build(root.path(), dir.path(), &["-t", "app:1", &iid_arg]);
    assert_eq!(pull_lines(&stderr, &base), 0, "{stderr}");
    assert!(all_cached(&stderr), "{stderr}");
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), first_id);

    // --pull: the new manifest digest changes the cache key; the RUN runs again on the new base.
    let stderr = build(
        root.path(),
        dir.path(),
        &["--pull", "-t", "app:1", &iid_arg],
    );
    assert_eq!(pull_lines(&stderr, &base), 1, "{stderr}");
    assert!(stderr.contains(&format!("digest {pushed_v2}")), "{stderr}");
    assert!(!all_cached(&stderr), "{stderr}");
    assert_ne!(std::fs::read_to_string(&iid).unwrap(), first_id);
    assert_eq!(
        image_digest(root.path(), &base).as_deref(),
        Some(&*pushed_v2)
    );
    assert_eq!(
        run_in(root.path(), "app:1", &["cat", "/v2", "/greeting"]),
        "v2\nbuilt-on-pulled-base\n"
    );

    // --pull again with nothing new at the registry: up to date, every step cached.
    let stderr = build(root.path(), dir.path(), &["--pull", "-t", "app:1"]);
    assert!(stderr.contains("image is up to date"), "{stderr}");
    assert!(all_cached(&stderr), "{stderr}");
}

#[test]
fn stages_and_copy_from_the_same_missing_image_pull_it_once() {
    require_root();
    let registry = Registry::start(RegistryAuth::None);
    let base = format!("{}/shared/base:1", registry.host());
    push_base(&base, None);
    let gets_before = manifest_gets(&registry, "shared/base");

    let root = common::temp_root();
    let dir = context(&format!(
        "FROM {base} AS a\nRUN echo a > /a\n\
         FROM {base} AS b\nRUN echo b > /b\n\
         FROM {base}\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n\
         COPY --from={base} /etc/hostname /from-image\n"
    ));
    let stderr = build(root.path(), dir.path(), &["-t", "joined:1"]);
    assert_eq!(pull_lines(&stderr, &base), 1, "{stderr}");
    assert_eq!(
        manifest_gets(&registry, "shared/base") - gets_before,
        1,
        "{}",
        registry.log()
    );
    assert_eq!(
        run_in(root.path(), "joined:1", &["cat", "/a", "/b", "/from-image"]),
        "a\nb\nkbase\n"
    );
}

/// Counts the resolver's progress steps.
#[derive(Default)]
struct CountingSink {
    started: Mutex<Vec<String>>,
}

impl ProgressSink for CountingSink {
    fn event(&self, event: Event) {
        if let Event::Started(step) = event {
            self.started.lock().unwrap().push(step.description);
        }
    }
}

#[test]
fn concurrent_resolves_of_one_missing_image_share_one_pull() {
    let registry = Registry::start(RegistryAuth::None);
    let base = format!("{}/race/base:1", registry.host());
    let pushed = push_base(&base, None);
    let gets_before = manifest_gets(&registry, "race/base");

    let root = common::temp_root();
    let store = kiln::store::Store::open(root.path()).unwrap();
    let sink = CountingSink::default();
    let resolver = StoreResolver::with_registry(
        &store,
        RegistryPull {
            config: RegistryConfig::default(),
            always: false,
        },
        &sink,
    );
    let platform = Platform::host();
    let digests: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| resolver.resolve(&base, &platform).unwrap().digest))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().to_string())
            .collect()
    });
    assert!(digests.iter().all(|d| *d == pushed), "{digests:?}");
    assert_eq!(*sink.started.lock().unwrap(), vec![format!("pull {base}")]);
    assert_eq!(resolver.n_progress_steps(), 1);
    assert_eq!(manifest_gets(&registry, "race/base") - gets_before, 1);
    assert_eq!(resolver.images().len(), 1);
}

#[test]
fn a_missing_image_fails_naming_it_and_its_registry() {
    require_root();
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let root = common::temp_root();
    let missing = format!("{host}/nothere/base:9");
    let dir = context(&format!("FROM {missing}\nRUN true\n"));
    let output = run_fail(&mut build_command(
        root.path(),
        dir.path(),
        &["-t", "never:1"],
    ));
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("pull {missing} from registry {host}"))
            && stderr.contains("not found"),
        "{stderr}"
    );
    assert!(stderr.contains("Dockerfile:1"), "{stderr}");
    assert!(
        stderr.contains(&format!("ERROR pull {missing}")),
        "{stderr}"
    );
    assert_eq!(image_digest(root.path(), "never:1"), None);
    assert_eq!(image_digest(root.path(), &missing), None);
}

#[test]
fn from_name_at_digest_pulls_that_manifest_and_a_digest_pull_resolves_by_its_name() {
    require_root();
    let mut registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let base = format!("{host}/pinned/base:1");
    let pushed = push_base(&base, None);
    let by_digest = format!("{host}/pinned/base@{pushed}");

    // FROM name@digest on a fresh store: pulled by digest, built, run.
    let root = common::temp_root();
    let dir = context(&format!("FROM {by_digest}\nRUN echo pinned > /p\n"));
    let stderr = build(root.path(), dir.path(), &["-t", "pinned:1"]);
    assert_eq!(pull_lines(&stderr, &by_digest), 1, "{stderr}");
    assert_eq!(run_in(root.path(), "pinned:1", &["cat", "/p"]), "pinned\n");
    // Pinned content cannot change: --pull with the registry down still builds, cached.
    registry.stop();
    let stderr = build(root.path(), dir.path(), &["--pull", "-t", "pinned:1"]);
    assert_eq!(pull_lines(&stderr, &by_digest), 0, "{stderr}");
    assert!(all_cached(&stderr), "{stderr}");
    registry.restart();

    // `kiln pull name@digest` stores that name; inspect, run and FROM find it by that name.
    let pulled = common::temp_root();
    let output = run_ok(kiln(pulled.path()).args(["pull", &by_digest]));
    assert_eq!(stdout_of(&output).trim(), by_digest);
    let inspect = stdout_of(&run_ok(kiln(pulled.path()).args(["inspect", &by_digest])));
    assert!(inspect.contains(&pushed), "{inspect}");
    assert_eq!(
        run_in(pulled.path(), &by_digest, &["head", "-n1", "/etc/group"]),
        "root:x:0:\n"
    );
    registry.stop();
    let stderr = build(pulled.path(), dir.path(), &["-t", "pinned:1"]);
    assert_eq!(pull_lines(&stderr, &by_digest), 0, "{stderr}");
    assert_eq!(
        run_in(pulled.path(), "pinned:1", &["cat", "/p"]),
        "pinned\n"
    );
}

#[test]
fn from_an_htpasswd_registry_uses_kiln_login_credentials() {
    require_root();
    const USER: &str = "builder";
    const PASSWORD: &str = "From-Pull-9d2e41";
    let registry = Registry::start(RegistryAuth::Htpasswd {
        username: USER.into(),
        password: PASSWORD.into(),
    });
    let host = registry.host();
    let docker_dir = tempfile::tempdir().unwrap();
    let login = |root: &Path| {
        let mut command = kiln(root);
        command
            .env("DOCKER_CONFIG", docker_dir.path())
            .args(["login", "-u", USER, "--password-stdin", &host])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(PASSWORD.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr_of(&output));
    };
    let scratch = common::temp_root();
    login(scratch.path());
    let base = format!("{host}/private/base:1");
    push_base(&base, Some(docker_dir.path()));

    let root = common::temp_root();
    let dir = context(&format!("FROM {base}\nRUN echo private > /p\n"));

    // No credentials: refused, naming the registry; nothing named.
    let anonymous = tempfile::tempdir().unwrap();
    let output = run_fail(
        build_command(root.path(), dir.path(), &["-t", "private:1"])
            .env("DOCKER_CONFIG", anonymous.path()),
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&format!("from registry {host}")) && stderr.contains("authentication"),
        "{stderr}"
    );
    assert_eq!(image_digest(root.path(), "private:1"), None);

    // With `kiln login`'s credentials the build pulls and runs; the password shows nowhere.
    let output = run_ok(
        build_command(root.path(), dir.path(), &["-t", "private:1"])
            .env("DOCKER_CONFIG", docker_dir.path()),
    );
    let stderr = stderr_of(&output);
    assert_eq!(pull_lines(&stderr, &base), 1, "{stderr}");
    assert!(!stderr.contains(PASSWORD) && !stdout_of(&output).contains(PASSWORD));
    assert_eq!(
        run_in(root.path(), "private:1", &["cat", "/p"]),
        "private\n"
    );
}

#[test]
fn push_to_another_name_recompressed_to_gzip_pulls_back_the_same_image() {
    let registry = Registry::start(RegistryAuth::None);
    let root = common::temp_root();
    run_ok(
        kiln(root.path())
            .arg("import")
            .arg(common::busybox_rootfs_tar())
            .arg("local/base:1"),
    );
    let destination = format!("{}/moved/base:gz", registry.host());
    let output = run_ok(kiln(root.path()).args([
        "push",
        "--compression",
        "gzip",
        "local/base:1",
        &destination,
    ]));
    let pushed = stdout_of(&output).trim().to_string();
    // The store's names are unchanged.
    assert_eq!(image_digest(root.path(), &destination), None);
    let source = kiln::store::Store::open(root.path())
        .unwrap()
        .resolve("local/base:1")
        .unwrap();

    let pulled_root = common::temp_root();
    run_ok(kiln(pulled_root.path()).args(["pull", &destination]));
    let pulled = kiln::store::Store::open(pulled_root.path())
        .unwrap()
        .resolve(&destination)
        .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), pushed);
    assert_eq!(pulled.id(), source.id(), "same config, same diff IDs");
    assert_eq!(
        pulled.layers()[0].media_type().to_string(),
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    // A standard single-member gzip reader (Go's, via skopeo) reads it too.
    let layout = tempfile::tempdir().unwrap();
    registry_support::skopeo(&[
        "copy",
        "--insecure-policy",
        "--src-tls-verify=false",
        &format!("docker://{destination}"),
        &format!("oci:{}:x", layout.path().display()),
    ]);
    let layer = pulled.layer_digests().unwrap()[0].clone();
    let blob = layout.path().join("blobs/sha256").join(layer.hex());
    let status = Command::new("gzip")
        .arg("-t")
        .arg(&blob)
        .status()
        .expect("run gzip");
    assert!(status.success(), "gzip -t {}", blob.display());
}

#[test]
fn from_name_at_an_index_digest_builds_again_offline() {
    require_root();
    let mut registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let base = format!("{host}/multi/base:1");
    let pushed = push_base(&base, None);
    // An OCI index naming the pushed manifest for this platform (and nothing else).
    let manifest_url = format!("{}/v2/multi/base/manifests/{pushed}", registry.url());
    let response = ureq::get(&manifest_url)
        .set(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .call()
        .unwrap();
    let media_type = response.header("Content-Type").unwrap().to_string();
    let mut manifest = Vec::new();
    response.into_reader().read_to_end(&mut manifest).unwrap();
    let platform = Platform::host();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": media_type,
            "digest": pushed,
            "size": manifest.len(),
            "platform": {"os": platform.os, "architecture": platform.architecture},
        }],
    }))
    .unwrap();
    let index_digest = kiln::digest::Digest::of_bytes(&index).to_string();
    ureq::put(&format!(
        "{}/v2/multi/base/manifests/{index_digest}",
        registry.url()
    ))
    .set("Content-Type", "application/vnd.oci.image.index.v1+json")
    .send_bytes(&index)
    .unwrap();

    let by_index = format!("{host}/multi/base@{index_digest}");
    let root = common::temp_root();
    let dir = context(&format!("FROM {by_index}\nRUN echo indexed > /i\n"));
    let stderr = build(root.path(), dir.path(), &["-t", "indexed:1"]);
    assert_eq!(pull_lines(&stderr, &by_index), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("index {index_digest}")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("digest {pushed}")), "{stderr}");
    assert_eq!(
        image_digest(root.path(), &by_index).as_deref(),
        Some(&*pushed)
    );

    // The registry gone: the index digest still resolves in the store.
    registry.stop();
    let stderr = build(root.path(), dir.path(), &["-t", "indexed:1"]);
    assert_eq!(pull_lines(&stderr, &by_index), 0, "{stderr}");
    assert!(all_cached(&stderr), "{stderr}");
    assert_eq!(
        run_in(root.path(), "indexed:1", &["cat", "/i"]),
        "indexed\n"
    );
}
