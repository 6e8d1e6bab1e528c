//! Which containerd a test runs. Nodes run containerd 1.6, 1.7 and 2.x;
//! the system's own (Debian 12: 1.6) is on PATH, and
//! tests/tools/fetch-containerd.sh unpacks Debian 13's 1.7 and unstable's 2.x
//! into `$HUSK_CACHE/containerd/<name>/usr/bin`, where `<name>` is the
//! release line (`1.7`, `2.1`) or the Debian suite (`trixie`, `unstable`).
//! `HUSK_CONTAINERD` picks the one a whole test run uses (default: the
//! system's); a test that must run on a given line names it
//! (`Release::named`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable naming the containerd of a test run: unset or
/// `system` (containerd on PATH), a release line (`1.6`, `1.7`, `2.1`), a
/// Debian suite fetched into the cache (`trixie`, `unstable`), or a
/// directory holding `containerd` and `ctr`.
pub const ENV: &str = "HUSK_CONTAINERD";

/// The release lines the tests cover: Debian 12's, 13's and unstable's.
pub const LINES: [&str; 3] = ["1.6", "1.7", "2.1"];

/// One containerd installation: the directory holding `containerd`, its
/// `ctr` and its `containerd-shim-runc-v2`, and the version it reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub bin_dir: PathBuf,
    /// As `containerd --version` prints it, e.g. `1.7.24~ds1`.
    pub version: String,
    pub major: u32,
    pub minor: u32,
}

impl Release {
    /// The containerd `HUSK_CONTAINERD` names, resolved once per process;
    /// fails the test with the fix when it is not there.
    pub fn selected() -> Release {
        static SELECTED: std::sync::OnceLock<Result<Release, String>> = std::sync::OnceLock::new();
        SELECTED
            .get_or_init(|| Release::named(&std::env::var(ENV).unwrap_or_default()))
            .clone()
            .unwrap_or_else(|e| panic!("{ENV}: {e}"))
    }

    /// The containerd called `name` (see `ENV`), checked to run here and,
    /// for a release line, to be that line.
    pub fn named(name: &str) -> Result<Release, String> {
        let system = || {
            which("containerd")
                .ok_or_else(|| "no containerd on PATH: run `sudo bash scripts/setup.sh`".to_owned())
        };
        let bin_dir = if name.is_empty() || name == "system" {
            system()?
        } else if Path::new(name).is_absolute() {
            PathBuf::from(name)
        } else if name
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            return Err(format!(
                "{name:?} is not a release line, suite or absolute directory"
            ));
        } else {
            // The system's own, when it is the line asked for.
            match system().ok().and_then(|d| Release::at(&d).ok()) {
                Some(r) if r.line() == name => r.bin_dir,
                _ => cache_dir().join(name).join("usr/bin"),
            }
        };
        let release = Release::at(&bin_dir).map_err(|e| {
            format!("{e}: run `sudo bash tests/tools/fetch-containerd.sh` (it fetches 1.7 and 2.x)")
        })?;
        if name.contains('.') && !name.starts_with('/') && release.line() != name {
            return Err(format!(
                "{} is containerd {}, not {name}",
                bin_dir.display(),
                release.version
            ));
        }
        Ok(release)
    }

    /// The containerd in `bin_dir`, asked for its version.
    pub fn at(bin_dir: &Path) -> Result<Release, String> {
        let containerd = bin_dir.join("containerd");
        for bin in [&containerd, &bin_dir.join("ctr")] {
            if !bin.exists() {
                return Err(format!("no {}", bin.display()));
            }
        }
        let out = Command::new(&containerd)
            .arg("--version")
            .output()
            .map_err(|e| format!("running {}: {e}", containerd.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (version, major, minor) = parse_version(&text)
            .ok_or_else(|| format!("{} --version said {text:?}", containerd.display()))?;
        Ok(Release {
            bin_dir: bin_dir.to_owned(),
            version,
            major,
            minor,
        })
    }

    pub fn containerd(&self) -> PathBuf {
        self.bin_dir.join("containerd")
    }

    pub fn ctr(&self) -> PathBuf {
        self.bin_dir.join("ctr")
    }

    /// `major.minor`, as `LINES` names them.
    pub fn line(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }

    /// The config schema this containerd reads natively: 3 from 2.0
    /// (`io.containerd.cri.v1.*` plugins, drop-ins merged deeply), 2 before.
    pub fn config_version(&self) -> u32 {
        if self.major >= 2 {
            3
        } else {
            2
        }
    }

    /// At least `major.minor`.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "containerd {} ({})",
            self.version,
            self.containerd().display()
        )
    }
}

/// Where tests/tools/fetch-containerd.sh unpacks other releases.
fn cache_dir() -> PathBuf {
    std::env::var_os("HUSK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/husk"))
        .join("containerd")
}

/// The directory on PATH holding an executable `name`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .find(|d| d.join(name).is_file())
        .filter(|d| d.is_absolute())
}

/// `containerd <module> <version> <revision>` -> (version, major, minor).
fn parse_version(text: &str) -> Option<(String, u32, u32)> {
    let version = text.split_whitespace().nth(2)?;
    let mut parts = version.trim_start_matches('v').split(['.', '-', '~', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((version.to_owned(), major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_each_line_are_parsed() {
        let v = |t: &str| parse_version(t).map(|(_, a, b)| (a, b));
        assert_eq!(
            v("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n"),
            Some((1, 6))
        );
        assert_eq!(
            v("containerd github.com/containerd/containerd/v2 2.1.9+unknown \n"),
            Some((2, 1))
        );
        assert_eq!(
            v("containerd github.com/containerd/containerd v1.7.24 abc\n"),
            Some((1, 7))
        );
        assert_eq!(v("containerd: command not found"), None);
        assert_eq!(v(""), None);
    }

    #[test]
    fn bad_names_are_refused_naming_them() {
        let e = Release::named("../../etc").unwrap_err();
        assert!(e.contains("../../etc"), "{e}");
        let e = Release::named("/nonexistent/husk").unwrap_err();
        assert!(e.contains("/nonexistent/husk/containerd"), "{e}");
    }
}
