//! virtio-mmio on the real `/dev/kvm`, in process: a 32-bit guest (PVH
//! entry, paging off, so it can touch the MMIO hole directly) reads a
//! device's identity registers, drives the virtio initialisation sequence,
//! notifies queue 0 and waits for the interrupt that the device raises in
//! answer. The device is a test double standing in for vsock/fs/net; the
//! transport, ioeventfd, irqfd, PIC and vCPU are the VMM's own.

use husk_vmm::devices::virtio::{
    ActivateError, Interrupt, QueueT, ReadyQueue, ThreadGone, VirtioDevice,
};
use husk_vmm::memory::{GuestMemoryMmap, VIRTIO_MMIO_BASE};
use husk_vmm::probe::kvm_runs_guest_code;
use husk_vmm::test_util::guest_image::{self, Asm, LOAD_ADDR};
use husk_vmm::test_util::BOOT_CS;
use husk_vmm::test_util::{MMIO_MAGIC, VENDOR_ID};
use husk_vmm::SeccompMode;
use husk_vmm::VcpuStop;
use husk_vmm::{VmEvent, Vmm, VmmConfig};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

const DEVICE_ID: u32 = 19; // vsock's ID; only the number matters here

#[derive(Default)]
struct Seen {
    activated: Option<(u64, u16, u64, u64, u64)>,
    notified: bool,
}

