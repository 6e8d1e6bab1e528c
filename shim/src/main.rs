//! containerd-shim-husk-v2: the containerd runtime v2 shim of husk.
//!
//! containerd runs it with an action: `start` (answer with the pod's shim
//! address, starting the shim), `delete` (clean up after a dead shim), or
//! none (serve the Task API on the socket `start` chose). `-v` and `-info`
//! describe it. The actions are husk's own (husk_shim::bootstrap), and so
//! is serving (husk_shim::server: the crate's ttrpc server over husk's
//! Task service). Under the name `containerd-shim-husk-vm-v2` (a link to
//! this executable) it serves husk-vm pods instead (`Mode`,
//! docs/vm-pods.md).
//!
//! The crate is pinned to 0.10: it is the last with the task v2 API that
//! containerd 1.6 and 1.7 speak (0.11 moved to v3, which only 2.x serves).

use anyhow::Context;
use husk_shim::task::bootstrap;
use husk_shim::task::server::{self, ServeArgs};
use husk_shim::Mode;
use std::io::Write;

fn main() {
    let args: Vec<_> = std::env::args_os().collect();
    // The pool's own actions (husk_shim::pool), not containerd's.
    match args.get(1).and_then(|a| a.to_str()) {
        Some("pool-member") => return pool_member(&args[2..]),
        Some("pool-fill") => return pool_fill(),
        _ => {}
    }
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => fail(anyhow::anyhow!("{e}")),
    };
    let out = |bytes: &[u8]| {
        let mut stdout = std::io::stdout();
        if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
            fail(anyhow::Error::new(e).context("writing stdout"));
        }
    };
    if flags.version {
        return out(bootstrap::version().as_bytes());
    }
    if flags.info {
        return match bootstrap::info() {
            Ok(b) => out(&b),
            Err(e) => fail(e),
        };
    }
    match flags.action.as_str() {
        "start" => {
            if let Err(e) = bootstrap::start(&flags) {
                fail(e.context("start"));
            }
        }
        "delete" => match bootstrap::delete(&flags) {
            Ok(b) => out(&b),
            Err(e) => fail(e.context("delete")),
        },
        "" => serve(&flags),
        other => fail(anyhow::anyhow!(
            "unknown action {other:?}: expected start, delete or none"
        )),
    }
}

/// `pool-member SHAPE MEMBER`: boot a VM for the pool and wait for a pod.
fn pool_member(args: &[std::ffi::OsString]) {
    let [shape, member] = args else {
        fail(anyhow::anyhow!("usage: pool-member SHAPE MEMBER"));
    };
    let (shape, member) = (
        shape.to_string_lossy(),
        member.to_string_lossy().into_owned(),
    );
    husk_shim::logging::init(false);
    let run = (|| {
        let config = husk_config::Config::load_default()?;
        let shape = husk_shim::micro_vm::pool::configured_shape(&config, &shape)?;
        if !husk_proto::is_safe_id(&member, 64) {
            anyhow::bail!("member id {member:?} is not a safe name");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let served = runtime.block_on(husk_shim::micro_vm::pool::run_member(config, shape, member));
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        served
    })();
    if let Err(e) = run {
        fail(e.context("pool member"));
    }
}

/// `pool-fill`: boot members until every shape has its size.
fn pool_fill() {
    let filled = husk_config::Config::load_default()
        .map_err(anyhow::Error::new)
        .and_then(|c| husk_shim::micro_vm::pool::fill(&c));
    if let Err(e) = filled {
        fail(e.context("pool-fill"));
    }
}

fn fail(e: anyhow::Error) -> ! {
    eprintln!("{}: {e:#}", Mode::current().runtime_id());
    std::process::exit(1);
}

fn serve(flags: &containerd_shim::Flags) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(anyhow::Error::new(e).context("starting the tokio runtime")),
    };
    let args = (|| {
        anyhow::Ok(ServeArgs {
            namespace: flags.namespace.clone(),
            id: flags.id.clone(),
            socket: Some(flags.socket.clone())
                .filter(|s| !s.is_empty())
                .context("-socket is required to serve")?,
            ttrpc_address: std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS")?,
            bundle: std::env::current_dir().context("the bundle (working directory)")?,
        })
    })();
    let args = args.unwrap_or_else(|e| fail(e));
    if let Err(e) = runtime.block_on(serve_pod(args)) {
        fail(e);
    }
    // A blocking FIFO open that never found its writer must not keep the
    // shim alive after containerd told it to go.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
}

/// The shim of one pod, started cold by `start`.
async fn serve_pod(args: ServeArgs) -> anyhow::Result<()> {
    let bound = match server::bind(&args.socket) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && bootstrap::answers(&args.socket) => {
            // Another shim serves this pod already (a race of two starts).
            signal_started();
            return Ok(());
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("binding {}", args.socket))),
    };
    // `start` waits for stdout to close: the socket accepts from now on.
    signal_started();
    husk_shim::logging::init(true);
    let pod_id = bootstrap::pod_id(&args.bundle, &args.id);
    let config = husk_config::Config::load_default();
    match Mode::current() {
        Mode::MicroVm => {
            let pod = husk_shim::micro_vm::MicroVmPod::new(pod_id.clone(), config);
            server::serve_pod(&args, pod_id, pod, bound).await
        }
        Mode::VmImage => {
            let pod = husk_shim::vm_image::VmImagePod::new(pod_id.clone(), config);
            server::serve_pod(&args, pod_id, pod, bound).await
        }
    }
}

/// Points stdout at stderr, closing the pipe `start` reads to EOF.
fn signal_started() {
    // SAFETY: dup2 on the process's own standard descriptors; both are
    // open (stderr is /dev/null or a file when started by `start`).
    unsafe {
        libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
    }
}
