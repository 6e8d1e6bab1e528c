//! The operator files in config/ as each containerd release line reads
//! them (`containerd --config <file> config dump`): the version-2 snippet
//! appended to a 1.6/1.7 config.toml, and the version-3 drop-in imported
//! by a 2.x one, both give the `husk` handler its runtime type, absolute
//! shim path and annotation passthrough, and leave the main config's runc
//! handler in place. And scripts/containerd-config.sh's guards, on each
//! line: a husk or husk-vm handler it did not write (quoted keys, dotted
//! keys, inline tables, in config.toml or an imported drop-in) is refused
//! naming the file; a configuration the node's containerd rejects, or
//! whose merged dump lacks husk's handlers, is never swapped in; what is
//! swapped in keeps the old file's mode and owner. No containerd is
//! started (each is asked to `config dump`).

use husk_tests::config_sh::{self, NodeEtc};
use husk_tests::cri_config::{INSTALLED_SHIM, OPERATOR_DROP_IN_V3, OPERATOR_SNIPPET_V2};
use husk_tests::release::{Release, LINES};
use std::process::Command;

/// `config dump` of `release` on a config.toml in `dir` that declares a
/// runc handler and installs the operator file as the README says.
fn dump(release: &Release, dir: &std::path::Path) -> String {
    let main = dir.join("config.toml");
    let (plugin, operator) = if release.config_version() >= 3 {
        let conf_d = dir.join("conf.d");
        std::fs::create_dir_all(&conf_d).unwrap();
        std::fs::write(conf_d.join("husk.toml"), OPERATOR_DROP_IN_V3).unwrap();
        (
            "io.containerd.cri.v1.runtime",
            format!("imports = [{:?}]\n", conf_d.join("*.toml")),
        )
    } else {
        ("io.containerd.grpc.v1.cri", String::new())
    };
    let mut text = format!(
        "version = {}\nroot = {:?}\nstate = {:?}\n{operator}\
         [plugins.\"{plugin}\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n",
        release.config_version(),
        dir.join("root"),
        dir.join("state"),
    );
    if release.config_version() < 3 {
        text += OPERATOR_SNIPPET_V2;
    }
    std::fs::write(&main, text).unwrap();
    let out = Command::new(release.containerd())
        .arg("--config")
        .arg(&main)
        .args(["config", "dump"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{release}: config dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn operator_files_parse_under_each_containerd() {
    for line in LINES {
        let release = Release::named(line).unwrap_or_else(|e| panic!("containerd {line}: {e}"));
        println!("{release}");
        let dir = tempfile::tempdir().unwrap();
        let dumped: toml::Table = dump(&release, dir.path())
            .parse()
            .unwrap_or_else(|e| panic!("{release}: the dump is not TOML: {e}"));
        let plugin = if release.config_version() >= 3 {
            "io.containerd.cri.v1.runtime"
        } else {
            "io.containerd.grpc.v1.cri"
        };
        let runtimes = &dumped["plugins"][plugin]["containerd"]["runtimes"];
        let husk = &runtimes["husk"];
        assert_eq!(husk["runtime_type"].as_str(), Some("io.containerd.husk.v2"));
        assert_eq!(husk["runtime_path"].as_str(), Some(INSTALLED_SHIM));
        let passthrough = toml::Value::from(vec!["io.husk.*"]);
        assert_eq!(husk["pod_annotations"], passthrough, "{release}");
        assert_eq!(husk["container_annotations"], passthrough, "{release}");
        assert_eq!(
            husk["privileged_without_host_devices"].as_bool(),
            Some(true)
        );
        assert_eq!(
            runtimes["runc"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2"),
            "{release}: the main config's runc handler is gone"
        );
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The releases of LINES that are here; the others are SKIPPED.
fn releases() -> Vec<Release> {
    if let Some(why) = config_sh::unavailable() {
        println!("SKIPPED: {why}");
        return Vec::new();
    }
    LINES
        .iter()
        .filter_map(|line| match Release::named(line) {
            Ok(r) => Some(r),
            Err(e) => {
                println!("SKIPPED containerd {line}: {e}");
                None
            }
        })
        .collect()
}

/// Runs `install` on `node` and asserts it fails, saying each of `says`,
/// with every file of /etc/containerd as it was (no staged file left).
fn install_refused(node: &NodeEtc, release: &Release, says: &[&str]) {
    let before = node.snapshot();
    let out = node.run(&["install", "--containerd-version", &release.version]);
    assert!(!out.status.success(), "{release}: install succeeded");
    for s in says {
        assert!(
            stderr(&out).contains(s),
            "{release}: no {s:?} in {}",
            stderr(&out)
        );
    }
    assert_eq!(node.snapshot(), before, "{release}: a file changed");
}

#[test]
fn containerd_config_sh_refuses_a_husk_handler_it_did_not_write() {
    let v2 = "io.containerd.grpc.v1.cri";
    let v3 = "io.containerd.cri.v1.runtime";
    for release in releases() {
        let schema = release.config_version();
        let plugin = if schema >= 3 { v3 } else { v2 };
        let imports = "imports = [\"/etc/containerd/conf.d/*.toml\"]\n";
        // (config.toml, a drop-in in conf.d, the file and handler named)
        let cases = [
            (
                format!("version = {schema}\n[plugins.\"{plugin}\".containerd.runtimes.\"husk\"]\n  runtime_type = \"io.containerd.runc.v2\"\n"),
                None,
                "/etc/containerd/config.toml already defines the runtime handler husk ",
            ),
            (
                format!("version = {schema}\n[plugins.'{plugin}'.containerd]\n  runtimes.husk-vm.runtime_type = \"io.containerd.husk-vm.v2\"\n"),
                None,
                "/etc/containerd/config.toml already defines the runtime handler husk-vm ",
            ),
            (
                format!("version = {schema}\n{imports}"),
                Some(format!("[plugins]\n\"{plugin}\" = {{ containerd = {{ runtimes = {{ husk-vm = {{ runtime_type = \"x\" }} }} }} }}\n")),
                "/etc/containerd/conf.d/10-mine.toml already defines the runtime handler husk-vm ",
            ),
        ];
        for (main, drop_in, says) in cases {
            println!("== {release}");
            let node = NodeEtc::new(&release);
            node.write("config.toml", &main);
            if let Some(d) = &drop_in {
                node.write("conf.d/10-mine.toml", d);
            }
            install_refused(
                &node,
                &release,
                &[says, "leaving containerd's configuration as it is"],
            );
        }
        if schema >= 3 {
            // No imports line yet: husk's would import conf.d, so a handler
            // there counts too.
            let node = NodeEtc::new(&release);
            node.write("config.toml", "version = 3\n");
            node.write(
                "conf.d/10-mine.toml",
                &format!("[plugins.\"{v3}\".containerd]\nruntimes.\"husk\".runtime_type = \"io.containerd.husk.v2\"\n"),
            );
            install_refused(
                &node,
                &release,
                &["/etc/containerd/conf.d/10-mine.toml already defines the runtime handler husk "],
            );
        }
    }
}

#[test]
fn containerd_config_sh_never_swaps_in_a_config_containerd_rejects() {
    for release in releases() {
        println!("== {release}");
        let node = NodeEtc::new(&release);
        if release.config_version() >= 3 {
            // A drop-in of the node's that 2.x cannot decode: every
            // config that imports conf.d fails.
            node.write("config.toml", "version = 3\n");
            node.write(
                "conf.d/10-bad.toml",
                "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\"]\n  enable_selinux = \"yes\"\n",
            );
            install_refused(
                &node,
                &release,
                &["the node's containerd rejects the new configuration"],
            );
        } else {
            // 1.x replaces a whole plugin table with an imported file's: a
            // drop-in that sets one CRI key takes husk's handlers out of the
            // merged configuration, which only the dump shows.
            node.write(
                "config.toml",
                "version = 2\nimports = [\"/etc/containerd/cri.toml\"]\n",
            );
            node.write(
                "cri.toml",
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause:3.9\"\n",
            );
            install_refused(
                &node,
                &release,
                &[
                    "has no handler husk:",
                    "has no handler husk-vm:",
                    "left as it was",
                ],
            );
        }
    }
    // A containerd that rejects any config, on a node without config.toml:
    // nothing is made.
    let fake = tempfile::tempdir().unwrap();
    let bin = fake.path().join("containerd");
    std::fs::write(
        &bin,
        "#!/bin/sh\ncase $1 in --version) echo 'containerd fake v1.7.0 x';; \
         *) echo 'containerd: failed to load TOML: boom' >&2; exit 1;; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let node = NodeEtc::with_bin_dir(fake.path().to_owned());
    let out = node.run(&["install"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("failed to load TOML: boom"),
        "{}",
        stderr(&out)
    );
    assert!(node.snapshot().is_empty(), "{:?}", node.snapshot());
}

#[test]
fn containerd_config_sh_remove_checks_what_is_left_and_swaps_keep_mode_and_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for release in releases() {
        println!("== {release}");
        let node = NodeEtc::new(&release);
        let schema = release.config_version();
        node.write("config.toml", &format!("version = {schema}\n"));
        let config = node.path("config.toml");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(&config, Some(1234), Some(5678)).unwrap();
        let inode = std::fs::metadata(&config).unwrap().ino();
        assert!(node
            .run(&["install", "--containerd-version", &release.version])
            .status
            .success());
        let meta = std::fs::metadata(&config).unwrap();
        assert_ne!(meta.ino(), inode, "config.toml was not renamed into place");
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
        if schema >= 3 {
            let drop_in = std::fs::metadata(node.path("conf.d/husk.toml")).unwrap();
            assert_eq!(drop_in.mode() & 0o7777, 0o644);
        }
        // A file of the node's that containerd rejects, imported by a line
        // of the node's added since (in place: config.toml keeps its inode,
        // mode and owner): remove refuses rather than leave a config
        // containerd will not start on. (On a version-3 file the current
        // config.toml then names `imports` twice; what remove would leave
        // names it once.)
        let installed = node.read("config.toml").unwrap();
        node.write("bad.toml", "[plugins\n");
        let with_import = format!("imports = [\"/etc/containerd/bad.toml\"]\n{installed}");
        node.write("config.toml", &with_import);
        let before = node.snapshot();
        let out = node.run(&["remove"]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("rejects the new configuration"),
            "{}",
            stderr(&out)
        );
        assert_eq!(node.snapshot(), before);
        std::fs::remove_file(node.path("bad.toml")).unwrap();
        node.write("config.toml", &installed);
        assert!(node.run(&["remove"]).status.success());
        let meta = std::fs::metadata(&config).unwrap();
        assert_eq!(
            node.read("config.toml").unwrap(),
            format!("version = {schema}\n")
        );
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    }
}
