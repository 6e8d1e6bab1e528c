//! virtio-rng's work on its queue: the guest sets the queue up (size and
//! ring addresses from the input, through the transport as the Linux
//! driver does) in 64 KiB of RAM whose contents are the rest of the input:
//! descriptor chains of any shape, loops, rings that overlap the buffers
//! the device writes. Every request must be answered with at most
//! MAX_REQUEST bytes, in finite time, without a panic. The source of bytes
//! returns short counts and errors where the input says so.

#![no_main]

use husk_fuzz::virtio::{self, driver_setup, guest_memory, QueueLayout, VERSION_1};
use husk_fuzz::Input;
use husk_vmm::devices::virtio::rng::MAX_REQUEST;
use husk_vmm::devices::virtio::QueueT;
use husk_vmm::fuzzing::rng_serve;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const RAM: usize = 0x1_0000;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let layout = QueueLayout::read(&mut input, 0);
    // Bit i: the i-th call of the filler (mod 8) comes back short; bit 7
    // makes every 8th call fail.
    let filler = input.u8();
    let mem = guest_memory(RAM, 0);
    let image = input.rest();
    mem.write_slice(&image[..image.len().min(RAM)], GuestAddress(0))
        .unwrap();
    let (mut t, seen) = virtio::transport(&mem, virtio::RNG, false);
    driver_setup(&mut t, VERSION_1, &[layout]);
    let Some(mut act) = seen.lock().unwrap().pop() else {
        return; // a queue the transport refused
    };
    virtio::check_activation(virtio::RNG, &act);
    let mut q = act.queues.remove(0).queue;
    let used_before = q.next_used();
    let mut calls = 0u32;
    let mut filled = 0usize;
    let fill = |buf: &mut [u8]| {
        calls += 1;
        if filler & 0x80 != 0 && calls.is_multiple_of(8) {
            return Err(std::io::Error::from_raw_os_error(libc::EINTR));
        }
        assert!(buf.len() <= MAX_REQUEST, "a fill of {} bytes", buf.len());
        let n = if filler & (1 << (calls % 7)) != 0 {
            buf.len() / 2
        } else {
            buf.len()
        };
        buf[..n].fill(0xa5);
        filled += n;
        Ok(n)
    };
    let used = rng_serve(&mem, &mut q, fill);
    let chains = q.next_used().wrapping_sub(used_before);
    assert!(used || chains == 0, "{chains} answers, none reported");
    assert!(
        filled <= usize::from(chains) * MAX_REQUEST,
        "{filled} bytes for {chains} answered requests"
    );
});
