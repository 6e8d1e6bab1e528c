//! virtio-net's work on its queues: the guest sets rx and tx up (sizes and
//! ring addresses from the input, through the transport as the Linux
//! driver does) in 64 KiB of RAM whose contents come from the input:
//! descriptor chains of any shape, loops, rings that overlap the rx
//! buffers the device writes. Transmit sends each chain as one frame of at
//! most MAX_FRAME bytes; receive puts frames from the TAP (also from the
//! input, any size up to a TSO segment) into rx chains; both end, and
//! nothing panics.

#![no_main]

use husk_fuzz::virtio::{self, driver_setup, guest_memory, QueueLayout, VERSION_1};
use husk_fuzz::Input;
use husk_vmm::devices::virtio::net::VNET_HDR_LEN;
use husk_vmm::devices::virtio::QueueT;
use husk_vmm::fuzzing::{net_receive, net_transmit};
use libfuzzer_sys::fuzz_target;
use std::io::{self, Read, Write};
use vm_memory::{Bytes, GuestAddress};

const RAM: usize = 0x1_0000;
/// virtio_net_hdr_v1 + 64 KiB + Ethernet and VLAN headers (net.rs).
const MAX_FRAME: usize = VNET_HDR_LEN + 65_550;

/// The TAP's transmit side: keeps the frame lengths.
struct TapOut(Vec<usize>);

impl Write for TapOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The TAP's receive side: the frames of the input, then EAGAIN.
struct TapIn(Vec<usize>);

impl Read for TapIn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(len) = self.0.pop() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = len.min(buf.len());
        buf[..n].fill(0x5a);
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let rx = QueueLayout::read(&mut input, 0);
    let tx = QueueLayout::read(&mut input, 1);
    let features = u64::from(input.u32()) | VERSION_1;
    // Up to 8 received frames, each of a size from 0 to 128 KiB.
    let frames: Vec<usize> = (0..input.u8() % 9)
        .map(|_| usize::from(input.u16()) * 2)
        .collect();
    let mem = guest_memory(RAM, 0);
    let image = input.rest();
    mem.write_slice(&image[..image.len().min(RAM)], GuestAddress(0))
        .unwrap();
    let (mut t, seen) = virtio::transport(&mem, virtio::NET, false);
    driver_setup(
        &mut t,
        features & (virtio::NET.features | VERSION_1),
        &[rx, tx],
    );
    let Some(act) = seen.lock().unwrap().pop() else {
        return; // queues the transport refused
    };
    virtio::check_activation(virtio::NET, &act);
    let mut queues = act.queues.into_iter();
    let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
        return; // the device refuses it too
    };
    let (mut rx_q, mut tx_q) = (rx.queue, tx.queue);

    let mut out = TapOut(Vec::new());
    let sent = net_transmit(&mem, &mut tx_q, &mut out);
    assert!(sent || tx_q.next_used() == 0, "chains used, none reported");
    for len in &out.0 {
        assert!(
            *len > VNET_HDR_LEN && *len <= MAX_FRAME,
            "a frame of {len} bytes"
        );
    }

    let mut tap = TapIn(frames);
    let (received, full) = net_receive(&mem, &mut rx_q, &mut tap);
    assert!(
        received || rx_q.next_used() == 0,
        "chains used, none reported"
    );
    assert!(
        full || tap.0.is_empty(),
        "stopped with frames and buffers left"
    );
});
