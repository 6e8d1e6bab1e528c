//! A single-client DHCP server on the pod's TAP, as KubeVirt's bridge
//! binding has: an image without cloud-init (or one told to use DHCP)
//! still gets the pod's address, router, DNS, hostname and MTU (RFC 2131,
//! options RFC 2132; classless routes RFC 3442 for a gateway outside the
//! pod's subnet).
//!
//! The guest's requests are read with a packet socket bound to the TAP
//! (ETH_P_ALL, so it sees each frame before tc redirects it to the pod
//! interface) under a classic BPF filter that passes only IPv4 UDP to port
//! 67, so the VM's other traffic never reaches the shim. Answers are sent
//! on the same socket, out of the TAP, to the guest. A request also goes
//! on to the pod network, as in KubeVirt's bridge binding; pod networks
//! run no DHCP server.
//!
//! Everything read is the guest's: frames are parsed with bounds checks,
//! only the VM's own MAC is answered, only with the pod's lease, and at
//! most [`ANSWER_BURST`] answers at once, then [`ANSWERS_PER_SEC`] a
//! second ([`AnswerBudget`]): a guest flooding requests gets the rest
//! dropped, and costs the shim a read per frame, not a send.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const ETH_P_IP: u16 = 0x0800;
const ETH_HEADER: usize = 14;
const BOOTP_FIXED: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;
/// Lease time given: a day; renewals come to the same answer.
const LEASE_SECS: u32 = 86_400;
/// The source MAC of the answers (locally administered; the guest talks
/// to the pod network's own router afterwards, not to it).
const SERVER_MAC: [u8; 6] = [0x02, 0x00, 0x68, 0x75, 0x73, 0x6b];
/// Largest frame read (the TAP's MTU is the pod's; DHCP fits in 576).
const MAX_FRAME: usize = 2048;
/// Answers a VM may have at once (a client's DISCOVER, REQUEST and a few
/// retries), and how many a second after that.
pub const ANSWER_BURST: u32 = 8;
pub const ANSWERS_PER_SEC: u32 = 2;

/// A token bucket of answers: [`ANSWER_BURST`] deep, refilled at
/// [`ANSWERS_PER_SEC`].
#[derive(Debug)]
pub struct AnswerBudget {
    tokens: f64,
    last: std::time::Instant,
    /// Requests dropped since the last log line about them.
    dropped: u64,
}

impl AnswerBudget {
    pub fn new(now: std::time::Instant) -> Self {
        Self {
            tokens: f64::from(ANSWER_BURST),
            last: now,
            dropped: 0,
        }
    }

