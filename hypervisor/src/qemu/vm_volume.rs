//! A VM image's root disk on a persistent volume (docs/vm-pods.md, "The
//! root disk on a volume"): the volume's nodes on QEMU's command line and,
//! where the volume holds no disk yet, the nodes and block jobs that import
//! the image's disk into it before the guest first runs.
//!
//! The volume is a block device (`host_device`) or the disk file of a
//! filesystem volume (`file`), handed to QEMU as a descriptor like every
//! disk, with a raw or qcow2 node over it as the volume holds. The guest
//! writes it and nothing else keeps a copy: no overlay; a block device is
//! opened `cache.direct=on` (O_DIRECT, `aio=threads`, as the pod's other
//! block volumes), so QEMU's writes go to the device and not to the host's
//! page cache; a disk file keeps QEMU's write-back cache (not every file
//! system takes O_DIRECT), which passes the guest's flushes on as
//! fdatasync. QEMU's own image locking stays on (`locking=auto`); the
//! shim's lock (`host::disk_lock`) is the one that names the holder.
//!
//! Import (QEMU's docs/interop/live-block-operations.rst,
//! "blockdev-backup"): QEMU starts paused (`-S`, as every VM image does)
//! with the image's disk read-only beside the volume, and [`import`] runs
//! the jobs of [`import_jobs`] over QMP before the vCPUs ever run:
//! `blockdev-backup` (`sync: full`: every byte, zeros included, so what a
//! volume held before is overwritten) from a raw window of the image's
//! disk into the same window of the volume: first everything past the
//! first MiB, then the rest of the first MiB, then its first 4 KiB, where
//! every signature of a disk lies, in one write. Until the second job
//! starts the volume's first MiB stays as it was, all zero (the caller
//! imports only into a volume that reads so), so an import cut short
//! reads as blank and is imported again; one cut short in the
//! milliseconds of the second job reads as no disk and is refused; none
//! ever looks like a disk before it is whole. QEMU parses the image
//! (qcow2); the host only reads the volume's first MiB. The jobs write
//! the volume through a file node of their own (`import-file`) on the
//! same descriptor, removed with them, so the guest's device never shares
//! write (no `share-rw`): QEMU's image locks (OFD, per open file
//! description, which the two nodes share) hold as in any boot. Tried with
//! QEMU 7.2: the jobs run while the VM is paused.

use super::qmp::{Qmp, QmpError};
use crate::disk_format::DiskFormat;
use serde::Deserialize;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// The window a blank volume has all zero: an import writes it last.
pub const IMPORT_HEAD: u64 = 1 << 20;
/// The window written very last, in one write: where every signature that
/// makes a volume look like a disk lies (an MBR at 0, a GPT header at 512,
/// an ext superblock at 1024).
pub const IMPORT_FIRST: u64 = 4096;

/// The root disk on a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDisk {
    /// The block device, or the disk file in a filesystem volume.
    pub path: PathBuf,
    pub block_device: bool,
    /// What the volume holds (an import writes raw).
    pub format: DiskFormat,
    /// The image's disk, to be imported before the guest runs.
    pub import: Option<ImportSource>,
}

/// The image's disk an import copies from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSource {
    pub image: PathBuf,
    pub format: DiskFormat,
    /// The disk's size as the guest sees it: what is copied.
    pub virtual_size: u64,
}

/// One `blockdev-backup` of an import: the window `[offset, offset+len)`
/// of the image's disk into the same window of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportJob {
    pub id: &'static str,
    pub source: &'static str,
    pub target: &'static str,
    pub offset: u64,
    pub len: u64,
}

/// The volume's node the import's jobs write through.
const IMPORT_FILE: &str = "import-file";
const TAIL: (&str, &str, &str) = ("import-tail", "import-tail-src", "import-tail-dst");
const REST: (&str, &str, &str) = ("import-rest", "import-rest-src", "import-rest-dst");
const FIRST: (&str, &str, &str) = ("import-first", "import-first-src", "import-first-dst");

