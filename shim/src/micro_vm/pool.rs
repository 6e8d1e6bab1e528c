//! The pool of pre-booted VMs (docs/pool.md), owned by the shims among
//! themselves: no node daemon. Each idle VM lives in a *pool member*, a
//! shim process that booted it and waits on a claim socket
//! `<runtime_dir>/pool/<shape>/<member>.sock`. containerd's `start` for a
//! new pod of a pooled size claims one (an atomic rename of its socket, so
//! two pods never get the same VM), hands it what containerd handed
//! `start` (namespace, id, socket, ttrpc address, bundle), and the member
//! becomes that pod's shim: its VM is already booted, and the pod's boot
//! makes it the pod's (`sandbox_pool`). `start` then refills the pool in
//! the background (`pool-fill`). A member whose VM dies exits and is not
//! handed out; a node restart empties /run, and with it the pool.

use crate::task::server::ServeArgs;
use anyhow::{bail, Context};
use husk_config::{Config, PoolShape};
use std::io::{BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most bytes of a claim or its answer.
const MAX_MESSAGE: u64 = 64 * 1024;
/// How long a claimer waits for the member to serve the pod.
const HAND_OVER: Duration = Duration::from_secs(30);
const SOCKET: &str = "sock";
const CLAIMED: &str = "claimed";
/// A member being booted: its pid, until its socket is ready.
const BOOTING: &str = "booting";

/// What a claimer sends a member: one JSON line.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Claim {
    pub pod_id: String,
    pub serve: ServeArgs,
}

/// The member's answer: one JSON line, sent once it serves the pod.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ClaimAnswer {
    pub error: Option<String>,
}

pub fn pool_root(config: &Config) -> PathBuf {
    config.hypervisor.runtime_dir.join("pool")
}

pub fn shape_dir(config: &Config, shape: &PoolShape) -> PathBuf {
    pool_root(config).join(shape.name())
}

/// The configured shape of a VM of this size, if any.
pub fn shape_for(config: &Config, vcpus: u32, memory_mib: u32) -> Option<PoolShape> {
    config
        .pool
        .shapes
        .iter()
        .copied()
        .find(|s| s.size > 0 && s.vcpus == vcpus && s.memory_mib == memory_mib)
}

fn read_line(stream: &UnixStream) -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::BufReader::new(std::io::Read::take(stream, MAX_MESSAGE))
        .read_line(&mut line)
        .context("reading")?;
    if !line.ends_with('\n') {
        bail!("no whole line within {MAX_MESSAGE} bytes");
    }
    Ok(line)
}

/// Claims an idle VM of `shape` for `claim`'s pod: true once a member
/// serves the pod on `claim.serve.socket`.
pub fn claim(config: &Config, shape: &PoolShape, claim: &Claim) -> bool {
    let dir = shape_dir(config, shape);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return false;
    };
    let mut sockets: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == SOCKET))
        .collect();
    sockets.sort();
    for socket in sockets {
        // The rename is the claim: it succeeds for one claimer only.
        let claimed = socket.with_extension(CLAIMED);
        if std::fs::rename(&socket, &claimed).is_err() {
            continue;
        }
        let result = hand_over(&claimed, claim);
        let _ = std::fs::remove_file(&claimed);
        match result {
            Ok(()) => {
                tracing::info!(pod_id = %claim.pod_id, member = %socket.display(), "pool VM claimed");
                return true;
            }
            // A member that died, or whose VM failed: the next one.
            Err(e) => {
                tracing::warn!(pod_id = %claim.pod_id, member = %socket.display(), "pool member not taken: {e:#}")
            }
        }
    }
    false
}

fn hand_over(socket: &Path, claim: &Claim) -> anyhow::Result<()> {
    let mut stream = UnixStream::connect(socket).context("connecting")?;
    stream.set_read_timeout(Some(HAND_OVER))?;
    stream.set_write_timeout(Some(HAND_OVER))?;
    let mut line = serde_json::to_vec(claim)?;
    line.push(b'\n');
    stream.write_all(&line).context("sending the claim")?;
    let answer: ClaimAnswer = serde_json::from_str(&read_line(&stream)?)?;
    match answer.error {
        None => Ok(()),
        Some(e) => bail!("{e}"),
    }
}

