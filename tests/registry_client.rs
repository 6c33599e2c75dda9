//! The registry client against a real Distribution registry (no auth): push and fetch back,
//! agreement with skopeo in both directions, platform choice from an index, mounts, parallel
//! transfers.

mod common;
mod registry_support;

use kiln::digest::Digest;
use kiln::registry::platform::{self, Platform};
use kiln::registry::transfer::{self, BlobDownload, BlobUpload};
use kiln::registry::{Client, MountOutcome, PushOutcome, RegistryConfig};
use registry_support::{Registry, RegistryAuth};

fn client(registry: &Registry) -> Client {
    Client::new(&registry.host(), &RegistryConfig::default(), None)
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) as u8
        })
        .collect()
}

/// A config and a manifest for `layers` (OCI media types).
fn manifest_for(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|layer| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": Digest::of_bytes(layer).to_string(),
                "size": layer.len(),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": kiln::registry::MEDIA_TYPE_OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Digest::of_bytes(config).to_string(),
            "size": config.len(),
        },
        "layers": layers,
    }))
    .unwrap()
}

fn config_json(architecture: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap()
}

#[test]
fn pushed_blobs_and_manifest_come_back_with_equal_digests_and_skopeo_agrees() {
    let registry = Registry::start(RegistryAuth::None);
    let client = client(&registry);
    client.ping().unwrap();
    let repository = "kiln/roundtrip";

    let config = config_json("amd64");
    let big_layer = pseudo_random(3 * 1024 * 1024 + 17, 1);
    let small_layer = pseudo_random(1000, 2);
    let config_digest = Digest::of_bytes(&config);
    let big_digest = Digest::of_bytes(&big_layer);
    let small_digest = Digest::of_bytes(&small_layer);

    assert_eq!(client.head_blob(repository, &big_digest).unwrap(), None);
    // Monolithic for the config, chunked (4 PATCHes) for the big layer, push_blob for the small.
    client
        .upload_blob(repository, &config_digest, config.len() as u64, &config)
        .unwrap();
    client
        .upload_blob_chunked(repository, &big_digest, &big_layer, 1024 * 1024)
        .unwrap();
    assert_eq!(
        client
            .push_blob(
                repository,
                &small_digest,
                small_layer.len() as u64,
                &small_layer,
                None
            )
            .unwrap(),
        PushOutcome::Uploaded
    );
    assert_eq!(
        client
            .push_blob(
                repository,
                &small_digest,
                small_layer.len() as u64,
                &small_layer,
                None
            )
            .unwrap(),
        PushOutcome::AlreadyPresent,
        "a second push of the same blob is skipped after HEAD"
    );
    assert_eq!(
        client.head_blob(repository, &big_digest).unwrap(),
        Some(big_layer.len() as u64)
    );

    let manifest = manifest_for(&config, &[&big_layer, &small_layer]);
    let pushed_digest = client
        .put_manifest(
            repository,
            "v1",
            kiln::registry::MEDIA_TYPE_OCI_MANIFEST,
            &manifest,
        )
        .unwrap();
    assert_eq!(pushed_digest, Digest::of_bytes(&manifest));

    let by_tag = client.get_manifest(repository, "v1").unwrap();
    assert_eq!(by_tag.bytes, manifest);
    assert_eq!(by_tag.digest, pushed_digest);
    assert_eq!(by_tag.media_type, kiln::registry::MEDIA_TYPE_OCI_MANIFEST);
    let by_digest = client
        .get_manifest(repository, &pushed_digest.to_string())
        .unwrap();
    assert_eq!(by_digest.digest, pushed_digest);
    let head = client.head_manifest(repository, "v1").unwrap().unwrap();
    assert_eq!(head.digest, pushed_digest);
    assert_eq!(client.head_manifest(repository, "nope").unwrap(), None);

    for (digest, bytes) in [(&big_digest, &big_layer), (&small_digest, &small_layer)] {
        let mut out = Vec::new();
        let n = client
            .get_blob(repository, digest, Some(bytes.len() as u64), &mut out)
            .unwrap();
        assert_eq!(n, bytes.len() as u64);
        assert_eq!(&Digest::of_bytes(&out), digest);
    }

    let inspect = registry_support::skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{}/{repository}:v1", registry.host()),
    ]);
    assert_eq!(Digest::of_bytes(inspect.as_bytes()), pushed_digest);
    let inspect = registry_support::skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{}/{repository}:v1", registry.host()),
    ]);
    assert_eq!(inspect.trim(), pushed_digest.to_string());

    let missing = Digest::of_bytes(b"never pushed");
    let err = client
        .get_blob(repository, &missing, None, &mut Vec::new())
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&registry.host())
            && message.contains(repository)
            && message.contains("not found"),
        "{message}"
    );
}

