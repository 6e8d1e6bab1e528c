//! An init sets the spec's hostname, in the container's UTS
//! namespace.

use super::sys::At;
use crate::failure::{Report, Step};
use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;

pub(super) fn set(hostname: Option<&CStr>) -> Result<(), Report> {
    match hostname {
        Some(h) => nix::unistd::sethostname(OsStr::from_bytes(h.to_bytes())).at(Step::Hostname, 0),
        None => Ok(()),
    }
}
