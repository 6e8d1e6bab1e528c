//! The pod's network, host side. CNI (for runc as for husk) sets up the
//! pod's network namespace with an interface, addresses and routes; husk
//! connects that namespace to the VM the way Kata does with "tcfilter":
//!
//! - a TAP device is made inside the pod's namespace and handed to the VMM
//!   as a virtio-net device carrying the pod interface's MAC;
//! - an ingress qdisc on each of the two, with a u32 match-all filter whose
//!   mirred action redirects every frame to the other: what reaches the pod
//!   interface goes to the VM and back, untouched, so the CNI plugin's view
//!   of the pod (veth, bridge, IPAM, iptables on the host) does not change;
//! - the interface's addresses and routes are read here and given to the
//!   agent, which sets them on the guest NIC.
//!
//! Only the namespace's first interface besides loopback is connected.

use futures_util::TryStreamExt;
use husk_proto::agent::{ConfigureNetworkRequest, NetworkInterface, NetworkRoute};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The TAP's name in the pod's namespace.
pub const TAP_NAME: &str = "husktap0";
/// tc's "parent ffff:", the ingress qdisc.
const INGRESS_PARENT: u32 = 0xffff_0000;
/// ETH_P_ALL in network byte order, as tc wants the protocol.
const ALL_PROTOCOLS: u16 = 0x0003u16.to_be();

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("pod network namespace {path}: {source}")]
    Namespace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pod network namespace {0}: is the host's own network namespace; husk connects only a pod's")]
    HostNamespace(PathBuf),
    #[error("pod network namespace {0}: the thread working in it panicked")]
    ThreadPanicked(PathBuf),
    #[error("netlink ({context}): {source}")]
    Netlink {
        context: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("netlink (connecting): {0}")]
    NetlinkConnect(#[source] std::io::Error),
    #[error("creating the TAP device: {0}")]
    Tap(#[from] husk_hypervisor::tap::TapError),
    #[error("the TAP {0} vanished after it was created")]
    TapVanished(&'static str),
}

pub(super) fn netlink(context: &'static str) -> impl Fn(rtnetlink::Error) -> NetworkError {
    move |source| NetworkError::Netlink { context, source }
}

/// A pod namespace connected to a TAP; dropping it does not undo that,
/// `detach` does.
pub struct PodNetwork {
    pub netns: PathBuf,
    /// Kept open for the VM's life; the TAP goes when the last fd closes.
    pub tap: OwnedFd,
    pub mac: String,
    /// What the agent sets on the guest NIC.
    pub guest: ConfigureNetworkRequest,
    pod_if_index: u32,
}

/// Runs `f` on a thread of its own inside the network namespace `netns`
/// (setns changes only the calling thread, so the shim's own threads stay
/// where they are). Sockets `f` makes belong to that namespace for good.
pub fn on_thread_in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, NetworkError> {
    let ns_err = |source: std::io::Error| NetworkError::Namespace {
        path: netns.to_owned(),
        source,
    };
    let file = std::fs::File::open(netns).map_err(ns_err)?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| NetworkError::ThreadPanicked(netns.to_owned()))?
    .map_err(ns_err)
}

/// What a netlink job returns: a future the job's own runtime drives.
type NetlinkFuture<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, NetworkError>>>>;

/// A netlink job run by `in_netns` / `in_own_netns`.
type NetlinkWork<T> = Box<dyn FnOnce(Handle) -> NetlinkFuture<T> + Send>;

/// Runs `f` with a netlink handle in the shim's own network namespace, on
/// a thread and runtime of its own as `in_netns` does.
fn in_own_netns<T: Send + 'static>(
    f: impl FnOnce(Handle) -> NetlinkFuture<T> + Send + 'static,
) -> Result<T, NetworkError> {
    let work: NetlinkWork<T> = Box::new(f);
    std::thread::spawn(move || with_netlink(work))
        .join()
        .map_err(|_| NetworkError::ThreadPanicked(PathBuf::from("/proc/self/ns/net")))?
}

fn with_netlink<T>(f: NetlinkWork<T>) -> Result<T, NetworkError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NetworkError::NetlinkConnect)?;
    runtime.block_on(async move {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(NetworkError::NetlinkConnect)?;
        let task = tokio::spawn(connection);
        let result = f(handle).await;
        task.abort();
        result
    })
}

/// Runs `f` with a netlink handle inside the network namespace `netns`.
pub(super) fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce(Handle) -> NetlinkFuture<T> + Send + 'static,
) -> Result<T, NetworkError> {
    let work: NetlinkWork<T> = Box::new(f);
    on_thread_in_netns(netns, move || Ok(with_netlink(work)))?
}

