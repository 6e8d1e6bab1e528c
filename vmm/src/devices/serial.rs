//! The guest console: a 16550A UART (vm-superio's `Serial`) at the PC's
//! COM1 ports 0x3f8-0x3ff and IRQ 4, whose output goes to a log file.
//!
//! The interrupt is an eventfd that KVM delivers as GSI 4 (irqfd), so
//! raising it never needs a round trip through the vCPU thread. Its
//! registers and receive FIFO go into a snapshot (vm-superio's
//! `SerialState`); a clone writes to a console log of its own.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// COM1's I/O ports and interrupt line on a PC.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_PORT_COUNT: u16 = 8;
pub const COM1_GSI: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("console log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serial interrupt eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("serial state from the snapshot: {0}")]
    State(String),
}

/// An eventfd as vm-superio's interrupt trigger.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Unbuffered so that the console log is complete at any moment, also when
/// the VMM is killed: the host reads its tail to explain a failed boot.
pub struct ConsoleLog(File);

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct SerialConsole {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleLog>,
}

impl SerialConsole {
    /// Creates (truncates) the log file.
    pub fn new(log: &Path) -> Result<Self, SerialError> {
        Self::from_state(log, &SerialState::default())
    }

    /// The UART as `state` left it, writing to a new log at `log`. An
    /// interrupt the state has pending is raised again (vm-superio does).
    pub fn from_state(log: &Path, state: &SerialState) -> Result<Self, SerialError> {
        let file = File::create(log).map_err(|source| SerialError::Log {
            path: log.into(),
            source,
        })?;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        let uart = Serial::from_state(
            state,
            EventFdTrigger(irq),
            vm_superio::serial::NoEvents,
            ConsoleLog(file),
        )
        .map_err(|e| SerialError::State(format!("{e:?}")))?;
        Ok(SerialConsole { uart })
    }

    /// Registers and receive FIFO, for a snapshot.
    pub fn state(&self) -> SerialState {
        self.uart.state()
    }

    /// The eventfd to register as irqfd for [`COM1_GSI`].
    pub fn irq_evt(&self) -> &EventFd {
        &self.uart.interrupt_evt().0
    }

    pub fn pio_read(&mut self, offset: u16, data: &mut [u8]) {
        if let ([b], Ok(offset)) = (data, u8::try_from(offset)) {
            *b = self.uart.read(offset);
        }
    }

    pub fn pio_write(&mut self, offset: u16, data: &[u8]) {
        if let ([b], Ok(offset)) = (data, u8::try_from(offset)) {
            // The only error is a failed write to the log or the eventfd:
            // the guest cannot act on it, so it is logged, not propagated.
            if let Err(e) = self.uart.write(offset, *b) {
                tracing::warn!("serial console: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_written_to_thr_reach_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut s = SerialConsole::new(&log).unwrap();
        for b in b"hi\n" {
            s.pio_write(0, &[*b]);
        }
        assert_eq!(std::fs::read(&log).unwrap(), b"hi\n");
        // LSR (offset 5): transmitter empty, as a driver polling it expects.
        let mut lsr = [0u8];
        s.pio_read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
    }

    #[test]
    fn enabling_the_thr_empty_interrupt_signals_the_irq_eventfd() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SerialConsole::new(&dir.path().join("c.log")).unwrap();
        assert!(
            s.irq_evt().read().is_err(),
            "no interrupt before IER is set"
        );
        s.pio_write(1, &[0x02]); // IER: THR empty
        assert_eq!(s.irq_evt().read().unwrap(), 1);
    }

    #[test]
    fn a_restored_uart_keeps_its_registers_and_writes_to_its_own_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SerialConsole::new(&dir.path().join("a.log")).unwrap();
        s.pio_write(7, &[0x5a]); // scratch
        s.pio_write(3, &[0x03]); // LCR: 8 bits
        let state = s.state();
        let log = dir.path().join("b.log");
        let mut r = SerialConsole::from_state(&log, &state).unwrap();
        let mut b = [0u8];
        r.pio_read(7, &mut b);
        assert_eq!(b[0], 0x5a);
        r.pio_read(3, &mut b);
        assert_eq!(b[0], 0x03);
        r.pio_write(0, b"x");
        assert_eq!(std::fs::read(&log).unwrap(), b"x");
        assert!(std::fs::read(dir.path().join("a.log")).unwrap().is_empty());
        let mut full = state;
        full.in_buffer = vec![0; 65];
        let e = SerialConsole::from_state(&log, &full).err().unwrap();
        assert!(e.to_string().contains("serial state"), "{e}");
    }

    #[test]
    fn unwritable_log_is_named_in_the_error() {
        let e = SerialConsole::new(Path::new("/nonexistent/dir/console.log"))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("/nonexistent/dir/console.log"),
            "{e}"
        );
    }
}
