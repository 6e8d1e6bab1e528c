//! One micro-VM: builds everything (KVM VM, guest RAM, kernel and boot
//! structures, irqchip and PIT, serial console, vCPUs) before any vCPU
//! runs, then runs one thread per vCPU until the guest shuts down or the
//! VMM is told to stop. A clone of a template is built from the
//! template's snapshot instead of a kernel (`restore`), and a template's
//! running VM can be snapshotted ([`RunningVm::snapshot`]).

use crate::boot::loader::{self, BootEntry, LoaderError};
use crate::boot::mptable::{self, MptableError};
use crate::devices::bus::Bus;
use crate::devices::serial::{SerialConsole, SerialError, COM1_GSI};
use crate::devices::virtio::mmio::RestoreError;
use crate::devices::virtio::mmio::{
    cmdline_device, MmioTransport, NotifyMismatch, MMIO_WINDOW_SIZE,
};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::memory::{self, GuestMemoryMmap, MemoryError, RamBacking};
use crate::memory::{VIRTIO_IRQS, VIRTIO_MMIO_BASE};
use crate::security::seccomp::{self, ThreadKind};
use crate::snapshot::{self, SnapshotError};
use crate::vcpu::{self, Vcpu, VcpuError, VcpuStop};
use husk_vmm_config::{ConfigError, SeccompMode, Snapshot, VmmConfig, MAX_VCPUS};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

/// Where KVM puts the three pages of the TSS it needs for real-mode
/// emulation on Intel: just below the BIOS area at the top of 4 GiB, inside
/// the MMIO hole where no RAM is (QEMU and Firecracker use the same spot).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("/dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{requested} vCPUs requested; this host allows 1 to {max}")]
    VcpuCount { requested: u8, max: usize },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Serial(#[from] SerialError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("installing the vCPU kick signal handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("{count} virtio devices; at most {max} fit the interrupt lines")]
    TooManyDevices { count: usize, max: usize },
    #[error("virtio {device}: eventfd: {source}")]
    DeviceEventFd {
        device: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("virtio {device}: {what}: {source}")]
    DeviceKvm {
        device: &'static str,
        what: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("virtio: {0}")]
    Transport(#[from] NotifyMismatch),
    #[error("starting vCPU thread {index}: {source}")]
    Thread { index: u8, source: std::io::Error },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("virtio device in slot {slot}: {source}")]
    RestoreDevice {
        slot: usize,
        #[source]
        source: RestoreError,
    },
}

/// A fully set-up VM whose vCPUs have not run yet.
pub struct Vmm {
    // The VM fd must outlive the vCPUs and the memory mappings KVM holds.
    vm: VmFd,
    mem: GuestMemoryMmap,
    /// How the guest was entered; None for a clone, which boots nothing.
    boot: Option<BootEntry>,
    vcpus: Vec<Vcpu>,
    bus: Arc<Bus>,
    seccomp: SeccompMode,
    template: Option<Template>,
}

/// What a template keeps for its snapshot: the state file, created at
/// start (before any jail), and the MSRs KVM saves on this host.
struct Template {
    state: File,
    msrs: Vec<u32>,
}

/// Removes a file this VM created if setting the VM up fails after it,
/// so a retry with the same path does not find it taken.
struct Created(Option<PathBuf>);

impl Created {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}

impl Vmm {
    /// Checks the configuration and sets the VM up. Every input error is
    /// found here, before a vCPU runs.
    pub fn new(config: &VmmConfig) -> Result<Self, VmmError> {
        Self::with_devices(config, Vec::new())
    }

