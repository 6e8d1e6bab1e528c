//! The snapshot state file: everything a paused VM is besides its RAM
//! ([`VmState`]), how it is written ([`encode`]) and read back
//! ([`decode`]). The RAM is the template's memory file, not in here.
//!
//! The file is read as hostile input (it lies in a directory a tamperer
//! may write): [`decode`] checks the magic and version, that the declared
//! length is the file's, every count against its limit, every KVM
//! structure's length against the structure's, every flag byte, and that
//! nothing follows the end; errors name the field and its byte offset.
//! What the structure cannot show (that the VM matches the clone's
//! configuration, that queue rings lie in guest RAM, that KVM accepts the
//! registers) is checked where the state is applied.
//!
//! Layout, integers little-endian, version [`VERSION`]:
//!
//! ```text
//! header  "HUSKSNAP"  u32 version  u64 body length
//! body    u64 memory bytes
//!         kvm_clock_data, kvm_irqchip x3 (PIC master, slave, IOAPIC),
//!         kvm_pit_state2
//!         serial: 9 register bytes, u8 FIFO length, FIFO bytes
//!         u8 devices, each: u32 device type, transport (7 registers),
//!            u8 queues, each: u32 size, u8 ready, u64 desc/avail/used,
//!            u16 next_avail, u16 next_used
//!         u16 vCPUs, each: kvm_regs, kvm_sregs, kvm_xsave, kvm_xcrs,
//!            kvm_debugregs, kvm_lapic_state, kvm_mp_state,
//!            kvm_vcpu_events; u16 MSRs (u32 index, u64 value each);
//!            u16 CPUID entries (kvm_cpuid_entry2 each)
//! ```
//!
//! Each KVM structure is stored as u32 length + its bytes (zerocopy,
//! whose derives in kvm-bindings prove at compile time that the structure
//! has no padding, so every byte is defined and every bit pattern valid).
//! Hand-written rather than serde + a format crate: the structures are
//! fixed-size C structs, the whole format is a page of code, and a
//! general deserializer would still need every check above (kvm-bindings'
//! own serde impls pad a short structure with zeros instead of failing).

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use vm_superio::serial::SerialState;
use zerocopy::{FromBytes, Immutable, IntoBytes};

pub const MAGIC: [u8; 8] = *b"HUSKSNAP";
pub const VERSION: u32 = 1;
/// The largest state file read: 254 vCPUs with every list full take
/// about 4 MiB.
pub const MAX_STATE_BYTES: usize = 8 << 20;
const HEADER_BYTES: usize = 8 + 4 + 8;
/// virtio-mmio devices a VM has at most (the interrupt lines for them).
pub const MAX_DEVICES: usize = crate::memory::VIRTIO_IRQS.len();
/// Queues one device has at most (vsock has 3).
pub const MAX_QUEUES: usize = 16;
/// MSRs saved per vCPU at most (KVM lists about 40 to 100).
pub const MAX_MSRS: usize = 512;
/// CPUID entries per vCPU at most: what KVM_GET_SUPPORTED_CPUID returns.
pub const MAX_CPUID: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;
/// vm-superio's receive FIFO (64 bytes; `Serial::from_state` refuses more).
pub const SERIAL_FIFO: usize = 64;
const MIB: u64 = 1 << 20;

/// A paused VM, less its RAM.
#[derive(Clone)]
pub struct VmState {
    /// The guest RAM's size: the memory file's and the clone's.
    pub memory_bytes: u64,
    pub clock: kvm_clock_data,
    /// PIC master, PIC slave, IOAPIC (KVM_GET_IRQCHIP chip 0, 1, 2).
    pub irqchips: [kvm_irqchip; 3],
    pub pit: kvm_pit_state2,
    pub serial: SerialState,
    /// The virtio-mmio devices in slot order.
    pub devices: Vec<DeviceState>,
    pub vcpus: Vec<VcpuState>,
}

// A summary: the KVM structures are kilobytes of registers.
impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("memory_bytes", &self.memory_bytes)
            .field("vcpus", &self.vcpus.len())
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

/// One virtio-mmio slot: which device, and its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    /// virtio device ID (1 net, 4 rng).
    pub device_type: u32,
    pub transport: TransportState,
}

/// The virtio-mmio registers the driver wrote, as the transport keeps
/// them, and each queue's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransportState {
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub config_generation: u32,
    /// InterruptStatus bits not yet acknowledged.
    pub interrupt_status: u32,
    pub queues: Vec<QueueState>,
}

