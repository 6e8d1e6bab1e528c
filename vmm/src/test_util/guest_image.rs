//! Tiny guest "kernels" for tests and benchmarks: a few bytes of
//! hand-encoded x86 machine code wrapped in the formats the loader accepts
//! (ELF with or without a PVH note, bzImage). With them the real VMM can be
//! checked on any KVM without a Linux guest kernel: the code reports what
//! it sees on the serial port, then triple-faults like `reboot=t`.

/// Where the images load and start: 1 MiB, the lowest address the loader
/// accepts for a kernel.
pub const LOAD_ADDR: u64 = 0x10_0000;

/// x86 machine code, encoded by hand. `long` selects 64-bit encodings
/// (REX.W) where 32-bit and 64-bit mode differ.
#[derive(Debug, Clone, Default)]
pub struct Asm {
    pub code: Vec<u8>,
    long: bool,
}

/// General registers by their encoding number.
#[derive(Debug, Clone, Copy)]
pub enum Reg {
    Ax = 0,
    Cx = 1,
    Dx = 2,
    Bx = 3,
    Sp = 4,
    Bp = 5,
    Si = 6,
    Di = 7,
}

/// Segment registers by their encoding number.
#[derive(Debug, Clone, Copy)]
pub enum Sreg {
    Es = 0,
    Cs = 1,
    Ss = 2,
    Ds = 3,
}

impl Asm {
    /// Code for 64-bit long mode.
    pub fn long_mode() -> Self {
        Asm {
            code: Vec::new(),
            long: true,
        }
    }

    /// Code for 32-bit protected mode (the PVH entry).
    pub fn protected_mode() -> Self {
        Asm::default()
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.code.extend_from_slice(b);
        self
    }

    fn rex_w(&mut self) {
        if self.long {
            self.code.push(0x48);
        }
    }

    /// `mov dx, 0x3f8` (COM1 data port).
    pub fn dx_com1(&mut self) -> &mut Self {
        self.bytes(&[0x66, 0xba, 0xf8, 0x03])
    }

    /// `mov dx, port`.
    pub fn mov_dx(&mut self, port: u16) -> &mut Self {
        let p = port.to_le_bytes();
        self.bytes(&[0x66, 0xba, p[0], p[1]])
    }

    /// `mov al, b; out dx, al`.
    pub fn out_byte(&mut self, b: u8) -> &mut Self {
        self.bytes(&[0xb0, b, 0xee])
    }

    /// `mov al, b; out port, al` for an 8-bit port number.
    pub fn out_imm_port(&mut self, port: u8, b: u8) -> &mut Self {
        self.bytes(&[0xb0, b, 0xe6, port])
    }

    /// Writes each byte of `s` to port `dx`.
    pub fn out_str(&mut self, s: &[u8]) -> &mut Self {
        for b in s {
            self.out_byte(*b);
        }
        self
    }

    /// `mov (r|e)ax, reg`.
    pub fn mov_ax_from(&mut self, reg: Reg) -> &mut Self {
        self.rex_w();
        self.bytes(&[0x89, 0xc0 | ((reg as u8) << 3)])
    }

    /// `mov rax, imm64` (64-bit mode only: REX.W B8).
    pub fn mov_ax_imm64(&mut self, v: u64) -> &mut Self {
        self.bytes(&[0x48, 0xb8]);
        self.bytes(&v.to_le_bytes())
    }

    /// `mov (r|e)ax, crN`.
    pub fn mov_ax_from_cr(&mut self, cr: u8) -> &mut Self {
        self.bytes(&[0x0f, 0x20, 0xc0 | (cr << 3)])
    }

    /// `mov eax, sreg` (zero-extended selector).
    pub fn mov_ax_from_sreg(&mut self, sreg: Sreg) -> &mut Self {
        self.bytes(&[0x8c, 0xc0 | ((sreg as u8) << 3)])
    }

