//! virtio-rng (virtio 1.2, 5.4): one request queue; the device fills each
//! device-writable buffer the guest offers with bytes from the host's
//! getrandom(2). It gives the guest's kernel entropy from its first
//! second, so nothing in a container waits for the guest's pool; QEMU's
//! path attaches the same device (`virtio-rng-device` on /dev/urandom).
//!
//! A request is capped at [`MAX_REQUEST`] bytes, as Firecracker caps its
//! own: a guest cannot make one request drain the host's pool for long.

use super::worker::{Next, Worker, WorkerEnd};
use super::{
    ActivateError, Interrupt, PauseError, Queue, QueuePosition, QueueT, ReadyQueue, VirtioDevice,
};
use crate::memory::GuestMemoryMmap;
use crate::security::seccomp::{self, SeccompMode, ThreadKind};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

pub const VIRTIO_ID_RNG: u32 = 4;
/// The most bytes one request gets.
pub const MAX_REQUEST: usize = 64 * 1024;

struct Activation {
    mem: GuestMemoryMmap,
    index: usize,
    queue: Queue,
    kick: Arc<EventFd>,
    interrupt: Interrupt,
}

pub struct Rng {
    worker: Worker<Activation>,
}

impl Rng {
    /// The device; its thread starts now and hardens itself.
    pub fn new(seccomp: SeccompMode) -> std::io::Result<Self> {
        let worker = Worker::spawn("virtio-rng".into(), move |end| {
            if let Err(e) = seccomp::harden_thread(ThreadKind::DeviceIo, seccomp) {
                tracing::error!("virtio-rng: {e}");
                return;
            }
            while let Some(act) = end.wait_activation() {
                let (next, position) = serve(act, &end);
                if !end.after_serving(next, vec![position]) {
                    return;
                }
            }
        })?;
        Ok(Rng { worker })
    }
}

impl VirtioDevice for Rng {
    fn name(&self) -> &'static str {
        "rng"
    }
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _: u64, _: &mut [u8]) {}
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _features: u64,
        mut queues: Vec<ReadyQueue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let ready = queues.len();
        let ReadyQueue { index, queue, kick } = match (queues.pop(), queues.is_empty()) {
            (Some(q), true) => q,
            _ => {
                return Err(ActivateError::Queues {
                    device: "rng",
                    ready,
                    needed: "exactly one queue must be ready",
                })
            }
        };
        self.worker.activate_device(
            "rng",
            Activation {
                mem,
                index,
                queue,
                kick,
                interrupt,
            },
        )
    }
    fn reset(&mut self) {
        if !self.worker.reset() {
            tracing::error!("rng: the device thread did not stop in time for the reset");
        }
    }
    fn pause(&mut self) -> Result<Vec<QueuePosition>, PauseError> {
        self.worker
            .pause()
            .map_err(|source| PauseError::ThreadGone {
                device: "rng",
                source,
            })
    }
}

/// Answers requests until the driver resets the device, it pauses or is
/// dropped; which of these, and where it was in the queue.
fn serve(act: Activation, end: &WorkerEnd<Activation>) -> (Next, QueuePosition) {
    let Activation {
        mem,
        index,
        mut queue,
        kick,
        interrupt,
    } = act;
    let mut bytes = vec![0u8; MAX_REQUEST];
    loop {
        let mut fds = [kick.as_raw_fd(), end.wake_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `fds` is a valid pollfd array of its length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if fds[1].revents & libc::POLLIN != 0 {
            match end.next() {
                Next::Serve => {}
                stop => return (stop, QueuePosition::of(index, &queue)),
            }
        }
        let _ = kick.read();
        let used = serve_requests(&mem, &mut queue, &mut bytes, fill);
        if used {
            let _ = interrupt.signal_used_queue();
        }
    }
}

/// Answers every request the guest queued: fills each chain's writable
/// buffers in order, at most [`MAX_REQUEST`] bytes a chain (`bytes` is the
/// scratch buffer, that long), from `fill`, and gives it back used with
/// the count. True if any chain was used.
pub(crate) fn serve_requests(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    bytes: &mut [u8],
    mut fill: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
) -> bool {
    let cap = bytes.len().min(MAX_REQUEST);
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut written = 0usize;
        for d in chain.writable() {
            let want = (d.len() as usize).min(cap - written);
            if want == 0 {
                break;
            }
            let got = match fill(&mut bytes[..want]) {
                Ok(n) => n.min(want),
                Err(e) => {
                    tracing::warn!("rng: getrandom: {e}");
                    break;
                }
            };
            if mem.write_slice(&bytes[..got], d.addr()).is_err() {
                break;
            }
            written += got;
        }
        let _ = queue.add_used(mem, head, written as u32);
        used = true;
    }
    used
}

/// Fills `buf` from getrandom(2) (the urandom pool: never blocks once the
/// host has booted); returns how many bytes it filled.
fn fill(buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}
