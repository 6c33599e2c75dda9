//! `kiln pull` and `kiln push` against a real Distribution registry, checked with skopeo:
//! round trips keep digests, present blobs are skipped, blobs are mounted across repositories,
//! `--compression` recompresses, a pull that meets bad bytes leaves no image, and pushing to an
//! htpasswd registry works after `kiln login` without the password in any output.

mod common;
mod registry_support;

use common::{kiln, run_fail, run_ok, stderr_of, stdout_of};
use kiln::digest::Digest;
use kiln::store::Store;
use registry_support::{HttpResponse, HttpServer, Registry, RegistryAuth};
use std::io::Write as _;
use std::process::Stdio;

fn skopeo_digest(reference: &str, creds: Option<&str>) -> String {
    let mut args = vec!["inspect", "--tls-verify=false", "--format", "{{.Digest}}"];
    if let Some(creds) = creds {
        args.extend(["--creds", creds]);
    }
    args.push(reference);
    registry_support::skopeo(&args).trim().to_string()
}

fn skopeo_push_busybox(registry: &Registry, repository_and_tag: &str) -> String {
    let layout = tempfile::tempdir().unwrap();
    let (manifest_digest, _) =
        registry_support::write_busybox_oci_layout(layout.path(), &common::busybox_rootfs_tar());
    registry_support::skopeo(&[
        "copy",
        "--insecure-policy",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", layout.path().display()),
        &format!("docker://{}/{repository_and_tag}", registry.host()),
    ]);
    manifest_digest
}

/// No leftover ingest files in the store's tmp dir.
fn tmp_is_empty(root: &std::path::Path) -> bool {
    std::fs::read_dir(root.join("tmp"))
        .map(|entries| entries.count() == 0)
        .unwrap_or(true)
}

#[test]
fn pull_then_push_keeps_digests_skips_present_blobs_and_mounts() {
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let original = skopeo_push_busybox(&registry, "skopeo/busybox:v1");
    let root = common::temp_root();
    let name = format!("{host}/skopeo/busybox:v1");

    let output = run_ok(kiln(root.path()).args(["pull", &name]));
    assert_eq!(stdout_of(&output).trim(), name);
    assert!(
        stderr_of(&output).contains("Pull complete"),
        "{}",
        stderr_of(&output)
    );
    let store = Store::open(root.path()).unwrap();
    let image = store.resolve(&name).unwrap();
    assert_eq!(image.manifest_digest.to_string(), original);
    run_ok(kiln(root.path()).arg("fsck"));
    assert!(tmp_is_empty(root.path()));

    // Again: every blob is already there.
    let output = run_ok(kiln(root.path()).args(["pull", &name]));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("Already exists") && !stderr.contains("Pull complete"),
        "{stderr}"
    );
    assert!(stderr.contains("up to date"), "{stderr}");

    // By digest, into another store: named NAME@DIGEST.
    let by_digest = format!("{host}/skopeo/busybox@{original}");
    let digest_root = common::temp_root();
    let output = run_ok(kiln(digest_root.path()).args(["pull", &by_digest]));
    assert_eq!(stdout_of(&output).trim(), by_digest);
    let pinned = Store::open(digest_root.path())
        .unwrap()
        .resolve(&original)
        .unwrap();
    assert_eq!(pinned.names, vec![by_digest.clone()]);

    // Push under another repository: the blobs are mounted, the manifest digest is unchanged.
    let copy = format!("{host}/kiln/copy:v2");
    run_ok(kiln(root.path()).args(["tag", &name, &copy]));
    let output = run_ok(kiln(root.path()).args(["push", &copy]));
    assert_eq!(stdout_of(&output).trim(), original);
    assert!(
        stderr_of(&output).contains("Mounted"),
        "{}",
        stderr_of(&output)
    );
    assert_eq!(skopeo_digest(&format!("docker://{copy}"), None), original);

    // Pushed again: nothing to send.
    let output = run_ok(kiln(root.path()).args(["push", &copy]));
    assert!(
        stderr_of(&output).contains("Layer already exists"),
        "{}",
        stderr_of(&output)
    );

    // Recompressed to zstd: a new manifest whose layer is zstd, same image ID once pulled back.
    let zstd_name = format!("{host}/kiln/copy:zstd");
    run_ok(kiln(root.path()).args(["tag", &name, &zstd_name]));
    let output = run_ok(kiln(root.path()).args(["push", "--compression", "zstd", &zstd_name]));
    let zstd_digest = stdout_of(&output).trim().to_string();
    assert_ne!(zstd_digest, original);
    assert_eq!(
        skopeo_digest(&format!("docker://{zstd_name}"), None),
        zstd_digest
    );
    let raw = registry_support::skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{zstd_name}"),
    ]);
    assert!(
        raw.contains("application/vnd.oci.image.layer.v1.tar+zstd"),
        "{raw}"
    );
    let other_root = common::temp_root();
    run_ok(kiln(other_root.path()).args(["pull", &zstd_name]));
    let pulled = Store::open(other_root.path())
        .unwrap()
        .resolve(&zstd_name)
        .unwrap();
    assert_eq!(pulled.id(), image.id(), "same config, same image ID");
    assert_eq!(pulled.manifest_digest.to_string(), zstd_digest);
    run_ok(kiln(other_root.path()).arg("fsck"));
}

