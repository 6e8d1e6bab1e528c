//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2): the
//! register window a driver uses to find, negotiate with and set up a
//! device. Hand-written because rust-vmm publishes no transport crate (its
//! `virtio-device` is unreleased); queue state is virtio-queue's `Queue`.
//!
//! The guest must follow the driver initialisation sequence (3.1.1):
//! features are read-write only between DRIVER and FEATURES_OK, queues
//! only between FEATURES_OK and DRIVER_OK. Out-of-order writes are
//! ignored and logged, never trusted; the guest is not.
//!
//! For snapshots the transport gives its registers with each queue's
//! position ([`MmioTransport::save`]) and takes them back in a clone
//! ([`MmioTransport::restore`]), which checks them as it would the
//! driver's writes and activates the device where the template's was.

use super::device::{Interrupt, PauseError, QueuePosition, ReadyQueue, VirtioDevice};
use crate::memory::GuestMemoryMmap;
use crate::snapshot::format::{QueueState, TransportState};
use std::sync::Arc;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

/// "virt" in little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Version 2: the modern (virtio 1.x) register layout.
pub const MMIO_VERSION: u32 = 2;
/// "HUSK" in little-endian, the subsystem vendor ID drivers see.
pub const VENDOR_ID: u32 = 0x4b53_5548;
/// Size of one device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// A transport built with a notification eventfd count that does not match
/// the device's queues.
#[derive(Debug, thiserror::Error)]
#[error("{device}: {queues} queues but {eventfds} notification eventfds")]
pub struct NotifyMismatch {
    pub device: &'static str,
    pub queues: usize,
    pub eventfds: usize,
}

/// Why a queue the driver set up cannot be used (virtio-queue's checks).
#[derive(Debug, thiserror::Error)]
enum QueueError {
    #[error("a queue of at most {max} entries: {source}")]
    New {
        max: u16,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("size {size} (max {max}): {source}")]
    Size {
        size: u32,
        max: u16,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("{ring} at {addr:#x}: {source}")]
    Address {
        ring: &'static str,
        addr: u64,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("rings at desc {desc:#x}, avail {avail:#x}, used {used:#x} for {size} entries are not in guest RAM")]
    NotInRam {
        desc: u64,
        avail: u64,
        used: u64,
        size: u16,
    },
}

