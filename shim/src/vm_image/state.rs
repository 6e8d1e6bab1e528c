//! The VM's firmware and TPM state on a volume (docs/vm-pods.md, "Firmware
//! state and a TPM"): `io.husk.vm.state: PATH` names a directory the
//! container is given read-write (a filesystem PVC), which keeps
//!
//! - [`VARS_FILE`]: the UEFI variable store (boot entries, Secure Boot's
//!   keys, what the guest sets) of a VM booted with `io.husk.vm.firmware:
//!   uefi`, made from OVMF's template at the first start (Secure Boot's,
//!   with Microsoft's keys enrolled, under `io.husk.vm.secure-boot`); QEMU
//!   writes it in place as the VM's second flash;
//! - [`TPM_DIR`]: a TPM 2.0's state, kept by swtpm (Debian's), which
//!   every VM with a state volume gets (Windows 11 asks for one; Linux
//!   seals disk keys and measures boots into one).
//!
//! KubeVirt keeps the same two things on a PVC of its own per VM
//! (`persistent: true` under `efi` and `tpm`). One VM holds a state
//! directory at a time: it is locked as a root disk is ([`DiskLock`]).
//! Another pod with the same volume could have put anything in it, so
//! nothing there is followed: the variable store must be a regular file
//! of the template's size (opened again by the hypervisor without
//! following a link), and swtpm's directory is checked by
//! `husk_hypervisor::swtpm` (regular files only, given to the VM's user).

use super::error::VmError;
use super::volume_path::{container_path, mounted_dir};
use crate::host::disk_lock::{DiskKey, DiskLock};
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const STATE_ANNOTATION: &str = "io.husk.vm.state";
/// The UEFI variable store in the state directory.
pub const VARS_FILE: &str = "OVMF_VARS.fd";
/// swtpm's directory in the state directory.
pub const TPM_DIR: &str = "tpm2";

/// A state directory, for its VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmState {
    /// The directory on the host.
    pub dir: PathBuf,
    /// swtpm's directory in it (made where missing).
    pub tpm: PathBuf,
}

/// The host directory the container's `io.husk.vm.state` names, if any: a
/// directory mounted read-write in the container, or refused.
pub fn state_dir(spec: &Value, annotation: Option<&str>) -> Result<Option<PathBuf>, VmError> {
    let Some(path) = annotation else {
        return Ok(None);
    };
    let path = container_path(STATE_ANNOTATION, path)?;
    match mounted_dir(spec, STATE_ANNOTATION, &path)? {
        Some(host) => Ok(Some(host)),
        None => Err(VmError::Invalid(format!(
            "{STATE_ANNOTATION}: {path:?} is not a directory mounted in the container \
             (a filesystem PVC in volumeMounts)"
        ))),
    }
}

/// Locks the state directory `dir` for `holder` (under `runtime_dir`;
/// the lock is to be held until QEMU is gone) and makes swtpm's directory
/// in it; `swtpm` must be there to keep it.
pub fn prepare(
    dir: &Path,
    swtpm: &Path,
    runtime_dir: &Path,
    holder: &str,
) -> Result<(VmState, DiskLock), VmError> {
    use std::os::unix::fs::PermissionsExt;
    let runnable =
        std::fs::metadata(swtpm).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !runnable {
        return Err(VmError::Invalid(format!(
            "{STATE_ANNOTATION}: a VM with a state volume gets a TPM, and vm.swtpm_path ({}) \
             is not an executable (apt-get install swtpm)",
            swtpm.display()
        )));
    }
    let io = |what: &str, path: &Path| {
        let context = format!("{STATE_ANNOTATION}: {what} {}", path.display());
        move |source| VmError::Io { context, source }
    };
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(io("opening", dir))?;
    let meta = opened.metadata().map_err(io("reading", dir))?;
    let lock = DiskLock::take(runtime_dir, dir, DiskKey::of(&meta), holder)
        .map_err(|e| VmError::Invalid(super::context::chain(e)))?;
    let tpm = dir.join(TPM_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(&tpm) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(&tpm).map_err(io("reading", &tpm))?;
            if !m.is_dir() {
                return Err(VmError::Invalid(format!(
                    "{STATE_ANNOTATION}: {} is not a directory ({}); it is where the TPM's \
                     state is kept",
                    tpm.display(),
                    kind(&m)
                )));
            }
        }
        Err(e) => return Err(io("making", &tpm)(e)),
    }
    let state = VmState {
        dir: dir.to_owned(),
        tpm,
    };
    Ok((state, lock))
}

