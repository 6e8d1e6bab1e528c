//! Installing husk on a node, three ways, as far as they run here:
//! `containerd-config.sh` writing and taking back the handler on every
//! containerd line; the .deb installed with apt on a node that has QEMU;
//! and the DaemonSet's pod (husk-deploy.sh in the deploy image) installing,
//! labelling and cleaning up; and deploy/husk-deploy.sh from the
//! repository against a node's containerd, with /host the node
//! (tests/node/deploy-config.sh: the handler written through chroot,
//! checked with the default `ctr version`, taken back, and rolled back when
//! containerd does not answer). The last three run in a throwaway overlay of
//! this machine (tests/node/sandbox.sh) in a private mount namespace, with
//! containerd chrooted into it: this machine's own husk and containerd are
//! not touched. What needs a cluster (the API server, kubelet sending
//! SIGTERM, a registry) is stood in for and said so in docs/operations.md.

use husk_tests::config_sh::{self, NodeEtc};
use husk_tests::ctr::text;
use husk_tests::release::{Release, LINES};
use husk_tests::repo_root;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The dump's CRI runtime handlers, and its default one's name.
fn handlers(dump: &str, release: &Release) -> (toml::Table, String) {
    let table: toml::Table = dump.parse().expect("the dump is TOML");
    let plugin = if release.config_version() >= 3 {
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    };
    let containerd = &table["plugins"][plugin]["containerd"];
    (
        containerd["runtimes"]
            .as_table()
            .cloned()
            .unwrap_or_default(),
        containerd["default_runtime_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn handler(dump: &str, release: &Release, name: &str) -> Option<toml::Value> {
    handlers(dump, release).0.get(name).cloned()
}

#[test]
fn containerd_config_writes_and_takes_back_the_handler_on_every_line() {
    if let Some(why) = config_sh::unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    for line in LINES {
        let release = match Release::named(line) {
            Ok(r) => r,
            Err(e) => {
                println!("SKIPPED containerd {line}: {e}");
                continue;
            }
        };
        let schema = release.config_version();
        // A node with its own config.toml, and one with none.
        for own in [true, false] {
            println!(
                "== containerd {} (config version {schema}), own config.toml: {own}",
                release.version
            );
            let node = NodeEtc::new(&release);
            let original = format!("version = {schema}\n# the node's own settings\n");
            if own {
                node.write("config.toml", &original);
            }
            let version = release.version.as_str();
            let install = ["install", "--containerd-version", version];
            assert!(node.run(&install).status.success());
            // Twice is once.
            let before = node.snapshot();
            let again = node.run(&install);
            assert!(again.status.success());
            assert!(text(&again.stdout).contains("unchanged"));
            assert_eq!(node.snapshot(), before, "a second install changed a file");
            let dump = node.dump();
            // containerd's default handler is still there (its CRI plugin
            // does not load without it).
            let (all, default) = handlers(&dump, &release);
            assert!(
                all.contains_key(&default),
                "no {default:?} handler beside husk's"
            );
            for (name, runtime_type, shim) in [
                ("husk", "io.containerd.husk.v2", "containerd-shim-husk-v2"),
                (
                    "husk-vm",
                    "io.containerd.husk-vm.v2",
                    "containerd-shim-husk-vm-v2",
                ),
            ] {
                let h = handler(&dump, &release, name)
                    .unwrap_or_else(|| panic!("containerd {line} does not see the {name} handler"));
                assert_eq!(h["runtime_type"].as_str(), Some(runtime_type));
                let path = format!("/usr/local/bin/{shim}");
                assert_eq!(h["runtime_path"].as_str(), Some(path.as_str()));
            }
            assert!(node.run(&["remove"]).status.success());
            if own {
                assert_eq!(node.read("config.toml").as_deref(), Some(original.as_str()));
                assert!(handler(&node.dump(), &release, "husk").is_none());
            } else {
                assert!(
                    node.read("config.toml").is_none(),
                    "the config.toml husk made is still there"
                );
            }
            assert!(node.read("conf.d/husk.toml").is_none());
            // Nothing of husk's (no staged file) is left.
            let left: Vec<_> = node.snapshot().into_iter().map(|(p, _)| p).collect();
            let want: Vec<_> = if own {
                vec![node.path("config.toml")]
            } else {
                vec![]
            };
            assert_eq!(left, want);
        }
    }
    // A version 1 config (no version line) is refused, untouched.
    let node = NodeEtc::with_bin_dir("/nonexistent".into());
    node.write("config.toml", "[plugins.cri]\n");
    let out = node.run(&["install", "--containerd-version", "1.6.20"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("version = 2 or 3"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(node.read("config.toml").as_deref(), Some("[plugins.cri]\n"));
}

/// Runs a tests/node/ scenario in a private mount namespace.
fn node_scenario(script: &str, args: &[&Path]) {
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash"])
        .arg(repo_root().join("tests/node").join(script))
        .args(args)
        .env_remove(husk_config::CONFIG_ENV)
        .output()
        .expect("unshare");
    println!("{}", text(&out.stdout));
    eprintln!("{}", text(&out.stderr));
    assert!(out.status.success(), "{script} failed");
    assert!(text(&out.stdout).contains("PASS"), "{script} did not pass");
}

fn built(name: &str, how: &str) -> Option<PathBuf> {
    let path = repo_root().join("target/husk").join(name);
    if path.exists() {
        Some(path)
    } else {
        println!("SKIPPED: {} is not built ({how})", path.display());
        None
    }
}

#[test]
fn the_deb_installs_with_apt_runs_a_vm_and_is_removed_whole() {
    let deb = format!("husk_{}_amd64.deb", env!("CARGO_PKG_VERSION"));
    let Some(deb) = built(&deb, "scripts/build-deb.sh; scripts/test.sh builds it") else {
        return;
    };
    node_scenario("deb.sh", &[&deb, &husk_tests::ctr::image_archive()]);
}

#[test]
fn the_daemonset_pod_installs_labels_and_takes_it_all_back_on_sigterm() {
    let Some(image) = built(
        "husk-deploy-oci.tar",
        "scripts/build-deploy-image.sh; scripts/test.sh builds it",
    ) else {
        return;
    };
    node_scenario("deploy.sh", &[&image, &husk_tests::ctr::image_archive()]);
}

#[test]
fn the_deploy_script_writes_the_handler_through_host_and_rolls_back() {
    let bins = husk_tests::containerd::build_bin_dir();
    for bin in ["husk", "containerd-shim-husk-v2"] {
        if !bins.join(bin).exists() {
            println!(
                "SKIPPED: {} is not built (cargo build -p husk-shim --bins)",
                bins.join(bin).display()
            );
            return;
        }
    }
    node_scenario("deploy-config.sh", &[&bins]);
}