#[test]
fn an_image_skopeo_pushed_is_fetched_and_its_blobs_verify() {
    let registry = Registry::start(RegistryAuth::None);
    let layout = tempfile::tempdir().unwrap();
    let (manifest_digest, blob_digests) =
        registry_support::write_busybox_oci_layout(layout.path(), &common::busybox_rootfs_tar());
    let target = format!("docker://{}/skopeo/busybox:v1", registry.host());
    registry_support::skopeo(&[
        "copy",
        "--insecure-policy",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", layout.path().display()),
        &target,
    ]);

    let client = client(&registry);
    let resolved =
        platform::fetch_image_manifest(&client, "skopeo/busybox", "v1", &Platform::host()).unwrap();
    assert!(resolved.index.is_none());
    assert_eq!(resolved.manifest.digest.to_string(), manifest_digest);

    let manifest: serde_json::Value = serde_json::from_slice(&resolved.manifest.bytes).unwrap();
    let mut descriptors = vec![manifest["config"].clone()];
    descriptors.extend(manifest["layers"].as_array().unwrap().iter().cloned());
    let downloads: Vec<BlobDownload<tempfile::NamedTempFile>> = descriptors
        .iter()
        .map(|d| BlobDownload {
            digest: d["digest"].as_str().unwrap().parse().unwrap(),
            size: d["size"].as_u64(),
            writer: tempfile::NamedTempFile::new().unwrap(),
        })
        .collect();
    let files = transfer::all_ok(
        transfer::download_blobs(&client, "skopeo/busybox", downloads, 4).unwrap(),
    )
    .unwrap();
    assert_eq!(files.len(), 2);
    for (file, expected) in files.iter().zip(&blob_digests) {
        let bytes = std::fs::read(file.path()).unwrap();
        assert_eq!(&Digest::of_bytes(&bytes).to_string(), expected);
    }
}

#[test]
fn the_host_platform_is_chosen_from_an_index() {
    let registry = Registry::start(RegistryAuth::None);
    let client = client(&registry);
    let repository = "kiln/multi";
    let host = Platform::host();
    let other_architecture = if host.architecture == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let mut entries = Vec::new();
    let mut host_manifest_digest = None;
    for architecture in [other_architecture, host.architecture.as_str()] {
        let config = config_json(architecture);
        let layer = pseudo_random(100, architecture.len() as u64);
        for blob in [&config, &layer] {
            client
                .upload_blob(repository, &Digest::of_bytes(blob), blob.len() as u64, blob)
                .unwrap();
        }
        let manifest = manifest_for(&config, &[&layer]);
        let digest = Digest::of_bytes(&manifest);
        client
            .put_manifest(
                repository,
                &digest.to_string(),
                kiln::registry::MEDIA_TYPE_OCI_MANIFEST,
                &manifest,
            )
            .unwrap();
        if architecture == host.architecture {
            host_manifest_digest = Some(digest.clone());
        }
        entries.push(serde_json::json!({
            "mediaType": kiln::registry::MEDIA_TYPE_OCI_MANIFEST,
            "digest": digest.to_string(),
            "size": manifest.len(),
            "platform": {"os": "linux", "architecture": architecture},
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": kiln::registry::MEDIA_TYPE_OCI_INDEX,
        "manifests": entries,
    }))
    .unwrap();
    let index_digest = client
        .put_manifest(
            repository,
            "multi",
            kiln::registry::MEDIA_TYPE_OCI_INDEX,
            &index,
        )
        .unwrap();
    let resolved = platform::fetch_image_manifest(&client, repository, "multi", &host).unwrap();
    assert_eq!(resolved.index.as_ref().unwrap().digest, index_digest);
    assert_eq!(Some(resolved.manifest.digest), host_manifest_digest);

    let err = platform::fetch_image_manifest(
        &client,
        repository,
        "multi",
        &"linux/s390x".parse().unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("linux/s390x"), "{err}");
}

#[test]
fn blobs_mount_across_repositories_and_upload_in_parallel() {
    let registry = Registry::start(RegistryAuth::None);
    let client = client(&registry);
    let blobs: Vec<Vec<u8>> = (0..6)
        .map(|i| pseudo_random(200_000 + i, i as u64 + 10))
        .collect();
    let uploads = blobs
        .iter()
        .map(|blob| BlobUpload {
            digest: Digest::of_bytes(blob),
            size: blob.len() as u64,
            source: Box::new(blob.clone()),
            mount_from: None,
        })
        .collect();
    let outcomes =
        transfer::all_ok(transfer::upload_blobs(&client, "kiln/source", uploads, 3).unwrap())
            .unwrap();
    assert!(
        outcomes.iter().all(|o| *o == PushOutcome::Uploaded),
        "{outcomes:?}"
    );

    let first = Digest::of_bytes(&blobs[0]);
    assert_eq!(
        client
            .mount_blob("kiln/target", &first, "kiln/source")
            .unwrap(),
        MountOutcome::Mounted
    );
    assert!(client.head_blob("kiln/target", &first).unwrap().is_some());
    let mounts = blobs[1..]
        .iter()
        .map(|blob| BlobUpload {
            digest: Digest::of_bytes(blob),
            size: blob.len() as u64,
            source: Box::new(blob.clone()),
            mount_from: Some("kiln/source".to_string()),
        })
        .collect();
    let outcomes =
        transfer::all_ok(transfer::upload_blobs(&client, "kiln/target", mounts, 3).unwrap())
            .unwrap();
    assert!(
        outcomes.iter().all(|o| *o == PushOutcome::Mounted),
        "{outcomes:?}"
    );

    // A mount from a repository without the blob falls back to an upload.
    let fresh = pseudo_random(5000, 99);
    let fresh_digest = Digest::of_bytes(&fresh);
    assert!(matches!(
        client
            .mount_blob("kiln/target", &fresh_digest, "kiln/source")
            .unwrap(),
        MountOutcome::UploadStarted { .. }
    ));
    assert_eq!(
        client
            .push_blob(
                "kiln/target",
                &fresh_digest,
                fresh.len() as u64,
                &fresh,
                Some("kiln/source")
            )
            .unwrap(),
        PushOutcome::Uploaded
    );
    let mut out = Vec::new();
    client
        .get_blob("kiln/target", &fresh_digest, None, &mut out)
        .unwrap();
    assert_eq!(out, fresh);
}
