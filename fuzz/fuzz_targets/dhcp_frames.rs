//! The shim's DHCP server on a VM-image pod's TAP (shim/src/vm_image/
//! dhcp.rs): every frame the guest sends that the socket's filter passes
//! is read by `dhcp::parse`, and a request gets `dhcp::answer` with the
//! pod's lease, within the `AnswerBudget`. Nothing may panic; besides:
//!
//! - only a BOOTREQUEST from the lease's MAC (Ethernet source and
//!   chaddr both), over IPv4 UDP to port 67, carrying DHCPDISCOVER or
//!   DHCPREQUEST (option 53, RFC 2132 9.6) is read; a frame from any
//!   other MAC never is;
//! - an answer is a well-formed broadcast Ethernet/IPv4/UDP frame from
//!   port 67 to 68 (IP header checksum valid, lengths consistent, UDP
//!   checksum none or valid) with a BOOTREPLY (RFC 2131 2) for the
//!   request's xid and flags, the lease's address as yiaddr and its MAC
//!   as chaddr; its options (RFC 2132) end with END, hold OFFER for a
//!   DISCOVER and ACK for a REQUEST, the server id, the lease's mask,
//!   router, DNS servers (whole addresses), search list (whole names,
//!   RFC 3397), hostname and MTU, and classless routes (RFC 3442) only
//!   for a gateway off the subnet;
//! - the budget answers at most its burst plus its rate over the time
//!   that passed, and always answers a request half a second (its
//!   refill interval) after the one before.
//!
//! Input: byte 0: bit 0 the lease's MAC is the frame's source MAC (else
//! the next 6 bytes), bit 1 run the budget instead (the rest: u16 steps
//! of the clock in ms, the top bit set for a step back); then the lease:
//! address (4), prefix (1, modulo 33), gateway (a flag byte and 4), MTU
//! (u16), DNS servers (a count byte, 4 each), hostname and search
//! domains (a u8 length each, the domains separated by spaces); then
//! the frame as it comes from the TAP.

#![no_main]

use husk_fuzz::Input;
use husk_shim::vm_image::dhcp::{
    answer, parse, AnswerBudget, Lease, ANSWERS_PER_SEC, ANSWER_BURST,
};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const BOOTP: usize = 14 + 20 + 8;

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// The lease, from the input; its MAC is the frame's where `frame_mac`
/// (set by the caller).
fn lease(input: &mut Input, frame_mac: bool) -> Lease {
    let mut mac = [0u8; 6];
    if !frame_mac {
        let b = input.bytes(6);
        mac[..b.len()].copy_from_slice(b);
    }
    let address = ip(&input.u32().to_be_bytes());
    let prefix = input.u8() % 33;
    let gateway = (input.u8() & 1 != 0).then(|| ip(&input.u32().to_be_bytes()));
    let mtu = input.u16();
    let dns = (0..input.u8())
        .map(|_| ip(&input.u32().to_be_bytes()))
        .collect();
    let text = |input: &mut Input| {
        let n = usize::from(input.u8());
        String::from_utf8_lossy(input.bytes(n)).into_owned()
    };
    let hostname = text(input);
    let search = text(input).split(' ').map(str::to_owned).collect();
    Lease {
        mac,
        address,
        prefix,
        gateway,
        dns,
        search,
        hostname,
        mtu,
    }
}

/// The options of a BOOTP message, each whole; None where one runs past
/// the end or END is missing. Pads are skipped.
fn options(data: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        match *data.get(i)? {
            0 => i += 1,
            255 => {
                assert!(data[i + 1..].iter().all(|&b| b == 0), "bytes after END");
                return Some(out);
            }
            code => {
                let len = usize::from(*data.get(i + 1)?);
                out.push((code, data.get(i + 2..i + 2 + len)?));
                i += 2 + len;
            }
        }
    }
}

fn first<'a>(options: &[(u8, &'a [u8])], code: u8) -> Option<&'a [u8]> {
    options.iter().find(|(c, _)| *c == code).map(|(_, v)| *v)
}

