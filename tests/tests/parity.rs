//! The differential suite: every scenario runs under runc (the oracle) and
//! under husk, through the same containerd with the same image, and must
//! give the same stdout, stderr and exit status. The kernel release is the
//! one thing a VM changes on purpose; it is masked before comparing.
//!
//! The suite prints a table (scenario, runc, husk, match) and fails on any
//! row that does not match. Each scenario also states what it must show
//! (`expect`), so that two runtimes failing alike cannot pass it.

use husk_tests::containerd::Containerd;
use husk_tests::ctr::*;
use husk_tests::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Everything scenarios share: the containerd, and host files they mount.
struct Ctx {
    ctrd: Containerd,
    /// A host directory with a file, for bind mounts.
    host_dir: tempfile::TempDir,
    /// An unpacked busybox rootfs for `ctr run --config` specs.
    rootfs: tempfile::TempDir,
    /// Kernel releases to mask: the guest's and the host's.
    kernels: Vec<String>,
}

type Custom = fn(&Ctx, &str, &str) -> Outcome;

enum How {
    /// `ctr run --rm [flags] IMAGE id cmd...`, with stdin if given.
    Run(
        &'static [&'static str],
        &'static [&'static str],
        Option<&'static [u8]>,
    ),
    /// `ctr run --rm --config spec.json id`: ctr's default spec on the
    /// busybox rootfs, running cmd, changed by the function.
    Spec(fn(&mut Value, &Ctx), &'static [&'static str]),
    Custom(Custom),
}

struct Scenario {
    name: &'static str,
    how: How,
    /// Must appear in husk's stdout+stderr (after masking).
    expect: &'static str,
}

const fn run(
    name: &'static str,
    flags: &'static [&'static str],
    cmd: &'static [&'static str],
    expect: &'static str,
) -> Scenario {
    Scenario {
        name,
        how: How::Run(flags, cmd, None),
        expect,
    }
}

