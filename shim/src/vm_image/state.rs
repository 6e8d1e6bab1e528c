//! The VM's state volume (`io.husk.vm.state: PATH`, docs/vm-pods.md
//! "Firmware state and TPM"): a directory volume of the VM container
//! (a PersistentVolumeClaim, mounted at PATH) that keeps what a PC keeps
//! in its own hardware, so that it survives the pod's deletion and
//! re-creation:
//!
//! ```text
//! <volume>/OVMF_VARS.fd   the UEFI variable store (with io.husk.vm.firmware: uefi),
//!                         made from the firmware's template the first time
//! <volume>/tpm/           the TPM 2.0's state (swtpm: tpm2-00.permall, .lock)
//! ```
//!
//! A VM with a state volume always has a TPM. With Secure Boot
//! (`io.husk.vm.secure-boot: "true"`, UEFI only) the firmware is OVMF's
//! Secure Boot build and a new store is made from the template with
//! Microsoft's keys enrolled; a store made earlier is kept as it is.
//!
//! The volume is the user's, and other pods may mount it: nothing in it
//! is followed as a link. The store is opened with `O_NOFOLLOW` (here
//! and again by the launcher, which checks it is a regular file) and
//! must be the template's size; `tpm/` must be a real directory, which
//! the launcher opens without following links and binds into swtpm's
//! jail from the descriptor. Without a state volume, UEFI's store is a
//! copy in the container's writable area, lost with the container.

use super::error::VmError;
use super::launch::Prepared;
use husk_hypervisor::qemu::vm_image::ImageBoot;
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const STATE_ANNOTATION: &str = "io.husk.vm.state";
pub const SECURE_BOOT_ANNOTATION: &str = "io.husk.vm.secure-boot";
/// The variable store's name, in the state volume and in the container's
/// writable area.
pub const VARS_FILE: &str = "OVMF_VARS.fd";
/// The TPM state's directory in the state volume.
pub const TPM_DIR: &str = "tpm";

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let context = context.into();
    move |source| VmError::Io { context, source }
}

/// The state volume's directory on the host, when the container names
/// one: the source of its mount at the annotation's path, which must be
/// a writable directory.
pub fn state_volume(p: &Prepared) -> Result<Option<PathBuf>, VmError> {
    let Some(path) = p.bundle.annotation(STATE_ANNOTATION) else {
        return Ok(None);
    };
    let wanted = path.trim_end_matches('/');
    let mount = p
        .bundle
        .spec
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|m| {
            m.get("destination")
                .and_then(Value::as_str)
                .map(|d| d.trim_end_matches('/'))
                == Some(wanted)
        });
    let refused = |why: &str| {
        VmError::Invalid(format!(
            "{STATE_ANNOTATION}: {path:?} {why} (mount a PersistentVolumeClaim there: \
             it keeps the VM's UEFI variables and TPM)"
        ))
    };
    let Some(mount) = mount else {
        return Err(refused("is not a volume of this container"));
    };
    let read_only = mount
        .get("options")
        .and_then(Value::as_array)
        .is_some_and(|o| o.iter().any(|v| v.as_str() == Some("ro")));
    if read_only {
        return Err(refused("is mounted read-only"));
    }
    let source = mount
        .get("source")
        .and_then(Value::as_str)
        .filter(|s| s.starts_with('/'))
        .map(PathBuf::from)
        .ok_or_else(|| refused("has no host directory"))?;
    if !std::fs::metadata(&source).is_ok_and(|m| m.is_dir()) {
        return Err(refused(
            "is not a directory volume (a block volume cannot hold it)",
        ));
    }
    Ok(Some(source))
}

