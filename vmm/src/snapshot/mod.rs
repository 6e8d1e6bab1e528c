//! VM templates: a template's snapshot and a clone's restore
//! (docs/husk-vmm.md, "Snapshot and restore").
//!
//! A template (`--memory-file M --snapshot-to S`) boots with its RAM in
//! the new file M, mapped shared, and creates S at start, before the jail
//! makes its directory read-only. On SIGUSR1 it stops every vCPU (each
//! completing the I/O exit it was in), pauses its devices, reads the
//! vCPUs, irqchip, PIT, clock, serial and virtio state ([`capture`]),
//! writes it to S, msyncs M ([`write`]) and ends: it must not run on,
//! since every clone maps M and would see its later writes in the pages
//! it has not copied yet.
//!
//! A clone (`--memory-file M --restore-from S`) reads S as hostile input
//! ([`load`], [`format::decode`]), checks it against its own
//! configuration ([`check`]: RAM size, vCPU count, the device in each
//! slot), maps M read-only and private, and sets a new KVM VM up from the
//! state (`Vmm::with_devices`). Its guest goes on where the template's
//! stopped; what it writes is copy on write, its own.

pub(crate) mod format;

use crate::devices::bus::Bus;
use crate::devices::virtio::PauseError;
use crate::memory::{self, GuestMemoryMmap};
use crate::vcpu::{Vcpu, VcpuError};
use format::{FormatError, VmState, MAX_STATE_BYTES};
use husk_vmm_config::VmmConfig;
use kvm_bindings::{kvm_irqchip, kvm_pit_state2};
use kvm_ioctls::VmFd;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot state {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot state {path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("snapshot state {path}: empty (the template ended before its snapshot)")]
    Empty { path: PathBuf },
    #[error("snapshot state {path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("snapshot state {path}: {what}: the snapshot has {snapshot}, this VM {config}")]
    Mismatch {
        path: PathBuf,
        what: &'static str,
        snapshot: String,
        config: String,
    },
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("pausing the devices: {0}")]
    Pause(#[from] PauseError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("this VM is not a template (--snapshot-to)")]
    NotATemplate,
    #[error("a vCPU thread ended without its vCPU; no snapshot")]
    VcpuLost,
    #[error("writing the snapshot state: {0}")]
    Write(#[source] std::io::Error),
    #[error("writing guest RAM back to its file: {0}")]
    Msync(#[source] std::io::Error),
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { what, source }
}

/// A template's state file, created when it starts (it must not exist),
/// for [`write`] to fill once it is snapshotted.
pub(crate) fn create_state_file(path: &Path) -> Result<File, SnapshotError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SnapshotError::Io {
            path: path.into(),
            what: "creating it (it must not exist)",
            source,
        })
}

/// The VM's state, once its vCPUs have stopped (`vcpus`, each done with
/// its last exit): the devices pause first, so nothing raises an
/// interrupt or touches RAM after the irqchip and vCPUs are read.
pub(crate) fn capture(
    vm: &VmFd,
    vcpus: &[Vcpu],
    bus: &Bus,
    mem: &GuestMemoryMmap,
    msrs: &[u32],
) -> Result<VmState, SnapshotError> {
    let (serial, devices) = bus.save()?;
    let mut irqchips = [kvm_irqchip::default(); 3];
    for (id, chip) in irqchips.iter_mut().enumerate() {
        chip.chip_id = id as u32;
        vm.get_irqchip(chip).map_err(kvm_err("KVM_GET_IRQCHIP"))?;
    }
    let pit = vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?;
    let clock = vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?;
    let vcpus = vcpus
        .iter()
        .map(|v| v.save(msrs))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VmState {
        memory_bytes: mem.iter().map(|r| r.len()).sum(),
        clock,
        irqchips,
        pit,
        serial,
        devices,
        vcpus,
    })
}

/// Writes `state` to the template's state file and its RAM to its memory
/// file; both are complete on disk when this returns.
pub(crate) fn write(
    state: &VmState,
    file: &mut File,
    mem: &GuestMemoryMmap,
) -> Result<usize, SnapshotError> {
    memory::sync_to_file(mem).map_err(SnapshotError::Msync)?;
    let bytes = format::encode(state);
    file.write_all(&bytes).map_err(SnapshotError::Write)?;
    file.sync_data().map_err(SnapshotError::Write)?;
    Ok(bytes.len())
}