/// What the frame is, read from the protocol's fields: the request's
/// message type, xid and flags, for a DHCP request from `mac`.
fn request(frame: &[u8], mac: &[u8; 6]) -> Option<(u8, [u8; 4], [u8; 2])> {
    if frame.get(6..12)? != mac || frame.get(12..14)? != [8, 0] {
        return None;
    }
    let ihl = usize::from(frame.get(14)? & 15) * 4;
    if frame[14] >> 4 != 4 || ihl < 20 || *frame.get(14 + 9)? != 17 {
        return None;
    }
    let udp = frame.get(14 + ihl..)?;
    if udp.get(2..4)? != [0, 67] {
        return None;
    }
    let bootp = udp.get(8..)?;
    if bootp.get(..3)? != [1, 1, 6] || bootp.get(28..34)? != mac || bootp.get(236..240)? != MAGIC {
        return None;
    }
    // The first option 53 before END (or before an option that runs past
    // the end), as a server reads options in order.
    let mut i = 240;
    let kind = loop {
        match *bootp.get(i)? {
            0 => i += 1,
            255 => return None,
            code => {
                let len = usize::from(*bootp.get(i + 1)?);
                let value = bootp.get(i + 2..i + 2 + len)?;
                if code == 53 {
                    break *value.first()?;
                }
                i += 2 + len;
            }
        }
    };
    let xid = bootp[4..8].try_into().unwrap();
    let flags = bootp[10..12].try_into().unwrap();
    matches!(kind, 1 | 3).then_some((kind, xid, flags))
}

