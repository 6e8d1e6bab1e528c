//! A vhost-user frontend as a [`VirtioDevice`]: the device model lives in
//! an outside daemon (vhost-device-vsock for vsock, virtiofsd for
//! virtio-fs) that maps guest RAM through the memfd and works the queues
//! itself. This side negotiates features, hands over memory and queues,
//! and turns the daemon's "used buffers" eventfd into the transport's
//! interrupt status plus irqfd.
//!
//! All socket traffic after setup happens on the device's own thread,
//! started in [`VhostUserDevice::connect`] before any seccomp filter
//! (it drops its capabilities and installs its own filter first):
//! `activate` runs on a filtered vCPU thread and only sends it a message.

use super::worker::{Next, Worker, WorkerEnd};
use super::{ActivateError, Interrupt, QueueT, ReadyQueue, VirtioDevice};
use crate::memory::GuestMemoryMmap;
use crate::security::seccomp::{self, SeccompMode, ThreadKind};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

/// Protocol features we use: device config space from the daemon, and
/// acknowledged requests so a failed setup is reported, not assumed.
const WANTED_PROTOCOL: VhostUserProtocolFeatures = VhostUserProtocolFeatures::CONFIG
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::MQ);

#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("vhost-user {name} at {socket}: {what}: {error}")]
    Protocol {
        name: &'static str,
        socket: PathBuf,
        what: &'static str,
        #[source]
        error: vhost::Error,
    },
    #[error("vhost-user {name} at {socket}: the daemon offers {offered} queues, {needed} needed")]
    Queues {
        name: &'static str,
        socket: PathBuf,
        offered: u64,
        needed: usize,
    },
    #[error("vhost-user {name} at {socket}: the daemon does not serve its configuration space")]
    NoConfig { name: &'static str, socket: PathBuf },
    #[error("virtio-fs tag {tag:?}: 1 to {FS_TAG_MAX} bytes without NUL")]
    FsTag { tag: String },
    #[error("vhost-user {name}: starting its thread: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Where the device's configuration space comes from.
#[derive(Debug, Clone)]
pub enum DeviceConfig {
    /// Asked from the daemon (GET_CONFIG), this many bytes: vsock's
    /// guest CID is the daemon's.
    FromDaemon(u32),
    /// Built here: virtiofsd does not serve virtio-fs's config space
    /// (QEMU builds it from its own tag property, too).
    Fixed(Vec<u8>),
}

/// virtio-vsock: rx, tx and event queues (virtio 1.2, 5.10.2); config is
/// the 64-bit guest CID.
pub const VSOCK_QUEUES: [u16; 3] = [256, 256, 256];
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// virtio-fs: the hiprio queue and one request queue (5.11.2).
pub const FS_QUEUES: [u16; 2] = [1024, 1024];
pub const VIRTIO_ID_FS: u32 = 26;
/// virtio-fs tags are at most 36 bytes, NUL-padded (5.11.4); the limit
/// is husk-vmm-config's, which `--fs-tag` is checked against.
use husk_vmm_config::FS_TAG_MAX;

/// virtio-fs configuration space: tag, then num_request_queues.
pub fn fs_config(tag: &str) -> Result<Vec<u8>, VhostUserError> {
    if tag.is_empty() || tag.len() > FS_TAG_MAX || tag.contains('\0') {
        return Err(VhostUserError::FsTag { tag: tag.into() });
    }
    let mut config = vec![0u8; FS_TAG_MAX + 4];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    config[FS_TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
    Ok(config)
}

/// What the vCPU thread hands the device thread at DRIVER_OK.
struct Activation {
    mem: GuestMemoryMmap,
    features: u64,
    queues: Vec<ReadyQueue>,
    interrupt: Interrupt,
}

/// The device thread's verdict on the activation, once it has one.
type Activated = Arc<(Mutex<Option<Result<(), String>>>, Condvar)>;

fn set_verdict(activated: &Activated, verdict: Option<Result<(), String>>) {
    let (lock, cv) = &**activated;
    *lock.lock().unwrap_or_else(|e| e.into_inner()) = verdict;
    cv.notify_all();
}

pub struct VhostUserDevice {
    activated: Activated,
    name: &'static str,
    device_type: u32,
    queue_sizes: Vec<u16>,
    /// Offered to the driver: the daemon's, without the vhost-user bit.
    features: u64,
    config: Vec<u8>,
    worker: Worker<Activation>,
}

impl VhostUserDevice {
    /// vhost-device-vsock (or any vhost-user vsock daemon) at `socket`.
    pub fn vsock(socket: &Path, seccomp: SeccompMode) -> Result<Self, VhostUserError> {
        let config = DeviceConfig::FromDaemon(8);
        Self::connect(
            "vsock",
            VIRTIO_ID_VSOCK,
            socket,
            &VSOCK_QUEUES,
            config,
            seccomp,
        )
    }

    /// virtiofsd at `socket`, mounted in the guest by `tag`.
    pub fn fs(socket: &Path, tag: &str, seccomp: SeccompMode) -> Result<Self, VhostUserError> {
        let config = DeviceConfig::Fixed(fs_config(tag)?);
        Self::connect("fs", VIRTIO_ID_FS, socket, &FS_QUEUES, config, seccomp)
    }

    /// Connects to the daemon at `socket`, takes ownership of it, learns
    /// its features and the configuration space, and starts the device
    /// thread, which installs the vhost-user seccomp filter first.
    pub fn connect(
        name: &'static str,
        device_type: u32,
        socket: &Path,
        queue_sizes: &[u16],
        config: DeviceConfig,
        seccomp: SeccompMode,
    ) -> Result<Self, VhostUserError> {
        let err = |what| {
            move |error| VhostUserError::Protocol {
                name,
                socket: socket.into(),
                what,
                error,
            }
        };
        let mut fe =
            Frontend::connect(socket, queue_sizes.len() as u64).map_err(err("connecting"))?;
        fe.set_owner().map_err(err("SET_OWNER"))?;
        let offered = fe.get_features().map_err(err("GET_FEATURES"))?;
        let (mut config, from_daemon) = match config {
            DeviceConfig::FromDaemon(size) => (vec![0u8; size as usize], true),
            DeviceConfig::Fixed(bytes) => (bytes, false),
        };
        if offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let protocol = fe
                .get_protocol_features()
                .map_err(err("GET_PROTOCOL_FEATURES"))?;
            let use_ = protocol & WANTED_PROTOCOL;
            fe.set_protocol_features(use_)
                .map_err(err("SET_PROTOCOL_FEATURES"))?;
            if use_.contains(VhostUserProtocolFeatures::MQ) {
                let n = fe.get_queue_num().map_err(err("GET_QUEUE_NUM"))?;
                if n < queue_sizes.len() as u64 {
                    return Err(VhostUserError::Queues {
                        name,
                        socket: socket.into(),
                        offered: n,
                        needed: queue_sizes.len(),
                    });
                }
            }
            if from_daemon && !config.is_empty() {
                if !use_.contains(VhostUserProtocolFeatures::CONFIG) {
                    return Err(VhostUserError::NoConfig {
                        name,
                        socket: socket.into(),
                    });
                }
                let size = config.len() as u32;
                let (_, payload) = fe
                    .get_config(0, size, VhostUserConfigFlags::WRITABLE, &config)
                    .map_err(err("GET_CONFIG"))?;
                config.copy_from_slice(&payload);
            }
        }
        let socket_path = socket.to_path_buf();
        let activated: Activated = Default::default();
        let verdict = activated.clone();
        let worker = Worker::spawn(format!("vhost-{name}"), move |end| {
            if let Err(e) = seccomp::harden_thread(ThreadKind::VhostUser, seccomp) {
                set_verdict(&verdict, Some(Err(e.to_string())));
                return;
            }
            device_thread(name, socket_path, fe, offered, end, verdict)
        })
        .map_err(|source| VhostUserError::Thread { name, source })?;
        Ok(VhostUserDevice {
            activated,
            name,
            device_type,
            queue_sizes: queue_sizes.to_vec(),
            features: offered & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            config,
            worker,
        })
    }
}

impl VhostUserDevice {
    /// Waits up to `timeout` for the daemon to be set up after
    /// [`activate`](VirtioDevice::activate): `None` if not done yet,
    /// otherwise whether it worked. Until then the daemon has no rings.
    pub fn wait_activated(&self, timeout: Duration) -> Option<Result<(), String>> {
        let (lock, cv) = &*self.activated;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |v| v.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.clone()
    }
}

impl VirtioDevice for VhostUserDevice {
    fn name(&self) -> &'static str {
        self.name
    }
    fn device_type(&self) -> u32 {
        self.device_type
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = self.config.get(offset as usize + i) {
                *b = *v;
            }
        }
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {
        // vsock and fs have read-only configuration space.
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        features: u64,
        queues: Vec<ReadyQueue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        self.worker.activate_device(
            self.name,
            Activation {
                mem,
                features,
                queues,
                interrupt,
            },
        )
    }
    fn reset(&mut self) {
        // Returns once the daemon has stopped every ring: the driver may
        // reuse the ring memory as soon as the reset is done.
        if !self.worker.reset() {
            tracing::error!(
                "{}: the daemon did not stop its rings in time for the reset",
                self.name
            );
        }
    }
}

