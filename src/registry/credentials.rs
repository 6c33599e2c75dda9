//! Registry credentials: Docker's `config.json` and the [`Secret`] wrapper.
//!
//! Reading follows Docker: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`;
//! `credHelpers` for the registry, then `auths` (base64 `user:password`, or an identity
//! token), then `credsStore`. Helpers (`docker-credential-NAME get`) are run by the
//! `docker_credential` crate. `kiln login` stores through the helper config.json names for the
//! registry (`store`, and `erase` on logout) as Docker does, else in `auths`; config.json is
//! replaced atomically (temp file, fsync, rename), keeping every other key as it was.
//!
//! Passwords and tokens live only inside [`Secret`], whose `Debug` prints `***` and which has no
//! `Display`, so they cannot leak into logs, errors or `{:?}` output by accident.

use super::reference::{DOCKER_HUB, DOCKER_HUB_AUTH_KEY};
use base64::Engine as _;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A password or token. `Debug` prints `***`; read it with [`Secret::expose`] only where it is
/// put on the wire or into config.json.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What to authenticate with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// Username and password (Basic, or Basic to a token endpoint).
    Basic { username: String, password: Secret },
    /// An OAuth2 refresh token (`identitytoken` in config.json).
    IdentityToken(Secret),
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid docker config JSON: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("credentials for {registry} in {path}: {reason}")]
    Lookup {
        registry: String,
        path: PathBuf,
        reason: String,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("credential helper {program} {action} for {registry} failed: {reason}")]
    Helper {
        program: String,
        action: String,
        registry: String,
        reason: String,
    },
    #[error("no docker config directory: neither DOCKER_CONFIG nor HOME is set")]
    NoConfigDir,
}

/// One Docker config directory (the one holding `config.json`).
#[derive(Clone, Debug)]
pub struct DockerConfig {
    dir: PathBuf,
}