/// RFC 3397: whole names of whole labels, nothing left over.
fn search_list(mut v: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut name = Vec::new();
    while let Some((&len, rest)) = v.split_first() {
        if len == 0 {
            names.push(name.join("."));
            name.clear();
            v = rest;
            continue;
        }
        assert!(len < 64, "a label of {len} bytes");
        let label = rest.get(..usize::from(len)).expect("a label cut short");
        name.push(String::from_utf8_lossy(label).into_owned());
        v = &rest[usize::from(len)..];
    }
    assert!(name.is_empty(), "a name without its end: {name:?}");
    names
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn check_answer(frame: &[u8], lease: &Lease, kind: u8, xid: [u8; 4], flags: [u8; 2]) {
    assert!(frame.len() >= BOOTP + 240);
    assert_eq!(&frame[..6], &[0xff; 6], "to the broadcast MAC");
    assert_eq!(&frame[12..14], &[8, 0]);
    let iph = &frame[14..34];
    assert_eq!(iph[0], 0x45);
    assert_eq!(
        usize::from(u16::from_be_bytes([iph[2], iph[3]])),
        frame.len() - 14
    );
    assert_eq!(
        u16::from_be_bytes([iph[6], iph[7]]) & 0x3fff,
        0,
        "a fragment"
    );
    assert!(iph[8] > 0, "TTL 0");
    assert_eq!(iph[9], 17);
    assert_eq!(checksum(iph), 0, "the IP header checksum");
    let server = lease.gateway.unwrap_or(lease.address);
    assert_eq!(ip(&iph[12..16]), server);
    assert_eq!(ip(&iph[16..20]), Ipv4Addr::BROADCAST);
    let udp = &frame[34..];
    assert_eq!(&udp[..4], &[0, 67, 0, 68]);
    assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
    if udp[6..8] != [0, 0] {
        let mut pseudo = iph[12..20].to_vec();
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(udp);
        assert_eq!(checksum(&pseudo), 0, "the UDP checksum");
    }
    let bootp = &frame[BOOTP..];
    assert_eq!(&bootp[..3], &[2, 1, 6], "a BOOTREPLY for Ethernet");
    assert_eq!(bootp[4..8], xid);
    assert_eq!(bootp[10..12], flags);
    assert_eq!(ip(&bootp[16..20]), lease.address, "yiaddr is the lease's");
    assert_eq!(bootp[28..34], lease.mac);
    assert_eq!(bootp[236..240], MAGIC);
    let opts = options(&bootp[240..]).expect("options that end with END");
    let expect =
        |code: u8, value: &[u8]| assert_eq!(first(&opts, code), Some(value), "option {code}");
    expect(53, &[if kind == 1 { 2 } else { 5 }]);
    expect(54, &server.octets());
    expect(1, &mask(lease.prefix).to_be_bytes());
    expect(26, &lease.mtu.to_be_bytes());
    match lease.gateway {
        Some(gw) => {
            expect(3, &gw.octets());
            let on_subnet =
                u32::from(gw) & mask(lease.prefix) == u32::from(lease.address) & mask(lease.prefix);
            let routes = first(&opts, 121);
            assert_eq!(routes.is_none(), on_subnet, "classless routes");
            if let Some(r) = routes {
                let mut want = vec![32];
                want.extend(gw.octets());
                want.extend([0, 0, 0, 0, 0]);
                want.extend(gw.octets());
                assert_eq!(r, want);
            }
        }
        None => assert!(first(&opts, 3).is_none() && first(&opts, 121).is_none()),
    }
    match first(&opts, 6) {
        Some(v) => {
            assert!(v.len() % 4 == 0, "a DNS server cut short");
            let got: Vec<Ipv4Addr> = v.chunks(4).map(ip).collect();
            assert_eq!(got[..], lease.dns[..got.len()]);
        }
        None => assert!(lease.dns.is_empty()),
    }
    // Names go whole or not at all: a search domain, the domain name and
    // the hostname are the lease's own (a domain may lose its final dot).
    let one_of_the_domains = |name: &[u8]| {
        lease
            .search
            .iter()
            .any(|s| s.as_bytes() == name || s.strip_suffix('.').map(str::as_bytes) == Some(name))
    };
    if let Some(v) = first(&opts, 119) {
        for name in search_list(v) {
            assert!(
                one_of_the_domains(name.as_bytes()),
                "{name:?} is not one of the lease's domains"
            );
        }
    }
    if let Some(v) = first(&opts, 15) {
        assert!(
            one_of_the_domains(v),
            "{v:?} is not one of the lease's domains"
        );
    }
    match first(&opts, 12) {
        Some(v) => assert_eq!(v, lease.hostname.as_bytes()),
        None => assert!(lease.hostname.is_empty() || lease.hostname.len() > 255),
    }
    for (code, _) in &opts {
        assert_eq!(
            opts.iter().filter(|(c, _)| c == code).count(),
            1,
            "option {code} twice"
        );
    }
}

fn budget(input: &mut Input) {
    let t0 = Instant::now();
    let mut b = AnswerBudget::new(t0);
    let (mut now_ms, mut forward_ms, mut answered) = (0u64, 0u64, 0u64);
    let interval_ms = u64::from(1000 / ANSWERS_PER_SEC);
    while !input.is_empty() {
        let step = input.u16();
        let ms = u64::from(step & 0x7fff);
        let back = step & 0x8000 != 0;
        if back {
            now_ms = now_ms.saturating_sub(ms);
        } else {
            now_ms += ms;
            forward_ms += ms;
        }
        let ok = b.take(t0 + Duration::from_millis(now_ms));
        answered += u64::from(ok);
        // Only time going forward refills (Instant is monotonic; a step
        // back, which it never takes, earns nothing).
        let limit =
            f64::from(ANSWER_BURST) + f64::from(ANSWERS_PER_SEC) * forward_ms as f64 / 1000.0;
        assert!(
            answered as f64 <= limit + 1e-9,
            "{answered} answers in {forward_ms} ms"
        );
        // The budget never goes below empty: a request one refill
        // interval after the one before is answered.
        if !back && ms >= interval_ms {
            assert!(ok, "refused {ms} ms after the request before");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    if mode & 2 != 0 {
        return budget(&mut input);
    }
    let mut l = lease(&mut input, mode & 1 != 0);
    let frame = input.rest();
    if mode & 1 != 0 {
        if let Some(m) = frame.get(6..12) {
            l.mac = m.try_into().unwrap();
        }
    }
    let mut other = l.mac;
    other[5] ^= 1;
    assert_eq!(
        parse(frame, &other).is_some(),
        request(frame, &other).is_some()
    );
    let model = request(frame, &l.mac);
    match (parse(frame, &l.mac), model) {
        (Some(req), Some((kind, xid, flags))) => {
            check_answer(&answer(&req, &l), &l, kind, xid, flags)
        }
        (None, None) => {}
        (got, want) => panic!("parse gave {got:?}, the protocol says {want:?}"),
    }
});
