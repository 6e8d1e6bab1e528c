//! Routing of the vCPU's port-I/O and MMIO exits to the device that owns
//! the address. One lock around all devices: exits are rare on the fast
//! path (virtqueue notifications go through ioeventfd, interrupts through
//! irqfd), so contention does not matter and the code stays simple.

use crate::devices::serial::{SerialConsole, COM1_PORT, COM1_PORT_COUNT};
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE};
use crate::devices::virtio::PauseError;
use crate::snapshot::format::DeviceState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_superio::serial::SerialState;

/// What an access to an address no device claims reads as: all ones,
/// like a PC's floating bus.
const UNCLAIMED: u8 = 0xff;

pub struct Bus {
    devices: Mutex<Devices>,
    /// QueueNotify writes that exited to us: each one is a notification
    /// the ioeventfd should have taken in the kernel.
    notify_exits: AtomicU64,
}

struct Devices {
    serial: SerialConsole,
    /// (base address, transport), windows of [`MMIO_WINDOW_SIZE`].
    virtio: Vec<(u64, MmioTransport)>,
}

impl Bus {
    pub fn new(serial: SerialConsole, virtio: Vec<(u64, MmioTransport)>) -> Self {
        Bus {
            devices: Mutex::new(Devices { serial, virtio }),
            notify_exits: AtomicU64::new(0),
        }
    }

    pub fn notify_exits(&self) -> u64 {
        self.notify_exits.load(Ordering::Relaxed)
    }

    /// For a snapshot, with the vCPUs stopped: pauses every virtio device
    /// and returns the serial console's state and each slot's.
    pub fn save(&self) -> Result<(SerialState, Vec<DeviceState>), PauseError> {
        let mut d = self.lock();
        let mut devices = Vec::with_capacity(d.virtio.len());
        for (_, t) in d.virtio.iter_mut() {
            devices.push(DeviceState {
                device_type: t.device_type(),
                transport: t.save()?,
            });
        }
        Ok((d.serial.state(), devices))
    }

    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        // Sizes a device does not answer (the UART only does bytes) read
        // as all ones, not as whatever the kvm_run page held before.
        data.fill(UNCLAIMED);
        let mut d = self.lock();
        match port.checked_sub(COM1_PORT) {
            Some(off) if off < COM1_PORT_COUNT => d.serial.pio_read(off, data),
            _ => data.fill(UNCLAIMED),
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) {
        let mut d = self.lock();
        if let Some(off) = port.checked_sub(COM1_PORT).filter(|o| *o < COM1_PORT_COUNT) {
            d.serial.pio_write(off, data);
        }
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        let d = self.lock();
        match d.virtio.iter().find(|(base, _)| in_window(*base, addr)) {
            Some((base, t)) => t.read(addr - base, data),
            None => data.fill(UNCLAIMED),
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        let mut d = self.lock();
        if let Some((base, t)) = d.virtio.iter_mut().find(|(base, _)| in_window(*base, addr)) {
            let offset = addr - *base;
            if offset == u64::from(VIRTIO_MMIO_QUEUE_NOTIFY) {
                self.notify_exits.fetch_add(1, Ordering::Relaxed);
            }
            t.write(offset, data);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Devices> {
        // A poisoned lock means a device panicked on another vCPU; the
        // device state is still memory-safe, so keep serving.
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn in_window(base: u64, addr: u64) -> bool {
    addr.checked_sub(base)
        .is_some_and(|off| off < MMIO_WINDOW_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> (Bus, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let serial = SerialConsole::new(&dir.path().join("c.log")).unwrap();
        (Bus::new(serial, Vec::new()), dir)
    }

    #[test]
    fn unclaimed_and_odd_sized_reads_are_all_ones() {
        let (bus, _dir) = bus();
        let mut d = [0u8; 4];
        bus.pio_read(0x3f8, &mut d); // a 4-byte read of the UART
        assert_eq!(d, [0xff; 4]);
        let mut d = [0u8; 2];
        bus.pio_read(0x1234, &mut d);
        assert_eq!(d, [0xff; 2]);
        let mut d = [0u8; 4];
        bus.mmio_read(0xd000_0000, &mut d);
        assert_eq!(d, [0xff; 4]);
        let mut lsr = [0u8];
        bus.pio_read(0x3fd, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60, "byte reads reach the UART");
    }

    #[test]
    fn windows_are_4k_from_their_base() {
        assert!(in_window(0xc000_0000, 0xc000_0fff));
        assert!(!in_window(0xc000_0000, 0xc000_1000));
        assert!(!in_window(0xc000_0000, 0xbfff_ffff));
    }
}
