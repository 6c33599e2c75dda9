//! Network faults: a server that serves wrong bytes, 5xx answers, connections cut midway, a
//! server that never answers, and a real registry stopped in the middle of a push.

mod common;
mod registry_support;

use kiln::digest::Digest;
use kiln::registry::client::FnSource;
use kiln::registry::transfer::{self, BlobDownload};
use kiln::registry::{Client, PushOutcome, RegistryConfig, RegistryError};
use registry_support::{HttpResponse, HttpServer, Registry, RegistryAuth};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn quick_config() -> RegistryConfig {
    RegistryConfig {
        attempts: 3,
        backoff: Duration::from_millis(50),
        ..RegistryConfig::default()
    }
}

const GOOD: &[u8] = b"the bytes the digest was computed from";
const EVIL: &[u8] = b"some other bytes of exactly equal size";

#[test]
fn a_blob_or_manifest_served_with_wrong_bytes_is_refused() {
    assert_eq!(GOOD.len(), EVIL.len(), "same length");
    let good_digest = Digest::of_bytes(GOOD);
    let served = good_digest.to_string();
    let server = HttpServer::start(move |request| {
        if request.path == "/v2/" {
            HttpResponse::new(200, "{}")
        } else if request.path == format!("/v2/lie/blobs/{served}") {
            HttpResponse::new(200, EVIL)
        } else if request.path == format!("/v2/long/blobs/{served}") {
            HttpResponse::new(200, [GOOD, b"trailing"].concat())
        } else if request.path == format!("/v2/lie/manifests/{served}") {
            HttpResponse::new(200, r#"{"schemaVersion":2,"layers":[]}"#)
                .header("Content-Type", kiln::registry::MEDIA_TYPE_OCI_MANIFEST)
        } else {
            HttpResponse::new(404, r#"{"errors":[{"code":"NOT_FOUND","message":"no"}]}"#)
        }
    });
    let client = Client::new(&server.host(), &quick_config(), None);

    let err = client
        .get_blob(
            "lie",
            &good_digest,
            Some(GOOD.len() as u64),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&server.host()) && message.contains("refused"),
        "{message}"
    );

    // Through the parallel helper into a temp file: the error comes back and the temp file,
    // dropped with it, is gone.
    let temp = tempfile::NamedTempFile::new().unwrap();
    let temp_path = temp.path().to_path_buf();
    let results = transfer::download_blobs(
        &client,
        "lie",
        vec![BlobDownload {
            digest: good_digest.clone(),
            size: None,
            writer: temp,
        }],
        2,
    )
    .unwrap();
    assert!(matches!(
        results[0],
        Err(RegistryError::DigestMismatch { .. })
    ));
    drop(results);
    assert!(!temp_path.exists(), "the refused blob's temp file was kept");

    let err = client
        .get_blob(
            "long",
            &good_digest,
            Some(GOOD.len() as u64),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err:?}");

    let err = client
        .get_manifest("lie", &good_digest.to_string())
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let n_requests = Arc::new(AtomicUsize::new(0));
    let served = Digest::of_bytes(GOOD).to_string();
    let counter = Arc::clone(&n_requests);
    let server = HttpServer::start(move |request| {
        if request.path == format!("/v2/flaky/blobs/{served}") {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            if n < 2 {
                return HttpResponse::new(503, "busy");
            }
            return HttpResponse::new(200, GOOD);
        }
        if request.path == format!("/v2/down/blobs/{served}") {
            counter.fetch_add(1, Ordering::SeqCst);
            return HttpResponse::new(503, "down for good");
        }
        HttpResponse::new(404, "")
    });
    let client = Client::new(&server.host(), &quick_config(), None);
    let mut out = Vec::new();
    client
        .get_blob("flaky", &Digest::of_bytes(GOOD), None, &mut out)
        .unwrap();
    assert_eq!(out, GOOD);
    assert_eq!(n_requests.load(Ordering::SeqCst), 3);

    n_requests.store(0, Ordering::SeqCst);
    let err = client
        .get_blob("down", &Digest::of_bytes(GOOD), None, &mut Vec::new())
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Http { status: 503, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&server.host()), "{err}");
    assert_eq!(n_requests.load(Ordering::SeqCst), 3, "attempts are bounded");
}

