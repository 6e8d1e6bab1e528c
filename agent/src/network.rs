//! The guest's network: its root network namespace is the pod's. The host
//! gives each NIC's MAC (as it gave it to the VMM), the name and MTU of the
//! pod interface behind it, its addresses and the routes; this applies
//! them over rtnetlink.

use futures_util::TryStreamExt;
use husk_proto::agent::{ConfigureNetworkRequest, NetworkInterface, NetworkRoute};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("netlink: {0}")]
    Netlink(String),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> NetworkError {
    NetworkError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn netlink(context: &str) -> impl Fn(rtnetlink::Error) -> NetworkError + '_ {
    move |e| NetworkError::Netlink(format!("{context}: {e}"))
}

fn format_mac_bytes(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// "10.88.0.5/16" → (address, prefix length), checked.
pub fn parse_cidr(field: &str, text: &str) -> Result<(IpAddr, u8), NetworkError> {
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| invalid(field, format!("{text:?} is not address/prefix")))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| invalid(field, format!("{addr:?} is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match len.parse::<u8>() {
        Ok(l) if l <= max => Ok((addr, l)),
        _ => Err(invalid(field, format!("prefix {len:?} is not 0..={max}"))),
    }
}

/// "aa:bb:cc:dd:ee:ff" → bytes.
pub fn parse_mac(field: &str, text: &str) -> Result<[u8; 6], NetworkError> {
    let parts: Vec<_> = text.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(invalid(field, format!("{text:?} is not a MAC address")));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)
            .map_err(|_| invalid(field, format!("{text:?} is not a MAC address")))?;
    }
    Ok(mac)
}

fn mac_of(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.as_slice()),
        _ => None,
    })
}

fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// Runs `f` with a netlink handle on a connection of its own, closed after.
async fn on_netlink<T, Fut>(f: impl FnOnce(Handle) -> Fut) -> Result<T, NetworkError>
where
    Fut: std::future::Future<Output = Result<T, NetworkError>>,
{
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| NetworkError::Netlink(e.to_string()))?;
    let task = tokio::spawn(connection);
    let result = f(handle).await;
    task.abort();
    result
}

async fn list_links(handle: &Handle) -> Result<Vec<LinkMessage>, NetworkError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing links"))
}

pub async fn configure(req: &ConfigureNetworkRequest) -> Result<(), NetworkError> {
    on_netlink(|handle| async move { apply(&handle, req).await }).await
}

/// Brings loopback up: a pod without a network (or before it has one)
/// still has localhost, as its containers expect.
pub async fn loopback_up() -> Result<(), NetworkError> {
    on_netlink(|handle| async move {
        let links = list_links(&handle).await?;
        set_loopback_up(&handle, &links).await
    })
    .await
}

async fn set_loopback_up(handle: &Handle, links: &[LinkMessage]) -> Result<(), NetworkError> {
    if let Some(lo) = links.iter().find(|l| name_of(l) == Some("lo")) {
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .map_err(netlink("bringing lo up"))?;
    }
    Ok(())
}

async fn apply(handle: &Handle, req: &ConfigureNetworkRequest) -> Result<(), NetworkError> {
    let links = list_links(handle).await?;
    set_loopback_up(handle, &links).await?;
    let mut names = Vec::new();
    for (i, nic) in req.interfaces.iter().enumerate() {
        let index = configure_interface(handle, &links, i, nic).await?;
        names.push((nic.name.clone(), index));
    }
    for (i, route) in req.routes.iter().enumerate() {
        add_route(handle, &names, i, route).await?;
    }
    Ok(())
}

