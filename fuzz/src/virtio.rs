//! The guest's side of husk-vmm's virtio-mmio transport for the fuzz
//! targets: small guest RAM laid out as husk lays it out, a stand-in
//! device that keeps what the transport hands it at activation, register
//! accesses decoded from fuzz input, and the Linux driver's set-up
//! sequence for the targets that fuzz a device's queues rather than the
//! transport.

use crate::Input;
use husk_vmm::devices::virtio::{ActivateError, Interrupt, QueueT, ReadyQueue, VirtioDevice};
use husk_vmm::fuzzing::MmioTransport;
use husk_vmm::memory::GuestMemoryMmap;
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::*;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

/// virtio's VERSION_1 feature bit, which every modern driver acks.
pub const VERSION_1: u64 = 1 << 32;

/// Where high RAM starts: husk leaves the 32-bit MMIO hole out of RAM and
/// continues at 4 GiB (`husk_vmm::memory::ram_ranges`).
pub const HIGH_RAM: u64 = husk_vmm::memory::MMIO_HOLE_END;

/// Guest RAM of `low` bytes from 0 and, if `high` is not 0, `high` bytes
/// from 4 GiB: husk's layout, small enough to make for every input.
pub fn guest_memory(low: usize, high: usize) -> GuestMemoryMmap {
    let mut ranges = vec![(GuestAddress(0), low)];
    if high != 0 {
        ranges.push((GuestAddress(HIGH_RAM), high));
    }
    GuestMemoryMmap::from_ranges(&ranges).expect("anonymous guest RAM")
}

/// What a device was handed at DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    pub features: u64,
    pub queues: Vec<ReadyQueue>,
}

/// The shape of one of husk's devices: what the transport asks of it.
#[derive(Clone, Copy)]
pub struct Shape {
    pub name: &'static str,
    pub device_type: u32,
    pub queue_sizes: &'static [u16],
    pub features: u64,
    pub config_len: usize,
}

/// husk-vmm's devices as the transport sees them (queue sizes from each
/// device; vsock and fs features are the daemons', VERSION_1 here).
pub const NET: Shape = Shape {
    name: "net",
    device_type: husk_vmm::devices::virtio::net::VIRTIO_ID_NET,
    queue_sizes: &[256, 256],
    features: husk_vmm::devices::virtio::net::FEATURES,
    config_len: 6,
};
pub const RNG: Shape = Shape {
    name: "rng",
    device_type: husk_vmm::devices::virtio::rng::VIRTIO_ID_RNG,
    queue_sizes: &[256],
    features: 0,
    config_len: 0,
};
pub const VSOCK: Shape = Shape {
    name: "vsock",
    device_type: husk_vmm::devices::virtio::vhost_user::VIRTIO_ID_VSOCK,
    queue_sizes: &husk_vmm::devices::virtio::vhost_user::VSOCK_QUEUES,
    features: VERSION_1,
    config_len: 8,
};
pub const FS: Shape = Shape {
    name: "fs",
    device_type: husk_vmm::devices::virtio::vhost_user::VIRTIO_ID_FS,
    queue_sizes: &husk_vmm::devices::virtio::vhost_user::FS_QUEUES,
    features: VERSION_1,
    config_len: 40,
};

/// A device of a [`Shape`] that keeps every activation for the target to
/// look at, and refuses it when told to (as a device does whose queues
/// are not the ones it needs), which sends the transport down its
/// NEEDS_RESET path.
pub struct Stand {
    shape: Shape,
    config: Vec<u8>,
    pub refuse: bool,
    seen: Arc<Mutex<Vec<Activation>>>,
}

impl VirtioDevice for Stand {
    fn name(&self) -> &'static str {
        self.shape.name
    }
    fn device_type(&self) -> u32 {
        self.shape.device_type
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.shape.queue_sizes
    }
    fn features(&self) -> u64 {
        self.shape.features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = self.config.get(offset as usize + i) {
                *b = *v;
            }
        }
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        features: u64,
        queues: Vec<ReadyQueue>,
        _interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let ready = queues.len();
        self.seen.lock().unwrap().push(Activation {
            mem,
            features,
            queues,
        });
        if self.refuse {
            return Err(ActivateError::Queues {
                device: self.shape.name,
                ready,
                needed: "what the fuzz input says",
            });
        }
        Ok(())
    }
    fn reset(&mut self) {}
}

/// The activations a [`Stand`] was handed, oldest first.
pub type Seen = Arc<Mutex<Vec<Activation>>>;

/// A transport over a [`Stand`] of `shape` in `mem`.
pub fn transport(mem: &GuestMemoryMmap, shape: Shape, refuse: bool) -> (MmioTransport, Seen) {
    let seen = Seen::default();
    let dev = Stand {
        shape,
        config: (0..shape.config_len as u8).collect(),
        refuse,
        seen: seen.clone(),
    };
    let evt = || EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let notify = shape.queue_sizes.iter().map(|_| evt()).collect();
    let t = MmioTransport::new(mem.clone(), Box::new(dev), notify, Interrupt::new(evt()))
        .expect("one eventfd per queue");
    (t, seen)
}

