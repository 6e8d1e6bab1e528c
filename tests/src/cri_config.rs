//! The CRI plugin's configuration for the harness' containerd, in the
//! schema of its release line: what is private to the harness (pause
//! image, CNI, oom_score_adj, streaming server, runc's root), then the
//! operator's files for the husk handler as shipped in config/ — for 1.x
//! the version-2 snippet appended to config.toml, for 2.x the version-3
//! drop-in imported from conf.d/, as an operator installs them. The one
//! change: each handler's `runtime_path` (husk's and husk-vm's) points at
//! the shim of this build instead of /usr/local/bin.

use crate::release::Release;
use std::path::Path;

/// What an operator adds to a 1.6/1.7 containerd's config.toml.
pub const OPERATOR_SNIPPET_V2: &str = include_str!("../../config/containerd-cri.toml");
/// What an operator drops into a 2.x containerd's conf.d/.
pub const OPERATOR_DROP_IN_V3: &str = include_str!("../../config/containerd-husk-v3.toml");
/// The shim path both operator files name.
pub const INSTALLED_SHIM: &str = "/usr/local/bin/containerd-shim-husk-v2";
/// The husk-vm handler's shim: the same executable under its husk-vm name.
pub const INSTALLED_VM_SHIM: &str = "/usr/local/bin/containerd-shim-husk-vm-v2";

/// The harness' CRI config: tables for config.toml and, for 2.x, a drop-in
/// for `<dir>/conf.d/husk.toml`.
#[derive(Debug)]
pub struct CriConfig {
    pub main: String,
    pub drop_in: Option<String>,
}

/// Settings private to one harness.
pub struct Private<'a> {
    pub dir: &'a Path,
    pub cni_conf_dir: &'a Path,
    pub stream_port: u16,
    pub pause_image: &'a str,
    pub default_runtime: &'a str,
    pub runc_type: &'a str,
    /// The shim the husk handler runs (`runtime_path`).
    pub shim: &'a Path,
    /// The shim the husk-vm handler runs (a link to `shim`).
    pub vm_shim: &'a Path,
}

/// `file` with its handlers' `runtime_path`s pointing at `shim` (husk)
/// and `vm_shim` (husk-vm); fails when the file does not name each
/// installed shim exactly once, since then the test would not be testing
/// what ships.
pub fn with_shim(file: &str, shim: &Path, vm_shim: &Path) -> String {
    let mut out = file.to_owned();
    for (installed, tested) in [(INSTALLED_SHIM, shim), (INSTALLED_VM_SHIM, vm_shim)] {
        let line = format!("runtime_path = {installed:?}");
        assert_eq!(
            out.matches(&line).count(),
            1,
            "the operator file must set `{line}` once"
        );
        out = out.replace(
            &line,
            &format!("runtime_path = {:?}", tested.display().to_string()),
        );
    }
    out
}

pub fn cri_config(release: &Release, p: &Private) -> CriConfig {
    if release.config_version() >= 3 {
        CriConfig {
            main: v3(p),
            drop_in: Some(with_shim(OPERATOR_DROP_IN_V3, p.shim, p.vm_shim)),
        }
    } else {
        CriConfig {
            main: format!(
                "{}{}",
                v2(p),
                with_shim(OPERATOR_SNIPPET_V2, p.shim, p.vm_shim)
            ),
            drop_in: None,
        }
    }
}

