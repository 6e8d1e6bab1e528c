//! process.rlimits, each a setrlimit(2).

use super::sys::At;
use crate::failure::{Report, Step};
use crate::plan::Rlimit;
use nix::sys::resource::setrlimit;

pub(super) fn set(rlimits: &[Rlimit]) -> Result<(), Report> {
    for (i, r) in rlimits.iter().enumerate() {
        setrlimit(r.resource, r.soft, r.hard).at(Step::Rlimit, i)?;
    }
    Ok(())
}
