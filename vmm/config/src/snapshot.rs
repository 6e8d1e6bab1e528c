//! VM templates on the command line: `--memory-file` with `--snapshot-to`
//! (boot a template whose RAM is a shared file and which writes its state
//! on SIGUSR1) or with `--restore-from` (a clone of it), and which other
//! flags each allows. docs/husk-vmm.md, "Snapshot and restore", says why.

use crate::error::ConfigError;
use crate::flag;
use std::path::{Path, PathBuf};

/// The role of a VM in a template: where its RAM lives and where its
/// state goes to or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// `--memory-file PATH --snapshot-to STATE`: boots as usual with guest
    /// RAM in the new file PATH (created, mapped shared: put it on tmpfs);
    /// STATE is created at start, and SIGUSR1 pauses the VM, writes its
    /// state there and ends husk-vmm.
    Template {
        memory_file: PathBuf,
        state_file: PathBuf,
    },
    /// `--memory-file PATH --restore-from STATE`: runs a template's guest
    /// on from where its snapshot stopped, its RAM the template's file
    /// PATH opened read-only and mapped private (copy on write).
    Clone {
        memory_file: PathBuf,
        state_file: PathBuf,
    },
}

impl Snapshot {
    pub fn memory_file(&self) -> &Path {
        match self {
            Snapshot::Template { memory_file, .. } | Snapshot::Clone { memory_file, .. } => {
                memory_file
            }
        }
    }

    pub fn state_file(&self) -> &Path {
        match self {
            Snapshot::Template { state_file, .. } | Snapshot::Clone { state_file, .. } => {
                state_file
            }
        }
    }

    /// The flag that made this role, for errors.
    pub(crate) fn flag(&self) -> &'static str {
        match self {
            Snapshot::Template { .. } => flag::SNAPSHOT_TO,
            Snapshot::Clone { .. } => flag::RESTORE_FROM,
        }
    }

    /// The role the three flags, as given, describe.
    pub(crate) fn from_flags(
        memory_file: Option<PathBuf>,
        snapshot_to: Option<PathBuf>,
        restore_from: Option<PathBuf>,
    ) -> Result<Option<Snapshot>, ConfigError> {
        match (memory_file, snapshot_to, restore_from) {
            (None, None, None) => Ok(None),
            (_, Some(_), Some(_)) => Err(ConfigError::Conflict {
                flag: flag::SNAPSHOT_TO,
                with: flag::RESTORE_FROM,
                why: "a VM is a template or a clone of one, not both",
            }),
            (Some(memory_file), Some(state_file), None) => Ok(Some(Snapshot::Template {
                memory_file,
                state_file,
            })),
            (Some(memory_file), None, Some(state_file)) => Ok(Some(Snapshot::Clone {
                memory_file,
                state_file,
            })),
            (Some(_), None, None) => Err(ConfigError::Needs {
                flag: flag::MEMORY_FILE,
                needs: "--snapshot-to or --restore-from",
            }),
            (None, Some(_), None) => Err(ConfigError::Needs {
                flag: flag::SNAPSHOT_TO,
                needs: flag::MEMORY_FILE,
            }),
            (None, None, Some(_)) => Err(ConfigError::Needs {
                flag: flag::RESTORE_FROM,
                needs: flag::MEMORY_FILE,
            }),
        }
    }
}
