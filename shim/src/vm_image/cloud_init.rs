//! What a husk-vm guest's cloud-init reads from its NoCloud seed, made from
//! the pod (cloud-init's docs, "NoCloud" and "Networking config Version
//! 2"): `meta-data` with `instance-id` = the pod's UID, `local-hostname` =
//! the pod's hostname and `public-keys` from `/ssh-keys/authorized_keys`;
//! `user-data` from `/cloud-init/user-data`; `network-config` (v2, the NIC
//! matched by MAC) from the pod's CNI address, routes and MTU and its DNS
//! settings, unless the user gave `/cloud-init/network-config`.
//!
//! meta-data and network-config are written as JSON, which YAML reads as
//! it is: nothing a user gives can add a key. The user's files come from
//! their volumes (the spec's mount sources on the host), read only inside
//! that volume — a symbolic link out of it is refused, since the shim runs
//! as root and the VM is the user's — and bounded in size.

use husk_proto::agent::ConfigureNetworkRequest;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::Path;

/// Where the pod's volumes for cloud-init are mounted (docs/vm-pods.md).
pub const CLOUD_INIT_MOUNT: &str = "/cloud-init";
pub const SSH_KEYS_MOUNT: &str = "/ssh-keys";
/// Largest user file taken (a ConfigMap holds at most 1 MiB).
pub const MAX_USER_FILE: u64 = 1 << 20;
/// resolv.conf and hostname files are small; more is not read.
const MAX_SMALL_FILE: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    /// Reading a pod's file (husk-vm reads cloud-init files only inside
    /// their volume, regular files only).
    #[error("reading a cloud-init file: {0}")]
    File(#[from] crate::host::files::FileError),
}

/// The seed's files: (name, content).
pub type SeedFiles = Vec<(&'static str, Vec<u8>)>;

/// What the seed is made from.
#[derive(Debug, Default, Clone)]
pub struct PodFacts {
    pub instance_id: String,
    pub hostname: String,
    pub ssh_keys: Vec<String>,
    pub user_data: Option<Vec<u8>>,
    pub user_meta_data: Option<Vec<u8>>,
    pub user_network_config: Option<Vec<u8>>,
    /// The pod network as CNI made it (None: no NIC).
    pub network: Option<ConfigureNetworkRequest>,
    pub dns: Dns,
    /// The VM has a tools disk: the seed's vendor-data starts its helper.
    pub tools: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<IpAddr>,
    pub search: Vec<String>,
}

/// The seed's vendor-data with a tools disk: cloud-init mounts it and
/// starts the helper (as a transient systemd unit where there is systemd)
/// at every boot; a user's own user-data still applies on top. The unit
/// is queued (`--no-block`), not waited for: it starts after
/// basic.target, which waits for cloud-init, which would wait for it.
pub const VENDOR_DATA: &str = "#cloud-config
bootcmd:
- [sh, -c, 'd=/run/husk-tools; mkdir -p $d; mountpoint -q $d || mount -o ro,nodev,nosuid /dev/disk/by-id/virtio-husk-tools $d || exit 0; if command -v systemd-run >/dev/null; then systemd-run --no-block --unit=husk-vm-tools --collect $d/husk-vm-tools; else setsid $d/husk-vm-tools </dev/null >/dev/null 2>&1 & fi']
";

/// The seed's files for `facts`.
pub fn seed_files(facts: &PodFacts) -> SeedFiles {
    let meta = match &facts.user_meta_data {
        Some(m) => m.clone(),
        None => pretty(&meta_data(facts)),
    };
    let mut files = vec![
        ("meta-data", meta),
        (
            "user-data",
            facts
                .user_data
                .clone()
                .unwrap_or_else(|| b"#cloud-config\n{}\n".to_vec()),
        ),
    ];
    if let Some(n) = &facts.user_network_config {
        files.push(("network-config", n.clone()));
    } else if let Some(n) = facts
        .network
        .as_ref()
        .and_then(|n| network_config(n, &facts.dns))
    {
        files.push(("network-config", pretty(&n)));
    }
    if facts.tools {
        files.push(("vendor-data", VENDOR_DATA.as_bytes().to_vec()));
    }
    files
}

/// `v` as pretty JSON that YAML 1.1 (cloud-init reads the seed with
/// PyYAML) reads as it is: characters it refuses in a stream (DEL, the
/// C1 controls, U+FFFE, U+FFFF) or folds or drops in a string (NEL,
/// U+2028, U+2029, a BOM) are written as `\uXXXX`, which both read
/// back as the same character. They can only be inside strings: the
/// rest of the text is ASCII.
fn pretty(v: &Value) -> Vec<u8> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if matches!(
            c,
            '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
        ) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push('\n');
    out.into_bytes()
}

