//! What a VM-image pod's NoCloud seed is made from (shim/src/vm_image/
//! cloud_init.rs): kubelet's resolv.conf and hostname files
//! (`parse_resolv_conf`, `parse_hostname`), the user's authorized_keys
//! (`parse_authorized_keys`), the user's own meta-data, network-config
//! and user-data, and the pod network as CNI made it, all through
//! `seed_files`. The user's files and the DNS settings of the pod spec
//! are the user's to write. Nothing may panic; besides:
//!
//! - a hostname taken is a valid one (RFC 1123: dot-separated labels of
//!   1 to 63 letters, digits and hyphens, no hyphen first or last, at
//!   most 253 bytes) and is the file's first line; search domains are
//!   valid domain names (a final dot allowed); each nameserver is an
//!   address the file names; keys are the file's non-empty, non-comment
//!   lines;
//! - the user's own files are seeded byte for byte;
//! - meta-data and network-config written by husk are JSON that YAML
//!   1.1 (cloud-init reads them with PyYAML) reads as it is: no
//!   character it refuses or folds, exactly the keys husk writes, with
//!   the values it was given (nothing a string holds adds a key).
//!
//! Input: byte 0: bit 0 the user gives meta-data, bit 1 network-config,
//! bit 2 user-data, bit 3 the pod has a network; then NUL-separated:
//! resolv.conf, the hostname file, authorized_keys, the instance id, the
//! user's meta-data, network-config, user-data, and the network as lines
//! `nic MAC NAME MTU`, `addr CIDR`, `route DEST GATEWAY` (`-`: empty).

#![no_main]