fn scenarios() -> Vec<Scenario> {
    vec![
        // Process: args, env, cwd, exit codes, stdio.
        run("exit-code-and-streams", &[], &["sh", "-c", "echo out; echo err >&2; exit 3"], "out"),
        run("kernel-identity-masked", &[], &["uname", "-r"], "<kernel>"),
        run("args-kept-verbatim", &[], &["echo", "a  b", "c$d", "*"], "a  b c$d *"),
        run("exit-255", &[], &["sh", "-c", "exit 255"], ""),
        run("env-added", &["--env", "GREETING=hi"], &["sh", "-c", "echo $GREETING"], "hi"),
        run("env-default-path", &[], &["sh", "-c", "echo $PATH"], "/usr/local/sbin"),
        run("cwd", &["--cwd", "/tmp"], &["pwd"], "/tmp"),
        Scenario {
            name: "stdin-to-cat",
            how: How::Run(&[], &["sh", "-c", "head -n 1; echo done"], Some(b"piped in\n")),
            expect: "piped in\ndone",
        },
        run("large-output", &[], &["seq", "1", "50000"], "49999\n50000"),
        Scenario { name: "missing-entrypoint", how: How::Custom(missing_entrypoint), expect: "exec: \"/nonexistent\": stat /nonexistent: no such file or directory" },
        // Signals and processes.
        run("pid1-ignores-own-sigkill", &[], &["sh", "-c", "kill -9 $$; echo alive"], "alive"),
        run("shell-killed-by-signal", &[], &["sh", "-c", "sh -c 'kill -9 $$'; echo status=$?"], "status=137"),
        run("init-exit-ends-the-rest", &[], &["sh", "-c", "sleep 1000 & echo started"], "started"),
        run("zombies-reaped", &[], &["sh", "-c", "sleep 0.1 & wait; echo reaped"], "reaped"),
        run("pid-namespace", &[], &["sh", "-c", "echo $$; tr '\\0' ' ' < /proc/1/cmdline"], "1\ntr"),
        Scenario { name: "sigterm-ignored-then-sigkill", how: How::Custom(kill_sequence), expect: "exit=137" },
        Scenario { name: "kill-all-pause-resume-ps", how: How::Custom(lifecycle), expect: "pause ok=true status=PAUSED" },
        Scenario { name: "events", how: How::Custom(events), expect: "/tasks/exec-added /tasks/exec-started /tasks/exit /tasks/paused /tasks/resumed" },
        // Exec.
        Scenario { name: "exec-output-and-pid-ns", how: How::Custom(exec_output), expect: "sleep 1000" },
        Scenario { name: "exec-stdin", how: How::Custom(exec_stdin), expect: "piped into exec" },
        Scenario { name: "exec-tty", how: How::Custom(exec_tty), expect: "/dev/pts/" },
        // Terminals.
        Scenario { name: "run-tty", how: How::Custom(run_tty), expect: "33 111" },
        Scenario { name: "tty-resize", how: How::Custom(tty_resize), expect: "40 132" },
        // User, capabilities, privileges.
        run("id-root", &[], &["id"], "uid=0(root)"),
        run("caps-default", &[], &["sh", "-c", "grep -E '^Cap(Eff|Prm|Bnd|Inh|Amb)' /proc/self/status"], "CapBnd"),
        run("cap-drop-chown", &["--cap-drop", "CAP_CHOWN"], &["sh", "-c", "chown 1 /tmp; echo status=$?"], "status=1"),
        run("cap-add-sys-admin", &["--cap-add", "CAP_SYS_ADMIN"], &["grep", "CapEff", "/proc/self/status"], "CapEff"),
        run("no-new-privs-default", &[], &["grep", "NoNewPrivs", "/proc/self/status"], "NoNewPrivs:\t1"),
        run("allow-new-privs", &["--allow-new-privs"], &["grep", "NoNewPrivs", "/proc/self/status"], "NoNewPrivs:\t0"),
        spec("non-root-user-and-groups", |s, _| {
            s["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20]});
        }, &["sh", "-c", "id; touch /etc/x; echo status=$?"], "uid=1000 gid=1000 groups=10,20"),
        spec("umask", |s, _| s["process"]["user"]["umask"] = json!(0o077), &["sh", "-c", "umask"], "0077"),
        spec("ambient-capability", |s, _| {
            s["process"]["user"] = json!({"uid": 1000, "gid": 1000});
            for set in ["ambient", "inheritable"] {
                s["process"]["capabilities"][set] = json!(["CAP_NET_BIND_SERVICE"]);
            }
        }, &["grep", "CapAmb", "/proc/self/status"], "0000000000000400"),
        // Limits.
        run("rlimit-nofile", &[], &["sh", "-c", "ulimit -n"], "1024"),
        spec("rlimits-from-spec", |s, _| {
            s["process"]["rlimits"] = json!([
                {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 768},
                {"type": "RLIMIT_NPROC", "soft": 300, "hard": 300}
            ]);
        }, &["sh", "-c", "ulimit -n; ulimit -Hn; ulimit -u"], "512\n768\n300"),
        Scenario { name: "oom-kill", how: How::Custom(oom_kill), expect: "exit=137 oom_event=true" },
        Scenario { name: "oom-kill-of-a-child", how: How::Custom(oom_kill_child), expect: "survived\nexit=0 oom_event=true" },
        Scenario { name: "memory-limit-update", how: How::Custom(memory_update), expect: "limit=33554432 then 67108864" },
        Scenario { name: "metrics", how: How::Custom(metrics), expect: "memory.usage_in_bytes" },
        // Root file system and mounts.
        run("read-only-rootfs", &["--read-only"], &["sh", "-c", "touch /x; echo status=$?"], "Read-only file system"),
        run("tmpfs-mount", &["--mount", "type=tmpfs,source=tmpfs,destination=/scratch,options=size=1m"],
            &["sh", "-c", "grep ' /scratch ' /proc/mounts | cut -d' ' -f1-3; df -k /scratch | tail -1 | tr -s ' ' | cut -d' ' -f2"], "tmpfs /scratch tmpfs"),
        Scenario { name: "bind-host-dir-read-only", how: How::Custom(bind_ro), expect: "from the host" },
        Scenario { name: "bind-host-dir-read-write", how: How::Custom(bind_rw), expect: "written in the container" },
        Scenario { name: "bind-host-file", how: How::Custom(bind_file), expect: "from the host" },
        run("default-mounts", &[], &["sh", "-c", "grep -E ' /(proc|dev|dev/pts|dev/shm|dev/mqueue|sys|run) ' /proc/mounts | cut -d' ' -f2,3 | sort"], "/dev/mqueue mqueue"),
        run("sysfs-read-only", &[], &["sh", "-c", "touch /sys/x; echo status=$?"], "status=1"),
        run("masked-paths", &[], &["sh", "-c", "wc -c < /proc/keys; wc -c < /proc/timer_list; ls /sys/firmware | wc -l"], "0\n0\n0"),
        run("readonly-paths", &[], &["sh", "-c", "echo x > /proc/sysrq-trigger; echo status=$?"], "status=1"),
        run("dev-entries", &[], &["sh", "-c", "ls -1 /dev | sort | tr '\\n' ' '"], "null"),
        run("dev-null-zero-full", &[], &["sh", "-c", "head -c 4 /dev/zero | od -An -tx1; echo x > /dev/full; echo status=$?; echo gone > /dev/null"], "No space left on device"),
        run("dev-urandom", &[], &["sh", "-c", "head -c 16 /dev/urandom | wc -c"], "16"),
        spec("device-from-spec", |s, _| {
            s["linux"]["devices"] = json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o640, "uid": 0, "gid": 0}]);
        }, &["stat", "-c", "%F %t:%T %a", "/dev/fuse"], "character special file a:e5 640"),
        // Namespaced kernel settings.
        spec("hostname", |s, _| s["hostname"] = json!("parity-host"), &["hostname"], "parity-host"),
        spec("sysctls", |s, _| {
            s["linux"]["sysctl"] = json!({"kernel.shmmni": "1000", "fs.mqueue.msg_max": "20"});
        }, &["sh", "-c", "cat /proc/sys/kernel/shmmni /proc/sys/fs/mqueue/msg_max"], "1000\n20"),
        // Seccomp.
        run("seccomp-default-profile", &["--seccomp"], &["sh", "-c", "grep -E '^Seccomp' /proc/self/status; echo ok"], "Seccomp:\t2"),
        Scenario { name: "seccomp-custom-profile", how: How::Custom(seccomp_custom), expect: "Operation not permitted" },
        spec("seccomp-errno-from-spec", |s, _| {
            s["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
            });
        }, &["sh", "-c", "/bin/pwd; echo status=$?"], "Function not implemented"),
    ]
}