/// The import's jobs, in the order they must run: the tail (past the
/// first MiB), the rest of the first MiB, then its first 4 KiB. A small
/// disk has fewer.
pub fn import_jobs(virtual_size: u64) -> Vec<ImportJob> {
    let windows = [
        (TAIL, IMPORT_HEAD, virtual_size),
        (REST, IMPORT_FIRST, virtual_size.min(IMPORT_HEAD)),
        (FIRST, 0, virtual_size.min(IMPORT_FIRST)),
    ];
    windows
        .into_iter()
        .filter(|(_, start, end)| end > start)
        .map(|((id, source, target), offset, end)| ImportJob {
            id,
            source,
            target,
            offset,
            len: end - offset,
        })
        .collect()
}

/// The nodes an import adds, in the order they can be removed once it is
/// done (each before the node it sits on), which closes the image's disk.
pub fn import_nodes(virtual_size: u64) -> Vec<&'static str> {
    let mut nodes: Vec<&str> = import_jobs(virtual_size)
        .iter()
        .flat_map(|j| [j.source, j.target])
        .collect();
    nodes.extend([IMPORT_FILE, "image", "image-file"]);
    nodes
}

/// `-blockdev` options of the volume (node `root-file`, and `root` over
/// it) on fd set `volume_set`, and of an import's nodes (the image's disk
/// on fd set `image_set`).
pub fn blockdev_args(v: &VolumeDisk, image_set: Option<u32>, volume_set: u32) -> Vec<String> {
    let driver = if v.block_device {
        "host_device"
    } else {
        "file"
    };
    let direct = if v.block_device { "on" } else { "off" };
    let file = |node: &str| {
        format!(
            "driver={driver},filename=/dev/fdset/{volume_set},node-name={node},\
             cache.direct={direct},aio=threads,discard=unmap"
        )
    };
    let mut a = vec![
        "-blockdev".to_owned(),
        file("root-file"),
        "-blockdev".to_owned(),
        format!(
            "driver={},file=root-file,node-name=root,cache.direct={direct},discard=unmap",
            v.format.as_str()
        ),
    ];
    if let (Some(i), Some(set)) = (&v.import, image_set) {
        // The jobs write the volume through a node of their own on the
        // same descriptor, so the guest's device need not share write.
        a.push("-blockdev".to_owned());
        a.push(file(IMPORT_FILE));
        a.push("-blockdev".to_owned());
        a.push(format!(
            "driver=file,filename=/dev/fdset/{set},node-name=image-file,read-only=on"
        ));
        a.push("-blockdev".to_owned());
        a.push(format!(
            "driver={},file=image-file,node-name=image,read-only=on",
            i.format.as_str()
        ));
        for j in import_jobs(i.virtual_size) {
            let window = format!("offset={},size={}", j.offset, j.len);
            a.push("-blockdev".to_owned());
            a.push(format!(
                "driver=raw,file=image,node-name={},read-only=on,{window}",
                j.source
            ));
            a.push("-blockdev".to_owned());
            a.push(format!(
                "driver=raw,file={IMPORT_FILE},node-name={},{window}",
                j.target
            ));
        }
    }
    a
}