async fn configure_interface(
    handle: &Handle,
    links: &[LinkMessage],
    i: usize,
    nic: &NetworkInterface,
) -> Result<u32, NetworkError> {
    let field = format!("interfaces[{i}]");
    let mac = parse_mac(&format!("{field}.mac"), &nic.mac)?;
    // A NIC booted with another MAC (a pooled VM) is found by that one and
    // takes `mac`.
    let (find_field, find) = if nic.current_mac.is_empty() {
        ("mac", mac)
    } else {
        (
            "current_mac",
            parse_mac(&format!("{field}.current_mac"), &nic.current_mac)?,
        )
    };
    if nic.name.is_empty() || nic.name.len() > 15 || nic.name.contains(['/', ' ']) {
        return Err(invalid(
            format!("{field}.name"),
            format!("{:?} is not an interface name", nic.name),
        ));
    }
    let link = links
        .iter()
        .find(|l| mac_of(l) == Some(&find[..]))
        .ok_or_else(|| {
            invalid(
                format!("{field}.{find_field}"),
                format!("no guest NIC has {}", format_mac_bytes(&find)),
            )
        })?;
    let index = link.header.index;
    let mut builder = LinkUnspec::new_with_index(index).name(nic.name.clone());
    if find != mac {
        builder = builder.address(mac.to_vec());
    }
    if nic.mtu > 0 {
        builder = builder.mtu(nic.mtu);
    }
    // Renaming needs the link down; it is down until this call brings it up.
    handle
        .link()
        .set(builder.build())
        .execute()
        .await
        .map_err(netlink("naming the NIC"))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink("bringing the NIC up"))?;
    for (j, cidr) in nic.addresses.iter().enumerate() {
        let (addr, len) = parse_cidr(&format!("{field}.addresses[{j}]"), cidr)?;
        handle
            .address()
            .add(index, addr, len)
            .execute()
            .await
            .map_err(netlink("adding an address"))?;
    }
    Ok(index)
}

async fn add_route(
    handle: &Handle,
    names: &[(String, u32)],
    i: usize,
    route: &NetworkRoute,
) -> Result<(), NetworkError> {
    let field = format!("routes[{i}]");
    let index = names
        .iter()
        .find(|(n, _)| *n == route.interface)
        .map(|(_, idx)| *idx)
        .ok_or_else(|| {
            invalid(
                format!("{field}.interface"),
                format!("no interface {:?}", route.interface),
            )
        })?;
    let gateway: Option<IpAddr> = match route.gateway.as_str() {
        "" => None,
        g => Some(g.parse().map_err(|_| {
            invalid(
                format!("{field}.gateway"),
                format!("{g:?} is not an IP address"),
            )
        })?),
    };
    let (dest, len) = match route.destination.as_str() {
        "" => match gateway {
            Some(IpAddr::V6(_)) => (IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
            _ => (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
        },
        d => parse_cidr(&format!("{field}.destination"), d)?,
    };
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dest, len)
        .map_err(|e| invalid(&field, e.to_string()))?
        .output_interface(index);
    if let Some(g) = gateway {
        builder = builder
            .gateway(g)
            .map_err(|e| invalid(&field, e.to_string()))?;
    }
    handle
        .route()
        .add(builder.build())
        .execute()
        .await
        .map_err(netlink("adding a route"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_macs_are_checked() {
        assert_eq!(
            parse_cidr("a", "10.88.0.5/16").unwrap(),
            ("10.88.0.5".parse().unwrap(), 16)
        );
        assert_eq!(parse_cidr("a", "fd00::5/64").unwrap().1, 64);
        for bad in ["10.88.0.5", "10.88.0.5/33", "x/8", "fd00::1/129"] {
            let e = parse_cidr("interfaces[0].addresses[1]", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("interfaces[0].addresses[1]"), "{e}");
        }
        assert_eq!(
            parse_mac("m", "02:42:ac:11:00:02").unwrap(),
            [2, 0x42, 0xac, 0x11, 0, 2]
        );
        assert!(parse_mac("m", "02:42:ac:11:00").is_err());
        assert!(parse_mac("m", "zz:42:ac:11:00:02").is_err());
    }
}
