//! Guests that count, for the snapshot tests and bench: each reports
//! every step as a frame on COM1, `#` and the count as 4 bytes little
//! endian ([`frames`] reads them back), so a clone shows whether it went
//! on from its template's count or started over.
//!
//! - [`timer_counter`]: 64-bit; the PIT ticks through the PIC (IRQ 0) into
//!   an IDT handler that increments a counter in RAM ([`COUNTER_ADDR`]);
//!   between ticks the vCPU sleeps in `hlt`. Restoring it needs the vCPU,
//!   irqchip, PIT and RAM state.
//! - [`rng_counter`]: 32-bit (PVH); drives virtio-rng through virtio-mmio
//!   and reports each request the device completed (the used ring's
//!   index). Restoring it needs the transport's and the device's queue
//!   state as well: a device that started over would never complete the
//!   next request.
//! - [`ticker`]: 64-bit; fills `fill_mib` MiB of RAM, then writes bytes
//!   to COM1 as fast as it can and counts them in RAM, forever: for
//!   timing a restore to the guest's first instruction, and the memory a
//!   clone shares with its template.
//!
//! PVM (the build hosts) runs these guests' instructions slowly, about
//! 1.5 µs each (a 1000-turn `dec`/`jnz` loop took 3.1 ms, machine
//! loaded), and an `out` to COM1 costs about 30 µs there: spins are short.

use super::guest_image::{elf, idt_gate64, Asm, LOAD_ADDR};
use crate::memory::VIRTIO_MMIO_BASE;
use crate::vcpu::regs::BOOT_CS;

/// Where [`timer_counter`] keeps its count (u32, guest-physical).
pub const COUNTER_ADDR: u32 = 0x30_0000;
/// [`rng_counter`]'s rings and buffer (guest-physical).
const RNG_DESC: u32 = 0x20_0000;
const RNG_AVAIL: u32 = 0x20_1000;
/// Where the rng queue's used ring lies; its index (at +2) is the count
/// of requests the device completed.
pub const RNG_USED: u32 = 0x20_2000;
const RNG_BUFFER: u32 = 0x21_0000;
/// Where the 64-bit guests' IDT handler, IDTR and IDT sit in the image.
const HANDLER: usize = 0x400;
const IDTR: usize = 0x780;
const IDT: usize = 0x800;

/// The counts in a console log's complete frames, from its first `#`
/// (a clone's log may start inside a frame its template began).
pub fn frames(log: &[u8]) -> Vec<u32> {
    let Some(start) = log.iter().position(|b| *b == b'#') else {
        return Vec::new();
    };
    log[start..]
        .chunks_exact(5)
        .take_while(|f| f[0] == b'#')
        .map(|f| u32::from_le_bytes([f[1], f[2], f[3], f[4]]))
        .collect()
}

/// `inc dword [abs32]`.
fn inc_abs(a: &mut Asm, addr: u32) {
    a.bytes(&[0xff, 0x04, 0x25]).bytes(&addr.to_le_bytes());
}

/// `mov ecx, n; l: dec ecx; jnz l` (`dec ecx` as ff c9, both modes).
fn spin(a: &mut Asm, n: u32) {
    a.bytes(&[0xb9]).bytes(&n.to_le_bytes());
    a.bytes(&[0xff, 0xc9, 0x75, 0xfc]);
}

/// An ELF image of `code` with a 64-bit interrupt gate to `handler` for
/// `vector`, the handler at [`HANDLER`] and the IDT it loads.
fn with_idt(code: &[u8], handler: &[u8], vector: usize) -> Vec<u8> {
    let mut image = code.to_vec();
    assert!(image.len() <= HANDLER, "code {} bytes", image.len());
    image.resize(HANDLER, 0xcc);
    image.extend_from_slice(handler);
    assert!(image.len() <= IDTR, "handler too long");
    image.resize(IDTR, 0xcc);
    image.extend_from_slice(&((0x30 * 16 - 1) as u16).to_le_bytes());
    image.extend_from_slice(&(LOAD_ADDR + IDT as u64).to_le_bytes());
    image.resize(IDT, 0);
    let mut table = vec![0u8; 0x30 * 16];
    let gate = idt_gate64(LOAD_ADDR + HANDLER as u64, BOOT_CS);
    table[vector * 16..vector * 16 + 16].copy_from_slice(&gate);
    image.extend_from_slice(&table);
    elf(&image, 0, false)
}

