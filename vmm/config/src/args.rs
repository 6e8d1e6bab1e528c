//! husk-vmm's command line: [`VmmConfig::to_args`] writes it and
//! [`VmmConfig::parse`] reads it, from one list of flags, so the launcher
//! and the VMM cannot disagree on a name or a format.

use crate::error::{check_range, ConfigError, ValueError};
use crate::flag::{self, TAP_FD_PREFIX};
use crate::limits::{
    DEFAULT_MAC, IDENTITY_MAX, IDENTITY_MIN, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB,
};
use crate::snapshot::Snapshot;
use crate::{FsShare, Identity, MacAddr, NetConfig, NetTap, SeccompMode, VmmConfig};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

impl VmmConfig {
    /// husk-vmm's arguments for this VM (without the program name); every
    /// field is written, defaults included. [`parse`](Self::parse) of them
    /// gives this configuration back.
    pub fn to_args(&self) -> Vec<OsString> {
        self.flags()
            .into_iter()
            .flat_map(|(flag, value)| std::iter::once(OsString::from(flag)).chain(value))
            .collect()
    }

    /// Reads husk-vmm's arguments (without the program name) and checks
    /// them with [`validate`](Self::validate). A flag given twice is an
    /// error, not the last one winning.
    pub fn parse<I>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        let mut args = args.into_iter().map(Into::into);
        let mut seen: Vec<&'static str> = Vec::new();
        let mut parsed = Parsed::new();
        while let Some(arg) = args.next() {
            let name = arg.to_str().unwrap_or_default();
            if name == "--help" || name == "-h" {
                return Err(ConfigError::Help);
            }
            let Some(flag) = flag::ALL.into_iter().find(|f| *f == name) else {
                return Err(ConfigError::UnknownArgument {
                    arg: arg.to_string_lossy().into(),
                });
            };
            if seen.contains(&flag) {
                return Err(ConfigError::Duplicate { flag });
            }
            seen.push(flag);
            match flag {
                flag::RNG => parsed.config.rng = true,
                flag::NEW_PID_NS => parsed.config.new_pid_ns = true,
                _ => {
                    let value = args.next().ok_or(ConfigError::MissingValue { flag })?;
                    parsed.value(flag, value)?;
                }
            }
        }
        let config = parsed.assemble()?;
        config.validate()?;
        Ok(config)
    }
}

/// What the flags said so far: the fields that stand alone in `config`,
/// the ones that only make sense together apart until [`Parsed::assemble`].
struct Parsed {
    config: VmmConfig,
    kernel: Option<PathBuf>,
    console_log: Option<PathBuf>,
    fs_socket: Option<PathBuf>,
    fs_tag: Option<String>,
    net_tap: Option<NetTap>,
    net_mac: Option<MacAddr>,
    uid: Option<u32>,
    gid: Option<u32>,
    memory_file: Option<PathBuf>,
    snapshot_to: Option<PathBuf>,
    restore_from: Option<PathBuf>,
}

impl Parsed {
    fn new() -> Self {
        Parsed {
            config: VmmConfig::new("", ""),
            kernel: None,
            console_log: None,
            fs_socket: None,
            fs_tag: None,
            net_tap: None,
            net_mac: None,
            uid: None,
            gid: None,
            memory_file: None,
            snapshot_to: None,
            restore_from: None,
        }
    }