#[test]
fn a_download_cut_midway_resumes_with_a_range_request() {
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of_bytes(&blob);
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let (served, seen, body) = (digest.to_string(), Arc::clone(&ranges), blob.clone());
    let server = HttpServer::start(move |request| {
        if request.path != format!("/v2/cut/blobs/{served}") {
            return HttpResponse::new(404, "");
        }
        let range = request.header("range").map(str::to_string);
        seen.lock().unwrap().push(range.clone());
        match range {
            None => HttpResponse::new(200, body.clone()).cut_after(70_000),
            Some(range) => {
                let start: usize = range
                    .trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse()
                    .unwrap();
                HttpResponse::new(206, body[start..].to_vec()).header(
                    "Content-Range",
                    &format!("bytes {start}-{}/{}", body.len() - 1, body.len()),
                )
            }
        }
    });
    let client = Client::new(&server.host(), &quick_config(), None);
    let mut out = Vec::new();
    client
        .get_blob("cut", &digest, Some(blob.len() as u64), &mut out)
        .unwrap();
    assert_eq!(out, blob);
    let ranges = ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(
        ranges[1].as_deref().unwrap().starts_with("bytes="),
        "{ranges:?}"
    );
}

#[test]
fn a_server_that_never_answers_times_out() {
    let server = HttpServer::start(|_| {
        std::thread::sleep(Duration::from_secs(20));
        HttpResponse::new(200, "{}")
    });
    let config = RegistryConfig {
        attempts: 2,
        backoff: Duration::from_millis(10),
        io_timeout: Duration::from_millis(500),
        ..RegistryConfig::default()
    };
    let client = Client::new(&server.host(), &config, None);
    let started = Instant::now();
    let err = client.ping().unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, RegistryError::Unreachable { attempts: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&server.host()), "{err}");
}

/// Reads `data`, stopping the registry once `stop_after` bytes have gone out (first open only).
fn stopping_reader(
    data: Arc<Vec<u8>>,
    registry: Arc<Mutex<Registry>>,
    stopped: Arc<AtomicBool>,
    stop_after: usize,
) -> Box<dyn Read + Send> {
    struct Stopping {
        data: Arc<Vec<u8>>,
        offset: usize,
        registry: Arc<Mutex<Registry>>,
        stopped: Arc<AtomicBool>,
        stop_after: usize,
    }
    impl Read for Stopping {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.offset >= self.stop_after && !self.stopped.swap(true, Ordering::SeqCst) {
                self.registry.lock().unwrap().stop();
            }
            let n = buf.len().min(self.data.len() - self.offset).min(64 * 1024);
            buf[..n].copy_from_slice(&self.data[self.offset..self.offset + n]);
            self.offset += n;
            Ok(n)
        }
    }
    Box::new(Stopping {
        data,
        offset: 0,
        registry,
        stopped,
        stop_after,
    })
}

#[test]
fn a_registry_stopped_mid_push_gives_a_clear_error_and_a_retry_succeeds() {
    let registry = Arc::new(Mutex::new(Registry::start(RegistryAuth::None)));
    let host = registry.lock().unwrap().host();
    let client = Client::new(&host, &quick_config(), None);
    let data: Arc<Vec<u8>> = Arc::new(
        (0..8 * 1024 * 1024u32)
            .map(|i| (i * 7 % 253) as u8)
            .collect(),
    );
    let digest = Digest::of_bytes(&data);
    let stopped = Arc::new(AtomicBool::new(false));
    let source = {
        let (data, registry, stopped) = (
            Arc::clone(&data),
            Arc::clone(&registry),
            Arc::clone(&stopped),
        );
        FnSource(move || {
            Ok(stopping_reader(
                Arc::clone(&data),
                Arc::clone(&registry),
                Arc::clone(&stopped),
                1024 * 1024,
            ))
        })
    };
    let err = client
        .push_blob("kiln/big", &digest, data.len() as u64, &source, None)
        .unwrap_err();
    assert!(
        stopped.load(Ordering::SeqCst),
        "the registry was never stopped"
    );
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    let message = err.to_string();
    eprintln!("push error: {message}");
    assert!(
        message.contains(&host) && message.contains("unreachable"),
        "{message}"
    );

    registry.lock().unwrap().restart();
    assert_eq!(
        client
            .push_blob("kiln/big", &digest, data.len() as u64, &source, None)
            .unwrap(),
        PushOutcome::Uploaded
    );
    let mut out = Vec::new();
    client
        .get_blob("kiln/big", &digest, Some(data.len() as u64), &mut out)
        .unwrap();
    assert_eq!(Digest::of_bytes(&out), digest);
}
