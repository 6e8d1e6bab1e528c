//! Getting a guest to its first instruction: the kernel, initrd and
//! command line with the boot structures of the entry protocol
//! ([`loader`]), and the MP table that describes the vCPUs and interrupt
//! routing ([`mptable`]).

pub(crate) mod loader;
pub(crate) mod mptable;