fn meta_data(facts: &PodFacts) -> Value {
    let mut m = json!({
        "instance-id": facts.instance_id,
        "local-hostname": facts.hostname,
    });
    if !facts.ssh_keys.is_empty() {
        m["public-keys"] = json!(facts.ssh_keys);
    }
    m
}

/// network-config v2 for the pod's first interface, matched by its MAC
/// and given the pod interface's name. Routes whose gateway is outside
/// every on-link subnet (a /32 pod address, as Calico gives) get a
/// link-scope route to the gateway first: cloud-init 22.4's networkd
/// renderer drops v2's `on-link`, and `via: 0.0.0.0` renders as a
/// link-scope route (docs/vm-pods.md).
pub fn network_config(net: &ConfigureNetworkRequest, dns: &Dns) -> Option<Value> {
    let nic = net.interfaces.first()?;
    let subnets: Vec<(IpAddr, u8)> = nic.addresses.iter().filter_map(|a| parse_cidr(a)).collect();
    let mut routes = Vec::new();
    let mut gateways_routed: Vec<IpAddr> = Vec::new();
    for r in &net.routes {
        let Ok(gw) = r.gateway.parse::<IpAddr>() else {
            // An on-link route (no gateway).
            if let Some((dest, len)) = parse_cidr(&r.destination) {
                routes.push(json!({"to": format!("{dest}/{len}"), "via": unspecified(dest)}));
            }
            continue;
        };
        let to = if r.destination.is_empty() {
            match gw {
                IpAddr::V4(_) => "0.0.0.0/0".to_owned(),
                IpAddr::V6(_) => "::/0".to_owned(),
            }
        } else {
            match parse_cidr(&r.destination) {
                Some((d, l)) => format!("{d}/{l}"),
                None => continue,
            }
        };
        let on_link = subnets.iter().any(|&(a, l)| same_subnet(a, gw, l));
        if !on_link && !gateways_routed.contains(&gw) {
            let host = if gw.is_ipv4() { 32 } else { 128 };
            routes.push(json!({"to": format!("{gw}/{host}"), "via": unspecified(gw)}));
            gateways_routed.push(gw);
        }
        routes.push(json!({"to": to, "via": gw.to_string()}));
    }
    let mut eth = json!({
        "match": {"macaddress": nic.mac.to_ascii_lowercase()},
        "set-name": nic.name,
        "mtu": nic.mtu,
        "addresses": subnets.iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>(),
        "routes": routes,
    });
    if !dns.servers.is_empty() || !dns.search.is_empty() {
        eth["nameservers"] = json!({
            "addresses": dns.servers.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
            "search": dns.search,
        });
    }
    let mut ethernets = serde_json::Map::new();
    ethernets.insert(nic.name.clone(), eth);
    Some(json!({"version": 2, "ethernets": ethernets}))
}

fn unspecified(like: IpAddr) -> &'static str {
    if like.is_ipv4() {
        "0.0.0.0"
    } else {
        "::"
    }
}

fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (a, l) = text.split_once('/')?;
    let addr: IpAddr = a.parse().ok()?;
    let len: u8 = l.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

fn same_subnet(a: IpAddr, b: IpAddr, len: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// The DNS settings of a resolv.conf (kubelet's for the pod): nameservers
/// that are addresses, search domains that are domain names. `options`
/// (ndots) have no place in network-config and are dropped.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(a) = words.next().and_then(|w| w.parse().ok()) {
                    dns.servers.push(a);
                }
            }
            Some("search") => {
                dns.search = words
                    .filter(|w| is_domain(w, true))
                    .map(str::to_owned)
                    .collect();
            }
            _ => {}
        }
    }
    dns
}