/// How often an import's jobs are looked at.
const JOB_POLL: Duration = Duration::from_millis(500);
/// The most of a job's error text QEMU's answer is kept of.
const MAX_JOB_ERROR: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("importing the image's disk: QEMU's job {job} failed: {error}")]
    Failed { job: &'static str, error: String },
    #[error("importing the image's disk: QEMU's job {0} is gone")]
    Gone(&'static str),
}

/// One entry of `query-jobs`.
#[derive(Debug, Deserialize)]
struct JobInfo {
    id: String,
    status: String,
    #[serde(rename = "current-progress")]
    current: u64,
    #[serde(rename = "total-progress")]
    total: u64,
    error: Option<String>,
}

/// Runs the import's jobs (QEMU paused, the command line of
/// [`blockdev_args`]), one after the other, then removes the import's
/// nodes. `progress` is told the bytes done of `virtual_size` as they
/// move; each QMP call has `timeout`, the import as a whole none (QEMU's
/// exit ends it: its calls fail). On error the volume's first MiB may be
/// half written only if the head job itself failed; the caller must not
/// boot the VM.
pub async fn import(
    qmp: &Qmp,
    virtual_size: u64,
    timeout: Duration,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(), ImportError> {
    let mut done = 0;
    for j in import_jobs(virtual_size) {
        let arguments = json!({
            "job-id": j.id, "device": j.source, "target": j.target,
            "sync": "full", "auto-dismiss": false,
        });
        qmp.execute("blockdev-backup", Some(arguments), timeout)
            .await?;
        loop {
            tokio::time::sleep(JOB_POLL).await;
            let jobs: Vec<JobInfo> = qmp.call("query-jobs", None, timeout).await?;
            let info = jobs
                .iter()
                .find(|i| i.id == j.id)
                .ok_or(ImportError::Gone(j.id))?;
            progress(done + info.current.min(info.total).min(j.len));
            if info.status == "concluded" || info.status == "null" {
                let failed = info.error.as_ref().map(|e| bounded(e));
                qmp.execute("job-dismiss", Some(json!({"id": j.id})), timeout)
                    .await?;
                if let Some(error) = failed {
                    return Err(ImportError::Failed { job: j.id, error });
                }
                break;
            }
        }
        done += j.len;
        progress(done);
    }
    for node in import_nodes(virtual_size) {
        let arguments = json!({ "node-name": node });
        if let Err(e) = qmp.execute("blockdev-del", Some(arguments), timeout).await {
            // The import is whole; a node left open only holds the image.
            tracing::warn!(node, %e, "cannot remove an import's node");
        }
    }
    Ok(())
}

/// QEMU's text, cut to a line of bounded length.
fn bounded(text: &str) -> String {
    text.chars()
        .take(MAX_JOB_ERROR)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(import: bool) -> VolumeDisk {
        VolumeDisk {
            path: "/dev/loop7".into(),
            block_device: true,
            format: DiskFormat::Raw,
            import: import.then(|| ImportSource {
                image: "/b/rootfs/disk/disk.qcow2".into(),
                format: DiskFormat::Qcow2,
                virtual_size: 3 << 20,
            }),
        }
    }

    #[test]
    fn the_head_is_imported_last_and_its_first_4k_at_the_very_end() {
        let windows = |size| {
            import_jobs(size)
                .iter()
                .map(|j| (j.offset, j.len))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            windows(3 << 20),
            [(1 << 20, 2 << 20), (4096, (1 << 20) - 4096), (0, 4096)]
        );
        assert_eq!(windows(1 << 20), [(4096, (1 << 20) - 4096), (0, 4096)]);
        assert_eq!(windows(8192), [(4096, 4096), (0, 4096)]);
        assert_eq!(windows(4096), [(0, 4096)]);
        assert_eq!(windows(512), [(0, 512)]);
        assert_eq!(
            import_nodes(4096),
            [
                "import-first-src",
                "import-first-dst",
                "import-file",
                "image",
                "image-file"
            ]
        );
    }

    #[test]
    fn a_volume_is_its_descriptor_and_the_image_only_read() {
        let plain = blockdev_args(&volume(false), None, 4).join(" ");
        assert_eq!(
            plain,
            "-blockdev driver=host_device,filename=/dev/fdset/4,node-name=root-file,\
             cache.direct=on,aio=threads,discard=unmap \
             -blockdev driver=raw,file=root-file,node-name=root,cache.direct=on,discard=unmap"
        );
        let import = blockdev_args(&volume(true), Some(3), 4).join(" ");
        for part in [
            "driver=file,filename=/dev/fdset/3,node-name=image-file,read-only=on",
            "driver=qcow2,file=image-file,node-name=image,read-only=on",
            "driver=raw,file=image,node-name=import-tail-src,read-only=on,offset=1048576,size=2097152",
            "driver=host_device,filename=/dev/fdset/4,node-name=import-file,cache.direct=on",
            "driver=raw,file=import-file,node-name=import-tail-dst,offset=1048576,size=2097152",
            "driver=raw,file=import-file,node-name=import-rest-dst,offset=4096,size=1044480",
            "driver=raw,file=import-file,node-name=import-first-dst,offset=0,size=4096",
        ] {
            assert!(import.contains(part), "{part:?} missing in {import}");
        }
        let mut file = volume(false);
        file.block_device = false;
        file.format = DiskFormat::Qcow2;
        let line = blockdev_args(&file, None, 4).join(" ");
        assert!(line.contains("driver=file,filename=/dev/fdset/4"), "{line}");
        assert!(line.contains("driver=qcow2,file=root-file"), "{line}");
        assert!(line.contains("cache.direct=off"), "{line}");
    }

    /// A 3 MiB qcow2 image (0xab at 0, 0xcd at 2 MiB, 64 KiB each) and a
    /// 4 MiB volume of old bytes (0x77) but a blank first MiB, in `dir`.
    fn image_and_volume(dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let (image, vol) = (dir.join("disk.qcow2"), dir.join("vol.raw"));
        let run = |cmd: &str, args: &[&str]| {
            let out = std::process::Command::new(cmd).args(args).output().unwrap();
            assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
        };
        let img = image.to_str().unwrap();
        run("qemu-img", &["create", "-q", "-f", "qcow2", img, "3M"]);
        let writes = ["write -P 0xab 0 64k", "write -P 0xcd 2M 64k"];
        run(
            "qemu-io",
            &["-f", "qcow2", "-c", writes[0], "-c", writes[1], img],
        );
        let mut old = vec![0x77u8; 4 << 20];
        old[..1 << 20].fill(0);
        std::fs::write(&vol, &old).unwrap();
        (image, vol)
    }

    /// The import against QEMU itself (not confined, but as a VM is
    /// spawned: the files as descriptors in fd sets, the guest's device on
    /// the volume, paused): the volume ends up holding the image's disk,
    /// its old bytes overwritten, what lies past the disk untouched.
    #[tokio::test]
    async fn qemu_imports_the_image_into_the_volume() {
        use std::os::fd::AsRawFd;
        let qemu = std::path::Path::new("/usr/bin/qemu-system-x86_64");
        let tools = ["/usr/bin/qemu-img", "/usr/bin/qemu-io"];
        if !qemu.exists() || !tools.iter().all(|t| std::path::Path::new(t).exists()) {
            eprintln!("SKIPPED: QEMU (qemu-system-x86_64, qemu-img, qemu-io) is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (image, vol) = image_and_volume(dir.path());
        let v = VolumeDisk {
            path: vol.clone(),
            block_device: false,
            format: DiskFormat::Raw,
            import: Some(ImportSource {
                image: image.clone(),
                format: DiskFormat::Qcow2,
                virtual_size: 3 << 20,
            }),
        };
        let sock = dir.path().join("qmp.sock");
        // As QEMU is spawned for a VM: both files as descriptors (3, 4).
        let image_fd = std::fs::File::open(&image).unwrap();
        let vol_fd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&vol)
            .unwrap();
        let fds = [image_fd.as_raw_fd(), vol_fd.as_raw_fd()];
        let mut command = tokio::process::Command::new(qemu);
        command
            .args([
                "-M",
                "pc",
                "-accel",
                "tcg",
                "-S",
                "-nodefaults",
                "-display",
                "none",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .args(["-add-fd", "fd=3,set=1", "-add-fd", "fd=4,set=2"])
            .args(blockdev_args(&v, Some(1), 2))
            // The guest's device, as a VM has it: not sharing write.
            .args(["-device", "virtio-blk-pci,drive=root"])
            .kill_on_drop(true);
        // SAFETY: between fork and exec only async-signal-safe calls:
        // fcntl(F_DUPFD) moves both descriptors above 4 first, so neither
        // dup2 overwrites the other; dup2's copies are not close-on-exec.
        unsafe {
            command.pre_exec(move || {
                let high = fds.map(|fd| libc::fcntl(fd, libc::F_DUPFD, 10));
                for (fd, to) in high.into_iter().zip([3, 4]) {
                    if fd < 0 || libc::dup2(fd, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        drop((image_fd, vol_fd));
        let t = Duration::from_secs(20);
        let qmp = Qmp::connect(&sock, t).await.unwrap();
        let mut seen = Vec::new();
        import(&qmp, 3 << 20, t, &mut |done| seen.push(done))
            .await
            .unwrap();
        assert_eq!(seen.last(), Some(&(3 << 20)));
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        // The image's nodes are gone: only the volume's are left.
        let nodes: serde_json::Value = qmp.call("query-named-block-nodes", None, t).await.unwrap();
        let names: Vec<&str> = nodes
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["node-name"].as_str())
            .collect();
        assert!(names.iter().all(|n| n.starts_with("root")), "{names:?}");
        let _ = qmp.execute("quit", None, t).await;
        let _ = child.wait().await;
        let got = std::fs::read(&vol).unwrap();
        assert!(got[..64 << 10].iter().all(|b| *b == 0xab));
        assert!(got[64 << 10..2 << 20].iter().all(|b| *b == 0));
        assert!(got[2 << 20..(2 << 20) + (64 << 10)]
            .iter()
            .all(|b| *b == 0xcd));
        assert!(got[(2 << 20) + (64 << 10)..3 << 20].iter().all(|b| *b == 0));
        assert!(got[3 << 20..].iter().all(|b| *b == 0x77));
    }

    /// A fake QEMU whose first job fails (or vanishes): each command it
    /// was sent, by name.
    async fn failing_qemu(listener: tokio::net::UnixListener, gone: bool) -> Vec<String> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let greeting = b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";
        write.write_all(greeting).await.unwrap();
        let mut lines = BufReader::new(read).lines();
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let cmd: serde_json::Value = serde_json::from_str(&line).unwrap();
            let name = cmd["execute"].as_str().unwrap().to_owned();
            let ret = match (name.as_str(), gone) {
                ("query-jobs", true) => json!([]),
                ("query-jobs", false) => json!([{
                    "id": "import-tail", "type": "backup", "status": "concluded",
                    "current-progress": 5, "total-progress": 10,
                    "error": "Input/output error\u{1b}[2J"
                }]),
                _ => json!({}),
            };
            let answer = json!({"return": ret, "id": cmd["id"]});
            write
                .write_all(format!("{answer}\n").as_bytes())
                .await
                .unwrap();
            seen.push(name);
        }
        seen
    }

    #[tokio::test]
    async fn a_failed_or_vanished_job_ends_the_import_before_the_head() {
        for gone in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let sock = dir.path().join("qmp.sock");
            let listener = tokio::net::UnixListener::bind(&sock).unwrap();
            let server = tokio::spawn(failing_qemu(listener, gone));
            let t = Duration::from_secs(5);
            let qmp = Qmp::connect(&sock, t).await.unwrap();
            let e = import(&qmp, 3 << 20, t, &mut |_| {}).await.unwrap_err();
            drop(qmp);
            let seen = server.await.unwrap();
            let backups = seen.iter().filter(|c| *c == "blockdev-backup").count();
            assert_eq!(backups, 1, "a later job ran: {seen:?}");
            assert!(!seen.iter().any(|c| c == "blockdev-del"), "{seen:?}");
            match e {
                ImportError::Failed { job, error } => {
                    assert!(!gone);
                    assert_eq!(job, "import-tail");
                    assert_eq!(error, "Input/output error [2J");
                }
                ImportError::Gone(job) => assert!(gone && job == "import-tail"),
                other => panic!("{other}"),
            }
        }
    }
}