const fn spec(
    name: &'static str,
    edit: fn(&mut Value, &Ctx),
    cmd: &'static [&'static str],
    expect: &'static str,
) -> Scenario {
    Scenario {
        name,
        how: How::Spec(edit, cmd),
        expect,
    }
}

#[test]
fn husk_matches_runc_scenario_by_scenario() {
    let ctrd = setup();
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("file"), "from the host\n").unwrap();
    let rootfs = tempfile::tempdir().unwrap();
    busybox_rootfs(rootfs.path());
    let guest = kernel_release_of(&test_config(ctrd.dir.path()).hypervisor.kernel).unwrap();
    let ctx = Ctx {
        ctrd,
        host_dir,
        rootfs,
        kernels: vec![guest, host_kernel_release()],
    };
    let only = std::env::var("HUSK_PARITY_ONLY").ok();
    let mut rows = Vec::new();
    for s in scenarios()
        .iter()
        .filter(|s| only.as_deref().is_none_or(|o| s.name.contains(o)))
    {
        // runc keeps its state outside containerd (/run/containerd/runc):
        // the pid keeps ids apart from any earlier, interrupted run.
        let runc_id = format!("{}-runc-{}", s.name, std::process::id());
        let husk_id = format!("{}-husk-{}", s.name, std::process::id());
        let runc = ctx.mask(execute(&ctx, s, RUNC, &runc_id), &runc_id);
        let husk = ctx.mask(execute(&ctx, s, HUSK, &husk_id), &husk_id);
        let shown = format!("{}{}", husk.stdout, husk.stderr);
        let expected = shown.contains(s.expect);
        println!(
            "{:<30} | runc {:<48} | husk {:<48} | {}",
            s.name,
            summary(&runc),
            summary(&husk),
            if runc == husk && expected {
                "match"
            } else {
                "DIFFERS"
            }
        );
        rows.push((s.name, runc, husk, expected));
    }
    println!("\n{} scenarios", rows.len());
    let bad: Vec<_> = rows
        .iter()
        .filter(|(_, runc, husk, expected)| runc != husk || !expected)
        .collect();
    for (name, runc, husk, expected) in &bad {
        println!(
            "--- {name} (husk shows what it must: {expected})\nrunc: {runc:?}\nhusk: {husk:?}"
        );
    }
    assert!(
        bad.is_empty(),
        "{} of {} scenarios differ",
        bad.len(),
        rows.len()
    );
    assert!(
        only.is_some() || rows.len() >= 40,
        "the suite must keep at least 40 scenarios"
    );
    assert_nothing_left(&ctx.ctrd);
}

