//! What the backends' unit tests share: one launch to build command lines
//! from, and a look-up of a flag's value in them.

use crate::{Accelerator, VmLaunch};

/// A launch with every field set to a value the tests can recognise, and
/// no NIC.
pub fn launch(accelerator: Accelerator) -> VmLaunch {
    VmLaunch {
        id: "t1".into(),
        accelerator,
        vcpus: 2,
        memory_mib: 128,
        tcg_tb_size_mib: 16,
        kernel: "/k/vmlinux".into(),
        initrd: "/k/initrd".into(),
        cmdline: "console=ttyS0 reboot=t".into(),
        run_dir: "/run/x".into(),
        console_log: "/run/x/console.log".into(),
        vsock_vhost_socket: "/run/x/vhost-vsock.sock".into(),
        fs_vhost_socket: "/run/x/vhost-fs.sock".into(),
        fs_tag: "husk-shared".into(),
        nets: Vec::new(),
        identity: Some(crate::confine::Identity {
            uid: 1_879_048_200,
            gid: 1_879_048_200,
        }),
        oom_score_adj: None,
    }
}

/// The argument after `flag`; fails the test naming a missing flag.
pub fn value_after(args: &[String], flag: &str) -> String {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} missing"));
    args[i + 1].clone()
}