/// Reads and parses a clone's state file: a regular file (not followed
/// if a symlink) of at most [`MAX_STATE_BYTES`].
pub(crate) fn load(path: &Path) -> Result<VmState, SnapshotError> {
    let err = |what| {
        move |source| SnapshotError::Io {
            path: path.into(),
            what,
            source,
        }
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(err("opening it"))?;
    if !file.metadata().map_err(err("fstat"))?.file_type().is_file() {
        return Err(SnapshotError::NotAFile { path: path.into() });
    }
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(err("reading it"))?;
    if bytes.is_empty() {
        return Err(SnapshotError::Empty { path: path.into() });
    }
    format::decode(&bytes).map_err(|source| SnapshotError::Format {
        path: path.into(),
        source,
    })
}

/// The name of a virtio device type in errors.
fn device_name(device_type: u32) -> String {
    match device_type {
        1 => "net".into(),
        4 => "rng".into(),
        19 => "vsock".into(),
        26 => "fs".into(),
        other => format!("type {other}"),
    }
}

/// The state is one of this VM's: same RAM size, vCPU count, and the same
/// device in each virtio-mmio slot (`device_types`, in slot order), as
/// its guest found them at boot.
pub(crate) fn check(
    state: &VmState,
    path: &Path,
    config: &VmmConfig,
    device_types: &[u32],
) -> Result<(), SnapshotError> {
    let mismatch = |what, snapshot: String, config: String| SnapshotError::Mismatch {
        path: path.into(),
        what,
        snapshot,
        config,
    };
    let mib = state.memory_bytes >> 20;
    if mib != u64::from(config.memory_mib) {
        let (s, c) = (format!("{mib} MiB"), format!("{} MiB", config.memory_mib));
        return Err(mismatch("guest RAM (--memory-mib)", s, c));
    }
    if state.vcpus.len() != usize::from(config.vcpus) {
        let (s, c) = (state.vcpus.len().to_string(), config.vcpus.to_string());
        return Err(mismatch("vCPUs (--vcpus)", s, c));
    }
    let saved: Vec<u32> = state.devices.iter().map(|d| d.device_type).collect();
    if saved != device_types {
        let names = |t: &[u32]| {
            let n: Vec<String> = t.iter().map(|t| device_name(*t)).collect();
            format!("[{}]", n.join(", "))
        };
        return Err(mismatch(
            "virtio devices",
            names(&saved),
            names(device_types),
        ));
    }
    Ok(())
}

/// The irqchip and the PIT as the template left them, on a VM that has
/// both, before its vCPUs exist.
pub(crate) fn restore_irqchip(vm: &VmFd, state: &VmState) -> Result<(), SnapshotError> {
    for chip in &state.irqchips {
        vm.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    let pit: &kvm_pit_state2 = &state.pit;
    vm.set_pit2(pit).map_err(kvm_err("KVM_SET_PIT2"))
}

/// kvmclock where the template's stopped, once the vCPUs are restored:
/// the guest's clocks go on from the snapshot, not from the time that
/// passed since (KVM_CLOCK_REALTIME is not asked for; the agent sets the
/// wall clock after a restore).
pub(crate) fn restore_clock(vm: &VmFd, state: &VmState) -> Result<(), SnapshotError> {
    let mut clock = state.clock;
    clock.flags = 0;
    vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_is_checked_against_the_clone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, format::encode(&format::tests::sample())).unwrap();
        let state = load(&path).unwrap();
        let mut config = VmmConfig::clone_of("/m", &path, "/c");
        (config.memory_mib, config.vcpus) = (64, 2);
        check(&state, &path, &config, &[1, 4]).unwrap();
        let bad = |config: &VmmConfig, types: &[u32], want: &str| {
            let e = check(&state, &path, config, types).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(e.contains(&path.display().to_string()), "{e}");
        };
        bad(
            &config,
            &[4],
            "virtio devices: the snapshot has [net, rng], this VM [rng]",
        );
        bad(&config, &[1, 26], "this VM [net, fs]");
        let mut c = config.clone();
        c.memory_mib = 128;
        bad(
            &c,
            &[1, 4],
            "guest RAM (--memory-mib): the snapshot has 64 MiB, this VM 128 MiB",
        );
        let mut c = config;
        c.vcpus = 1;
        bad(
            &c,
            &[1, 4],
            "vCPUs (--vcpus): the snapshot has 2, this VM 1",
        );
    }

    #[test]
    fn an_unreadable_empty_or_damaged_state_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("state: opening it"), "{e}");
        // What a template leaves when it ends without a snapshot.
        drop(create_state_file(&path).unwrap());
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("empty (the template ended before its snapshot)"),
            "{e}"
        );
        let e = create_state_file(&path).unwrap_err().to_string();
        assert!(e.contains("it must not exist"), "{e}");
        std::fs::write(&path, b"HUSKSNAP\x01\0\0\0").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("body length at byte 12: needs 8 bytes, 0 left"),
            "{e}"
        );
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("not a regular file") || e.contains("reading it"),
            "{e}"
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = load(&link).unwrap_err().to_string();
        assert!(e.contains("opening it"), "a symlink is not followed: {e}");
    }
}