/// containerd 1.x: everything under `io.containerd.grpc.v1.cri`.
fn v2(p: &Private) -> String {
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    format!(
        "[{cri}]\n\
         \x20 sandbox_image = {pause:?}\n\
         \x20 # Negative oom_score_adj needs CAP_SYS_RESOURCE, which this host lacks.\n\
         \x20 restrict_oom_score_adj = true\n\
         \x20 # Network namespaces under the harness' state, not /var/run/netns.\n\
         \x20 netns_mounts_under_state_dir = true\n\
         \x20 stream_server_address = \"127.0.0.1\"\n\
         \x20 stream_server_port = \"{port}\"\n\
         [{cri}.cni]\n\
         \x20 bin_dir = \"/usr/lib/cni\"\n\
         \x20 conf_dir = {conf:?}\n\
         \x20 max_conf_num = 1\n\
         [{cri}.containerd]\n\
         \x20 snapshotter = \"overlayfs\"\n\
         \x20 default_runtime_name = {default:?}\n\
         [{cri}.containerd.runtimes.runc]\n\
         \x20 runtime_type = {runc_type:?}\n\
         [{cri}.containerd.runtimes.runc.options]\n\
         \x20 # runc's state with the harness', not in /run/containerd/runc.\n\
         \x20 Root = {runc_root:?}\n",
        pause = p.pause_image,
        port = p.stream_port,
        conf = p.cni_conf_dir,
        default = p.default_runtime,
        runc_type = p.runc_type,
        runc_root = p.dir.join("state/runc"),
    )
}

