//! Issue 6, shared build cache: `kiln build --cache-to type=registry,...` on one store and
//! `--cache-from` on another, empty one, through a real Distribution registry
//! (`docker-registry` on 127.0.0.1). RUN steps write a random nonce, so a step that ran again
//! would give other layer digests: equal digests prove the second build ran nothing.

mod common;
mod registry_support;

use common::{kiln, require_root, run_fail, run_ok, stderr_of};
use registry_support::{skopeo, Registry, RegistryAuth};
use std::path::Path;

const DOCKERFILE: &str = "\
FROM base:1 AS builder
RUN head -c 16 /dev/urandom | od -x > /nonce-builder
COPY src.txt /src.txt
RUN cat /src.txt /nonce-builder > /artifact

FROM base:1
ENV APP=1
COPY app.txt /app/app.txt
RUN head -c 16 /dev/urandom | od -x > /nonce
COPY --from=builder /artifact /app/artifact
WORKDIR /app/work
RUN true
LABEL stage=final
";

/// The shown steps of the Dockerfile above, in order (FROM lines aside).
const STEPS: [&str; 8] = [
    "RUN head -c 16 /dev/urandom | od -x > /nonce-builder",
    "COPY src.txt /src.txt",
    "RUN cat /src.txt /nonce-builder > /artifact",
    "COPY app.txt /app/app.txt",
    "RUN head -c 16 /dev/urandom | od -x > /nonce",
    "COPY --from=builder /artifact /app/artifact",
    "WORKDIR /app/work",
    "RUN true",
];

/// A fresh store with the busybox rootfs imported as `base:1` at a fixed time, so every store
/// made here has the same base image digest (what the cache keys start from).
fn store_with_base() -> tempfile::TempDir {
    require_root();
    let root = common::temp_root();
    run_ok(
        kiln(root.path())
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("import")
            .arg(common::busybox_rootfs_tar())
            .arg("base:1"),
    );
    root
}

fn make_context(app: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(dir.path().join("src.txt"), "source\n").unwrap();
    std::fs::write(dir.path().join("app.txt"), app).unwrap();
    dir
}

fn build(root: &Path, context: &Path, extra: &[&str]) -> std::process::Output {
    run_ok(
        kiln(root)
            .arg("build")
            .arg("--progress=plain")
            .args(["-t", "app:1"])
            .args(extra)
            .arg(context),
    )
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
        .filter(|(_, description)| !description.starts_with("FROM "))
        .map(|(number, description)| {
            let hit = cached.contains(&number);
            (description, hit)
        })
        .collect()
}

fn hit(stderr: &str, step: &str) -> bool {
    let steps = cached_steps(stderr);
    let found: Vec<&(String, bool)> = steps.iter().filter(|(d, _)| d == step).collect();
    assert_eq!(found.len(), 1, "step {step:?} in:\n{stderr}");
    found[0].1
}

/// (manifest digest, config digest, layer digests) of a stored image.
fn digests(root: &Path, name: &str) -> (String, String, Vec<String>) {
    let store = kiln::store::Store::open(root).unwrap();
    let image = store.resolve(name).unwrap();
    (
        image.manifest_digest.to_string(),
        image.id().to_string(),
        image
            .layer_digests()
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect(),
    )
}

fn base_digest(root: &Path) -> String {
    digests(root, "base:1").0
}

