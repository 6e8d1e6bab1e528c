//! husk-config: the one configuration file of husk (`configuration.toml`).
//!
//! `config/configuration.toml` in the repository documents every key with its
//! default; [`Config::default`] holds the same values (a test keeps them
//! equal). Loading rejects unknown keys and out-of-range values with an error
//! that names the key, before anything is spawned.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the shim looks for its configuration unless `HUSK_CONFIG` is set.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/husk/configuration.toml";
/// Environment variable naming another configuration file.
pub const CONFIG_ENV: &str = "HUSK_CONFIG";

/// Bounds on the guest size. The lower memory bound is what husk's guest
/// kernel and agent need to boot (above husk-vmm's own minimum); the upper
/// bounds are husk-vmm's, taken from the crate that checks its command
/// line, for every backend: `auto` may pick either VMM, so a configuration
/// must mean the same on both (QEMU alone would allow more vCPUs).
pub const MIN_MEMORY_MIB: u32 = 64;
pub const MAX_MEMORY_MIB: u32 = husk_vmm_config::MAX_MEMORY_MIB;
pub const MAX_VCPUS: u32 = husk_vmm_config::MAX_VCPUS as u32;
const _: () = assert!(MIN_MEMORY_MIB >= husk_vmm_config::MIN_MEMORY_MIB);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("pod annotation {key}: {message}")]
    Annotation { key: &'static str, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub hypervisor: HypervisorConfig,
    pub pod: PodConfig,
    pub timeouts: Timeouts,
    pub logs: LogsConfig,
    pub pool: PoolConfig,
    pub confinement: ConfinementConfig,
    pub debug: DebugConfig,
    pub vm: VmConfig,
}

/// Operator debugging aids, all off by default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Whether pods booted with this configuration serve a root shell in
    /// the guest, outside any container, that `husk console POD` opens
    /// (the host asks the guest for it on the kernel command line).
    pub console: bool,
}

/// The unprivileged ids a VM's helpers run as (docs/security.md): each
/// running VM takes one id N from `first_id .. first_id + id_count`, and
/// its VMM and vsock daemon run as uid N, gid N, so that no two VMs share
/// a user. Host-wide: byte N - first_id of `id_lock` is locked while N is
/// taken.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfinementConfig {
    pub first_id: u32,
    /// 0: the helpers stay uid 0 (still without any capability).
    pub id_count: u32,
    pub id_lock: PathBuf,
}

impl Default for ConfinementConfig {
    fn default() -> Self {
        Self {
            first_id: 0x7000_0000,
            id_count: 65536,
            id_lock: PathBuf::from("/run/husk/vm-ids.lock"),
        }
    }
}

/// Pre-booted VMs, handed to pods at RunPodSandbox (docs/pool.md).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// The VM shapes to keep booted, and how many of each. Empty: no pool.
    pub shapes: Vec<PoolShape>,
}

/// A VM size kept in the pool: a pod whose VM is this size takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolShape {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// How many idle VMs of this shape to keep.
    pub size: u32,
}

impl PoolShape {
    /// The shape's name in paths and logs: `<vcpus>x<memory_mib>`.
    pub fn name(&self) -> String {
        format!("{}x{}", self.vcpus, self.memory_mib)
    }
}

/// Most idle VMs one shape may keep.
pub const MAX_POOL_SIZE: u32 = 64;

/// The pod annotations that size a pod's VM, and their bounds.
pub const VCPUS_ANNOTATION: &str = "io.husk.vcpus";
pub const MEMORY_ANNOTATION: &str = "io.husk.memory_mib";
/// The pod's summed container limits, which containerd (1.6.7 and later)
/// puts on the sandbox when kubelet gives them.
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// What a pod may ask for its VM through annotations; the defaults are
/// `hypervisor.vcpus` and `hypervisor.memory_mib`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodConfig {
    pub max_vcpus: u32,
    pub max_memory_mib: u32,
}

impl Default for PodConfig {
    fn default() -> Self {
        Self {
            max_vcpus: 4,
            max_memory_mib: 4096,
        }
    }
}

