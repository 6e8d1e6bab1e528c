//! The error of planning: which field of the spec, and what is wrong with
//! it. Also the string conversions every concern uses, since a string with
//! a NUL byte cannot reach a system call.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A value the guest cannot use, or does not honour.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A path of the field could not be resolved inside the rootfs.
    #[error("{field}: {source}")]
    Resolve {
        field: String,
        #[source]
        source: std::io::Error,
    },
    /// libseccomp refused the profile.
    #[error("{field}: {source}")]
    Seccomp {
        field: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("linux.seccomp: exporting the filter: {0}")]
    SeccompExport(#[source] std::io::Error),
}

impl SpecError {
    /// The spec's field the error is about, as `mounts[2].source`.
    pub fn field(&self) -> &str {
        match self {
            SpecError::Invalid { field, .. }
            | SpecError::Resolve { field, .. }
            | SpecError::Seccomp { field, .. } => field,
            SpecError::SeccompExport(_) => "linux.seccomp",
        }
    }
}

pub(crate) fn bad(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

pub(crate) fn cstring(field: &str, s: &str) -> Result<CString, SpecError> {
    CString::new(s).map_err(|_| bad(field, format!("{s:?} contains a NUL byte")))
}

pub(crate) fn path_cstring(field: &str, p: &Path) -> Result<CString, SpecError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| bad(field, format!("{} contains a NUL byte", p.display())))
}