/// Niceness of a booting member and its VM: a refill runs while pods are
/// being handed their VMs, and their start must win the CPU (measured: ten
/// pods taking pooled VMs at once while ten replacements booted at full
/// priority took as long as ten cold starts). The claimed VM is set back to
/// 0 when its pod takes it (`sandbox_pool`).
pub const BOOT_NICENESS: i32 = 10;

/// How long one member may take to boot before the filler moves on.
const MEMBER_BOOT_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Boots members until every configured shape has its size of idle or
/// booting VMs, one at a time; one filler at a time (the others leave at
/// once).
pub fn fill(config: &Config) -> anyhow::Result<()> {
    let root = pool_root(config);
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(&root)
        .with_context(|| format!("creating {}", root.display()))?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
    let lock = std::fs::File::create(root.join(".fill.lock"))?;
    // Held until this function returns; another filler leaves at once.
    let Ok(_held) = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
    else {
        return Ok(());
    };
    for shape in &config.pool.shapes {
        let dir = shape_dir(config, shape);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)?;
        // One boot at a time: each takes a core for seconds under TCG, and
        // boots side by side only slow each other and the pods starting.
        while members(&dir) < shape.size as usize {
            let (socket, mut child) = spawn_member(&dir, shape)?;
            let deadline = std::time::Instant::now() + MEMBER_BOOT_WAIT;
            while !socket.exists()
                && child.try_wait()?.is_none()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if !socket.exists() {
                // It failed (its log says why) or is slow: not a loop of
                // failing boots either way.
                bail!("pool member for {} did not become ready", shape.name());
            }
        }
    }
    Ok(())
}

/// Idle members (sockets) and members still booting (a live pid file).
fn members(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| match p.extension().and_then(|e| e.to_str()) {
            Some(SOCKET) => true,
            Some(BOOTING) => std::fs::read_to_string(p)
                .ok()
                .and_then(|pid| pid.trim().parse::<u32>().ok())
                .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists()),
            _ => false,
        })
        .count()
}

/// Starts a member; returns its claim socket's path (there once its VM is
/// ready) and the process.
fn spawn_member(dir: &Path, shape: &PoolShape) -> anyhow::Result<(PathBuf, std::process::Child)> {
    use std::os::unix::process::CommandExt;
    let mut id = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id))
        .context("a member id")?;
    let member = format!(
        "pool-{}-{}",
        shape.name(),
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let log = std::fs::File::create(dir.join(format!("{member}.log")))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["pool-member", &shape.name(), &member])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: setsid and setpriority in the child before exec: both
    // async-signal-safe system calls. The member must not die with its
    // parent's session, and boots at BOOT_NICENESS.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)?;
            if libc::setpriority(libc::PRIO_PROCESS, 0, BOOT_NICENESS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting a pool member")?;
    std::fs::write(
        dir.join(format!("{member}.{BOOTING}")),
        child.id().to_string(),
    )?;
    tracing::info!(shape = %shape.name(), member, "pool member starting");
    Ok((dir.join(format!("{member}.{SOCKET}")), child))
}

/// Where a member waits: its claim socket, and its booting marker.
pub struct MemberPaths {
    pub socket: PathBuf,
    pub booting: PathBuf,
    /// Its stderr until a pod takes it (kept when it fails).
    pub log: PathBuf,
}

impl MemberPaths {
    pub fn new(config: &Config, shape: &PoolShape, member: &str) -> Self {
        let dir = shape_dir(config, shape);
        Self {
            socket: dir.join(format!("{member}.{SOCKET}")),
            booting: dir.join(format!("{member}.{BOOTING}")),
            log: dir.join(format!("{member}.log")),
        }
    }