/// The PIT at `hz` (channel 0, rate generator) counting into
/// [`COUNTER_ADDR`], one frame per tick.
pub fn timer_counter(hz: u32) -> Vec<u8> {
    let divisor = (1_193_182 / hz.max(19)) as u16;
    let mut a = Asm::long_mode();
    a.pic_unmask_only(0x20, 0);
    // Channel 0, low then high byte, mode 2, binary.
    a.out_imm_port(0x43, 0x34);
    a.out_imm_port(0x40, divisor as u8);
    a.out_imm_port(0x40, (divisor >> 8) as u8);
    a.lidt_abs((LOAD_ADDR as usize + IDTR) as u32);
    a.sti().hlt_loop();
    let mut h = Asm::long_mode();
    h.dx_com1().out_byte(b'#');
    inc_abs(&mut h, COUNTER_ADDR);
    h.load_eax_abs(COUNTER_ADDR).out_ax_bytes(4);
    h.out_imm_port(0x20, 0x20); // EOI
    h.bytes(&[0x48, 0xcf]); // iretq
    with_idt(&a.code, &h.code, 0x20)
}

/// virtio-rng in slot 0 asked for 16 bytes at a time, the request waited
/// for by polling the used ring (interrupts stay off), each completion
/// reported with the used index, then a short spin.
pub fn rng_counter() -> Vec<u8> {
    let b = VIRTIO_MMIO_BASE as u32;
    let mut a = Asm::protected_mode();
    // 3.1.1: ACKNOWLEDGE, DRIVER, VERSION_1 (bit 32), FEATURES_OK.
    a.store_abs(b + 0x70, 1).store_abs(b + 0x70, 3);
    a.store_abs(b + 0x24, 1).store_abs(b + 0x20, 1);
    a.store_abs(b + 0x70, 0xb);
    // Queue 0: 8 entries, then ready and DRIVER_OK.
    a.store_abs(b + 0x30, 0).store_abs(b + 0x38, 8);
    a.store_abs(b + 0x80, RNG_DESC)
        .store_abs(b + 0x90, RNG_AVAIL);
    a.store_abs(b + 0xa0, RNG_USED).store_abs(b + 0x44, 1);
    a.store_abs(b + 0x70, 0xf);
    // Descriptor 0: 16 device-writable bytes. Every avail entry is 0
    // (RAM starts zeroed), so each request is descriptor 0 again.
    a.store_abs(RNG_DESC, RNG_BUFFER).store_abs(RNG_DESC + 4, 0);
    a.store_abs(RNG_DESC + 8, 16).store_abs(RNG_DESC + 12, 2);
    let top = a.code.len();
    // inc word [avail.idx]; QueueNotify(0)
    a.bytes(&[0x66, 0xff, 0x05])
        .bytes(&(RNG_AVAIL + 2).to_le_bytes());
    a.store_abs(b + 0x50, 0);
    // wait: movzx eax, word [used.idx]; cmp ax, [avail.idx]; jne wait
    let wait = a.code.len();
    a.bytes(&[0x0f, 0xb7, 0x05])
        .bytes(&(RNG_USED + 2).to_le_bytes());
    a.bytes(&[0x66, 0x3b, 0x05])
        .bytes(&(RNG_AVAIL + 2).to_le_bytes());
    let back = wait as isize - (a.code.len() as isize + 2);
    a.bytes(&[0x75, back as i8 as u8]);
    a.dx_com1().bytes(&[0x50]); // push eax
    a.out_byte(b'#').bytes(&[0x58]); // pop eax
    a.out_ax_bytes(4);
    spin(&mut a, 100);
    let back = top as isize - (a.code.len() as isize + 5);
    a.bytes(&[0xe9]).bytes(&(back as i32).to_le_bytes());
    elf(&a.code, 0, true)
}

/// Fills `fill_mib` MiB of RAM from 4 MiB with a pattern (`rep stosd`),
/// then writes `!` to COM1 and increments [`COUNTER_ADDR`] in a loop of
/// three instructions, forever.
pub fn ticker(fill_mib: u32) -> Vec<u8> {
    let mut a = Asm::long_mode();
    a.bytes(&[0xbf]).bytes(&0x40_0000u32.to_le_bytes()); // mov edi, 4 MiB
    a.bytes(&[0xb9]).bytes(&(fill_mib << 18).to_le_bytes()); // mov ecx, dwords
    a.bytes(&[0xb8]).bytes(&0x5a5a_5a5au32.to_le_bytes()); // mov eax, pattern
    a.bytes(&[0xf3, 0xab]); // rep stosd
    a.dx_com1().bytes(&[0xb0, b'!']);
    // l: out dx, al; inc dword [COUNTER_ADDR]; jmp l
    a.bytes(&[0xee]);
    inc_abs(&mut a, COUNTER_ADDR);
    a.bytes(&[0xeb, 0xf6]);
    elf(&a.code, 0, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_from_the_first_hash_and_only_whole() {
        let mut log = vec![7, 0, 0]; // the tail of a frame begun elsewhere
        for n in [41u32, 42, 43] {
            log.push(b'#');
            log.extend_from_slice(&n.to_le_bytes());
        }
        log.extend_from_slice(b"#\x2c"); // cut short
        assert_eq!(frames(&log), [41, 42, 43]);
        assert_eq!(frames(b"no frames"), Vec::<u32>::new());
    }
}
