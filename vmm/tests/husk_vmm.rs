//! husk-vmm booting tiny guest programs on the real `/dev/kvm`. Each
//! program is hand-encoded machine code (`test_util::guest_image`) that
//! reports what it sees through the serial port and then triple-faults,
//! which ends the VM the way `reboot=t` does.
//! Where KVM cannot run guest code the KVM tests print SKIPPED and return.

use husk_vmm::memory::{BOOT_STACK_POINTER, PML4_START, PVH_INFO_START, ZERO_PAGE_START};
use husk_vmm::probe::kvm_runs_guest_code;
use husk_vmm::test_util::guest_image::{self, Asm, Reg, Sreg, LOAD_ADDR};
use husk_vmm::test_util::{BOOT_CS, BOOT_DS, X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE};
use husk_vmm::test_util::{HDRS_MAGIC, PVH_START_MAGIC};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const HUSK_VMM: &str = env!("CARGO_BIN_EXE_husk-vmm");
/// Generous: the guest programs take microseconds, but the machine is
/// shared and a hung VMM must not hang the suite.
const VMM_TIMEOUT: Duration = Duration::from_secs(30);

/// `--jail` needs CAP_SYS_ADMIN (a mount namespace and pivot_root).
macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIPPED: husk-vmm --jail needs root");
            return;
        }
    };
}

macro_rules! require_kvm {
    () => {
        if let Err(why) = kvm_runs_guest_code() {
            println!("SKIPPED: KVM cannot run guest code here: {why}");
            return;
        }
    };
}

struct Run {
    status: ExitStatus,
    console: Vec<u8>,
    stderr: String,
    console_exists: bool,
}

struct Guest {
    dir: tempfile::TempDir,
}

