//! Routing of the vCPU's port-I/O and MMIO exits to the device that owns
//! the address. One lock around all devices: exits are rare on the fast
//! path (virtqueue notifications go through ioeventfd, interrupts through
//! irqfd), so contention does not matter and the code stays simple.

use super::serial::{SerialConsole, COM1_PORT, COM1_PORT_COUNT};
use std::sync::Mutex;

/// What an access to an address no device claims reads as: all ones,
/// like a PC's floating bus.
const UNCLAIMED: u8 = 0xff;

pub struct Bus {
    devices: Mutex<Devices>,
}

struct Devices {
    serial: SerialConsole,
}

impl Bus {
    pub fn new(serial: SerialConsole) -> Self {
        Bus {
            devices: Mutex::new(Devices { serial }),
        }
    }

    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
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

    pub fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        data.fill(UNCLAIMED);
    }

    pub fn mmio_write(&self, _addr: u64, _data: &[u8]) {}

    fn lock(&self) -> std::sync::MutexGuard<'_, Devices> {
        // A poisoned lock means a device panicked on another vCPU; the
        // device state is still memory-safe, so keep serving.
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }
}
