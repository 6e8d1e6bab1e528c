//! The files a VM image's QEMU is handed as descriptors (every disk,
//! the firmware's flash): how each is opened, and the `-add-fd` and
//! `-blockdev` options that name them by fd set, never by path. Shared by
//! the VM's own files ([`super::vm_image`]) and its extras
//! ([`super::vm_extras`]).

use std::path::PathBuf;

fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// How a file is given to QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// A file QEMU gets as a descriptor: opened by the launcher, at the
/// descriptor `fd` in QEMU, in the fd set `set` (`/dev/fdset/<set>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedFile {
    pub path: PathBuf,
    pub access: Access,
    /// Whether it must be a block device (a volume) or a regular file.
    pub block_device: bool,
}

/// Hands out the passed files' descriptors in the order of
/// [`super::vm_image::files`],
/// one fd set each.
pub(crate) struct Files {
    next_fd: i32,
    next_set: u32,
    /// The `-add-fd` options.
    args: Vec<String>,
}

impl Files {
    /// Descriptors from `first_fd` on, fd sets from 1.
    pub(crate) fn new(first_fd: i32) -> Self {
        Self {
            next_fd: first_fd,
            next_set: 1,
            args: Vec::new(),
        }
    }

    /// The `-add-fd` options, taken.
    pub(crate) fn take_args(&mut self) -> Vec<String> {
        std::mem::take(&mut self.args)
    }

    /// The next passed descriptor in an fd set of its own: the set.
    pub(crate) fn add_fd(&mut self) -> u32 {
        let (fd, set) = (self.next_fd, self.next_set);
        self.next_fd += 1;
        self.next_set += 1;
        self.args
            .extend(strs(&["-add-fd", &format!("fd={fd},set={set}")]));
        set
    }

    /// A `file` (or `host_device`) node named `<node>-file` on the next
    /// passed descriptor.
    pub(crate) fn node(
        &mut self,
        driver: &str,
        node: &str,
        access: Access,
        extra: &str,
    ) -> Vec<String> {
        let set = self.add_fd();
        let ro = match access {
            Access::ReadOnly => ",read-only=on",
            Access::ReadWrite => "",
        };
        strs(&[
            "-blockdev",
            &format!("driver={driver},filename=/dev/fdset/{set},node-name={node}-file{ro}{extra}"),
        ])
    }
}
