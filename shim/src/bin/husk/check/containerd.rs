//! containerd as `husk check` sees it: its version (`containerd
//! --version`), and from `containerd config dump` (the configuration it
//! would run with, drop-ins merged) whether a CRI runtime handler runs
//! husk's shim, the cgroup driver of its runc handler, and its CNI set-up.
//! Where each config schema keeps CRI: crate::cri_toml.

use super::{line, ContainerdTarget, Line, Verdict};
use crate::cri_toml::Cri;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The runtime_type of husk's shim (`io.containerd.husk.v2`).
const RUNTIME_TYPE: &str = husk_shim::RUNTIME_ID;
/// Where the CNI plugins are when the config does not say.
const DEFAULT_CNI_BIN: &str = "/opt/cni/bin";

#[derive(Default)]
pub struct Dump {
    pub lines: Vec<Line>,
    /// runc's `SystemdCgroup`, when the dump has a runc handler.
    pub systemd_cgroup: Option<bool>,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub cni_conf_dir: Option<PathBuf>,
}

pub fn inspect(target: &ContainerdTarget) -> Dump {
    let mut dump = Dump::default();
    let binary = match &target.binary {
        Some(b) => Some(PathBuf::from(b)),
        None => which("containerd"),
    };
    let Some(binary) = binary.filter(|b| b.is_file()) else {
        dump.lines.push(line(
            "containerd",
            Verdict::Fail,
            "no containerd found (on PATH, or --containerd): husk runs pods as a containerd shim",
        ));
        return dump;
    };
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| parse_version(&String::from_utf8_lossy(&o.stdout)));
    let Some((version, major, minor)) = version else {
        dump.lines.push(line(
            "containerd",
            Verdict::Fail,
            format!("{} --version did not say its version", binary.display()),
        ));
        return dump;
    };
    let supported = (major == 1 && minor >= 6) || major == 2;
    dump.lines.push(line(
        "containerd",
        if supported {
            Verdict::Ok
        } else {
            Verdict::Warn
        },
        format!(
            "{version} ({}){}",
            binary.display(),
            if supported {
                ""
            } else {
                ": husk is tested on 1.6, 1.7 and 2.1"
            }
        ),
    ));
    let mut cmd = Command::new(&binary);
    if let Some(config) = &target.config {
        cmd.arg("--config").arg(config);
    }
    let out = match cmd.args(["config", "dump"]).output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().last().unwrap_or_default();
            dump.lines.push(line(
                "handler",
                Verdict::Fail,
                format!("containerd config dump failed: {last}"),
            ));
            return dump;
        }
        Err(e) => {
            dump.lines.push(line(
                "handler",
                Verdict::Fail,
                format!("containerd config dump: {e}"),
            ));
            return dump;
        }
    };
    match String::from_utf8_lossy(&out.stdout).parse::<toml::Table>() {
        Ok(table) => read_dump(&table, &mut dump),
        Err(e) => dump.lines.push(line(
            "handler",
            Verdict::Fail,
            format!("containerd config dump is not TOML: {e}"),
        )),
    }
    dump
}

/// `containerd github.com/containerd/containerd v1.6.20~ds1 <commit>`, or
/// 2.x's `.../containerd/v2 2.1.9+unknown`: (version, major, minor).
pub fn parse_version(text: &str) -> Option<(String, u32, u32)> {
    let word = text.split_whitespace().nth(2)?;
    let version = word.trim_start_matches('v');
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((version.to_owned(), major, minor))
}

