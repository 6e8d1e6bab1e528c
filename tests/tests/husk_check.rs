//! `husk check` and `husk env` as an operator runs them: each verdict this
//! machine can produce, with its exit status — the PVM `/dev/kvm` that
//! means TCG (exit 0: pods run, slower), a missing kernel and a missing
//! daemon (exit 1), containerd without the husk handler (exit 1, on every
//! containerd line there is here), a containerd whose CRI plugin would not
//! load (exit 1) and no containerd at all (exit 1).
//! containerd is asked with its own `--version` and `config dump`, against
//! configurations written here; the guest artifacts are the installed ones
//! (scripts/setup.sh).

use husk_config::Config;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// This build's `husk` and shim (target/debug).
fn husk_bin() -> PathBuf {
    husk_tests::containerd::build_bin_dir().join("husk")
}

fn shim() -> String {
    husk_tests::containerd::build_bin_dir()
        .join("containerd-shim-husk-v2")
        .display()
        .to_string()
}
const SNIPPET_V2: &str = include_str!("../../config/containerd-cri.toml");
const DROP_IN_V3: &str = include_str!("../../config/containerd-husk-v3.toml");

/// A husk configuration and a containerd to check, in a temp dir.
struct Node {
    dir: tempfile::TempDir,
    config: Config,
}

impl Node {
    /// The installed configuration (the artifacts setup.sh installed),
    /// with a private runtime directory.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::load_default().unwrap();
        config.hypervisor.runtime_dir = dir.path().join("run");
        for (key, path) in [
            ("hypervisor.kernel", &config.hypervisor.kernel),
            ("hypervisor.initrd", &config.hypervisor.initrd),
            (
                "hypervisor.virtiofsd_path",
                &config.hypervisor.virtiofsd_path,
            ),
        ] {
            assert!(
                path.exists(),
                "{key} = {} is missing: run `sudo bash scripts/setup.sh` first",
                path.display()
            );
        }
        // A CNI network with Debian's plugins.
        let net = dir.path().join("net.d");
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(
            net.join("10-test.conflist"),
            r#"{"cniVersion":"1.0.0","name":"t","plugins":[{"type":"bridge","ipam":{"type":"host-local"}},{"type":"portmap"}]}"#,
        )
        .unwrap();
        Self { dir, config }
    }

    /// A containerd config for `release` (1.x: version 2; 2.x: version 3),
    /// with the operator's husk file (pointing at this build's shim) when
    /// `with_handler`.
    fn containerd_config(
        &self,
        release: &husk_tests::release::Release,
        with_handler: bool,
    ) -> PathBuf {
        let d = self.dir.path();
        let shim_line = |file: &str| {
            file.replace(
                "runtime_path = \"/usr/local/bin/containerd-shim-husk-v2\"",
                &format!("runtime_path = {:?}", shim()),
            )
        };
        let net = d.join("net.d");
        let text = if release.config_version() >= 3 {
            let conf_d = d.join("conf.d");
            std::fs::create_dir_all(&conf_d).unwrap();
            let _ = std::fs::remove_file(conf_d.join("husk.toml"));
            if with_handler {
                std::fs::write(conf_d.join("husk.toml"), shim_line(DROP_IN_V3)).unwrap();
            }
            format!(
                "version = 3\nimports = [{:?}]\n[plugins.'io.containerd.cri.v1.runtime'.cni]\n\
                 bin_dirs = [\"/usr/lib/cni\"]\nconf_dir = {net:?}\n",
                conf_d.join("*.toml")
            )
        } else {
            // A node's config names runc when it names any handler:
            // without it 1.x's CRI plugin does not load.
            let mut t = format!(
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
                 bin_dir = \"/usr/lib/cni\"\nconf_dir = {net:?}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
                 runtime_type = \"io.containerd.runc.v2\"\n"
            );
            if with_handler {
                t += &shim_line(SNIPPET_V2);
            }
            t
        };
        let path = d.join(format!("containerd-{}.toml", release.line()));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `husk check --json` with this configuration; (exit code, report).
    fn check(&self, containerd: Option<&Path>, containerd_config: Option<&Path>) -> (i32, Value) {
        let config = self.dir.path().join("husk.toml");
        std::fs::write(&config, self.config.to_toml()).unwrap();
        let mut cmd = Command::new(husk_bin());
        cmd.args(["check", "--json", "--config"]).arg(&config);
        if let Some(c) = containerd {
            cmd.arg("--containerd").arg(c);
        }
        if let Some(c) = containerd_config {
            cmd.arg("--containerd-config").arg(c);
        }
        let out = cmd.output().unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        for l in report["checks"].as_array().unwrap() {
            println!(
                "{:<5} {:<14} {}",
                l["verdict"].as_str().unwrap(),
                l["check"].as_str().unwrap(),
                l["detail"].as_str().unwrap()
            );
        }
        (out.status.code().unwrap(), report)
    }
}

