//! The files a husk-vm container's VM boots from, made in the container's
//! writable area (`<rootfs>/.husk-vm/`, so kubelet's ephemeral-storage
//! accounting sees them and a restarted container starts clean):
//!
//! - the root disk: a qcow2 overlay whose backing file is the image's disk
//!   (`qemu-img create -b`), so the image itself is never written;
//! - the NoCloud seed: a vfat image labelled `cidata` holding the
//!   cloud-init files (`mkfs.vfat` and `mcopy`, Debian's dosfstools and
//!   mtools: no root, no loop device, no mount).

use crate::bundle::container_disk::ContainerDisk;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The directory in the container's rootfs holding the VM's files.
pub const VM_FILES_DIR: &str = ".husk-vm";
pub const ROOT_DISK: &str = "root.qcow2";
pub const SEED: &str = "seed.img";
/// The volume label cloud-init's NoCloud looks for.
const SEED_LABEL: &str = "CIDATA";
/// The tools are looked for here, whatever PATH the shim was given.
const TOOL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Making either file takes well under a second; this only bounds a hang.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} not found ({hint})")]
    MissingTool {
        tool: &'static str,
        hint: &'static str,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("{0} did not finish within 60 s")]
    ToolTimeout(String),
    #[error("the file system of the container's writable area ({dir}) has {free} bytes free, less than the {reserve} husk-vm keeps for the node: the VM's overlay has no room")]
    NoRoom {
        dir: PathBuf,
        free: u64,
        reserve: u64,
    },
}

/// The node's share of a file system husk-vm never gives a VM's overlay:
/// 1 GiB or 5 % of it, whichever is smaller.
const MAX_RESERVE: u64 = 1 << 30;

/// How large the overlay in `dir` (and any file QEMU writes) may grow:
/// the disk's virtual size and qcow2's metadata for it (at most 1/64 of it
/// plus 16 MiB), and never past what the file system has free, less the
/// node's reserve, however large the image says its disk is. (CRI does not
/// pass a container's ephemeral-storage limit to the runtime: kubelet
/// enforces it by eviction.)
pub fn overlay_bound(dir: &Path, virtual_size: u64) -> Result<u64, SeedError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| SeedError::Io {
        context: format!("statvfs of {}", dir.display()),
        source: e.into(),
    })?;
    let block = st.fragment_size();
    let free = (st.blocks_available() as u64).saturating_mul(block);
    let size = (st.blocks() as u64).saturating_mul(block);
    let reserve = MAX_RESERVE.min(size / 20);
    let used = std::fs::metadata(dir.join(ROOT_DISK)).map_or(0, |m| m.len());
    if free <= reserve {
        return Err(SeedError::NoRoom {
            dir: dir.to_owned(),
            free,
            reserve,
        });
    }
    let wanted = virtual_size
        .saturating_add(virtual_size / 64)
        .saturating_add(16 << 20);
    Ok(wanted.min(used + free - reserve))
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SeedError {
    let context = context.into();
    move |source| SeedError::Io { context, source }
}

/// Runs a tool to completion; its stderr is the error when it fails.
async fn run(
    tool: &'static str,
    program: &Path,
    args: &[&std::ffi::OsStr],
    hint: &'static str,
) -> Result<(), SeedError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("PATH", TOOL_PATH)
        // mtools checks a disk's geometry against its own table otherwise.
        .env("MTOOLS_SKIP_CHECK", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SeedError::MissingTool { tool, hint })
        }
        Err(e) => return Err(io(format!("starting {tool}"))(e)),
    };
    let out = tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| SeedError::ToolTimeout(tool.to_owned()))?
        .map_err(io(format!("running {tool}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(SeedError::ToolFailed {
            tool: tool.to_owned(),
            status: out.status.to_string(),
            stderr: stderr.trim().chars().take(2000).collect(),
        });
    }
    Ok(())
}

/// Makes `<rootfs>/.husk-vm/` (empty, root only); a leftover of an
/// earlier VM in the same rootfs is removed first.
pub fn create_dir(rootfs: &Path) -> Result<PathBuf, SeedError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = rootfs.join(VM_FILES_DIR);
    remove_dir(rootfs);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io(format!("creating {}", dir.display())))?;
    Ok(dir)
}

/// Removes `<rootfs>/.husk-vm/` and what is in it (never following a
/// link out: it is removed as a link).
pub fn remove_dir(rootfs: &Path) {
    let dir = rootfs.join(VM_FILES_DIR);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), %e, "cannot remove the VM's files");
            }
        }
        Ok(_) => {
            let _ = std::fs::remove_file(&dir);
        }
        Err(_) => {}
    }
}

/// The root disk: a qcow2 overlay whose backing file is the image's disk
/// (named relative to the overlay, for `qemu-img info`; QEMU is given the
/// backing node itself), as large as the image's checked header says
/// (`disk.virtual_size`). `qemu-img create -u` writes the new file without
/// opening the backing one: no host process parses the user's image.
pub async fn create_overlay(
    qemu_img: &Path,
    dir: &Path,
    disk: &ContainerDisk,
) -> Result<PathBuf, SeedError> {
    let overlay = dir.join(ROOT_DISK);
    let backing = relative_to(&disk.disk, dir);
    let size = disk.virtual_size.to_string();
    run(
        "qemu-img",
        qemu_img,
        &[
            "create".as_ref(),
            "-q".as_ref(),
            "-u".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            disk.format.as_str().as_ref(),
            "-b".as_ref(),
            backing.as_os_str(),
            overlay.as_os_str(),
            size.as_ref(),
        ],
        "apt-get install qemu-utils, or set vm.qemu_img_path",
    )
    .await?;
    Ok(overlay)
}

