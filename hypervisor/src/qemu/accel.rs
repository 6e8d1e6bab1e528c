//! QEMU's `-accel` and `-cpu` for an accelerator, the same for both kinds
//! of VM: KVM with the host's CPU; TCG with `max` (every feature QEMU can
//! emulate; `-cpu host` needs KVM) and, where asked, a bounded translation
//! cache (`tb-size`, MiB: QEMU's own default grows to most of its RSS).

use crate::Accelerator;

/// `-accel`'s value.
pub fn accel(accelerator: Accelerator, tcg_tb_size_mib: u32) -> String {
    match (accelerator, tcg_tb_size_mib) {
        (Accelerator::Tcg, 0) | (Accelerator::Kvm, _) => accelerator.as_str().to_owned(),
        (Accelerator::Tcg, mib) => format!("tcg,tb-size={mib}"),
    }
}

/// `-cpu`'s value.
pub fn cpu(accelerator: Accelerator) -> &'static str {
    match accelerator {
        Accelerator::Kvm => "host",
        Accelerator::Tcg => "max",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_takes_its_cache_size_and_kvm_ignores_it() {
        assert_eq!(accel(Accelerator::Tcg, 16), "tcg,tb-size=16");
        assert_eq!(accel(Accelerator::Tcg, 0), "tcg");
        assert_eq!(accel(Accelerator::Kvm, 16), "kvm");
        assert_eq!(
            (cpu(Accelerator::Tcg), cpu(Accelerator::Kvm)),
            ("max", "host")
        );
    }
}