/// One queue: what the driver set up, and where the device was in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueState {
    pub size: u32,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_avail: u16,
    pub next_used: u16,
}

/// One vCPU's architectural state, as KVM reports it.
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    pub msrs: Vec<kvm_msr_entry>,
    pub cpuid: Vec<kvm_cpuid_entry2>,
}

// By hand: kvm_xsave ends in a zero-length array, which derives nothing.
impl Clone for VcpuState {
    fn clone(&self) -> Self {
        VcpuState {
            xsave: kvm_xsave {
                region: self.xsave.region,
                ..Default::default()
            },
            msrs: self.msrs.clone(),
            cpuid: self.cpuid.clone(),
            ..*self
        }
    }
}

/// What is wrong with a state file, and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field} at byte {offset}: {why}")]
pub struct FormatError {
    /// The field, with the vCPU or device it belongs to.
    pub field: String,
    pub offset: usize,
    pub why: Why,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Why {
    #[error("needs {need} bytes, {left} left (the file is cut short)")]
    Truncated { need: usize, left: usize },
    #[error("not a husk-vmm snapshot state (magic {0:02x?})")]
    Magic(Vec<u8>),
    #[error("format version {0}; this husk-vmm reads version {VERSION}")]
    Version(u32),
    #[error("the header declares {declared} bytes of state, the file has {actual}")]
    Length { declared: u64, actual: usize },
    #[error("the file is over the limit of {MAX_STATE_BYTES} bytes")]
    TooLarge,
    #[error("{count} entries, {min} to {max} allowed")]
    Count {
        count: usize,
        min: usize,
        max: usize,
    },
    #[error("{found} bytes, this structure has {expected}")]
    Size { found: usize, expected: usize },
    #[error("{value:#x}: {expected}")]
    Value { value: u64, expected: &'static str },
    #[error("{0} bytes after the end of the state")]
    Trailing(usize),
}

impl FormatError {
    /// The same error inside `what` (a vCPU, a device).
    fn within(mut self, what: impl std::fmt::Display) -> Self {
        self.field = format!("{what} {}", self.field);
        self
    }
}

/// The state as the bytes of a state file.
pub fn encode(state: &VmState) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64 << 10));
    w.u64(state.memory_bytes);
    w.pod(&state.clock);
    for chip in &state.irqchips {
        w.pod(chip);
    }
    w.pod(&state.pit);
    let s = &state.serial;
    w.0.extend_from_slice(&[
        s.baud_divisor_low,
        s.baud_divisor_high,
        s.interrupt_enable,
        s.interrupt_identification,
        s.line_control,
        s.line_status,
        s.modem_control,
        s.modem_status,
        s.scratch,
    ]);
    w.u8(s.in_buffer.len() as u8);
    w.0.extend_from_slice(&s.in_buffer);
    w.u8(state.devices.len() as u8);
    for d in &state.devices {
        w.u32(d.device_type);
        let t = &d.transport;
        w.u32(t.status);
        w.u32(t.device_features_sel);
        w.u32(t.driver_features_sel);
        w.u64(t.driver_features);
        w.u32(t.queue_sel);
        w.u32(t.config_generation);
        w.u32(t.interrupt_status);
        w.u8(t.queues.len() as u8);
        for q in &t.queues {
            w.u32(q.size);
            w.u8(u8::from(q.ready));
            w.u64(q.desc);
            w.u64(q.avail);
            w.u64(q.used);
            w.u16(q.next_avail);
            w.u16(q.next_used);
        }
    }
    w.u16(state.vcpus.len() as u16);
    for v in &state.vcpus {
        encode_vcpu(&mut w, v);
    }
    let body = w.0;
    let mut file = Vec::with_capacity(HEADER_BYTES + body.len());
    file.extend_from_slice(&MAGIC);
    file.extend_from_slice(&VERSION.to_le_bytes());
    file.extend_from_slice(&(body.len() as u64).to_le_bytes());
    file.extend_from_slice(&body);
    file
}

fn encode_vcpu(w: &mut Writer, v: &VcpuState) {
    w.pod(&v.regs);
    w.pod(&v.sregs);
    w.pod(&v.xsave);
    w.pod(&v.xcrs);
    w.pod(&v.debugregs);
    w.pod(&v.lapic);
    w.pod(&v.mp_state);
    w.pod(&v.events);
    w.u16(v.msrs.len() as u16);
    for m in &v.msrs {
        w.u32(m.index);
        w.u64(m.data);
    }
    w.u16(v.cpuid.len() as u16);
    for e in &v.cpuid {
        w.pod(e);
    }
}

