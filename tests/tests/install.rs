//! Installing husk on a node, three ways, as far as they run here:
//! `containerd-config.sh` writing and taking back the handler on every
//! containerd line; the .deb installed with apt on a node that has QEMU;
//! and the DaemonSet's pod (husk-deploy.sh in the deploy image) installing,
//! labelling and cleaning up. The last two run in a throwaway overlay of
//! this machine (tests/node/sandbox.sh) in a private mount namespace, with
//! containerd chrooted into it: this machine's own husk and containerd are
//! not touched. What needs a cluster (the API server, kubelet sending
//! SIGTERM, a registry) is stood in for and said so in docs/operations.md.

use husk_tests::release::{Release, LINES};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `busybox sh scripts/containerd-config.sh ARGS` (busybox: the deploy
/// image's shell).
fn containerd_config(args: &[&str]) -> std::process::Output {
    let out = Command::new("busybox")
        .arg("sh")
        .arg(repo().join("scripts/containerd-config.sh"))
        .args(args)
        .output()
        .expect("running containerd-config.sh");
    println!("{}{}", text(&out.stdout), text(&out.stderr));
    out
}

/// `containerd config dump` of `release` with `etc` as its /etc/containerd
/// (bind-mounted in a private mount namespace: the v3 imports line names
/// the absolute /etc/containerd/conf.d).
fn dump_with(release: &Release, etc: &Path) -> String {
    let script = format!(
        "mount --bind {} /etc/containerd && exec {} config dump",
        etc.display(),
        release.containerd().display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    assert!(out.status.success(), "config dump: {}", text(&out.stderr));
    text(&out.stdout)
}

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

fn husk_handler(dump: &str, release: &Release) -> Option<toml::Value> {
    handlers(dump, release).0.get("husk").cloned()
}

#[test]
fn containerd_config_writes_and_takes_back_the_handler_on_every_line() {
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
            let root = tempfile::tempdir().unwrap();
            let etc = root.path().join("etc/containerd");
            std::fs::create_dir_all(&etc).unwrap();
            let config = etc.join("config.toml");
            let original = format!("version = {schema}\n# the node's own settings\n");
            if own {
                std::fs::write(&config, &original).unwrap();
            }
            let root_arg = root.path().to_str().unwrap();
            let version = release.version.as_str();
            let args = ["--root", root_arg, "--containerd-version", version];
            let out = containerd_config(&[&["install"][..], &args].concat());
            assert!(out.status.success());
            // Twice is once.
            assert!(containerd_config(&[&["install"][..], &args].concat())
                .status
                .success());
            let dump = dump_with(&release, &etc);
            let handler = husk_handler(&dump, &release)
                .unwrap_or_else(|| panic!("containerd {line} does not see the husk handler"));
            // containerd's default handler is still there (its CRI plugin
            // does not load without it).
            let (all, default) = handlers(&dump, &release);
            assert!(
                all.contains_key(&default),
                "no {default:?} handler beside husk's"
            );
            assert_eq!(
                handler["runtime_type"].as_str(),
                Some("io.containerd.husk.v2")
            );
            assert_eq!(
                handler["runtime_path"].as_str(),
                Some("/usr/local/bin/containerd-shim-husk-v2")
            );
            let out = containerd_config(&["remove", "--root", root_arg]);
            assert!(out.status.success());
            if own {
                assert_eq!(std::fs::read_to_string(&config).unwrap(), original);
            } else {
                assert!(!config.exists(), "the config.toml husk made is still there");
            }
            assert!(!etc.join("conf.d/husk.toml").exists());
            if own {
                assert!(husk_handler(&dump_with(&release, &etc), &release).is_none());
            }
        }
    }
    // A version 1 config (no version line) is refused, untouched.
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc/containerd");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("config.toml"), "[plugins.cri]\n").unwrap();
    let out = containerd_config(&[
        "install",
        "--root",
        root.path().to_str().unwrap(),
        "--containerd-version",
        "1.6.20",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("version = 2 or 3"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("config.toml")).unwrap(),
        "[plugins.cri]\n"
    );
}

/// Runs a tests/node/ scenario in a private mount namespace.
fn node_scenario(script: &str, args: &[&Path]) {
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash"])
        .arg(repo().join("tests/node").join(script))
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
    let path = repo().join("target/husk").join(name);
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