use husk_proto::agent::{ConfigureNetworkRequest, NetworkInterface, NetworkRoute};
use husk_shim::vm_image::cloud_init::{
    parse_authorized_keys, parse_hostname, parse_resolv_conf, seed_files, PodFacts,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::net::IpAddr;

/// RFC 1123 (2.1) host names, as systemd's hostname_is_valid takes
/// them.
fn valid_name(s: &str) -> bool {
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

/// What YAML 1.1 reads as it is in a double-quoted scalar (PyYAML's
/// Reader and Scanner, libyaml's yaml_parser_update_buffer): printable
/// ASCII and the rest of Unicode, but not DEL or the C1 controls (refused
/// in a stream), NEL, LS and PS (line breaks, folded into a space), a
/// BOM, U+FFFE or U+FFFF. (LF: the pretty printer's, outside strings.)
fn yaml_literal(c: char) -> bool {
    matches!(c, '\n' | ' '..='~' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
        && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// husk's JSON for cloud-init: YAML-readable text, one object.
fn json_for_yaml(bytes: &[u8]) -> serde_json::Map<String, Value> {
    let text = std::str::from_utf8(bytes).expect("UTF-8");
    if let Some(c) = text.chars().find(|c| !yaml_literal(*c)) {
        panic!("{c:?} is refused or changed by YAML: {text}");
    }
    match serde_json::from_str(text).expect("JSON") {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn keys(m: &serde_json::Map<String, Value>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

fn network(text: &str) -> ConfigureNetworkRequest {
    let mut net = ConfigureNetworkRequest::default();
    let word = |w: Option<&str>| w.filter(|w| *w != "-").unwrap_or("").to_owned();
    for line in text.lines() {
        let mut w = line.split(' ');
        match w.next() {
            Some("nic") => net.interfaces.push(NetworkInterface {
                mac: word(w.next()),
                name: word(w.next()),
                mtu: w.next().and_then(|m| m.parse().ok()).unwrap_or(1500),
                addresses: Vec::new(),
                current_mac: String::new(),
            }),
            Some("addr") => {
                if let Some(nic) = net.interfaces.last_mut() {
                    nic.addresses.push(word(w.next()));
                }
            }
            Some("route") => net.routes.push(NetworkRoute {
                destination: word(w.next()),
                gateway: word(w.next()),
                interface: String::new(),
            }),
            _ => {}
        }
    }
    net
}

fn check_resolv_conf(text: &str) -> husk_shim::vm_image::cloud_init::Dns {
    let dns = parse_resolv_conf(text);
    for d in &dns.search {
        // A resolv.conf's fully qualified name keeps its final dot.
        assert!(
            valid_name(d.strip_suffix('.').unwrap_or(d)),
            "search domain {d:?}"
        );
    }
    let named: Vec<IpAddr> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()?.parse().ok())?
        })
        .collect();
    assert_eq!(dns.servers, named);
    dns
}

fn check_meta_data(bytes: &[u8], facts: &PodFacts) {
    let m = json_for_yaml(bytes);
    let mut want = vec!["instance-id", "local-hostname"];
    if !facts.ssh_keys.is_empty() {
        want.push("public-keys");
    }
    let mut got = keys(&m);
    got.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(m["instance-id"], facts.instance_id.as_str());
    assert_eq!(m["local-hostname"], facts.hostname.as_str());
    if let Some(k) = m.get("public-keys") {
        assert_eq!(k, &Value::from(facts.ssh_keys.clone()));
    }
}

fn check_network_config(bytes: &[u8], net: &ConfigureNetworkRequest, facts: &PodFacts) {
    let m = json_for_yaml(bytes);
    let mut got = keys(&m);
    got.sort_unstable();
    assert_eq!(got, ["ethernets", "version"]);
    assert_eq!(m["version"], 2);
    let nic = &net.interfaces[0];
    let ethernets = m["ethernets"].as_object().expect("ethernets");
    assert_eq!(keys(ethernets), [nic.name.as_str()]);
    let eth = ethernets[&nic.name].as_object().expect("the NIC");
    for k in keys(eth) {
        assert!(
            [
                "match",
                "set-name",
                "mtu",
                "addresses",
                "routes",
                "nameservers"
            ]
            .contains(&k),
            "{k}"
        );
    }
    assert_eq!(
        eth["match"],
        serde_json::json!({"macaddress": nic.mac.to_ascii_lowercase()})
    );
    assert_eq!(eth["set-name"], nic.name.as_str());
    assert_eq!(eth["mtu"], nic.mtu);
    let cidr = |v: &Value| {
        let (a, l) = v.as_str().unwrap().split_once('/').unwrap();
        let a: IpAddr = a.parse().unwrap();
        assert!(l.parse::<u8>().unwrap() <= if a.is_ipv4() { 32 } else { 128 });
    };
    eth["addresses"].as_array().unwrap().iter().for_each(cidr);
    for r in eth["routes"].as_array().unwrap() {
        let r = r.as_object().unwrap();
        assert_eq!(keys(r), ["to", "via"]);
        cidr(&r["to"]);
        r["via"].as_str().unwrap().parse::<IpAddr>().unwrap();
    }
    if let Some(ns) = eth.get("nameservers") {
        let servers: Vec<String> = facts.dns.servers.iter().map(IpAddr::to_string).collect();
        assert_eq!(
            ns,
            &serde_json::json!({"addresses": servers, "search": facts.dns.search})
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0);
    let mut text = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (resolv, hostname_file, authorized_keys, instance_id) = (text(), text(), text(), text());
    let (user_meta, user_net, user_data, net_text) = (text(), text(), text(), text());

    let dns = check_resolv_conf(&resolv);
    let hostname = parse_hostname(&hostname_file);
    if let Some(h) = &hostname {
        assert!(valid_name(h), "hostname {h:?}");
        assert_eq!(
            Some(h.as_str()),
            hostname_file.lines().next().map(str::trim)
        );
    }
    let ssh_keys = parse_authorized_keys(&authorized_keys);
    let lines: Vec<&str> = authorized_keys.lines().map(str::trim).collect();
    for k in &ssh_keys {
        assert!(!k.is_empty() && !k.starts_with('#') && !k.contains('\n'));
        assert!(
            lines.contains(&k.as_str()),
            "{k:?} is not a line of the file"
        );
    }

    let given = |bit: u8, s: String| (flags & bit != 0).then(|| s.into_bytes());
    let facts = PodFacts {
        instance_id,
        hostname: hostname.unwrap_or_else(|| "husk-vm".into()),
        ssh_keys,
        user_meta_data: given(1, user_meta),
        user_network_config: given(2, user_net),
        user_data: given(4, user_data),
        network: (flags & 8 != 0).then(|| network(&net_text)),
        dns,
        tools: flags & 16 != 0,
    };
    let files = seed_files(&facts);
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    // vendor-data (which starts husk-vm-tools) exactly with a tools disk.
    assert_eq!(names.contains(&"vendor-data"), facts.tools, "{names:?}");
    let has_nic = facts
        .network
        .as_ref()
        .is_some_and(|n| !n.interfaces.is_empty());
    let network_config = facts.user_network_config.is_some() || has_nic;
    let mut expected = vec!["meta-data", "user-data"];
    if network_config {
        expected.push("network-config");
    }
    if facts.tools {
        expected.push("vendor-data");
    }
    assert_eq!(names, expected);
    match &facts.user_meta_data {
        Some(m) => assert_eq!(&files[0].1, m),
        None => check_meta_data(&files[0].1, &facts),
    }
    if let Some(u) = &facts.user_data {
        assert_eq!(&files[1].1, u);
    }
    match (&facts.user_network_config, &facts.network) {
        (Some(n), _) => assert_eq!(&files[2].1, n),
        (None, Some(net)) if has_nic => check_network_config(&files[2].1, net, &facts),
        _ => {}
    }
});
