//! process.capabilities, in runc's order: shrink the bounding set while
//! still privileged and keep the permitted set across the uid change
//! (`bound`); then, as the container's user, set the effective, permitted
//! and inheritable sets and raise the ambient ones (`set`).

use super::sys::check;
use super::sys::At;
use crate::failure::{Report, Step};
use crate::plan::CapSets;
use nix::errno::Errno;
use nix::libc::{self, c_int, c_ulong};
use nix::sys::prctl::set_keepcaps;

pub(super) fn bound(caps: Option<&CapSets>) -> Result<(), Report> {
    let Some(c) = caps else { return Ok(()) };
    for cap in 0..=c.last_cap {
        if c.bounding.checked_shr(cap).unwrap_or(0) & 1 == 0 {
            prctl(libc::PR_CAPBSET_DROP, c_ulong::from(cap), 0)
                .at(Step::Capabilities, cap as usize)?;
        }
    }
    set_keepcaps(true).at(Step::Capabilities, 0)
}

pub(super) fn set(caps: Option<&CapSets>) -> Result<(), Report> {
    let Some(c) = caps else { return Ok(()) };
    set_keepcaps(false).at(Step::Capabilities, 0)?;
    capset(c).at(Step::Capabilities, 0)?;
    for &cap in &c.ambient {
        prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as c_ulong,
            c_ulong::from(cap),
        )
        .at(Step::Capabilities, cap as usize)?;
    }
    Ok(())
}

/// prctl(2) with integer arguments.
fn prctl(option: c_int, arg2: c_ulong, arg3: c_ulong) -> Result<(), Errno> {
    // SAFETY: the options used here (PR_CAPBSET_DROP, PR_CAP_AMBIENT) take
    // integers only; no memory is passed.
    let ret = unsafe { libc::prctl(option, arg2, arg3, 0, 0) };
    check(ret.into())
}

/// capset(2)'s header and data for _LINUX_CAPABILITY_VERSION_3 (64-bit
/// sets as two 32-bit halves), laid out as linux/capability.h has them.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capset(c: &CapSets) -> Result<(), Errno> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |m: u64, high: bool| if high { (m >> 32) as u32 } else { m as u32 };
    let data = [false, true].map(|high| CapData {
        effective: half(c.effective, high),
        permitted: half(c.permitted, high),
        inheritable: half(c.inheritable, high),
    });
    // SAFETY: capset reads one header and (version 3) two data structs
    // through the pointers, which point at `header` and `data` on this
    // stack frame.
    let ret =
        unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    check(ret)
}
