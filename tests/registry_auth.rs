//! Registry authentication against a real Distribution registry: htpasswd Basic auth with
//! `kiln login`/`logout`, and token auth with a token issuer the registry verifies itself
//! (ES256 JWTs, x5c chain checked against `rootcertbundle`).

mod common;
mod registry_support;

use kiln::digest::Digest;
use kiln::registry::{
    Client, Credential, DockerConfig, ImageRef, PushOutcome, RegistryConfig, RegistryError, Secret,
};
use registry_support::{IssuerMode, Registry, RegistryAuth, TokenIssuer};
use std::io::Write as _;
use std::process::{Output, Stdio};
use std::sync::atomic::Ordering;

const USER: &str = "kiln-user";
const PASSWORD: &str = "pw-Zq8!correct-horse";
const WRONG_PASSWORD: &str = "pw-WRONG-battery-staple";

fn basic(password: &str) -> Option<Credential> {
    Some(Credential::Basic {
        username: USER.to_string(),
        password: Secret::new(password),
    })
}

/// Runs kiln with `stdin` fed and DOCKER_CONFIG set.
fn kiln_with_stdin(docker_config: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let root = common::temp_root();
    let mut command = common::kiln(root.path());
    command
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn kiln");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn all_output(output: &Output) -> String {
    format!("{}{}", common::stdout_of(output), common::stderr_of(output))
}

/// Pushes a config, a layer and a manifest to `repository`, fetches them back, and checks the
/// digests. Returns the manifest digest.
fn push_and_fetch(client: &Client, repository: &str) -> Digest {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let layer = repository.as_bytes().repeat(5000);
    for blob in [&config, &layer] {
        client
            .push_blob(
                repository,
                &Digest::of_bytes(blob),
                blob.len() as u64,
                blob,
                None,
            )
            .unwrap();
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": kiln::registry::MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of_bytes(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::of_bytes(&layer).to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let digest = client
        .put_manifest(
            repository,
            "latest",
            kiln::registry::MEDIA_TYPE_OCI_MANIFEST,
            &manifest,
        )
        .unwrap();
    let fetched = client.get_manifest(repository, "latest").unwrap();
    assert_eq!(fetched.digest, digest);
    let mut out = Vec::new();
    client
        .get_blob(
            repository,
            &Digest::of_bytes(&layer),
            Some(layer.len() as u64),
            &mut out,
        )
        .unwrap();
    assert_eq!(out, layer);
    digest
}

#[test]
fn basic_auth_wrong_password_is_refused_and_login_then_push_works() {
    let registry = Registry::start(RegistryAuth::Htpasswd {
        username: USER.into(),
        password: PASSWORD.into(),
    });
    let docker_dir = tempfile::tempdir().unwrap();
    let config = RegistryConfig::default();

    // Anonymous: refused, and the error says how to fix it.
    let anonymous = Client::new(&registry.host(), &config, None);
    let err = anonymous
        .head_blob("kiln/app", &Digest::of_bytes(b"x"))
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains(&registry.host()), "{err}");
    assert!(err.to_string().contains("kiln login"), "{err}");

    // Wrong password through the library: a clear error naming the registry, no password.
    let wrong = Client::new(&registry.host(), &config, basic(WRONG_PASSWORD));
    let err = wrong
        .head_blob("kiln/app", &Digest::of_bytes(b"x"))
        .unwrap_err();
    let shown = format!("{err} {err:?} {wrong:?}");
    assert!(
        shown.contains(&registry.host()) && shown.contains("kiln/app"),
        "{shown}"
    );
    assert!(shown.contains("refused"), "{shown}");
    assert!(!shown.contains(WRONG_PASSWORD), "{shown}");

    // Wrong password through `kiln login`: fails, saves nothing, never prints the password.
    let output = kiln_with_stdin(
        docker_dir.path(),
        &["login", "-u", USER, "--password-stdin", &registry.host()],
        &format!("{WRONG_PASSWORD}\n"),
    );
    let text = all_output(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains(&registry.host()), "{text}");
    assert!(!text.contains(WRONG_PASSWORD), "{text}");
    assert!(!docker_dir.path().join("config.json").exists());

    // Right password: saved in auths, never printed.
    let output = kiln_with_stdin(
        docker_dir.path(),
        &["login", "-u", USER, "--password-stdin", &registry.host()],
        &format!("{PASSWORD}\n"),
    );
    let text = all_output(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("Login Succeeded"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(docker_dir.path().join("config.json")).unwrap())
            .unwrap();
    assert!(
        saved["auths"][registry.host()]["auth"].is_string(),
        "{saved}"
    );

    // The saved credentials push and pull.
    let image_ref: ImageRef = format!("{}/kiln/app:latest", registry.host())
        .parse()
        .unwrap();
    let client =
        Client::for_reference(&image_ref, &config, &DockerConfig::at(docker_dir.path())).unwrap();
    assert!(!format!("{client:?}").contains(PASSWORD));
    push_and_fetch(&client, image_ref.repository());
    assert!(
        !registry.log().contains(PASSWORD),
        "the registry log holds the password"
    );

    // Logout removes them.
    let output = kiln_with_stdin(docker_dir.path(), &["logout", &registry.host()], "");
    assert!(output.status.success(), "{}", all_output(&output));
    assert_eq!(
        DockerConfig::at(docker_dir.path())
            .lookup(&registry.host())
            .unwrap(),
        None
    );
}

#[test]
fn bearer_tokens_from_the_issuer_pass_the_registrys_own_verification() {
    let issuer = TokenIssuer::start(USER, PASSWORD);
    let registry = Registry::start(RegistryAuth::Token(issuer.settings.clone()));
    let config = RegistryConfig::default();

    let client = Client::new(&registry.host(), &config, basic(PASSWORD));
    client.ping().unwrap();
    push_and_fetch(&client, "kiln/bearer");
    let scopes = issuer.scopes_seen.lock().unwrap().clone();
    assert!(
        scopes
            .iter()
            .any(|s| s == &vec!["repository:kiln/bearer:pull,push".to_string()]),
        "{scopes:?}"
    );

    // skopeo, with the same credentials, sees what kiln pushed.
    let inspect = registry_support::skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &format!("{USER}:{PASSWORD}"),
        "--format",
        "{{.Digest}}",
        &format!("docker://{}/kiln/bearer:latest", registry.host()),
    ]);
    let fetched = client.get_manifest("kiln/bearer", "latest").unwrap();
    assert_eq!(inspect.trim(), fetched.digest.to_string());

    // Wrong password: the token endpoint refuses, the error names the registry.
    let wrong = Client::new(&registry.host(), &config, basic(WRONG_PASSWORD));
    let err = wrong.get_manifest("kiln/bearer", "latest").unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains(&registry.host()), "{shown}");
    assert!(!shown.contains(WRONG_PASSWORD), "{shown}");
    let anonymous = Client::new(&registry.host(), &config, None);
    assert!(anonymous.get_manifest("kiln/bearer", "latest").is_err());

    // `kiln login` checks against the token endpoint too.
    let docker_dir = tempfile::tempdir().unwrap();
    let output = kiln_with_stdin(
        docker_dir.path(),
        &["login", "-u", USER, "--password-stdin", &registry.host()],
        WRONG_PASSWORD,
    );
    assert!(!output.status.success());
    assert!(!all_output(&output).contains(WRONG_PASSWORD));
    let output = kiln_with_stdin(
        docker_dir.path(),
        &["login", "-u", USER, "--password-stdin", &registry.host()],
        PASSWORD,
    );
    assert!(output.status.success(), "{}", all_output(&output));
    assert!(!all_output(&output).contains(PASSWORD));
}