    /// Whether one more answer may go at `now`.
    pub fn take(&mut self, now: std::time::Instant) -> bool {
        let refill =
            now.saturating_duration_since(self.last).as_secs_f64() * f64::from(ANSWERS_PER_SEC);
        self.tokens = (self.tokens + refill).min(f64::from(ANSWER_BURST));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// What the VM is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    pub hostname: String,
    pub mtu: u16,
}

impl Lease {
    /// The lease for the pod's network as CNI made it: the interface's
    /// first IPv4 address, the IPv4 default route's gateway, its MTU.
    /// None when the pod has no IPv4 address.
    pub fn of_pod(
        net: &husk_proto::agent::ConfigureNetworkRequest,
        dns: &super::cloud_init::Dns,
        hostname: &str,
    ) -> Option<Lease> {
        let nic = net.interfaces.first()?;
        let mac = nic.mac.parse::<husk_hypervisor::MacAddr>().ok()?.bytes();
        let (address, prefix) = nic.addresses.iter().find_map(|a| {
            let (ip, len) = a.split_once('/')?;
            Some((
                ip.parse::<Ipv4Addr>().ok()?,
                len.parse::<u8>().ok().filter(|l| *l <= 32)?,
            ))
        })?;
        let gateway = net
            .routes
            .iter()
            .filter(|r| r.destination.is_empty() || r.destination == "0.0.0.0/0")
            .find_map(|r| r.gateway.parse::<Ipv4Addr>().ok());
        Some(Lease {
            mac,
            address,
            prefix,
            gateway,
            dns: dns
                .servers
                .iter()
                .filter_map(|a| match a {
                    std::net::IpAddr::V4(v4) => Some(*v4),
                    std::net::IpAddr::V6(_) => None,
                })
                .collect(),
            search: dns.search.clone(),
            hostname: hostname.to_owned(),
            mtu: u16::try_from(nic.mtu).unwrap_or(1500).max(576),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageType {
    Discover,
    Request,
}

/// A client's request, as far as the answer needs it.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    kind: MessageType,
    xid: [u8; 4],
    flags: [u8; 2],
}

/// Reads a frame from the TAP: a DHCP request of the VM (`mac`), or None
/// for anything else.
pub fn parse(frame: &[u8], mac: &[u8; 6]) -> Option<Request> {
    if frame.get(6..12)? != mac || frame.get(12..14)? != ETH_P_IP.to_be_bytes() {
        return None;
    }
    let ip = frame.get(ETH_HEADER..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ip.first()? >> 4 != 4 || ihl < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let udp = ip.get(ihl..)?;
    if udp.get(2..4)? != SERVER_PORT.to_be_bytes() {
        return None;
    }
    let bootp = udp.get(8..)?;
    // BOOTREQUEST, Ethernet, 6-byte addresses, the VM's own chaddr.
    if bootp.get(0..3)? != [1, 1, 6] || bootp.get(28..34)? != mac {
        return None;
    }
    if bootp.get(BOOTP_FIXED..BOOTP_FIXED + 4)? != MAGIC {
        return None;
    }
    let kind = match option(bootp.get(BOOTP_FIXED + 4..)?, 53)?.first()? {
        1 => MessageType::Discover,
        3 => MessageType::Request,
        _ => return None,
    };
    Some(Request {
        kind,
        xid: bootp.get(4..8)?.try_into().ok()?,
        flags: bootp.get(10..12)?.try_into().ok()?,
    })
}

/// The value of option `code` in `options` (stops at END or at anything
/// that runs past the end).
fn option(options: &[u8], code: u8) -> Option<&[u8]> {
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            0 => i += 1,
            255 => return None,
            c => {
                let len = usize::from(*options.get(i + 1)?);
                let value = options.get(i + 2..i + 2 + len)?;
                if c == code {
                    return Some(value);
                }
                i += 2 + len;
            }
        }
    }
    None
}

fn mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0),
    )
}

fn in_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let m = u32::from(mask(prefix));
    u32::from(a) & m == u32::from(b) & m
}

/// An option whose value fits in one (at most 255 bytes); a longer one
/// is left out rather than cut: a value cut short is a different name or
/// a broken address (RFC 3396's long options are not worth it here).
fn push_option(out: &mut Vec<u8>, code: u8, value: &[u8]) {
    let Ok(len) = u8::try_from(value.len()) else {
        return;
    };
    out.push(code);
    out.push(len);
    out.extend_from_slice(value);
}

/// Addresses an option holds whole: 63 of them.
const MAX_DNS_SERVERS: usize = 255 / 4;

/// RFC 3397's encoding of a search list (no compression): whole names
/// only, of labels of 1 to 63 bytes (a final dot dropped), as many as
/// fit in one option.
fn encode_search(domains: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in domains {
        let d = d.strip_suffix('.').unwrap_or(d);
        if d.split('.').any(|l| l.is_empty() || l.len() > 63) {
            continue;
        }
        let mut name = Vec::with_capacity(d.len() + 2);
        for label in d.split('.') {
            name.push(label.len() as u8);
            name.extend_from_slice(label.as_bytes());
        }
        name.push(0);
        if out.len() + name.len() > 255 {
            break;
        }
        out.extend_from_slice(&name);
    }
    out
}

