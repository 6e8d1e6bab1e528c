//! The host end of the debug console: a root shell in a pod's guest,
//! outside any container, for an operator debugging the pod (Kata's
//! `kata-runtime exec`). Off unless `[debug] console = true`: only then
//! does the shim put [`husk_proto::DEBUG_CONSOLE_PARAM`] on the guest's
//! kernel command line, and only with it does the agent listen on
//! [`husk_proto::DEBUG_CONSOLE_VSOCK_PORT`]. `husk console POD` connects
//! through the pod's hybrid-vsock socket (root-only, in the VM's 0700 run
//! directory), sends the terminal size, and relays the terminal.
//!
//! What comes back is the guest's output, shown to the operator as it is:
//! the operator asked for a shell in that guest.

use husk_config::Config;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(
        "the debug console is off: set `[debug] console = true` in the husk configuration; \
         pods booted after that serve one"
    )]
    Off,
    #[error("{0:?} is not a pod id")]
    BadPodId(String),
    #[error("pod {pod}: no VM runs for it here ({socket} does not exist)")]
    NotRunning { pod: String, socket: PathBuf },
    #[error(
        "pod {pod}: its guest serves no debug console (booted before `[debug] console = true`?)"
    )]
    Refused {
        pod: String,
        #[source]
        source: husk_hypervisor::Error,
    },
    #[error("pod {pod}: the guest did not answer the console request within {timeout:?}")]
    Timeout { pod: String, timeout: Duration },
    #[error("pod {pod}: sending the terminal size: {source}")]
    Io {
        pod: String,
        #[source]
        source: std::io::Error,
    },
}

/// Asks the guest for the console when the configuration says so.
pub fn ask_guest_for_console(config: &mut Config) {
    if !config.debug.console {
        return;
    }
    let params = &mut config.hypervisor.kernel_params;
    if !params
        .split_whitespace()
        .any(|p| p == husk_proto::DEBUG_CONSOLE_PARAM)
    {
        if !params.trim().is_empty() {
            params.push(' ');
        }
        params.push_str(husk_proto::DEBUG_CONSOLE_PARAM);
    }
}

/// The first line of a console session: the terminal's size (0 0 when
/// there is no terminal).
pub fn size_line(rows: u16, cols: u16) -> String {
    format!("SIZE {rows} {cols}\n")
}

/// Opens pod `pod`'s debug console with the terminal size given; the
/// stream is then the shell's terminal.
pub async fn open(
    config: &Config,
    pod: &str,
    rows: u16,
    cols: u16,
    timeout: Duration,
) -> Result<UnixStream, ConsoleError> {
    if !config.debug.console {
        return Err(ConsoleError::Off);
    }
    if !husk_proto::is_safe_id(pod, 128) {
        return Err(ConsoleError::BadPodId(pod.to_owned()));
    }
    // MicroVm's layout: <runtime_dir>/vms/<id>/agent.vsock.
    let socket = config
        .hypervisor
        .runtime_dir
        .join("vms")
        .join(pod)
        .join("agent.vsock");
    if !socket.exists() {
        return Err(ConsoleError::NotRunning {
            pod: pod.to_owned(),
            socket,
        });
    }
    let connect =
        husk_hypervisor::hybrid_vsock_connect(&socket, husk_proto::DEBUG_CONSOLE_VSOCK_PORT);
    let mut stream = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| ConsoleError::Timeout {
            pod: pod.to_owned(),
            timeout,
        })?
        .map_err(|source| ConsoleError::Refused {
            pod: pod.to_owned(),
            source,
        })?;
    stream
        .write_all(size_line(rows, cols).as_bytes())
        .await
        .map_err(|source| ConsoleError::Io {
            pod: pod.to_owned(),
            source,
        })?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_parameter_is_added_only_when_on_and_once() {
        let mut c = Config::default();
        ask_guest_for_console(&mut c);
        assert_eq!(c.hypervisor.kernel_params, "");
        c.debug.console = true;
        c.hypervisor.kernel_params = "loglevel=7".into();
        ask_guest_for_console(&mut c);
        ask_guest_for_console(&mut c);
        assert_eq!(
            c.hypervisor.kernel_params,
            format!("loglevel=7 {}", husk_proto::DEBUG_CONSOLE_PARAM)
        );
        c.validate().unwrap();
    }

    #[tokio::test]
    async fn off_missing_and_bad_pods_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.hypervisor.runtime_dir = dir.path().to_owned();
        let t = Duration::from_secs(1);
        let e = open(&c, "p", 0, 0, t).await.unwrap_err();
        assert!(matches!(e, ConsoleError::Off), "{e}");
        assert!(e.to_string().contains("[debug] console = true"), "{e}");
        c.debug.console = true;
        let e = open(&c, "../p", 0, 0, t).await.unwrap_err();
        assert!(matches!(e, ConsoleError::BadPodId(_)), "{e}");
        let e = open(&c, "p", 0, 0, t).await.unwrap_err();
        assert!(matches!(e, ConsoleError::NotRunning { .. }), "{e}");
        // A guest that does not listen: the backend closes the stream.
        let vm = dir.path().join("vms/p");
        std::fs::create_dir_all(&vm).unwrap();
        let listener = tokio::net::UnixListener::bind(vm.join("agent.vsock")).unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        });
        let e = open(&c, "p", 0, 0, t).await.unwrap_err();
        assert!(matches!(e, ConsoleError::Refused { .. }), "{e}");
    }
}