impl Ctx {
    /// Masks what differs by design: the kernel release, and the
    /// container id (one per runtime), which some messages name.
    fn mask(&self, mut o: Outcome, id: &str) -> Outcome {
        for k in &self.kernels {
            o.stdout = o.stdout.replace(k.as_str(), "<kernel>");
            o.stderr = o.stderr.replace(k.as_str(), "<kernel>");
        }
        o.stdout = o.stdout.replace(id, "<id>");
        o.stderr = o.stderr.replace(id, "<id>");
        o
    }

    fn host_path(&self, name: &str) -> String {
        self.host_dir.path().join(name).display().to_string()
    }
}

fn summary(o: &Outcome) -> String {
    let all = format!("{}{}", o.stdout, o.stderr)
        .replace('\r', "")
        .replace('\n', "⏎");
    let cut: String = all.chars().take(36).collect();
    format!(
        "exit={:<3} {cut:?}",
        o.status.map_or("-".into(), |s| s.to_string())
    )
}

fn execute(ctx: &Ctx, s: &Scenario, runtime: &str, id: &str) -> Outcome {
    match &s.how {
        How::Run(flags, cmd, stdin) => {
            Outcome::of(&run_with(&ctx.ctrd, runtime, flags, id, cmd, *stdin))
        }
        How::Spec(edit, cmd) => {
            let mut spec = default_spec(&ctx.ctrd, ctx.rootfs.path(), cmd);
            edit(&mut spec, ctx);
            Outcome::of(&run_config(&ctx.ctrd, runtime, id, &spec))
        }
        How::Custom(f) => f(ctx, runtime, id),
    }
}

fn outcome(stdout: String, status: Option<i32>) -> Outcome {
    Outcome {
        stdout,
        stderr: String::new(),
        status,
    }
}

fn kill(ctx: &Ctx, id: &str, signal: &str) {
    let out = ctx.ctrd.ctr(&["task", "kill", "-s", signal, id]);
    assert!(out.status.success(), "kill {id}: {}", text(&out.stderr));
}

/// `sleep 1000` as PID 1 ignores SIGTERM (no handler); SIGKILL ends it.
fn kill_sequence(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    let mut child = spawn_sleeper(&ctx.ctrd, runtime, id);
    wait_running(&ctx.ctrd, id);
    kill(ctx, id, "SIGTERM");
    std::thread::sleep(Duration::from_secs(2));
    let ended_by_term = child.try_wait().unwrap().is_some();
    if !ended_by_term {
        kill(ctx, id, "SIGKILL");
    }
    let status = wait_exit(&mut child, "ctr run did not return after SIGKILL").code();
    outcome(
        format!(
            "ended by SIGTERM: {ended_by_term} exit={}",
            status.unwrap_or(-1)
        ),
        status,
    )
}

