//! Reading a small file from a directory a user or a guest can write (a
//! pod's volume), without being led out of it or stalled by what was put
//! there: [`read_beneath`] resolves the name with `openat2(2)`
//! (`RESOLVE_BENEATH`: no `..`, no absolute link, no link that leaves the
//! directory; `RESOLVE_NO_MAGICLINKS`: no `/proc/<pid>/fd` style link),
//! takes it as an `O_PATH` descriptor first, and opens it for reading only
//! once it is known to be a regular file of at most the size asked, so a
//! FIFO or a device in its place is refused without being opened. Blocking
//! system calls: run it off the async threads.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} leads out of {dir} (a link to outside the volume, or ..)")]
    Outside { path: PathBuf, dir: PathBuf },
    #[error("{path} is {kind}, not a regular file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{path} is larger than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
}

/// What kind of file `mode` is, in words.
fn kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a symbolic link",
        _ => "not a regular file",
    }
}

fn openat2(dir: libc::c_int, name: &[u8], flags: u64, resolve: u64) -> std::io::Result<OwnedFd> {
    let name = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain integers; all zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags;
    how.resolve = resolve;
    // SAFETY: openat2 reads the NUL-terminated name and the open_how of the
    // size given, both live for the call; it returns a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor openat2 just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: fstat writes the stat buffer, which lives for the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the descriptor is open.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Reads `name` (relative, may hold `/` and links that stay inside)
/// beneath the directory `dir`, at most `max` bytes. None when it does not
/// exist.
pub fn read_beneath(dir: &Path, name: &str, max: u64) -> Result<Option<Vec<u8>>, FileError> {
    let path = dir.join(name);
    let io = |source| FileError::Io {
        path: path.clone(),
        source,
    };
    let flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    let dirfd = openat2(libc::AT_FDCWD, dir.as_os_str().as_bytes(), flags, 0).map_err(io)?;
    let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    let found = match openat2(
        dirfd.as_raw_fd(),
        name.as_bytes(),
        (libc::O_PATH | libc::O_CLOEXEC) as u64,
        resolve,
    ) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            return Err(FileError::Outside {
                path,
                dir: dir.to_owned(),
            })
        }
        Err(e) => return Err(io(e)),
    };
    let st = fstat(&found).map_err(io)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(FileError::NotAFile {
            path,
            kind: kind(st.st_mode),
        });
    }
    if st.st_size as u64 > max {
        return Err(FileError::TooLarge { path, max });
    }
    // The very file checked, opened for reading through our own
    // descriptor (not by name again: nothing can be swapped in between).
    let proc_path = format!("/proc/self/fd/{}", found.as_raw_fd());
    let file = openat2(
        libc::AT_FDCWD,
        proc_path.as_bytes(),
        (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC) as u64,
        0,
    )
    .map_err(io)?;
    let mut data = Vec::new();
    std::fs::File::from(file)
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(io)?;
    if data.len() as u64 > max {
        return Err(FileError::TooLarge { path, max });
    }
    Ok(Some(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_inside_are_followed_and_nothing_else_is() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host").unwrap();
        let vol = tempfile::tempdir().unwrap();
        let v = vol.path();
        // kubelet's layout: a file is a link into ..data/, a link itself.
        std::fs::create_dir(v.join("..2026")).unwrap();
        std::fs::write(v.join("..2026/user-data"), "#cloud-config\n").unwrap();
        std::os::unix::fs::symlink("..2026", v.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/user-data", v.join("user-data")).unwrap();
        assert_eq!(
            read_beneath(v, "user-data", 64).unwrap().unwrap(),
            b"#cloud-config\n"
        );
        assert!(read_beneath(v, "missing", 64).unwrap().is_none());
        std::os::unix::fs::symlink(outside.path().join("secret"), v.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../../etc/hostname", v.join("up")).unwrap();
        for name in ["abs", "up", "../x"] {
            let e = read_beneath(v, name, 64).unwrap_err();
            assert!(matches!(e, FileError::Outside { .. }), "{name}: {e}");
        }
        std::os::unix::fs::symlink("/proc/self/fd/0", v.join("magic")).unwrap();
        assert!(read_beneath(v, "magic", 64).is_err());
    }

    #[test]
    fn a_fifo_or_a_device_is_refused_without_being_opened() {
        let vol = tempfile::tempdir().unwrap();
        let v = vol.path();
        nix::unistd::mkfifo(&v.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        // A FIFO with no writer would block an open for reading for ever.
        let e = read_beneath(v, "fifo", 64).unwrap_err().to_string();
        assert!(e.contains("a FIFO"), "{e}");
        std::os::unix::fs::symlink("/dev/zero", v.join("zero")).unwrap();
        assert!(read_beneath(v, "zero", 64).is_err());
        std::fs::create_dir(v.join("dir")).unwrap();
        let e = read_beneath(v, "dir", 64).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        std::fs::write(v.join("big"), vec![b'x'; 65]).unwrap();
        assert!(matches!(
            read_beneath(v, "big", 64),
            Err(FileError::TooLarge { max: 64, .. })
        ));
    }
}