/// For each activation: sets the daemon up, then relays its call eventfds
/// into the transport's interrupt until the driver resets the device
/// (then stops the daemon's rings and waits for the next activation) or
/// the device is dropped.
fn device_thread(
    name: &'static str,
    socket: PathBuf,
    mut fe: Frontend,
    offered: u64,
    end: WorkerEnd<Activation>,
    activated: Activated,
) {
    while let Some(act) = end.wait_activation() {
        let result = setup_daemon(&mut fe, offered, &act);
        set_verdict(
            &activated,
            Some(result.as_ref().map(|_| ()).map_err(Clone::clone)),
        );
        let next = match result {
            Ok(calls) => relay_interrupts(name, &calls, &act.interrupt, &end),
            Err(e) => {
                // The driver sees a device that never answers until it
                // resets it; the host sees why in the log.
                tracing::error!("vhost-user {name} at {}: {e}", socket.display());
                end.wait_until_stopped()
            }
        };
        if next == Next::Exit {
            return;
        }
        let rings: Vec<usize> = act.queues.iter().map(|q| q.index).collect();
        stop_rings(name, &mut fe, offered, &rings);
        set_verdict(&activated, None);
        end.ack_reset();
    }
}

/// Stops the daemon's rings (vhost-user: "Stopping a ring" is
/// GET_VRING_BASE, which the daemon answers once it no longer touches
/// it), disabling them first where the protocol allows, as QEMU does on a
/// device reset. The next activation sets everything up again.
fn stop_rings(name: &'static str, fe: &mut Frontend, offered: u64, rings: &[usize]) {
    let enable_known = offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
    for &index in rings {
        if enable_known {
            if let Err(e) = fe.set_vring_enable(index, false) {
                tracing::warn!("vhost-user {name}: disabling ring {index}: {e}");
            }
        }
        match fe.get_vring_base(index) {
            Ok(base) => tracing::debug!("vhost-user {name}: ring {index} stopped at {base}"),
            Err(e) => tracing::warn!("vhost-user {name}: stopping ring {index}: {e}"),
        }
    }
}

