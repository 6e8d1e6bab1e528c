//! husk-proto: the agent API shared by the host (shim, hypervisor crate) and
//! the guest agent. The `.proto` file is the contract; this crate only
//! generates the tonic/prost code and names the constants both sides agree on.

#![allow(clippy::derive_partial_eq_without_eq)]

/// Generated messages, client and server for `husk.agent.v1`.
pub mod agent {
    tonic::include_proto!("husk.agent.v1");
}

/// The tools channel of a VM image: `kubectl exec -it` without an agent.
pub mod tools;

/// The guest vsock port the agent's gRPC server listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The guest vsock port of the agent's TCP forwarder (port-forward into
/// the pod): `PORT <n>\n`, then `OK\n` or `ERR <reason>\n`, then raw bytes.
pub const FORWARD_VSOCK_PORT: u32 = 1025;

/// The guest vsock port of the debug console: a root shell on a PTY in
/// the guest, outside any container (`husk console`). The agent listens on
/// it only when the kernel command line carries [`DEBUG_CONSOLE_PARAM`].
/// The client's first line is `SIZE <rows> <cols>\n` (0 0: leave the
/// PTY's size); then the stream is the terminal, both ways.
pub const DEBUG_CONSOLE_VSOCK_PORT: u32 = 1026;

/// The kernel parameter that asks the guest for the debug console. It has
/// no dot, so the kernel hands it to /init as an environment variable
/// (`husk_debug_console=1`; Documentation/admin-guide/kernel-parameters.rst),
/// which the agent reads before anything else.
pub const DEBUG_CONSOLE_PARAM: &str = "husk_debug_console=1";

/// The guest's own shared-memory tmpfs. A pod is one VM, so this is the
/// pod's /dev/shm: the shim points the pod's /dev/shm bind mounts (CRI
/// binds a host directory per sandbox) here, keeping shared memory in the
/// guest's RAM and cgroups instead of on a host tmpfs.
pub const GUEST_POD_SHM: &str = "/dev/shm";

/// The virtio-fs tag of the directory the host shares with the guest.
pub const SHARED_FS_TAG: &str = "husk-shared";

/// Where the agent mounts the shared directory inside the guest.
pub const GUEST_SHARED_DIR: &str = "/run/husk/shared";

/// The line the agent writes to the serial console once it listens on
/// vsock. The host connects only after seeing it: a hybrid-vsock CONNECT
/// sent while the guest's vsock driver is still coming up can leave the
/// vsock backend with a request the guest never answers.
pub const AGENT_LISTENING_MARKER: &str = "husk-agent: listening on vsock";

/// Upper bound on what `ReadSharedFile` returns, whatever the caller asks.
pub const MAX_READ_BYTES: u64 = 1 << 20;

/// Largest chunk of container output or input carried in one message.
pub const IO_CHUNK_BYTES: usize = 32 * 1024;

/// Linux capability names in kernel bit order (linux/capability.h): the
/// agent turns them into bits, the shim checks a spec's names with them
/// before a VM is booted for it.
pub const CAPABILITY_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Ids (VMs, containers) become directory, cgroup and process names on
/// both sides: 1 to `max_len` characters of [A-Za-z0-9_.-], not starting
/// with '.' (so never "." or "..").
pub fn is_safe_id(id: &str, max_len: usize) -> bool {
    !id.is_empty()
        && id.len() <= max_len
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_ids() {
        assert!(is_safe_id("pod-1_a.b", 64));
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "ä"] {
            assert!(!is_safe_id(bad, 64), "{bad:?}");
        }
        assert!(is_safe_id(&"x".repeat(64), 64));
        assert!(!is_safe_id(&"x".repeat(65), 64));
    }
}
