//! `process.rlimits` (runtime-spec config.md, "POSIX process"): each a
//! setrlimit the child makes before it waits for Start.

use super::error::{bad, SpecError};
use nix::sys::resource::Resource;
use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

#[derive(Debug, PartialEq)]
pub(crate) struct Rlimit {
    pub resource: Resource,
    pub soft: u64,
    pub hard: u64,
}

pub(crate) fn from_spec(rlimits: Option<&Vec<PosixRlimit>>) -> Result<Vec<Rlimit>, SpecError> {
    rlimits
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            Ok(Rlimit {
                resource: resource(r.typ()).ok_or_else(|| {
                    bad(
                        format!("process.rlimits[{i}].type"),
                        format!("{:?} is unknown", r.typ()),
                    )
                })?,
                soft: r.soft(),
                hard: r.hard(),
            })
        })
        .collect()
}

fn resource(typ: PosixRlimitType) -> Option<Resource> {
    use PosixRlimitType as T;
    use Resource as R;
    Some(match typ {
        T::RlimitCpu => R::RLIMIT_CPU,
        T::RlimitFsize => R::RLIMIT_FSIZE,
        T::RlimitData => R::RLIMIT_DATA,
        T::RlimitStack => R::RLIMIT_STACK,
        T::RlimitCore => R::RLIMIT_CORE,
        T::RlimitRss => R::RLIMIT_RSS,
        T::RlimitNproc => R::RLIMIT_NPROC,
        T::RlimitNofile => R::RLIMIT_NOFILE,
        T::RlimitMemlock => R::RLIMIT_MEMLOCK,
        T::RlimitAs => R::RLIMIT_AS,
        T::RlimitLocks => R::RLIMIT_LOCKS,
        T::RlimitSigpending => R::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
        T::RlimitNice => R::RLIMIT_NICE,
        T::RlimitRtprio => R::RLIMIT_RTPRIO,
        T::RlimitRttime => R::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimits_keep_their_order_and_values() {
        let list: Vec<PosixRlimit> = serde_json::from_value(serde_json::json!([
            {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096},
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
        ]))
        .unwrap();
        assert_eq!(
            from_spec(Some(&list)).unwrap(),
            [
                Rlimit {
                    resource: Resource::RLIMIT_NOFILE,
                    soft: 1024,
                    hard: 4096
                },
                Rlimit {
                    resource: Resource::RLIMIT_CORE,
                    soft: 0,
                    hard: 0
                }
            ]
        );
        assert!(from_spec(None).unwrap().is_empty());
    }
}
