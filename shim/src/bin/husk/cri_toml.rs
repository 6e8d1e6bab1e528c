//! Where containerd's configuration keeps the CRI plugin and its runtime
//! handlers, per config schema: 2 (containerd 1.x) under
//! `plugins."io.containerd.grpc.v1.cri"`, 3 (2.x) under
//! `plugins."io.containerd.cri.v1.runtime"`, and the old schema 1 (a file
//! without a `version` line) under `plugins.cri`. Read by `husk check` (a
//! `containerd config dump`) and `husk containerd-config` (config files,
//! and the dump of a staged configuration). Parsed with the `toml` crate:
//! quoted keys, dotted keys and inline tables are all the same table.

/// husk's two runtime handlers and the runtime_type each must have
/// (config/containerd-cri.toml, config/containerd-husk-v3.toml).
pub const HANDLERS: [(&str, &str); 2] = [
    ("husk", husk_shim::RUNTIME_ID),
    ("husk-vm", husk_shim::VM_RUNTIME_ID),
];

/// The CRI plugin's name in every schema, newest first.
pub const CRI_PLUGINS: [&str; 3] = [
    "io.containerd.cri.v1.runtime",
    "io.containerd.grpc.v1.cri",
    "cri",
];

/// A file's `version`, 1 when it has none (containerd's rule).
pub fn schema(table: &toml::Table) -> i64 {
    table
        .get("version")
        .and_then(|v| v.as_integer())
        .unwrap_or(1)
}

/// The CRI plugin's name in a configuration of `schema`.
pub fn cri_plugin(schema: i64) -> &'static str {
    match schema {
        s if s >= 3 => CRI_PLUGINS[0],
        2 => CRI_PLUGINS[1],
        _ => CRI_PLUGINS[2],
    }
}

/// The CRI plugin of a merged configuration (a dump).
pub struct Cri<'a> {
    pub schema: i64,
    pub plugin_name: &'static str,
    /// The plugin is in `disabled_plugins`: no pods at all.
    pub disabled: bool,
    pub plugin: Option<&'a toml::Value>,
    /// `containerd.runtimes`: the runtime handlers by name.
    pub runtimes: Option<&'a toml::Table>,
    /// `containerd.default_runtime_name` (containerd's default: runc).
    pub default: &'a str,
}

impl<'a> Cri<'a> {
    pub fn of(table: &'a toml::Table) -> Self {
        let schema = schema(table);
        let plugin_name = cri_plugin(schema);
        let disabled = table
            .get("disabled_plugins")
            .and_then(|d| d.as_array())
            .is_some_and(|d| d.iter().any(|p| p.as_str() == Some(plugin_name)));
        let plugin = table.get("plugins").and_then(|p| p.get(plugin_name));
        let containerd = plugin.and_then(|p| p.get("containerd"));
        Cri {
            schema,
            plugin_name,
            disabled,
            plugin,
            runtimes: containerd
                .and_then(|c| c.get("runtimes"))
                .and_then(|r| r.as_table()),
            default: containerd
                .and_then(|c| c.get("default_runtime_name"))
                .and_then(|d| d.as_str())
                .unwrap_or("runc"),
        }
    }

    /// The handler called `name`, if the plugin has one.
    pub fn handler(&self, name: &str) -> Option<&'a toml::Value> {
        self.runtimes.and_then(|r| r.get(name))
    }

    /// The handler's runtime_type, if it has one.
    pub fn runtime_type(&self, name: &str) -> Option<&'a str> {
        self.handler(name)
            .and_then(|h| h.get("runtime_type"))
            .and_then(|t| t.as_str())
    }
}

/// The runtime handlers a config file defines — husk's (`husk`,
/// `husk-vm`) only, or with `all` every one — under the CRI plugin of any
/// schema (a drop-in may have no version line and be migrated by
/// containerd), each with the plugin it is under.
pub fn handlers_in(file: &toml::Table, all: bool) -> Vec<(String, &'static str)> {
    let Some(plugins) = file.get("plugins").and_then(|p| p.as_table()) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for plugin in CRI_PLUGINS {
        let runtimes = plugins
            .get(plugin)
            .and_then(|p| p.get("containerd"))
            .and_then(|c| c.get("runtimes"))
            .and_then(|r| r.as_table());
        for name in runtimes.into_iter().flat_map(|r| r.keys()) {
            if all || HANDLERS.iter().any(|(h, _)| h == name) {
                found.push((name.clone(), plugin));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn handlers_are_found_however_the_keys_are_written() {
        let quoted = "version = 2\n\
            [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.\"husk\"]\n\
            runtime_type = \"x\"\n";
        assert_eq!(
            handlers_in(&table(quoted), false),
            [("husk".to_owned(), "io.containerd.grpc.v1.cri")]
        );
        let dotted = "version = 3\n\
            [plugins.'io.containerd.cri.v1.runtime'.containerd]\n\
            runtimes.husk-vm.runtime_type = \"y\"\n";
        assert_eq!(
            handlers_in(&table(dotted), false),
            [("husk-vm".to_owned(), "io.containerd.cri.v1.runtime")]
        );
        let inline =
            "[plugins]\ncri = { containerd = { runtimes = { husk = {}, \"husk-vm\" = {} } } }\n";
        assert_eq!(
            handlers_in(&table(inline), false),
            [("husk".to_owned(), "cri"), ("husk-vm".to_owned(), "cri")]
        );
        // Another handler, or husk's name under another plugin, is not one.
        let other = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.huskx]\n\
            [plugins.other.containerd.runtimes.husk]\n";
        assert!(handlers_in(&table(other), false).is_empty());
        assert_eq!(
            handlers_in(&table(other), true),
            [("huskx".to_owned(), "io.containerd.grpc.v1.cri")]
        );
    }

    #[test]
    fn the_cri_plugin_of_each_schema() {
        let dump = table(
            "version = 3\ndisabled_plugins = []\n\
             [plugins.'io.containerd.cri.v1.runtime'.containerd]\n\
             default_runtime_name = \"crun\"\n\
             runtimes.husk.runtime_type = \"io.containerd.husk.v2\"\n",
        );
        let cri = Cri::of(&dump);
        assert_eq!(cri.plugin_name, "io.containerd.cri.v1.runtime");
        assert_eq!(cri.default, "crun");
        assert!(!cri.disabled);
        assert_eq!(cri.runtime_type("husk"), Some("io.containerd.husk.v2"));
        assert_eq!(cri.runtime_type("husk-vm"), None);
        let v2 = table("version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n");
        let cri = Cri::of(&v2);
        assert!(cri.disabled);
        assert_eq!(cri.default, "runc");
        assert_eq!(Cri::of(&table("")).plugin_name, "cri");
    }
}