/// The vhost-user setup sequence: features, memory table, and per ready
/// queue, under its transport index: size, ring addresses (in this
/// process's address space, as the protocol wants without the GPA
/// feature), base index, call and kick eventfds, enable.
fn setup_daemon(
    fe: &mut Frontend,
    offered: u64,
    act: &Activation,
) -> Result<Vec<(usize, EventFd)>, String> {
    let mem = &act.mem;
    let e = |what: &'static str| move |err: vhost::Error| format!("{what}: {err}");
    let protocol_bit = offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    fe.set_features(act.features | protocol_bit)
        .map_err(e("SET_FEATURES"))?;
    let regions = mem
        .iter()
        .map(VhostUserMemoryRegionInfo::from_guest_region)
        .collect::<Result<Vec<_>, _>>()
        .map_err(e("guest memory region"))?;
    fe.set_mem_table(&regions).map_err(e("SET_MEM_TABLE"))?;
    let mut calls = Vec::new();
    for ReadyQueue { index, queue, kick } in &act.queues {
        let (index, q) = (*index, queue);
        fe.set_vring_num(index, q.size())
            .map_err(e("SET_VRING_NUM"))?;
        let config = vring_config(mem, q)?;
        fe.set_vring_addr(index, &config)
            .map_err(e("SET_VRING_ADDR"))?;
        fe.set_vring_base(index, 0).map_err(e("SET_VRING_BASE"))?;
        let call = EventFd::new(libc::EFD_NONBLOCK).map_err(|err| format!("eventfd: {err}"))?;
        fe.set_vring_call(index, &call)
            .map_err(e("SET_VRING_CALL"))?;
        fe.set_vring_kick(index, kick)
            .map_err(e("SET_VRING_KICK"))?;
        fe.set_vring_enable(index, true)
            .map_err(e("SET_VRING_ENABLE"))?;
        calls.push((index, call));
    }
    // Without REPLY_ACK the requests above are fire-and-forget; a request
    // with a reply, answered in order, proves the daemon has processed
    // them all before activation is reported done.
    fe.get_features().map_err(e("GET_FEATURES (sync)"))?;
    Ok(calls)
}