    /// `mov eax, [reg + disp32]` (not for rsp/rbp-based forms).
    pub fn load_eax(&mut self, base: Reg, disp: i32) -> &mut Self {
        self.bytes(&[0x8b, 0x80 | (base as u8)]);
        self.bytes(&disp.to_le_bytes())
    }

    /// Writes the low `n` bytes of (r|e)ax to port `dx`, least significant
    /// first: `mov ecx, n; l: out dx, al; shr (r|e)ax, 8; dec ecx; jnz l`.
    /// Clobbers rax and rcx.
    pub fn out_ax_bytes(&mut self, n: u8) -> &mut Self {
        self.bytes(&[0xb9, n, 0, 0, 0]);
        let top = self.code.len();
        self.bytes(&[0xee]);
        self.rex_w();
        self.bytes(&[0xc1, 0xe8, 0x08, 0xff, 0xc9]);
        let back = top as isize - (self.code.len() as isize + 2);
        self.bytes(&[0x75, back as i8 as u8])
    }

    /// `mov ecx, msr; rdmsr`: the MSR's low half in eax.
    pub fn rdmsr(&mut self, msr: u32) -> &mut Self {
        self.bytes(&[0xb9]);
        self.bytes(&msr.to_le_bytes());
        self.bytes(&[0x0f, 0x32])
    }

    /// `pushf; pop (r|e)ax`: the flags, through the stack.
    pub fn flags_to_ax(&mut self) -> &mut Self {
        self.bytes(&[0x9c, 0x58])
    }

    /// Writes the NUL-terminated string whose 32-bit address is at
    /// `[rsi + disp]` to port `dx` (64-bit mode; clobbers rsi and al):
    /// `mov esi, [rsi+disp]; l: mov al, [rsi]; test al, al; jz end;
    /// out dx, al; inc rsi; jmp l; end:`.
    pub fn out_cstr_via_rsi(&mut self, disp: i32) -> &mut Self {
        self.bytes(&[0x8b, 0xb6]);
        self.bytes(&disp.to_le_bytes());
        self.bytes(&[
            0x8a, 0x06, 0x84, 0xc0, 0x74, 0x06, 0xee, 0x48, 0xff, 0xc6, 0xeb, 0xf4,
        ])
    }

    /// `mov eax, [abs32]` (SIB absolute form; 32-bit mode, or below 2 GiB
    /// in long mode where disp32 is sign-extended).
    pub fn load_eax_abs(&mut self, addr: u32) -> &mut Self {
        self.bytes(&[0x8b, 0x04, 0x25]);
        self.bytes(&addr.to_le_bytes())
    }

    /// `mov dword [abs32], imm32` (same addressing caveat).
    pub fn store_abs(&mut self, addr: u32, v: u32) -> &mut Self {
        self.bytes(&[0xc7, 0x04, 0x25]);
        self.bytes(&addr.to_le_bytes());
        self.bytes(&v.to_le_bytes())
    }

    /// Programs the 8259 master PIC: vectors from `base`, every line
    /// masked except `irq`.
    pub fn pic_unmask_only(&mut self, base: u8, irq: u8) -> &mut Self {
        // ICW1 (edge, ICW4 follows), ICW2 vector base, ICW3 (slave on
        // line 2), ICW4 (8086 mode), then the mask (OCW1).
        self.out_imm_port(0x20, 0x11).out_imm_port(0x21, base);
        self.out_imm_port(0x21, 0x04).out_imm_port(0x21, 0x01);
        self.out_imm_port(0x21, !(1u8 << irq))
    }

    /// `lidt [abs32]`.
    pub fn lidt_abs(&mut self, addr: u32) -> &mut Self {
        self.bytes(&[0x0f, 0x01, 0x1c, 0x25]);
        self.bytes(&addr.to_le_bytes())
    }

    pub fn sti(&mut self) -> &mut Self {
        self.bytes(&[0xfb])
    }

    /// `l: hlt; jmp l` — waits for interrupts forever.
    pub fn hlt_loop(&mut self) -> &mut Self {
        self.bytes(&[0xf4, 0xeb, 0xfd])
    }