    /// Takes the value of one flag that has one.
    fn value(&mut self, flag: &'static str, value: OsString) -> Result<(), ConfigError> {
        let config = &mut self.config;
        match flag {
            flag::KERNEL => self.kernel = Some(PathBuf::from(value)),
            flag::INITRD => config.initrd = Some(value.into()),
            flag::CMDLINE => config.cmdline = text(flag, &value)?.into(),
            flag::MEMORY_MIB => {
                let (min, max) = (MIN_MEMORY_MIB.into(), MAX_MEMORY_MIB.into());
                config.memory_mib = number(flag, &value, min, max)? as u32;
            }
            flag::VCPUS => config.vcpus = number(flag, &value, 1, MAX_VCPUS.into())? as u8,
            flag::CONSOLE_LOG => self.console_log = Some(PathBuf::from(value)),
            flag::SECCOMP => {
                let v = text(flag, &value)?;
                config.seccomp = v
                    .parse::<SeccompMode>()
                    .map_err(|e| ConfigError::value(flag, v, e))?;
            }
            flag::VSOCK_SOCKET => config.vsock_socket = Some(value.into()),
            flag::FS_SOCKET => self.fs_socket = Some(PathBuf::from(value)),
            flag::FS_TAG => self.fs_tag = Some(text(flag, &value)?.to_owned()),
            flag::NET_TAP => self.net_tap = Some(tap(flag, &value)?),
            flag::NET_MAC => {
                let v = text(flag, &value)?;
                let mac = v
                    .parse::<MacAddr>()
                    .map_err(|e| ConfigError::value(flag, v, e.into()))?;
                self.net_mac = Some(mac);
            }
            flag::JAIL => config.jail = Some(value.into()),
            flag::UID | flag::GID => {
                let (min, max) = (IDENTITY_MIN.into(), IDENTITY_MAX.into());
                let id = Some(number(flag, &value, min, max)? as u32);
                match flag {
                    flag::UID => self.uid = id,
                    _ => self.gid = id,
                }
            }
            flag::MEMORY_FILE => self.memory_file = Some(PathBuf::from(value)),
            flag::SNAPSHOT_TO => self.snapshot_to = Some(PathBuf::from(value)),
            flag::RESTORE_FROM => self.restore_from = Some(PathBuf::from(value)),
            _ => unreachable!("every flag of flag::ALL that takes a value is matched"),
        }
        Ok(())
    }

    /// Puts the flags that go together into the configuration, or says
    /// which one is missing its partner.
    fn assemble(self) -> Result<VmmConfig, ConfigError> {
        let mut config = self.config;
        config.snapshot =
            Snapshot::from_flags(self.memory_file, self.snapshot_to, self.restore_from)?;
        // A clone has no kernel of its own (validate refuses one).
        match (&config.snapshot, self.kernel) {
            (Some(Snapshot::Clone { .. }), Some(k)) => config.kernel = k,
            (Some(Snapshot::Clone { .. }), None) => {}
            (_, k) => config.kernel = k.ok_or(ConfigError::Required { flag: flag::KERNEL })?,
        }
        config.console_log = self.console_log.ok_or(ConfigError::Required {
            flag: flag::CONSOLE_LOG,
        })?;
        config.fs = match (self.fs_socket, self.fs_tag) {
            (Some(socket), Some(tag)) => Some(FsShare { socket, tag }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Together {
                    flag: flag::FS_SOCKET,
                    with: flag::FS_TAG,
                })
            }
        };
        config.net = match (self.net_tap, self.net_mac) {
            (Some(tap), mac) => Some(NetConfig {
                tap,
                mac: mac.unwrap_or(DEFAULT_MAC),
            }),
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ConfigError::Needs {
                    flag: flag::NET_MAC,
                    needs: flag::NET_TAP,
                })
            }
        };
        config.identity = match (self.uid, self.gid) {
            (Some(uid), Some(gid)) => Some(Identity { uid, gid }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Together {
                    flag: flag::UID,
                    with: flag::GID,
                })
            }
        };
        Ok(config)
    }
}

fn text<'a>(flag: &'static str, value: &'a OsStr) -> Result<&'a str, ConfigError> {
    value
        .to_str()
        .ok_or_else(|| ConfigError::value(flag, &value.to_string_lossy(), ValueError::NotUtf8))
}

/// A whole number from `min` to `max`.
fn number(flag: &'static str, value: &OsStr, min: u64, max: u64) -> Result<u64, ConfigError> {
    let v = text(flag, value)?;
    let n = v.parse::<u64>().map_err(|source| {
        ConfigError::value(flag, v, ValueError::NotANumber { min, max, source })
    })?;
    check_range(flag, n, min, max).map(|()| n)
}