#[test]
fn issue6_registry_cache_makes_an_empty_store_build_the_same_image_without_running() {
    let registry = Registry::start(RegistryAuth::None);
    let cache_ref = format!("{}/cache/app:buildcache", registry.host());
    let context = make_context("app v1\n");

    // Store A: everything runs, the cache goes to the registry.
    let a = store_with_base();
    let first = build(
        a.path(),
        context.path(),
        &[
            "--cache-to",
            &format!("type=registry,ref={cache_ref},mode=max"),
        ],
    );
    let stderr_a = stderr_of(&first);
    let steps_a = cached_steps(&stderr_a);
    assert_eq!(steps_a.len(), STEPS.len(), "{stderr_a}");
    assert!(steps_a.iter().all(|(_, hit)| !hit), "{stderr_a}");
    assert!(stderr_a.contains("exporting cache to"), "{stderr_a}");
    let image_a = digests(a.path(), "app:1");

    // The artifact is a valid OCI manifest for skopeo, with kiln's cache config and every
    // layer the image built (mode=max: the builder stage's too).
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{cache_ref}"),
    ]);
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(manifest["schemaVersion"], 2, "{raw}");
    assert_eq!(
        manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{raw}"
    );
    assert_eq!(
        manifest["config"]["mediaType"], "application/vnd.kiln.cache.config.v1+json",
        "{raw}"
    );
    let cache_layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    for layer in &image_a.2[1..] {
        assert!(cache_layers.contains(layer), "{layer} not in {raw}");
    }
    // The builder stage's layers are there too (3 steps with layers), beyond the final image's.
    assert_eq!(cache_layers.len(), image_a.2.len() - 1 + 3, "{raw}");
    let config_raw = skopeo(&[
        "inspect",
        "--raw",
        "--config",
        "--tls-verify=false",
        &format!("docker://{cache_ref}"),
    ]);
    let config: serde_json::Value = serde_json::from_str(&config_raw).unwrap();
    assert_eq!(config["version"], 1, "{config_raw}");
    // 8 shown steps + ENV + LABEL, each with a record.
    assert_eq!(
        config["records"].as_object().unwrap().len(),
        10,
        "{config_raw}"
    );

    // Store B: empty but for the same base image. Every step is a cache hit, nothing runs
    // (a RUN would write another nonce), and the image is A's, digest for digest.
    // B also exports to another repository of the registry: the layers it took from the
    // imported cache are mounted from there, not uploaded again.
    let b = store_with_base();
    assert_eq!(base_digest(a.path()), base_digest(b.path()));
    let second = build(
        b.path(),
        context.path(),
        &[
            "--cache-from",
            &format!("type=registry,ref={cache_ref}"),
            "--cache-to",
            &format!(
                "type=registry,ref={}/cache/copy:1,mode=max",
                registry.host()
            ),
        ],
    );
    let stderr_b = stderr_of(&second);
    let steps_b = cached_steps(&stderr_b);
    assert_eq!(steps_b.len(), STEPS.len(), "{stderr_b}");
    for step in STEPS {
        assert!(
            hit(&stderr_b, step),
            "{step} was not a cache hit:\n{stderr_b}"
        );
    }
    assert!(stderr_b.contains("(8 steps, 8 cached)"), "{stderr_b}");
    let n = cache_layers.len();
    assert!(
        stderr_b.contains(&format!("{n} layers (0 already there, {n} mounted)")),
        "{stderr_b}"
    );
    assert_eq!(digests(b.path(), "app:1"), image_a);
    // Nothing ran on top of a hit, so no cached layer was unpacked: only the base snapshot.
    let n_snapshots = std::fs::read_dir(b.path().join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(n_snapshots, 1);

    // The plain `--cache-from REF` form means the same; B now hits locally as well.
    let third = build(b.path(), context.path(), &["--cache-from", &cache_ref]);
    assert!(cached_steps(&stderr_of(&third)).iter().all(|(_, hit)| *hit));
    assert_eq!(digests(b.path(), "app:1"), image_a);

    // Store C, a changed app.txt: the builder stage and the steps before the COPY hit, the
    // COPY of the changed file and everything after it run again.
    let changed = make_context("app v2\n");
    let c = store_with_base();
    let fourth = build(
        c.path(),
        changed.path(),
        &["--cache-from", &format!("type=registry,ref={cache_ref}")],
    );
    let stderr_c = stderr_of(&fourth);
    for step in &STEPS[..3] {
        assert!(hit(&stderr_c, step), "{step} should hit:\n{stderr_c}");
    }
    for step in &STEPS[3..] {
        assert!(!hit(&stderr_c, step), "{step} should run:\n{stderr_c}");
    }
    let image_c = digests(c.path(), "app:1");
    assert_ne!(image_c.0, image_a.0);
    // The final stage's first layer (COPY app.txt) differs, the base layer does not.
    assert_eq!(image_c.2[0], image_a.2[0]);
    assert_ne!(image_c.2[1], image_a.2[1]);
}