impl Guest {
    fn new() -> Self {
        Guest {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn console(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    fn spawn(&self, kernel: &Path, extra: &[&str]) -> Child {
        Command::new(HUSK_VMM)
            .arg("--kernel")
            .arg(kernel)
            .arg("--console-log")
            .arg(self.console())
            .args(["--memory-mib", "64"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Waits until the guest has written `want` to the console.
    fn wait_for_console(&self, child: &mut Child, want: &[u8]) {
        poll_running(child, VMM_TIMEOUT, || {
            let got = std::fs::read(self.console()).unwrap_or_default();
            if got == want {
                Ok(())
            } else {
                Err(format!(
                    "guest did not write {:?}; console: {:?}",
                    String::from_utf8_lossy(want),
                    String::from_utf8_lossy(&got)
                ))
            }
        })
    }

    fn run(&self, kernel: &Path, extra: &[&str]) -> Run {
        let child = self.spawn(kernel, extra);
        self.finish(child)
    }

    fn finish(&self, mut child: Child) -> Run {
        let status = wait_or_kill(&mut child, VMM_TIMEOUT);
        let mut stderr = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = status.unwrap_or_else(|| {
            panic!("husk-vmm did not exit in {VMM_TIMEOUT:?}; stderr:\n{stderr}")
        });
        let console_exists = self.console().exists();
        Run {
            status,
            console: std::fs::read(self.console()).unwrap_or_default(),
            stderr,
            console_exists,
        }
    }
}

/// Waits for `child` up to `timeout`; kills and reaps it past that.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `check` until it gives a value. Past `timeout`, or if husk-vmm
/// exits first, kills husk-vmm and fails with the last reason and its
/// stderr.
fn poll_running<T>(
    child: &mut Child,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let why = match check() {
            Ok(v) => return v,
            Err(why) => why,
        };
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let status = child.wait();
            let mut stderr = String::new();
            use std::io::Read;
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            panic!("{why}\nhusk-vmm {status:?}, stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The names of husk-vmm's threads if every one of them has a seccomp
/// filter, no capability and no_new_privs; which one has not otherwise.
/// KVM may attach its own kernel workers (kvm-nx-lpage-recovery) to the
/// VM's process; they are not ours to count.
fn hardened_threads(pid: u32) -> Result<Vec<String>, String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    for t in tasks {
        let t = t.unwrap().path();
        let name = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        if name.starts_with("kvm-") {
            continue;
        }
        let status = std::fs::read_to_string(t.join("status")).map_err(|e| e.to_string())?;
        for want in [
            "Seccomp:\t2",
            "NoNewPrivs:\t1",
            "CapEff:\t0000000000000000",
            "CapPrm:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "CapAmb:\t0000000000000000",
        ] {
            if !status.lines().any(|l| l == want) {
                return Err(format!("thread {name:?} without {want:?}:\n{status}"));
            }
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// vhost-device-vsock and virtiofsd serving `d/vsock.sock` and
/// `d/fs.sock` (sharing `d/shared`); None (SKIPPED printed) where either
/// is not installed.
struct Daemons {
    _vsock: common::Daemon,
    _fs: common::Daemon,
    vsock_socket: PathBuf,
    fs_socket: PathBuf,
}

impl Daemons {
    fn start(d: &Path) -> Option<Daemons> {
        let vsock = common::daemon(
            "HUSK_VHOST_DEVICE_VSOCK",
            "/usr/local/bin/vhost-device-vsock",
        )?;
        let fsd = common::daemon("HUSK_VIRTIOFSD", "/usr/local/bin/virtiofsd")?;
        std::fs::create_dir(d.join("shared")).unwrap();
        let (vsock_socket, fs_socket) = (d.join("vsock.sock"), d.join("fs.sock"));
        let _vsock = common::Daemon(
            Command::new(vsock)
                .args(["--guest-cid", "3", "--socket"])
                .arg(&vsock_socket)
                .arg("--uds-path")
                .arg(d.join("vm.vsock"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let _fs = common::Daemon(
            Command::new(fsd)
                .arg("--socket-path")
                .arg(&fs_socket)
                .arg("--shared-dir")
                .arg(d.join("shared"))
                .args(["--sandbox", "none"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        common::wait_for(&vsock_socket, "vsock socket");
        common::wait_for(&fs_socket, "virtiofsd socket");
        Some(Daemons {
            _vsock,
            _fs,
            vsock_socket,
            fs_socket,
        })
    }

    /// husk-vmm's arguments for attaching both.
    fn args(&self) -> Vec<&str> {
        vec![
            "--vsock-socket",
            self.vsock_socket.to_str().unwrap(),
            "--fs-socket",
            self.fs_socket.to_str().unwrap(),
            "--fs-tag",
            "husk",
        ]
    }
}

/// Splits the console output into the fields the guest reported.
struct Report<'a>(&'a [u8]);

impl Report<'_> {
    fn take(&mut self, n: usize) -> u64 {
        assert!(
            self.0.len() >= n,
            "console output ended early: {:?}",
            self.0
        );
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        u64::from_le_bytes(v)
    }
    fn expect(&mut self, s: &[u8]) {
        assert!(
            self.0.starts_with(s),
            "expected {:?} in console, got {:?}",
            String::from_utf8_lossy(s),
            String::from_utf8_lossy(self.0)
        );
        self.0 = &self.0[s.len()..];
    }
}

#[test]
fn serial_output_of_the_guest_arrives_in_the_console_log() {
    require_kvm!();
    let g = Guest::new();
    let mut a = Asm::long_mode();
    a.dx_com1()
        .out_str(b"hello from the guest\n")
        .triple_fault();
    let kernel = g.file("hello.elf", &guest_image::elf(&a.code, 0, false));
    let r = g.run(&kernel, &[]);
    assert_eq!(
        r.console, b"hello from the guest\n",
        "stderr:\n{}",
        r.stderr
    );
    assert!(r.status.success(), "{:?}\n{}", r.status, r.stderr);
    assert!(r.stderr.contains("guest shut down"), "{}", r.stderr);
}

#[test]
fn linux64_entry_has_the_registers_the_64bit_boot_protocol_promises() {
    require_kvm!();
    let g = Guest::new();
    let mut a = Asm::long_mode();
    a.dx_com1().out_byte(b'R');
    a.mov_ax_from(Reg::Si).out_ax_bytes(8);
    a.mov_ax_from(Reg::Sp).out_ax_bytes(8);
    a.mov_ax_from_sreg(Sreg::Cs).out_ax_bytes(2);
    a.mov_ax_from_sreg(Sreg::Ds).out_ax_bytes(2);
    a.mov_ax_from_sreg(Sreg::Es).out_ax_bytes(2);
    a.mov_ax_from_sreg(Sreg::Ss).out_ax_bytes(2);
    a.mov_ax_from_cr(0).out_ax_bytes(8);
    a.mov_ax_from_cr(3).out_ax_bytes(8);
    a.mov_ax_from_cr(4).out_ax_bytes(8);
    // Long mode, shown by behaviour: `mov rax, imm64` is REX.W + B8 and
    // loads 8 bytes; in 32-bit mode the same bytes are `dec eax; mov eax,
    // imm32` and the rest would run as other instructions. (EFER itself
    // cannot be read here: PVM faults every guest rdmsr.)
    a.mov_ax_imm64(0x1122_3344_5566_7788).out_ax_bytes(8);
    a.flags_to_ax().out_ax_bytes(8);
    a.load_eax(Reg::Si, 0x202).out_ax_bytes(4); // header
    a.load_eax(Reg::Si, 0x1fe).out_ax_bytes(2); // boot_flag
    a.load_eax(Reg::Si, 0x210).out_ax_bytes(1); // type_of_loader
    a.out_cstr_via_rsi(0x228); // the command line through cmd_line_ptr
    a.triple_fault();
    let kernel = g.file("regs.elf", &guest_image::elf(&a.code, 0, false));
    let r = g.run(&kernel, &["--cmdline", "console=ttyS0 reboot=t"]);
    assert!(r.status.success(), "{:?}\n{}", r.status, r.stderr);

    let mut rep = Report(&r.console);
    rep.expect(b"R");
    assert_eq!(rep.take(8), ZERO_PAGE_START, "rsi = zero page");
    assert_eq!(rep.take(8), BOOT_STACK_POINTER, "rsp");
    assert_eq!(rep.take(2), u64::from(BOOT_CS), "cs = __BOOT_CS");
    for seg in ["ds", "es", "ss"] {
        assert_eq!(rep.take(2), u64::from(BOOT_DS), "{seg} = __BOOT_DS");
    }
    let cr0 = rep.take(8);
    assert_eq!(
        cr0 & (X86_CR0_PE | X86_CR0_PG),
        X86_CR0_PE | X86_CR0_PG,
        "cr0 {cr0:#x}"
    );
    assert_eq!(rep.take(8), PML4_START, "cr3");
    let cr4 = rep.take(8);
    assert_ne!(cr4 & X86_CR4_PAE, 0, "cr4 {cr4:#x}");
    assert_eq!(
        rep.take(8),
        0x1122_3344_5566_7788,
        "64-bit code runs: long mode"
    );
    let rflags = rep.take(8);
    assert_eq!(
        rflags & (1 << 9),
        0,
        "interrupts disabled: rflags {rflags:#x}"
    );
    assert_eq!(rep.take(4), u64::from(HDRS_MAGIC), "zero page header");
    assert_eq!(rep.take(2), 0xaa55, "zero page boot_flag");
    assert_eq!(rep.take(1), 0xff, "type_of_loader");
    rep.expect(b"console=ttyS0 reboot=t");
    assert!(rep.0.is_empty(), "trailing output {:?}", rep.0);
}

#[test]
fn pvh_entry_has_the_registers_the_pvh_protocol_promises() {
    require_kvm!();
    let g = Guest::new();
    let mut a = Asm::protected_mode();
    a.dx_com1().out_byte(b'P');
    a.mov_ax_from(Reg::Bx).out_ax_bytes(4);
    a.load_eax(Reg::Bx, 0).out_ax_bytes(4); // hvm_start_info.magic
    a.load_eax(Reg::Bx, 0x30).out_ax_bytes(4); // memmap_entries
    a.mov_ax_from_cr(0).out_ax_bytes(4);
    a.mov_ax_from_cr(4).out_ax_bytes(4);
    a.flags_to_ax().out_ax_bytes(4);
    a.triple_fault();
    let kernel = g.file("pvh.elf", &guest_image::elf(&a.code, 0, true));
    let r = g.run(&kernel, &[]);
    assert!(r.status.success(), "{:?}\n{}", r.status, r.stderr);

    let mut rep = Report(&r.console);
    rep.expect(b"P");
    assert_eq!(rep.take(4), PVH_INFO_START, "ebx = hvm_start_info");
    assert_eq!(rep.take(4), u64::from(PVH_START_MAGIC), "start info magic");
    assert_eq!(rep.take(4), 2, "memmap entries: low RAM and RAM from 1 MiB");
    assert_eq!(rep.take(4), X86_CR0_PE, "cr0: PE only, paging off");
    assert_eq!(rep.take(4), 0, "cr4: all bits clear");
    let eflags = rep.take(4);
    assert_eq!(
        eflags & ((1 << 17) | (1 << 9) | (1 << 8)),
        0,
        "VM, IF, TF clear: {eflags:#x}"
    );
    assert!(rep.0.is_empty(), "trailing output {:?}", rep.0);
}

#[test]
fn bzimage_gets_zero_page_with_initrd_and_command_line() {
    require_kvm!();
    let g = Guest::new();
    let mut a = Asm::long_mode();
    a.dx_com1().out_byte(b'B');
    a.mov_ax_from(Reg::Si).out_ax_bytes(8);
    a.load_eax(Reg::Si, 0x218).out_ax_bytes(4); // ramdisk_image
    a.load_eax(Reg::Si, 0x21c).out_ax_bytes(4); // ramdisk_size
    a.load_eax(Reg::Si, 0x218)
        .load_eax(Reg::Ax, 0)
        .out_ax_bytes(4); // initrd bytes
    a.out_cstr_via_rsi(0x228);
    a.triple_fault();
    let kernel = g.file(
        "bz",
        &guest_image::bzimage(&guest_image::bzimage_payload(&a.code)),
    );
    let mut initrd = b"INRD".to_vec();
    initrd.resize(10_000, 0x5a);
    let initrd = g.file("initrd", &initrd);
    let r = g.run(
        &kernel,
        &[
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "init=/init panic=-1",
        ],
    );
    assert!(r.status.success(), "{:?}\n{}", r.status, r.stderr);

    let mut rep = Report(&r.console);
    rep.expect(b"B");
    assert_eq!(rep.take(8), ZERO_PAGE_START, "rsi = zero page");
    let (image, size) = (rep.take(4), rep.take(4));
    assert_eq!(size, 10_000, "ramdisk_size");
    assert_eq!(image % 4096, 0, "initrd page aligned at {image:#x}");
    let ram_end = 64u64 << 20;
    assert!(image + size <= ram_end, "initrd inside RAM");
    assert!(
        ram_end - (image + size) < 4096,
        "initrd as high as it goes: {image:#x}"
    );
    assert!(image > LOAD_ADDR, "initrd above the kernel");
    rep.expect(b"INRD");
    rep.expect(b"init=/init panic=-1");
    assert!(rep.0.is_empty(), "trailing output {:?}", rep.0);
}

#[test]
fn serial_interrupt_reaches_the_guest_through_pic_and_lapic() {
    require_kvm!();
    let g = Guest::new();
    // Layout inside the image: code at 0, handler at 0x400, IDTR at 0x780,
    // IDT (vectors 0..0x30) at 0x800.
    const VECTOR: usize = 0x24; // IRQ 4 with the PIC based at 0x20
    let (handler, idtr, idt) = (0x400usize, 0x780usize, 0x800usize);
    let mut a = Asm::long_mode();
    a.dx_com1().out_byte(b'S');
    a.pic_unmask_only(0x20, 4);
    a.lidt_abs((LOAD_ADDR as usize + idtr) as u32);
    // IER: THR empty. The UART raises IRQ 4 at once (via irqfd); it stays
    // pending in the PIC until sti.
    a.mov_dx(0x3f9).out_byte(0x02).dx_com1();
    a.sti().hlt_loop();
    let mut h = Asm::long_mode();
    h.dx_com1().out_byte(b'I').triple_fault();

    let mut image = a.code.clone();
    assert!(image.len() <= handler);
    image.resize(handler, 0xcc);
    image.extend_from_slice(&h.code);
    image.resize(idtr, 0xcc);
    let limit = (0x30 * 16 - 1) as u16;
    image.extend_from_slice(&limit.to_le_bytes());
    image.extend_from_slice(&(LOAD_ADDR + idt as u64).to_le_bytes());
    image.resize(idt, 0);
    let mut table = vec![0u8; 0x30 * 16];
    table[VECTOR * 16..VECTOR * 16 + 16].copy_from_slice(&guest_image::idt_gate64(
        LOAD_ADDR + handler as u64,
        BOOT_CS,
    ));
    image.extend_from_slice(&table);

    let kernel = g.file("irq.elf", &guest_image::elf(&image, 0, false));
    let r = g.run(&kernel, &[]);
    assert_eq!(
        String::from_utf8_lossy(&r.console),
        "SI",
        "S: guest started, I: its IRQ 4 handler ran; stderr:\n{}",
        r.stderr
    );
    assert!(r.status.success(), "{:?}\n{}", r.status, r.stderr);
}

#[test]
fn sigterm_stops_a_hardened_running_guest_and_husk_vmm_exits_cleanly() {
    require_kvm!();
    let g = Guest::new();
    let mut a = Asm::long_mode();
    // Interrupts stay disabled: hlt never returns, the vCPU sleeps in KVM.
    a.dx_com1().out_str(b"up\n").hlt_loop();
    let kernel = g.file("idle.elf", &guest_image::elf(&a.code, 0, false));
    let mut child = g.spawn(&kernel, &[]);
    let child_pid = child.id();
    g.wait_for_console(&mut child, b"up\n");
    // Hardening, seen from outside: every thread (main, signals, vcpu0)
    // has a seccomp filter, no capability and no_new_privs. The main
    // thread installs its filter last, so wait for it a little.
    let threads = poll_running(&mut child, Duration::from_secs(5), || {
        hardened_threads(child_pid)
    });
    assert_eq!(threads, ["husk-vmm\n", "signals\n", "vcpu0\n"]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let started = Instant::now();
    let r = g.finish(child);
    assert!(r.status.success(), "{:?}\n{}", r.status, r.stderr);
    assert!(r.stderr.contains("SIGTERM"), "{}", r.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_jailed_husk_vmm_sees_only_its_run_directory_read_only_and_every_thread_is_hardened() {
    require_kvm!();
    require_root!();
    let g = Guest::new();
    let d = g.dir.path();
    let Some(daemons) = Daemons::start(d) else {
        return;
    };
    let mut a = Asm::long_mode();
    a.dx_com1().out_str(b"up\n").hlt_loop();
    let kernel = g.file("idle.elf", &guest_image::elf(&a.code, 0, false));
    let mut args = daemons.args();
    args.extend(["--rng", "--jail", d.to_str().unwrap()]);
    let mut child = g.spawn(&kernel, &args);
    let pid = child.id();
    // The vCPU starts only once husk-vmm is in its jail: this output was
    // written by a jailed VMM.
    g.wait_for_console(&mut child, b"up\n");
    // The device threads, started during setup, harden themselves too.
    let threads = poll_running(&mut child, Duration::from_secs(5), || hardened_threads(pid));
    assert_eq!(
        threads,
        [
            "husk-vmm\n",
            "signals\n",
            "vcpu0\n",
            "vhost-fs\n",
            "vhost-vsock\n",
            "virtio-rng\n"
        ]
    );

    // Its root is the run directory and nothing else.
    let names = |p: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert_eq!(names(&root), names(d));
    assert!(names(d).contains(&"console.log".to_string()));
    // Its only mount is that directory: read-only, nosuid, nodev, noexec.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let mounts: Vec<Vec<&str>> = mountinfo.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(mounts.len(), 1, "{mountinfo}");
    assert_eq!(mounts[0][4], "/", "{mountinfo}");
    let options: Vec<&str> = mounts[0][5].split(',').collect();
    for want in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(options.contains(&want), "{want} missing: {mountinfo}");
    }
    let e = std::fs::write(root.join("written-through-the-jail"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // Its own mount namespace; its bind mount is not seen by the host.
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_ne!(ns(&pid.to_string()), ns("self"));
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host.lines().any(|l| l.split(' ').nth(4) == d.to_str()),
        "the jail's bind mount leaked into the host:\n{host}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let r = g.finish(child);
    assert!(r.status.success(), "{:?}\n{}", r.status, r.stderr);
    assert!(
        r.stderr.contains("confined to the jail directory"),
        "{}",
        r.stderr
    );
}

/// The VM's own id (`--uid`, `--gid`) for the tests.
const VM_ID: u32 = 1_879_048_150;

/// A field of /proc/<pid>/status ("Uid", "NSpid", ...), its value.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The one child of `pid` (the VMM under its PID namespace's parent).
fn only_child(pid: u32) -> Result<u32, String> {
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map_err(|e| e.to_string())?;
    match kids.split_whitespace().collect::<Vec<_>>()[..] {
        [one] => one.parse().map_err(|_| kids.clone()),
        _ => Err(format!("children of {pid}: {kids:?}")),
    }
}

/// Firecracker's jailer's confinement, from inside husk-vmm: it runs as
/// PID 1 of a PID namespace of its own, in IPC and UTS namespaces of its
/// own, every thread as the VM's user with no group but its own; the
/// process the launcher spawned only waits, unprivileged, holding no
/// descriptor, and passes SIGTERM on.
#[test]
fn husk_vmm_runs_as_the_vms_user_as_pid_1_of_its_own_namespace() {
    require_kvm!();
    require_root!();
    let g = Guest::new();
    let d = g.dir.path();
    let Some(daemons) = Daemons::start(d) else {
        return;
    };
    let mut a = Asm::long_mode();
    a.dx_com1().out_str(b"up\n").hlt_loop();
    let kernel = g.file("idle.elf", &guest_image::elf(&a.code, 0, false));
    let id = VM_ID.to_string();
    let mut args = daemons.args();
    args.extend(["--rng", "--jail", d.to_str().unwrap()]);
    args.extend(["--uid", &id, "--gid", &id, "--new-pid-ns"]);
    let mut child = g.spawn(&kernel, &args);
    let waiter = child.id();
    g.wait_for_console(&mut child, b"up\n");
    let vmm = poll_running(&mut child, Duration::from_secs(5), || only_child(waiter));
    let threads = poll_running(&mut child, Duration::from_secs(5), || {
        hardened_threads(vmm)?;
        for t in std::fs::read_dir(format!("/proc/{vmm}/task")).unwrap() {
            let t = t.unwrap().path();
            let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
            let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
            if comm.starts_with("kvm-") {
                continue;
            }
            for want in [
                format!("Uid:\t{id}\t{id}\t{id}\t{id}"),
                format!("Gid:\t{id}\t{id}\t{id}\t{id}"),
                "Groups:\t".to_owned(),
            ] {
                if !status.lines().any(|l| l.trim_end() == want.trim_end()) {
                    return Err(format!("thread {comm:?} without {want:?}:\n{status}"));
                }
            }
        }
        hardened_threads(vmm)
    });
    assert_eq!(
        threads,
        [
            "husk-vmm\n",
            "signals\n",
            "vcpu0\n",
            "vhost-fs\n",
            "vhost-vsock\n",
            "virtio-rng\n"
        ]
    );
    // PID 1 of its own namespace; IPC, UTS and mount namespaces apart
    // from the host's.
    assert_eq!(status_field(vmm, "NSpid"), format!("{vmm}\t1"));
    let ns = |pid: &str, ns: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
    for kind in ["pid", "ipc", "uts", "mnt"] {
        assert_ne!(ns(&vmm.to_string(), kind), ns("self", kind), "{kind}");
    }
    // The waiter: the VM's user, no capability, a filter, no descriptor
    // beyond stdio (the TAP and console are the VMM's alone).
    assert_eq!(
        status_field(waiter, "Uid"),
        format!("{id}\t{id}\t{id}\t{id}")
    );
    assert_eq!(status_field(waiter, "CapEff"), "0000000000000000");
    assert_eq!(status_field(waiter, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(waiter, "Seccomp"), "2");
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{waiter}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"]);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(waiter as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let started = Instant::now();
    let r = g.finish(child);
    assert!(r.status.success(), "{:?}\n{}", r.status, r.stderr);
    assert!(r.stderr.contains("SIGTERM"), "{}", r.stderr);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        !Path::new(&format!("/proc/{vmm}")).exists(),
        "the VMM outlived its waiter"
    );
}

/// The two processes end together: the VMM killed, the waiter reports
/// it (128 + 9); the waiter killed, the VMM dies with it.
#[test]
fn the_vmm_and_its_pid_namespace_parent_end_together() {
    require_kvm!();
    require_root!();
    let g = Guest::new();
    let mut a = Asm::long_mode();
    a.dx_com1().out_str(b"up\n").hlt_loop();
    let kernel = g.file("idle.elf", &guest_image::elf(&a.code, 0, false));
    let id = VM_ID.to_string();
    let args = ["--uid", &id, "--gid", &id, "--new-pid-ns"];
    let kill = |pid: u32| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap()
    };

    let mut child = g.spawn(&kernel, &args);
    g.wait_for_console(&mut child, b"up\n");
    let waiter = child.id();
    let vmm = poll_running(&mut child, Duration::from_secs(5), || only_child(waiter));
    kill(vmm);
    let r = g.finish(child);
    assert_eq!(r.status.code(), Some(128 + 9), "{}", r.stderr);
    assert!(r.stderr.contains("killed by SIGKILL"), "{}", r.stderr);

    std::fs::remove_file(g.console()).unwrap();
    let mut child = g.spawn(&kernel, &args);
    g.wait_for_console(&mut child, b"up\n");
    let waiter = child.id();
    let vmm = poll_running(&mut child, Duration::from_secs(5), || only_child(waiter));
    kill(waiter);
    g.finish(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{vmm}")).exists() {
        assert!(Instant::now() < deadline, "the VMM outlived its waiter");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Without the privilege to make a PID namespace or change its ids,
/// husk-vmm says which flag needed what, before any vCPU ran.
#[test]
fn a_pid_namespace_or_ids_without_privilege_are_refused_by_name() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: needs root to run husk-vmm as another user");
        return;
    }
    let g = Guest::new();
    let kernel = g.file("k.elf", &guest_image::elf(&[0xf4], 0, false));
    // As an unprivileged user (the test's VM id) from the start.
    use std::os::unix::process::CommandExt;
    std::fs::set_permissions(
        g.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    for (extra, want) in [
        (&["--new-pid-ns"][..], "--new-pid-ns: unshare(CLONE_NEWPID)"),
        (
            &["--uid", "1000", "--gid", "1000"][..],
            "--uid/--gid: husk-vmm needs CAP_SETUID and CAP_SETGID",
        ),
    ] {
        let out = Command::new(HUSK_VMM)
            .arg("--kernel")
            .arg(&kernel)
            .arg("--console-log")
            .arg(g.console())
            .args(extra)
            .uid(VM_ID)
            .gid(VM_ID)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(want), "{extra:?}: {stderr}");
        assert!(!g.console().exists(), "{extra:?}: a vCPU ran");
    }
}

// Bad input: each is refused with an error naming it, before any vCPU
// runs (the console log is created only after all input checks).

#[test]
fn a_jail_that_is_not_an_absolute_directory_is_refused() {
    let g = Guest::new();
    let kernel = g.file("k.elf", &guest_image::elf(&[0xf4], 0, false));
    let missing = g.dir.path().join("no-such-dir");
    for (jail, want) in [
        (missing.to_str().unwrap(), "not a directory"),
        ("relative/dir", "must be an absolute path"),
    ] {
        let r = g.run(&kernel, &["--jail", jail]);
        assert_eq!(r.status.code(), Some(1), "{jail}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("--jail {jail}: {want}")),
            "{jail}: {}",
            r.stderr
        );
        assert!(!r.console_exists, "{jail}: console log created");
    }
}

#[test]
fn a_kernel_that_is_neither_elf_nor_bzimage_is_refused() {
    let g = Guest::new();
    let kernel = g.file("not-a-kernel", b"#!/bin/sh\necho this is not a kernel\n");
    let r = g.run(&kernel, &[]);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("neither an ELF vmlinux nor a bzImage"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("not-a-kernel"), "{}", r.stderr);
    assert!(!r.console_exists, "no vCPU may have run");
}

#[test]
fn an_initrd_larger_than_guest_ram_is_refused() {
    let g = Guest::new();
    let mut a = Asm::long_mode();
    a.triple_fault();
    let kernel = g.file("k.elf", &guest_image::elf(&a.code, 0, false));
    let initrd = g.dir.path().join("big-initrd");
    // Sparse: 80 MiB on paper for a 64 MiB guest, no disk used.
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(80 << 20)
        .unwrap();
    let r = g.run(&kernel, &["--initrd", initrd.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("big-initrd is 83886080 bytes but only"),
        "{}",
        r.stderr
    );
    assert!(!r.console_exists, "no vCPU may have run");
}

#[test]
fn more_vcpus_than_allowed_are_refused() {
    let g = Guest::new();
    let mut a = Asm::long_mode();
    a.triple_fault();
    let kernel = g.file("k.elf", &guest_image::elf(&a.code, 0, false));
    for n in ["0", "255"] {
        let r = g.run(&kernel, &["--vcpus", n]);
        assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("--vcpus \"{n}\": must be from 1 to 254")),
            "{}",
            r.stderr
        );
        assert!(!r.console_exists, "no vCPU may have run");
    }
    let r = g.run(&kernel, &["--vcpus", "1000"]);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("--vcpus \"1000\""), "{}", r.stderr);
}

#[test]
fn a_truncated_elf_kernel_is_refused() {
    let g = Guest::new();
    let mut a = Asm::long_mode();
    a.triple_fault();
    let mut image = guest_image::elf(&a.code, 0, false);
    image.truncate(100); // header, but program headers cut off
    let kernel = g.file("short.elf", &image);
    let r = g.run(&kernel, &[]);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("short.elf"), "{}", r.stderr);
    assert!(!r.console_exists, "no vCPU may have run");
}

#[test]
fn multi_vcpu_guest_sees_the_mp_table_and_runs_on_apic_id_0() {
    require_kvm!();
    for vcpus in ["2", "4"] {
        let g = Guest::new();
        let mut a = Asm::long_mode();
        a.dx_com1().out_byte(b'M');
        a.load_eax_abs(0x9fc00).out_ax_bytes(4); // "_MP_"
        a.load_eax_abs(0x9fc10).out_ax_bytes(4); // "PCMP"
        a.load_eax_abs(0x9fc10 + 34).out_ax_bytes(2); // entry count
                                                      // cpuid(1).ebx[31:24]: the APIC ID of the CPU running this.
        a.bytes(&[0xb8, 1, 0, 0, 0, 0x0f, 0xa2, 0x89, 0xd8, 0xc1, 0xe8, 24]);
        a.dx_com1().out_ax_bytes(1);
        a.triple_fault();
        let kernel = g.file("mp.elf", &guest_image::elf(&a.code, 0, false));
        let r = g.run(&kernel, &["--vcpus", vcpus]);
        assert!(
            r.status.success(),
            "{vcpus} vCPUs: {:?}\n{}",
            r.status,
            r.stderr
        );
        let n: u64 = vcpus.parse().unwrap();
        let mut rep = Report(&r.console);
        rep.expect(b"M_MP_PCMP");
        assert_eq!(
            rep.take(2),
            n + 1 + 1 + 24 + 2,
            "CPUs, bus, IOAPIC, 24 IRQs, 2 LINTs"
        );
        assert_eq!(rep.take(1), 0, "the BSP has APIC ID 0");
        assert!(rep.0.is_empty(), "trailing {:?}", rep.0);
    }
}

mod common;

#[test]
fn husk_vmm_attaches_vsock_fs_and_rng_that_the_guest_finds_over_mmio() {
    require_kvm!();
    let g = Guest::new();
    let Some(daemons) = Daemons::start(g.dir.path()) else {
        return;
    };

    let b = husk_vmm::memory::VIRTIO_MMIO_BASE as u32;
    let mut a = Asm::protected_mode();
    a.dx_com1().out_byte(b'D');
    for dev in [b, b + 0x1000, b + 0x2000] {
        // magic, version, device id, first config word
        for reg in [0x000, 0x004, 0x008, 0x100] {
            a.load_eax_abs(dev + reg).out_ax_bytes(4);
        }
    }
    // The command line via hvm_start_info.cmdline_paddr, as in the virtio
    // test: mov esi,[ebx+0x18]; print bytes until NUL.
    a.bytes(&[
        0x8b, 0x73, 0x18, 0x8a, 0x06, 0x84, 0xc0, 0x74, 0x04, 0xee, 0x46, 0xeb, 0xf6,
    ]);
    a.triple_fault();
    let kernel = g.file("devices.elf", &guest_image::elf(&a.code, 0, true));
    let mut args = daemons.args();
    args.push("--rng");
    let r = g.run(&kernel, &args);
    assert!(r.status.success(), "{:?}\n{}", r.status, r.stderr);
    let mut rep = Report(&r.console);
    rep.expect(b"D");
    let tag = u64::from(u32::from_le_bytes(*b"husk"));
    for (id, config) in [(19u64, 3u64), (26, tag), (4, 0)] {
        assert_eq!(rep.take(4), 0x7472_6976, "magic of device {id}");
        assert_eq!(rep.take(4), 2, "version of device {id}");
        assert_eq!(rep.take(4), id, "device id");
        assert_eq!(
            rep.take(4),
            config,
            "config of device {id}: guest CID / tag / none"
        );
    }
    let expect = format!(
        "virtio_mmio.device=4K@{b:#x}:5 virtio_mmio.device=4K@{:#x}:6 \
         virtio_mmio.device=4K@{:#x}:7",
        b + 0x1000,
        b + 0x2000
    );
    rep.expect(expect.as_bytes());
    assert!(
        rep.0.is_empty(),
        "trailing {:?}",
        String::from_utf8_lossy(rep.0)
    );
}

#[test]
fn husk_vmm_puts_a_tap_nic_on_virtio_mmio() {
    require_kvm!();
    // husk-vmm makes the TAP in its own network namespace, as under the
    // shim (the pod's); here a fresh one from unshare(1).
    let netns_ok = Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .map(|s| s.success());
    if netns_ok.as_ref().map_or(true, |ok| !ok) {
        println!("SKIPPED: cannot run `unshare --net` here: {netns_ok:?}");
        return;
    }
    let g = Guest::new();
    let b = husk_vmm::memory::VIRTIO_MMIO_BASE as u32;
    let mut a = Asm::protected_mode();
    a.dx_com1().out_byte(b'N');
    for reg in [0x000, 0x004, 0x008, 0x100, 0x104] {
        a.load_eax_abs(b + reg).out_ax_bytes(4);
    }
    a.triple_fault();
    let kernel = g.file("net.elf", &guest_image::elf(&a.code, 0, true));
    let child = Command::new("unshare")
        .args(["--net", "--"])
        .arg(HUSK_VMM)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--console-log")
        .arg(g.console())
        .args(["--net-tap", "husk0", "--net-mac", "02:11:22:33:44:55"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = g.finish(child);
    assert!(r.status.success(), "{:?}\n{}", r.status, r.stderr);
    let mut rep = Report(&r.console);
    rep.expect(b"N");
    assert_eq!(rep.take(4), 0x7472_6976, "magic");
    assert_eq!(rep.take(4), 2, "version");
    assert_eq!(rep.take(4), 1, "device id: net");
    assert_eq!(
        rep.take(4),
        u64::from(u32::from_le_bytes([0x02, 0x11, 0x22, 0x33]))
    );
    assert_eq!(
        rep.take(4),
        u64::from(u32::from_le_bytes([0x44, 0x55, 0, 0])),
        "MAC, then 0"
    );
    assert!(rep.0.is_empty(), "trailing {:?}", rep.0);
}

/// A TAP made the way the shim made it before husk TAPs carried the vnet
/// header: IFF_TAP | IFF_NO_PI only.
fn plain_tap(name: &str) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: open, then TUNSETIFF on an ifreq we own.
    unsafe {
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        let f = std::fs::File::from_raw_fd(fd);
        let mut ifr = [0u8; 40];
        ifr[..name.len()].copy_from_slice(name.as_bytes());
        ifr[16..18].copy_from_slice(&((libc::IFF_TAP | libc::IFF_NO_PI) as i16).to_le_bytes());
        let tunsetiff: libc::c_ulong = 0x4004_54ca;
        assert_eq!(
            libc::ioctl(fd, tunsetiff as _, ifr.as_mut_ptr()),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
        f
    }
}

/// husk-vmm with `tap` at fd 3, as `MicroVm` passes the pod's TAP.
fn spawn_with_tap_at_fd3(g: &Guest, kernel: &Path, tap: &std::fs::File) -> Child {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = tap.as_raw_fd();
    let mut cmd = Command::new(HUSK_VMM);
    cmd.arg("--kernel")
        .arg(kernel)
        .arg("--console-log")
        .arg(g.console())
        .args(["--net-tap", "fd:3"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) != 3 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

#[test]
fn a_passed_tap_must_carry_the_vnet_header() {
    // A thread in a network namespace of its own makes the TAPs; husk-vmm
    // started from it inherits the namespace.
    let result = std::thread::spawn(|| -> Result<(), String> {
        // SAFETY: affects only this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "SKIP unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            ));
        }
        let g = Guest::new();
        let mut a = Asm::long_mode();
        a.dx_com1().out_str(b"tap\n").triple_fault();
        let kernel = g.file("tap.elf", &guest_image::elf(&a.code, 0, false));

        let r = g.finish(spawn_with_tap_at_fd3(&g, &kernel, &plain_tap("plain0")));
        assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
        assert!(
            r.stderr
                .contains("TAP --net-tap fd:3 (plain0): opened with flags")
                && r.stderr
                    .contains("not a TAP with IFF_NO_PI and IFF_VNET_HDR"),
            "{}",
            r.stderr
        );
        assert!(!r.console_exists, "refused before the VM was made");

        if let Err(why) = kvm_runs_guest_code() {
            println!("SKIPPED (the accepted half): KVM cannot run guest code here: {why}");
            return Ok(());
        }
        let tap = husk_vmm_config::tap::open_tap("husk0").map_err(|e| e.to_string())?;
        let r = g.finish(spawn_with_tap_at_fd3(&g, &kernel, &tap));
        assert!(r.status.success(), "{:?}\n{}", r.status, r.stderr);
        assert_eq!(r.console, b"tap\n");
        Ok(())
    })
    .join()
    .unwrap();
    match result {
        Err(e) if e.starts_with("SKIP ") => println!("SKIPPED: {}", &e[5..]),
        Err(e) => panic!("{e}"),
        Ok(()) => {}
    }
}

/// The launcher's husk-vmm backend (husk-hypervisor), run for real: what
/// `MicroVm` would start is accepted by husk-vmm, with both daemons
/// attached.
#[test]
fn the_launchers_husk_vmm_command_starts_husk_vmm_with_the_daemons() {
    require_kvm!();
    require_root!();
    use husk_hypervisor::{Accelerator, HuskVmm, Hypervisor, VmLaunch};
    let g = Guest::new();
    let d = g.dir.path();
    let Some(daemons) = Daemons::start(d) else {
        return;
    };
    let mut a = Asm::long_mode();
    a.dx_com1().out_str(b"backend\n").triple_fault();
    let launch = VmLaunch {
        id: "b1".into(),
        accelerator: Accelerator::Kvm,
        vcpus: 2,
        memory_mib: 64,
        tcg_tb_size_mib: 0,
        kernel: g.file("k.elf", &guest_image::elf(&a.code, 0, false)),
        initrd: g.file("initrd", b"initrd"),
        cmdline: "console=ttyS0 reboot=t".into(),
        run_dir: d.to_path_buf(),
        console_log: g.console(),
        vsock_vhost_socket: daemons.vsock_socket.clone(),
        fs_vhost_socket: daemons.fs_socket.clone(),
        fs_tag: "husk".into(),
        nets: Vec::new(),
        identity: Some(husk_vmm_config::Identity {
            uid: VM_ID,
            gid: VM_ID,
        }),
        oom_score_adj: None,
    };
    let backend = HuskVmm {
        binary: HUSK_VMM.into(),
    };
    let mut cmd = backend.command(&launch).unwrap().into_std();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = g.finish(child);
    assert!(r.status.success(), "{:?}\n{}", r.status, r.stderr);
    assert_eq!(r.console, b"backend\n");
    assert!(
        r.stderr.contains("running as the VM's own user"),
        "{}",
        r.stderr
    );
}
