//! The state file's encoding and its parser's refusals, on a made-up
//! state (the KVM tests in vmm/tests/snapshot.rs take real ones).

use super::*;

/// A state with a value in every kind of field: two vCPUs, a net and an
/// rng device.
pub(crate) fn sample() -> VmState {
    let mut irqchips = [kvm_irqchip::default(); 3];
    for (i, c) in irqchips.iter_mut().enumerate() {
        c.chip_id = i as u32;
    }
    let queue = |n: u64| QueueState {
        size: 256,
        ready: true,
        desc: 0x10_0000 * n,
        avail: 0x10_1000 * n,
        used: 0x10_2000 * n,
        next_avail: 7,
        next_used: 7,
    };
    let device = |device_type, queues| DeviceState {
        device_type,
        transport: TransportState {
            status: 0xf,
            driver_features: 1 << 32,
            config_generation: 1,
            interrupt_status: 1,
            queues,
            ..Default::default()
        },
    };
    let vcpu = |rip| {
        let mut v = VcpuState {
            regs: kvm_regs {
                rip,
                rflags: 0x202,
                ..Default::default()
            },
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debugregs: Default::default(),
            lapic: Default::default(),
            mp_state: kvm_mp_state { mp_state: 3 },
            events: Default::default(),
            msrs: vec![kvm_msr_entry {
                index: 0x10,
                data: 0x1234_5678,
                ..Default::default()
            }],
            cpuid: vec![kvm_cpuid_entry2 {
                function: 1,
                eax: 0xabc,
                ..Default::default()
            }],
        };
        v.xsave.region[0] = 0x37f;
        v.lapic.regs[0x20] = 1;
        v
    };
    VmState {
        memory_bytes: 64 << 20,
        clock: kvm_clock_data {
            clock: 123_456,
            ..Default::default()
        },
        irqchips,
        pit: Default::default(),
        serial: SerialState {
            in_buffer: b"ab".to_vec(),
            ..Default::default()
        },
        devices: vec![
            device(1, vec![queue(1), queue(2)]),
            device(4, vec![queue(3)]),
        ],
        vcpus: vec![vcpu(0x10_0000), vcpu(0x20_0000)],
    }
}

fn error(bytes: &[u8]) -> String {
    match decode(bytes) {
        Ok(_) => panic!("decoded"),
        Err(e) => e.to_string(),
    }
}

/// The file with `f` applied to its body, the header's length fixed up.
fn edited(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let file = encode(&sample());
    let mut body = file[HEADER_BYTES..].to_vec();
    f(&mut body);
    let mut out = file[..12].to_vec();
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn a_state_reads_back_as_written() {
    let file = encode(&sample());
    let back = decode(&file).unwrap();
    assert_eq!(encode(&back), file);
    assert_eq!(back.memory_bytes, 64 << 20);
    assert_eq!(back.clock.clock, 123_456);
    assert_eq!(back.serial.in_buffer, b"ab");
    assert_eq!(back.devices, sample().devices);
    assert_eq!(back.vcpus.len(), 2);
    assert_eq!(back.vcpus[1].regs.rip, 0x20_0000);
    assert_eq!(back.vcpus[0].xsave.region[0], 0x37f);
    assert_eq!(back.vcpus[0].msrs[0].data, 0x1234_5678);
    assert_eq!(back.vcpus[0].cpuid[0].eax, 0xabc);
    assert_eq!(back.irqchips[2].chip_id, 2);
}

#[test]
fn a_file_cut_anywhere_is_refused() {
    let file = encode(&sample());
    for len in 0..file.len() {
        let e = decode(&file[..len]).err().map(|e| e.why);
        assert!(
            matches!(
                e,
                Some(Why::Truncated { .. } | Why::Length { .. } | Why::Magic(_))
            ),
            "{len}: {e:?}"
        );
    }
}

#[test]
fn no_flipped_byte_panics() {
    let file = encode(&sample());
    for i in 0..file.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut f = file.clone();
            f[i] ^= flip;
            let _ = decode(&f);
        }
    }
}