/// Reads a state file's bytes; see the module for what is checked.
pub fn decode(bytes: &[u8]) -> Result<VmState, FormatError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    if bytes.len() > MAX_STATE_BYTES {
        return Err(r.error("file", Why::TooLarge));
    }
    let magic = r.take(8, "magic")?;
    if magic != MAGIC {
        return Err(r.error_at("magic", 0, Why::Magic(magic.to_vec())));
    }
    let version = r.u32("version")?;
    if version != VERSION {
        return Err(r.error_at("version", 8, Why::Version(version)));
    }
    let declared = r.u64("body length")?;
    let actual = bytes.len() - HEADER_BYTES;
    if declared != actual as u64 {
        return Err(r.error_at("body length", 12, Why::Length { declared, actual }));
    }
    let state = decode_body(&mut r)?;
    match r.left() {
        0 => Ok(state),
        n => Err(r.error("end", Why::Trailing(n))),
    }
}

fn decode_body(r: &mut Reader) -> Result<VmState, FormatError> {
    let memory_bytes = r.u64("memory size")?;
    let (min, max) = (
        u64::from(husk_vmm_config::MIN_MEMORY_MIB) * MIB,
        u64::from(husk_vmm_config::MAX_MEMORY_MIB) * MIB,
    );
    if memory_bytes % MIB != 0 || !(min..=max).contains(&memory_bytes) {
        return Err(r.error_back(
            "memory size",
            8,
            Why::Value {
                value: memory_bytes,
                expected: "whole MiB within husk-vmm's memory limits",
            },
        ));
    }
    let clock = r.pod("clock")?;
    let mut irqchips = [kvm_irqchip::default(); 3];
    for (id, chip) in irqchips.iter_mut().enumerate() {
        *chip = r.pod::<kvm_irqchip>("irqchip")?;
        if chip.chip_id as usize != id {
            let value = u64::from(chip.chip_id);
            let expected = "chips 0, 1, 2 (PIC master, PIC slave, IOAPIC) in order";
            return Err(r.error("irqchip", Why::Value { value, expected }));
        }
    }
    let pit = r.pod("PIT")?;
    let serial = decode_serial(r)?;
    let count = r.count_u8("devices", 0, MAX_DEVICES)?;
    let mut devices = Vec::with_capacity(count);
    for i in 0..count {
        devices.push(decode_device(r).map_err(|e| e.within(format_args!("device {i}")))?);
    }
    let count = r.count_u16("vCPUs", 1, husk_vmm_config::MAX_VCPUS.into())?;
    let mut vcpus = Vec::with_capacity(count);
    for i in 0..count {
        vcpus.push(decode_vcpu(r).map_err(|e| e.within(format_args!("vCPU {i}")))?);
    }
    Ok(VmState {
        memory_bytes,
        clock,
        irqchips,
        pit,
        serial,
        devices,
        vcpus,
    })
}

fn decode_serial(r: &mut Reader) -> Result<SerialState, FormatError> {
    let regs = r.take(9, "serial registers")?;
    let fifo = r.count_u8("serial FIFO", 0, SERIAL_FIFO)?;
    Ok(SerialState {
        baud_divisor_low: regs[0],
        baud_divisor_high: regs[1],
        interrupt_enable: regs[2],
        interrupt_identification: regs[3],
        line_control: regs[4],
        line_status: regs[5],
        modem_control: regs[6],
        modem_status: regs[7],
        scratch: regs[8],
        in_buffer: r.take(fifo, "serial FIFO")?.to_vec(),
    })
}

fn decode_device(r: &mut Reader) -> Result<DeviceState, FormatError> {
    let device_type = r.u32("device type")?;
    let mut t = TransportState {
        status: r.u32("status")?,
        device_features_sel: r.u32("DeviceFeaturesSel")?,
        driver_features_sel: r.u32("DriverFeaturesSel")?,
        driver_features: r.u64("driver features")?,
        queue_sel: r.u32("QueueSel")?,
        config_generation: r.u32("ConfigGeneration")?,
        interrupt_status: r.u32("InterruptStatus")?,
        queues: Vec::new(),
    };
    let count = r.count_u8("queues", 0, MAX_QUEUES)?;
    for i in 0..count {
        let q = decode_queue(r).map_err(|e| e.within(format_args!("queue {i}")))?;
        t.queues.push(q);
    }
    Ok(DeviceState {
        device_type,
        transport: t,
    })
}