/// Answers every notification of queue 0 with a used-queue interrupt.
/// Its worker thread starts with the device, before any seccomp filter;
/// `activate` (on the filtered vCPU thread) only hands it the queue.
struct EchoDevice {
    seen: Arc<Mutex<Seen>>,
    to_worker: Option<mpsc::Sender<(Arc<EventFd>, Interrupt)>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl EchoDevice {
    fn new(seen: Arc<Mutex<Seen>>) -> Self {
        let (tx, rx) = mpsc::channel::<(Arc<EventFd>, Interrupt)>();
        let s = seen.clone();
        let worker = std::thread::spawn(move || {
            // Ends when the device is dropped (channel closed) or after
            // one notification, or after 20 s of waiting for it.
            let Ok((notify, interrupt)) = rx.recv() else {
                return;
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if notify.read().is_ok() {
                    s.lock().unwrap().notified = true;
                    interrupt.signal_used_queue().unwrap();
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        EchoDevice {
            seen,
            to_worker: Some(tx),
            worker: Some(worker),
        }
    }
}

impl VirtioDevice for EchoDevice {
    fn name(&self) -> &'static str {
        "echo"
    }
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _: u64, _: &mut [u8]) {}
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        features: u64,
        mut queues: Vec<ReadyQueue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let ReadyQueue {
            queue: q,
            kick: notify,
            ..
        } = queues.remove(0);
        self.seen.lock().unwrap().activated = Some((
            features,
            q.size(),
            q.desc_table(),
            q.avail_ring(),
            q.used_ring(),
        ));
        let sent = self
            .to_worker
            .as_ref()
            .map(|tx| tx.send((notify, interrupt)));
        sent.and_then(Result::ok).ok_or(ActivateError::ThreadGone {
            device: "echo",
            source: ThreadGone,
        })
    }
    fn reset(&mut self) {}
}

impl Drop for EchoDevice {
    /// Closes the channel and waits for the worker, so the test leaves no
    /// thread behind.
    fn drop(&mut self) {
        self.to_worker.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[test]
fn guest_finds_sets_up_and_is_interrupted_by_a_virtio_mmio_device() {
    if let Err(why) = kvm_runs_guest_code() {
        println!("SKIPPED: KVM cannot run guest code here: {why}");
        return;
    }
    let b = VIRTIO_MMIO_BASE as u32;
    const VECTOR: usize = 0x25; // line 5, the first virtio line
    let (handler, idtr, idt) = (0x400usize, 0x780usize, 0x800usize);
    let mut a = Asm::protected_mode();
    a.dx_com1().out_byte(b'V');
    for reg in [0x000, 0x004, 0x008, 0x00c, 0x034] {
        // magic, version, device id, vendor id, QueueNumMax
        a.load_eax_abs(b + reg).out_ax_bytes(4);
    }
    // 3.1.1: ACKNOWLEDGE, DRIVER, features (VERSION_1 = bit 32), FEATURES_OK.
    a.store_abs(b + 0x70, 1).store_abs(b + 0x70, 3);
    a.store_abs(b + 0x24, 1).store_abs(b + 0x20, 1);
    a.store_abs(b + 0x70, 0xb);
    a.load_eax_abs(b + 0x70).out_ax_bytes(4);
    // Queue 0: 8 entries, rings at 2 MiB, then ready and DRIVER_OK.
    a.store_abs(b + 0x30, 0).store_abs(b + 0x38, 8);
    a.store_abs(b + 0x80, 0x20_0000)
        .store_abs(b + 0x90, 0x20_1000);
    a.store_abs(b + 0xa0, 0x20_2000).store_abs(b + 0x44, 1);
    a.store_abs(b + 0x70, 0xf);
    a.load_eax_abs(b + 0x70).out_ax_bytes(4);
    // The command line through hvm_start_info.cmdline_paddr ([ebx+0x18]):
    // mov esi,[ebx+0x18]; l: mov al,[esi]; test al,al; jz end; out dx,al;
    // inc esi; jmp l; end: out '|'
    a.bytes(&[
        0x8b, 0x73, 0x18, 0x8a, 0x06, 0x84, 0xc0, 0x74, 0x04, 0xee, 0x46, 0xeb, 0xf6,
    ]);
    a.out_byte(b'|');
    a.pic_unmask_only(0x20, 5);
    a.lidt_abs((LOAD_ADDR as usize + idtr) as u32).sti();
    a.store_abs(b + 0x50, 0); // QueueNotify(0): ioeventfd -> device
    a.hlt_loop();
    let mut h = Asm::protected_mode();
    h.dx_com1().load_eax_abs(b + 0x60).out_ax_bytes(4); // InterruptStatus
    h.store_abs(b + 0x64, 1); // InterruptACK
    h.load_eax_abs(b + 0x60).out_ax_bytes(4);
    h.out_byte(b'I').triple_fault();

    let mut image = a.code.clone();
    assert!(image.len() <= handler, "code {} bytes", image.len());
    image.resize(handler, 0xcc);
    image.extend_from_slice(&h.code);
    image.resize(idtr, 0xcc);
    image.extend_from_slice(&((0x30 * 8 - 1) as u16).to_le_bytes());
    image.extend_from_slice(&((LOAD_ADDR as usize + idt) as u32).to_le_bytes());
    image.resize(idt, 0);
    let mut table = vec![0u8; 0x30 * 8];
    table[VECTOR * 8..VECTOR * 8 + 8].copy_from_slice(&guest_image::idt_gate32(
        (LOAD_ADDR as usize + handler) as u32,
        BOOT_CS,
    ));
    image.extend_from_slice(&table);

    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("virtio.elf");
    std::fs::write(&kernel, guest_image::elf(&image, 0, true)).unwrap();
    let mut config = VmmConfig::new(kernel, dir.path().join("console.log"));
    config.cmdline = "console=ttyS0".into();
    config.memory_mib = 64;
    config.seccomp = SeccompMode::Kill;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let device = EchoDevice::new(seen.clone());
    let vmm = Vmm::with_devices(&config, vec![Box::new(device)]).unwrap();
    let mut vm = vmm.start().unwrap();
    let event = vm.wait_timeout(Duration::from_secs(30));
    let notify_exits = vm.notify_exits();
    vm.stop_and_join();
    drop(vm); // joins vCPUs, drops the device and its worker handle
    let console = std::fs::read(&config.console_log).unwrap();
    assert_eq!(
        event,
        Some(VmEvent::Vcpu(0, VcpuStop::GuestShutdown)),
        "console: {:?}",
        String::from_utf8_lossy(&console)
    );

    let mut rep = &console[..];
    let mut take = |n: usize| {
        assert!(
            rep.len() >= n,
            "console ended early: {:?}",
            String::from_utf8_lossy(&console)
        );
        let (head, tail) = rep.split_at(n);
        rep = tail;
        head.to_vec()
    };
    let u32_ = |v: Vec<u8>| u32::from_le_bytes(v.try_into().unwrap());
    assert_eq!(take(1), b"V");
    assert_eq!(u32_(take(4)), MMIO_MAGIC, "MagicValue");
    assert_eq!(u32_(take(4)), 2, "Version");
    assert_eq!(u32_(take(4)), DEVICE_ID, "DeviceID");
    assert_eq!(u32_(take(4)), VENDOR_ID, "VendorID");
    assert_eq!(u32_(take(4)), 16, "QueueNumMax");
    assert_eq!(u32_(take(4)), 0xb, "status after FEATURES_OK");
    assert_eq!(u32_(take(4)), 0xf, "status after DRIVER_OK");
    let cmdline = format!(
        "console=ttyS0 virtio_mmio.device=4K@{:#x}:5|",
        VIRTIO_MMIO_BASE
    );
    assert_eq!(
        take(cmdline.len()),
        cmdline.as_bytes(),
        "device announced on the command line"
    );
    assert_eq!(u32_(take(4)), 1, "InterruptStatus: used ring");
    assert_eq!(u32_(take(4)), 0, "InterruptStatus after ACK");
    assert_eq!(take(1), b"I");

    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.activated,
        Some((1 << 32, 8, 0x20_0000, 0x20_1000, 0x20_2000))
    );
    assert!(seen.notified);
    assert_eq!(
        notify_exits, 0,
        "QueueNotify went through the ioeventfd, not an exit"
    );
}