fn read_dump(table: &toml::Table, dump: &mut Dump) {
    let cri = Cri::of(table);
    let (schema, plugin_name, plugin, runtimes) =
        (cri.schema, cri.plugin_name, cri.plugin, cri.runtimes);
    if cri.disabled {
        dump.lines.push(line(
            "handler",
            Verdict::Fail,
            format!("the CRI plugin {plugin_name} is in disabled_plugins: no pods at all"),
        ));
        return;
    }
    dump.systemd_cgroup = cri
        .handler("runc")
        .and_then(|r| r.get("options"))
        .and_then(|o| o.get("SystemdCgroup"))
        .and_then(|v| v.as_bool());
    let default = cri.default;
    if cri.handler(default).is_none() {
        dump.lines.push(line(
            "cri",
            Verdict::Fail,
            format!(
                "the CRI plugin will not load: default_runtime_name = {default:?} has no \
                 handler in containerd.runtimes (a config.toml that names handlers must \
                 name that one too)"
            ),
        ));
    }
    let husk = runtimes
        .into_iter()
        .flatten()
        .find(|(_, r)| r.get("runtime_type").and_then(|t| t.as_str()) == Some(RUNTIME_TYPE));
    dump.lines.push(match husk {
        None => line(
            "handler",
            Verdict::Fail,
            format!(
                "containerd (config version {schema}) has no runtime handler with \
                 runtime_type = \"{RUNTIME_TYPE}\": install it with \
                 /usr/local/share/husk/containerd-config.sh install, then restart containerd"
            ),
        ),
        Some((name, r)) => handler_line(name, r),
    });
    if let Some(cni) = plugin.and_then(|p| p.get("cni")) {
        let mut dirs: Vec<PathBuf> = cni
            .get("bin_dirs")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
            .map(PathBuf::from)
            .collect();
        if let Some(d) = cni
            .get("bin_dir")
            .and_then(|d| d.as_str())
            .filter(|d| !d.is_empty())
        {
            dirs.push(d.into());
        }
        dump.cni_bin_dirs = dirs;
        dump.cni_conf_dir = cni
            .get("conf_dir")
            .and_then(|d| d.as_str())
            .map(PathBuf::from);
    }
}

fn handler_line(name: &str, r: &toml::Value) -> Line {
    let path = r.get("runtime_path").and_then(|p| p.as_str()).unwrap_or("");
    let shim = if path.is_empty() {
        match which("containerd-shim-husk-v2") {
            Some(p) => format!("shim from PATH: {}", p.display()),
            None => {
                return line(
                    "handler",
                    Verdict::Fail,
                    format!("handler {name:?} has no runtime_path, and containerd-shim-husk-v2 is not on PATH"),
                )
            }
        }
    } else {
        if let Err(e) = husk_hypervisor::check_executable("runtime_path", Path::new(path)) {
            return line("handler", Verdict::Fail, format!("handler {name:?}: {e}"));
        }
        format!("runtime_path {path}")
    };
    let annotations = r
        .get("pod_annotations")
        .and_then(|a| a.as_array())
        .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("io.husk.*")));
    if annotations {
        line("handler", Verdict::Ok, format!("{name} ({shim})"))
    } else {
        line(
            "handler",
            Verdict::Warn,
            format!(
                "{name} ({shim}), but pod_annotations lacks \"io.husk.*\": pods cannot size \
                 their VM with io.husk.vcpus / io.husk.memory_mib"
            ),
        )
    }
}

/// The CNI network config containerd would use, and the plugins it names.
pub fn cni(dump: &Dump) -> Vec<Line> {
    let Some(conf_dir) = &dump.cni_conf_dir else {
        return Vec::new();
    };
    let bin_dirs = if dump.cni_bin_dirs.is_empty() {
        vec![PathBuf::from(DEFAULT_CNI_BIN)]
    } else {
        dump.cni_bin_dirs.clone()
    };
    let mut confs: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "conf" || x == "conflist")
        })
        .collect();
    confs.sort();
    let Some(conf) = confs.first() else {
        return vec![line(
            "cni",
            Verdict::Warn,
            format!(
                "no network config in {}: pods get no network until one is installed",
                conf_dir.display()
            ),
        )];
    };
    let types = plugin_types(conf);
    let missing: Vec<&String> = types
        .iter()
        .filter(|t| !bin_dirs.iter().any(|d| d.join(t).is_file()))
        .collect();
    let dirs = bin_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if missing.is_empty() {
        vec![line(
            "cni",
            Verdict::Ok,
            format!("{}: plugins {} in {dirs}", conf.display(), types.join(", ")),
        )]
    } else {
        vec![line(
            "cni",
            Verdict::Fail,
            format!(
                "{} needs plugins not in {dirs}: {missing:?}",
                conf.display()
            ),
        )]
    }
}