/// `path` relative to the directory `from`, both absolute.
fn relative_to(path: &Path, from: &Path) -> PathBuf {
    let p: Vec<_> = path.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..f.len() {
        rel.push("..");
    }
    for c in &p[common..] {
        rel.push(c);
    }
    rel
}

/// The NoCloud seed in `dir`: a vfat image labelled CIDATA holding
/// `files`, sized to fit them.
pub async fn create_seed(
    dir: &Path,
    files: &[(&'static str, Vec<u8>)],
) -> Result<PathBuf, SeedError> {
    let staging = dir.join("seed");
    std::fs::create_dir(&staging).map_err(io(format!("creating {}", staging.display())))?;
    let mut paths = Vec::new();
    let mut total = 0u64;
    for (name, data) in files {
        let p = staging.join(name);
        std::fs::write(&p, data).map_err(io(format!("writing {}", p.display())))?;
        total += data.len() as u64;
        paths.push(p);
    }
    let seed = dir.join(SEED);
    // Room for the files, the FAT and directory entries; at least 1 MiB.
    let size = (total + (512 << 10)).div_ceil(1 << 20).max(1) << 20;
    let file = std::fs::File::create(&seed).map_err(io(format!("creating {}", seed.display())))?;
    file.set_len(size)
        .map_err(io(format!("sizing {}", seed.display())))?;
    drop(file);
    run(
        "mkfs.vfat",
        Path::new("mkfs.vfat"),
        &["-n".as_ref(), SEED_LABEL.as_ref(), seed.as_os_str()],
        "apt-get install dosfstools",
    )
    .await?;
    let mut args: Vec<&std::ffi::OsStr> = vec!["-i".as_ref(), seed.as_os_str()];
    args.extend(paths.iter().map(|p| p.as_os_str()));
    args.push("::".as_ref());
    run("mcopy", Path::new("mcopy"), &args, "apt-get install mtools").await?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_files_are_named_relative_to_the_overlay() {
        assert_eq!(
            relative_to(
                Path::new("/b/rootfs/disk/disk.qcow2"),
                Path::new("/b/rootfs/.husk-vm")
            ),
            PathBuf::from("../disk/disk.qcow2")
        );
        assert_eq!(
            relative_to(Path::new("/b/x"), Path::new("/b")),
            PathBuf::from("x")
        );
    }

    /// The overlay is written without the image's disk being opened (it
    /// does not even exist here), at the size its checked header gave.
    #[tokio::test]
    async fn the_overlay_is_made_without_opening_the_image() {
        if std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_err()
        {
            println!("SKIPPED: qemu-img is not installed");
            return;
        }
        let rootfs = tempfile::tempdir().unwrap();
        let dir = create_dir(rootfs.path()).unwrap();
        let disk = ContainerDisk {
            disk: rootfs.path().join("disk/absent.qcow2"),
            format: husk_hypervisor::disk_format::DiskFormat::Qcow2,
            virtual_size: 3 << 30,
            kernel: None,
        };
        let overlay = create_overlay(Path::new("qemu-img"), &dir, &disk)
            .await
            .unwrap();
        let header = std::fs::read(&overlay).unwrap();
        assert_eq!(&header[..4], b"QFI\xfb");
        let size = u64::from_be_bytes(header[24..32].try_into().unwrap());
        assert_eq!(size, 3 << 30);
        let backing_len = u32::from_be_bytes(header[16..20].try_into().unwrap()) as usize;
        let at = u64::from_be_bytes(header[8..16].try_into().unwrap()) as usize;
        assert_eq!(&header[at..at + backing_len], b"../disk/absent.qcow2");
    }

    /// The bound is the disk's size and its metadata where there is room,
    /// the file system's free space less the reserve where the image asks
    /// for more than there is.
    #[test]
    fn the_overlay_is_bounded_by_the_disk_and_the_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let small = overlay_bound(dir.path(), 1 << 20).unwrap();
        assert_eq!(small, (1 << 20) + (1 << 14) + (16 << 20));
        let st = nix::sys::statvfs::statvfs(dir.path()).unwrap();
        let free = st.blocks_available() as u64 * st.fragment_size();
        let huge = overlay_bound(dir.path(), 1 << 60).unwrap();
        assert!(huge < free, "{huge} >= {free}");
        assert!(
            huge > free / 2,
            "the reserve is at most 1 GiB or 5 %: {huge} of {free}"
        );
    }

    /// The seed as cloud-init finds it: label CIDATA, the files by name.
    /// Needs dosfstools and mtools (setup.sh installs them).
    #[tokio::test]
    async fn the_seed_is_a_cidata_vfat_with_the_files() {
        if std::process::Command::new("mdir")
            .arg("--version")
            .output()
            .is_err()
        {
            println!("SKIPPED: mtools is not installed");
            return;
        }
        let rootfs = tempfile::tempdir().unwrap();
        let dir = create_dir(rootfs.path()).unwrap();
        let files = vec![
            ("meta-data", b"{\"instance-id\": \"i-1\"}\n".to_vec()),
            ("user-data", b"#cloud-config\n".to_vec()),
        ];
        let seed = create_seed(&dir, &files).await.unwrap();
        let label = std::process::Command::new("mlabel")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", seed.to_str().unwrap(), "-s", "::"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&label.stdout).contains("CIDATA"),
            "{label:?}"
        );
        let meta = std::process::Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", seed.to_str().unwrap(), "::meta-data"])
            .output()
            .unwrap();
        assert_eq!(meta.stdout, files[0].1);
        assert!(!dir.join("seed").exists(), "the staging directory is left");
        remove_dir(rootfs.path());
        assert!(!rootfs.path().join(VM_FILES_DIR).exists());
    }
}
