//! Test support for the registry client: a real Distribution registry (Debian's
//! `docker-registry`) on a free 127.0.0.1 port with filesystem storage in a temp dir, with no
//! auth, htpasswd Basic auth, or token auth backed by a token issuer running in the test
//! process; a tiny HTTP server for servers that misbehave on purpose; an OCI layout of the
//! busybox rootfs for skopeo to push.
//!
//! All traffic stays on 127.0.0.1. Missing programs fail the test with the package to install.

#![allow(dead_code)]

use base64::Engine as _;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const REGISTRY_PROGRAM: &str = "docker-registry";

fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "{program} is not installed: apt-get install {package} (.ci/run does this)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// How the registry authenticates.
pub enum RegistryAuth {
    None,
    Htpasswd { username: String, password: String },
    Token(TokenSettings),
}

/// What a token-auth registry needs to know about its issuer.
#[derive(Clone)]
pub struct TokenSettings {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub root_cert_bundle: PathBuf,
}

/// A running `docker-registry serve`, killed on drop.
pub struct Registry {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Registry {
    pub fn start(auth: RegistryAuth) -> Registry {
        require(REGISTRY_PROGRAM, "docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("kiln-test-registry-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let auth_yaml = match auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Htpasswd { username, password } => {
                require("htpasswd", "apache2-utils");
                let output = Command::new("htpasswd")
                    .args(["-Bbn", &username, &password])
                    .output()
                    .expect("run htpasswd");
                assert!(output.status.success(), "htpasswd failed");
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, &output.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test-realm\n    path: {}\n",
                    path.display()
                )
            }
            RegistryAuth::Token(settings) => format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                settings.realm,
                settings.service,
                settings.issuer,
                settings.root_cert_bundle.display()
            ),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test-upload-secret\n{auth_yaml}",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let mut registry = Registry {
            port,
            dir,
            child: None,
        };
        registry.restart();
        registry
    }

    /// `127.0.0.1:PORT`, as references name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The registry's own log (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Kills the registry process; its storage stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port and storage, and waits until `/v2/` answers.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .unwrap();
        let child = Command::new(REGISTRY_PROGRAM)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answered = ureq::get(&format!("{}/v2/", self.url()))
                .timeout(Duration::from_secs(2))
                .call();
            match answered {
                Ok(_) | Err(ureq::Error::Status(_, _)) => return,
                Err(_) if Instant::now() < deadline => {
                    if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                        panic!("docker-registry exited with {status}:\n{}", self.log());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => panic!("docker-registry did not answer /v2/: {err}\n{}", self.log()),
            }
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP request as the tiny server saw it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Announce the whole body but send only this many bytes, then close (a connection reset).
    pub cut_after: Option<usize>,
}

impl HttpResponse {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> HttpResponse {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
            cut_after: None,
        }
    }
    pub fn cut_after(mut self, n_bytes: usize) -> HttpResponse {
        self.cut_after = Some(n_bytes);
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> HttpResponse {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

type Handler = dyn Fn(&HttpRequest) -> HttpResponse + Send + Sync;

/// A one-connection-per-request HTTP/1.1 server on 127.0.0.1, one thread per connection. Just
/// enough for a token issuer and for servers that lie; it lives until the test process ends.
pub struct HttpServer {
    pub port: u16,
}

impl HttpServer {
    pub fn start(
        handler: impl Fn(&HttpRequest) -> HttpResponse + Send + Sync + 'static,
    ) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handler: Arc<Handler> = Arc::new(handler);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let handler = Arc::clone(&handler);
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &*handler);
                });
            }
        });
        HttpServer { port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve_one(stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let (path, query_text) = target.split_once('?').unwrap_or((&target, ""));
    let query = query_text
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let request = HttpRequest {
        method: method.clone(),
        path: path.to_string(),
        query,
        headers,
        body,
    };
    let response = handler(&request);
    let mut out = stream;
    let reason = match response.status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", response.status);
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        response.body.len()
    ));
    out.write_all(head.as_bytes())?;
    if method != "HEAD" {
        let n_bytes = response.cut_after.unwrap_or(response.body.len());
        out.write_all(&response.body[..n_bytes.min(response.body.len())])?;
    }
    out.flush()
}

/// How the token issuer behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuerMode {
    /// Grants what is asked to known users.
    Normal,
    /// The next token it issues grants nothing (as a revoked or stale token would), then Normal.
    NextTokenEmpty,
    /// The next request gets a 503, then Normal.
    NextRequestFails,
}

/// A Distribution token issuer in the test process: checks Basic credentials and issues ES256
/// JWTs carrying its certificate in `x5c`; the registry trusts the certificate through
/// `rootcertbundle`.
pub struct TokenIssuer {
    pub server: HttpServer,
    pub settings: TokenSettings,
    pub n_token_requests: Arc<AtomicUsize>,
    pub mode: Arc<Mutex<IssuerMode>>,
    pub expires_in: Arc<Mutex<u64>>,
    pub scopes_seen: Arc<Mutex<Vec<Vec<String>>>>,
    _dir: tempfile::TempDir,
}

