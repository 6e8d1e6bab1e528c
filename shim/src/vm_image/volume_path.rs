//! A volume an annotation names by its path in the container
//! (`io.husk.vm.root-disk`, `io.husk.vm.state`): the path checked to be a
//! clean absolute one, and the host directory CRI mounts there, checked to
//! be a directory mounted read-write.

use super::error::VmError;
use serde_json::Value;
use std::path::PathBuf;

/// `path`, the value of the annotation `key`, as a clean absolute path in
/// the container (no `.`, `..` or empty component; a trailing `/` cut).
pub fn container_path(key: &str, path: &str) -> Result<String, VmError> {
    let trimmed = path.trim_end_matches('/');
    let clean = path.starts_with('/')
        && trimmed.len() > 1
        && path.len() <= 1024
        && !path.contains(['\0', '\n'])
        && trimmed[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !clean {
        return Err(VmError::Invalid(format!(
            "{key}: {path:?} is not a clean absolute path in the container"
        )));
    }
    Ok(trimmed.to_owned())
}

/// The host directory mounted read-write at `path` in the container (the
/// volume the annotation `key` names), if the spec mounts anything there;
/// a read-only mount, or one of something that is not a directory, is
/// refused: the VM writes what it keeps there.
pub fn mounted_dir(spec: &Value, key: &str, path: &str) -> Result<Option<PathBuf>, VmError> {
    let Some(m) = mount(spec, path) else {
        return Ok(None);
    };
    let bad = |why: &str| VmError::Invalid(format!("{key}: {path:?} {why}"));
    let source = m.get("source").and_then(Value::as_str).unwrap_or("");
    let options = m.get("options").and_then(Value::as_array);
    if options
        .into_iter()
        .flatten()
        .any(|o| o.as_str() == Some("ro"))
    {
        return Err(bad(
            "is mounted read-only; the VM writes what it keeps there",
        ));
    }
    let host = PathBuf::from(source);
    let is_dir = std::fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir());
    if !host.is_absolute() || !is_dir {
        return Err(bad("is mounted from something that is not a directory"));
    }
    Ok(Some(host))
}

/// The spec's mount at container path `path`.
fn mount<'a>(spec: &'a Value, path: &str) -> Option<&'a Value> {
    spec.get("mounts")?.as_array()?.iter().find(|m| {
        m.get("destination")
            .and_then(Value::as_str)
            .map(|d| d.trim_end_matches('/'))
            == Some(path)
    })
}
