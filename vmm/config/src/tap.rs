//! TAP devices as both VMM backends want them: opened by the shim in the
//! pod's network namespace and passed to the VMM, which sees only the fd.
//!
//! Every husk TAP carries the 12-byte `virtio_net_hdr_v1` (IFF_VNET_HDR),
//! so a frame and its offload metadata (checksum needed, GSO type and size)
//! cross in one read or write. QEMU probes the flag on a passed fd and uses
//! it the same way; husk-vmm refuses a TAP without it rather than corrupt
//! every frame by 12 bytes.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
pub const VNET_HDR_LEN: usize = 12;

/// The one ioctl [`set_offloads`] makes; husk-vmm's device filter allows
/// exactly it.
pub use libc::TUNSETOFFLOAD;
use libc::{TUNGETIFF, TUNSETIFF, TUNSETVNETHDRSZ};
/// Offloads the guest may take from the TAP (TUNSETOFFLOAD flags,
/// linux/if_tun.h).
pub use libc::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};

/// The flags every husk TAP has.
const FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP {name:?}: interface names are 1 to 15 bytes")]
    Name { name: String },
    #[error("TAP {tap}: {what}: {error}")]
    Sys {
        tap: String,
        what: &'static str,
        #[source]
        error: std::io::Error,
    },
    #[error("TAP {tap}: opened with flags {flags:#x}, not a TAP with IFF_NO_PI and IFF_VNET_HDR")]
    Flags { tap: String, flags: u32 },
}

/// struct ifreq: the name, then the flags (a short) in the union.
type IfReq = [u8; 40];

/// Opens (or creates) TAP interface `name` in the caller's network
/// namespace: non-blocking, with the vnet header, every offload off until
/// a guest driver asks for them.
pub fn open_tap(name: &str) -> Result<File, TapError> {
    check_name(name)?;
    let err = |what| {
        move |error| TapError::Sys {
            tap: name.into(),
            what,
            error,
        }
    };
    let path = c"/dev/net/tun";
    // SAFETY: a valid C string and flags.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(err("opening /dev/net/tun")(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let tap = unsafe { File::from_raw_fd(fd) };
    let mut ifreq: IfReq = [0; 40];
    ifreq[..name.len()].copy_from_slice(name.as_bytes());
    ifreq[16..18].copy_from_slice(&(FLAGS as i16).to_le_bytes());
    // SAFETY: TUNSETIFF reads and writes one ifreq we own.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) } < 0 {
        return Err(err("TUNSETIFF")(std::io::Error::last_os_error()));
    }
    prepare(tap, name)
}

/// An interface name the kernel takes: 1 to 15 bytes (IFNAMSIZ with the
/// NUL), no NUL.
pub fn check_name(name: &str) -> Result<(), TapError> {
    if name.is_empty() || name.len() > 15 || name.contains('\0') {
        return Err(TapError::Name { name: name.into() });
    }
    Ok(())
}

/// Checks a TAP fd passed in (`what` names it in errors) and sets it up
/// as [`open_tap`] does.
pub fn adopt_tap(tap: File, what: &str) -> Result<File, TapError> {
    let mut ifreq: IfReq = [0; 40];
    // SAFETY: TUNGETIFF writes one ifreq we own.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNGETIFF, ifreq.as_mut_ptr()) } < 0 {
        return Err(TapError::Sys {
            tap: what.into(),
            what: "TUNGETIFF (is it a TAP?)",
            error: std::io::Error::last_os_error(),
        });
    }
    let name_len = ifreq[..16].iter().position(|b| *b == 0).unwrap_or(16);
    let tap_name = format!("{what} ({})", String::from_utf8_lossy(&ifreq[..name_len]));
    let flags = u32::from(u16::from_le_bytes([ifreq[16], ifreq[17]]));
    // Other flags (IFF_ONE_QUEUE, IFF_NOFILTER...) may be set too.
    if flags & FLAGS as u32 != FLAGS as u32 {
        return Err(TapError::Flags {
            tap: tap_name,
            flags,
        });
    }
    prepare(tap, &tap_name)
}

/// Non-blocking (a device thread reads until EAGAIN), the vnet header
/// length, and no offloads.
fn prepare(tap: File, name: &str) -> Result<File, TapError> {
    // SAFETY: F_GETFL/F_SETFL on an fd we own.
    let nonblocking = unsafe {
        let flags = libc::fcntl(tap.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(tap.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !nonblocking {
        return Err(TapError::Sys {
            tap: name.into(),
            what: "setting O_NONBLOCK",
            error: std::io::Error::last_os_error(),
        });
    }
    let hdr_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int we own.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) } < 0 {
        return Err(TapError::Sys {
            tap: name.into(),
            what: "TUNSETVNETHDRSZ",
            error: std::io::Error::last_os_error(),
        });
    }
    set_offloads(&tap, 0).map_err(|error| TapError::Sys {
        tap: name.into(),
        what: "TUNSETOFFLOAD",
        error,
    })?;
    Ok(tap)
}

/// Which offloaded frames the TAP may hand its reader (TUN_F_* bits):
/// only those the guest driver has said it takes.
pub fn set_offloads(tap: &File, flags: u32) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_system_call() {
        for bad in ["", "sixteen-bytes-xx", "a\0b"] {
            let e = open_tap(bad).unwrap_err().to_string();
            assert!(e.contains("interface names are 1 to 15 bytes"), "{e}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_tap_is_refused_by_name() {
        let f = tempfile::tempfile().unwrap();
        let e = adopt_tap(f, "--net-tap fd:3").unwrap_err().to_string();
        assert!(
            e.starts_with("TAP --net-tap fd:3: TUNGETIFF (is it a TAP?)"),
            "{e}"
        );
    }
}