#[test]
fn the_header_is_checked() {
    let mut f = encode(&sample());
    f[0] = b'X';
    assert!(error(&f).contains("magic at byte 0: not a husk-vmm snapshot"));
    let mut f = encode(&sample());
    f[8] = 2;
    assert!(
        error(&f).contains("version at byte 8: format version 2; this husk-vmm reads version 1")
    );
    let mut f = encode(&sample());
    f.push(0);
    let e = error(&f);
    assert!(
        e.contains("body length at byte 12: the header declares"),
        "{e}"
    );
    let f = edited(|b| b.push(0));
    assert!(error(&f).contains("end at byte"), "{}", error(&f));
    assert!(error(&f).contains("1 bytes after the end of the state"));
    let huge = vec![0u8; MAX_STATE_BYTES + 1];
    assert!(error(&huge).contains("over the limit"));
}

#[test]
fn counts_sizes_and_flags_are_bounded() {
    // Memory size: the first body field.
    let f = edited(|b| b[..8].copy_from_slice(&((64u64 << 20) + 1).to_le_bytes()));
    assert!(error(&f).contains("memory size at byte 20: 0x4000001: whole MiB"));
    let f = edited(|b| b[..8].copy_from_slice(&(8u64 << 20).to_le_bytes()));
    assert!(error(&f).contains("memory size"));
    // The clock's length prefix.
    let f = edited(|b| b[8..12].copy_from_slice(&47u32.to_le_bytes()));
    assert!(error(&f).contains("clock at byte 28: 47 bytes, this structure has 48"));
    // The first irqchip's chip id (after its length prefix).
    let chip0 = 8 + 4 + 48 + 4;
    let f = edited(|b| b[chip0] = 1);
    assert!(error(&f).contains("irqchip at byte"), "{}", error(&f));
    assert!(error(&f).contains("0x1: chips 0, 1, 2"));
}

/// Offsets into the sample's body, found by what precedes them.
fn serial_offset() -> usize {
    let chip = 4 + std::mem::size_of::<kvm_irqchip>();
    let pit = 4 + std::mem::size_of::<kvm_pit_state2>();
    8 + 4 + 48 + 3 * chip + pit
}

#[test]
fn serial_devices_and_queues_are_bounded() {
    let fifo = serial_offset() + 9;
    let f = edited(|b| b[fifo] = 65);
    assert!(error(&f).contains("serial FIFO at byte"), "{}", error(&f));
    assert!(error(&f).contains("65 entries, 0 to 64 allowed"));
    let devices = fifo + 1 + 2;
    let f = edited(|b| b[devices] = 9);
    assert!(error(&f).contains("devices at byte"));
    assert!(error(&f).contains("9 entries, 0 to 8 allowed"));
    // Device 0's queue count, after its type and 7 registers (one u64).
    let queues = devices + 1 + 4 + 4 * 6 + 8;
    let f = edited(|b| b[queues] = 17);
    assert!(error(&f).contains("device 0 queues"), "{}", error(&f));
    // Queue 0's ready flag, after its size.
    let ready = queues + 1 + 4;
    let f = edited(|b| b[ready] = 2);
    assert!(
        error(&f).contains("device 0 queue 0 ready"),
        "{}",
        error(&f)
    );
    assert!(error(&f).contains("0x2: 0 or 1"));
}

#[test]
fn vcpus_msrs_and_cpuid_are_bounded() {
    let state = sample();
    let no_vcpus = encode(&VmState {
        vcpus: Vec::new(),
        ..state.clone()
    });
    assert!(error(&no_vcpus).contains("vCPUs at byte"));
    assert!(error(&no_vcpus).contains("0 entries, 1 to 254 allowed"));
    let mut many = state.clone();
    many.vcpus = vec![state.vcpus[0].clone(); 255];
    assert!(error(&encode(&many)).contains("255 entries, 1 to 254 allowed"));
    let mut msrs = state.clone();
    msrs.vcpus[1].msrs = vec![kvm_msr_entry::default(); MAX_MSRS + 1];
    let e = error(&encode(&msrs));
    assert!(e.contains("vCPU 1 MSRs at byte"), "{e}");
    assert!(e.contains("513 entries, 0 to 512 allowed"), "{e}");
    let mut cpuid = state;
    cpuid.vcpus[0].cpuid = vec![kvm_cpuid_entry2::default(); MAX_CPUID + 1];
    let e = error(&encode(&cpuid));
    assert!(e.contains("vCPU 0 CPUID entries"), "{e}");
}
