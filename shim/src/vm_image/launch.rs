//! What a VM-image pod's VM is, decided from its container's bundle: how
//! it boots (`io.husk.vm.firmware`, the image's own kernel, SeaBIOS), which
//! raw block volumes it gets (`linux.devices`), and the facts its
//! cloud-init seed is made of (the pod's hostname, DNS, UID, the user's
//! files). Nothing here starts anything.

use super::cloud_init::{self, PodFacts};
use super::error::VmError;
use crate::bundle::container_disk::ContainerDisk;
use crate::bundle::BundleSpec;
use husk_hypervisor::qemu::vm_image::{BlockDevice, ImageBoot};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Annotations a husk-vm container may carry (containerd passes io.husk.*).
pub const FIRMWARE_ANNOTATION: &str = "io.husk.vm.firmware";
pub const KERNEL_ARGS_ANNOTATION: &str = "io.husk.vm.kernel_args";
/// `"true"`: UEFI Secure Boot (OVMF's Secure Boot build, Microsoft's keys).
pub const SECURE_BOOT_ANNOTATION: &str = "io.husk.vm.secure-boot";
/// What containerd's CRI puts on a container: its pod's UID and name.
const SANDBOX_UID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-uid";
const SANDBOX_NAME_ANNOTATION: &str = "io.kubernetes.cri.sandbox-name";
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// What share() checked and mounted for a VM container, for its create.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub rootfs: PathBuf,
    pub disk: ContainerDisk,
    pub bundle: BundleSpec,
    pub netns: Option<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u32,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let context = context.into();
    move |source| VmError::Io { context, source }
}

/// Whether the container asks for UEFI Secure Boot (`io.husk.vm.secure-boot`),
/// which needs `io.husk.vm.firmware: uefi`.
pub fn secure_boot(bundle: &BundleSpec) -> Result<bool, VmError> {
    let on = match bundle.annotation(SECURE_BOOT_ANNOTATION) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(VmError::Invalid(format!(
                "{SECURE_BOOT_ANNOTATION}: {other:?} is neither \"true\" nor \"false\""
            )))
        }
    };
    if on && bundle.annotation(FIRMWARE_ANNOTATION) != Some("uefi") {
        return Err(VmError::Invalid(format!(
            "{SECURE_BOOT_ANNOTATION}: Secure Boot is UEFI's: it needs {FIRMWARE_ANNOTATION}: uefi"
        )));
    }
    Ok(on)
}

/// How the VM boots: `io.husk.vm.firmware` (bios or uefi) chooses firmware
/// boot; without it, an image with a kernel and initrd is booted directly,
/// any other through SeaBIOS. UEFI's variable store is the state volume's
/// (`state`, kept) or else a copy of OVMF's in the VM's `files`.
pub fn boot_of(
    p: &Prepared,
    vm: &husk_config::VmConfig,
    files: &Path,
    state: Option<&Path>,
) -> Result<ImageBoot, VmError> {
    let annotation = |k: &str| p.bundle.annotation(k);
    match annotation(FIRMWARE_ANNOTATION) {
        Some("bios") => return Ok(ImageBoot::Bios),
        Some("uefi") => {
            let (code, template) = if secure_boot(&p.bundle)? {
                (
                    ("vm.ovmf_code_secure_boot", &vm.ovmf_code_secure_boot),
                    ("vm.ovmf_vars_secure_boot", &vm.ovmf_vars_secure_boot),
                )
            } else {
                (
                    ("vm.ovmf_code", &vm.ovmf_code),
                    ("vm.ovmf_vars", &vm.ovmf_vars),
                )
            };
            for (key, path) in [code, template] {
                if !path.is_file() {
                    return Err(VmError::Invalid(format!(
                        "{FIRMWARE_ANNOTATION}: uefi needs OVMF, and {key} ({}) is not there (apt-get install ovmf)",
                        path.display()
                    )));
                }
            }
            let template = template.1;
            let vars = match state {
                Some(dir) => super::state::vars_file(dir, template)?,
                None => {
                    let vars = files.join("OVMF_VARS.fd");
                    std::fs::copy(template, &vars)
                        .map_err(io(format!("copying {}", template.display())))?;
                    vars
                }
            };
            return Ok(ImageBoot::Uefi {
                code: code.1.clone(),
                vars,
            });
        }
        Some(other) => {
            return Err(VmError::Invalid(format!(
                "{FIRMWARE_ANNOTATION}: {other:?} is neither \"bios\" nor \"uefi\""
            )))
        }
        None => {}
    }
    // Secure Boot without UEFI: refused, naming both.
    secure_boot(&p.bundle)?;
    match &p.disk.kernel {
        Some((kernel, initrd)) => {
            let cmdline = annotation(KERNEL_ARGS_ANNOTATION).unwrap_or(&vm.kernel_args);
            if cmdline.contains(['\n', '\0']) {
                return Err(VmError::Invalid(format!(
                    "{KERNEL_ARGS_ANNOTATION}: must not contain a newline or NUL"
                )));
            }
            Ok(ImageBoot::Kernel {
                kernel: kernel.clone(),
                initrd: initrd.clone(),
                cmdline: cmdline.to_owned(),
            })
        }
        None => Ok(ImageBoot::Bios),
    }
}