/// RFC 3442's classless routes: the gateway as an on-link host route,
/// then the default route through it.
fn classless_routes(gw: Ipv4Addr) -> Vec<u8> {
    let mut out = vec![32];
    out.extend_from_slice(&gw.octets());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.push(0);
    out.extend_from_slice(&gw.octets());
    out
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The answer to `req`: OFFER for DISCOVER, ACK for REQUEST, as a whole
/// Ethernet frame to the broadcast address (the guest has no address
/// yet; only it is on the TAP).
pub fn answer(req: &Request, lease: &Lease) -> Vec<u8> {
    let server = lease.gateway.unwrap_or(lease.address);
    let mut bootp = vec![0u8; BOOTP_FIXED];
    bootp[0..4].copy_from_slice(&[2, 1, 6, 0]);
    bootp[4..8].copy_from_slice(&req.xid);
    bootp[10..12].copy_from_slice(&req.flags);
    bootp[16..20].copy_from_slice(&lease.address.octets());
    bootp[20..24].copy_from_slice(&server.octets());
    bootp[28..34].copy_from_slice(&lease.mac);
    bootp.extend_from_slice(&MAGIC);
    let kind = match req.kind {
        MessageType::Discover => 2,
        MessageType::Request => 5,
    };
    push_option(&mut bootp, 53, &[kind]);
    push_option(&mut bootp, 54, &server.octets());
    push_option(&mut bootp, 51, &LEASE_SECS.to_be_bytes());
    push_option(&mut bootp, 58, &(LEASE_SECS / 2).to_be_bytes());
    push_option(&mut bootp, 59, &(LEASE_SECS / 8 * 7).to_be_bytes());
    push_option(&mut bootp, 1, &mask(lease.prefix).octets());
    if let Some(gw) = lease.gateway {
        if !in_subnet(gw, lease.address, lease.prefix) {
            push_option(&mut bootp, 121, &classless_routes(gw));
        }
        push_option(&mut bootp, 3, &gw.octets());
    }
    if !lease.dns.is_empty() {
        let dns: Vec<u8> = lease
            .dns
            .iter()
            .take(MAX_DNS_SERVERS)
            .flat_map(|a| a.octets())
            .collect();
        push_option(&mut bootp, 6, &dns);
    }
    if let Some(first) = lease.search.first() {
        push_option(&mut bootp, 15, first.as_bytes());
        let search = encode_search(&lease.search);
        if !search.is_empty() {
            push_option(&mut bootp, 119, &search);
        }
    }
    if !lease.hostname.is_empty() {
        push_option(&mut bootp, 12, lease.hostname.as_bytes());
    }
    push_option(&mut bootp, 26, &lease.mtu.to_be_bytes());
    bootp.push(255);
    // BOOTP's minimum message (300 bytes), as old clients want.
    if bootp.len() < 300 {
        bootp.resize(300, 0);
    }
    let udp_len = 8 + bootp.len();
    let mut frame = Vec::with_capacity(ETH_HEADER + 20 + udp_len);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&SERVER_MAC);
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&server.octets());
    ip[16..20].copy_from_slice(&Ipv4Addr::BROADCAST.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&SERVER_PORT.to_be_bytes());
    frame.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
    // A zero UDP checksum: none, which IPv4 allows.
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&bootp);
    frame
}

/// Classic BPF: IPv4, UDP, not a fragment, destination port 67.
fn filter() -> [libc::sock_filter; 11] {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    [
        op(0x28, 0, 0, 12),                     // ldh [12]: ethertype
        op(0x15, 0, 8, 0x0800),                 // jeq IPv4, else drop
        op(0x30, 0, 0, 23),                     // ldb [23]: IP protocol
        op(0x15, 0, 6, 17),                     // jeq UDP, else drop
        op(0x28, 0, 0, 20),                     // ldh [20]: fragment offset
        op(0x45, 4, 0, 0x1fff),                 // jset: a fragment, drop
        op(0xb1, 0, 0, 14),                     // ldxb 4*([14]&0xf): IP header length
        op(0x48, 0, 0, 16),                     // ldh [x+16]: UDP destination port
        op(0x15, 0, 1, u32::from(SERVER_PORT)), // jeq 67, else drop
        op(0x06, 0, 0, MAX_FRAME as u32),       // ret: take the frame
        op(0x06, 0, 0, 0),                      // ret 0: drop
    ]
}

