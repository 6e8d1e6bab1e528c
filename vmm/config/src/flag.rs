//! husk-vmm's flags, by name, and its usage line.

pub(crate) const KERNEL: &str = "--kernel";
pub(crate) const INITRD: &str = "--initrd";
pub(crate) const CMDLINE: &str = "--cmdline";
pub(crate) const MEMORY_MIB: &str = "--memory-mib";
pub(crate) const VCPUS: &str = "--vcpus";
pub(crate) const CONSOLE_LOG: &str = "--console-log";
pub(crate) const SECCOMP: &str = "--seccomp";
pub(crate) const VSOCK_SOCKET: &str = "--vsock-socket";
pub(crate) const FS_SOCKET: &str = "--fs-socket";
pub(crate) const FS_TAG: &str = "--fs-tag";
pub(crate) const NET_TAP: &str = "--net-tap";
pub(crate) const NET_MAC: &str = "--net-mac";
pub(crate) const RNG: &str = "--rng";
pub(crate) const JAIL: &str = "--jail";
pub(crate) const UID: &str = "--uid";
pub(crate) const GID: &str = "--gid";
pub(crate) const NEW_PID_NS: &str = "--new-pid-ns";
pub(crate) const MEMORY_FILE: &str = "--memory-file";
pub(crate) const SNAPSHOT_TO: &str = "--snapshot-to";
pub(crate) const RESTORE_FROM: &str = "--restore-from";

/// Every flag; only `--rng` and `--new-pid-ns` take no value.
pub(crate) const ALL: [&str; 20] = [
    KERNEL,
    INITRD,
    CMDLINE,
    MEMORY_MIB,
    VCPUS,
    CONSOLE_LOG,
    SECCOMP,
    VSOCK_SOCKET,
    FS_SOCKET,
    FS_TAG,
    NET_TAP,
    NET_MAC,
    RNG,
    JAIL,
    UID,
    GID,
    NEW_PID_NS,
    MEMORY_FILE,
    SNAPSHOT_TO,
    RESTORE_FROM,
];

/// `--net-tap fd:N`: a descriptor passed down, not an interface name.
pub(crate) const TAP_FD_PREFIX: &str = "fd:";

pub const USAGE: &str = "usage: husk-vmm --kernel PATH [--initrd PATH] [--cmdline STRING] \
[--memory-mib N] [--vcpus N] --console-log PATH [--seccomp kill|log|off] \
[--vsock-socket PATH] [--fs-socket PATH --fs-tag TAG] [--net-tap NAME|fd:N [--net-mac MAC]] \
[--rng] [--jail DIR] [--uid UID --gid GID] [--new-pid-ns] \
[--memory-file PATH --snapshot-to PATH]
   or: husk-vmm --memory-file PATH --restore-from PATH [the same options, without \
--kernel, --initrd and --cmdline]";