/// One vCPU exit, as 8 bytes of input: kind and width, where, and the
/// value written.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub write: bool,
    /// Port I/O (COM1's range) rather than MMIO.
    pub pio: bool,
    /// Which 4 KiB window (MMIO) or port from 0x3f8 (PIO).
    pub window: u8,
    pub offset: u16,
    /// 1, 2, 4 or 8 bytes, as KVM reports them.
    pub len: usize,
    pub value: u64,
}

impl Access {
    /// Byte 0: bit 0 write, bit 1 port I/O, bits 2-3 width (1, 2, 4, 8);
    /// byte 1: window; bytes 2-3: offset in the window; bytes 4-7: value
    /// (repeated in the high half of an 8-byte write).
    pub fn read(input: &mut Input) -> Self {
        let kind = input.u8();
        let window = input.u8();
        let offset = input.u16() % 0x1000;
        let value = u64::from(input.u32());
        Access {
            write: kind & 1 != 0,
            pio: kind & 2 != 0,
            window,
            offset,
            len: 1 << ((kind >> 2) & 3),
            value: value | (value << 32),
        }
    }

    /// The bytes of a write.
    pub fn data(&self) -> Vec<u8> {
        self.value.to_le_bytes()[..self.len].to_vec()
    }
}

/// One queue as a driver sets it up.
#[derive(Debug, Clone, Copy)]
pub struct QueueLayout {
    pub index: u32,
    pub size: u32,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl QueueLayout {
    /// 8 bytes of input: size, then the three rings' addresses (16-bit,
    /// inside the small RAM the virtqueue targets give the guest).
    pub fn read(input: &mut Input, index: u32) -> Self {
        QueueLayout {
            index,
            size: u32::from(input.u16()),
            desc: u64::from(input.u16()),
            avail: u64::from(input.u16()),
            used: u64::from(input.u16()),
        }
    }
}

fn w(t: &mut MmioTransport, offset: u32, v: u32) {
    t.write(u64::from(offset), &v.to_le_bytes());
}

/// The Linux virtio-mmio driver's probe and set-up (virtio 1.2, 3.1.1 and
/// 4.2.3.2): reset, ACKNOWLEDGE, DRIVER, `features`, FEATURES_OK, each
/// queue of `queues`, DRIVER_OK.
pub fn driver_setup(t: &mut MmioTransport, features: u64, queues: &[QueueLayout]) {
    w(t, VIRTIO_MMIO_STATUS, 0);
    w(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    let driver = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    w(t, VIRTIO_MMIO_STATUS, driver);
    for sel in 0..2u32 {
        w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        w(
            t,
            VIRTIO_MMIO_DRIVER_FEATURES,
            (features >> (32 * sel)) as u32,
        );
    }
    w(t, VIRTIO_MMIO_STATUS, driver | VIRTIO_CONFIG_S_FEATURES_OK);
    for q in queues {
        w(t, VIRTIO_MMIO_QUEUE_SEL, q.index);
        w(t, VIRTIO_MMIO_QUEUE_NUM, q.size);
        w(t, VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc as u32);
        w(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (q.desc >> 32) as u32);
        w(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail as u32);
        w(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (q.avail >> 32) as u32);
        w(t, VIRTIO_MMIO_QUEUE_USED_LOW, q.used as u32);
        w(t, VIRTIO_MMIO_QUEUE_USED_HIGH, (q.used >> 32) as u32);
        w(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }
    w(
        t,
        VIRTIO_MMIO_STATUS,
        driver | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
    );
}

/// Checks what the transport handed a device at activation: the queues
/// the driver made ready, in index order, each a valid queue of at most
/// the device's size whose rings lie in guest RAM.
pub fn check_activation(shape: Shape, act: &Activation) {
    let mut last = None;
    for r in &act.queues {
        assert!(
            r.index < shape.queue_sizes.len(),
            "{}: queue index {} of {}",
            shape.name,
            r.index,
            shape.queue_sizes.len()
        );
        assert!(last < Some(r.index), "{}: queues out of order", shape.name);
        last = Some(r.index);
        let q = &r.queue;
        assert!(q.ready(), "{}: queue {} not ready", shape.name, r.index);
        assert!(
            q.size() <= shape.queue_sizes[r.index] && q.size().is_power_of_two(),
            "{}: queue {} of size {}",
            shape.name,
            r.index,
            q.size()
        );
        assert!(
            q.is_valid(&act.mem),
            "{}: queue {} outside guest RAM",
            shape.name,
            r.index
        );
    }
}
