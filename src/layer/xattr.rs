//! Extended attributes of a path without following a final symlink (`llistxattr`,
//! `lgetxattr`, `lsetxattr`).
//!
//! Hand-written over `libc` because nix 0.29 has no xattr calls and the project has no xattr
//! crate; these are three thin, retrying wrappers. Callers pass a path whose parent part is
//! already safe (for apply: `/proc/self/fd/<dirfd>/<name>`).

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(crate) fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Names of all xattrs of `path` (not following a final symlink), sorted.
pub(crate) fn list(path: &CStr) -> io::Result<Vec<Vec<u8>>> {
    loop {
        let size = unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENOTSUP) {
                return Ok(Vec::new());
            }
            return Err(error);
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buffer = vec![0u8; size as usize];
        let got =
            unsafe { libc::llistxattr(path.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if got < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ERANGE) {
                continue; // grew between the two calls
            }
            return Err(error);
        }
        buffer.truncate(got as usize);
        let mut names: Vec<Vec<u8>> = buffer
            .split(|b| *b == 0)
            .filter(|name| !name.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        names.sort();
        return Ok(names);
    }
}

/// The value of xattr `name` of `path`, or `None` if it is not set.
pub(crate) fn get(path: &CStr, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    loop {
        let size =
            unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
                _ => Err(error),
            };
        }
        let mut buffer = vec![0u8; size as usize];
        let got = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        if got < 0 {
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::ERANGE) => continue,
                Some(libc::ENODATA) => return Ok(None),
                _ => return Err(error),
            }
        }
        buffer.truncate(got as usize);
        return Ok(Some(buffer));
    }
}

/// Sets xattr `name` of `path` (not following a final symlink).
pub(crate) fn set(path: &CStr, name: &[u8], value: &[u8]) -> io::Result<()> {
    let name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    let result = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_list_get_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let path = c_path(&file).unwrap();
        set(&path, b"user.kiln.b", b"2").unwrap();
        set(&path, b"user.kiln.a", b"1\0binary").unwrap();
        let names = list(&path).unwrap();
        let kiln: Vec<_> = names
            .iter()
            .filter(|n| n.starts_with(b"user.kiln."))
            .collect();
        assert_eq!(
            kiln,
            vec![&b"user.kiln.a".to_vec(), &b"user.kiln.b".to_vec()]
        );
        assert_eq!(get(&path, b"user.kiln.a").unwrap().unwrap(), b"1\0binary");
        assert_eq!(get(&path, b"user.kiln.none").unwrap(), None);
    }
}
