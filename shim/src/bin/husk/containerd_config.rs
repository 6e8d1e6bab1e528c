//! `husk containerd-config`: containerd's configuration read with a TOML
//! parser, for scripts/containerd-config.sh (POSIX sh, which cannot parse
//! TOML): which files define husk's handlers, the staged config to dump,
//! and whether a dump holds what husk needs. One file per subcommand
//! under `containerd_config/`; where each schema keeps CRI: cri_toml.rs.

mod handlers;
mod node;
mod stage;
mod verify;

use crate::args::{Args, UsageError};
use anyhow::Context;
use node::NodeRoot;
use std::path::{Path, PathBuf};

pub const USAGE: &str =
    "  containerd-config handlers [--all] [--root DIR] [--as PATH] [--skip PATH]... FILE
        The runtime handlers called husk or husk-vm (--all: every one) that
        FILE and the files it imports define, one `PATH NAME PLUGIN` line
        each (node paths; DIR: the node's root; --as: FILE's path on the
        node; --skip: files not read).
  containerd-config stage [--root DIR] [--as PATH] [--replace FINAL=STAGED]...
        [--absent FINAL]... FILE OUT
        OUT: FILE with its imports resolved as they will be once FINAL is
        written from STAGED and each --absent FINAL removed.
  containerd-config verify-dump [--removed] DUMP
        Whether `containerd config dump` output DUMP has both husk
        handlers with their runtime_type and a CRI plugin that loads
        (--removed: a CRI plugin that loads); exits 1 when not.";

pub fn run(mut args: Args) -> anyhow::Result<i32> {
    match args.positional().as_deref() {
        Some("handlers") => handlers(args),
        Some("stage") => stage(args),
        Some("verify-dump") => verify(args),
        _ => Err(UsageError("husk containerd-config handlers|stage|verify-dump".into()).into()),
    }
}

/// --root (default /) and FILE's path on the node (--as, else FILE's own).
fn root_and_file(args: &mut Args) -> anyhow::Result<(NodeRoot, PathBuf, PathBuf)> {
    let root = NodeRoot::new(args.value("--root")?.unwrap_or_else(|| "/".into()));
    let shown = args.value("--as")?;
    let file = PathBuf::from(
        args.positional()
            .ok_or_else(|| UsageError("a config FILE is needed".into()))?,
    );
    let node_path = match shown {
        Some(p) => PathBuf::from(p),
        None => root.node(&std::path::absolute(&file)?)?,
    };
    Ok((root, file, node_path))
}

fn node_paths(args: &mut Args, name: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    while let Some(v) = args.value(name)? {
        out.push(PathBuf::from(v));
    }
    Ok(out)
}

fn handlers(mut args: Args) -> anyhow::Result<i32> {
    let all = args.flag("--all");
    let skip = node_paths(&mut args, "--skip")?;
    let (root, file, node_path) = root_and_file(&mut args)?;
    args.finish()?;
    for found in handlers::find(&root, &file, &node_path, &skip, all)? {
        println!(
            "{} {} {}",
            found.file.display(),
            found.handler,
            found.plugin
        );
    }
    Ok(0)
}

fn stage(mut args: Args) -> anyhow::Result<i32> {
    let mut plan = stage::Plan {
        absent: node_paths(&mut args, "--absent")?,
        ..Default::default()
    };
    for pair in node_paths(&mut args, "--replace")? {
        let pair = pair.to_string_lossy().into_owned();
        let (final_path, staged) = pair
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--replace {pair}: FINAL=STAGED")))?;
        plan.replace.push((final_path.into(), staged.into()));
    }
    let (root, file, node_path) = root_and_file(&mut args)?;
    let out = PathBuf::from(
        args.positional()
            .ok_or_else(|| UsageError("stage needs FILE and OUT".into()))?,
    );
    args.finish()?;
    let text = read(&file)?;
    let staged = stage::stage(&root, &node_path, &text, &plan)?;
    std::fs::write(&out, staged).with_context(|| format!("writing {}", out.display()))?;
    Ok(0)
}

fn verify(mut args: Args) -> anyhow::Result<i32> {
    let removed = args.flag("--removed");
    let dump = PathBuf::from(
        args.positional()
            .ok_or_else(|| UsageError("verify-dump needs DUMP".into()))?,
    );
    args.finish()?;
    let problems = verify::problems(&read(&dump)?, removed);
    for p in &problems {
        eprintln!("husk: {p}");
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