/// husk-vm pods (`runtimeClassName: husk-vm`): VM images booted by QEMU
/// as pods (docs/vm-pods.md). Their VM is sized by the VM container's
/// limits; these are the defaults and the tools.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmConfig {
    /// vCPUs of a VM whose container has no CPU limit.
    pub vcpus: u32,
    /// Memory of a VM whose container has no memory limit.
    pub memory_mib: u32,
    /// Under TCG, QEMU's translation cache in MiB (QEMU's default of 1 GiB
    /// is most of its RSS); 0 keeps QEMU's default.
    pub tcg_tb_size_mib: u32,
    /// Makes the copy-on-write overlay of the image's disk.
    pub qemu_img_path: PathBuf,
    /// UEFI firmware for images booted with `io.husk.vm.firmware: uefi`:
    /// the code (read-only) and the variable store each VM gets a copy of.
    pub ovmf_code: PathBuf,
    pub ovmf_vars: PathBuf,
    /// Secure Boot firmware (`io.husk.vm.secure-boot`): OVMF
    /// built with Secure Boot (which needs SMM) and a variable store with
    /// Microsoft's keys enrolled (what Windows 11 and shim-signed Linux
    /// boot with).
    pub ovmf_code_secure_boot: PathBuf,
    pub ovmf_vars_secure_boot: PathBuf,
    /// The TPM 2.0 emulator (Debian's swtpm) of VMs with a state volume
    /// (`io.husk.vm.state`).
    pub swtpm_path: PathBuf,
    /// The read-only disk holding husk-vm-tools, the guest helper of
    /// `kubectl exec -it` (scripts/build-vm-tools.sh); attached to every VM
    /// where it exists, unless `io.husk.vm.tools: "false"`.
    pub tools_disk: PathBuf,
    /// Kernel command line for images booted directly (an image with
    /// /boot/vmlinuz and /boot/initrd.img); the container annotation
    /// `io.husk.vm.kernel_args` replaces it.
    pub kernel_args: String,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            vcpus: 1,
            memory_mib: 1024,
            tcg_tb_size_mib: 256,
            qemu_img_path: "/usr/bin/qemu-img".into(),
            ovmf_code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            ovmf_vars: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
            ovmf_code_secure_boot: "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd".into(),
            ovmf_vars_secure_boot: "/usr/share/OVMF/OVMF_VARS_4M.ms.fd".into(),
            swtpm_path: "/usr/bin/swtpm".into(),
            tools_disk: "/usr/local/share/husk/husk-vm-tools.img".into(),
            kernel_args: "root=/dev/vda1 ro console=ttyS0,115200n8".into(),
        }
    }
}

/// The limits a husk-vm container was given (its spec's
/// `linux.resources`), which size its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmLimits {
    pub cpu_quota: Option<u64>,
    pub cpu_period: Option<u64>,
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// husk-vmm where KVM can run a guest (vmx/svm), QEMU otherwise.
    #[default]
    Auto,
    /// husk-vmm, husk's own VMM, on KVM. `"builtin"`, its earlier name, is
    /// still read as a deprecated alias.
    #[serde(rename = "husk-vmm", alias = "builtin")]
    HuskVmm,
    /// qemu-system-x86_64 -M microvm, on KVM or TCG.
    Qemu,
}

impl Backend {
    /// The name `hypervisor.backend` takes for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::HuskVmm => "husk-vmm",
            Backend::Qemu => "qemu",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceleratorChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    pub backend: Backend,
    pub accelerator: AcceleratorChoice,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_params: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub qemu_path: PathBuf,
    /// Under TCG, QEMU's translation cache for a micro-VM in MiB (what an
    /// idle pod's QEMU holds of it: about 30 MiB with QEMU's default, 12
    /// with 16); 0 keeps QEMU's default. A guest running much code may
    /// want more: fewer retranslations for more host memory.
    pub tcg_tb_size_mib: u32,
    /// The husk-vmm binary.
    pub vmm_path: PathBuf,
    pub virtiofsd_path: PathBuf,
    pub vsock_backend_path: PathBuf,
    pub runtime_dir: PathBuf,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            accelerator: AcceleratorChoice::Auto,
            kernel: "/usr/local/share/husk/vmlinux".into(),
            initrd: "/usr/local/share/husk/husk-initrd.cpio".into(),
            kernel_params: String::new(),
            vcpus: 1,
            memory_mib: 256,
            qemu_path: "/usr/bin/qemu-system-x86_64".into(),
            tcg_tb_size_mib: 16,
            vmm_path: "/usr/local/bin/husk-vmm".into(),
            virtiofsd_path: "/usr/local/bin/virtiofsd".into(),
            vsock_backend_path: "/usr/local/bin/vhost-device-vsock".into(),
            runtime_dir: "/run/husk".into(),
        }
    }
}