/// What SET_VRING_ADDR tells the daemon about queue `q`: its size and its
/// rings' addresses in this process (the transport has checked they lie
/// in guest RAM).
pub(crate) fn vring_config(
    mem: &GuestMemoryMmap,
    q: &impl QueueT,
) -> Result<VringConfigData, String> {
    let host = |addr: u64| {
        mem.get_host_address(GuestAddress(addr))
            .map(|p| p as u64)
            .map_err(|err| format!("ring at {addr:#x}: {err}"))
    };
    Ok(VringConfigData {
        queue_max_size: q.max_size(),
        queue_size: q.size(),
        flags: 0,
        desc_table_addr: host(q.desc_table())?,
        used_ring_addr: host(q.used_ring())?,
        avail_ring_addr: host(q.avail_ring())?,
        log_addr: None,
    })
}

/// virtio-mmio has one interrupt line and an InterruptStatus register the
/// guest reads first; a daemon's call eventfd cannot set that register, so
/// the call goes through here: set the bit, then raise the irqfd.
fn relay_interrupts(
    name: &'static str,
    calls: &[(usize, EventFd)],
    interrupt: &Interrupt,
    end: &WorkerEnd<Activation>,
) -> Next {
    let mut fds: Vec<libc::pollfd> = calls
        .iter()
        .map(|(_, c)| c.as_raw_fd())
        .chain([end.wake_fd()])
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `fds` is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            tracing::error!(
                "vhost-user {name}: poll: {}",
                std::io::Error::last_os_error()
            );
            // Serve nothing more, but still answer a reset or the drop.
            return end.wait_until_stopped();
        }
        let mut fired = false;
        for (pfd, (_, call)) in fds.iter_mut().zip(calls) {
            if pfd.revents & libc::POLLIN != 0 && call.read().is_ok() {
                fired = true;
            }
            pfd.revents = 0;
        }
        if fired {
            if let Err(e) = interrupt.signal_used_queue() {
                tracing::error!("vhost-user {name}: raising the interrupt: {e}");
            }
        }
        let wake = fds.last_mut().map(|p| std::mem::take(&mut p.revents));
        if wake.is_some_and(|r| r & libc::POLLIN != 0) {
            match end.next() {
                Next::Serve => {}
                stop => return stop,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_config_is_the_padded_tag_then_one_request_queue() {
        let c = fs_config("husk").unwrap();
        assert_eq!(c.len(), 40);
        assert_eq!(&c[..4], b"husk");
        assert!(c[4..36].iter().all(|b| *b == 0), "NUL-padded");
        assert_eq!(u32::from_le_bytes(c[36..40].try_into().unwrap()), 1);
        assert!(fs_config(&"x".repeat(36)).is_ok());
        for bad in ["", "a\0b"] {
            assert!(fs_config(bad).is_err(), "{bad:?}");
        }
        let e = fs_config(&"x".repeat(37)).unwrap_err().to_string();
        assert!(e.contains("1 to 36 bytes"), "{e}");
    }

    #[test]
    fn a_missing_daemon_socket_is_named() {
        let e = VhostUserDevice::vsock(Path::new("/nonexistent/vhost.sock"), SeccompMode::Kill)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("vsock at /nonexistent/vhost.sock: connecting"),
            "{e}"
        );
    }

    /// vhost-user requests (FrontendReq) the fake daemon answers or reads
    /// a ring index from.
    const GET_FEATURES: u32 = 1;
    const SET_VRING_ENABLE: u32 = 18;
    const GET_VRING_BASE: u32 = 11;
    const GET_PROTOCOL_FEATURES: u32 = 15;

    /// A vhost-user daemon stand-in on `socket`: offers VERSION_1 and
    /// PROTOCOL_FEATURES (with no protocol feature), answers what needs an
    /// answer, and reports each request with the ring index it names
    /// (SET_VRING_NUM..=SET_VRING_CALL, SET_VRING_ENABLE), before it
    /// answers. File descriptors sent along are dropped by the plain reads.
    fn fake_daemon(socket: &Path) -> std::sync::mpsc::Receiver<(u32, Option<u32>)> {
        use std::io::{Read, Write};
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut hdr = [0u8; 12];
            while s.read_exact(&mut hdr).is_ok() {
                let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
                let (request, size) = (word(0), word(8));
                let mut body = vec![0u8; size as usize];
                s.read_exact(&mut body).unwrap();
                let index = match request {
                    8..=13 | SET_VRING_ENABLE => Some(u32::from(body[0])),
                    _ => None,
                };
                if tx.send((request, index)).is_err() {
                    return;
                }
                let reply: Option<Vec<u8>> = match request {
                    GET_FEATURES => Some(((1u64 << 32) | (1 << 30)).to_le_bytes().to_vec()),
                    GET_PROTOCOL_FEATURES => Some(0u64.to_le_bytes().to_vec()),
                    GET_VRING_BASE => Some([&body[..4], &[0u8; 4][..]].concat()),
                    _ => None,
                };
                if let Some(body) = reply {
                    let mut msg = request.to_le_bytes().to_vec();
                    msg.extend_from_slice(&0x5u32.to_le_bytes()); // version 1, reply
                    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
                    msg.extend_from_slice(&body);
                    s.write_all(&msg).unwrap();
                }
            }
        });
        rx
    }

    #[test]
    fn a_ring_is_set_up_under_the_index_the_driver_gave_it() {
        use crate::devices::virtio::mmio::MmioTransport;
        use crate::memory::create_guest_memory;
        use virtio_bindings::virtio_mmio::*;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vhost.sock");
        let requests = fake_daemon(&socket);
        let dev = VhostUserDevice::connect(
            "vsock",
            VIRTIO_ID_VSOCK,
            &socket,
            &VSOCK_QUEUES,
            DeviceConfig::Fixed(vec![0; 8]),
            SeccompMode::Off,
        )
        .unwrap();
        let notify = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mem = create_guest_memory(16).unwrap();
        let mut t = MmioTransport::new(mem, Box::new(dev), notify, irq).unwrap();
        let mut w = |off: u32, v: u32| t.write(u64::from(off), &v.to_le_bytes());
        // The driver readies the event queue (2) only.
        w(VIRTIO_MMIO_STATUS, 0b11);
        w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        w(VIRTIO_MMIO_DRIVER_FEATURES, 1); // VERSION_1
        w(VIRTIO_MMIO_STATUS, 0b1011);
        w(VIRTIO_MMIO_QUEUE_SEL, 2);
        w(VIRTIO_MMIO_QUEUE_NUM, 16);
        w(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x10_0000);
        w(VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x10_1000);
        w(VIRTIO_MMIO_QUEUE_USED_LOW, 0x10_2000);
        w(VIRTIO_MMIO_QUEUE_READY, 1);
        w(VIRTIO_MMIO_STATUS, 0b1111);
        let mut rings = Vec::new();
        loop {
            let (request, index) = requests
                .recv_timeout(Duration::from_secs(10))
                .expect("the frontend set up no ring in 10 s");
            rings.extend(index);
            if request == SET_VRING_ENABLE {
                break;
            }
        }
        assert_eq!(rings, [2; 6], "NUM, ADDR, BASE, KICK, CALL, ENABLE");
        // A reset stops the rings that were set up, and only those. It
        // returns once they are stopped, each reported before its answer.
        w(VIRTIO_MMIO_STATUS, 0);
        let stopped: Vec<_> = requests
            .try_iter()
            .filter(|(r, _)| *r == GET_VRING_BASE)
            .filter_map(|(_, i)| i)
            .collect();
        assert_eq!(stopped, [2]);
    }
}
