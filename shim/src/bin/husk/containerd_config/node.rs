//! A node's containerd config files as containerd finds them, read from
//! under the node's root (`--root`: the DaemonSet mounts the node at
//! /host; / on the node itself). Paths in config files are the node's;
//! [`NodeRoot::host`] maps them to this machine's. `imports` are resolved
//! as containerd's config loader does (`resolveImports` in
//! services/server/config/config.go, 1.7 and 2.x): each entry cleaned,
//! a relative one joined to the importing file's directory, and one that
//! contains `*` expanded as a glob (Go's filepath.Glob: `*`, `?` and
//! classes within one path component, matches sorted).

use anyhow::{bail, Context};
use std::path::{Component, Path, PathBuf};

/// What containerd reads in one file: at most this many are followed.
pub const MAX_FILES: usize = 1000;

pub struct NodeRoot {
    root: PathBuf,
}

/// One `imports` entry, resolved.
#[derive(Debug, PartialEq, Eq)]
pub enum Import {
    /// A path without `*`: imported as it is (containerd fails when it
    /// is missing).
    Path(PathBuf),
    /// A glob and the node paths it matches now, sorted.
    Glob(PathBuf, Vec<PathBuf>),
}

fn options() -> glob::MatchOptions {
    glob::MatchOptions {
        case_sensitive: true,
        // Go's `*` never matches a separator; it does match a leading dot.
        require_literal_separator: true,
        require_literal_leading_dot: false,
    }
}

impl NodeRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// This machine's path of the node's absolute path `node`.
    pub fn host(&self, node: &Path) -> PathBuf {
        let relative = node.strip_prefix("/").unwrap_or(node);
        self.root.join(relative)
    }

    /// The node's path of `host`, which is under the root.
    pub fn node(&self, host: &Path) -> anyhow::Result<PathBuf> {
        let rest = clean(host)
            .strip_prefix(clean(&self.root))
            .map(Path::to_owned)
            .with_context(|| {
                format!(
                    "{} is not under --root {}",
                    host.display(),
                    self.root.display()
                )
            })?;
        Ok(Path::new("/").join(rest))
    }

    /// The file's text, None when it does not exist.
    pub fn read(&self, node: &Path) -> anyhow::Result<Option<String>> {
        match std::fs::read_to_string(self.host(node)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", node.display())),
        }
    }

    /// The entries of `importer`'s `imports`, resolved.
    pub fn resolve(&self, importer: &Path, imports: &[String]) -> anyhow::Result<Vec<Import>> {
        let dir = importer.parent().unwrap_or(Path::new("/"));
        imports
            .iter()
            .map(|entry| {
                let path = clean(&dir.join(entry));
                if entry.contains('*') {
                    let matches = self.glob(&path)?;
                    Ok(Import::Glob(path, matches))
                } else {
                    Ok(Import::Path(path))
                }
            })
            .collect()
    }

    /// The node paths the glob `pattern` (a node path) matches, sorted.
    pub fn glob(&self, pattern: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let root = self
            .root
            .to_str()
            .with_context(|| format!("--root {} is not UTF-8", self.root.display()))?;
        let pattern_str = pattern
            .to_str()
            .with_context(|| format!("import {} is not UTF-8", pattern.display()))?;
        let full = format!(
            "{}{}",
            glob::Pattern::escape(root.trim_end_matches('/')),
            pattern_str
        );
        let mut out = Vec::new();
        for entry in glob::glob_with(&full, options())
            .with_context(|| format!("import {pattern_str} is not a valid glob"))?
        {
            let host = entry.with_context(|| format!("expanding import {pattern_str}"))?;
            out.push(self.node(&host)?);
            if out.len() > MAX_FILES {
                bail!("import {pattern_str} matches more than {MAX_FILES} files");
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Whether the glob `pattern` matches `path` (both node paths).
pub fn glob_matches(pattern: &Path, path: &Path) -> bool {
    pattern
        .to_str()
        .and_then(|p| glob::Pattern::new(p).ok())
        .is_some_and(|p| p.matches_path_with(path, options()))
}

/// `path` with `.` and `..` taken out lexically, as Go's filepath.Clean.
pub fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                if !out.pop() && !path.is_absolute() {
                    out.push("..");
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_between_the_node_and_this_machine() {
        let root = NodeRoot::new("/host");
        assert_eq!(
            root.host(Path::new("/etc/containerd")),
            Path::new("/host/etc/containerd")
        );
        assert_eq!(
            root.node(Path::new("/host/etc/x.toml")).unwrap(),
            Path::new("/etc/x.toml")
        );
        assert!(root.node(Path::new("/etc/x.toml")).is_err());
        let slash = NodeRoot::new("/");
        assert_eq!(slash.host(Path::new("/etc/a")), Path::new("/etc/a"));
        assert_eq!(
            slash.node(Path::new("/etc/a")).unwrap(),
            Path::new("/etc/a")
        );
        assert_eq!(
            clean(Path::new("/etc/containerd/../x/./y")),
            Path::new("/etc/x/y")
        );
        assert_eq!(clean(Path::new("/../a")), Path::new("/a"));
    }

    #[test]
    fn imports_resolve_as_containerd_resolves_them() {
        let dir = tempfile::tempdir().unwrap();
        let conf_d = dir.path().join("etc/containerd/conf.d");
        std::fs::create_dir_all(&conf_d).unwrap();
        for f in [
            "b.toml",
            "a.toml",
            ".hidden.toml",
            "c.toml.new",
            "sub/d.toml",
        ] {
            let p = conf_d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        let root = NodeRoot::new(dir.path());
        let main = Path::new("/etc/containerd/config.toml");
        let imports = [
            "conf.d/*.toml".to_owned(),
            "/etc/other.toml".to_owned(),
            "../containerd/./x.toml".to_owned(),
        ];
        let got = root.resolve(main, &imports).unwrap();
        let n = |s: &str| PathBuf::from(format!("/etc/containerd/conf.d/{s}"));
        assert_eq!(
            got,
            [
                Import::Glob(
                    n("*.toml"),
                    vec![n(".hidden.toml"), n("a.toml"), n("b.toml")]
                ),
                Import::Path("/etc/other.toml".into()),
                Import::Path("/etc/containerd/x.toml".into()),
            ]
        );
        assert!(glob_matches(&n("*.toml"), &n("husk.toml")));
        assert!(!glob_matches(&n("*.toml"), &n(".husk.toml.AbC123")));
        assert!(!glob_matches(&n("*.toml"), &n("sub/d.toml")));
    }
}