    /// Listens for a claim (0600: root's alone).
    pub fn listen(&self) -> anyhow::Result<UnixListener> {
        let listener = UnixListener::bind(&self.socket)
            .with_context(|| format!("binding {}", self.socket.display()))?;
        std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o600))?;
        let _ = std::fs::remove_file(&self.booting);
        Ok(listener)
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(self.socket.with_extension(CLAIMED));
        let _ = std::fs::remove_file(&self.booting);
    }
}

/// Reads a claim from a claimer that connected.
pub fn read_claim(stream: &UnixStream) -> anyhow::Result<Claim> {
    stream.set_read_timeout(Some(HAND_OVER))?;
    let claim: Claim = serde_json::from_str(&read_line(stream)?)?;
    if !husk_proto::is_safe_id(&claim.pod_id, 128) {
        bail!("pod id {:?} is not a safe name", claim.pod_id);
    }
    Ok(claim)
}

/// Answers a claimer.
pub fn answer(mut stream: &UnixStream, error: Option<String>) {
    let mut line = serde_json::to_vec(&ClaimAnswer { error }).unwrap_or_default();
    line.push(b'\n');
    let _ = stream.write_all(&line);
}

/// A shape from its name (`<vcpus>x<memory_mib>`), as configured.
pub fn configured_shape(config: &Config, name: &str) -> anyhow::Result<PoolShape> {
    config
        .pool
        .shapes
        .iter()
        .copied()
        .find(|s| s.name() == name)
        .with_context(|| format!("no pool shape {name} in the configuration"))
}

/// A pool member's life: boots a VM of `shape`, waits for a claim (or for
/// SIGTERM, or for its VM to die: it then leaves, and is not handed out),
/// and serves the claiming pod. Logs go to stderr until then.
pub async fn run_member(config: Config, shape: PoolShape, member: String) -> anyhow::Result<()> {
    let paths = MemberPaths::new(&config, &shape, &member);
    let result = member_life(config, shape, &member, &paths).await;
    paths.remove();
    result
}

async fn member_life(
    config: Config,
    shape: PoolShape,
    member: &str,
    paths: &MemberPaths,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut pod = crate::micro_vm::MicroVmPod::preboot(member.to_owned(), config, shape)
        .await
        .context("booting the pool VM")?;
    let listener = paths.listen()?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let stream = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => break stream,
                Err(e) => tracing::warn!(member, "accepting a claim: {e}"),
            },
            _ = terminate.recv() => {
                tracing::info!(member, "SIGTERM: leaving the pool");
                crate::task::pod::Pod::stop(&pod).await;
                let _ = std::fs::remove_file(&paths.log);
                return Ok(());
            }
            _ = check.tick() => {
                if !pod.pooled_vm_alive().await {
                    crate::task::pod::Pod::stop(&pod).await;
                    bail!("the pool VM died while it waited");
                }
            }
        }
    };
    drop(listener);
    paths.remove();
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    let taken = async {
        let claim = read_claim(&stream)?;
        std::env::set_current_dir(&claim.serve.bundle)
            .with_context(|| format!("entering the bundle {}", claim.serve.bundle.display()))?;
        pod.adopt(&claim.pod_id)?;
        let bound = crate::task::server::bind(&claim.serve.socket)
            .with_context(|| format!("binding {}", claim.serve.socket))?;
        anyhow::Ok((claim, bound))
    }
    .await;
    let (claim, bound) = match taken {
        Ok(t) => t,
        Err(e) => {
            answer(&stream, Some(format!("{e:#}")));
            crate::task::pod::Pod::stop(&pod).await;
            return Err(e);
        }
    };
    answer(&stream, None);
    drop(stream);
    crate::logging::to_bundle();
    let _ = std::fs::remove_file(&paths.log);
    tracing::info!(pod_id = %claim.pod_id, member, "serving the pod with a pool VM");
    crate::task::server::serve_pod(&claim.serve, claim.pod_id.clone(), pod, bound).await
}