#[test]
fn issue6_mode_min_exports_only_the_final_image_steps() {
    let registry = Registry::start(RegistryAuth::None);
    let cache_ref = format!("{}/cache/min:1", registry.host());
    let context = make_context("app\n");
    let a = store_with_base();
    build(
        a.path(),
        context.path(),
        &["--cache-to", &format!("type=registry,ref={cache_ref}")],
    );
    let image_a = digests(a.path(), "app:1");
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{cache_ref}"),
    ]);
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let mut cache_layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    cache_layers.sort();
    let mut final_layers = image_a.2[1..].to_vec();
    final_layers.sort();
    assert_eq!(cache_layers, final_layers, "{raw}");

    // On an empty store every final-stage step hits, COPY --from included (its key is the
    // builder's key, not its output), so, as with BuildKit, the builder stage whose records
    // were not exported is not run at all: nothing of it shows, and the image is still A's.
    let b = store_with_base();
    let second = build(b.path(), context.path(), &["--cache-from", &cache_ref]);
    let stderr_b = stderr_of(&second);
    let shown: Vec<String> = cached_steps(&stderr_b)
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    for step in &STEPS[..3] {
        assert!(
            !shown.iter().any(|d| d == step),
            "{step} should be skipped:\n{stderr_b}"
        );
    }
    assert!(!stderr_b.contains("[builder"), "{stderr_b}");
    for step in &STEPS[3..] {
        assert!(hit(&stderr_b, step), "{step} should hit:\n{stderr_b}");
    }
    assert_eq!(digests(b.path(), "app:1"), image_a);

    // Once the final stage's COPY --from misses (the builder's source changed), the builder
    // is needed again and runs, from its first changed step.
    std::fs::write(context.path().join("src.txt"), "changed\n").unwrap();
    let third = build(b.path(), context.path(), &["--cache-from", &cache_ref]);
    let stderr_c = stderr_of(&third);
    assert!(!hit(&stderr_c, STEPS[1]), "{stderr_c}");
    assert!(!hit(&stderr_c, STEPS[2]), "{stderr_c}");
    assert!(!hit(&stderr_c, STEPS[5]), "{stderr_c}");
    assert!(hit(&stderr_c, STEPS[4]), "{stderr_c}");
}

#[test]
fn issue6_bad_cache_flags_fail_clearly() {
    let root = store_with_base();
    let context = make_context("app\n");
    for (flag, value, expect) in [
        ("--cache-to", "type=registry", "missing ref="),
        (
            "--cache-to",
            "type=local,dest=/tmp/x",
            "unsupported cache type \"local\"",
        ),
        ("--cache-to", "ref=127.0.0.1:5000/c:1", "missing type="),
        (
            "--cache-to",
            "type=registry,ref=127.0.0.1:5000/c:1,mode=all",
            "mode \"all\" is not min or max",
        ),
        (
            "--cache-to",
            "type=registry,ref=127.0.0.1:5000/c:1,color=red",
            "unknown option \"color\"",
        ),
        (
            "--cache-to",
            "type=registry,ref=127.0.0.1:5000/UPPER:1",
            "is not a valid reference",
        ),
        ("--cache-to", "127.0.0.1:5000/c:1", "is not KEY=VALUE"),
        (
            "--cache-from",
            "type=registry,ref=127.0.0.1:5000/c:1,mode=max",
            "mode= is an option of --cache-to only",
        ),
        (
            "--cache-from",
            "type=s3,bucket=x",
            "unsupported cache type \"s3\"",
        ),
    ] {
        let output = run_fail(
            kiln(root.path())
                .arg("build")
                .arg("--progress=plain")
                .arg(flag)
                .arg(value)
                .arg(context.path()),
        );
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
        assert!(stderr.contains(value), "{flag} {value}: {stderr}");
        assert!(stderr.contains(expect), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        // Refused before anything ran.
        assert!(!stderr.contains("#1 "), "{stderr}");
    }
}

#[test]
fn issue6_unreachable_cache_from_warns_and_failed_cache_to_fails_after_storing() {
    let root = store_with_base();
    let context = make_context("app\n");
    // Nothing listens on port 1; a live registry without the tag behaves the same.
    let registry = Registry::start(RegistryAuth::None);
    for cache in [
        "type=registry,ref=127.0.0.1:1/nothing/here:1".to_string(),
        format!("type=registry,ref={}/no/such:tag", registry.host()),
    ] {
        let output = build(root.path(), context.path(), &["--cache-from", &cache]);
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains("warning: --cache-from") && stderr.contains("building without it"),
            "{stderr}"
        );
    }

    let output = run_fail(
        kiln(root.path())
            .arg("build")
            .arg("--progress=plain")
            .args(["-t", "stored:1"])
            .args(["--cache-to", "type=registry,ref=127.0.0.1:1/nothing/here:1"])
            .arg(context.path()),
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("--cache-to 127.0.0.1:1/nothing/here:1"),
        "{stderr}"
    );
    assert!(stderr.contains("was built and stored"), "{stderr}");
    // The image is there, named.
    digests(root.path(), "stored:1");

    // ignore-error=true turns the failure into a warning.
    let output = build(
        root.path(),
        context.path(),
        &[
            "--cache-to",
            "type=registry,ref=127.0.0.1:1/nothing/here:1,ignore-error=true",
        ],
    );
    assert!(
        stderr_of(&output).contains("warning: --cache-to"),
        "{}",
        stderr_of(&output)
    );
}