/// Where the logs of a pod's VM go (the guest console, the VMM's and the
/// device daemons' output) and how they are bounded: every byte of them
/// can come from the guest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    /// Each VM's logs are in `<dir>/<pod id>/`.
    pub dir: PathBuf,
    /// Cap of each log file; a full file is rotated once (to `<name>.1`),
    /// so one log takes at most twice this.
    pub max_file_kib: u64,
    /// What each log may write per second (after a burst of four seconds'
    /// worth); more is dropped, with a note of how much, and the newest
    /// bytes are written when the process ends.
    pub rate_kib_per_sec: u64,
    /// Keep the logs of a VM that was stopped cleanly too; by default only
    /// a VM that failed to boot or died keeps them.
    pub keep_after_stop: bool,
    /// How many ended VMs' logs are kept; the oldest go first.
    pub max_kept_pods: u32,
}

/// Bounds of `[logs]`.
pub const MIN_LOG_FILE_KIB: u64 = 4;
pub const MAX_LOG_FILE_KIB: u64 = 1 << 20;

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            dir: "/var/log/husk".into(),
            max_file_kib: 512,
            rate_kib_per_sec: 64,
            keep_after_stop: false,
            max_kept_pods: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    pub kvm: AccelTimeouts,
    pub tcg: AccelTimeouts,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            kvm: AccelTimeouts {
                agent_ready_secs: 10,
                shutdown_secs: 5,
                agent_call_secs: 10,
                kill_grace_secs: 5,
            },
            tcg: AccelTimeouts {
                agent_ready_secs: 120,
                shutdown_secs: 30,
                agent_call_secs: DEFAULT_AGENT_CALL_SECS,
                kill_grace_secs: DEFAULT_KILL_GRACE_SECS,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccelTimeouts {
    pub agent_ready_secs: u64,
    pub shutdown_secs: u64,
    /// Deadline of every agent call that has an answer to wait for (all
    /// but waiting for a process's exit and its output streams).
    #[serde(default = "default_agent_call_secs")]
    pub agent_call_secs: u64,
    /// After SIGKILL is sent to a container (or the agent did not take
    /// it), how long its processes have to be reported gone before the
    /// shim stops the whole VM.
    #[serde(default = "default_kill_grace_secs")]
    pub kill_grace_secs: u64,
}

/// Defaults of the timeouts added after the first two, for files that
/// do not set them (generous: right under TCG, harmless under KVM).
const DEFAULT_AGENT_CALL_SECS: u64 = 60;
const DEFAULT_KILL_GRACE_SECS: u64 = 30;

fn default_agent_call_secs() -> u64 {
    DEFAULT_AGENT_CALL_SECS
}

fn default_kill_grace_secs() -> u64 {
    DEFAULT_KILL_GRACE_SECS
}

impl Config {
    /// Loads the file named by `HUSK_CONFIG`, else [`DEFAULT_CONFIG_PATH`];
    /// a missing default file means the built-in defaults.
    pub fn load_default() -> Result<Self, ConfigError> {
        match std::env::var_os(CONFIG_ENV) {
            Some(path) => Self::load(Path::new(&path)),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::load(Path::new(DEFAULT_CONFIG_PATH))
            }
            None => {
                let config = Self::default();
                config.validate()?;
                Ok(config)
            }
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// The configuration as a complete `configuration.toml`, every key set:
    /// what a tool hands to a shim it starts (via HUSK_CONFIG).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Config always serializes")
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The VM size for a pod with these annotations, within `[pod]`'s
    /// bounds: what `io.husk.vcpus` and `io.husk.memory_mib` ask; else the
    /// pod's limits as containerd passes them (CPUs rounded up; memory plus
    /// `hypervisor.memory_mib`, the guest's own overhead); else the defaults.
    pub fn pod_size(
        &self,
        annotations: &std::collections::HashMap<String, String>,
    ) -> Result<(u32, u32), ConfigError> {
        let number = |k: &str| {
            annotations
                .get(k)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let from_limits_cpus = match (number(SANDBOX_CPU_QUOTA), number(SANDBOX_CPU_PERIOD)) {
            (Some(quota), Some(period)) if quota > 0 && period > 0 => {
                Some(quota.div_ceil(period).clamp(1, self.pod.max_vcpus as u64))
            }
            _ => None,
        };
        let from_limits_mib = number(SANDBOX_MEMORY).filter(|&b| b > 0).map(|bytes| {
            (bytes.div_ceil(1 << 20) + self.hypervisor.memory_mib as u64)
                .min(self.pod.max_memory_mib as u64)
        });
        // With limits, annotations may size the VM within them (never
        // above what the pod pays for); within `[pod]` always.
        let (cpu_max, cpu_bound) = match from_limits_cpus {
            Some(c) => (c as u32, "the pod's CPU limit"),
            None => (self.pod.max_vcpus, "pod.max_vcpus"),
        };
        let (mem_max, mem_bound) = match from_limits_mib {
            Some(m) => (
                m as u32,
                "the pod's memory limit plus hypervisor.memory_mib",
            ),
            None => (self.pod.max_memory_mib, "pod.max_memory_mib"),
        };
        let get = |key: &'static str, default: u32, min: u32, max: u32, bound: &str| {
            let Some(text) = annotations.get(key) else {
                return Ok(default);
            };
            match text.trim().parse::<u32>() {
                Ok(v) if (min..=max).contains(&v) => Ok(v),
                _ => Err(ConfigError::Annotation {
                    key,
                    message: format!("{text:?} is outside {min}..={max} ({bound})"),
                }),
            }
        };
        Ok((
            get(
                VCPUS_ANNOTATION,
                from_limits_cpus.map_or(self.hypervisor.vcpus, |c| c as u32),
                1,
                cpu_max,
                cpu_bound,
            )?,
            get(
                MEMORY_ANNOTATION,
                from_limits_mib.map_or(self.hypervisor.memory_mib, |m| m as u32),
                MIN_MEMORY_MIB,
                mem_max,
                mem_bound,
            )?,
        ))
    }

    /// The size of a husk-vm pod's VM: what `io.husk.vcpus` and
    /// `io.husk.memory_mib` ask, within the container's limits; else the
    /// limits themselves (CPUs rounded up; the memory limit is the guest's
    /// RAM, QEMU's own use is the RuntimeClass overhead); else `[vm]`'s
    /// defaults. Always within `[pod]`'s bounds.
    pub fn vm_size(
        &self,
        annotations: &std::collections::HashMap<String, String>,
        limits: VmLimits,
    ) -> Result<(u32, u32), ConfigError> {
        let cpus = match (limits.cpu_quota, limits.cpu_period) {
            (Some(q), Some(p)) if q > 0 && p > 0 => {
                Some(q.div_ceil(p).clamp(1, self.pod.max_vcpus as u64) as u32)
            }
            _ => None,
        };
        let mib = limits.memory_bytes.filter(|&b| b > 0).map(|b| {
            (b / (1 << 20)).clamp(MIN_MEMORY_MIB as u64, self.pod.max_memory_mib as u64) as u32
        });
        let vcpus = sized(
            annotations,
            VCPUS_ANNOTATION,
            cpus.unwrap_or(self.vm.vcpus),
            1,
            cpus.map_or((self.pod.max_vcpus, "pod.max_vcpus"), |c| {
                (c, "the container's CPU limit")
            }),
        )?;
        let memory = sized(
            annotations,
            MEMORY_ANNOTATION,
            mib.unwrap_or(self.vm.memory_mib),
            MIN_MEMORY_MIB,
            mib.map_or((self.pod.max_memory_mib, "pod.max_memory_mib"), |m| {
                (m, "the container's memory limit")
            }),
        )?;
        Ok((vcpus, memory))
    }

    /// Range checks that serde cannot express. File existence is checked
    /// where the files are used (the hypervisor's preflight), so that a
    /// config can be validated on a machine without guest artifacts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_sizes_and_paths()?;
        self.validate_logs()?;
        self.validate_pool()?;
        self.validate_vm()?;
        self.validate_timeouts()?;
        self.validate_confinement()
    }

    /// `[hypervisor]` and `[pod]`: the guest's size within its bounds, and
    /// every path absolute.
    fn validate_sizes_and_paths(&self) -> Result<(), ConfigError> {
        let h = &self.hypervisor;
        if h.memory_mib < MIN_MEMORY_MIB || h.memory_mib > MAX_MEMORY_MIB {
            return Err(invalid(
                "hypervisor.memory_mib",
                format!(
                    "must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, got {}",
                    h.memory_mib
                ),
            ));
        }
        if h.vcpus == 0 || h.vcpus > MAX_VCPUS {
            return Err(invalid(
                "hypervisor.vcpus",
                format!("must be between 1 and {MAX_VCPUS}, got {}", h.vcpus),
            ));
        }
        let p = &self.pod;
        if p.max_vcpus < h.vcpus || p.max_vcpus > MAX_VCPUS {
            return Err(invalid(
                "pod.max_vcpus",
                format!(
                    "must be between hypervisor.vcpus ({}) and {MAX_VCPUS}, got {}",
                    h.vcpus, p.max_vcpus
                ),
            ));
        }
        if p.max_memory_mib < h.memory_mib || p.max_memory_mib > MAX_MEMORY_MIB {
            return Err(invalid(
                "pod.max_memory_mib",
                format!(
                    "must be between hypervisor.memory_mib ({}) and {MAX_MEMORY_MIB}, got {}",
                    h.memory_mib, p.max_memory_mib
                ),
            ));
        }
        for (key, path) in [
            ("hypervisor.kernel", &h.kernel),
            ("hypervisor.initrd", &h.initrd),
            ("hypervisor.qemu_path", &h.qemu_path),
            ("hypervisor.vmm_path", &h.vmm_path),
            ("hypervisor.virtiofsd_path", &h.virtiofsd_path),
            ("hypervisor.vsock_backend_path", &h.vsock_backend_path),
            ("hypervisor.runtime_dir", &h.runtime_dir),
            ("logs.dir", &self.logs.dir),
        ] {
            if !path.is_absolute() {
                return Err(invalid(
                    key,
                    format!("must be an absolute path, got {:?}", path),
                ));
            }
        }
        // The kernel command line is one line; a newline or NUL would split
        // or cut it where QEMU and the kernel parse it.
        if h.kernel_params.contains(['\n', '\0']) {
            return Err(invalid(
                "hypervisor.kernel_params",
                "must not contain a newline or NUL".into(),
            ));
        }
        Ok(())
    }

    fn validate_logs(&self) -> Result<(), ConfigError> {
        let l = &self.logs;
        if !(MIN_LOG_FILE_KIB..=MAX_LOG_FILE_KIB).contains(&l.max_file_kib) {
            return Err(invalid(
                "logs.max_file_kib",
                format!(
                    "must be between {MIN_LOG_FILE_KIB} and {MAX_LOG_FILE_KIB}, got {}",
                    l.max_file_kib
                ),
            ));
        }
        if l.rate_kib_per_sec == 0 || l.rate_kib_per_sec > MAX_LOG_FILE_KIB {
            return Err(invalid(
                "logs.rate_kib_per_sec",
                format!(
                    "must be between 1 and {MAX_LOG_FILE_KIB}, got {}",
                    l.rate_kib_per_sec
                ),
            ));
        }
        Ok(())
    }

    /// Each pooled shape within `[pod]`'s bounds, and listed once.
    fn validate_pool(&self) -> Result<(), ConfigError> {
        for shape in &self.pool.shapes {
            if !(1..=self.pod.max_vcpus).contains(&shape.vcpus)
                || !(MIN_MEMORY_MIB..=self.pod.max_memory_mib).contains(&shape.memory_mib)
                || shape.size > MAX_POOL_SIZE
            {
                return Err(invalid(
                    "pool.shapes",
                    format!(
                        "{shape:?}: vcpus must be 1..={}, memory_mib {MIN_MEMORY_MIB}..={}, size at most {MAX_POOL_SIZE}",
                        self.pod.max_vcpus, self.pod.max_memory_mib
                    ),
                ));
            }
        }
        let mut names: Vec<String> = self.pool.shapes.iter().map(PoolShape::name).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("pool.shapes", "a shape is listed twice".into()));
        }
        Ok(())
    }

    /// `[vm]` (husk-vm pods): the default size within `[pod]`'s bounds.
    fn validate_vm(&self) -> Result<(), ConfigError> {
        let p = &self.pod;
        let v = &self.vm;
        if v.vcpus == 0 || v.vcpus > p.max_vcpus {
            return Err(invalid(
                "vm.vcpus",
                format!(
                    "must be between 1 and pod.max_vcpus ({}), got {}",
                    p.max_vcpus, v.vcpus
                ),
            ));
        }
        if v.memory_mib < MIN_MEMORY_MIB || v.memory_mib > p.max_memory_mib {
            return Err(invalid(
                "vm.memory_mib",
                format!(
                    "must be between {MIN_MEMORY_MIB} and pod.max_memory_mib ({}), got {}",
                    p.max_memory_mib, v.memory_mib
                ),
            ));
        }
        for (key, path) in [
            ("vm.qemu_img_path", &v.qemu_img_path),
            ("vm.ovmf_code", &v.ovmf_code),
            ("vm.ovmf_vars", &v.ovmf_vars),
            ("vm.ovmf_code_secure_boot", &v.ovmf_code_secure_boot),
            ("vm.ovmf_vars_secure_boot", &v.ovmf_vars_secure_boot),
            ("vm.swtpm_path", &v.swtpm_path),
            ("vm.tools_disk", &v.tools_disk),
        ] {
            if !path.is_absolute() {
                return Err(invalid(
                    key,
                    format!("must be an absolute path, got {path:?}"),
                ));
            }
        }
        if v.kernel_args.contains(['\n', '\0']) {
            return Err(invalid(
                "vm.kernel_args",
                "must not contain a newline or NUL".into(),
            ));
        }
        Ok(())
    }

    fn validate_timeouts(&self) -> Result<(), ConfigError> {
        for (key, t) in [
            ("timeouts.kvm", &self.timeouts.kvm),
            ("timeouts.tcg", &self.timeouts.tcg),
        ] {
            if t.agent_ready_secs == 0
                || t.shutdown_secs == 0
                || t.agent_call_secs == 0
                || t.kill_grace_secs == 0
            {
                return Err(invalid(key, "timeouts must be at least 1 second".into()));
            }
        }
        Ok(())
    }

    fn validate_confinement(&self) -> Result<(), ConfigError> {
        let c = &self.confinement;
        // Not root's id, and not -1, which set*id(2) read as "unchanged".
        let last = u64::from(c.first_id) + u64::from(c.id_count);
        if c.id_count > 0 && (c.first_id == 0 || last > u64::from(u32::MAX)) {
            return Err(invalid(
                "confinement.first_id",
                format!(
                    "the ids {} to {} must lie within 1..=4294967294",
                    c.first_id,
                    last.saturating_sub(1)
                ),
            ));
        }
        if !c.id_lock.is_absolute() {
            return Err(invalid(
                "confinement.id_lock",
                format!("must be an absolute path, got {:?}", c.id_lock),
            ));
        }
        Ok(())
    }
}

