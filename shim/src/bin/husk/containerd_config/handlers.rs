//! `husk containerd-config handlers`: which of a node's containerd config
//! files define a runtime handler called `husk` or `husk-vm` — the main
//! file and every file it imports, transitively, as containerd would read
//! them (node.rs). containerd-config.sh refuses to add husk's handlers
//! when one exists outside its own markers and files, naming the file.

use super::node::{Import, NodeRoot, MAX_FILES};
use crate::cri_toml::handlers_in;
use anyhow::{bail, Context};
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// One handler found: the file (a node path) and the handler's name.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    pub file: PathBuf,
    pub handler: String,
    pub plugin: &'static str,
}

/// The `imports` of a parsed config file (an absent key: none).
pub fn imports_of(table: &toml::Table, file: &Path) -> anyhow::Result<Vec<String>> {
    let Some(imports) = table.get("imports") else {
        return Ok(Vec::new());
    };
    let list = imports
        .as_array()
        .with_context(|| format!("{}: imports is not an array", file.display()))?;
    list.iter()
        .map(|i| {
            i.as_str()
                .map(str::to_owned)
                .with_context(|| format!("{}: an imports entry is not a string", file.display()))
        })
        .collect()
}

/// husk's handlers (with `all`: every handler) in `main` (read from
/// `main_host`, named `main` as the node sees it) and the files it
/// imports; `skip`: files not read (husk's own drop-in). An imported file that does not exist is passed over:
/// containerd's own check of the staged configuration reports it.
pub fn find(
    root: &NodeRoot,
    main_host: &Path,
    main: &Path,
    skip: &[PathBuf],
    all: bool,
) -> anyhow::Result<Vec<Found>> {
    let text = std::fs::read_to_string(main_host)
        .with_context(|| format!("reading {}", main_host.display()))?;
    let mut found = Vec::new();
    let mut seen = BTreeSet::from([main.to_owned()]);
    let mut pending = VecDeque::from([(main.to_owned(), text)]);
    while let Some((file, text)) = pending.pop_front() {
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("{} is not valid TOML", file.display()))?;
        found.extend(
            handlers_in(&table, all)
                .into_iter()
                .map(|(handler, plugin)| Found {
                    file: file.clone(),
                    handler,
                    plugin,
                }),
        );
        for import in root.resolve(&file, &imports_of(&table, &file)?)? {
            let paths = match import {
                Import::Path(p) => vec![p],
                Import::Glob(_, matches) => matches,
            };
            for path in paths {
                if skip.contains(&path) || !seen.insert(path.clone()) {
                    continue;
                }
                if seen.len() > MAX_FILES {
                    bail!("{} imports more than {MAX_FILES} files", main.display());
                }
                if let Some(text) = root.read(&path)? {
                    pending.push_back((path, text));
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, node: &str, text: &str) {
        let path = dir.join(node.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn handlers_in_imported_drop_ins_are_found_and_husks_own_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "/etc/containerd/config.toml",
            "version = 3\nimports = [\"/etc/containerd/conf.d/*.toml\", \"more.toml\"]\n",
        );
        write(
            d,
            "/etc/containerd/conf.d/10-vm.toml",
            "[plugins.\"io.containerd.cri.v1.runtime\".containerd]\n\
             runtimes.\"husk-vm\".runtime_type = \"io.containerd.husk-vm.v2\"\n",
        );
        write(
            d,
            "/etc/containerd/conf.d/husk.toml",
            "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.husk]\n",
        );
        // Transitively, and an import cycle ends.
        write(
            d,
            "/etc/containerd/more.toml",
            "imports = [\"config.toml\", \"missing.toml\"]\n\
             [plugins]\n\"io.containerd.grpc.v1.cri\" = { containerd = { runtimes = { husk = {} } } }\n",
        );
        let root = NodeRoot::new(d);
        let main = Path::new("/etc/containerd/config.toml");
        let skip = [PathBuf::from("/etc/containerd/conf.d/husk.toml")];
        let found = find(&root, &root.host(main), main, &skip, false).unwrap();
        assert_eq!(
            found,
            [
                Found {
                    file: "/etc/containerd/conf.d/10-vm.toml".into(),
                    handler: "husk-vm".into(),
                    plugin: "io.containerd.cri.v1.runtime",
                },
                Found {
                    file: "/etc/containerd/more.toml".into(),
                    handler: "husk".into(),
                    plugin: "io.containerd.grpc.v1.cri",
                },
            ]
        );
    }

    #[test]
    fn a_file_that_is_not_toml_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "/etc/containerd/config.toml",
            "imports = [\"x.toml\"]\n",
        );
        write(dir.path(), "/etc/containerd/x.toml", "[plugins\n");
        let root = NodeRoot::new(dir.path());
        let main = Path::new("/etc/containerd/config.toml");
        let err = find(&root, &root.host(main), main, &[], false).unwrap_err();
        assert!(format!("{err:#}").contains("/etc/containerd/x.toml is not valid TOML"));
    }
}