fn config_of(root: &Path, name: &str) -> serde_json::Value {
    let store = kiln::store::Store::open(root).unwrap();
    serde_json::from_slice(&store.resolve(name).unwrap().config_bytes).unwrap()
}

#[test]
fn issue6_cache_from_image_uses_its_inline_cache() {
    let mut registry = Registry::start(RegistryAuth::None);
    let image_ref = format!("{}/app/inline:1", registry.host());
    let plain_ref = format!("{}/app/plain:1", registry.host());
    let context = make_context("app\n");

    // Store A builds with --cache-to type=inline: the config carries the records of the
    // final image's steps (COPY, RUN, COPY --from, WORKDIR, RUN true, ENV, LABEL), no label.
    let a = store_with_base();
    build(
        a.path(),
        context.path(),
        &["-t", &image_ref, "--cache-to", "type=inline"],
    );
    let config = config_of(a.path(), &image_ref);
    assert_eq!(config["kiln.cache.v1"]["version"], 1, "{config}");
    assert_eq!(
        config["kiln.cache.v1"]["records"]
            .as_object()
            .unwrap()
            .len(),
        7,
        "{config}"
    );
    assert!(config["config"]["Labels"].get("kiln.cache.v1").is_none());
    run_ok(kiln(a.path()).args(["push", &image_ref]));
    let image_a = digests(a.path(), &image_ref);
    // The same build without type=inline has no such field (and so another image ID).
    build(a.path(), context.path(), &["-t", &plain_ref]);
    assert!(config_of(a.path(), &plain_ref)
        .get("kiln.cache.v1")
        .is_none());
    run_ok(kiln(a.path()).args(["push", &plain_ref]));

    // Store B, empty: `--cache-from IMAGE` reads the records from the pushed image; the final
    // stage's steps hit (layers pulled from the image's repository), the builder stage is not
    // run at all (an inline cache holds the final image's steps only, and the COPY --from that
    // reads the builder hits), and the image is A's.
    let b = store_with_base();
    let output = build(
        b.path(),
        context.path(),
        &["--cache-from", &image_ref, "--cache-to", "type=inline"],
    );
    let stderr = stderr_of(&output);
    assert!(!stderr.contains("[builder"), "{stderr}");
    for step in &STEPS[3..] {
        assert!(hit(&stderr, step), "{step} should hit:\n{stderr}");
    }
    assert_eq!(digests(b.path(), "app:1"), image_a);

    // An image built without type=inline carries no keys: a warning, and everything runs.
    let c = store_with_base();
    let output = build(c.path(), context.path(), &["--cache-from", &plain_ref]);
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("without kiln cache records") && stderr.contains("building without it"),
        "{stderr}"
    );
    assert!(
        cached_steps(&stderr).iter().all(|(_, hit)| !hit),
        "{stderr}"
    );

    // A local image works without the registry (docker build --cache-from IMAGE): load A's
    // image into a fresh store, stop the registry, build.
    let archive = tempfile::tempdir().unwrap();
    let tar = archive.path().join("app.tar");
    run_ok(
        kiln(a.path())
            .args(["save", "-o"])
            .arg(&tar)
            .arg(&image_ref),
    );
    let d = store_with_base();
    run_ok(kiln(d.path()).args(["load", "-i"]).arg(&tar));
    registry.stop();
    let output = build(d.path(), context.path(), &["--cache-from", &image_ref]);
    let stderr = stderr_of(&output);
    for step in &STEPS[3..] {
        assert!(hit(&stderr, step), "{step} should hit:\n{stderr}");
    }
    // Save and load may store the layers in another compression: the same content (diff
    // IDs) and history, so the same config apart from the inline records.
    let config_d = config_of(d.path(), "app:1");
    assert_eq!(config_d["rootfs"], config["rootfs"]);
    assert_eq!(config_d["history"], config["history"]);
}