fn decode_queue(r: &mut Reader) -> Result<QueueState, FormatError> {
    let size = r.u32("size")?;
    let ready = match r.u8("ready")? {
        0 => false,
        1 => true,
        other => {
            let expected = "0 or 1";
            let why = Why::Value {
                value: other.into(),
                expected,
            };
            return Err(r.error_back("ready", 1, why));
        }
    };
    Ok(QueueState {
        size,
        ready,
        desc: r.u64("descriptor table")?,
        avail: r.u64("available ring")?,
        used: r.u64("used ring")?,
        next_avail: r.u16("next available")?,
        next_used: r.u16("next used")?,
    })
}

fn decode_vcpu(r: &mut Reader) -> Result<VcpuState, FormatError> {
    let mut v = VcpuState {
        regs: r.pod("regs")?,
        sregs: r.pod("sregs")?,
        xsave: r.pod("xsave")?,
        xcrs: r.pod("xcrs")?,
        debugregs: r.pod("debugregs")?,
        lapic: r.pod("LAPIC")?,
        mp_state: r.pod("mp_state")?,
        events: r.pod("vcpu events")?,
        msrs: Vec::new(),
        cpuid: Vec::new(),
    };
    let count = r.count_u16("MSRs", 0, MAX_MSRS)?;
    for _ in 0..count {
        v.msrs.push(kvm_msr_entry {
            index: r.u32("MSR index")?,
            data: r.u64("MSR value")?,
            ..Default::default()
        });
    }
    let count = r.count_u16("CPUID entries", 0, MAX_CPUID)?;
    for _ in 0..count {
        v.cpuid.push(r.pod("CPUID entry")?);
    }
    Ok(v)
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A KVM structure: its length, then its bytes.
    fn pod<T: IntoBytes + Immutable>(&mut self, v: &T) {
        let bytes = v.as_bytes();
        self.u32(bytes.len() as u32);
        self.0.extend_from_slice(bytes);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn error(&self, field: &str, why: Why) -> FormatError {
        self.error_at(field, self.pos, why)
    }

    /// An error about the `len` bytes just read.
    fn error_back(&self, field: &str, len: usize, why: Why) -> FormatError {
        self.error_at(field, self.pos.saturating_sub(len), why)
    }

    fn error_at(&self, field: &str, offset: usize, why: Why) -> FormatError {
        FormatError {
            field: field.into(),
            offset,
            why,
        }
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], FormatError> {
        if n > self.left() {
            let left = self.left();
            return Err(self.error(field, Why::Truncated { need: n, left }));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: &str) -> Result<u8, FormatError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &str) -> Result<u16, FormatError> {
        self.array(field).map(u16::from_le_bytes)
    }
    fn u32(&mut self, field: &str) -> Result<u32, FormatError> {
        self.array(field).map(u32::from_le_bytes)
    }
    fn u64(&mut self, field: &str) -> Result<u64, FormatError> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn count(
        &self,
        field: &str,
        len: usize,
        count: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, FormatError> {
        if (min..=max).contains(&count) {
            Ok(count)
        } else {
            Err(self.error_back(field, len, Why::Count { count, min, max }))
        }
    }
    fn count_u8(&mut self, field: &str, min: usize, max: usize) -> Result<usize, FormatError> {
        let n = self.u8(field)?;
        self.count(field, 1, n.into(), min, max)
    }
    fn count_u16(&mut self, field: &str, min: usize, max: usize) -> Result<usize, FormatError> {
        let n = self.u16(field)?;
        self.count(field, 2, n.into(), min, max)
    }

    /// A KVM structure: a length that must be the structure's, then it.
    fn pod<T: FromBytes>(&mut self, field: &str) -> Result<T, FormatError> {
        let found = self.u32(field)? as usize;
        let expected = std::mem::size_of::<T>();
        if found != expected {
            return Err(self.error_back(field, 4, Why::Size { found, expected }));
        }
        let bytes = self.take(expected, field)?;
        // The length was checked just above, so this cannot fail.
        T::read_from_bytes(bytes).map_err(|_| self.error(field, Why::Size { found, expected }))
    }
}

#[cfg(test)]
pub(crate) mod tests;