/// Pause, resume, `ctr task ps` and `kill --all` on three processes.
fn lifecycle(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    let ctrd = &ctx.ctrd;
    run_detached(
        ctrd,
        runtime,
        id,
        &["sh", "-c", "sleep 1000 & sleep 1000 & wait"],
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let processes = loop {
        // ps lists a header line, then one line per process.
        let n = text(&ctrd.ctr(&["task", "ps", id]).stdout)
            .lines()
            .count()
            .saturating_sub(1);
        if n == 3 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    seen.push(format!("processes {processes}"));
    for step in ["pause", "resume"] {
        let out = ctrd.ctr(&["task", step, id]);
        seen.push(format!(
            "{step} ok={} status={}",
            out.status.success(),
            task_status(ctrd, id)
        ));
    }
    let out = ctrd.ctr(&["task", "kill", "--all", "-s", "SIGKILL", id]);
    seen.push(format!("kill --all ok={}", out.status.success()));
    wait_stopped(ctx, id);
    remove_task(ctrd, id);
    outcome(seen.join("\n"), Some(0))
}

/// `ctr events` running beside a scenario.
struct EventWatch(std::process::Child);

impl EventWatch {
    fn start(ctx: &Ctx) -> Self {
        EventWatch(
            ctx.ctrd
                .ctr_command()
                .arg("events")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    /// Ends it and returns what it printed.
    fn stop(mut self) -> String {
        let _ = self.0.kill();
        text(&self.0.wait_with_output().unwrap().stdout)
    }
}

/// The task events `ctr events` shows for a container taken through
/// create, start, exec, pause, resume and kill, in order.
fn events(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    let watch = EventWatch::start(ctx);
    with_sleeper(ctx, runtime, id, &[], || {
        let exec = ctx
            .ctrd
            .ctr(&["task", "exec", "--exec-id", "ev", id, "true"]);
        assert!(exec.status.success(), "{}", text(&exec.stderr));
        for step in ["pause", "resume"] {
            assert!(ctx.ctrd.ctr(&["task", step, id]).status.success());
        }
        outcome(String::new(), Some(0))
    });
    std::thread::sleep(Duration::from_millis(500));
    let log = watch.stop();
    let topics: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("\"{id}\"")))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
        .collect();
    outcome(topics.join(" "), Some(0))
}

fn wait_stopped(ctx: &Ctx, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while task_status(&ctx.ctrd, id) != "STOPPED" {
        assert!(Instant::now() < deadline, "{id} did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `f` against a detached `sleep 1000` container, then removes it.
fn with_sleeper(
    ctx: &Ctx,
    runtime: &str,
    id: &str,
    flags: &[&str],
    f: impl FnOnce() -> Outcome,
) -> Outcome {
    let mut args = vec!["run", "-d", "--runtime", runtime];
    args.extend(flags);
    args.extend([IMAGE, id, "sleep", "1000"]);
    let out = ctx.ctrd.ctr(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_running(&ctx.ctrd, id);
    let result = f();
    kill(ctx, id, "SIGKILL");
    wait_stopped(ctx, id);
    remove_task(&ctx.ctrd, id);
    result
}

fn exec_output(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    with_sleeper(ctx, runtime, id, &[], || {
        let script = "tr '\\0' ' ' < /proc/1/cmdline; echo; echo err >&2; exit 4";
        Outcome::of(
            &ctx.ctrd
                .ctr(&["task", "exec", "--exec-id", "e1", id, "sh", "-c", script]),
        )
    })
}

fn exec_stdin(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    with_sleeper(ctx, runtime, id, &[], || {
        Outcome::of(&ctx.ctrd.ctr_with_stdin(
            &["task", "exec", "--exec-id", "e2", id, "cat"],
            Some(b"piped into exec\n"),
        ))
    })
}

fn exec_tty(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    with_sleeper(ctx, runtime, id, &[], || {
        let pty = PtyCtr::spawn(
            &ctx.ctrd,
            &[
                "task",
                "exec",
                "-t",
                "--exec-id",
                "t1",
                id,
                "sh",
                "-c",
                "sleep 1; tty; stty size",
            ],
            24,
            80,
        );
        pty.finish()
    })
}

/// `ctr run --rm -t ... sh -c <script>` on a terminal of `rows` x `cols`.
fn run_on_terminal(
    ctx: &Ctx,
    runtime: &str,
    id: &str,
    script: &str,
    rows: u16,
    cols: u16,
) -> PtyCtr {
    let args = [
        "run",
        "--rm",
        "-t",
        "--runtime",
        runtime,
        IMAGE,
        id,
        "sh",
        "-c",
        script,
    ];
    PtyCtr::spawn(&ctx.ctrd, &args, rows, cols)
}

fn run_tty(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    run_on_terminal(
        ctx,
        runtime,
        id,
        "sleep 1; tty; stty size; echo $TERM",
        33,
        111,
    )
    .finish()
}

/// A window size change reaches the process (ctr → containerd → runtime).
fn tty_resize(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    let script = "sleep 1; stty size; echo ready; read x; stty size";
    let pty = run_on_terminal(ctx, runtime, id, script, 24, 80);
    pty.wait_for("ready");
    pty.resize(40, 132);
    // The resize travels asynchronously; the process reads after "go".
    std::thread::sleep(Duration::from_secs(2));
    pty.write(b"go\n");
    pty.finish()
}

/// A 32 MiB container whose init allocates 64 MiB: killed in its own
/// cgroup, exit 137, and a TaskOOM event.
fn oom_kill(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    oom(
        ctx,
        runtime,
        id,
        "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
    )
}

/// Only the child that allocates is killed; the container (and its VM)
/// goes on, and TaskOOM is still published.
fn oom_kill_child(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    oom(
        ctx,
        runtime,
        id,
        "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo survived",
    )
}

fn oom(ctx: &Ctx, runtime: &str, id: &str, script: &str) -> Outcome {
    let events = EventWatch::start(ctx);
    let out = run_with(
        &ctx.ctrd,
        runtime,
        &["--memory-limit", "33554432"],
        id,
        &["sh", "-c", script],
        None,
    );
    std::thread::sleep(Duration::from_millis(500));
    let log = events.stop();
    let oom = log
        .lines()
        .any(|l| l.contains("/tasks/oom") && l.contains(id));
    Outcome {
        stdout: format!(
            "{}exit={} oom_event={oom}",
            text(&out.stdout),
            out.status.code().unwrap_or(-1)
        ),
        stderr: text(&out.stderr),
        status: out.status.code(),
    }
}

/// The container's own memory limit as it sees it: cgroup v2 in the guest,
/// v1 under runc on a v1 host.
const SHOW_LIMIT: &str =
    "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes";

/// Task Update through containerd's API raises the memory limit, and the
/// container sees the new one.
fn memory_update(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    let flags = [
        "--memory-limit",
        "33554432",
        "--mount",
        "type=cgroup,source=cgroup,destination=/sys/fs/cgroup,options=ro",
    ];
    with_sleeper(ctx, runtime, id, &flags, || {
        let before = text(
            &ctx.ctrd
                .ctr(&[
                    "task",
                    "exec",
                    "--exec-id",
                    "m1",
                    id,
                    "sh",
                    "-c",
                    SHOW_LIMIT,
                ])
                .stdout,
        );
        update_memory_limit(&ctx.ctrd, id, 67_108_864);
        let after = text(
            &ctx.ctrd
                .ctr(&[
                    "task",
                    "exec",
                    "--exec-id",
                    "m2",
                    id,
                    "sh",
                    "-c",
                    SHOW_LIMIT,
                ])
                .stdout,
        );
        outcome(
            format!("limit={} then {}", before.trim(), after.trim()),
            Some(0),
        )
    })
}

fn update_memory_limit(ctrd: &Containerd, id: &str, limit: i64) {
    use containerd_client::services::v1::tasks_client::TasksClient;
    use containerd_client::services::v1::UpdateTaskRequest;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = containerd_client::connect(&ctrd.socket)
            .await
            .expect("containerd API");
        let resources = json!({"memory": {"limit": limit}});
        let request = UpdateTaskRequest {
            container_id: id.into(),
            resources: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(&resources).unwrap(),
            }),
            ..Default::default()
        };
        let mut request = tonic::Request::new(request);
        request
            .metadata_mut()
            .insert("containerd-namespace", "default".parse().unwrap());
        TasksClient::new(channel)
            .update(request)
            .await
            .expect("Tasks.Update");
    });
}

/// `ctr task metrics`: the metric names (values differ between any two
/// runs), and that memory in use is reported.
fn metrics(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    with_sleeper(ctx, runtime, id, &[], || {
        let out = ctx.ctrd.ctr(&["task", "metrics", id]);
        let table = text(&out.stdout);
        let rows: Vec<(&str, &str)> = table
            .lines()
            .skip_while(|l| !l.starts_with("METRIC"))
            .skip(1)
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some((parts.next()?, parts.next()?))
            })
            .collect();
        let usage = rows
            .iter()
            .find(|(k, _)| *k == "memory.usage_in_bytes")
            .and_then(|(_, v)| v.parse::<u64>().ok());
        let names: Vec<&str> = rows.iter().map(|(k, _)| *k).collect();
        outcome(
            format!(
                "{}\nmemory in use: {}",
                names.join(" "),
                usage.is_some_and(|u| u > 0)
            ),
            out.status.code(),
        )
    })
}