#[test]
fn a_pull_that_meets_wrong_bytes_leaves_no_image() {
    // A server that serves a real manifest and config but a layer with one byte changed.
    let layout = tempfile::tempdir().unwrap();
    let (manifest_digest, blob_digests) =
        registry_support::write_busybox_oci_layout(layout.path(), &common::busybox_rootfs_tar());
    let read_blob = |digest: &str| {
        std::fs::read(
            layout
                .path()
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let manifest = read_blob(&manifest_digest);
    let config = read_blob(&blob_digests[0]);
    let mut layer = read_blob(&blob_digests[1]);
    let middle = layer.len() / 2;
    layer[middle] ^= 0xff;
    let (config_digest, layer_digest) = (blob_digests[0].clone(), blob_digests[1].clone());
    let server = HttpServer::start(move |request| match request.path.as_str() {
        "/v2/" => HttpResponse::new(200, "{}"),
        "/v2/lie/busybox/manifests/v1" => HttpResponse::new(200, manifest.clone())
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
        path if path == format!("/v2/lie/busybox/blobs/{config_digest}") => {
            HttpResponse::new(200, config.clone())
        }
        path if path == format!("/v2/lie/busybox/blobs/{layer_digest}") => {
            HttpResponse::new(200, layer.clone())
        }
        _ => HttpResponse::new(404, ""),
    });

    let root = common::temp_root();
    let name = format!("{}/lie/busybox:v1", server.host());
    let output = run_fail(kiln(root.path()).args(["pull", &name]));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&server.host()) && stderr.contains("refused"),
        "{stderr}"
    );
    assert!(stderr.contains(&blob_digests[1]), "{stderr}");
    let store = Store::open(root.path()).unwrap();
    assert!(
        store.images().unwrap().is_empty(),
        "a partial image was listed"
    );
    assert!(store.resolve(&name).is_err());
    assert!(
        !store.has_blob(&blob_digests[1].parse::<Digest>().unwrap()),
        "the bad layer was committed"
    );
    assert!(tmp_is_empty(root.path()), "ingest files left behind");
}

#[test]
fn login_then_push_to_an_htpasswd_registry_never_shows_the_password() {
    const USER: &str = "pusher";
    const PASSWORD: &str = "Pa55-unique-7f3a9c";
    let registry = Registry::start(RegistryAuth::Htpasswd {
        username: USER.into(),
        password: PASSWORD.into(),
    });
    let docker_dir = tempfile::tempdir().unwrap();
    let root = common::temp_root();
    let name = format!("{}/private/busybox:1", registry.host());
    run_ok(kiln(root.path()).args([
        "import",
        common::busybox_rootfs_tar().to_str().unwrap(),
        &name,
    ]));

    // Not logged in: a clear error naming the registry.
    let output = run_fail(
        kiln(root.path())
            .env("DOCKER_CONFIG", docker_dir.path())
            .args(["push", &name]),
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&registry.host()) && stderr.contains("kiln login"),
        "{stderr}"
    );

    let mut login = kiln(root.path());
    login
        .env("DOCKER_CONFIG", docker_dir.path())
        .args(["login", "-u", USER, "--password-stdin", &registry.host()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = login.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(PASSWORD.as_bytes())
        .unwrap();
    let login_output = child.wait_with_output().unwrap();
    assert!(
        login_output.status.success(),
        "{}",
        stderr_of(&login_output)
    );

    let output = run_ok(
        kiln(root.path())
            .env("DOCKER_CONFIG", docker_dir.path())
            .args(["push", "--compression", "gzip", &name]),
    );
    let digest = stdout_of(&output).trim().to_string();
    assert_eq!(
        skopeo_digest(
            &format!("docker://{name}"),
            Some(&format!("{USER}:{PASSWORD}"))
        ),
        digest
    );
    let raw = registry_support::skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &format!("{USER}:{PASSWORD}"),
        "--raw",
        &format!("docker://{name}"),
    ]);
    assert!(raw.contains("tar+gzip"), "{raw}");
    for output in [&login_output, &output] {
        let text = format!("{}{}", stdout_of(output), stderr_of(output));
        assert!(!text.contains(PASSWORD), "password in output: {text}");
    }
    assert!(!registry.log().contains(PASSWORD));
}