/// A packet socket on interface `ifindex` of the current network
/// namespace, seeing only what `filter` passes.
fn packet_socket(ifindex: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; protocol 0 receives
    // nothing until bind, so no frame passes before the filter is set.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut program = filter();
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: fprog points at `program`, alive for the call; the kernel
    // copies the program.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::addr_of!(fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is a valid sockaddr_ll of the size passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Serves `lease` on the TAP `tap` of the network namespace `netns` until
/// the returned task is aborted (when the VM exits).
pub fn serve(
    netns: &Path,
    tap: &'static str,
    lease: Lease,
) -> Result<tokio::task::JoinHandle<()>, crate::host::network::NetworkError> {
    let fd = crate::host::network::on_thread_in_netns(netns, move || {
        let name = std::ffi::CString::new(tap)?;
        // SAFETY: if_nametoindex reads the NUL-terminated name only.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error());
        }
        packet_socket(ifindex)
    })?;
    // SAFETY: the OwnedFd stays open and names the same socket until the
    // AsyncFd that owns it is dropped.
    let socket = unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|source| {
        crate::host::network::NetworkError::Namespace {
            path: netns.to_owned(),
            source: source.into(),
        }
    })?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_FRAME];
        let mut budget = AnswerBudget::new(std::time::Instant::now());
        loop {
            let Ok(mut ready) = socket.readable().await else {
                return;
            };
            // SAFETY: recv into `buf`, of the length given.
            let n = unsafe {
                libc::recv(
                    socket.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    ready.clear_ready();
                    continue;
                }
                tracing::warn!(%e, "DHCP: reading the TAP; no more answers");
                return;
            }
            let Some(req) = parse(&buf[..n as usize], &lease.mac) else {
                continue;
            };
            if !budget.take(std::time::Instant::now()) {
                if budget.dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped = budget.dropped,
                        "DHCP: the VM asks faster than it is answered; requests dropped"
                    );
                }
                continue;
            }
            let frame = answer(&req, &lease);
            // SAFETY: send from `frame`, of the length given.
            let sent = unsafe {
                libc::send(
                    socket.get_ref().as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                )
            };
            if sent < 0 {
                tracing::warn!(e = %std::io::Error::last_os_error(), "DHCP: answering");
            } else {
                tracing::info!(kind = ?req.kind, address = %lease.address, "DHCP: answered the VM");
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xfa, 0x03, 0x05];

    fn lease(address: &str, prefix: u8, gw: &str) -> Lease {
        Lease {
            mac: MAC,
            address: address.parse().unwrap(),
            prefix,
            gateway: Some(gw.parse().unwrap()),
            dns: vec!["10.96.0.10".parse().unwrap()],
            search: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            hostname: "vm-1".into(),
            mtu: 1450,
        }
    }

    /// A client's frame as systemd-networkd sends it.
    fn request(kind: u8, mac: [u8; 6]) -> Vec<u8> {
        let mut bootp = vec![0u8; BOOTP_FIXED];
        bootp[0..3].copy_from_slice(&[1, 1, 6]);
        bootp[4..8].copy_from_slice(&[1, 2, 3, 4]);
        bootp[28..34].copy_from_slice(&mac);
        bootp.extend_from_slice(&MAGIC);
        bootp.extend_from_slice(&[53, 1, kind, 255]);
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255,
        ];
        ip.extend_from_slice(&[0, 68, 0, 67, 0, 0, 0, 0]);
        ip.extend_from_slice(&bootp);
        f.extend_from_slice(&ip);
        f
    }

    #[test]
    fn answers_come_in_a_burst_then_at_the_rate() {
        let t0 = std::time::Instant::now();
        let mut b = AnswerBudget::new(t0);
        let burst = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(burst, ANSWER_BURST as usize);
        assert_eq!(b.dropped, 100 - u64::from(ANSWER_BURST));
        // Ten seconds later: the rate's worth, capped at the burst.
        let t10 = t0 + std::time::Duration::from_secs(10);
        let later = (0..100).filter(|_| b.take(t10)).count();
        assert_eq!(later, ANSWER_BURST as usize);
        let t11 = t10 + std::time::Duration::from_secs(1);
        assert_eq!(
            (0..100).filter(|_| b.take(t11)).count(),
            ANSWERS_PER_SEC as usize
        );
        // A clock that goes back refills nothing.
        assert!(!b.take(t0));
    }

    #[test]
    fn only_the_vms_own_requests_are_read() {
        let r = parse(&request(1, MAC), &MAC).unwrap();
        assert_eq!(r.kind, MessageType::Discover);
        assert_eq!(r.xid, [1, 2, 3, 4]);
        assert_eq!(
            parse(&request(3, MAC), &MAC).unwrap().kind,
            MessageType::Request
        );
        assert_eq!(parse(&request(1, [2, 0, 0, 0, 0, 1]), &MAC), None);
        // RELEASE and anything cut short are ignored, never a panic.
        assert_eq!(parse(&request(7, MAC), &MAC), None);
        let full = request(1, MAC);
        for len in 0..full.len() {
            let _ = parse(&full[..len], &MAC);
        }
        let mut long_option = full.clone();
        let end = long_option.len() - 4;
        long_option[end..].copy_from_slice(&[53, 200, 1, 255]);
        assert_eq!(parse(&long_option, &MAC), None);
    }

    #[test]
    fn the_answer_carries_the_pods_lease() {
        let req = parse(&request(1, MAC), &MAC).unwrap();
        let frame = answer(&req, &lease("10.250.3.5", 24, "10.250.3.1"));
        assert_eq!(&frame[0..6], &[0xff; 6]);
        let ip = &frame[ETH_HEADER..ETH_HEADER + 20];
        assert_eq!(checksum(ip), 0, "the IP header checksum holds");
        let bootp = &frame[ETH_HEADER + 28..];
        assert_eq!(bootp[0], 2);
        assert_eq!(&bootp[16..20], &[10, 250, 3, 5]);
        let options = &bootp[BOOTP_FIXED + 4..];
        assert_eq!(option(options, 53), Some(&[2][..]));
        assert_eq!(option(options, 1), Some(&[255, 255, 255, 0][..]));
        assert_eq!(option(options, 3), Some(&[10, 250, 3, 1][..]));
        assert_eq!(option(options, 6), Some(&[10, 96, 0, 10][..]));
        assert_eq!(option(options, 12), Some(&b"vm-1"[..]));
        assert_eq!(option(options, 26), Some(&1450u16.to_be_bytes()[..]));
        assert_eq!(option(options, 121), None, "the gateway is on the subnet");
        assert_eq!(
            option(options, 119),
            Some(&b"\x02ns\x03svc\x07cluster\x05local\x00\x03svc\x07cluster\x05local\x00"[..])
        );
        let ack = answer(
            &parse(&request(3, MAC), &MAC).unwrap(),
            &lease("10.250.3.5", 24, "10.250.3.1"),
        );
        assert_eq!(
            option(&ack[ETH_HEADER + 28 + BOOTP_FIXED + 4..], 53),
            Some(&[5][..])
        );
    }

    /// Values longer than an option holds go whole or not at all: never
    /// an address cut short or a name cut mid-label.
    #[test]
    fn long_values_are_never_cut() {
        let mut l = lease("10.0.0.2", 8, "10.0.0.1");
        l.dns = (0..70).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        l.search = vec![
            "x".repeat(300),
            "a..b".into(),
            "y".repeat(64),
            "c.d.".into(),
        ];
        l.search.extend((0..40).map(|i| format!("n{i}.example")));
        l.hostname = "h".repeat(256);
        let req = parse(&request(1, MAC), &MAC).unwrap();
        let frame = answer(&req, &l);
        let options = &frame[ETH_HEADER + 28 + BOOTP_FIXED + 4..];
        assert_eq!(option(options, 6).unwrap().len(), 63 * 4);
        assert_eq!(option(options, 12), None, "a hostname over 255 bytes");
        assert_eq!(option(options, 15), None, "a domain over 255 bytes");
        let search = option(options, 119).unwrap();
        assert!(search.starts_with(b"\x01c\x01d\x00\x02n0\x07example\x00"));
        assert!(search.ends_with(b"\x07example\x00"), "whole names only");
    }

    #[test]
    fn a_gateway_off_the_subnet_comes_as_classless_routes() {
        let req = parse(&request(1, MAC), &MAC).unwrap();
        let frame = answer(&req, &lease("10.1.2.3", 32, "169.254.1.1"));
        let options = &frame[ETH_HEADER + 28 + BOOTP_FIXED + 4..];
        assert_eq!(option(options, 1), Some(&[255, 255, 255, 255][..]));
        assert_eq!(
            option(options, 121),
            Some(&[32, 169, 254, 1, 1, 0, 0, 0, 0, 0, 169, 254, 1, 1][..])
        );
    }

    #[test]
    fn the_lease_is_the_pods_network() {
        use husk_proto::agent::{ConfigureNetworkRequest, NetworkInterface, NetworkRoute};
        let net = ConfigureNetworkRequest {
            interfaces: vec![NetworkInterface {
                mac: "0a:58:0a:fa:03:05".into(),
                name: "eth0".into(),
                mtu: 1450,
                addresses: vec!["fd00::5/64".into(), "10.250.3.5/24".into()],
                current_mac: String::new(),
            }],
            routes: vec![NetworkRoute {
                destination: String::new(),
                gateway: "10.250.3.1".into(),
                interface: "eth0".into(),
            }],
        };
        let dns = super::super::cloud_init::parse_resolv_conf(
            "nameserver 10.96.0.10\nnameserver fd00::a\nsearch ns.svc.cluster.local svc.cluster.local\n",
        );
        let mut expected = lease("10.250.3.5", 24, "10.250.3.1");
        assert_eq!(Lease::of_pod(&net, &dns, "vm-1"), Some(expected.clone()));
        let no_v4 = ConfigureNetworkRequest {
            interfaces: vec![NetworkInterface {
                addresses: vec!["fd00::5/64".into()],
                ..net.interfaces[0].clone()
            }],
            ..net.clone()
        };
        assert_eq!(Lease::of_pod(&no_v4, &dns, "vm-1"), None);
        expected.gateway = None;
        let no_route = ConfigureNetworkRequest {
            routes: Vec::new(),
            ..net
        };
        assert_eq!(Lease::of_pod(&no_route, &dns, "vm-1"), Some(expected));
    }

    /// A pod namespace as CNI leaves it (eth0 with an address and a
    /// default route), the TAP husk attaches to it, and this server: a
    /// DISCOVER written into the TAP, as the guest's NIC sends it, is
    /// answered with an OFFER of the pod's address, read from the TAP as
    /// the guest reads it. Needs root (netns, veth, TAP).
    #[tokio::test]
    async fn the_guest_gets_the_pods_lease_through_the_tap() {
        use std::io::{Read, Write};
        use std::process::Command;
        let ns = format!("husk-dhcp-{}", std::process::id());
        let veth = format!("hdhcp{}", std::process::id() % 100_000);
        let ip = |args: &[&str]| Command::new("ip").args(args).output();
        match ip(&["netns", "add", &ns]) {
            Ok(o) if o.status.success() => {}
            other => {
                println!("SKIPPED: cannot make a network namespace: {other:?}");
                return;
            }
        }
        struct Cleanup(String, String);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["link", "del", &self.1]).output();
                let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
            }
        }
        let _cleanup = Cleanup(ns.clone(), veth.clone());
        for args in [
            vec![
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
            vec![
                "-n",
                &ns,
                "link",
                "set",
                "eth0",
                "address",
                "0a:58:0a:fa:03:05",
                "mtu",
                "1450",
                "up",
            ],
            vec!["-n", &ns, "addr", "add", "10.250.3.5/24", "dev", "eth0"],
            vec!["-n", &ns, "route", "add", "default", "via", "10.250.3.1"],
        ] {
            let out = ip(&args).unwrap();
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        let netns = std::path::PathBuf::from(format!("/run/netns/{ns}"));
        let pod = crate::host::network::attach(&netns).unwrap().unwrap();
        let dns = super::super::cloud_init::Dns::default();
        let lease = Lease::of_pod(&pod.guest, &dns, "vm-1").unwrap();
        assert_eq!(lease.address, Ipv4Addr::new(10, 250, 3, 5));
        let server = serve(&netns, crate::host::network::TAP_NAME, lease).unwrap();
        // The guest's side of the TAP: frames with the 12-byte vnet header.
        let mut tap = std::fs::File::from(pod.tap.try_clone().unwrap());
        let mut frame = vec![0u8; husk_hypervisor::tap::VNET_HDR_LEN];
        frame.extend_from_slice(&request(1, MAC));
        tap.write_all(&frame).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let offer = loop {
            let mut buf = vec![0u8; 4096];
            match tap.read(&mut buf) {
                Ok(n) => {
                    let f = &buf[husk_hypervisor::tap::VNET_HDR_LEN..n];
                    // UDP from port 67: the answer (other frames, IPv6
                    // router solicitations and the like, are skipped).
                    if f.len() > ETH_HEADER + 28
                        && f[12..14] == [8, 0]
                        && f[ETH_HEADER + 20..ETH_HEADER + 22] == [0, 67]
                    {
                        break f.to_vec();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "no answer on the TAP");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("reading the TAP: {e}"),
            }
        };
        let bootp = &offer[ETH_HEADER + 28..];
        assert_eq!(&bootp[16..20], &[10, 250, 3, 5]);
        assert_eq!(option(&bootp[BOOTP_FIXED + 4..], 53), Some(&[2][..]));
        assert_eq!(
            option(&bootp[BOOTP_FIXED + 4..], 3),
            Some(&[10, 250, 3, 1][..])
        );
        server.abort();
        tokio::task::spawn_blocking(move || pod.detach())
            .await
            .unwrap();
    }

    #[test]
    fn the_filter_is_well_formed() {
        let f = filter();
        // Every jump lands inside the program.
        for (i, op) in f.iter().enumerate() {
            if op.code & 0x07 == 0x05 {
                assert!(i + 1 + usize::from(op.jt) < f.len());
                assert!(i + 1 + usize::from(op.jf) < f.len());
            }
        }
        // The kernel takes it.
        match packet_socket(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => println!("SKIPPED: {e}"),
            Err(e) => panic!("{e}"),
        }
    }
}