/// The verdict and detail of line `check`.
fn line<'a>(report: &'a Value, check: &str) -> (&'a str, &'a str) {
    let l = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["check"] == check)
        .unwrap_or_else(|| panic!("no {check} line in {report}"));
    (
        l["verdict"].as_str().unwrap(),
        l["detail"].as_str().unwrap(),
    )
}

fn system_containerd() -> husk_tests::release::Release {
    husk_tests::release::Release::named("").expect("the system's containerd (setup.sh)")
}

#[test]
fn this_node_can_run_pods_and_a_pvm_kvm_means_tcg() {
    let node = Node::new();
    let release = system_containerd();
    let cc = node.containerd_config(&release, true);
    let (code, report) = node.check(Some(&release.containerd()), Some(&cc));
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["can_run_pods"], true);
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let hw = cpu
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|w| w == "vmx" || w == "svm"));
    let (kvm, kvm_detail) = line(&report, "kvm");
    let (accel, accel_detail) = line(&report, "accelerator");
    let (vmm, vmm_detail) = line(&report, "vmm");
    if !hw && Path::new("/dev/kvm").exists() {
        // This machine: a PVM /dev/kvm that cannot boot a normal guest.
        assert_eq!(kvm, "warn");
        assert!(kvm_detail.contains("neither vmx nor svm"), "{kvm_detail}");
        assert_eq!(accel, "warn");
        assert!(accel_detail.starts_with("tcg:"), "{accel_detail}");
        assert_eq!(vmm, "ok");
        assert!(vmm_detail.starts_with("qemu ("), "{vmm_detail}");
        assert_eq!(line(&report, "tcg fallback").0, "ok");
    } else if hw {
        println!("SKIPPED the PVM verdict: this CPU has vmx/svm");
        assert_eq!(kvm, "ok");
    }
    for ok in [
        "kernel",
        "initrd",
        "virtiofsd",
        "vsock backend",
        "containerd",
        "handler",
        "cni",
        "memory",
        "vm qemu-img",
        "vm uefi",
        "vm secure boot",
        "vm tpm",
        "vm tools disk",
    ] {
        assert_eq!(line(&report, ok).0, "ok", "{ok}: {}", line(&report, ok).1);
    }
    assert!(line(&report, "handler").1.contains(&shim()));
}

#[test]
fn a_missing_kernel_fails_the_node() {
    let mut node = Node::new();
    node.config.hypervisor.kernel = node.dir.path().join("no-vmlinux");
    let release = system_containerd();
    let cc = node.containerd_config(&release, true);
    let (code, report) = node.check(Some(&release.containerd()), Some(&cc));
    assert_eq!(code, 1);
    assert_eq!(report["can_run_pods"], false);
    let (verdict, detail) = line(&report, "kernel");
    assert_eq!(verdict, "fail");
    assert!(
        detail.contains("hypervisor.kernel") && detail.contains("no-vmlinux"),
        "{detail}"
    );
}

#[test]
fn what_only_some_vm_pods_use_missing_is_a_warning_naming_them() {
    let mut node = Node::new();
    node.config.vm.swtpm_path = "/nonexistent/swtpm".into();
    node.config.vm.tools_disk = node.dir.path().join("no-tools.img");
    let release = system_containerd();
    let cc = node.containerd_config(&release, true);
    let (code, report) = node.check(Some(&release.containerd()), Some(&cc));
    assert_eq!(code, 0, "{report}");
    let (verdict, detail) = line(&report, "vm tpm");
    assert_eq!(verdict, "warn");
    assert!(
        detail.contains("io.husk.vm.state") && detail.contains("apt-get install swtpm"),
        "{detail}"
    );
    let (verdict, detail) = line(&report, "vm tools disk");
    assert_eq!(verdict, "warn");
    assert!(
        detail.contains("no-tools.img") && detail.contains("exec -it"),
        "{detail}"
    );
}

#[test]
fn a_missing_daemon_fails_the_node() {
    let mut node = Node::new();
    node.config.hypervisor.vsock_backend_path = "/nonexistent/vhost-device-vsock".into();
    let release = system_containerd();
    let cc = node.containerd_config(&release, true);
    let (code, report) = node.check(Some(&release.containerd()), Some(&cc));
    assert_eq!(code, 1);
    let (verdict, detail) = line(&report, "vsock backend");
    assert_eq!(verdict, "fail");
    assert!(detail.contains("hypervisor.vsock_backend_path"), "{detail}");
    assert_eq!(line(&report, "virtiofsd").0, "ok");
}