#[test]
fn credentials_come_from_cred_helpers_and_creds_store() {
    const USER: &str = "helper-user";
    const PASSWORD: &str = "helper-secret-91b2";
    let registry = Registry::start(RegistryAuth::Htpasswd {
        username: USER.into(),
        password: PASSWORD.into(),
    });
    let host = registry.host();
    // A Docker credential helper, as `docker-credential-NAME get` is called: the server on
    // stdin, JSON on stdout.
    let helper_dir = tempfile::tempdir().unwrap();
    let helper = helper_dir.path().join("docker-credential-kilntest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nserver=$(cat)\nif [ \"$1\" = get ] && [ \"$server\" = \"{host}\" ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        helper_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let docker_dir = tempfile::tempdir().unwrap();
    let config_path = docker_dir.path().join("config.json");
    let with_config = |command: &mut std::process::Command| {
        command
            .env("DOCKER_CONFIG", docker_dir.path())
            .env("PATH", &path);
    };

    // credHelpers for this registry: push.
    std::fs::write(
        &config_path,
        serde_json::json!({"credHelpers": {host.clone(): "kilntest"}}).to_string(),
    )
    .unwrap();
    let root = common::temp_root();
    let name = format!("{host}/helped/busybox:1");
    run_ok(kiln(root.path()).args([
        "import",
        common::busybox_rootfs_tar().to_str().unwrap(),
        &name,
    ]));
    let mut push = kiln(root.path());
    with_config(&mut push);
    let output = run_ok(push.args(["push", &name]));
    let digest = stdout_of(&output).trim().to_string();

    // credsStore for every registry: pull into a fresh store.
    std::fs::write(&config_path, r#"{"credsStore":"kilntest"}"#).unwrap();
    let other_root = common::temp_root();
    let mut pull = kiln(other_root.path());
    with_config(&mut pull);
    run_ok(pull.args(["pull", &name]));
    let pulled = Store::open(other_root.path())
        .unwrap()
        .resolve(&name)
        .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), digest);

    // A helper that is not installed: a clear error naming it.
    std::fs::write(&config_path, r#"{"credsStore":"kiln-absent-helper"}"#).unwrap();
    let third_root = common::temp_root();
    let mut pull = kiln(third_root.path());
    with_config(&mut pull);
    let output = run_fail(pull.args(["pull", &name]));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&host) && stderr.contains("credential helper"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}

#[test]
fn login_and_logout_go_through_the_configured_creds_store() {
    const USER: &str = "store-user";
    const PASSWORD: &str = "store-secret-5d1e";
    let registry = Registry::start(RegistryAuth::Htpasswd {
        username: USER.into(),
        password: PASSWORD.into(),
    });
    let host = registry.host();
    // A file-backed helper speaking Docker's helper protocol (store / get / erase).
    let helper_dir = tempfile::tempdir().unwrap();
    let state = helper_dir.path().join("stored.json");
    let helper = helper_dir.path().join("docker-credential-kilnfile");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  store) cat > '{state}' ;;\n  get) cat > /dev/null; if [ -f '{state}' ]; then cat '{state}'; else echo 'credentials not found in native keychain'; exit 1; fi ;;\n  erase) cat > /dev/null; rm -f '{state}' ;;\n  *) exit 1 ;;\nesac\n",
            state = state.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        helper_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let docker_dir = tempfile::tempdir().unwrap();
    let config_path = docker_dir.path().join("config.json");
    std::fs::write(&config_path, r#"{"credsStore":"kilnfile"}"#).unwrap();
    let root = common::temp_root();
    let command = |args: &[&str]| {
        let mut command = kiln(root.path());
        command
            .env("DOCKER_CONFIG", docker_dir.path())
            .env("PATH", &path)
            .args(args);
        command
    };

    let mut login = command(&["login", "-u", USER, "--password-stdin", &host]);
    login
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = login.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(PASSWORD.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let config_text = std::fs::read_to_string(&config_path).unwrap();
    assert!(
        !config_text.contains("auth\""),
        "plaintext auth written: {config_text}"
    );
    let stored = std::fs::read_to_string(&state).unwrap();
    assert!(
        stored.contains(PASSWORD) && stored.contains(USER),
        "{stored}"
    );

    let name = format!("{host}/stored/busybox:1");
    run_ok(kiln(root.path()).args([
        "import",
        common::busybox_rootfs_tar().to_str().unwrap(),
        &name,
    ]));
    run_ok(&mut command(&["push", &name]));

    let output = run_ok(&mut command(&["logout", &host]));
    assert!(
        stderr_of(&output).contains("Removing login credentials"),
        "{}",
        stderr_of(&output)
    );
    assert!(!state.exists(), "the helper still holds the credentials");
    let output = run_fail(&mut command(&["push", &name]));
    assert!(stderr_of(&output).contains(&host), "{}", stderr_of(&output));
}