/// A domain name of RFC 1123 host-name labels (1 to 63 letters, digits
/// and hyphens, no hyphen first or last), at most 253 bytes; a final dot
/// (a resolv.conf's fully qualified name) is allowed where `final_dot`.
fn is_domain(s: &str, final_dot: bool) -> bool {
    let s = match s.strip_suffix('.') {
        Some(s) if final_dot => s,
        _ => s,
    };
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A hostname as `/etc/hostname` holds it: its first line, if it is a
/// valid host name.
pub fn parse_hostname(text: &str) -> Option<String> {
    let name = text.lines().next()?.trim();
    is_domain(name, false).then(|| name.to_owned())
}

/// The keys of an authorized_keys file: its non-empty, non-comment lines.
pub fn parse_authorized_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Reads `name` inside the volume directory `volume` (a mount's source
/// on the host), following symbolic links only where they stay inside it
/// (kubelet's ConfigMap and Secret volumes are links into `..data/`), a
/// regular file of at most `max` bytes. None when the file does not
/// exist. Blocking: off the async threads.
pub fn read_in_volume(
    volume: &Path,
    name: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, CloudInitError> {
    Ok(crate::host::files::read_beneath(volume, name, max)?)
}

/// A small host file kubelet or containerd made for the pod (resolv.conf,
/// hostname), as text; the same rules as [`read_in_volume`], in its own
/// directory.
pub fn read_small(path: &Path) -> Result<String, CloudInitError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(String::new());
    };
    let data = crate::host::files::read_beneath(dir, name, MAX_SMALL_FILE)?.unwrap_or_default();
    Ok(String::from_utf8_lossy(&data).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_proto::agent::{NetworkInterface, NetworkRoute};

    fn pod_net(addr: &str, gw: &str) -> ConfigureNetworkRequest {
        ConfigureNetworkRequest {
            interfaces: vec![NetworkInterface {
                mac: "0A:58:0A:FA:03:05".into(),
                name: "eth0".into(),
                mtu: 1450,
                addresses: vec![addr.into()],
                current_mac: String::new(),
            }],
            routes: vec![NetworkRoute {
                destination: String::new(),
                gateway: gw.into(),
                interface: "eth0".into(),
            }],
        }
    }

    #[test]
    fn vendor_data_starts_the_tools_helper_only_with_a_tools_disk() {
        let names = |tools| {
            let facts = PodFacts {
                tools,
                ..Default::default()
            };
            seed_files(&facts)
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        };
        assert!(!names(false).contains(&"vendor-data"));
        assert!(names(true).contains(&"vendor-data"));
        let v = VENDOR_DATA;
        assert!(v.starts_with("#cloud-config\nbootcmd:"));
        let disk = format!("/dev/disk/by-id/virtio-{}", husk_proto::tools::DISK_SERIAL);
        assert!(v.contains(&disk) && v.contains(husk_proto::tools::HELPER));
    }

    #[test]
    fn network_config_matches_the_nic_and_carries_address_routes_mtu_dns() {
        let dns = parse_resolv_conf(
            "search husk-test.svc.cluster.local svc.cluster.local bad_domain!\n\
             nameserver 10.96.0.10\nnameserver not-an-ip\noptions ndots:5\n",
        );
        let n = network_config(&pod_net("10.250.3.5/24", "10.250.3.1"), &dns).unwrap();
        assert_eq!(
            n,
            json!({"version": 2, "ethernets": {"eth0": {
                "match": {"macaddress": "0a:58:0a:fa:03:05"},
                "set-name": "eth0",
                "mtu": 1450,
                "addresses": ["10.250.3.5/24"],
                "routes": [{"to": "0.0.0.0/0", "via": "10.250.3.1"}],
                "nameservers": {
                    "addresses": ["10.96.0.10"],
                    "search": ["husk-test.svc.cluster.local", "svc.cluster.local"]
                }
            }}})
        );
    }

    #[test]
    fn a_gateway_off_the_subnet_gets_a_link_route_first() {
        let n = network_config(&pod_net("10.1.2.3/32", "169.254.1.1"), &Dns::default()).unwrap();
        assert_eq!(
            n["ethernets"]["eth0"]["routes"],
            json!([
                {"to": "169.254.1.1/32", "via": "0.0.0.0"},
                {"to": "0.0.0.0/0", "via": "169.254.1.1"}
            ])
        );
        assert!(n["ethernets"]["eth0"].get("nameservers").is_none());
    }

    #[test]
    fn meta_data_names_the_pod_and_its_keys_and_user_files_win() {
        let facts = PodFacts {
            instance_id: "uid-1".into(),
            hostname: "vm-1".into(),
            ssh_keys: parse_authorized_keys("# c\n\nssh-ed25519 AAAA k1\n  ssh-rsa BBBB k2 \n"),
            network: Some(pod_net("10.250.3.5/24", "10.250.3.1")),
            ..Default::default()
        };
        let files = seed_files(&facts);
        let names: Vec<_> = files.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["meta-data", "user-data", "network-config"]);
        let meta: Value = serde_json::from_slice(&files[0].1).unwrap();
        assert_eq!(
            meta,
            json!({"instance-id": "uid-1", "local-hostname": "vm-1",
                   "public-keys": ["ssh-ed25519 AAAA k1", "ssh-rsa BBBB k2"]})
        );
        assert!(files[1].1.starts_with(b"#cloud-config"));

        let mine = PodFacts {
            user_data: Some(b"#!/bin/sh\necho hi\n".to_vec()),
            user_network_config: Some(b"version: 2\n".to_vec()),
            ..facts
        };
        let files = seed_files(&mine);
        assert_eq!(files[1].1, b"#!/bin/sh\necho hi\n");
        assert_eq!(files[2].1, b"version: 2\n");
    }

    #[test]
    fn quotes_in_user_values_cannot_add_keys() {
        let facts = PodFacts {
            instance_id: "x\"\ninstance-id: evil".into(),
            hostname: "h".into(),
            ..Default::default()
        };
        let meta: Value = serde_json::from_slice(&seed_files(&facts)[0].1).unwrap();
        assert_eq!(meta["instance-id"], "x\"\ninstance-id: evil");
        assert_eq!(meta.as_object().unwrap().len(), 2);
    }

    #[test]
    fn hostnames_are_checked() {
        assert_eq!(parse_hostname("vm-1\n"), Some("vm-1".into()));
        assert_eq!(parse_hostname("bad host\n"), None);
        assert_eq!(parse_hostname("-x"), None);
        // RFC 1123 labels: none empty, none over 63 bytes, no hyphen last.
        for bad in ["a..b", "a.", "x-", "a.-b", &"x".repeat(64)] {
            assert_eq!(parse_hostname(bad), None, "{bad}");
        }
        let dns = parse_resolv_conf("search a..b x-.io ok.io. svc.cluster.local\n");
        assert_eq!(dns.search, ["ok.io.", "svc.cluster.local"]);
    }

    /// What YAML 1.1 would refuse (DEL, C1 controls) or fold (U+2028)
    /// in a string is written escaped, and reads back the same.
    #[test]
    fn seed_json_is_yaml_as_it_is() {
        let key = "ssh-ed25519 AAAA a\u{7f}b\u{85}c\u{2028}d\u{feff}e\u{ffff}f é";
        let facts = PodFacts {
            instance_id: "id".into(),
            hostname: "h".into(),
            ssh_keys: vec![key.into()],
            ..Default::default()
        };
        let meta = &seed_files(&facts)[0].1;
        let text = std::str::from_utf8(meta).unwrap();
        assert!(text.chars().all(|c| c == 'é' || c.is_ascii()), "{text}");
        assert!(
            text.contains("a\\u007fb\\u0085c\\u2028d\\ufeffe\\uffff"),
            "{text}"
        );
        let meta: Value = serde_json::from_slice(meta).unwrap();
        assert_eq!(meta["public-keys"][0], key);
    }

    #[test]
    fn volume_files_are_read_inside_their_volume_only() {
        let vol = tempfile::tempdir().unwrap();
        let data = vol.path().join("..data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("user-data"), "#cloud-config\n").unwrap();
        // kubelet's layout: a link into ..data.
        std::os::unix::fs::symlink("..data/user-data", vol.path().join("user-data")).unwrap();
        assert_eq!(
            read_in_volume(vol.path(), "user-data", MAX_USER_FILE).unwrap(),
            Some(b"#cloud-config\n".to_vec())
        );
        assert_eq!(
            read_in_volume(vol.path(), "meta-data", MAX_USER_FILE).unwrap(),
            None
        );
        std::os::unix::fs::symlink("/etc/hostname", vol.path().join("authorized_keys")).unwrap();
        let e = read_in_volume(vol.path(), "authorized_keys", MAX_USER_FILE)
            .unwrap_err()
            .to_string();
        assert!(e.contains("leads out of"), "{e}");
        std::fs::write(vol.path().join("big"), vec![b'x'; 100]).unwrap();
        let e = read_in_volume(vol.path(), "big", 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than 10 bytes"), "{e}");
    }
}
