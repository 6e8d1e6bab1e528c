//! What every husk-vmm virtio device shares: the [`VirtioDevice`]
//! interface it implements, the [`Interrupt`] it raises, the queues it is
//! handed ([`ReadyQueue`]) and where it was in them ([`QueuePosition`]),
//! and why it could not start or pause.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;

use virtio_queue::{Queue, QueueT};

/// Interrupt status bits (virtio 1.2, 4.2.2 InterruptStatus).
pub const INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// A device's interrupt line: the status bits the guest reads from the
/// transport, and the irqfd that makes KVM raise the GSI.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irq: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(irq: EventFd) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            irq: Arc::new(irq),
        }
    }

    /// The eventfd to register as irqfd.
    pub fn irqfd(&self) -> &EventFd {
        &self.irq
    }

    /// The device has put buffers in a used ring.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.signal(INT_VRING)
    }

    /// The device configuration changed.
    pub fn signal_config(&self) -> std::io::Result<()> {
        self.signal(INT_CONFIG)
    }

    fn signal(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: the guest has handled these bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// A snapshot's pending bits, raised again: the irqchip's state may
    /// predate the template's last interrupt, and a driver reads
    /// InterruptStatus first, so one more is harmless.
    pub fn restore(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            tracing::warn!("raising a restored interrupt: {e}");
        }
    }
}

/// A queue the driver made ready, as the transport hands it to the device
/// at activation.
pub struct ReadyQueue {
    /// The queue's index on the transport (the QueueSel it was set up
    /// under): what a device's queue roles (rx, tx, event, ...) and a
    /// vhost-user daemon's rings go by. Queues the driver left unready are
    /// absent, so this is not the queue's position in the list.
    pub index: usize,
    pub queue: Queue,
    /// The eventfd the driver's notifications for this queue arrive on.
    pub kick: Arc<EventFd>,
}

/// Where a device was in one of its queues when it paused for a snapshot:
/// the next available entry it would take and the next used entry it
/// would write (virtio 1.2, 2.7.6 and 2.7.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePosition {
    /// The queue's index on the transport.
    pub index: usize,
    pub next_avail: u16,
    pub next_used: u16,
}

impl QueuePosition {
    /// Where `queue` (under `index`) is now.
    pub fn of(index: usize, queue: &Queue) -> Self {
        QueuePosition {
            index,
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
        }
    }
}

/// Why a device could not be paused for a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// The device keeps state outside husk-vmm that a snapshot cannot
    /// hold (a vhost-user daemon's).
    #[error("{device}: a snapshot cannot hold this device's state")]
    Unsupported { device: &'static str },
    #[error("{device}: the device thread did not pause: {source}")]
    ThreadGone {
        device: &'static str,
        #[source]
        source: ThreadGone,
    },
}

/// Why a device could not start with what the driver set up.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver made other queues ready than the device runs with.
    #[error("activating {device}: {needed} ({ready} are)")]
    Queues {
        device: &'static str,
        ready: usize,
        needed: &'static str,
    },
    /// The device's thread is gone, so nothing would serve the queues.
    #[error("activating {device}: {source}")]
    ThreadGone {
        device: &'static str,
        #[source]
        source: ThreadGone,
    },
}

/// A virtio device behind a transport. The transport owns feature
/// negotiation, queue setup and status; the device sees the result once,
/// in [`activate`](VirtioDevice::activate), when the driver sets DRIVER_OK.
pub trait VirtioDevice: Send {
    /// Short name for logs and errors, e.g. "vsock".
    fn name(&self) -> &'static str;
    /// Virtio device ID (virtio 1.2, 5: 1 net, 4 rng, 19 vsock, 26 fs).
    fn device_type(&self) -> u32;
    /// The most descriptors each queue may have; one entry per queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (the transport adds VERSION_1).
    fn features(&self) -> u64;
    /// Reads device configuration space at `offset`; bytes beyond it
    /// read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space; most devices ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with guest memory, the negotiated features and the
    /// queues the driver made ready (in index order), each with its index
    /// and the eventfd its notifications arrive on.
    ///
    /// Runs on the vCPU thread that wrote DRIVER_OK, under the vCPU seccomp
    /// filter: hand the queues to a thread the device started beforehand
    /// (a channel send is a futex), do not open, spawn or dup here.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<ReadyQueue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device (status 0): stop using the queues.
    fn reset(&mut self);
    /// For a snapshot, with the vCPUs stopped: finish the requests at
    /// hand, stop using the queues and say where the device was in each
    /// (none if it is not active). The VM does not run on afterwards.
    /// Devices whose state lives elsewhere keep this refusal.
    fn pause(&mut self) -> Result<Vec<QueuePosition>, PauseError> {
        Err(PauseError::Unsupported {
            device: self.name(),
        })
    }
}

/// The device thread has ended (its hardening failed, or it was dropped).
#[derive(Debug, thiserror::Error)]
#[error("the device thread has ended")]
pub struct ThreadGone;