/// The annotation `key` if given, within `min..=max` (`max` named by its
/// bound for the error), else `default`.
fn sized(
    annotations: &std::collections::HashMap<String, String>,
    key: &'static str,
    default: u32,
    min: u32,
    (max, bound): (u32, &str),
) -> Result<u32, ConfigError> {
    let Some(text) = annotations.get(key) else {
        return Ok(default);
    };
    match text.trim().parse::<u32>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(ConfigError::Annotation {
            key,
            message: format!("{text:?} is outside {min}..={max} ({bound})"),
        }),
    }
}

fn invalid(key: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../configuration.toml");

    #[test]
    fn shipped_file_documents_the_defaults() {
        assert_eq!(Config::parse(SHIPPED).unwrap(), Config::default());
    }

    #[test]
    fn to_toml_round_trips_every_key() {
        let mut c = Config::default();
        c.hypervisor.accelerator = AcceleratorChoice::Tcg;
        c.hypervisor.kernel_params = "loglevel=7".into();
        c.hypervisor.runtime_dir = "/tmp/husk run".into();
        c.debug.console = true;
        c.timeouts.tcg.agent_ready_secs = 7;
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn zero_memory_names_the_key() {
        let err = Config::parse("[hypervisor]\nmemory_mib = 0\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("hypervisor.memory_mib"), "{msg}");
        assert!(msg.contains("got 0"), "{msg}");
    }

    #[test]
    fn zero_vcpus_names_the_key() {
        let err = Config::parse("[hypervisor]\nvcpus = 0\n").unwrap_err();
        assert!(err.to_string().contains("hypervisor.vcpus"), "{err}");
    }

    #[test]
    fn backend_names_husk_vmm_and_still_reads_builtin() {
        for (text, backend) in [
            ("auto", Backend::Auto),
            ("husk-vmm", Backend::HuskVmm),
            ("builtin", Backend::HuskVmm),
            ("qemu", Backend::Qemu),
        ] {
            let c = Config::parse(&format!("[hypervisor]\nbackend = \"{text}\"\n")).unwrap();
            assert_eq!(c.hypervisor.backend, backend, "{text}");
        }
        let mut c = Config::default();
        c.hypervisor.backend = Backend::HuskVmm;
        assert!(
            c.to_toml().contains("backend = \"husk-vmm\""),
            "{}",
            c.to_toml()
        );
        assert_eq!(Backend::HuskVmm.as_str(), "husk-vmm");
        let e = Config::parse("[hypervisor]\nbackend = \"firecracker\"\n").unwrap_err();
        assert!(e.to_string().contains("husk-vmm"), "{e}");
    }

    /// The bounds are husk-vmm's: what loads here, husk-vmm accepts.
    #[test]
    fn vcpu_and_memory_bounds_are_husk_vmms() {
        let size = |vcpus: u32, mib: u32| {
            Config::parse(&format!(
                "[hypervisor]\nvcpus = {vcpus}\nmemory_mib = {mib}\n\
                 [pod]\nmax_vcpus = {vcpus}\nmax_memory_mib = {mib}\n"
            ))
        };
        let (max_vcpus, max_mib) = (husk_vmm_config::MAX_VCPUS, husk_vmm_config::MAX_MEMORY_MIB);
        assert!(size(u32::from(max_vcpus), max_mib).is_ok());
        let e = size(u32::from(max_vcpus) + 1, 256).unwrap_err().to_string();
        assert!(e.contains("hypervisor.vcpus") && e.contains("254"), "{e}");
        let e = size(1, max_mib + 1).unwrap_err().to_string();
        assert!(e.contains("hypervisor.memory_mib"), "{e}");
        // And husk-vmm takes the largest VM husk-config lets through.
        let mut vm = husk_vmm_config::VmmConfig::new("/k", "/c");
        (vm.vcpus, vm.memory_mib) = (max_vcpus, MAX_MEMORY_MIB);
        vm.validate().unwrap();
        vm.memory_mib = MIN_MEMORY_MIB;
        vm.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[hypervisor]\nmemory_mb = 128\n").unwrap_err();
        assert!(err.to_string().contains("memory_mb"), "{err}");
    }

    #[test]
    fn pod_bounds_must_cover_the_default_size() {
        let err = Config::parse("[pod]\nmax_vcpus = 0\n").unwrap_err();
        assert!(err.to_string().contains("pod.max_vcpus"), "{err}");
        let err = Config::parse("[hypervisor]\nmemory_mib = 512\n[pod]\nmax_memory_mib = 256\n")
            .unwrap_err();
        assert!(err.to_string().contains("pod.max_memory_mib"), "{err}");
    }

    /// A pod's annotation, checked against the bounds: the size to boot.
    #[test]
    fn pod_annotations_size_the_vm_within_bounds() {
        let c = Config::default();
        let ann = |v: &str, m: &str| {
            std::collections::HashMap::from([
                (VCPUS_ANNOTATION.to_string(), v.to_string()),
                (MEMORY_ANNOTATION.to_string(), m.to_string()),
            ])
        };
        assert_eq!(c.pod_size(&Default::default()).unwrap(), (1, 256));
        assert_eq!(c.pod_size(&ann("2", "512")).unwrap(), (2, 512));
        let e = c.pod_size(&ann("0", "512")).unwrap_err().to_string();
        assert!(
            e.contains("io.husk.vcpus") && e.contains("pod.max_vcpus"),
            "{e}"
        );
        let e = c.pod_size(&ann("1", "999999")).unwrap_err().to_string();
        assert!(
            e.contains("io.husk.memory_mib") && e.contains("4096"),
            "{e}"
        );
        let e = c.pod_size(&ann("two", "512")).unwrap_err().to_string();
        assert!(e.contains("io.husk.vcpus") && e.contains("two"), "{e}");
        // The pod's limits from containerd: 1.5 CPUs and 128 MiB of limits
        // make 2 vCPUs and 128 MiB above the guest's own 256.
        let limits = std::collections::HashMap::from([
            (SANDBOX_CPU_QUOTA.to_string(), "150000".to_string()),
            (SANDBOX_CPU_PERIOD.to_string(), "100000".to_string()),
            (SANDBOX_MEMORY.to_string(), (128u64 << 20).to_string()),
        ]);
        assert_eq!(c.pod_size(&limits).unwrap(), (2, 384));
        // Within its limits, an annotation may size the VM; above them it
        // is refused, naming the annotation and the limit.
        let mut within = limits.clone();
        within.extend(ann("1", "300"));
        assert_eq!(c.pod_size(&within).unwrap(), (1, 300));
        let mut above = limits.clone();
        above.extend(ann("4", "384"));
        let e = c.pod_size(&above).unwrap_err().to_string();
        assert!(
            e.contains("io.husk.vcpus") && e.contains("CPU limit"),
            "{e}"
        );
        let mut above = limits.clone();
        above.extend(ann("2", "2048"));
        let e = c.pod_size(&above).unwrap_err().to_string();
        assert!(
            e.contains("io.husk.memory_mib") && e.contains("memory limit") && e.contains("384"),
            "{e}"
        );
    }

    /// A husk-vm container's limits are its VM's size; annotations size
    /// it within them; without either, `[vm]`'s defaults.
    #[test]
    fn vm_pods_are_sized_by_their_container_limits() {
        let c = Config::default();
        let none = std::collections::HashMap::new();
        assert_eq!(c.vm_size(&none, VmLimits::default()).unwrap(), (1, 1024));
        let limits = VmLimits {
            cpu_quota: Some(150_000),
            cpu_period: Some(100_000),
            memory_bytes: Some(2 << 30),
        };
        assert_eq!(c.vm_size(&none, limits).unwrap(), (2, 2048));
        let ann =
            std::collections::HashMap::from([(MEMORY_ANNOTATION.to_string(), "1536".to_string())]);
        assert_eq!(c.vm_size(&ann, limits).unwrap(), (2, 1536));
        let ann =
            std::collections::HashMap::from([(MEMORY_ANNOTATION.to_string(), "3000".to_string())]);
        let e = c.vm_size(&ann, limits).unwrap_err().to_string();
        assert!(
            e.contains("io.husk.memory_mib") && e.contains("container's memory limit"),
            "{e}"
        );
        // Limits above [pod]'s bounds are cut to them.
        let huge = VmLimits {
            memory_bytes: Some(1 << 40),
            ..limits
        };
        assert_eq!(c.vm_size(&none, huge).unwrap(), (2, 4096));
        let e = Config::parse("[vm]\nmemory_mib = 8192\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vm.memory_mib"), "{e}");
    }

    #[test]
    fn log_bounds_name_the_key() {
        let c = Config::parse("[logs]\ndir = \"/tmp/l\"\nmax_file_kib = 8\n").unwrap();
        assert_eq!(
            (c.logs.dir.to_str(), c.logs.max_file_kib),
            (Some("/tmp/l"), 8)
        );
        for (text, key) in [
            ("dir = \"logs\"", "logs.dir"),
            ("max_file_kib = 1", "logs.max_file_kib"),
            ("max_file_kib = 9999999999", "logs.max_file_kib"),
            ("rate_kib_per_sec = 0", "logs.rate_kib_per_sec"),
        ] {
            let e = Config::parse(&format!("[logs]\n{text}\n")).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_accelerator_lists_the_choices() {
        let err = Config::parse("[hypervisor]\naccelerator = \"hvf\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("hvf") && msg.contains("tcg"), "{msg}");
    }

    #[test]
    fn relative_kernel_path_is_refused() {
        let err = Config::parse("[hypervisor]\nkernel = \"vmlinux\"\n").unwrap_err();
        assert!(err.to_string().contains("hypervisor.kernel"), "{err}");
    }

    #[test]
    fn newline_in_kernel_params_is_refused() {
        let err = Config::parse("[hypervisor]\nkernel_params = \"a\\nb\"\n").unwrap_err();
        assert!(
            err.to_string().contains("hypervisor.kernel_params"),
            "{err}"
        );
    }

    #[test]
    fn zero_timeout_is_refused() {
        let err =
            Config::parse("[timeouts.tcg]\nagent_ready_secs = 0\nshutdown_secs = 3\n").unwrap_err();
        assert!(err.to_string().contains("timeouts.tcg"), "{err}");
    }

    #[test]
    fn vm_ids_stay_clear_of_root_and_of_minus_one() {
        let c = Config::parse("[confinement]\nfirst_id = 100\nid_count = 10\n").unwrap();
        assert_eq!((c.confinement.first_id, c.confinement.id_count), (100, 10));
        for bad in [
            "first_id = 0\nid_count = 10",
            "first_id = 4294967290\nid_count = 6",
        ] {
            let e = Config::parse(&format!("[confinement]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("confinement.first_id"), "{bad}: {e}");
        }
        assert!(Config::parse("[confinement]\nfirst_id = 4294967290\nid_count = 5\n").is_ok());
        // No ids: the helpers stay root, so the range does not matter.
        assert!(Config::parse("[confinement]\nfirst_id = 0\nid_count = 0\n").is_ok());
        let e = Config::parse("[confinement]\nid_lock = \"ids\"\n").unwrap_err();
        assert!(e.to_string().contains("confinement.id_lock"), "{e}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let err = Config::load(&path).unwrap_err();
        assert!(err.to_string().contains("nope.toml"), "{err}");
    }

    #[test]
    fn parse_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[hypervisor\n").unwrap();
        let err = Config::load(&path).unwrap_err();
        assert!(err.to_string().contains("bad.toml"), "{err}");
    }
}
