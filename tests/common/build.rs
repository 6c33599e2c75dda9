//! Support for the `kiln build` integration tests: a store with the busybox base, contexts
//! written from a list, builds with plain progress, and reading the built image back.

use super::{kiln, require_root, run_ok};
use std::path::Path;

/// A store with the busybox rootfs imported as `base:1`.
pub fn store_with_base() -> tempfile::TempDir {
    require_root();
    let root = super::temp_root();
    run_ok(
        kiln(root.path())
            .arg("import")
            .arg(super::busybox_rootfs_tar())
            .arg("base:1"),
    );
    root
}

/// A context directory with `files` (path, contents).
pub fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, contents) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    dir
}

pub fn build(root: &Path, context: &Path, extra: &[&str]) -> std::process::Output {
    run_ok(
        kiln(root)
            .arg("build")
            .arg("--progress=plain")
            .args(extra)
            .arg(context),
    )
}

pub fn image(root: &Path, name: &str) -> kiln::store::Image {
    let store = kiln::store::Store::open(root).unwrap();
    store.resolve(name).unwrap()
}

/// The image's layers applied in order into a fresh directory.
pub fn flatten(root: &Path, name: &str) -> tempfile::TempDir {
    let store = kiln::store::Store::open(root).unwrap();
    let image = store.resolve(name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for digest in image.layer_digests().unwrap() {
        let reader = store.read_layer_uncompressed(&digest).unwrap();
        kiln::layer::apply_layer(reader, dir.path(), kiln::layer::WhiteoutMode::Delete).unwrap();
    }
    dir
}

pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}