    /// `ud2`: with the VMM's one-entry IDT this escalates to a triple
    /// fault, which is how `reboot=t` ends a guest.
    pub fn triple_fault(&mut self) -> &mut Self {
        self.bytes(&[0x0f, 0x0b])
    }
}

/// A 64-bit interrupt gate to `handler` through code selector `cs`.
pub fn idt_gate64(handler: u64, cs: u16) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&cs.to_le_bytes());
    g[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

/// A 32-bit interrupt gate to `handler` through code selector `cs`.
pub fn idt_gate32(handler: u32, cs: u16) -> [u8; 8] {
    let mut g = [0u8; 8];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&cs.to_le_bytes());
    g[5] = 0x8e; // present, DPL 0, 32-bit interrupt gate
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g
}

/// An ELF64 executable with one PT_LOAD segment holding `image` at
/// [`LOAD_ADDR`], entered at `LOAD_ADDR + entry_offset`; with `pvh`, a
/// PT_NOTE carrying XEN_ELFNOTE_PHYS32_ENTRY for that address as well.
pub fn elf(image: &[u8], entry_offset: u64, pvh: bool) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let phnum = if pvh { 2 } else { 1 };
    let note_off = EHDR + PHDR * phnum;
    // namesz, descsz, type, "Xen\0", entry (u32).
    let mut note = Vec::new();
    if pvh {
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&((LOAD_ADDR + entry_offset) as u32).to_le_bytes());
    }
    let code_off = 0x1000usize;
    let entry = LOAD_ADDR + entry_offset;

    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&(phnum as u16).to_le_bytes());
    f.extend_from_slice(&[0; 6]); // no section headers
    let phdr = |f: &mut Vec<u8>, p_type: u32, off: u64, addr: u64, size: u64, align: u64| {
        f.extend_from_slice(&p_type.to_le_bytes());
        f.extend_from_slice(&7u32.to_le_bytes()); // RWX
        f.extend_from_slice(&off.to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes()); // vaddr
        f.extend_from_slice(&addr.to_le_bytes()); // paddr
        f.extend_from_slice(&size.to_le_bytes()); // filesz
        f.extend_from_slice(&size.to_le_bytes()); // memsz
        f.extend_from_slice(&align.to_le_bytes());
    };
    let len = image.len() as u64;
    phdr(&mut f, 1, code_off as u64, LOAD_ADDR, len, 0x1000);
    if pvh {
        phdr(&mut f, 4, note_off as u64, 0, note.len() as u64, 4);
    }
    f.extend_from_slice(&note);
    f.resize(code_off, 0);
    f.extend_from_slice(image);
    f
}

/// A bzImage (boot protocol 2.15) whose protected-mode part is `image`,
/// loaded at [`LOAD_ADDR`]; its 64-bit entry point is `image[0x200..]`.
pub fn bzimage(image: &[u8]) -> Vec<u8> {
    let setup_sects = 1u8;
    let mut f = vec![0u8; (usize::from(setup_sects) + 1) * 512];
    let put = |f: &mut Vec<u8>, off: usize, b: &[u8]| f[off..off + b.len()].copy_from_slice(b);
    put(&mut f, 0x1f1, &[setup_sects]);
    put(&mut f, 0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(&mut f, 0x202, b"HdrS");
    put(&mut f, 0x206, &0x020fu16.to_le_bytes()); // version
    put(&mut f, 0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(&mut f, 0x214, &(LOAD_ADDR as u32).to_le_bytes()); // code32_start
    put(&mut f, 0x22c, &0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut f, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(&mut f, 0x236, &0x0001u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    put(&mut f, 0x238, &2047u32.to_le_bytes()); // cmdline_size
    f.extend_from_slice(image);
    f
}

/// 64-bit code for the bzImage's entry at 0x200 of its protected-mode
/// part: pads `code` so it starts there.
pub fn bzimage_payload(code: &[u8]) -> Vec<u8> {
    let mut p = vec![0xf4; 0x200]; // hlt, never reached
    p.extend_from_slice(code);
    p
}
