//! What confines husk-vmm once a VM is set up: a seccomp filter and an
//! empty capability set per thread ([`seccomp`]), an unprivileged identity
//! of the VM's own ([`identity`]), the jail that makes the VM's run
//! directory its whole file system ([`jail`]), and a PID namespace of its
//! own ([`pid_ns`]).

pub(crate) mod identity;
pub(crate) mod jail;
pub(crate) mod pid_ns;
pub(crate) mod seccomp;
