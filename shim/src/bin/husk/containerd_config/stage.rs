//! `husk containerd-config stage`: the file containerd-config.sh asks the
//! node's containerd to dump (`containerd --config FILE config dump`)
//! before it swaps a new configuration in. It is the new main config,
//! byte for byte, but for its `imports`: resolved now (node.rs) as they
//! will resolve once the swap is done — a file about to be written
//! (`--replace FINAL=STAGED`, husk's drop-in) read from where it is
//! staged, in the place a glob would give it, and a file about to be
//! removed (`--absent FINAL`) left out of the globs that match it. Only
//! `imports` is rewritten (toml_edit keeps every other byte), so what
//! containerd parses is the text that will be swapped in.

use super::handlers::imports_of;
use super::node::{glob_matches, Import, NodeRoot};
use anyhow::Context;
use std::path::{Path, PathBuf};

/// The files the swap writes and removes (node paths).
#[derive(Default)]
pub struct Plan {
    /// (final path, staged path).
    pub replace: Vec<(PathBuf, PathBuf)>,
    pub absent: Vec<PathBuf>,
}

impl Plan {
    fn staged(&self, path: PathBuf) -> PathBuf {
        match self
            .replace
            .iter()
            .find(|(final_path, _)| *final_path == path)
        {
            Some((_, staged)) => staged.clone(),
            None => path,
        }
    }

    /// What the glob `pattern` matches after the swap, given `now`.
    fn after_swap(&self, pattern: &Path, now: Vec<PathBuf>) -> Vec<PathBuf> {
        let mut paths = now;
        for (final_path, _) in &self.replace {
            if glob_matches(pattern, final_path) && !paths.contains(final_path) {
                paths.push(final_path.clone());
            }
        }
        paths.retain(|p| !self.absent.contains(p));
        paths.sort();
        paths
    }
}

/// The text to dump: `main` (a node path, read from `text`) with its
/// imports resolved after the swap. Without `imports`: `text` itself.
pub fn stage(root: &NodeRoot, main: &Path, text: &str, plan: &Plan) -> anyhow::Result<String> {
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("the new {} is not valid TOML", main.display()))?;
    if table.get("imports").is_none() {
        return Ok(text.to_owned());
    }
    let mut resolved = toml_edit::Array::new();
    for import in root.resolve(main, &imports_of(&table, main)?)? {
        let paths = match import {
            // An explicit path stays, present or not: containerd says
            // whether it can do without it.
            Import::Path(p) => vec![p],
            Import::Glob(pattern, now) => plan.after_swap(&pattern, now),
        };
        for path in paths {
            let path = plan.staged(path);
            let path = path
                .to_str()
                .with_context(|| format!("import {} is not UTF-8", path.display()))?;
            resolved.push(path);
        }
    }
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("the new {} is not valid TOML", main.display()))?;
    doc["imports"] = toml_edit::value(resolved);
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_resolve_to_the_files_after_the_swap_and_nothing_else_changes() {
        let dir = tempfile::tempdir().unwrap();
        let conf_d = dir.path().join("etc/containerd/conf.d");
        std::fs::create_dir_all(&conf_d).unwrap();
        for f in ["a.toml", "husk.toml", "z.toml", ".husk.toml.Ab12Cd"] {
            std::fs::write(conf_d.join(f), "").unwrap();
        }
        let root = NodeRoot::new(dir.path());
        let main = Path::new("/etc/containerd/config.toml");
        let text = "# the node's own\nversion = 3\n\
            imports = [\"conf.d/*.toml\", \"/etc/extra.toml\"] # mine\n\
            [plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = 'overlayfs'\n";
        let c = |f: &str| format!("/etc/containerd/conf.d/{f}");
        let install = Plan {
            replace: vec![(c("husk.toml").into(), c(".husk.toml.Ab12Cd").into())],
            absent: vec![],
        };
        let staged = stage(&root, main, text, &install).unwrap();
        let table: toml::Table = staged.parse().unwrap();
        let imports = toml::Value::from(vec![
            c("a.toml"),
            c(".husk.toml.Ab12Cd"),
            c("z.toml"),
            "/etc/extra.toml".to_owned(),
        ]);
        assert_eq!(table["imports"], imports);
        assert!(staged.starts_with("# the node's own\nversion = 3\nimports = "));
        assert!(staged
            .ends_with("[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = 'overlayfs'\n"));

        // The same before husk.toml exists; and for remove, without it.
        std::fs::remove_file(conf_d.join("husk.toml")).unwrap();
        let again: toml::Table = stage(&root, main, text, &install).unwrap().parse().unwrap();
        assert_eq!(again["imports"], imports);
        std::fs::write(conf_d.join("husk.toml"), "").unwrap();
        let remove = Plan {
            replace: vec![],
            absent: vec![c("husk.toml").into()],
        };
        let removed: toml::Table = stage(&root, main, text, &remove).unwrap().parse().unwrap();
        let want = toml::Value::from(vec![c("a.toml"), c("z.toml"), "/etc/extra.toml".into()]);
        assert_eq!(removed["imports"], want);

        // No imports: the text as it is.
        let plain = "version = 2\n[x]\n";
        assert_eq!(stage(&root, main, plain, &install).unwrap(), plain);
        assert!(stage(&root, main, "imports = 3\n", &install).is_err());
    }
}
