//! VM templates: a template's snapshot and a clone's restore
//! (docs/husk-vmm.md, "Snapshot and restore"); for now the state file.

pub(crate) mod format;