/// Whether the container asks for Secure Boot; only with UEFI.
pub fn secure_boot(p: &Prepared, boot: &ImageBoot) -> Result<bool, VmError> {
    match p.bundle.annotation(SECURE_BOOT_ANNOTATION) {
        None | Some("false") => Ok(false),
        Some("true") if matches!(boot, ImageBoot::Uefi { .. }) => Ok(true),
        Some("true") => Err(VmError::Invalid(format!(
            "{SECURE_BOOT_ANNOTATION}: Secure Boot is UEFI's: it needs io.husk.vm.firmware: uefi"
        ))),
        Some(other) => Err(VmError::Invalid(format!(
            "{SECURE_BOOT_ANNOTATION}: {other:?} is neither \"true\" nor \"false\""
        ))),
    }
}

/// UEFI's firmware and variable store: OVMF (its Secure Boot build when
/// asked), and the store in the state volume when there is one (made from
/// the template the first time), else a copy in `files`.
pub fn uefi_boot(
    p: &Prepared,
    vm: &husk_config::VmConfig,
    files: &Path,
) -> Result<ImageBoot, VmError> {
    let secure = matches!(p.bundle.annotation(SECURE_BOOT_ANNOTATION), Some("true"));
    let (code, template) = match secure {
        true => (&vm.ovmf_code_secure_boot, &vm.ovmf_vars_secure_boot),
        false => (&vm.ovmf_code, &vm.ovmf_vars),
    };
    for (key, path) in [("code", code), ("variable store template", template)] {
        if !path.is_file() {
            return Err(VmError::Invalid(format!(
                "io.husk.vm.firmware: uefi needs OVMF, and its {key} {} is not there \
                 (apt-get install ovmf)",
                path.display()
            )));
        }
    }
    let vars = match state_volume(p)? {
        Some(volume) => vars_in_volume(&volume, template)?,
        None => {
            let vars = files.join(VARS_FILE);
            std::fs::copy(template, &vars)
                .map_err(io(format!("copying {}", template.display())))?;
            vars
        }
    };
    Ok(ImageBoot::Uefi {
        code: code.clone(),
        vars,
    })
}

/// The store in the state volume: made from `template` when absent
/// (exclusively, never through a link), else checked to be a regular
/// file of the template's size (a store of another firmware build would
/// not fit its flash).
pub fn vars_in_volume(volume: &Path, template: &Path) -> Result<PathBuf, VmError> {
    let vars = volume.join(VARS_FILE);
    let want = std::fs::metadata(template)
        .map_err(io(format!("reading {}", template.display())))?
        .len();
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&vars);
    match created {
        Ok(mut file) => {
            let data =
                std::fs::read(template).map_err(io(format!("reading {}", template.display())))?;
            file.write_all(&data)
                .and_then(|()| file.sync_all())
                .map_err(io(format!("writing {}", vars.display())))?;
            tracing::info!(store = %vars.display(), template = %template.display(), "UEFI variable store made in the state volume");
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&vars)
                .map_err(io(format!(
                    "{STATE_ANNOTATION}: {VARS_FILE} in the state volume (it must be a regular file)"
                )))?;
            let meta = file
                .metadata()
                .map_err(io(format!("reading {}", vars.display())))?;
            if !meta.is_file() || meta.len() != want {
                return Err(VmError::Invalid(format!(
                    "{STATE_ANNOTATION}: the state volume's {VARS_FILE} is not a {want}-byte \
                     regular file, as this OVMF's variable store is (made by another firmware? \
                     remove it to start with a new store)"
                )));
            }
        }
        Err(e) => return Err(io(format!("creating {}", vars.display()))(e)),
    }
    Ok(vars)
}