/// The spec's mount whose destination is `dest`: its host source.
pub(super) fn mount_source(spec: &Value, dest: &str) -> Option<PathBuf> {
    spec.get("mounts")?
        .as_array()?
        .iter()
        .find(|m| {
            m.get("destination")
                .and_then(Value::as_str)
                .map(|d| d.trim_end_matches('/'))
                == Some(dest)
        })
        .and_then(|m| m.get("source")?.as_str())
        .filter(|s| s.starts_with('/'))
        .map(PathBuf::from)
}

/// Everything the seed is made of, from the container's spec (its
/// volumes, kubelet's hostname and resolv.conf, CRI's annotations) and
/// the pod network.
pub fn pod_facts(
    bundle: &BundleSpec,
    id: &str,
    network: Option<husk_proto::agent::ConfigureNetworkRequest>,
) -> Result<PodFacts, VmError> {
    let spec = &bundle.spec;
    let annotation = |k: &str| bundle.annotation(k).filter(|s| !s.is_empty());
    let instance_id = annotation(SANDBOX_UID_ANNOTATION)
        .or_else(|| annotation(SANDBOX_ID_ANNOTATION))
        .unwrap_or(id)
        .to_owned();
    let hostname = mount_source(spec, "/etc/hostname")
        .and_then(|p| cloud_init::read_small(&p).ok())
        .and_then(|t| cloud_init::parse_hostname(&t))
        .or_else(|| {
            spec.get("hostname")
                .and_then(Value::as_str)
                .and_then(cloud_init::parse_hostname)
        })
        .or_else(|| annotation(SANDBOX_NAME_ANNOTATION).and_then(cloud_init::parse_hostname))
        .unwrap_or_else(|| "husk-vm".to_owned());
    let dns = mount_source(spec, "/etc/resolv.conf")
        .and_then(|p| cloud_init::read_small(&p).ok())
        .map(|t| cloud_init::parse_resolv_conf(&t))
        .unwrap_or_default();
    let mut facts = PodFacts {
        instance_id,
        hostname,
        network,
        dns,
        ..Default::default()
    };
    if let Some(vol) = mount_source(spec, cloud_init::CLOUD_INIT_MOUNT) {
        let read = |name| cloud_init::read_in_volume(&vol, name, cloud_init::MAX_USER_FILE);
        facts.user_data = read("user-data")?;
        facts.user_meta_data = read("meta-data")?;
        facts.user_network_config = read("network-config")?;
    }
    if let Some(vol) = mount_source(spec, cloud_init::SSH_KEYS_MOUNT) {
        if let Some(keys) =
            cloud_init::read_in_volume(&vol, "authorized_keys", cloud_init::MAX_USER_FILE)?
        {
            facts.ssh_keys = cloud_init::parse_authorized_keys(&String::from_utf8_lossy(&keys));
        }
    }
    Ok(facts)
}

/// Raw block volumes (`volumeDevices`): CRI passes them as the spec's
/// block devices (`linux.devices` of type "b", by major and minor). Each
/// but the root disk's (container path `root`) becomes a virtio-blk disk
/// whose serial is the device path's last name.
pub fn block_devices(spec: &Value, root: Option<&str>) -> Result<Vec<BlockDevice>, VmError> {
    let mut out = Vec::new();
    for d in spec
        .pointer("/linux/devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if d.get("type").and_then(Value::as_str) != Some("b") {
            continue;
        }
        let (Some(major), Some(minor)) = (
            d.get("major").and_then(Value::as_u64),
            d.get("minor").and_then(Value::as_u64),
        ) else {
            continue;
        };
        let container_path = d.get("path").and_then(Value::as_str).unwrap_or("");
        if root == Some(container_path) {
            continue;
        }
        let serial: String = Path::new(container_path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(20)
            .collect();
        out.push(BlockDevice {
            path: host_block_device(major, minor)?,
            serial,
        });
    }
    Ok(out)
}

