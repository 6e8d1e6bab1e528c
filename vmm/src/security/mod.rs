//! What confines husk-vmm once a VM is set up: a seccomp filter and an
//! empty capability set per thread ([`seccomp`]), and the jail that makes
//! the VM's run directory its whole file system ([`jail`]).

pub(crate) mod jail;
pub(crate) mod seccomp;