fn attr<T>(link: &LinkMessage, f: impl Fn(&LinkAttribute) -> Option<T>) -> Option<T> {
    link.attributes.iter().find_map(f)
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Connects the first non-loopback interface of `netns` to a new TAP;
/// None when the namespace has no such interface (nothing to connect).
pub fn attach(netns: &Path) -> Result<Option<PodNetwork>, NetworkError> {
    refuse_host_namespace(netns)?;
    let path = netns.to_owned();
    in_netns(netns, move |handle| {
        Box::pin(async move { attach_in_ns(handle, path, None).await })
    })
}

/// Like `attach`, with the TAP a VM booted ahead of its pod already has
/// (`tap`, named `name` in the shim's own namespace): it is moved into the
/// pod's namespace, renamed and connected there. The VM keeps its fd.
pub fn adopt(netns: &Path, tap: OwnedFd, name: &str) -> Result<Option<PodNetwork>, NetworkError> {
    use std::os::fd::AsRawFd;
    refuse_host_namespace(netns)?;
    let ns = std::fs::File::open(netns).map_err(|source| NetworkError::Namespace {
        path: netns.to_owned(),
        source,
    })?;
    let host_name = name.to_owned();
    in_own_netns(move |handle| {
        Box::pin(async move {
            let index = link_index(&handle, &host_name).await?;
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .setns_by_fd(ns.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(netlink("moving the TAP into the pod's namespace"))
        })
    })?;
    let (path, name) = (netns.to_owned(), name.to_owned());
    in_netns(netns, move |handle| {
        Box::pin(async move { attach_in_ns(handle, path, Some((tap, name))).await })
    })
}

/// Redirecting the host's own interface into a VM would take the host
/// off its network: only another namespace is connected.
fn refuse_host_namespace(netns: &Path) -> Result<(), NetworkError> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let ns_id = id(netns).map_err(|source| NetworkError::Namespace {
        path: netns.to_owned(),
        source,
    })?;
    if id(Path::new("/proc/self/ns/net")).is_ok_and(|own| own == ns_id) {
        return Err(NetworkError::HostNamespace(netns.to_owned()));
    }
    Ok(())
}

pub(super) async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetworkError> {
    handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .map_err(netlink("finding the TAP"))?
        .map(|l| l.header.index)
        .ok_or(NetworkError::TapVanished(TAP_NAME))
}

/// Connects the namespace's pod interface to a TAP: a new one, or
/// `moved` (its fd and name), already moved in.
async fn attach_in_ns(
    handle: Handle,
    netns: PathBuf,
    moved: Option<(OwnedFd, String)>,
) -> Result<Option<PodNetwork>, NetworkError> {
    let Some(pod_if) = pod_interface(&handle).await? else {
        return Ok(None);
    };
    let addresses = addresses_of(&handle, pod_if.index).await?;
    let mut routes = routes_of::<Ipv4Addr>(&handle, pod_if.index, &pod_if.name).await?;
    routes.extend(routes_of::<Ipv6Addr>(&handle, pod_if.index, &pod_if.name).await?);
    let (tap, tap_index) = tap_in_ns(&handle, moved).await?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(tap_index)
                .mtu(pod_if.mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(netlink("bringing the TAP up"))?;
    redirect_both_ways(&handle, pod_if.index, tap_index).await?;
    Ok(Some(PodNetwork {
        netns,
        tap,
        mac: pod_if.mac.clone(),
        guest: ConfigureNetworkRequest {
            interfaces: vec![NetworkInterface {
                mac: pod_if.mac,
                name: pod_if.name,
                mtu: pod_if.mtu,
                addresses,
                // The caller's, when the guest NIC has another (a pooled VM).
                current_mac: String::new(),
            }],
            routes,
        },
        pod_if_index: pod_if.index,
    }))
}

/// The pod interface CNI made: the namespace's one link that is neither
/// loopback nor husk's TAP.
struct PodInterface {
    index: u32,
    name: String,
    mtu: u32,
    mac: String,
}

async fn pod_interface(handle: &Handle) -> Result<Option<PodInterface>, NetworkError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing links"))?;
    let Some(pod_if) = links.iter().find(|l| {
        attr(l, |a| match a {
            LinkAttribute::IfName(n) => Some(n != "lo" && n != TAP_NAME),
            _ => None,
        }) == Some(true)
    }) else {
        return Ok(None);
    };
    Ok(Some(PodInterface {
        index: pod_if.header.index,
        name: attr(pod_if, |a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default(),
        mtu: attr(pod_if, |a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500),
        mac: attr(pod_if, |a| match a {
            LinkAttribute::Address(m) => Some(format_mac(m)),
            _ => None,
        })
        .unwrap_or_default(),
    }))
}

/// The VM's TAP in the namespace, named `TAP_NAME`: made here, or the
/// `moved` one (a pooled VM's) renamed. Returns it and its link index.
async fn tap_in_ns(
    handle: &Handle,
    moved: Option<(OwnedFd, String)>,
) -> Result<(OwnedFd, u32), NetworkError> {
    match moved {
        None => {
            let tap = open_tap(TAP_NAME)?;
            Ok((tap, link_index(handle, TAP_NAME).await?))
        }
        Some((tap, name)) => {
            let index = link_index(handle, &name).await?;
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .name(TAP_NAME.to_owned())
                        .build(),
                )
                .execute()
                .await
                .map_err(netlink("renaming the TAP"))?;
            Ok((tap, index))
        }
    }
}

/// An ingress qdisc on each of the two links, with a match-all filter
/// whose mirred action redirects every frame to the other.
async fn redirect_both_ways(handle: &Handle, a: u32, b: u32) -> Result<(), NetworkError> {
    for (from, to) in [(a, b), (b, a)] {
        handle
            .qdisc()
            .add(from as i32)
            .ingress()
            .execute()
            .await
            .map_err(netlink("adding an ingress qdisc"))?;
        handle
            .traffic_filter(from as i32)
            .add()
            .parent(INGRESS_PARENT)
            .protocol(ALL_PROTOCOLS)
            .redirect(to)
            .map_err(netlink("building the redirect"))?
            .execute()
            .await
            .map_err(netlink("adding the redirect"))?;
    }
    Ok(())
}

async fn addresses_of(handle: &Handle, index: u32) -> Result<Vec<String>, NetworkError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing addresses"))?;
    Ok(messages
        .iter()
        .filter_map(|m| {
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(a) => Some(*a),
                _ => None,
            })?;
            // The guest makes its own link-local address.
            let link_local = matches!(addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            (!link_local).then(|| format!("{addr}/{}", m.header.prefix_len))
        })
        .collect())
}