#[test]
fn issue6_a_cached_layer_served_with_wrong_bytes_is_refused_and_the_step_runs() {
    let registry = Registry::start(RegistryAuth::None);
    let context = make_context("app\n");
    let a = store_with_base();
    let cache_path = "cache/app:buildcache";
    build(
        a.path(),
        context.path(),
        &[
            "--cache-to",
            &format!(
                "type=registry,ref={}/{cache_path},mode=max",
                registry.host()
            ),
        ],
    );
    // Layers: base, COPY app.txt, RUN ... > /nonce, ...
    let bad_layer = digests(a.path(), "app:1").2[2].clone();

    // A proxy in front of the registry that flips one byte of that layer.
    let upstream = registry.url();
    let bad_path = format!("/blobs/{bad_layer}");
    let proxy = registry_support::HttpServer::start(move |request| {
        let url = format!("{upstream}{}", request.path);
        let response = match ureq::request(&request.method, &url)
            .set("Accept", request.header("accept").unwrap_or("*/*"))
            .call()
        {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(err) => return registry_support::HttpResponse::new(502, err.to_string()),
        };
        let status = response.status();
        let headers: Vec<(String, String)> = ["Content-Type", "Docker-Content-Digest"]
            .iter()
            .filter_map(|name| {
                response
                    .header(name)
                    .map(|v| (name.to_string(), v.to_string()))
            })
            .collect();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
        if request.method == "GET" && request.path.ends_with(&bad_path) && !body.is_empty() {
            let middle = body.len() / 2;
            body[middle] ^= 0xff;
        }
        let mut reply = registry_support::HttpResponse::new(status, body);
        for (name, value) in headers {
            reply = reply.header(&name, &value);
        }
        reply
    });

    let b = store_with_base();
    let output = build(
        b.path(),
        context.path(),
        &[
            "--cache-from",
            &format!("type=registry,ref={}/{cache_path}", proxy.host()),
        ],
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("cannot use the imported cache record") && stderr.contains("digest"),
        "{stderr}"
    );
    // The refused step ran; the others still hit.
    assert!(!hit(&stderr, STEPS[4]), "{stderr}");
    for step in STEPS.iter().filter(|s| **s != STEPS[4]) {
        assert!(hit(&stderr, step), "{step} should hit:\n{stderr}");
    }
    // Nothing of the bad download was kept.
    let store = kiln::store::Store::open(b.path()).unwrap();
    assert!(!store.has_blob(&bad_layer.parse().unwrap()));
    assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
}

#[test]
fn issue6_cache_on_a_registry_with_basic_auth_uses_docker_credentials() {
    const USER: &str = "cacheuser";
    const PASSWORD: &str = "cache-secret-3141";
    let registry = Registry::start(RegistryAuth::Htpasswd {
        username: USER.into(),
        password: PASSWORD.into(),
    });
    let cache = format!(
        "type=registry,ref={}/cache/auth:1,mode=max",
        registry.host()
    );
    let no_credentials = tempfile::tempdir().unwrap();
    let credentials = tempfile::tempdir().unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        credentials.path().join("config.json"),
        serde_json::json!({"auths": {registry.host(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let context = make_context("app\n");
    let a = store_with_base();

    // Without credentials the export is refused: a clear error after the image is stored.
    let output = run_fail(
        kiln(a.path())
            .env("DOCKER_CONFIG", no_credentials.path())
            .args([
                "build",
                "--progress=plain",
                "-t",
                "app:1",
                "--cache-to",
                &cache,
            ])
            .arg(context.path()),
    );
    let stderr = stderr_of(&output);
    assert!(stderr.contains("was built and stored"), "{stderr}");
    assert!(stderr.contains("authentication required"), "{stderr}");

    // With them it goes through; the password shows nowhere.
    let output = run_ok(
        kiln(a.path())
            .env("DOCKER_CONFIG", credentials.path())
            .args([
                "build",
                "--progress=plain",
                "-t",
                "app:1",
                "--cache-to",
                &cache,
            ])
            .arg(context.path()),
    );
    assert!(!stderr_of(&output).contains(PASSWORD));
    let image_a = digests(a.path(), "app:1");

    let from = cache.replace(",mode=max", "");
    let b = store_with_base();
    let output = run_ok(
        kiln(b.path())
            .env("DOCKER_CONFIG", no_credentials.path())
            .args([
                "build",
                "--progress=plain",
                "-t",
                "app:1",
                "--cache-from",
                &from,
            ])
            .arg(context.path()),
    );
    let stderr = stderr_of(&output);
    assert!(stderr.contains("warning: --cache-from"), "{stderr}");
    let c = store_with_base();
    let output = run_ok(
        kiln(c.path())
            .env("DOCKER_CONFIG", credentials.path())
            .args([
                "build",
                "--progress=plain",
                "-t",
                "app:1",
                "--cache-from",
                &from,
            ])
            .arg(context.path()),
    );
    let stderr = stderr_of(&output);
    assert!(
        cached_steps(&stderr).iter().all(|(_, hit)| *hit),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD));
    assert_eq!(digests(c.path(), "app:1"), image_a);
}
