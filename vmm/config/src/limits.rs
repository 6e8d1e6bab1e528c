//! The limits both ends of a husk-vmm launch check against (and
//! husk-config bounds its VM sizes with), and the defaults of what is not
//! given.

use crate::mac::MacAddr;

/// The most vCPUs a guest may have: xAPIC IDs are 8 bits, 0xff is the
/// broadcast ID, and the MP table gives the IOAPIC the ID after the last
/// vCPU. KVM's own limit may be lower; husk-vmm checks that when it starts.
pub const MAX_VCPUS: u8 = 254;
/// The smallest guest: boot structures, a kernel and a stack.
pub const MIN_MEMORY_MIB: u32 = 16;
/// The largest guest, 1 TiB.
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// The longest virtio-fs tag (virtio 1.2, 5.11.4: `char tag[36]`).
pub const FS_TAG_MAX: usize = 36;

/// What `--memory-mib` and `--vcpus` are when not given.
pub const DEFAULT_MEMORY_MIB: u32 = 128;
pub const DEFAULT_VCPUS: u8 = 1;
/// The guest NIC's MAC when `--net-mac` is not given (locally
/// administered, QEMU's default prefix).
pub const DEFAULT_MAC: MacAddr = MacAddr::DEFAULT;

/// The ids an [`Identity`](crate::Identity) may take: not root's, and not -1 (which
/// set*id(2) read as "leave unchanged").
pub const IDENTITY_MIN: u32 = 1;
pub const IDENTITY_MAX: u32 = u32::MAX - 1;