/// Both runtimes fail at create and name the missing program in the same
/// words; what precedes them names the runtime ("OCI runtime create
/// failed: runc create failed: ..." against "husk create failed: ...").
fn missing_entrypoint(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    let mut o = Outcome::of(&run_with(
        &ctx.ctrd,
        runtime,
        &[],
        id,
        &["/nonexistent"],
        None,
    ));
    o.stderr = o
        .stderr
        .find("exec: \"")
        .map_or(o.stderr.clone(), |at| o.stderr[at..].to_owned());
    o
}

/// Runs `args` with host path `src` bind-mounted at `dst` with `options`.
fn run_with_bind(
    ctx: &Ctx,
    runtime: &str,
    id: &str,
    (src, dst, options): (&str, &str, &str),
    args: &[&str],
) -> std::process::Output {
    let mount = format!("type=bind,src={src},dst={dst},options={options}");
    run_with(&ctx.ctrd, runtime, &["--mount", &mount], id, args, None)
}

fn bind_ro(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    let dir = ctx.host_dir.path().display().to_string();
    let out = run_with_bind(
        ctx,
        runtime,
        id,
        (&dir, "/h", "rbind:ro"),
        &["sh", "-c", "cat /h/file; touch /h/new 2>&1; echo status=$?"],
    );
    Outcome::of(&out)
}