#[test]
fn a_refused_token_is_refreshed_a_failed_request_retried_and_an_expired_one_renewed() {
    let issuer = TokenIssuer::start(USER, PASSWORD);
    let registry = Registry::start(RegistryAuth::Token(issuer.settings.clone()));
    let config = RegistryConfig::default();
    let seed = Client::new(&registry.host(), &config, basic(PASSWORD));
    push_and_fetch(&seed, "kiln/refresh");

    // The next token grants nothing: the registry answers 401 with it, the client gets another.
    *issuer.mode.lock().unwrap() = IssuerMode::NextTokenEmpty;
    let client = Client::new(&registry.host(), &config, basic(PASSWORD));
    let before = issuer.n_token_requests.load(Ordering::SeqCst);
    client.get_manifest("kiln/refresh", "latest").unwrap();
    let after = issuer.n_token_requests.load(Ordering::SeqCst);
    assert!(after >= before + 2, "tokens fetched: {}", after - before);

    // A token endpoint that fails once (503) is asked again.
    *issuer.mode.lock().unwrap() = IssuerMode::NextRequestFails;
    let client = Client::new(&registry.host(), &config, basic(PASSWORD));
    let before = issuer.n_token_requests.load(Ordering::SeqCst);
    client.get_manifest("kiln/refresh", "latest").unwrap();
    assert_eq!(issuer.n_token_requests.load(Ordering::SeqCst), before + 2);

    // Tokens that live 1 s are renewed before use once they expire.
    *issuer.expires_in.lock().unwrap() = 1;
    let client = Client::new(&registry.host(), &config, basic(PASSWORD));
    client.get_manifest("kiln/refresh", "latest").unwrap();
    client.get_manifest("kiln/refresh", "latest").unwrap();
    let first = issuer.n_token_requests.load(Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    client.get_manifest("kiln/refresh", "latest").unwrap();
    assert_eq!(issuer.n_token_requests.load(Ordering::SeqCst), first + 1);
}

#[test]
fn a_mount_asks_for_pull_on_the_source_and_the_registry_mounts() {
    let issuer = TokenIssuer::start(USER, PASSWORD);
    let registry = Registry::start(RegistryAuth::Token(issuer.settings.clone()));
    let client = Client::new(
        &registry.host(),
        &RegistryConfig::default(),
        basic(PASSWORD),
    );
    let blob = b"shared layer bytes".repeat(10_000);
    let digest = Digest::of_bytes(&blob);
    assert_eq!(
        client
            .push_blob("kiln/base", &digest, blob.len() as u64, &blob, None)
            .unwrap(),
        PushOutcome::Uploaded
    );
    assert_eq!(
        client
            .push_blob(
                "kiln/derived",
                &digest,
                blob.len() as u64,
                &blob,
                Some("kiln/base")
            )
            .unwrap(),
        PushOutcome::Mounted
    );
    let scopes = issuer.scopes_seen.lock().unwrap().clone();
    assert!(
        scopes.iter().any(|s| s
            == &vec![
                "repository:kiln/derived:pull,push".to_string(),
                "repository:kiln/base:pull".to_string()
            ]),
        "{scopes:?}"
    );
    let mut out = Vec::new();
    client
        .get_blob("kiln/derived", &digest, None, &mut out)
        .unwrap();
    assert_eq!(out, blob);
}
