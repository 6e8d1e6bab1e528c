//! The VM's graphical console (docs/vm-pods.md, "A graphical console"):
//! `io.husk.vm.vnc: PORT` gives the VM a display and QEMU's VNC server on
//! PORT in the pod's network namespace, reachable at the pod's IPv4
//! address ([`crate::host::pod_ports`]) and through `kubectl
//! port-forward`; `io.husk.vm.vnc-websocket: PORT` adds a WebSocket
//! endpoint (RFC 6455, binary frames) that noVNC connects to directly.
//!
//! QEMU runs in a network namespace of its own and has no listener
//! (`-vnc none`): the shim listens in the pod's namespace and hands each
//! accepted connection to QEMU over QMP (`getfd` with the descriptor, then
//! `add_client`), as libvirt does. A WebSocket client's upgrade and
//! framing are the shim's ([`websocket`]); QEMU gets one end of a socket
//! pair whose other end the shim bridges to the frames, so QEMU sees plain
//! RFB either way.
//!
//! Password: the file `password` of a volume mounted at `/vnc` (a
//! Secret), at most 8 bytes: VNC authentication is RFB's DES challenge,
//! which uses 8 bytes of password and is weak (no encryption of the
//! session, an offline guess per captured challenge); use port-forward
//! and keep the ports off untrusted networks. Without a password the
//! console is refused unless `io.husk.vm.vnc-auth: none` says so. The
//! password is set over QMP (`set_password`) before any client is handed
//! over.
//!
//! Everything from the network is hostile: the shim parses only the
//! WebSocket upgrade and frames, under a deadline and size bounds, at most
//! [`websocket::MAX_WEBSOCKETS`] at once; raw VNC clients go to QEMU untouched, and
//! QEMU bounds its own clients.

mod handoff;
mod websocket;

use handoff::Handoff;

use super::error::VmError;
use crate::bundle::BundleSpec;
use crate::host::network::PodNetwork;
use husk_hypervisor::qemu::vm_extras::Display;
use husk_hypervisor::VmImage;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub const VNC_ANNOTATION: &str = "io.husk.vm.vnc";
pub const WEBSOCKET_ANNOTATION: &str = "io.husk.vm.vnc-websocket";
pub const AUTH_ANNOTATION: &str = "io.husk.vm.vnc-auth";
/// Where the password's Secret is mounted, and its key.
pub const SECRET_MOUNT: &str = "/vnc";
const PASSWORD_FILE: &str = "password";
/// What VNC authentication uses of a password.
const MAX_PASSWORD: usize = 8;

/// What the container asked of the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VncPlan {
    pub port: u16,
    pub websocket: Option<u16>,
    /// None only with `io.husk.vm.vnc-auth: none`.
    pub password: Option<String>,
}

impl VncPlan {
    /// What QEMU is told.
    pub fn display(&self) -> Display {
        Display {
            password: self.password.is_some(),
        }
    }
}

fn invalid(message: String) -> VmError {
    VmError::Invalid(message)
}

fn port_of(key: &str, value: &str) -> Result<u16, VmError> {
    match value.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(invalid(format!(
            "{key}: {value:?} is not a TCP port (1-65535)"
        ))),
    }
}

/// The console the container asks for, if any, with its password read
/// from the mounted Secret.
pub fn plan(bundle: &BundleSpec) -> Result<Option<VncPlan>, VmError> {
    let Some(port) = bundle.annotation(VNC_ANNOTATION) else {
        if bundle.annotation(WEBSOCKET_ANNOTATION).is_some() {
            return Err(invalid(format!(
                "{WEBSOCKET_ANNOTATION} needs {VNC_ANNOTATION}: the WebSocket endpoint is the \
                 VNC console's"
            )));
        }
        return Ok(None);
    };
    let port = port_of(VNC_ANNOTATION, port)?;
    let websocket = bundle
        .annotation(WEBSOCKET_ANNOTATION)
        .map(|w| port_of(WEBSOCKET_ANNOTATION, w))
        .transpose()?;
    if websocket == Some(port) {
        return Err(invalid(format!(
            "{WEBSOCKET_ANNOTATION}: port {port} is already {VNC_ANNOTATION}'s"
        )));
    }
    let password = password(bundle)?;
    let open = match bundle.annotation(AUTH_ANNOTATION) {
        None | Some("vnc") => false,
        Some("none") => true,
        Some(other) => {
            return Err(invalid(format!(
                "{AUTH_ANNOTATION}: {other:?} is neither \"vnc\" nor \"none\""
            )))
        }
    };
    match (password, open) {
        (Some(_), true) => Err(invalid(format!(
            "{AUTH_ANNOTATION}: none, yet a password is mounted at {SECRET_MOUNT}: say one or \
             the other"
        ))),
        (None, false) => Err(invalid(format!(
            "{VNC_ANNOTATION}: the console needs a password: mount a Secret with a \
             `{PASSWORD_FILE}` key at {SECRET_MOUNT} (at most {MAX_PASSWORD} bytes), or set \
             {AUTH_ANNOTATION}: none to serve it without one (anyone who reaches the port then \
             has the VM's screen and keyboard)"
        ))),
        (password, _) => Ok(Some(VncPlan {
            port,
            websocket,
            password,
        })),
    }
}