/// Why DRIVER_OK did not start the device; the driver is told to reset it.
#[derive(Debug, thiserror::Error)]
enum ActivationFailure {
    #[error("{device}: queue {index}: {source}")]
    Queue {
        device: &'static str,
        index: usize,
        #[source]
        source: QueueError,
    },
    #[error("{device}: DRIVER_OK without a ready queue")]
    NoQueue { device: &'static str },
    #[error(transparent)]
    Device(#[from] super::device::ActivateError),
}

/// Why a snapshot's transport state cannot be taken back.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{device}: the snapshot has {found} queues, the device {expected}")]
    QueueCount {
        device: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("{device}: status {status:#x} is not one a driver reaches")]
    Status { device: &'static str, status: u32 },
    #[error("{device}: driver features {acked:#x} are not a VERSION_1 subset of the offered {offered:#x}")]
    Features {
        device: &'static str,
        acked: u64,
        offered: u64,
    },
    #[error("{device}: InterruptStatus {bits:#x} has bits no device sets")]
    InterruptStatus { device: &'static str, bits: u32 },
    #[error("{device}: activating it as the template had: {why}")]
    Activate { device: &'static str, why: String },
}

/// The status bits a driver can have set (virtio 1.2, 2.1).
const STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_NEEDS_RESET
    | VIRTIO_CONFIG_S_FAILED;

/// What the driver wrote for one queue. Kept raw and checked only at
/// DRIVER_OK, so a bad value is reported instead of silently replaced.
#[derive(Debug, Clone, Copy, Default)]
struct QueueSetup {
    max_size: u16,
    size: u32,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueSetup {
    fn new(max_size: u16) -> Self {
        QueueSetup {
            max_size,
            // Until the driver writes QueueNum, the maximum (4.2.3.2).
            size: u32::from(max_size),
            ..Default::default()
        }
    }

    /// A virtio-queue `Queue` for the device, if the setup is valid.
    fn build(&self, mem: &GuestMemoryMmap) -> Result<Queue, QueueError> {
        let max = self.max_size;
        let mut q = Queue::new(max).map_err(|source| QueueError::New { max, source })?;
        let size_err = |source| QueueError::Size {
            size: self.size,
            max,
            source,
        };
        // A size that does not fit 16 bits is as invalid as any other
        // over the maximum; virtio-queue says so for a 16-bit one.
        let size =
            u16::try_from(self.size).map_err(|_| size_err(virtio_queue::Error::InvalidSize))?;
        q.try_set_size(size).map_err(size_err)?;
        let addr_err = |ring, addr| move |source| QueueError::Address { ring, addr, source };
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(addr_err("descriptor table", self.desc))?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .map_err(addr_err("available ring", self.avail))?;
        q.try_set_used_ring_address(GuestAddress(self.used))
            .map_err(addr_err("used ring", self.used))?;
        q.set_ready(true);
        // Also checks the rings lie inside guest RAM.
        if !q.is_valid(mem) {
            return Err(QueueError::NotInRam {
                desc: self.desc,
                avail: self.avail,
                used: self.used,
                size,
            });
        }
        Ok(q)
    }
}

fn set_low(addr: &mut u64, v: u32) {
    *addr = (*addr & !0xffff_ffff) | u64::from(v);
}

fn set_high(addr: &mut u64, v: u32) {
    *addr = (*addr & 0xffff_ffff) | (u64::from(v) << 32);
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    /// To check the queues the driver set up before a device uses them.
    mem: GuestMemoryMmap,
    queues: Vec<QueueSetup>,
    /// One per queue; KVM writes them on QueueNotify (ioeventfd).
    notify: Vec<Arc<EventFd>>,
    interrupt: Interrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
}

impl MmioTransport {
    /// `notify` has one eventfd per queue of the device, `interrupt` the
    /// device's irqfd.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
        notify: Vec<EventFd>,
        interrupt: Interrupt,
    ) -> Result<Self, NotifyMismatch> {
        let sizes = device.queue_max_sizes().to_vec();
        if notify.len() != sizes.len() {
            return Err(NotifyMismatch {
                device: device.name(),
                queues: sizes.len(),
                eventfds: notify.len(),
            });
        }
        let queues = sizes.iter().map(|s| QueueSetup::new(*s)).collect();
        let notify = notify.into_iter().map(Arc::new).collect();
        Ok(MmioTransport {
            device,
            mem,
            queues,
            notify,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
        })
    }

    /// The queue notification eventfds (registered as ioeventfds on
    /// QueueNotify with the queue index as datamatch).
    #[cfg(test)]
    fn notify_evts(&self) -> &[Arc<EventFd>] {
        &self.notify
    }

    #[cfg(test)]
    fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn selected_queue(&mut self) -> Option<&mut QueueSetup> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A read at `offset` within the window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            data.fill(0);
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        // Registers are 32 bits wide and read only as such (4.2.2.2).
        let value = if data.len() == 4 {
            self.read_register(offset as u32)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn read_register(&self, offset: u32) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            // 0 tells the driver the queue does not exist.
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size)),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready)),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: length -1 (4.2.2.1).
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_SHM_BASE_LOW | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!(
                    "{}: read of write-only or unknown register {offset:#x}",
                    self.device.name()
                );
                0
            }
        }
    }

    /// A write at `offset` within the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            if self.has(VIRTIO_CONFIG_S_DRIVER) && !self.has(VIRTIO_CONFIG_S_FAILED) {
                self.device
                    .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::debug!(
                "{}: {}-byte write to register {offset:#x} ignored",
                self.device.name(),
                data.len()
            );
            return;
        };
        self.write_register(offset as u32, u32::from_le_bytes(bytes));
    }

    fn write_register(&mut self, offset: u32, v: u32) {
        let negotiating =
            self.has(VIRTIO_CONFIG_S_DRIVER) && !self.has(VIRTIO_CONFIG_S_FEATURES_OK);
        let queue_setup =
            self.has(VIRTIO_CONFIG_S_FEATURES_OK) && !self.has(VIRTIO_CONFIG_S_DRIVER_OK);
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES if negotiating => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM if queue_setup => self.set_queue(|q| q.size = v),
            VIRTIO_MMIO_QUEUE_READY if queue_setup => self.set_queue(|q| q.ready = v == 1),
            VIRTIO_MMIO_QUEUE_DESC_LOW if queue_setup => {
                self.set_queue(|q| set_low(&mut q.desc, v))
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH if queue_setup => {
                self.set_queue(|q| set_high(&mut q.desc, v))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW if queue_setup => {
                self.set_queue(|q| set_low(&mut q.avail, v))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH if queue_setup => {
                self.set_queue(|q| set_high(&mut q.avail, v))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW if queue_setup => {
                self.set_queue(|q| set_low(&mut q.used, v))
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH if queue_setup => {
                self.set_queue(|q| set_high(&mut q.used, v))
            }
            // Normally caught by the ioeventfd in KVM; a write that reaches
            // us anyway (no ioeventfd registered) is forwarded.
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                if let Some(evt) = self.notify.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            VIRTIO_MMIO_STATUS => self.set_status(v),
            VIRTIO_MMIO_SHM_SEL => {}
            _ => tracing::debug!(
                "{}: write {v:#x} to register {offset:#x} ignored in status {:#x}",
                self.device.name(),
                self.status
            ),
        }
    }

    fn set_queue(&mut self, f: impl FnOnce(&mut QueueSetup)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (3.1.1); anything else is a
        // confused or hostile guest.
        if v & self.status != self.status {
            tracing::warn!(
                "{}: status {:#x} -> {v:#x} clears bits; ignored",
                self.device.name(),
                self.status
            );
            return;
        }
        let new = v & !self.status;
        let mut status = v;
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.offered_features();
            let extra = self.driver_features & !offered;
            let modern = self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if extra != 0 || !modern {
                // Not kept: the driver reads status back and gives up.
                tracing::warn!(
                    "{}: driver features {:#x} refused (offered {offered:#x})",
                    self.device.name(),
                    self.driver_features
                );
                status &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 && status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            self.status = status;
            self.activate();
            return;
        }
        self.status = status;
    }

    /// Hands the device its ready queues, each from `positions` (by index;
    /// from the start where none is given).
    fn activate_device(&mut self, positions: &[QueuePosition]) -> Result<(), ActivationFailure> {
        let device = self.device.name();
        let ready: Vec<_> = self
            .queues
            .iter()
            .zip(&self.notify)
            .enumerate()
            .filter(|(_, (q, _))| q.ready)
            .map(|(index, (q, e))| {
                let mut queue = q
                    .build(&self.mem)
                    .map_err(|source| ActivationFailure::Queue {
                        device,
                        index,
                        source,
                    })?;
                if let Some(p) = positions.iter().find(|p| p.index == index) {
                    queue.set_next_avail(p.next_avail);
                    queue.set_next_used(p.next_used);
                }
                // Shared, not dup'ed: no system call on the vCPU thread.
                Ok(ReadyQueue {
                    index,
                    queue,
                    kick: e.clone(),
                })
            })
            .collect::<Result<_, ActivationFailure>>()?;
        if ready.is_empty() {
            return Err(ActivationFailure::NoQueue { device });
        }
        self.device.activate(
            self.mem.clone(),
            self.driver_features,
            ready,
            self.interrupt.clone(),
        )?;
        Ok(())
    }

    fn activate(&mut self) {
        if let Err(e) = self.activate_device(&[]) {
            // 2.1.2: tell the driver it must reset the device.
            tracing::warn!("{e}");
            self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
            self.config_generation = self.config_generation.wrapping_add(1);
            let _ = self.interrupt.signal_config();
        }
    }

    /// The device runs: DRIVER_OK, and its activation did not fail.
    fn active(&self) -> bool {
        self.has(VIRTIO_CONFIG_S_DRIVER_OK) && !self.has(VIRTIO_CONFIG_S_NEEDS_RESET)
    }

    /// The device's virtio ID, which a clone's device in this slot must
    /// have too.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// For a snapshot, with the vCPUs stopped: pauses an active device
    /// and returns the registers with where it was in each queue. The
    /// device serves nothing afterwards.
    pub fn save(&mut self) -> Result<TransportState, PauseError> {
        let positions = if self.active() {
            self.device.pause()?
        } else {
            Vec::new()
        };
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let p = positions.iter().find(|p| p.index == i);
                QueueState {
                    size: q.size,
                    ready: q.ready,
                    desc: q.desc,
                    avail: q.avail,
                    used: q.used,
                    next_avail: p.map_or(0, |p| p.next_avail),
                    next_used: p.map_or(0, |p| p.next_used),
                }
            })
            .collect();
        Ok(TransportState {
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues,
        })
    }

    /// In a clone, before any vCPU runs: takes the template's registers
    /// back, checked as the driver's writes are (a status a driver can
    /// reach, features offered, valid rings in RAM), and activates the
    /// device from the queue positions where the template's was active.
    /// Then it looks at its queues and raises a pending interrupt again,
    /// in case the template paused between a request and its answer.
    pub fn restore(&mut self, s: &TransportState) -> Result<(), RestoreError> {
        let device = self.device.name();
        if s.queues.len() != self.queues.len() {
            return Err(RestoreError::QueueCount {
                device,
                found: s.queues.len(),
                expected: self.queues.len(),
            });
        }
        self.check_status(s)?;
        if s.interrupt_status & !(super::device::INT_VRING | super::device::INT_CONFIG) != 0 {
            return Err(RestoreError::InterruptStatus {
                device,
                bits: s.interrupt_status,
            });
        }
        for (q, saved) in self.queues.iter_mut().zip(&s.queues) {
            *q = QueueSetup {
                max_size: q.max_size,
                size: saved.size,
                ready: saved.ready,
                desc: saved.desc,
                avail: saved.avail,
                used: saved.used,
            };
        }
        self.status = s.status;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.config_generation = s.config_generation;
        if self.active() {
            let positions: Vec<_> = (s.queues.iter().enumerate())
                .map(|(index, q)| QueuePosition {
                    index,
                    next_avail: q.next_avail,
                    next_used: q.next_used,
                })
                .collect();
            self.activate_device(&positions)
                .map_err(|e| RestoreError::Activate {
                    device,
                    why: e.to_string(),
                })?;
            for (q, kick) in self.queues.iter().zip(&self.notify) {
                if q.ready {
                    let _ = kick.write(1);
                }
            }
        }
        self.interrupt.ack(u32::MAX);
        if s.interrupt_status != 0 {
            self.interrupt.restore(s.interrupt_status);
        }
        Ok(())
    }

    /// A status the 3.1.1 sequence reaches, with the features a
    /// FEATURES_OK needs.
    fn check_status(&self, s: &TransportState) -> Result<(), RestoreError> {
        let device = self.device.name();
        let status = s.status;
        let has = |bits: u32| status & bits == bits;
        let bad = status & !STATUS_BITS != 0
            || (has(VIRTIO_CONFIG_S_DRIVER_OK) && !has(VIRTIO_CONFIG_S_FEATURES_OK))
            || (has(VIRTIO_CONFIG_S_FEATURES_OK) && !has(VIRTIO_CONFIG_S_DRIVER));
        if bad {
            return Err(RestoreError::Status { device, status });
        }
        let offered = self.offered_features();
        let acked = s.driver_features;
        let modern = acked & (1 << VIRTIO_F_VERSION_1) != 0;
        if has(VIRTIO_CONFIG_S_FEATURES_OK) && (acked & !offered != 0 || !modern) {
            return Err(RestoreError::Features {
                device,
                acked,
                offered,
            });
        }
        Ok(())
    }

    fn reset(&mut self) {
        if self.has(VIRTIO_CONFIG_S_DRIVER_OK) {
            self.device.reset();
        }
        for q in &mut self.queues {
            *q = QueueSetup::new(q.max_size);
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
    }
}

/// `virtio_mmio.device=<size>@<addr>:<irq>` for the kernel command line.
pub fn cmdline_device(addr: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{addr:#x}:{irq}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{ActivateError, INT_CONFIG, INT_VRING};
    use crate::memory::create_guest_memory;
    use std::sync::{Arc, Mutex};
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE;

    /// index, size, descriptor table, available ring, used ring.
    type QueueSeen = (usize, u16, u64, u64, u64);

    #[derive(Default)]
    struct Seen {
        activated: Option<(u64, Vec<QueueSeen>)>,
        /// (index, next_avail, next_used) of each queue at activation.
        positions: Vec<(usize, u16, u16)>,
        interrupt: Option<Interrupt>,
        resets: u32,
        config_writes: Vec<(u64, Vec<u8>)>,
        /// What pause answers, and how often it was asked.
        pause_with: Vec<QueuePosition>,
        pauses: u32,
    }

    struct TestDevice(Arc<Mutex<Seen>>);

    const TEST_FEATURE: u64 = 1 << 3;

    impl VirtioDevice for TestDevice {
        fn name(&self) -> &'static str {
            "test"
        }
        fn device_type(&self) -> u32 {
            19
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 64]
        }
        fn features(&self) -> u64 {
            TEST_FEATURE
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let config = [0xa0u8, 0xa1, 0xa2, 0xa3];
            for (i, b) in data.iter_mut().enumerate() {
                if let Some(v) = config.get(offset as usize + i) {
                    *b = *v;
                }
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.0
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            features: u64,
            queues: Vec<ReadyQueue>,
            interrupt: Interrupt,
        ) -> Result<(), ActivateError> {
            let q = queues
                .iter()
                .map(|r| {
                    let q = &r.queue;
                    (
                        r.index,
                        q.size(),
                        q.desc_table(),
                        q.avail_ring(),
                        q.used_ring(),
                    )
                })
                .collect();
            let mut seen = self.0.lock().unwrap();
            seen.activated = Some((features, q));
            seen.positions = queues
                .iter()
                .map(|r| (r.index, r.queue.next_avail(), r.queue.next_used()))
                .collect();
            seen.interrupt = Some(interrupt);
            Ok(())
        }
        fn reset(&mut self) {
            self.0.lock().unwrap().resets += 1;
        }
        fn pause(&mut self) -> Result<Vec<QueuePosition>, PauseError> {
            let mut seen = self.0.lock().unwrap();
            seen.pauses += 1;
            Ok(seen.pause_with.clone())
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let notify = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mem = create_guest_memory(16).unwrap();
        let t = MmioTransport::new(mem, Box::new(TestDevice(seen.clone())), notify, irq).unwrap();
        (t, seen)
    }

    fn r(t: &MmioTransport, off: u32) -> u32 {
        let mut d = [0u8; 4];
        t.read(u64::from(off), &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u32, v: u32) {
        t.write(u64::from(off), &v.to_le_bytes());
    }

    /// 3.1.1 up to FEATURES_OK, acking `features`.
    fn negotiate(t: &mut MmioTransport, features: u64) {
        w(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        w(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        for sel in 0..2 {
            w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            w(
                t,
                VIRTIO_MMIO_DRIVER_FEATURES,
                (features >> (32 * sel)) as u32,
            );
        }
        w(t, VIRTIO_MMIO_STATUS, 0b1011);
    }

    fn setup_queue(t: &mut MmioTransport, sel: u32, size: u32, base: u64) {
        w(t, VIRTIO_MMIO_QUEUE_SEL, sel);
        w(t, VIRTIO_MMIO_QUEUE_NUM, size);
        w(t, VIRTIO_MMIO_QUEUE_DESC_LOW, base as u32);
        w(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (base >> 32) as u32);
        w(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (base + 0x1000) as u32);
        w(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
        w(t, VIRTIO_MMIO_QUEUE_USED_LOW, (base + 0x2000) as u32);
        w(t, VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
        w(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }

    const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

    #[test]
    fn identity_registers() {
        let (t, _) = transport();
        assert_eq!(r(&t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r(&t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(r(&t, VIRTIO_MMIO_DEVICE_ID), 19);
        assert_eq!(r(&t, VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
        assert_eq!(r(&t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(r(&t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX, "no shared memory");
        // Registers are read 32 bits at a time only.
        let mut b = [0xffu8; 2];
        t.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn features_are_offered_in_two_words_with_version_1() {
        let (mut t, _) = transport();
        assert_eq!(r(&t, VIRTIO_MMIO_DEVICE_FEATURES), TEST_FEATURE as u32);
        w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&t, VIRTIO_MMIO_DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(r(&t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
    }

    #[test]
    fn queue_num_max_per_queue_and_zero_for_missing_queues() {
        let (mut t, _) = transport();
        assert_eq!(r(&t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(r(&t, VIRTIO_MMIO_QUEUE_NUM_MAX), 64);
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 2);
        assert_eq!(r(&t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn full_initialisation_activates_the_device_with_its_queues() {
        let (mut t, seen) = transport();
        negotiate(&mut t, VERSION_1 | TEST_FEATURE);
        assert_eq!(r(&t, VIRTIO_MMIO_STATUS), 0b1011, "FEATURES_OK kept");
        setup_queue(&mut t, 0, 128, 0x10_0000);
        assert_eq!(r(&t, VIRTIO_MMIO_QUEUE_READY), 1);
        assert!(
            seen.lock().unwrap().activated.is_none(),
            "not before DRIVER_OK"
        );
        w(&mut t, VIRTIO_MMIO_STATUS, 0b1111);
        assert_eq!(r(&t, VIRTIO_MMIO_STATUS), 0b1111);
        let (features, queues) = seen.lock().unwrap().activated.clone().unwrap();
        assert_eq!(features, VERSION_1 | TEST_FEATURE);
        assert_eq!(
            queues,
            vec![(0, 128, 0x10_0000, 0x10_1000, 0x10_2000)],
            "only the ready queue"
        );
    }

    #[test]
    fn a_queue_keeps_its_index_when_the_queues_before_it_are_not_ready() {
        let (mut t, seen) = transport();
        negotiate(&mut t, VERSION_1);
        setup_queue(&mut t, 1, 32, 0x20_0000);
        w(&mut t, VIRTIO_MMIO_STATUS, 0b1111);
        let (_, queues) = seen.lock().unwrap().activated.clone().unwrap();
        assert_eq!(queues, vec![(1, 32, 0x20_0000, 0x20_1000, 0x20_2000)]);
    }

    #[test]
    fn features_not_offered_or_without_version_1_are_refused() {
        for acked in [VERSION_1 | (1 << 5), TEST_FEATURE] {
            let (mut t, _) = transport();
            negotiate(&mut t, acked);
            assert_eq!(
                r(&t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
                0,
                "FEATURES_OK dropped for {acked:#x}"
            );
        }
    }

    #[test]
    fn out_of_order_writes_are_ignored() {
        let (mut t, seen) = transport();
        // Features before DRIVER, queues before FEATURES_OK.
        w(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
        setup_queue(&mut t, 0, 128, 0x10_0000);
        assert_eq!(r(&t, VIRTIO_MMIO_QUEUE_READY), 0);
        negotiate(&mut t, VERSION_1);
        assert_eq!(
            r(&t, VIRTIO_MMIO_STATUS),
            0b1011,
            "the early u32::MAX was not kept"
        );
        // Clearing bits is not a thing drivers do.
        w(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        assert_eq!(r(&t, VIRTIO_MMIO_STATUS), 0b1011);
        // Sub-word writes to registers are dropped.
        t.write(u64::from(VIRTIO_MMIO_STATUS), &[0]);
        assert_eq!(r(&t, VIRTIO_MMIO_STATUS), 0b1011);
        assert!(seen.lock().unwrap().activated.is_none());
    }

    #[test]
    fn an_invalid_queue_sets_needs_reset_instead_of_activating() {
        for (size, base) in [(100, 0x10_0000u64), (128, 0x4000_0000), (512, 0x10_0000)] {
            let (mut t, seen) = transport();
            negotiate(&mut t, VERSION_1);
            setup_queue(&mut t, 0, size, base);
            w(&mut t, VIRTIO_MMIO_STATUS, 0b1111);
            let status = r(&t, VIRTIO_MMIO_STATUS);
            assert_ne!(
                status & VIRTIO_CONFIG_S_NEEDS_RESET,
                0,
                "size {size} at {base:#x}"
            );
            assert!(seen.lock().unwrap().activated.is_none());
            assert_eq!(r(&t, VIRTIO_MMIO_INTERRUPT_STATUS), INT_CONFIG);
            assert_eq!(r(&t, VIRTIO_MMIO_CONFIG_GENERATION), 1);
        }
    }

    #[test]
    fn driver_ok_without_ready_queue_sets_needs_reset() {
        let (mut t, seen) = transport();
        negotiate(&mut t, VERSION_1);
        w(&mut t, VIRTIO_MMIO_STATUS, 0b1111);
        assert_ne!(r(&t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert!(seen.lock().unwrap().activated.is_none());
    }

    #[test]
    fn status_zero_resets_device_and_queues() {
        let (mut t, seen) = transport();
        negotiate(&mut t, VERSION_1);
        setup_queue(&mut t, 0, 128, 0x10_0000);
        w(&mut t, VIRTIO_MMIO_STATUS, 0b1111);
        w(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(r(&t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(seen.lock().unwrap().resets, 1);
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(r(&t, VIRTIO_MMIO_QUEUE_READY), 0);
        // And it can be brought up again.
        negotiate(&mut t, VERSION_1);
        assert_eq!(r(&t, VIRTIO_MMIO_STATUS), 0b1011);
    }

    #[test]
    fn used_queue_interrupt_shows_in_status_fires_irqfd_and_acks() {
        let (mut t, seen) = transport();
        negotiate(&mut t, VERSION_1);
        setup_queue(&mut t, 0, 128, 0x10_0000);
        w(&mut t, VIRTIO_MMIO_STATUS, 0b1111);
        let irq = seen.lock().unwrap().interrupt.clone().unwrap();
        irq.signal_used_queue().unwrap();
        assert_eq!(r(&t, VIRTIO_MMIO_INTERRUPT_STATUS), INT_VRING);
        assert_eq!(t.interrupt().irqfd().read().unwrap(), 1);
        w(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, INT_VRING);
        assert_eq!(r(&t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn queue_notify_reaching_the_transport_signals_that_queue() {
        let (mut t, _) = transport();
        w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert!(t.notify_evts()[0].read().is_err());
        assert_eq!(t.notify_evts()[1].read().unwrap(), 1);
        w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 7); // no such queue: ignored
    }

    #[test]
    fn config_space_reads_bytes_and_writes_only_once_driver_is_set() {
        let (mut t, seen) = transport();
        let mut b = [0u8; 2];
        t.read(u64::from(VIRTIO_MMIO_CONFIG) + 1, &mut b);
        assert_eq!(b, [0xa1, 0xa2]);
        let mut b = [0xffu8; 4];
        t.read(u64::from(VIRTIO_MMIO_CONFIG) + 3, &mut b);
        assert_eq!(b, [0xa3, 0, 0, 0], "past the end reads 0");
        t.write(u64::from(VIRTIO_MMIO_CONFIG), &[1]);
        assert!(seen.lock().unwrap().config_writes.is_empty());
        negotiate(&mut t, VERSION_1);
        t.write(u64::from(VIRTIO_MMIO_CONFIG) + 2, &[9]);
        assert_eq!(seen.lock().unwrap().config_writes, vec![(2, vec![9])]);
    }

    /// A transport brought up with queue 1 ready at 2 MiB, its device
    /// pausing at positions 5/4, saved.
    fn saved_active() -> TransportState {
        let (mut t, seen) = transport();
        negotiate(&mut t, VERSION_1 | TEST_FEATURE);
        setup_queue(&mut t, 1, 32, 0x20_0000);
        w(&mut t, VIRTIO_MMIO_STATUS, 0b1111);
        seen.lock().unwrap().pause_with = vec![QueuePosition {
            index: 1,
            next_avail: 5,
            next_used: 4,
        }];
        seen.lock()
            .unwrap()
            .interrupt
            .clone()
            .unwrap()
            .signal_used_queue()
            .unwrap();
        let state = t.save().unwrap();
        assert_eq!(seen.lock().unwrap().pauses, 1);
        state
    }

    #[test]
    fn a_saved_active_transport_is_restored_and_its_device_activated_where_it_was() {
        let state = saved_active();
        assert_eq!(state.status, 0b1111);
        assert_eq!(state.driver_features, VERSION_1 | TEST_FEATURE);
        assert_eq!(state.interrupt_status, INT_VRING);
        let untouched = QueueState {
            size: 256, // QueueNum reads as the maximum until written
            ..Default::default()
        };
        assert_eq!(state.queues[0], untouched);
        let q = state.queues[1];
        assert_eq!((q.size, q.ready, q.desc), (32, true, 0x20_0000));
        assert_eq!((q.next_avail, q.next_used), (5, 4));

        let (mut t, seen) = transport();
        t.restore(&state).unwrap();
        assert_eq!(r(&t, VIRTIO_MMIO_STATUS), 0b1111);
        assert_eq!(r(&t, VIRTIO_MMIO_INTERRUPT_STATUS), INT_VRING);
        assert_eq!(t.interrupt().irqfd().read().unwrap(), 1, "raised again");
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(r(&t, VIRTIO_MMIO_QUEUE_READY), 1);
        let seen = seen.lock().unwrap();
        let (features, queues) = seen.activated.clone().unwrap();
        assert_eq!(features, VERSION_1 | TEST_FEATURE);
        assert_eq!(queues, vec![(1, 32, 0x20_0000, 0x20_1000, 0x20_2000)]);
        assert_eq!(seen.positions, vec![(1, 5, 4)]);
        // The ready queue is kicked, so the device looks at its ring.
        assert_eq!(t.notify_evts()[1].read().unwrap(), 1);
        assert!(t.notify_evts()[0].read().is_err());
        // And a save of the clone gives the same registers back.
        drop(seen);
        assert_eq!(t.save().unwrap().status, state.status);
    }

    #[test]
    fn an_inactive_device_is_neither_paused_nor_activated() {
        let (mut t, seen) = transport();
        negotiate(&mut t, VERSION_1);
        let state = t.save().unwrap();
        assert_eq!(seen.lock().unwrap().pauses, 0);
        assert_eq!(state.status, 0b1011);
        let (mut t, seen) = transport();
        t.restore(&state).unwrap();
        assert!(seen.lock().unwrap().activated.is_none());
        assert_eq!(r(&t, VIRTIO_MMIO_STATUS), 0b1011);
        // The driver can go on from there.
        setup_queue(&mut t, 0, 8, 0x10_0000);
        w(&mut t, VIRTIO_MMIO_STATUS, 0b1111);
        assert!(seen.lock().unwrap().activated.is_some());
    }

    #[test]
    fn a_tampered_transport_state_is_refused_by_name() {
        let good = saved_active();
        let bad = |edit: &dyn Fn(&mut TransportState), want: &str| {
            let mut s = good.clone();
            edit(&mut s);
            let (mut t, seen) = transport();
            let e = t.restore(&s).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(seen.lock().unwrap().activated.is_none(), "{want}");
        };
        bad(
            &|s| s.queues.truncate(1),
            "test: the snapshot has 1 queues, the device 2",
        );
        bad(
            &|s| s.status = 0b0101,
            "status 0x5 is not one a driver reaches",
        );
        bad(&|s| s.status = 0x100 | 0b1111, "status 0x10f");
        bad(
            &|s| s.driver_features |= 1 << 40,
            "driver features 0x10100000008",
        );
        bad(
            &|s| s.driver_features = TEST_FEATURE,
            "are not a VERSION_1 subset",
        );
        bad(&|s| s.interrupt_status = 4, "InterruptStatus 0x4");
        bad(
            &|s| s.queues[1].desc = 0x4000_0000,
            "test: activating it as the template had: test: queue 1: rings at desc 0x40000000",
        );
        bad(&|s| s.queues[1].size = 33, "size 33 (max 64)");
        bad(
            &|s| s.queues[1].ready = false,
            "DRIVER_OK without a ready queue",
        );
    }

    #[test]
    fn cmdline_entry_format() {
        assert_eq!(
            cmdline_device(0xd000_0000, 5),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
    }
}