fn tap(flag: &'static str, value: &OsStr) -> Result<NetTap, ConfigError> {
    let v = text(flag, value)?;
    match v.strip_prefix(TAP_FD_PREFIX) {
        Some(n) => n
            .parse()
            .map(NetTap::Fd)
            .map_err(|_| ConfigError::value(flag, v, ValueError::Descriptor)),
        None => Ok(NetTap::Name(v.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<VmmConfig, ConfigError> {
        VmmConfig::parse(s.split_whitespace())
    }

    /// A VM with every field away from its default.
    fn everything() -> VmmConfig {
        VmmConfig {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd".into()),
            cmdline: "console=ttyS0 reboot=t quiet".into(),
            memory_mib: 512,
            vcpus: MAX_VCPUS,
            console_log: "/run/x/console.log".into(),
            seccomp: SeccompMode::Log,
            vsock_socket: Some("/run/x/vhost-vsock.sock".into()),
            fs: Some(FsShare {
                socket: "/run/x/vhost-fs.sock".into(),
                tag: "husk-shared".into(),
            }),
            net: Some(NetConfig {
                tap: NetTap::Fd(3),
                mac: "02:00:00:aa:bb:0c".parse().unwrap(),
            }),
            rng: true,
            jail: Some("/run/x".into()),
            identity: Some(Identity {
                uid: 1_879_048_193,
                gid: 1_879_048_194,
            }),
            new_pid_ns: true,
            snapshot: None,
        }
    }

    /// [`everything`] as a template: without its vhost-user devices,
    /// which templates cannot have.
    fn template() -> VmmConfig {
        VmmConfig {
            vsock_socket: None,
            fs: None,
            snapshot: Some(Snapshot::Template {
                memory_file: "/dev/shm/t/memory".into(),
                state_file: "/run/x/state".into(),
            }),
            ..everything()
        }
    }

    /// A clone of [`template`], jailed and hardened like it.
    fn clone() -> VmmConfig {
        VmmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: String::new(),
            snapshot: Some(Snapshot::Clone {
                memory_file: "/dev/shm/t/memory".into(),
                state_file: "/run/t/state".into(),
            }),
            ..template()
        }
    }

    #[test]
    fn to_args_then_parse_gives_the_same_vm() {
        let mut named_tap = everything();
        named_tap.net.as_mut().unwrap().tap = NetTap::Name("tap0".into());
        let mut odd_paths = VmmConfig::new("/k/a kernel with spaces", "/c");
        // Paths are not text: a byte that is not UTF-8 survives too.
        use std::os::unix::ffi::OsStringExt;
        odd_paths.initrd = Some(OsString::from_vec(b"/k/\xffinitrd".to_vec()).into());
        odd_paths.memory_mib = MIN_MEMORY_MIB;
        let mut odd_clone = VmmConfig::clone_of(
            OsString::from_vec(b"/dev/shm/\xffmemory".to_vec()),
            "/run/t/a state",
            "/c",
        );
        odd_clone.memory_mib = 64;
        for config in [
            everything(),
            named_tap,
            odd_paths,
            VmmConfig::new("/k", "/c"),
            template(),
            clone(),
            odd_clone,
        ] {
            let args = config.to_args();
            let back = VmmConfig::parse(args.clone())
                .unwrap_or_else(|e| panic!("{args:?} does not parse: {e}"));
            assert_eq!(back, config, "{args:?}");
        }
    }

    #[test]
    fn to_args_writes_each_flag_with_its_value() {
        let args = everything().to_args();
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        let after = |f: &str| {
            let i = args
                .iter()
                .position(|a| *a == f)
                .unwrap_or_else(|| panic!("{f} missing"));
            args[i + 1]
        };
        assert_eq!(after("--kernel"), "/k/vmlinux");
        assert_eq!(after("--initrd"), "/k/initrd");
        assert_eq!(after("--cmdline"), "console=ttyS0 reboot=t quiet");
        assert_eq!(after("--memory-mib"), "512");
        assert_eq!(after("--vcpus"), "254");
        assert_eq!(after("--console-log"), "/run/x/console.log");
        assert_eq!(after("--seccomp"), "log");
        assert_eq!(after("--vsock-socket"), "/run/x/vhost-vsock.sock");
        assert_eq!(after("--fs-socket"), "/run/x/vhost-fs.sock");
        assert_eq!(after("--fs-tag"), "husk-shared");
        assert_eq!(after("--net-tap"), "fd:3");
        assert_eq!(after("--net-mac"), "02:00:00:aa:bb:0c");
        assert_eq!(after("--jail"), "/run/x");
        assert_eq!(after("--uid"), "1879048193");
        assert_eq!(after("--gid"), "1879048194");
        assert!(args.contains(&"--rng"));
        assert!(args.contains(&"--new-pid-ns"));
        // Every flag once, nothing else: 15 with a value, two switches.
        assert_eq!(args.len(), 15 * 2 + 2, "{args:?}");
    }

    #[test]
    fn a_template_and_a_clone_write_their_files_and_a_clone_no_kernel() {
        let strings = |c: VmmConfig| -> Vec<String> {
            c.to_args()
                .iter()
                .map(|a| a.to_str().unwrap().to_owned())
                .collect()
        };
        let after = |args: &[String], f: &str| {
            let i = args.iter().position(|a| a == f).unwrap();
            args[i + 1].clone()
        };
        let t = strings(template());
        assert_eq!(after(&t, "--memory-file"), "/dev/shm/t/memory");
        assert_eq!(after(&t, "--snapshot-to"), "/run/x/state");
        assert_eq!(after(&t, "--kernel"), "/k/vmlinux");
        assert!(!t.contains(&"--restore-from".to_string()));
        let c = strings(clone());
        assert_eq!(after(&c, "--memory-file"), "/dev/shm/t/memory");
        assert_eq!(after(&c, "--restore-from"), "/run/t/state");
        for absent in ["--kernel", "--initrd", "--cmdline", "--snapshot-to"] {
            assert!(!c.contains(&absent.to_string()), "{absent} in {c:?}");
        }
        // What a clone must match, it is written with.
        assert_eq!(after(&c, "--memory-mib"), "512");
        assert_eq!(after(&c, "--vcpus"), "254");
    }

    #[test]
    fn template_and_clone_flags_are_checked_together() {
        let clone_args = "--console-log c --memory-file m --restore-from s";
        let template_args = "--kernel k --console-log c --memory-file m --snapshot-to s";
        assert!(parse(clone_args).is_ok() && parse(template_args).is_ok());
        for (a, want) in [
            (
                "--kernel k --console-log c --memory-file m".to_string(),
                "--memory-file needs --snapshot-to or --restore-from",
            ),
            (
                "--kernel k --console-log c --snapshot-to s".into(),
                "--snapshot-to needs --memory-file",
            ),
            (
                "--console-log c --restore-from s".into(),
                "--restore-from needs --memory-file",
            ),
            (
                format!("{template_args} --restore-from r"),
                "--snapshot-to cannot go with --restore-from: a VM is a template or a clone",
            ),
            (
                format!("{clone_args} --kernel k"),
                "--kernel cannot go with --restore-from: a clone runs the template's kernel",
            ),
            (
                format!("{clone_args} --initrd i"),
                "--initrd cannot go with --restore-from",
            ),
            (
                format!("{clone_args} --cmdline quiet"),
                "--cmdline cannot go with --restore-from",
            ),
            (
                format!("{template_args} --vsock-socket v"),
                "--vsock-socket cannot go with --snapshot-to: vhost-user daemons map guest RAM",
            ),
            (
                format!("{clone_args} --fs-socket f --fs-tag t"),
                "--fs-socket cannot go with --restore-from: vhost-user",
            ),
            ("--console-log c".into(), "--kernel is required"),
            (
                format!("{template_args} --memory-file m2"),
                "--memory-file given twice",
            ),
        ] {
            let e = parse(&a).unwrap_err().to_string();
            assert!(e.contains(want), "{a}: {e}");
        }
        // validate holds a config built in code to the same rules.
        let mut c = clone();
        c.kernel = "/k".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--kernel cannot go with --restore-from"), "{e}");
        let mut t = template();
        t.vsock_socket = Some("/v".into());
        let e = t.validate().unwrap_err().to_string();
        assert!(
            e.contains("--vsock-socket cannot go with --snapshot-to"),
            "{e}"
        );
    }

    #[test]
    fn arguments_with_defaults() {
        let c = parse("--kernel k --console-log c --vcpus 2").unwrap();
        assert_eq!((c.kernel, c.console_log), ("k".into(), "c".into()));
        assert_eq!(
            (c.vcpus, c.memory_mib, c.seccomp),
            (2, 128, SeccompMode::Kill)
        );
        assert!(c.initrd.is_none() && c.cmdline.is_empty());
        assert!(c.vsock_socket.is_none() && c.fs.is_none() && c.jail.is_none());
        assert!(!c.rng);
        let c = parse("--kernel k --console-log c --jail /run/vm1 --rng").unwrap();
        assert_eq!(c.jail, Some("/run/vm1".into()));
        assert!(c.rng);
        let c = parse("--kernel k --console-log c --fs-socket s --fs-tag t").unwrap();
        assert_eq!(
            c.fs,
            Some(FsShare {
                socket: "s".into(),
                tag: "t".into()
            })
        );
        let c = parse("--kernel k --console-log c --net-tap tap0").unwrap();
        assert_eq!(
            c.net,
            Some(NetConfig {
                tap: NetTap::Name("tap0".into()),
                mac: DEFAULT_MAC
            })
        );
        let c =
            parse("--kernel k --console-log c --net-tap fd:7 --net-mac 02:00:00:aa:bb:0c").unwrap();
        let net = c.net.unwrap();
        assert_eq!(net.tap, NetTap::Fd(7));
        assert_eq!(net.mac.bytes(), [2, 0, 0, 0xaa, 0xbb, 0x0c]);
        let c = parse("--kernel k --console-log c --seccomp off").unwrap();
        assert_eq!(c.seccomp, SeccompMode::Off);
        assert!(c.identity.is_none() && !c.new_pid_ns);
        let c = parse("--kernel k --console-log c --uid 1000 --gid 1001 --new-pid-ns").unwrap();
        assert_eq!(
            c.identity,
            Some(Identity {
                uid: 1000,
                gid: 1001
            })
        );
        assert!(c.new_pid_ns);
    }

    #[test]
    fn bad_arguments_are_named() {
        for (a, want) in [
            ("--console-log c", "--kernel is required"),
            ("--kernel k", "--console-log is required"),
            (
                "--kernel k --console-log c --memory-mib lots",
                "--memory-mib \"lots\": not a whole number from 16 to 1048576",
            ),
            (
                "--kernel k --console-log c --memory-mib 8",
                "--memory-mib \"8\": must be from 16 to 1048576",
            ),
            (
                "--kernel k --console-log c --vcpus -1",
                "--vcpus \"-1\": not a whole number from 1 to 254",
            ),
            ("--kernel k --console-log c --vcpus 0", "--vcpus \"0\": must be from 1 to 254"),
            (
                "--kernel k --console-log c --vcpus 255",
                "--vcpus \"255\": must be from 1 to 254",
            ),
            (
                "--kernel k --console-log c --vcpus 1000",
                "--vcpus \"1000\": must be from 1 to 254",
            ),
            (
                "--kernel k --console-log c --seccomp maybe",
                "--seccomp \"maybe\": expected kill, log or off",
            ),
            (
                "--kernel k --console-log c --frobnicate",
                "unknown argument \"--frobnicate\"",
            ),
            ("--kernel", "--kernel needs a value"),
            ("--kernel k --kernel k2", "--kernel given twice"),
            (
                "--kernel k --console-log c --fs-socket s",
                "--fs-socket and --fs-tag go together",
            ),
            (
                "--kernel k --console-log c --fs-socket s --fs-tag 0123456789012345678901234567890123456",
                "virtio-fs tags are 1 to 36 bytes",
            ),
            (
                "--kernel k --console-log c --net-mac 02:00:00:00:00:01",
                "--net-mac needs --net-tap",
            ),
            (
                "--kernel k --console-log c --net-tap t --net-mac 02:00:00:00:01",
                "six hex bytes",
            ),
            (
                "--kernel k --console-log c --net-tap t --net-mac 02:00:00:00:00:zz",
                "\"zz\" is not a hex byte",
            ),
            (
                "--kernel k --console-log c --net-tap t --net-mac 01:00:00:00:00:01",
                "multicast",
            ),
            (
                "--kernel k --console-log c --net-tap fd:x",
                "--net-tap \"fd:x\": expected fd:N",
            ),
            (
                "--kernel k --console-log c --net-tap fd:-1",
                "--net-tap \"fd:-1\": expected fd:N",
            ),
            (
                "--kernel k --console-log c --net-tap sixteen-bytes-xx",
                "interface names are 1 to 15 bytes",
            ),
            ("--kernel k --console-log c --uid 1000", "--uid and --gid go together"),
            ("--kernel k --console-log c --gid 1000", "--uid and --gid go together"),
            (
                "--kernel k --console-log c --uid 0 --gid 1",
                "--uid \"0\": must be from 1 to 4294967294",
            ),
            (
                "--kernel k --console-log c --uid 1 --gid 4294967295",
                "--gid \"4294967295\": must be from 1 to 4294967294",
            ),
            (
                "--kernel k --console-log c --uid root --gid 1",
                "--uid \"root\": not a whole number",
            ),
            ("--kernel k --new-pid-ns x", "unknown argument \"x\""),
        ] {
            let e = parse(a).unwrap_err().to_string();
            assert!(e.contains(want), "{a}: {e}");
        }
        assert!(matches!(parse("--kernel k -h"), Err(ConfigError::Help)));
    }

    #[test]
    fn validate_holds_a_vm_built_in_code_to_the_same_limits() {
        let bad = |edit: &dyn Fn(&mut VmmConfig), want: &str| {
            let mut c = VmmConfig::new("/k", "/c");
            edit(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        bad(&|c| c.vcpus = 0, "--vcpus \"0\": must be from 1 to 254");
        bad(&|c| c.vcpus = 255, "--vcpus \"255\": must be from 1 to 254");
        bad(
            &|c| c.memory_mib = MAX_MEMORY_MIB + 1,
            "--memory-mib \"1048577\"",
        );
        bad(
            &|c| c.cmdline = "a\0b".into(),
            "--cmdline \"a\\0b\": contains a NUL",
        );
        bad(
            &|c| {
                c.fs = Some(FsShare {
                    socket: "/s".into(),
                    tag: String::new(),
                })
            },
            "--fs-tag \"\": virtio-fs tags",
        );
        bad(
            &|c| {
                c.net = Some(NetConfig {
                    tap: NetTap::Name("fd:3".into()),
                    mac: DEFAULT_MAC,
                })
            },
            "--net-tap \"fd:3\"",
        );
        bad(
            &|c| {
                c.net = Some(NetConfig {
                    tap: NetTap::Fd(-1),
                    mac: DEFAULT_MAC,
                })
            },
            "--net-tap \"fd:-1\"",
        );
        bad(
            &|c| c.identity = Some(Identity { uid: 0, gid: 5 }),
            "--uid \"0\": must be from 1",
        );
        bad(
            &|c| {
                c.identity = Some(Identity {
                    uid: 5,
                    gid: u32::MAX,
                })
            },
            "--gid \"4294967295\"",
        );
        assert!(everything().validate().is_ok());
    }
}
