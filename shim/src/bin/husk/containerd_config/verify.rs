//! `husk containerd-config verify-dump`: whether the node's containerd,
//! dumping a staged configuration, would run husk — the dump is TOML, its
//! CRI plugin loads (its default handler exists), and both of husk's
//! handlers are there with their runtime_type. containerd 1.x replaces a
//! whole plugin table with an imported file's, so a drop-in of the node's
//! can take husk's handlers out of a config.toml that has them: only the
//! merged dump says. After `remove` (`--removed`): the dump is TOML and
//! CRI still loads.

use crate::cri_toml::{Cri, HANDLERS};

/// What is wrong with the dump, one line each; empty: it is good.
pub fn problems(dump: &str, removed: bool) -> Vec<String> {
    let table: toml::Table = match dump.parse() {
        Ok(t) => t,
        Err(e) => return vec![format!("containerd's config dump is not TOML: {e}")],
    };
    let cri = Cri::of(&table);
    let mut out = Vec::new();
    if cri.disabled {
        if !removed {
            out.push(format!(
                "the CRI plugin {} is in disabled_plugins: no pods would run",
                cri.plugin_name
            ));
        }
        return out;
    }
    if cri.handler(cri.default).is_none() {
        out.push(format!(
            "the CRI plugin would not load: default_runtime_name = {:?} has no handler in \
             containerd.runtimes",
            cri.default
        ));
    }
    if removed {
        return out;
    }
    for (name, runtime_type) in HANDLERS {
        match cri.runtime_type(name) {
            Some(t) if t == runtime_type => {}
            Some(t) => out.push(format!(
                "handler {name} has runtime_type {t:?}, not {runtime_type:?}"
            )),
            None if cri.handler(name).is_some() => {
                out.push(format!("handler {name} has no runtime_type"))
            }
            None => out.push(format!(
                "containerd's merged configuration (config version {}, plugin {}) has no \
                 handler {name}: a file it imports may replace the plugin's table",
                cri.schema, cri.plugin_name
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes";

    #[test]
    fn both_handlers_with_their_types_and_a_loading_cri_pass() {
        let good = format!(
            "version = 2\n{V2}.runc]\nruntime_type = \"io.containerd.runc.v2\"\n\
             {V2}.husk]\nruntime_type = \"io.containerd.husk.v2\"\n\
             {V2}.husk-vm]\nruntime_type = \"io.containerd.husk-vm.v2\"\n"
        );
        assert_eq!(problems(&good, false), Vec::<String>::new());
        assert_eq!(problems(&good, true), Vec::<String>::new());

        let wrong = good.replace("husk-vm.v2", "husk.v2");
        let p = problems(&wrong, false);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("handler husk-vm has runtime_type \"io.containerd.husk.v2\""));

        let only_runc =
            format!("version = 2\n{V2}.runc]\nruntime_type = \"io.containerd.runc.v2\"\n");
        let p = problems(&only_runc, false);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("no handler husk:"), "{p:?}");
        assert_eq!(problems(&only_runc, true), Vec::<String>::new());

        let no_default = good.replace("runc]", "crun]");
        assert!(problems(&no_default, true)[0].contains("\"runc\" has no handler"));
        assert!(problems("version = [", false)[0].contains("not TOML"));
        let disabled = "version = 3\ndisabled_plugins = [\"io.containerd.cri.v1.runtime\"]\n";
        assert_eq!(problems(disabled, false).len(), 1);
        assert!(problems(disabled, true).is_empty());
    }
}
