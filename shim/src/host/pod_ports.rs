//! Host services at the pod's address beside its VM. A VM-image pod's VM
//! *is* the pod's address: [`super::network`] redirects every frame that
//! reaches the pod interface to the VM's TAP, so a socket the shim listens
//! on in the pod's namespace is reachable only on loopback (which is what
//! `kubectl port-forward` dials). To make one also answer at the pod IP
//! (the VNC console, docs/vm-pods.md), two filters go before the redirect
//! on the pod interface's ingress:
//!
//! - IPv4 TCP to one of the service's ports (a header without options, not
//!   a later fragment) passes to the namespace's own stack (a u32 match
//!   with no action: `TC_ACT_OK`), never to the VM;
//! - ARP is mirrored to the TAP and also passes to the stack: both ends
//!   have the pod interface's MAC and address, and the namespace must
//!   learn its peers' MACs to answer (its ARP replies would otherwise go to
//!   the VM only). Both answer a request for the pod's address, with the
//!   same MAC.
//!
//! The filters go with the ingress qdisc when the network is detached.
//! IPv6 is not passed: a service is reachable at the pod's IPv4 address
//! and through port-forward.

use super::network::{in_netns, link_index, netlink, NetworkError, PodNetwork, TAP_NAME};
use rtnetlink::packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType,
    TcFilterU32Option, TcMirror, TcMirrorActionType, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};

/// tc's "parent ffff:", the ingress qdisc.
const INGRESS_PARENT: u32 = 0xffff_0000;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
/// Priorities before the redirect (which the kernel numbered 49152).
const ARP_PRIORITY: u16 = 1;
const PORTS_PRIORITY: u16 = 2;

fn key(off: i32, mask: u32, val: u32) -> TcU32Key {
    let mut k = TcU32Key::default();
    k.off = off;
    k.mask = mask;
    k.val = val;
    k
}

fn selector(keys: Vec<TcU32Key>) -> TcU32Selector {
    let mut s = TcU32Selector::default();
    s.flags = TcU32SelectorFlags::Terminal;
    s.nkeys = keys.len() as u8;
    s.keys = keys;
    s
}

/// The u32 keys of "IPv4 without options, first fragment, TCP to `port`"
/// (offsets from the IP header; values as the header has them).
fn tcp_port_keys(port: u16) -> Vec<TcU32Key> {
    vec![
        key(0, 0x0f00_0000, 0x0500_0000),
        key(4, 0x0000_1fff, 0),
        key(8, 0x00ff_0000, 0x0006_0000),
        key(20, 0x0000_ffff, u32::from(port)),
    ]
}

/// A mirred action copying the frame to `to`'s egress, then going on.
fn mirror_to(to: u32) -> TcAction {
    let mut m = TcMirror::default();
    m.generic.action = TcActionType::Pipe;
    m.eaction = TcMirrorActionType::EgressMirror;
    m.ifindex = to;
    let mut a = TcAction::default();
    a.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(m))]),
    ];
    a
}

/// Lets TCP to `ports` at the pod's IPv4 address reach the pod's own
/// namespace (the shim's listeners there) instead of the VM.
pub fn pass_to_namespace(network: &PodNetwork, ports: &[u16]) -> Result<(), NetworkError> {
    let pod_if = network.pod_if_index() as i32;
    let ports = ports.to_vec();
    in_netns(&network.netns, move |handle| {
        Box::pin(async move {
            let tap = link_index(&handle, TAP_NAME).await?;
            handle
                .traffic_filter(pod_if)
                .add()
                .parent(INGRESS_PARENT)
                .priority(ARP_PRIORITY)
                .protocol(ETH_P_ARP.to_be())
                .u32(&[
                    TcFilterU32Option::Selector(selector(vec![key(0, 0, 0)])),
                    TcFilterU32Option::Action(vec![mirror_to(tap)]),
                ])
                .map_err(netlink("building the ARP mirror"))?
                .execute()
                .await
                .map_err(netlink("adding the ARP mirror"))?;
            for port in ports {
                handle
                    .traffic_filter(pod_if)
                    .add()
                    .parent(INGRESS_PARENT)
                    .priority(PORTS_PRIORITY)
                    .protocol(ETH_P_IP.to_be())
                    .u32(&[TcFilterU32Option::Selector(selector(tcp_port_keys(port)))])
                    .map_err(netlink("building a port's pass filter"))?
                    .execute()
                    .await
                    .map_err(netlink("adding a port's pass filter"))?;
            }
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_match_reads_a_plain_ipv4_tcp_header() {
        // A SYN to 10.0.0.5:5900 from port 40000: IHL 5, DF, TCP.
        let mut header = [0u8; 24];
        header[0] = 0x45;
        header[6] = 0x40;
        header[9] = 6;
        header[20..22].copy_from_slice(&40000u16.to_be_bytes());
        header[22..24].copy_from_slice(&5900u16.to_be_bytes());
        let matches = |h: &[u8], port| {
            tcp_port_keys(port).iter().all(|k| {
                let o = k.off as usize;
                let word = u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
                word & k.mask == k.val
            })
        };
        assert!(matches(&header, 5900));
        assert!(!matches(&header, 5901));
        let mut udp = header;
        udp[9] = 17;
        assert!(!matches(&udp, 5900));
        let mut options = header;
        options[0] = 0x46;
        assert!(!matches(&options, 5900));
        let mut fragment = header;
        fragment[7] = 0x10;
        assert!(!matches(&fragment, 5900));
    }
}