    /// Like [`new`](Self::new), with virtio devices on virtio-mmio: device
    /// `i` gets the window at `VIRTIO_MMIO_BASE + i * 4 KiB` and interrupt
    /// line `VIRTIO_IRQS[i]`, announced on the kernel command line.
    ///
    /// A clone (`config.snapshot` is [`Snapshot::Clone`]) is set up from
    /// the template's snapshot instead, its devices (the same kinds, in
    /// the same order) as the template's were.
    pub fn with_devices(
        config: &VmmConfig,
        devices: Vec<Box<dyn VirtioDevice>>,
    ) -> Result<Self, VmmError> {
        // Input first, so a bad kernel, initrd or size is reported as
        // such even on a host without KVM.
        config.validate()?;
        let slots = slots(devices.len())?;
        let (memory_file, state_file) = match &config.snapshot {
            Some(Snapshot::Clone {
                memory_file,
                state_file,
            }) => return Self::restore(config, devices, slots, memory_file, state_file),
            Some(Snapshot::Template {
                memory_file,
                state_file,
            }) => (Some(memory_file.as_path()), Some(state_file.as_path())),
            None => (None, None),
        };
        let mut cmdline = config.cmdline.clone();
        for (addr, irq) in &slots {
            if !cmdline.is_empty() {
                cmdline.push(' ');
            }
            cmdline.push_str(&cmdline_device(*addr, *irq));
        }
        let backing = memory_file.map_or(RamBacking::Memfd, RamBacking::NewFile);
        let mem = memory::guest_memory(config.memory_mib.into(), backing)?;
        let created_memory = Created(memory_file.map(Path::to_path_buf));
        let state = state_file.map(snapshot::create_state_file).transpose()?;
        let created_state = Created(state_file.map(Path::to_path_buf));
        let boot = loader::load_guest(&mem, &config.kernel, config.initrd.as_deref(), &cmdline)?;
        mptable::setup(&mem, config.vcpus)?;
        let kvm = open_kvm(config.vcpus)?;
        let vm = create_vm(&kvm, &mem)?;

        let serial = SerialConsole::new(&config.console_log)?;
        vm.register_irqfd(serial.irq_evt(), COM1_GSI)
            .map_err(kvm_err("KVM_IRQFD (serial)"))?;
        let virtio = attach_devices(&vm, &mem, devices, slots)?;

        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let vcpus = (0..config.vcpus)
            .map(|i| Vcpu::new(&vm, &cpuid, i, config.vcpus, &mem, &boot))
            .collect::<Result<Vec<_>, _>>()?;
        let template = match state {
            Some(state) => Some(Template {
                state,
                msrs: vcpu::msrs_to_save(&kvm).map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?,
            }),
            None => None,
        };
        created_memory.keep();
        created_state.keep();
        Ok(Vmm {
            vm,
            mem,
            boot: Some(boot),
            vcpus,
            bus: Arc::new(Bus::new(serial, virtio)),
            seccomp: config.seccomp,
            template,
        })
    }

    /// A clone: the state at `state_file` is read and checked against
    /// `config` and `devices` before the template's RAM at `memory_file`
    /// is mapped (private) and anything of KVM's exists; then irqchip,
    /// PIT, serial, devices, vCPUs and clock are set as the template left
    /// them.
    fn restore(
        config: &VmmConfig,
        devices: Vec<Box<dyn VirtioDevice>>,
        slots: Vec<(u64, u32)>,
        memory_file: &Path,
        state_file: &Path,
    ) -> Result<Self, VmmError> {
        let state = snapshot::load(state_file)?;
        let types: Vec<u32> = devices.iter().map(|d| d.device_type()).collect();
        snapshot::check(&state, state_file, config, &types)?;
        let backing = RamBacking::Template(memory_file);
        let mem = memory::guest_memory(config.memory_mib.into(), backing)?;
        let kvm = open_kvm(config.vcpus)?;
        let allowed_msrs = vcpu::msrs_to_save(&kvm).map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
        let vm = create_vm(&kvm, &mem)?;
        snapshot::restore_irqchip(&vm, &state)?;

        let serial = SerialConsole::from_state(&config.console_log, &state.serial)?;
        vm.register_irqfd(serial.irq_evt(), COM1_GSI)
            .map_err(kvm_err("KVM_IRQFD (serial)"))?;
        let mut virtio = attach_devices(&vm, &mem, devices, slots)?;
        for (slot, ((_, t), saved)) in virtio.iter_mut().zip(&state.devices).enumerate() {
            t.restore(&saved.transport)
                .map_err(|source| VmmError::RestoreDevice { slot, source })?;
        }
        let vcpus = (state.vcpus.iter().enumerate())
            .map(|(i, s)| Vcpu::restore(&vm, i as u8, s, &allowed_msrs))
            .collect::<Result<Vec<_>, _>>()?;
        snapshot::restore_clock(&vm, &state)?;
        Ok(Vmm {
            vm,
            mem,
            boot: None,
            vcpus,
            bus: Arc::new(Bus::new(serial, virtio)),
            seccomp: config.seccomp,
            template: None,
        })
    }