/// containerd 2.x: the server (streaming) under `io.containerd.grpc.v1.cri`,
/// images (snapshotter, the pinned sandbox image) under
/// `io.containerd.cri.v1.images`, and runtimes, CNI and the rest under
/// `io.containerd.cri.v1.runtime` (containerd's docs/cri/config.md, 2.0).
fn v3(p: &Private) -> String {
    let server = r#"plugins."io.containerd.grpc.v1.cri""#;
    let images = r#"plugins."io.containerd.cri.v1.images""#;
    let runtime = r#"plugins."io.containerd.cri.v1.runtime""#;
    format!(
        "[{server}]\n\
         \x20 stream_server_address = \"127.0.0.1\"\n\
         \x20 stream_server_port = \"{port}\"\n\
         [{images}]\n\
         \x20 snapshotter = \"overlayfs\"\n\
         [{images}.pinned_images]\n\
         \x20 sandbox = {pause:?}\n\
         [{runtime}]\n\
         \x20 # Negative oom_score_adj needs CAP_SYS_RESOURCE, which this host lacks.\n\
         \x20 restrict_oom_score_adj = true\n\
         \x20 # Network namespaces under the harness' state, not /var/run/netns.\n\
         \x20 netns_mounts_under_state_dir = true\n\
         [{runtime}.cni]\n\
         \x20 bin_dirs = [\"/usr/lib/cni\"]\n\
         \x20 conf_dir = {conf:?}\n\
         \x20 max_conf_num = 1\n\
         [{runtime}.containerd]\n\
         \x20 default_runtime_name = {default:?}\n\
         [{runtime}.containerd.runtimes.runc]\n\
         \x20 runtime_type = {runc_type:?}\n\
         [{runtime}.containerd.runtimes.runc.options]\n\
         \x20 # runc's state with the harness', not in /run/containerd/runc.\n\
         \x20 Root = {runc_root:?}\n",
        pause = p.pause_image,
        port = p.stream_port,
        conf = p.cni_conf_dir,
        default = p.default_runtime,
        runc_type = p.runc_type,
        runc_root = p.dir.join("state/runc"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(major: u32, minor: u32) -> Release {
        Release {
            bin_dir: "/x".into(),
            version: format!("{major}.{minor}.0"),
            major,
            minor,
        }
    }

    const VM_SHIM: &str = "/build/containerd-shim-husk-vm-v2";

    fn private<'a>(shim: &'a Path) -> Private<'a> {
        Private {
            dir: Path::new("/x"),
            cni_conf_dir: Path::new("/x/cni"),
            stream_port: 1234,
            pause_image: "docker.io/husk/pause:test",
            default_runtime: "runc",
            runc_type: "io.containerd.runc.v2",
            shim,
            vm_shim: Path::new(VM_SHIM),
        }
    }

    fn husk_handler(plugin: &toml::Value) -> &toml::Value {
        &plugin["containerd"]["runtimes"]["husk"]
    }

    #[test]
    fn version_2_appends_the_operator_snippet_with_the_tested_shim() {
        let shim = Path::new("/build/containerd-shim-husk-v2");
        let c = cri_config(&release(1, 7), &private(shim));
        assert!(c.drop_in.is_none());
        assert!(c
            .main
            .ends_with(&with_shim(OPERATOR_SNIPPET_V2, shim, Path::new(VM_SHIM))));
        let parsed: toml::Table = c.main.parse().expect("the CRI config is TOML");
        let plugin = &parsed["plugins"]["io.containerd.grpc.v1.cri"];
        let husk = husk_handler(plugin);
        assert_eq!(husk["runtime_type"].as_str(), Some("io.containerd.husk.v2"));
        assert_eq!(husk["runtime_path"].as_str(), shim.to_str());
        let vm = &plugin["containerd"]["runtimes"]["husk-vm"];
        assert_eq!(
            vm["runtime_type"].as_str(),
            Some("io.containerd.husk-vm.v2")
        );
        assert_eq!(vm["runtime_path"].as_str(), Some(VM_SHIM));
        assert_eq!(
            plugin["containerd"]["runtimes"]["runc"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2")
        );
        assert_eq!(
            plugin["sandbox_image"].as_str(),
            Some("docker.io/husk/pause:test")
        );
        assert_eq!(plugin["cni"]["bin_dir"].as_str(), Some("/usr/lib/cni"));
    }

    #[test]
    fn version_3_keeps_the_drop_in_apart_with_the_tested_shim() {
        let shim = Path::new("/build/containerd-shim-husk-v2");
        let c = cri_config(&release(2, 1), &private(shim));
        let main: toml::Table = c.main.parse().expect("the CRI config is TOML");
        let plugins = &main["plugins"];
        assert_eq!(
            plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
            Some("docker.io/husk/pause:test")
        );
        let runtime = &plugins["io.containerd.cri.v1.runtime"];
        assert_eq!(runtime["restrict_oom_score_adj"].as_bool(), Some(true));
        assert!(runtime["containerd"]["runtimes"].get("husk").is_none());
        assert_eq!(
            plugins["io.containerd.grpc.v1.cri"]["stream_server_port"].as_str(),
            Some("1234")
        );
        let drop_in: toml::Table = c.drop_in.unwrap().parse().expect("the drop-in is TOML");
        assert_eq!(drop_in["version"].as_integer(), Some(3));
        let husk = husk_handler(&drop_in["plugins"]["io.containerd.cri.v1.runtime"]);
        assert_eq!(husk["runtime_type"].as_str(), Some("io.containerd.husk.v2"));
        assert_eq!(husk["runtime_path"].as_str(), shim.to_str());
        let vm = &drop_in["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]
            ["husk-vm"];
        assert_eq!(
            vm["runtime_type"].as_str(),
            Some("io.containerd.husk-vm.v2")
        );
        assert_eq!(vm["runtime_path"].as_str(), Some(VM_SHIM));
    }

    #[test]
    fn both_operator_files_say_the_same() {
        let v2: toml::Table = OPERATOR_SNIPPET_V2.parse().unwrap();
        let v3: toml::Table = OPERATOR_DROP_IN_V3.parse().unwrap();
        let a = husk_handler(&v2["plugins"]["io.containerd.grpc.v1.cri"]);
        let b = husk_handler(&v3["plugins"]["io.containerd.cri.v1.runtime"]);
        assert_eq!(a, b);
        let vm = |t: &toml::Table, plugin: &str| {
            t["plugins"][plugin]["containerd"]["runtimes"]["husk-vm"].clone()
        };
        let (va, vb) = (
            vm(&v2, "io.containerd.grpc.v1.cri"),
            vm(&v3, "io.containerd.cri.v1.runtime"),
        );
        assert_eq!(va, vb);
        assert_eq!(va["runtime_path"].as_str(), Some(INSTALLED_VM_SHIM));
        assert_eq!(a["runtime_path"].as_str(), Some(INSTALLED_SHIM));
        assert_eq!(a["pod_annotations"], toml::Value::from(vec!["io.husk.*"]));
        assert_eq!(
            a["container_annotations"],
            toml::Value::from(vec!["io.husk.*"])
        );
    }
}