/// The host's device node of block device major:minor, checked to be it.
pub(super) fn host_block_device(major: u64, minor: u64) -> Result<PathBuf, VmError> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let wanted = nix::sys::stat::makedev(major, minor);
    let mut candidates = vec![PathBuf::from(format!("/dev/block/{major}:{minor}"))];
    if let Ok(uevent) = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")) {
        if let Some(name) = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")) {
            if !name.contains("..") {
                candidates.push(Path::new("/dev").join(name));
            }
        }
    }
    for c in candidates {
        if let Ok(m) = std::fs::metadata(&c) {
            if m.file_type().is_block_device() && m.rdev() == wanted {
                return Ok(c);
            }
        }
    }
    Err(VmError::Invalid(format!(
        "linux.devices: no block device {major}:{minor} on the host"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle(mut spec: Value) -> BundleSpec {
        spec["root"] = json!({"path": "rootfs"});
        BundleSpec::of(spec, Path::new("/b")).unwrap()
    }

    #[test]
    fn facts_come_from_the_pods_files_and_annotations() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("hostname"), "vm-pod\n").unwrap();
        std::fs::write(
            d.join("resolv.conf"),
            "nameserver 10.96.0.10\nsearch ns.svc.cluster.local\n",
        )
        .unwrap();
        std::fs::create_dir(d.join("ci")).unwrap();
        std::fs::write(d.join("ci/user-data"), "#cloud-config\nruncmd: [true]\n").unwrap();
        std::fs::create_dir(d.join("keys")).unwrap();
        std::fs::write(d.join("keys/authorized_keys"), "ssh-ed25519 AAAA me\n").unwrap();
        let spec = json!({
            "annotations": {"io.kubernetes.cri.sandbox-uid": "uid-7", "io.kubernetes.cri.sandbox-id": "sb"},
            "mounts": [
                {"destination": "/etc/hostname", "source": d.join("hostname")},
                {"destination": "/etc/resolv.conf", "source": d.join("resolv.conf")},
                {"destination": "/cloud-init/", "source": d.join("ci")},
                {"destination": "/ssh-keys", "source": d.join("keys")}
            ]
        });
        let f = pod_facts(&bundle(spec), "c1", None).unwrap();
        assert_eq!(f.instance_id, "uid-7");
        assert_eq!(f.hostname, "vm-pod");
        assert_eq!(f.ssh_keys, ["ssh-ed25519 AAAA me"]);
        assert_eq!(
            f.user_data.as_deref(),
            Some(&b"#cloud-config\nruncmd: [true]\n"[..])
        );
        assert_eq!(f.dns.search, ["ns.svc.cluster.local"]);
        // Without CRI's annotations and files: the container id, a default name.
        let bare = pod_facts(&bundle(json!({})), "c1", None).unwrap();
        assert_eq!(
            (bare.instance_id.as_str(), bare.hostname.as_str()),
            ("c1", "husk-vm")
        );
    }

    #[test]
    fn secure_boot_is_asked_plainly_and_needs_uefi() {
        let with = |a: Value| secure_boot(&bundle(json!({ "annotations": a })));
        assert!(!with(json!({})).unwrap());
        let uefi = json!({SECURE_BOOT_ANNOTATION: "true", FIRMWARE_ANNOTATION: "uefi"});
        assert!(with(uefi).unwrap());
        let e = with(json!({SECURE_BOOT_ANNOTATION: "true"})).unwrap_err();
        assert!(e.to_string().contains("io.husk.vm.firmware: uefi"), "{e}");
        let e = with(json!({SECURE_BOOT_ANNOTATION: "yes"})).unwrap_err();
        assert!(e.to_string().contains("\"yes\""), "{e}");
    }

    #[test]
    fn only_block_devices_become_disks_and_must_exist() {
        let spec = json!({"linux": {"devices": [
            {"path": "/dev/null", "type": "c", "major": 1, "minor": 3}
        ]}});
        assert!(block_devices(&spec, None).unwrap().is_empty());
        let spec = json!({"linux": {"devices": [
            {"path": "/dev/xvdb", "type": "b", "major": 4095, "minor": 4095}
        ]}});
        assert!(block_devices(&spec, Some("/dev/xvdb")).unwrap().is_empty());
        let e = block_devices(&spec, None).unwrap_err().to_string();
        assert!(e.contains("4095:4095"), "{e}");
    }
}
