//! The command line of a `husk` subcommand: flags, `--name VALUE` (or
//! `--name=VALUE`) options and positionals, taken out one by one; what is
//! left at the end is an error naming it. Also the configuration every
//! subcommand loads.

use anyhow::Context;
use husk_config::Config;
use std::path::{Path, PathBuf};

/// A command line the subcommand cannot take (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0} (husk help: usage)")]
pub struct UsageError(pub String);

pub struct Args {
    rest: Vec<String>,
}

impl Args {
    pub fn new(rest: Vec<String>) -> Self {
        Self { rest }
    }

    /// Takes the first argument: the subcommand.
    pub fn command(&mut self) -> Option<String> {
        (!self.rest.is_empty()).then(|| self.rest.remove(0))
    }

    /// Takes `--name`; true when it was there.
    pub fn flag(&mut self, name: &str) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| a != name);
        self.rest.len() != before
    }

    /// Takes `--name VALUE` or `--name=VALUE`.
    pub fn value(&mut self, name: &str) -> Result<Option<String>, UsageError> {
        let prefix = format!("{name}=");
        if let Some(i) = self.rest.iter().position(|a| a.starts_with(&prefix)) {
            let arg = self.rest.remove(i);
            return Ok(Some(arg[prefix.len()..].to_owned()));
        }
        let Some(i) = self.rest.iter().position(|a| a == name) else {
            return Ok(None);
        };
        if i + 1 >= self.rest.len() {
            return Err(UsageError(format!("{name} needs a value")));
        }
        let value = self.rest.remove(i + 1);
        self.rest.remove(i);
        Ok(Some(value))
    }

    /// Takes the first argument that is not an option.
    pub fn positional(&mut self) -> Option<String> {
        let i = self.rest.iter().position(|a| !a.starts_with("--"))?;
        Some(self.rest.remove(i))
    }

    /// Fails when anything was not taken.
    pub fn finish(self) -> Result<(), UsageError> {
        match self.rest.first() {
            None => Ok(()),
            Some(a) => Err(UsageError(format!("unexpected argument {a:?}"))),
        }
    }
}

/// Where the configuration comes from.
pub enum Source {
    File(PathBuf),
    Defaults,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Defaults => f.write_str("built-in defaults (no configuration file)"),
        }
    }
}

/// The file `--config` names, else `$HUSK_CONFIG`, else the default path
/// when it exists; None: the built-in defaults.
pub fn config_source(args: &mut Args) -> Result<Source, UsageError> {
    if let Some(path) = args.value("--config")? {
        return Ok(Source::File(path.into()));
    }
    if let Some(path) = std::env::var_os(husk_config::CONFIG_ENV) {
        return Ok(Source::File(path.into()));
    }
    let default = Path::new(husk_config::DEFAULT_CONFIG_PATH);
    Ok(if default.exists() {
        Source::File(default.to_owned())
    } else {
        Source::Defaults
    })
}

/// A tokio runtime for one subcommand.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Loads the configuration from `source`.
pub fn load(source: &Source) -> anyhow::Result<Config> {
    match source {
        Source::File(p) => Config::load(p).with_context(|| "loading the husk configuration"),
        Source::Defaults => {
            let c = Config::default();
            c.validate()?;
            Ok(c)
        }
    }
}