#[test]
fn containerd_without_the_handler_fails_the_node_on_every_line() {
    let node = Node::new();
    for name in husk_tests::release::LINES {
        let release = match husk_tests::release::Release::named(name) {
            Ok(r) => r,
            Err(e) => {
                println!("SKIPPED containerd {name}: {e}");
                continue;
            }
        };
        println!("== containerd {}", release.version);
        let without = node.containerd_config(&release, false);
        let (code, report) = node.check(Some(&release.containerd()), Some(&without));
        assert_eq!(code, 1, "containerd {name}");
        let (verdict, detail) = line(&report, "handler");
        assert_eq!(verdict, "fail", "{detail}");
        assert!(detail.contains("io.containerd.husk.v2"), "{detail}");
        assert_eq!(line(&report, "containerd").0, "ok");
        assert!(
            line(&report, "containerd").1.starts_with(&release.version),
            "{report}"
        );

        let with = node.containerd_config(&release, true);
        let (code, report) = node.check(Some(&release.containerd()), Some(&with));
        assert_eq!(code, 0, "containerd {name}: {report}");
        assert_eq!(line(&report, "handler").0, "ok");

        if release.config_version() == 2 {
            // husk's handler appended to a config that names no other:
            // runc, containerd's default, is gone and CRI would not load.
            let text = std::fs::read_to_string(&with).unwrap();
            let runc = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
                        runtime_type = \"io.containerd.runc.v2\"\n";
            assert!(text.contains(runc));
            std::fs::write(&with, text.replace(runc, "")).unwrap();
            let (code, report) = node.check(Some(&release.containerd()), Some(&with));
            assert_eq!(code, 1, "containerd {name}: {report}");
            let (verdict, detail) = line(&report, "cri");
            assert_eq!(verdict, "fail");
            assert!(detail.contains("default_runtime_name"), "{detail}");
        }
    }
}

#[test]
fn no_containerd_fails_the_node_and_text_output_says_why() {
    let node = Node::new();
    let config = node.dir.path().join("husk.toml");
    std::fs::write(&config, node.config.to_toml()).unwrap();
    let out = Command::new(husk_bin())
        .args(["check", "--config"])
        .arg(&config)
        .env("PATH", node.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.lines().any(|l| l.starts_with("fail  containerd")),
        "{text}"
    );
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains("cannot run husk pods"),
        "{text}"
    );
    // A wrong command line is exit 2, not a verdict.
    let out = Command::new(husk_bin())
        .args(["check", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn env_prints_the_resolved_configuration_as_toml_and_json() {
    let node = Node::new();
    let mut config = node.config.clone();
    config.debug.console = true;
    config.hypervisor.kernel_params = "loglevel=4".into();
    let path = node.dir.path().join("husk.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let out = Command::new(husk_bin())
        .args(["env", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut table: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    let husk = table.remove("husk").unwrap();
    let resolved = table.remove("resolved").unwrap();
    assert_eq!(husk["config_file"].as_str(), path.to_str());
    assert_eq!(husk["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    // The rest is the configuration, loadable as it is.
    let loaded = Config::parse(&toml::to_string(&table).unwrap()).unwrap();
    assert_eq!(loaded, config);
    let (accel, backend) = husk_hypervisor::resolve_vmm(&config.hypervisor);
    assert_eq!(
        resolved["accelerator"].as_str(),
        Some(accel.accelerator.as_str())
    );
    assert_eq!(resolved["backend"].as_str(), Some(backend.backend.as_str()));
    assert_eq!(
        resolved["kernel_params"].as_str(),
        Some(format!("loglevel=4 {}", husk_proto::DEBUG_CONSOLE_PARAM).as_str())
    );
    let timeouts = match accel.accelerator {
        husk_hypervisor::Accelerator::Kvm => config.timeouts.kvm,
        husk_hypervisor::Accelerator::Tcg => config.timeouts.tcg,
    };
    assert_eq!(
        resolved["timeouts"]["agent_ready_secs"].as_integer(),
        Some(timeouts.agent_ready_secs as i64)
    );
    let out = Command::new(husk_bin())
        .args(["env", "--json", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["resolved"]["backend"], backend.backend.as_str());
    assert_eq!(json["debug"]["console"], true);
    // A configuration that does not load is an error naming the key.
    std::fs::write(&path, "[hypervisor]\nvcpus = 0\n").unwrap();
    let out = Command::new(husk_bin())
        .args(["env", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hypervisor.vcpus"));
}