/// The variable store in the state directory `dir`, made from `template`
/// where there is none yet (written beside it, then renamed, so a start
/// cut short leaves none rather than half of one).
pub fn vars_file(dir: &Path, template: &Path) -> Result<PathBuf, VmError> {
    let path = dir.join(VARS_FILE);
    let io = |what: &str, path: &Path| {
        let context = format!("{STATE_ANNOTATION}: {what} {}", path.display());
        move |source| VmError::Io { context, source }
    };
    let want = std::fs::metadata(template)
        .map_err(io("reading", template))?
        .len();
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() && m.len() == want => return Ok(path),
        Ok(m) => {
            return Err(VmError::Invalid(format!(
                "{STATE_ANNOTATION}: {} is not a UEFI variable store: {} of {} bytes, and \
                 OVMF's ({}) is a regular file of {want}; husk-vm does not overwrite it",
                path.display(),
                kind(&m),
                m.len(),
                template.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", &path)(e)),
    }
    let data = std::fs::read(template).map_err(io("reading", template))?;
    let new = dir.join(format!(".{VARS_FILE}.new"));
    match std::fs::remove_file(&new) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", &new)(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&new)
        .map_err(io("creating", &new))?;
    file.write_all(&data).map_err(io("writing", &new))?;
    file.sync_all().map_err(io("syncing", &new))?;
    std::fs::rename(&new, &path).map_err(io("renaming", &new))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))?;
    Ok(path)
}

/// What a directory entry is, in words.
fn kind(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_state_volume_is_a_writable_directory_mount() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().display().to_string();
        let spec = json!({"mounts": [
            {"destination": "/state/", "source": host},
            {"destination": "/ro", "source": host, "options": ["rbind", "ro"]}
        ]});
        assert_eq!(state_dir(&spec, None).unwrap(), None);
        assert_eq!(
            state_dir(&spec, Some("/state")).unwrap().as_deref(),
            Some(d.path())
        );
        let err = |p| state_dir(&spec, Some(p)).unwrap_err().to_string();
        assert!(err("/ro").contains("read-only"), "{}", err("/ro"));
        assert!(err("/elsewhere").contains("not a directory mounted"));
        assert!(err("state/../x").contains("not a clean absolute path"));
    }

    #[test]
    fn the_variable_store_is_made_once_and_never_followed_or_replaced() {
        let d = tempfile::tempdir().unwrap();
        let template = d.path().join("OVMF_VARS_4M.fd");
        std::fs::write(&template, vec![7u8; 4096]).unwrap();
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let vars = vars_file(&state, &template).unwrap();
        assert_eq!(std::fs::read(&vars).unwrap(), vec![7u8; 4096]);
        // What the guest wrote is kept: the template is not copied again.
        std::fs::write(&vars, vec![9u8; 4096]).unwrap();
        vars_file(&state, &template).unwrap();
        assert_eq!(std::fs::read(&vars).unwrap()[0], 9);
        // Something else in its place is refused, named, and left alone.
        std::fs::remove_file(&vars).unwrap();
        std::os::unix::fs::symlink(&template, &vars).unwrap();
        let e = vars_file(&state, &template).unwrap_err().to_string();
        assert!(
            e.contains("symbolic link") && e.contains("not a UEFI"),
            "{e}"
        );
        std::fs::remove_file(&vars).unwrap();
        std::fs::write(&vars, b"short").unwrap();
        let e = vars_file(&state, &template).unwrap_err().to_string();
        assert!(e.contains("5 bytes") && e.contains("4096"), "{e}");
        assert_eq!(std::fs::read(&vars).unwrap(), b"short");
    }

    #[test]
    fn a_state_directory_is_locked_and_holds_the_tpm_directory() {
        let d = tempfile::tempdir().unwrap();
        let runtime = d.path().join("run");
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let swtpm = Path::new("/bin/sh");
        let held = prepare(&state, swtpm, &runtime, "pod a").unwrap();
        assert!(held.0.tpm.is_dir());
        let e = prepare(&state, swtpm, &runtime, "pod b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pod a"), "{e}");
        drop(held);
        // A link where swtpm's directory goes is refused.
        std::fs::remove_dir(state.join(TPM_DIR)).unwrap();
        std::os::unix::fs::symlink("/etc", state.join(TPM_DIR)).unwrap();
        let e = prepare(&state, swtpm, &runtime, "pod b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let e = prepare(&state, Path::new("/nonexistent/swtpm"), &runtime, "pod b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("apt-get install swtpm"), "{e}");
    }
}