/// The interface's routes that the guest will not make by itself: not
/// the kernel's own (connected subnets), not link-local or multicast.
async fn routes_of<T>(
    handle: &Handle,
    index: u32,
    name: &str,
) -> Result<Vec<NetworkRoute>, NetworkError>
where
    RouteMessageBuilder<T>: Default,
{
    let query = RouteMessageBuilder::<T>::default().build();
    let messages: Vec<_> = handle
        .route()
        .get(query)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing routes"))?;
    let addr = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    Ok(messages
        .iter()
        .filter(|m| m.header.protocol != RouteProtocol::Kernel)
        .filter(|m| {
            m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index))
        })
        .filter_map(|m| {
            let dest = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(d) => addr(d),
                _ => None,
            });
            let gateway = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(g) => addr(g),
                _ => None,
            });
            if let Some(IpAddr::V6(v6)) = dest {
                if v6.segments()[0] & 0xffc0 == 0xfe80 || v6.segments()[0] & 0xff00 == 0xff00 {
                    return None;
                }
            }
            Some(NetworkRoute {
                destination: dest
                    .map(|d| format!("{d}/{}", m.header.destination_prefix_length))
                    .unwrap_or_default(),
                gateway: gateway.map(|g| g.to_string()).unwrap_or_default(),
                interface: name.to_owned(),
            })
        })
        .collect())
}

/// The pod's TAP, as both VMMs take it (vnet header on, offloads off
/// until the guest driver asks). Not persistent, so it goes away with the
/// last open fd.
fn open_tap(name: &str) -> Result<OwnedFd, NetworkError> {
    Ok(husk_hypervisor::tap::open_tap(name)?.into())
}

impl PodNetwork {
    /// The pod interface's index in the pod's namespace.
    pub fn pod_if_index(&self) -> u32 {
        self.pod_if_index
    }

    /// Undoes `attach` in the pod's namespace: the pod interface's ingress
    /// qdisc (and with it the redirect) goes, and the TAP with our fd.
    pub fn detach(self) {
        let PodNetwork {
            netns,
            tap,
            pod_if_index,
            ..
        } = self;
        drop(tap);
        let result = in_netns(&netns, move |handle| {
            Box::pin(async move {
                let mut del = handle.qdisc().del(pod_if_index as i32);
                del.message_mut().header.parent = rtnetlink::packet_route::tc::TcHandle::INGRESS;
                del.execute()
                    .await
                    .map_err(netlink("removing the ingress qdisc"))
            })
        });
        if let Err(e) = result {
            // The namespace may be gone already (CNI teardown ran first).
            tracing::debug!(netns = %netns.display(), "network detach: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_as_ip_link_prints_them() {
        assert_eq!(
            format_mac(&[2, 0x42, 0xac, 0x11, 0, 2]),
            "02:42:ac:11:00:02"
        );
    }

    #[test]
    fn the_hosts_own_namespace_is_refused() {
        let e = attach(Path::new("/proc/self/ns/net"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("host's own network namespace"), "{e}");
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let e = attach(Path::new("/nonexistent/netns/x"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/netns/x"), "{e}");
    }
}