fn openssl(args: &[&str]) {
    require("openssl", "openssl");
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenIssuer {
    pub fn start(username: &str, password: &str) -> TokenIssuer {
        let dir = tempfile::Builder::new()
            .prefix("kiln-test-issuer-")
            .tempdir()
            .unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &path("key.pem"),
        ]);
        openssl(&[
            "req",
            "-new",
            "-x509",
            "-key",
            &path("key.pem"),
            "-out",
            &path("cert.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=kiln-test-token-issuer",
        ]);
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &path("key.pem"),
            "-outform",
            "DER",
            "-out",
            &path("key.p8"),
        ]);
        openssl(&[
            "x509",
            "-in",
            &path("cert.pem"),
            "-outform",
            "DER",
            "-out",
            &path("cert.der"),
        ]);
        let pkcs8 = std::fs::read(path("key.p8")).unwrap();
        let cert_der = std::fs::read(path("cert.der")).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let key_pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &rng,
        )
        .expect("load the issuer key");

        let service = "kiln-test-registry".to_string();
        let issuer = "kiln-test-issuer".to_string();
        let n_token_requests = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(Mutex::new(IssuerMode::Normal));
        let expires_in = Arc::new(Mutex::new(300u64));
        let scopes_seen = Arc::new(Mutex::new(Vec::new()));
        let expected_auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        );
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&cert_der)],
        });
        let server = {
            let (service, issuer) = (service.clone(), issuer.clone());
            let (n_token_requests, mode, expires_in, scopes_seen) = (
                Arc::clone(&n_token_requests),
                Arc::clone(&mode),
                Arc::clone(&expires_in),
                Arc::clone(&scopes_seen),
            );
            let username = username.to_string();
            HttpServer::start(move |request| {
                if request.path != "/token" || request.method != "GET" {
                    return HttpResponse::new(404, "not found");
                }
                n_token_requests.fetch_add(1, Ordering::SeqCst);
                {
                    let mut mode = mode.lock().unwrap();
                    if *mode == IssuerMode::NextRequestFails {
                        *mode = IssuerMode::Normal;
                        return HttpResponse::new(503, "try again");
                    }
                }
                if request.header("authorization") != Some(expected_auth.as_str()) {
                    return HttpResponse::new(401, r#"{"details":"bad credentials"}"#)
                        .header("Content-Type", "application/json");
                }
                let scopes: Vec<String> = request
                    .query
                    .iter()
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v.clone())
                    .collect();
                scopes_seen.lock().unwrap().push(scopes.clone());
                let empty = {
                    let mut mode = mode.lock().unwrap();
                    let empty = *mode == IssuerMode::NextTokenEmpty;
                    *mode = IssuerMode::Normal;
                    empty
                };
                let access: Vec<serde_json::Value> = if empty {
                    Vec::new()
                } else {
                    scopes
                        .iter()
                        .filter_map(|scope| {
                            let mut parts = scope.splitn(3, ':');
                            let (kind, name, actions) =
                                (parts.next()?, parts.next()?, parts.next()?);
                            Some(serde_json::json!({
                                "type": kind,
                                "name": name,
                                "actions": actions.split(',').collect::<Vec<_>>(),
                            }))
                        })
                        .collect()
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let lifetime = *expires_in.lock().unwrap();
                let claims = serde_json::json!({
                    "iss": issuer,
                    "sub": username,
                    "aud": service,
                    "exp": now + lifetime.max(1) + 60,
                    "nbf": now - 10,
                    "iat": now,
                    "jti": format!("kiln-{}", n_token_requests.load(Ordering::SeqCst)),
                    "access": access,
                });
                let signing_input = format!(
                    "{}.{}",
                    b64url(header.to_string().as_bytes()),
                    b64url(claims.to_string().as_bytes())
                );
                let signature = key_pair
                    .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
                    .expect("sign token");
                let token = format!("{signing_input}.{}", b64url(signature.as_ref()));
                let body = serde_json::json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": lifetime,
                });
                HttpResponse::new(200, body.to_string()).header("Content-Type", "application/json")
            })
        };
        let settings = TokenSettings {
            realm: format!("{}/token", server.url()),
            service,
            issuer,
            root_cert_bundle: dir.path().join("cert.pem"),
        };
        TokenIssuer {
            server,
            settings,
            n_token_requests,
            mode,
            expires_in,
            scopes_seen,
            _dir: dir,
        }
    }
}

/// An OCI image layout at `dir` holding one image: the busybox rootfs as one gzip layer, tagged
/// `latest`. Returns the manifest's digest and the layer and config digests.
pub fn write_busybox_oci_layout(dir: &Path, busybox_tar: &Path) -> (String, Vec<String>) {
    use sha2::Digest as _;
    let hex = |bytes: &[u8]| hex::encode(sha2::Sha256::digest(bytes));
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> String {
        let digest = hex(bytes);
        std::fs::write(blobs.join(&digest), bytes).unwrap();
        format!("sha256:{digest}")
    };
    let tar = std::fs::read(busybox_tar).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&tar).unwrap();
    let layer = encoder.finish().unwrap();
    let layer_digest = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex(&tar))]},
        "history": [{"created_by": "kiln test"}],
    })
    .to_string();
    let config_digest = put(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    let manifest_digest = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (manifest_digest, vec![config_digest, layer_digest])
}

/// Runs skopeo with the given arguments (TLS verification off, since the registry is plain
/// HTTP on 127.0.0.1) and returns stdout.
pub fn skopeo(args: &[&str]) -> String {
    require("skopeo", "skopeo");
    let output = Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(
        output.status.success(),
        "skopeo {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
