//! The operator files in config/ as each containerd release line reads
//! them (`containerd --config <file> config dump`): the version-2 snippet
//! appended to a 1.6/1.7 config.toml, and the version-3 drop-in imported
//! by a 2.x one, both give the `husk` handler its runtime type, absolute
//! shim path and annotation passthrough, and leave the main config's runc
//! handler in place. No containerd is started.

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