/// The password in the Secret mounted at [`SECRET_MOUNT`] (a final
/// newline dropped), checked to be something VNC authentication uses
/// whole.
fn password(bundle: &BundleSpec) -> Result<Option<String>, VmError> {
    let Some(volume) = super::launch::mount_source(&bundle.spec, SECRET_MOUNT) else {
        return Ok(None);
    };
    let data =
        super::cloud_init::read_in_volume(&volume, PASSWORD_FILE, 4096)?.ok_or_else(|| {
            invalid(format!(
                "{VNC_ANNOTATION}: the volume at {SECRET_MOUNT} has no `{PASSWORD_FILE}`"
            ))
        })?;
    let text = String::from_utf8(data)
        .map_err(|_| invalid(format!("{SECRET_MOUNT}/{PASSWORD_FILE}: not UTF-8 text")))?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if text.is_empty() || text.len() > MAX_PASSWORD || text.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{SECRET_MOUNT}/{PASSWORD_FILE}: {} bytes; VNC authentication takes 1 to \
             {MAX_PASSWORD} bytes of printable text (it uses no more: a longer one would be \
             cut without a word)",
            text.len()
        )));
    }
    Ok(Some(text.to_owned()))
}

/// Sets the password, listens in the pod's namespace, lets the ports
/// through at the pod's address, and hands clients to QEMU until it
/// exits.
pub async fn serve(
    plan: &VncPlan,
    vm: Arc<VmImage>,
    network: Option<&PodNetwork>,
    call_timeout: Duration,
) -> Result<(), VmError> {
    let Some(network) = network else {
        return Err(invalid(format!(
            "{VNC_ANNOTATION}: the console listens in the pod's network namespace, and this \
             container has none"
        )));
    };
    if let Some(password) = &plan.password {
        vm.qmp()
            .execute(
                "set_password",
                Some(json!({"protocol": "vnc", "password": password})),
                call_timeout,
            )
            .await?;
    }
    let vnc = listen(network, plan.port)?;
    let ws = plan.websocket.map(|p| listen(network, p)).transpose()?;
    let mut ports = vec![plan.port];
    ports.extend(plan.websocket);
    crate::host::pod_ports::pass_to_namespace(network, &ports)?;
    let handoff = Arc::new(Handoff::new(vm, call_timeout));
    tokio::spawn(handoff::accept_vnc(vnc, handoff.clone()));
    if let Some(ws) = ws {
        tokio::spawn(websocket::accept(ws, handoff));
    }
    tracing::info!(port = plan.port, websocket = ?plan.websocket, password = plan.password.is_some(), "VNC console served");
    Ok(())
}

/// A listener on every IPv4 address of the pod's namespace.
fn listen(network: &PodNetwork, port: u16) -> Result<TcpListener, VmError> {
    let std = crate::host::network::on_thread_in_netns(&network.netns, move || {
        let l = std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .map_err(|e| {
        invalid(format!(
            "{VNC_ANNOTATION}: listening on port {port} in the pod's network namespace: {}",
            super::context::chain(e)
        ))
    })?;
    TcpListener::from_std(std).map_err(|source| VmError::Io {
        context: format!("registering the VNC listener on port {port}"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::path::Path;

    fn bundle(annotations: Value, password: Option<&str>) -> (BundleSpec, tempfile::TempDir) {
        let d = tempfile::tempdir().unwrap();
        let mut spec = json!({"root": {"path": "rootfs"}, "annotations": annotations});
        if let Some(p) = password {
            std::fs::write(d.path().join("password"), p).unwrap();
            spec["mounts"] = json!([{"destination": "/vnc", "source": d.path()}]);
        }
        (BundleSpec::of(spec, Path::new("/b")).unwrap(), d)
    }

    #[test]
    fn a_console_needs_a_password_or_an_explicit_none() {
        let (b, _d) = bundle(json!({}), None);
        assert_eq!(plan(&b).unwrap(), None);
        let (b, _d) = bundle(json!({VNC_ANNOTATION: "5900"}), Some("s3cret\n"));
        assert_eq!(
            plan(&b).unwrap(),
            Some(VncPlan {
                port: 5900,
                websocket: None,
                password: Some("s3cret".into())
            })
        );
        let (b, _d) = bundle(json!({VNC_ANNOTATION: "5900"}), None);
        let e = plan(&b).unwrap_err().to_string();
        assert!(e.contains("needs a password") && e.contains("/vnc"), "{e}");
        let (b, _d) = bundle(
            json!({VNC_ANNOTATION: "5900", AUTH_ANNOTATION: "none", WEBSOCKET_ANNOTATION: "5700"}),
            None,
        );
        let p = plan(&b).unwrap().unwrap();
        assert!(!p.display().password);
        assert_eq!((p.password, p.websocket), (None, Some(5700)));
    }

    #[test]
    fn what_vnc_authentication_cannot_use_is_refused() {
        for (bad, why) in [
            ("longer-than-8", "1 to 8 bytes"),
            ("", "1 to 8 bytes"),
            ("a\tb", "printable"),
        ] {
            let (b, _d) = bundle(json!({VNC_ANNOTATION: "5900"}), Some(bad));
            let e = plan(&b).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        for (annotations, why) in [
            (json!({VNC_ANNOTATION: "0"}), "not a TCP port"),
            (json!({VNC_ANNOTATION: "vnc"}), "not a TCP port"),
            (
                json!({WEBSOCKET_ANNOTATION: "5700"}),
                "needs io.husk.vm.vnc",
            ),
            (
                json!({VNC_ANNOTATION: "5900", WEBSOCKET_ANNOTATION: "5900"}),
                "already",
            ),
            (
                json!({VNC_ANNOTATION: "5900", AUTH_ANNOTATION: "none"}),
                "one or the other",
            ),
        ] {
            let (b, _d) = bundle(annotations.clone(), Some("pw"));
            let e = plan(&b).unwrap_err().to_string();
            assert!(e.contains(why), "{annotations}: {e}");
        }
    }
}