/// The plugin types a .conf or .conflist names, loopback included (CRI
/// always runs it).
fn plugin_types(conf: &Path) -> Vec<String> {
    let value: serde_json::Value = std::fs::read(conf)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut types: Vec<String> = match value.get("plugins").and_then(|p| p.as_array()) {
        Some(list) => list
            .iter()
            .filter_map(|p| p.get("type")?.as_str().map(str::to_owned))
            .collect(),
        None => value
            .get("type")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .into_iter()
            .collect(),
    };
    types.retain(|t| !t.contains('/') && !t.is_empty());
    if !types.iter().any(|t| t == "loopback") {
        types.push("loopback".into());
    }
    types
}

/// `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_each_line_are_read() {
        let v = parse_version(
            "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1\n",
        );
        assert_eq!(v, Some(("1.6.20~ds1".into(), 1, 6)));
        let v = parse_version("containerd github.com/containerd/containerd/v2 2.1.9+unknown \n");
        assert_eq!(v, Some(("2.1.9+unknown".into(), 2, 1)));
        let v = parse_version("containerd containerd.io v1.7.24 abc\n");
        assert_eq!(v, Some(("1.7.24".into(), 1, 7)));
        assert_eq!(parse_version("nonsense"), None);
    }

    fn dump_of(text: &str) -> Dump {
        let mut dump = Dump::default();
        read_dump(&text.parse().unwrap(), &mut dump);
        dump
    }

    #[test]
    fn a_dump_without_husk_fails_and_with_it_passes() {
        let cri = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes";
        let dump = dump_of(&format!(
            "version = 2\n{cri}.runc]\nruntime_type = \"io.containerd.runc.v2\"\n\
             {cri}.runc.options]\nSystemdCgroup = true\n"
        ));
        assert_eq!(dump.lines.len(), 1, "{:?}", dump.lines);
        assert_eq!(dump.lines[0].check, "handler");
        assert_eq!(dump.lines[0].verdict, Verdict::Fail);
        assert_eq!(dump.systemd_cgroup, Some(true));

        // Handlers without the default one: containerd's CRI would not load.
        let dump = dump_of(&format!(
            "version = 2\n{cri}.husk]\nruntime_type = \"io.containerd.husk.v2\"\n\
             runtime_path = \"/bin/sh\"\n"
        ));
        assert_eq!(dump.lines[0].check, "cri");
        assert_eq!(dump.lines[0].verdict, Verdict::Fail);
        assert!(
            dump.lines[0].detail.contains("\"runc\""),
            "{:?}",
            dump.lines
        );

        let v3 = "[plugins.'io.containerd.cri.v1.runtime'";
        let dump = dump_of(&format!(
            "version = 3\n{v3}.containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\n\
             {v3}.containerd.runtimes.vm]\nruntime_type = \"io.containerd.husk.v2\"\n\
             runtime_path = \"/bin/sh\"\npod_annotations = [\"io.husk.*\"]\n\
             {v3}.cni]\nbin_dirs = [\"/usr/lib/cni\"]\nconf_dir = \"/x\"\n"
        ));
        assert_eq!(dump.lines.len(), 1, "{:?}", dump.lines);
        assert_eq!(dump.lines[0].verdict, Verdict::Ok, "{:?}", dump.lines);
        assert!(dump.lines[0].detail.starts_with("vm ("));
        assert_eq!(dump.cni_bin_dirs, [PathBuf::from("/usr/lib/cni")]);
        assert_eq!(dump.cni_conf_dir, Some(PathBuf::from("/x")));
    }
}