/// Written in the container, seen on the host, removed by the container.
fn bind_rw(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    let dir = ctx.host_dir.path().display().to_string();
    let out = run_with_bind(
        ctx,
        runtime,
        id,
        (&dir, "/h", "rbind:rw"),
        &["sh", "-c", "echo written in the container > /h/rw"],
    );
    let on_host = std::fs::read_to_string(ctx.host_path("rw")).unwrap_or_default();
    let _ = std::fs::remove_file(ctx.host_path("rw"));
    let mut o = Outcome::of(&out);
    o.stdout = format!("host sees: {on_host}");
    o
}

fn bind_file(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    let file = ctx.host_path("file");
    Outcome::of(&run_with_bind(
        ctx,
        runtime,
        id,
        (&file, "/etc/hostfile", "bind:ro"),
        &["cat", "/etc/hostfile"],
    ))
}

/// `--seccomp-profile` with a profile denying mkdir.
fn seccomp_custom(ctx: &Ctx, runtime: &str, id: &str) -> Outcome {
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let path: &Path = &ctx.ctrd.dir.path().join(format!("{id}-seccomp.json"));
    std::fs::write(path, profile.to_string()).unwrap();
    let out = run_with(
        &ctx.ctrd,
        runtime,
        &["--seccomp", "--seccomp-profile", path.to_str().unwrap()],
        id,
        &["sh", "-c", "mkdir /tmp/d; echo status=$?"],
        None,
    );
    Outcome::of(&out)
}
