//! Why a husk-vmm command line or [`VmmConfig`](crate::VmmConfig) is
//! refused. Every error names the flag it is about, as husk-vmm's user
//! (the launcher, or a person) wrote it.

use crate::tap::TapError;
use crate::MacError;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--help` or `-h`: the caller prints [`USAGE`](crate::USAGE).
    #[error("usage asked for")]
    Help,
    #[error("unknown argument {arg:?}")]
    UnknownArgument { arg: String },
    #[error("{flag} given twice")]
    Duplicate { flag: &'static str },
    #[error("{flag} needs a value")]
    MissingValue { flag: &'static str },
    #[error("{flag} is required")]
    Required { flag: &'static str },
    #[error("{flag} and {with} go together")]
    Together {
        flag: &'static str,
        with: &'static str,
    },
    #[error("{flag} cannot go with {with}: {why}")]
    Conflict {
        flag: &'static str,
        with: &'static str,
        why: &'static str,
    },
    #[error("{flag} needs {needs}")]
    Needs {
        flag: &'static str,
        needs: &'static str,
    },
    #[error("{flag} {value:?}: {source}")]
    Value {
        flag: &'static str,
        value: String,
        #[source]
        source: ValueError,
    },
}

impl ConfigError {
    pub(crate) fn value(flag: &'static str, value: &str, source: ValueError) -> Self {
        ConfigError::Value {
            flag,
            value: value.into(),
            source,
        }
    }
}

/// What is wrong with one flag's value.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("contains a NUL byte")]
    Nul,
    #[error("not a whole number from {min} to {max}: {source}")]
    NotANumber {
        min: u64,
        max: u64,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("must be from {min} to {max}")]
    OutOfRange { min: u64, max: u64 },
    #[error("expected kill, log or off")]
    SeccompMode,
    #[error("virtio-fs tags are 1 to {} bytes", crate::limits::FS_TAG_MAX)]
    FsTag,
    #[error("expected fd:N with N a file descriptor number, or a TAP name not starting with fd:")]
    Descriptor,
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Mac(#[from] MacError),
}

/// `value` of `flag` within `min..=max`.
pub(crate) fn check_range(
    flag: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::value(
            flag,
            &value.to_string(),
            ValueError::OutOfRange { min, max },
        ))
    }
}