/// The TPM state's directory in the state volume, made when absent; it
/// must be a real directory (the launcher opens it without following a
/// link).
pub fn tpm_dir(volume: &Path) -> Result<PathBuf, VmError> {
    let dir = volume.join(TPM_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(&dir)
                .map_err(io(format!("reading {}", dir.display())))?;
            if !meta.is_dir() {
                return Err(VmError::Invalid(format!(
                    "{STATE_ANNOTATION}: the state volume's {TPM_DIR} is not a directory \
                     (it holds the TPM's state)"
                )));
            }
        }
        Err(e) => return Err(io(format!("creating {}", dir.display()))(e)),
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::container_disk::ContainerDisk;
    use crate::bundle::BundleSpec;
    use serde_json::json;

    fn prepared(spec: Value) -> Prepared {
        let mut spec = spec;
        spec["root"] = json!({"path": "rootfs"});
        Prepared {
            rootfs: "/b/rootfs".into(),
            disk: ContainerDisk {
                disk: "/b/rootfs/disk/disk.qcow2".into(),
                format: husk_hypervisor::disk_format::DiskFormat::Qcow2,
                virtual_size: 1 << 30,
                kernel: None,
            },
            bundle: BundleSpec::of(spec, Path::new("/b")).unwrap(),
            netns: None,
            vcpus: 1,
            memory_mib: 512,
        }
    }

    #[test]
    fn the_state_volume_is_a_writable_directory_mount_at_the_named_path() {
        let d = tempfile::tempdir().unwrap();
        let mount = |opts: Value| {
            json!({
                "annotations": {STATE_ANNOTATION: "/state/"},
                "mounts": [{"destination": "/state", "source": d.path(), "options": opts}]
            })
        };
        assert_eq!(
            state_volume(&prepared(mount(json!(["rbind", "rw"])))).unwrap(),
            Some(d.path().to_owned())
        );
        let e = state_volume(&prepared(mount(json!(["rbind", "ro"]))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("read-only"), "{e}");
        let e = state_volume(&prepared(
            json!({"annotations": {STATE_ANNOTATION: "/nope"}}),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"/nope\" is not a volume"), "{e}");
        assert_eq!(state_volume(&prepared(json!({}))).unwrap(), None);
    }

    #[test]
    fn the_store_is_made_once_then_kept_and_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let template = d.path().join("template.fd");
        std::fs::write(&template, [7u8; 4096]).unwrap();
        let volume = d.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        let vars = vars_in_volume(&volume, &template).unwrap();
        assert_eq!(std::fs::read(&vars).unwrap(), [7u8; 4096]);
        // What the guest wrote stays.
        std::fs::write(&vars, [1u8; 4096]).unwrap();
        vars_in_volume(&volume, &template).unwrap();
        assert_eq!(std::fs::read(&vars).unwrap(), [1u8; 4096]);
        // Another size: refused, not replaced.
        std::fs::write(&vars, [1u8; 100]).unwrap();
        let e = vars_in_volume(&volume, &template).unwrap_err().to_string();
        assert!(e.contains("4096-byte"), "{e}");
        // A link in its place: neither followed nor written through.
        std::fs::remove_file(&vars).unwrap();
        let target = d.path().join("host-file");
        std::fs::write(&target, "host").unwrap();
        std::os::unix::fs::symlink(&target, &vars).unwrap();
        assert!(vars_in_volume(&volume, &template).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "host");
        // tpm/ is made, and must be a directory.
        let tpm = tpm_dir(&volume).unwrap();
        assert!(tpm.is_dir());
        tpm_dir(&volume).unwrap();
        std::fs::remove_dir(&tpm).unwrap();
        std::os::unix::fs::symlink(d.path(), &tpm).unwrap();
        let e = tpm_dir(&volume).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn secure_boot_is_uefis_only() {
        let p = prepared(json!({"annotations": {SECURE_BOOT_ANNOTATION: "true"}}));
        let uefi = ImageBoot::Uefi {
            code: "/c".into(),
            vars: "/v".into(),
        };
        assert!(secure_boot(&p, &uefi).unwrap());
        let e = secure_boot(&p, &ImageBoot::Bios).unwrap_err().to_string();
        assert!(e.contains("needs io.husk.vm.firmware: uefi"), "{e}");
        let p = prepared(json!({"annotations": {SECURE_BOOT_ANNOTATION: "yes"}}));
        assert!(secure_boot(&p, &uefi).is_err());
    }
}
