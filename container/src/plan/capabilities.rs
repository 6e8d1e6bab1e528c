//! `process.capabilities` (runtime-spec config.md, "Linux process"): the
//! five sets' names to kernel bit masks, limited to what the guest kernel
//! knows. The child applies them with raw prctl/capset (`child::capabilities`).

use super::error::{bad, SpecError};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

/// Capability names in kernel bit order (shared with the shim, which
/// checks a spec's names before it boots a VM).
use husk_proto::CAPABILITY_NAMES as NAMES;

/// The five sets as bit masks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    /// The ambient set as bit numbers, each raised on its own.
    pub ambient: Vec<u32>,
    /// The highest capability the kernel knows.
    pub last_cap: u32,
}

/// None when the spec sets none: the process keeps the agent's.
pub(crate) fn from_spec(caps: Option<&LinuxCapabilities>) -> Result<Option<CapSets>, SpecError> {
    let Some(c) = caps else { return Ok(None) };
    let names = |set: &Option<Capabilities>| {
        set.as_ref().map(|s| {
            s.iter()
                .filter_map(|cap| serde_json::to_value(cap).ok()?.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
    };
    CapSets::from_names(
        [
            names(c.bounding()),
            names(c.effective()),
            names(c.permitted()),
            names(c.inheritable()),
            names(c.ambient()),
        ],
        kernel_last_cap(),
    )
    .map(Some)
}

fn bit(field: &str, name: &str) -> Result<u32, SpecError> {
    NAMES
        .iter()
        .position(|n| *n == name)
        .map(|p| p as u32)
        .ok_or_else(|| bad(field, format!("unknown capability {name:?}")))
}

fn mask<'a>(
    field: &str,
    names: impl IntoIterator<Item = &'a str>,
    known: u64,
) -> Result<u64, SpecError> {
    let mut m = 0u64;
    for n in names {
        m |= 1 << bit(field, n)?;
    }
    Ok(m & known)
}

impl CapSets {
    /// From the spec's lists of names (each None = empty set).
    fn from_names(sets: [Option<Vec<String>>; 5], last_cap: u32) -> Result<Self, SpecError> {
        let known = if last_cap >= 63 {
            u64::MAX
        } else {
            (1u64 << (last_cap + 1)) - 1
        };
        let [bounding, effective, permitted, inheritable, ambient] = sets;
        let m = |field: &str, v: &Option<Vec<String>>| {
            let list = v.clone().unwrap_or_default();
            mask(field, list.iter().map(String::as_str), known)
        };
        let ambient_mask = m("process.capabilities.ambient", &ambient)?;
        Ok(CapSets {
            bounding: m("process.capabilities.bounding", &bounding)?,
            effective: m("process.capabilities.effective", &effective)?,
            permitted: m("process.capabilities.permitted", &permitted)?,
            inheritable: m("process.capabilities.inheritable", &inheritable)?,
            ambient: (0..=last_cap.min(63))
                .filter(|b| ambient_mask & (1 << b) != 0)
                .collect(),
            last_cap,
        })
    }
}

/// The highest capability the running kernel knows.
fn kernel_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(NAMES.len() as u32 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(names: &[&str]) -> Option<Vec<String>> {
        Some(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn names_become_kernel_bits() {
        let c = CapSets::from_names(
            [
                v(&["CAP_CHOWN", "CAP_KILL"]),
                v(&["CAP_KILL"]),
                v(&["CAP_KILL"]),
                None,
                v(&["CAP_NET_RAW"]),
            ],
            40,
        )
        .unwrap();
        assert_eq!(c.bounding, (1 << 0) | (1 << 5));
        assert_eq!(c.effective, 1 << 5);
        assert_eq!(c.inheritable, 0);
        assert_eq!(c.ambient, vec![13]);
    }

    #[test]
    fn caps_the_kernel_lacks_are_dropped_from_the_masks() {
        let c = CapSets::from_names(
            [
                v(&["CAP_CHECKPOINT_RESTORE", "CAP_CHOWN"]),
                None,
                None,
                None,
                None,
            ],
            39,
        )
        .unwrap();
        assert_eq!(c.bounding, 1);
    }

    #[test]
    fn unknown_names_name_the_field() {
        let e = CapSets::from_names([None, v(&["CAP_FLY"]), None, None, None], 40).unwrap_err();
        assert_eq!(e.field(), "process.capabilities.effective");
        assert!(e.to_string().contains("CAP_FLY"));
    }

    #[test]
    fn the_specs_sets_reach_the_masks() {
        let caps: LinuxCapabilities = serde_json::from_value(serde_json::json!({
            "bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"]
        }))
        .unwrap();
        let c = from_spec(Some(&caps)).unwrap().unwrap();
        assert_eq!(
            (c.bounding, c.effective, c.permitted),
            (0b10_0001, 1 << 5, 0)
        );
        assert_eq!(from_spec(None).unwrap(), None);
    }
}