impl DockerConfig {
    /// `$DOCKER_CONFIG`, else `$HOME/.docker`.
    pub fn from_env() -> Result<DockerConfig, CredentialError> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Ok(DockerConfig::at(dir));
        }
        match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            Some(home) => Ok(DockerConfig::at(Path::new(&home).join(".docker"))),
            None => Err(CredentialError::NoConfigDir),
        }
    }

    pub fn at(dir: impl Into<PathBuf>) -> DockerConfig {
        DockerConfig { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// The key `registry` has in `auths` (Docker Hub keeps its historical URL).
    pub fn auth_key(registry: &str) -> String {
        if registry == DOCKER_HUB {
            DOCKER_HUB_AUTH_KEY.to_string()
        } else {
            registry.to_string()
        }
    }

    /// The credential configured for `registry` (as references name it), if any. A missing
    /// config file means anonymous.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credential>, CredentialError> {
        use docker_credential::{CredentialRetrievalError as E, DockerCredential};
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CredentialError::Read { path, source }),
        };
        let lookup_error = |reason: &str| CredentialError::Lookup {
            registry: registry.to_string(),
            path: path.clone(),
            reason: reason.to_string(),
        };
        let found =
            docker_credential::get_credential_from_reader(&bytes[..], &Self::auth_key(registry));
        match found {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                Ok(Some(Credential::Basic {
                    username,
                    password: Secret::new(password),
                }))
            }
            Ok(DockerCredential::IdentityToken(token)) => {
                Ok(Some(Credential::IdentityToken(Secret::new(token))))
            }
            Err(E::NoCredentialConfigured) => Ok(None),
            Err(E::ConfigReadError) => Err(CredentialError::Parse {
                path,
                reason: "unreadable JSON".to_string(),
            }),
            // A helper's own output may hold secrets: name the helper, never echo it.
            Err(E::HelperFailure { helper, .. }) => {
                Err(lookup_error(&format!("credential helper {helper} failed")))
            }
            Err(E::HelperCommunicationError) => {
                Err(lookup_error("could not run the credential helper"))
            }
            Err(E::MalformedHelperResponse) => Err(lookup_error(
                "the credential helper answered malformed JSON",
            )),
            Err(E::CredentialDecodingError) => {
                Err(lookup_error("auth is not base64 user:password"))
            }
            Err(E::CredentialMismatchError) => {
                Err(lookup_error("auth does not match username and password"))
            }
            Err(E::ConfigNotFound) => Ok(None),
        }
    }

    /// Stores `username`/`password` for `registry`: through the credential helper config.json
    /// names for it (`credHelpers`, else `credsStore`) as Docker does, else in `auths`. The file
    /// is replaced whole; a plaintext entry that would shadow the helper is dropped.
    pub fn store(
        &self,
        registry: &str,
        username: &str,
        password: &Secret,
    ) -> Result<(), CredentialError> {
        let mut config = self.read_json()?;
        let key = Self::auth_key(registry);
        if let Some(helper) = helper_for(&config, &key) {
            let input = serde_json::json!({
                "ServerURL": key,
                "Username": username,
                "Secret": password.expose(),
            });
            run_helper(&helper, "store", input.to_string().as_bytes(), registry)?;
            if remove_auths_entry(&mut config, &key, registry) {
                self.write_json(&config)?;
            }
            return Ok(());
        }
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{username}:{}", password.expose()));
        let auths = config
            .as_object_mut()
            .expect("read_json returns an object")
            .entry("auths")
            .or_insert_with(|| serde_json::json!({}));
        if !auths.is_object() {
            *auths = serde_json::json!({});
        }
        auths
            .as_object_mut()
            .expect("checked above")
            .insert(key, serde_json::json!({ "auth": auth }));
        self.write_json(&config)
    }

    /// Removes `registry`'s credentials: its `auths` entry (under any of its spellings) and,
    /// when a helper holds them, the helper's copy (`erase`). Returns whether there were any.
    pub fn remove(&self, registry: &str) -> Result<bool, CredentialError> {
        let mut config = self.read_json()?;
        let key = Self::auth_key(registry);
        let mut removed = false;
        if let Some(helper) = helper_for(&config, &key) {
            if self.lookup(registry)?.is_some() {
                run_helper(&helper, "erase", key.as_bytes(), registry)?;
                removed = true;
            }
        }
        if remove_auths_entry(&mut config, &key, registry) {
            self.write_json(&config)?;
            removed = true;
        }
        Ok(removed)
    }

    fn read_json(&self) -> Result<serde_json::Value, CredentialError> {
        let path = self.path();
        let value = match std::fs::read(&path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => serde_json::json!({}),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| CredentialError::Parse {
                path: path.clone(),
                reason: err.to_string(),
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
            Err(source) => return Err(CredentialError::Read { path, source }),
        };
        if !value.is_object() {
            return Err(CredentialError::Parse {
                path,
                reason: "the top level is not an object".to_string(),
            });
        }
        Ok(value)
    }

    /// Writes config.json with mode 0600 through a temp file in the same directory, fsynced and
    /// renamed over the old one, so a crash leaves the old file or the new one, never half.
    fn write_json(&self, config: &serde_json::Value) -> Result<(), CredentialError> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let path = self.path();
        let write_error = |source| CredentialError::Write {
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(write_error)?;
        let mut temp = tempfile::Builder::new()
            .prefix(".config.json.")
            .tempfile_in(&self.dir)
            .map_err(write_error)?;
        let mut text = serde_json::to_vec_pretty(config).expect("JSON value serializes");
        text.push(b'\n');
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(write_error)?;
        temp.write_all(&text).map_err(write_error)?;
        temp.as_file().sync_all().map_err(write_error)?;
        temp.persist(&path).map_err(|err| write_error(err.error))?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// The helper config.json names for `key`: `credHelpers[key]`, else `credsStore`.
fn helper_for(config: &serde_json::Value, key: &str) -> Option<String> {
    let named = |value: Option<&serde_json::Value>| {
        value
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    named(config.get("credHelpers").and_then(|h| h.get(key)))
        .or_else(|| named(config.get("credsStore")))
}

/// Drops `auths` entries for the registry; returns whether there were any.
fn remove_auths_entry(config: &mut serde_json::Value, key: &str, registry: &str) -> bool {
    match config.get_mut("auths").and_then(|a| a.as_object_mut()) {
        Some(auths) => {
            let before = auths.len();
            auths.retain(|name, _| {
                name != key && super::reference::normalize_registry(name) != registry
            });
            before != auths.len()
        }
        None => false,
    }
}

/// Runs `docker-credential-HELPER ACTION` with `input` on stdin. Its output is never shown:
/// helpers may echo what they were given.
fn run_helper(
    helper: &str,
    action: &str,
    input: &[u8],
    registry: &str,
) -> Result<(), CredentialError> {
    use std::process::{Command, Stdio};
    let program = format!("docker-credential-{helper}");
    let helper_error = |reason: String| CredentialError::Helper {
        program: program.clone(),
        action: action.to_string(),
        registry: registry.to_string(),
        reason,
    };
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| helper_error(format!("cannot run it: {err}")))?;
    let written = child.stdin.take().expect("stdin is piped").write_all(input);
    let status = child
        .wait()
        .map_err(|err| helper_error(format!("cannot wait for it: {err}")))?;
    if !status.success() {
        return Err(helper_error(format!("it exited with {status}")));
    }
    written.map_err(|err| helper_error(format!("cannot write to it: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_hides_the_value() {
        let credential = Credential::Basic {
            username: "me".into(),
            password: Secret::new("hunter2"),
        };
        let shown = format!("{credential:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn store_lookup_remove_round_trip_keeps_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let config = DockerConfig::at(dir.path());
        std::fs::write(
            config.path(),
            r#"{"auths":{"other.io":{"auth":"dTpw"}},"psFormat":"x"}"#,
        )
        .unwrap();
        assert_eq!(config.lookup("localhost:5000").unwrap(), None);
        config
            .store(
                "localhost:5000",
                "alice",
                &Secret::new("s3cret:with:colons"),
            )
            .unwrap();
        assert_eq!(
            config.lookup("localhost:5000").unwrap(),
            Some(Credential::Basic {
                username: "alice".into(),
                password: Secret::new("s3cret:with:colons")
            })
        );
        config
            .store("docker.io", "bob", &Secret::new("pw"))
            .unwrap();
        let text = std::fs::read_to_string(config.path()).unwrap();
        assert!(text.contains("https://index.docker.io/v1/"), "{text}");
        assert!(text.contains("psFormat"), "{text}");
        assert!(config.lookup("docker.io").unwrap().is_some());
        assert!(config.remove("localhost:5000").unwrap());
        assert!(!config.remove("localhost:5000").unwrap());
        assert_eq!(config.lookup("localhost:5000").unwrap(), None);
        assert!(config.lookup("other.io").unwrap().is_some());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(config.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn missing_file_is_anonymous_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = DockerConfig::at(dir.path().join("absent"));
        assert_eq!(config.lookup("quay.io").unwrap(), None);
        std::fs::create_dir_all(dir.path().join("absent")).unwrap();
        std::fs::write(config.path(), "{not json").unwrap();
        assert!(config.lookup("quay.io").is_err());
    }
}