    /// How the guest was entered; None for a clone.
    pub fn boot_entry(&self) -> Option<BootEntry> {
        self.boot
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Starts one thread per vCPU.
    pub fn start(self) -> Result<RunningVm, VmmError> {
        vcpu::install_kick_handler().map_err(VmmError::Signal)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (events, rx) = channel();
        let mut threads = Vec::new();
        let mut running = RunningVm {
            bus: self.bus.clone(),
            threads: Vec::new(),
            stop: stop.clone(),
            events: events.clone(),
            rx,
            template: self.template,
            vcpu_count: self.vcpus.len(),
            vm: self.vm,
            mem: self.mem,
        };
        for mut vcpu in self.vcpus {
            let (bus, stop, events) = (self.bus.clone(), stop.clone(), events.clone());
            let index = vcpu.index();
            let mode = self.seccomp;
            let thread = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    let why = match seccomp::harden_thread(ThreadKind::Vcpu, mode) {
                        Ok(()) => vcpu.run(&bus, &stop),
                        Err(e) => VcpuStop::Failed(e.to_string()),
                    };
                    let _ = events.send(VmEvent::Vcpu(index, why));
                    // Back to whoever joins: a snapshot reads its state.
                    vcpu
                })
                .map_err(|source| VmmError::Thread { index, source });
            match thread {
                Ok(t) => threads.push(t),
                Err(e) => {
                    running.threads = threads;
                    running.stop_and_join();
                    return Err(e);
                }
            }
        }
        running.threads = threads;
        Ok(running)
    }
}

/// The virtio-mmio window and interrupt line of each of `count` devices:
/// device `i` at `VIRTIO_MMIO_BASE + i * 4 KiB` on `VIRTIO_IRQS[i]`.
fn slots(count: usize) -> Result<Vec<(u64, u32)>, VmmError> {
    if count > VIRTIO_IRQS.len() {
        return Err(VmmError::TooManyDevices {
            count,
            max: VIRTIO_IRQS.len(),
        });
    }
    Ok((0..count)
        .map(|i| {
            (
                VIRTIO_MMIO_BASE + i as u64 * MMIO_WINDOW_SIZE,
                VIRTIO_IRQS[i],
            )
        })
        .collect())
}

/// /dev/kvm, if it allows `vcpus` vCPUs.
fn open_kvm(vcpus: u8) -> Result<Kvm, VmmError> {
    let kvm = Kvm::new().map_err(VmmError::OpenKvm)?;
    let max = kvm.get_max_vcpus().min(usize::from(MAX_VCPUS));
    if usize::from(vcpus) > max {
        return Err(VmmError::VcpuCount {
            requested: vcpus,
            max,
        });
    }
    Ok(kvm)
}

/// A KVM VM with `mem` as its RAM, the in-kernel irqchip and the PIT.
fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, VmmError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the mapping is owned by `mem`, which `Vmm` keeps for
        // as long as the VM fd lives.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    // The PIT drives the guest's early timer calibration; its speaker
    // port is answered in the kernel instead of exiting to us.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

/// Each device behind its transport in its slot.
fn attach_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    devices: Vec<Box<dyn VirtioDevice>>,
    slots: Vec<(u64, u32)>,
) -> Result<Vec<(u64, MmioTransport)>, VmmError> {
    let mut virtio = Vec::new();
    for (device, (addr, irq)) in devices.into_iter().zip(slots) {
        virtio.push((addr, attach_device(vm, mem, device, addr, irq)?));
    }
    Ok(virtio)
}

