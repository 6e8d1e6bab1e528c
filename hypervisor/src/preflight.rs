//! Checks made before anything is spawned, so that bad input fails with an
//! error naming the configuration key and leaves nothing behind.

use crate::Error;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Offset of the "HdrS" magic in a bzImage (Linux boot protocol, header field
/// `header` at 0x202).
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;

pub fn check_kernel(path: &Path) -> Result<(), Error> {
    let head = read_head(path, "hypervisor.kernel", BZIMAGE_MAGIC_OFFSET + 4)?;
    let is_elf = head.starts_with(b"\x7fELF");
    let is_bzimage = head.get(BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4) == Some(b"HdrS");
    if !is_elf && !is_bzimage {
        return Err(artifact(
            "hypervisor.kernel",
            path,
            "neither an ELF vmlinux nor a bzImage",
        ));
    }
    Ok(())
}

pub fn check_initrd(path: &Path) -> Result<(), Error> {
    let head = read_head(path, "hypervisor.initrd", 1)?;
    if head.is_empty() {
        return Err(artifact("hypervisor.initrd", path, "file is empty"));
    }
    Ok(())
}

pub fn check_executable(key: &'static str, path: &Path) -> Result<(), Error> {
    let meta = std::fs::metadata(path).map_err(io(key, path))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(artifact(key, path, "not an executable file"));
    }
    Ok(())
}

pub fn check_shared_dir(path: &Path) -> Result<(), Error> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::InvalidSpec {
            field: "shared_dir",
            message: format!("{} is not a directory", path.display()),
        }),
        Err(e) => Err(Error::InvalidSpec {
            field: "shared_dir",
            message: format!("{}: {e}", path.display()),
        }),
    }
}

/// VM ids become directory and process names: keep them to a safe alphabet.
pub fn check_vm_id(id: &str) -> Result<(), Error> {
    if husk_proto::is_safe_id(id, 64) {
        Ok(())
    } else {
        Err(Error::InvalidSpec {
            field: "id",
            message: format!(
                "{id:?} must be 1-64 characters of [A-Za-z0-9_.-], not starting with '.'"
            ),
        })
    }
}

/// Reads up to `len` bytes from the start of a regular file.
fn read_head(path: &Path, key: &'static str, len: usize) -> Result<Vec<u8>, Error> {
    let meta = std::fs::metadata(path).map_err(io(key, path))?;
    if !meta.is_file() {
        return Err(artifact(key, path, "not a regular file"));
    }
    let file = std::fs::File::open(path).map_err(io(key, path))?;
    let mut head = Vec::with_capacity(len);
    file.take(len as u64)
        .read_to_end(&mut head)
        .map_err(io(key, path))?;
    Ok(head)
}

fn artifact(key: &'static str, path: &Path, problem: &'static str) -> Error {
    Error::Artifact {
        key,
        path: path.to_owned(),
        problem,
    }
}

fn io<'a>(key: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> Error + 'a {
    move |source| Error::ArtifactIo {
        key,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kernel_names_key_and_path() {
        let err = check_kernel(Path::new("/nonexistent/vmlinux")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("hypervisor.kernel: /nonexistent/vmlinux"),
            "{msg}"
        );
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[test]
    fn kernel_must_be_elf_or_bzimage() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, b"hello, not a kernel").unwrap();
        assert!(check_kernel(&text)
            .unwrap_err()
            .to_string()
            .contains("neither an ELF"));

        let elf = dir.path().join("vmlinux");
        std::fs::write(&elf, b"\x7fELF\x02\x01\x01").unwrap();
        check_kernel(&elf).unwrap();

        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bzimage = dir.path().join("bzImage");
        std::fs::write(&bzimage, &bz).unwrap();
        check_kernel(&bzimage).unwrap();
    }

    #[test]
    fn directory_or_empty_initrd_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_initrd(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("hypervisor.initrd") && err.contains("not a regular file"),
            "{err}"
        );
        let empty = dir.path().join("empty.cpio");
        std::fs::write(&empty, b"").unwrap();
        assert!(check_initrd(&empty)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn non_executable_helper_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("qemu");
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        let err = check_executable("hypervisor.qemu_path", &f)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hypervisor.qemu_path") && err.contains("not an executable"),
            "{err}"
        );
    }

    #[test]
    fn vm_ids_are_restricted() {
        check_vm_id("pod-1_a.b").unwrap();
        for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_vm_id(bad).is_err(), "{bad:?}");
        }
    }
}
