//! The files `husk check` looks at: the guest kernel and initrd (checked
//! as `MicroVm::start` checks them, and their versions), the device
//! daemons, and what husk-vm pods use beyond QEMU ([`vm_image`]).

use super::{line, Line, Verdict};
use std::path::Path;

pub fn kernel(path: &Path) -> Line {
    if let Err(e) = husk_hypervisor::check_kernel(path) {
        return line("kernel", Verdict::Fail, e.to_string());
    }
    let release = std::fs::read(path)
        .ok()
        .and_then(|bytes| banner_release(&bytes))
        .unwrap_or_else(|| "release unknown".into());
    line(
        "kernel",
        Verdict::Ok,
        format!("{} ({release})", path.display()),
    )
}

/// The release in a kernel image's `Linux version <release> (` banner.
pub fn banner_release(image: &[u8]) -> Option<String> {
    let needle = b"Linux version ";
    let start = image.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let rest = &image[start..image.len().min(start + 128)];
    let end = rest.iter().position(|&b| b == b' ')?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

pub fn initrd(path: &Path, console: bool) -> Line {
    if let Err(e) = husk_hypervisor::check_initrd(path) {
        return line("initrd", Verdict::Fail, e.to_string());
    }
    let names = std::fs::read(path)
        .ok()
        .map(|b| cpio_names(&b))
        .unwrap_or_default();
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let has = |n: &str| names.iter().any(|x| x == n);
    let shell = if has("bin/busybox") {
        ", debug shell bin/busybox"
    } else {
        ""
    };
    let detail = format!(
        "{} ({} KiB, agent /init{shell})",
        path.display(),
        size / 1024
    );
    if !has("init") {
        return line(
            "initrd",
            Verdict::Fail,
            format!("{detail}: no /init in it (not a husk initrd: scripts/build-initrd.sh)"),
        );
    }
    if console && !has("bin/busybox") {
        return line(
            "initrd",
            Verdict::Fail,
            format!(
                "{detail}: [debug] console = true, but it has no bin/busybox for the \
                 console's shell (rebuild it with scripts/build-initrd.sh)"
            ),
        );
    }
    line("initrd", Verdict::Ok, detail)
}

/// The member names of a newc cpio archive (as build-initrd.sh writes
/// it), up to its trailer; a damaged archive gives what came before.
pub fn cpio_names(archive: &[u8]) -> Vec<String> {
    const HEADER: usize = 110;
    let field = |h: &[u8], i: usize| {
        std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i])
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
    };
    let pad4 = |n: usize| n.div_ceil(4) * 4;
    let mut names = Vec::new();
    let mut at = 0usize;
    while let Some(h) = archive.get(at..at + HEADER) {
        if !h.starts_with(b"070701") && !h.starts_with(b"070702") {
            break;
        }
        let (Some(filesize), Some(namesize)) = (field(h, 6), field(h, 11)) else {
            break;
        };
        let Some(name) = archive.get(at + HEADER..at + HEADER + namesize.saturating_sub(1)) else {
            break;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if name == "TRAILER!!!" {
            break;
        }
        names.push(name.trim_start_matches("./").to_owned());
        at = pad4(at + HEADER + namesize) + pad4(filesize);
    }
    names
}

pub fn daemon(check: &'static str, key: &'static str, path: &Path) -> Line {
    if let Err(e) = husk_hypervisor::check_executable(key, path) {
        return line(check, Verdict::Fail, e.to_string());
    }
    // Run once: a daemon whose libraries are missing fails here, not at
    // the first pod.
    match std::process::Command::new(path).arg("--version").output() {
        Ok(o) if o.status.success() => {
            let version = String::from_utf8_lossy(&o.stdout);
            let version = version.lines().next().unwrap_or_default().trim();
            line(
                check,
                Verdict::Ok,
                format!("{} ({version})", path.display()),
            )
        }
        Ok(o) => line(
            check,
            Verdict::Fail,
            format!(
                "{}: {key} does not run: {}",
                path.display(),
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .unwrap_or_default()
            ),
        ),
        Err(e) => line(
            check,
            Verdict::Fail,
            format!("{}: {key} does not run: {e}", path.display()),
        ),
    }
}

/// What husk-vm pods use beyond QEMU, each needed only by the pods that
/// ask for it: missing is a warning that names those pods and the fix,
/// never a failure (micro-VM pods and the other husk-vm pods still run).
pub fn vm_image(vm: &husk_config::VmConfig) -> Vec<Line> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let file = |p: &Path| p.is_file();
    let one = |check, ok: bool, path: &Path, what: &str, fix: &str| {
        if ok {
            line(check, Verdict::Ok, path.display().to_string())
        } else {
            line(
                check,
                Verdict::Warn,
                format!("{} is not there: {what} ({fix})", path.display()),
            )
        }
    };
    vec![
        one(
            "vm qemu-img",
            runnable(&vm.qemu_img_path),
            &vm.qemu_img_path,
            "every husk-vm pod without a root volume fails to start",
            "apt-get install qemu-utils",
        ),
        one(
            "vm uefi",
            file(&vm.ovmf_code) && file(&vm.ovmf_vars),
            &vm.ovmf_code,
            "husk-vm pods with io.husk.vm.firmware: uefi fail to start",
            "apt-get install ovmf",
        ),
        one(
            "vm secure boot",
            file(&vm.ovmf_code_secure_boot) && file(&vm.ovmf_vars_secure_boot),
            &vm.ovmf_code_secure_boot,
            "husk-vm pods with io.husk.vm.secure-boot fail to start",
            "apt-get install ovmf",
        ),
        one(
            "vm tpm",
            runnable(&vm.swtpm_path),
            &vm.swtpm_path,
            "husk-vm pods with a state volume (io.husk.vm.state) fail to start",
            "apt-get install swtpm",
        ),
        one(
            "vm tools disk",
            file(&vm.tools_disk),
            &vm.tools_disk,
            "kubectl exec -it into husk-vm pods is refused",
            "scripts/install.sh builds it",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_gives_the_release() {
        let image = b"junk\0Linux version 6.1.0-husk (root@x) #1 SMP\0";
        assert_eq!(banner_release(image).as_deref(), Some("6.1.0-husk"));
        assert_eq!(banner_release(b"nothing"), None);
    }

    #[test]
    fn cpio_members_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("stage");
        std::fs::create_dir_all(stage.join("bin")).unwrap();
        std::fs::write(stage.join("init"), b"agent").unwrap();
        std::fs::write(stage.join("bin/busybox"), b"shell!").unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc")
            .current_dir(&stage)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(cpio_names(&out.stdout), ["bin", "bin/busybox", "init"]);
        assert!(cpio_names(&out.stdout[..200]).len() < 3);
        assert!(cpio_names(b"not a cpio").is_empty());
    }
}