/// Puts `device` behind a virtio-mmio transport at `addr`: one ioeventfd
/// per queue on QueueNotify (datamatch = queue index), so notifications
/// never leave the kernel, and an irqfd for line `irq`.
fn attach_device(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    device: Box<dyn VirtioDevice>,
    addr: u64,
    irq: u32,
) -> Result<MmioTransport, VmmError> {
    let name = device.name();
    let kvm_err = |what: String| {
        move |source| VmmError::DeviceKvm {
            device: name,
            what,
            source,
        }
    };
    let evt = || {
        EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::DeviceEventFd {
            device: name,
            source,
        })
    };
    let notify = (0..device.queue_max_sizes().len())
        .map(|_| evt())
        .collect::<Result<Vec<_>, _>>()?;
    let notify_addr = IoEventAddress::Mmio(addr + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY));
    for (queue, e) in notify.iter().enumerate() {
        vm.register_ioevent(e, &notify_addr, queue as u32)
            .map_err(kvm_err(format!("KVM_IOEVENTFD for queue {queue}")))?;
    }
    let interrupt = Interrupt::new(evt()?);
    vm.register_irqfd(interrupt.irqfd(), irq)
        .map_err(kvm_err(format!("KVM_IRQFD on line {irq}")))?;
    tracing::debug!("virtio {name} at {addr:#x}, irq {irq}");
    Ok(MmioTransport::new(mem.clone(), device, notify, interrupt)?)
}

/// What ends a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// A vCPU's run loop ended, and why.
    Vcpu(u8, VcpuStop),
    /// The host asked the VM to stop (SIGTERM to husk-vmm).
    Terminate,
    /// The host asked a template for its snapshot (SIGUSR1 to husk-vmm):
    /// [`RunningVm::snapshot`], then the VM ends.
    Snapshot,
    /// A helper thread of the VMM failed; the VM cannot go on safely.
    Failed(String),
}

/// A VM whose vCPUs run. Dropping it stops them.
pub struct RunningVm {
    bus: Arc<Bus>,
    threads: Vec<JoinHandle<Vcpu>>,
    stop: Arc<AtomicBool>,
    events: Sender<VmEvent>,
    rx: Receiver<VmEvent>,
    template: Option<Template>,
    vcpu_count: usize,
    // Declared after `threads`: dropped only once the vCPUs are joined.
    vm: VmFd,
    mem: GuestMemoryMmap,
}

impl RunningVm {
    /// A handle that ends [`RunningVm::wait`] with [`VmEvent::Terminate`].
    pub fn terminator(&self) -> Sender<VmEvent> {
        self.events.clone()
    }

    /// QueueNotify writes that reached the VMM instead of an ioeventfd.
    pub fn notify_exits(&self) -> u64 {
        self.bus.notify_exits()
    }

    /// Blocks until the first event that ends the VM.
    pub fn wait(&self) -> VmEvent {
        // `self.events` keeps the channel open, so recv cannot fail.
        self.rx.recv().unwrap_or(VmEvent::Terminate)
    }

    /// Like [`wait`](Self::wait), bounded.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<VmEvent> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Stops every vCPU and joins its thread.
    pub fn stop_and_join(&mut self) {
        drop(self.stop_vcpus());
    }

    /// Stops every vCPU, joins its thread and returns the vCPUs (those
    /// whose thread did not panic), each done with its last exit.
    fn stop_vcpus(&mut self) -> Vec<Vcpu> {
        self.stop.store(true, Ordering::Release);
        let mut vcpus = Vec::new();
        for t in std::mem::take(&mut self.threads) {
            // Kick until the thread has left KVM_RUN: a kick that lands
            // just before it enters KVM_RUN would otherwise be lost.
            while !t.is_finished() {
                let _ = t.kill(vcpu::kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
            vcpus.extend(t.join());
        }
        vcpus
    }

    /// A template's snapshot: stops the vCPUs and devices for good and
    /// writes the state to the template's state file and RAM to its
    /// memory file. The VM cannot run on: clones map that file. Returns
    /// the state file's size.
    pub fn snapshot(&mut self) -> Result<usize, SnapshotError> {
        if self.template.is_none() {
            return Err(SnapshotError::NotATemplate);
        }
        let started = std::time::Instant::now();
        let vcpus = self.stop_vcpus();
        let template = self.template.as_mut().ok_or(SnapshotError::NotATemplate)?;
        if vcpus.len() != self.vcpu_count {
            return Err(SnapshotError::VcpuLost);
        }
        let state = snapshot::capture(&self.vm, &vcpus, &self.bus, &self.mem, &template.msrs)?;
        let bytes = snapshot::write(&state, &mut template.state, &self.mem)?;
        tracing::info!(
            bytes,
            vcpus = vcpus.len(),
            devices = state.devices.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "snapshot written"
        );
        Ok(bytes)
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
