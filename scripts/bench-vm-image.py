#!/usr/bin/env python3
"""Boots the husk-vm test disk (scripts/build-vm-image.sh) under bare QEMU and
measures what the husk-vm runtime will be compared with (docs/vm-pods.md):
time to the serial login prompt, to cloud-init's "finished" line, to sshd's
banner and to the user-data web server; whether the guest agent answers
guest-exec (stdout, stderr, exit code); whether QMP system_powerdown powers
the guest off cleanly; QEMU's RSS.

Devices as husk-vm will give them: -M pc (SeaBIOS) or direct kernel boot,
virtio-blk qcow2 overlay backed by the image, a NoCloud seed (vfat, label
CIDATA) on virtio-blk, virtio-net with the guest's address from a v2
network-config matched by MAC, virtio-serial with org.qemu.guest_agent.0,
pvpanic. The NIC is QEMU user networking with restrict=on (the guest reaches
nothing outside QEMU; the host reaches sshd and the web server through
hostfwd on 127.0.0.1).

Everything it makes (QEMU, temp dir) it ends. Usage:
  scripts/bench-vm-image.py [--kernel-boot] [--disk D] [--vmlinuz K --initrd I]
"""
import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

SHARE = "/usr/local/share/husk"
MAC = "52:54:00:12:34:56"
GUEST_IP = "10.0.2.15"  # QEMU user networking: net 10.0.2.0/24, gw .2, dns .3
HOSTNAME = "husk-bench"
MTU = 1400  # not the default, so `ip addr` shows the network-config was used

META_DATA = """instance-id: {iid}
local-hostname: {hostname}
public-keys:
  - {key_meta}
"""
USER_DATA = """#cloud-config
ssh_authorized_keys:
  - {key_user}
runcmd:
  - [sh, -c, "mkdir -p /srv/www && hostname > /srv/www/index.html"]
  - [systemd-run, --unit=web, python3, -m, http.server, "8080", --directory, /srv/www]
"""
# A guest that ignores the ACPI power button (for the grace-period test):
# systemd-logind is what acts on it, and it starts after cloud-init.service,
# whose write_files has written this by then.
USER_DATA_IGNORE_POWER = """write_files:
  - path: /etc/systemd/logind.conf.d/50-husk-ignore-power-key.conf
    content: |
      [Login]
      HandlePowerKey=ignore
"""
# v2, matched by MAC. "subnet": the pod's address in the gateway's subnet
# (CNI bridge). "onlink": a /32 address and a gateway outside it (Calico's
# style); cloud-init 22.4's networkd renderer drops v2's `on-link`, so the
# gateway gets a link-scope host route of its own (via 0.0.0.0) first.
NETWORK_CONFIG = {
    "subnet": """version: 2
ethernets:
  eth0:
    match:
      macaddress: "{mac}"
    set-name: eth0
    mtu: {mtu}
    addresses: [{ip}/24]
    gateway4: 10.0.2.2
    nameservers:
      addresses: [10.0.2.3]
      search: [default.svc.cluster.local]
""",
    "onlink": """version: 2
ethernets:
  eth0:
    match:
      macaddress: "{mac}"
    set-name: eth0
    mtu: {mtu}
    addresses: [{ip}/32]
    routes:
      - {{to: 10.0.2.2/32, via: 0.0.0.0}}
      - {{to: 0.0.0.0/0, via: 10.0.2.2}}
    nameservers:
      addresses: [10.0.2.3]
      search: [default.svc.cluster.local]
""",
}
# "none": no network-config; cloud-init's fallback is DHCP on the first NIC
# (QEMU's user networking answers it with the same address, but with
# restrict=on libslirp leaves the router and DNS options out of its offer).
NETWORK_CONFIG["none"] = None
PREFIX = {"subnet": 24, "onlink": 32, "none": 24}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


class Serial(threading.Thread):
    """Reads QEMU's stdout (the guest's serial console), logs each line with
    its time since QEMU started, and records when marker lines appear."""

    MARKERS = {
        "login": re.compile(r"\blogin: ?$"),
        "ci_finished": re.compile(r"Cloud-init v\. \S+ finished at"),
        "power_down": re.compile(r"reboot: Power down"),
    }

    def __init__(self, proc, t0, log):
        super().__init__(daemon=True)
        self.proc, self.t0, self.log = proc, t0, log
        self.seen = {}
        self.cpu = {}  # QEMU's CPU seconds at each marker
        self.cond = threading.Condition()

    def run(self):
        buf = b""
        while True:
            chunk = self.proc.stdout.read1(4096)
            if not chunk:
                break
            buf += chunk
            # A login prompt has no newline after it: check partial lines too.
            *lines, buf = re.split(rb"\r?\n", buf)
            for raw in lines + ([buf] if buf else []):
                line = raw.decode("utf-8", "replace").replace("\r", "")
                for name, rx in self.MARKERS.items():
                    if name not in self.seen and rx.search(line):
                        with self.cond:
                            self.seen[name] = time.monotonic() - self.t0
                            self.cpu[name] = cpu_s(self.proc.pid)
                            self.cond.notify_all()
            for raw in lines:
                self.log.write("%8.3f %s\n" % (time.monotonic() - self.t0, raw.decode("utf-8", "replace").rstrip("\r")))
            self.log.flush()
        if buf:
            self.log.write("%8.3f %s\n" % (time.monotonic() - self.t0, buf.decode("utf-8", "replace")))
        with self.cond:
            self.cond.notify_all()

    def wait(self, name, timeout):
        end = time.monotonic() + timeout
        with self.cond:
            while name not in self.seen and time.monotonic() < end and self.proc.poll() is None:
                self.cond.wait(1)
        return self.seen.get(name)


class JsonSocket:
    """QMP or the guest agent: one JSON object per line over a unix socket."""

    def __init__(self, path, timeout):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def send(self, obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.lstrip(b"\xff").strip()  # guest-sync-delimited sentinel
        return json.loads(line) if line else self.recv()

    def close(self):
        self.sock.close()


class Agent(JsonSocket):
    def sync(self, ident):
        self.send({"execute": "guest-sync-delimited", "arguments": {"id": ident}})
        while True:
            reply = self.recv()
            if reply.get("return") == ident:
                return

    def call(self, cmd, **args):
        self.send({"execute": cmd, "arguments": args} if args else {"execute": cmd})
        reply = self.recv()
        if "error" in reply:
            raise RuntimeError("%s: %s" % (cmd, reply["error"]))
        return reply["return"]

    def exec(self, argv, timeout=60):
        pid = self.call("guest-exec", path=argv[0], arg=argv[1:], **{"capture-output": True})["pid"]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.call("guest-exec-status", pid=pid)
            if st["exited"]:
                dec = lambda k: base64.b64decode(st.get(k, "")).decode("utf-8", "replace")
                return st.get("exitcode"), dec("out-data"), dec("err-data")
            time.sleep(0.2)
        raise TimeoutError("guest-exec %s" % argv)


def poll_until(fn, timeout, interval):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if fn():
                return True
        except (OSError, ValueError, ConnectionError):
            pass
        time.sleep(interval)
    return False


def ssh_banner(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        return s.recv(64).startswith(b"SSH-")


def ssh_ok(port, key):
    r = subprocess.run(
        ["ssh", "-i", key, "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=20",
         "-o", "LogLevel=ERROR", "debian@127.0.0.1", "hostname"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    return r.returncode == 0 and r.stdout.decode().strip() == HOSTNAME


def cpu_s(pid):
    """User + system CPU seconds of a process, all its threads: what the guest
    cost under TCG whatever else the host was running."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 1)
    except (OSError, IndexError, ValueError):
        return None


def rss_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def make_seed(tmp, keys, network, ignore_power):
    seed_dir = os.path.join(tmp, "seed")
    os.mkdir(seed_dir)
    files = {
        "meta-data": META_DATA.format(iid=uuid.uuid4(), hostname=HOSTNAME, key_meta=keys["meta"]),
        "user-data": USER_DATA.format(key_user=keys["user"]) + (USER_DATA_IGNORE_POWER if ignore_power else ""),
    }
    if NETWORK_CONFIG[network]:
        files["network-config"] = NETWORK_CONFIG[network].format(mac=MAC, mtu=MTU, ip=GUEST_IP)
    for name, text in files.items():
        with open(os.path.join(seed_dir, name), "w") as f:
            f.write(text)
    seed = os.path.join(tmp, "seed.img")
    run("truncate", "-s", "1M", seed)
    run("mkfs.vfat", "-n", "CIDATA", seed)
    run("mcopy", "-i", seed, *[os.path.join(seed_dir, n) for n in files], "::")
    return seed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--disk", default=os.path.join(SHARE, "debian-vm.qcow2"))
    ap.add_argument("--kernel-boot", action="store_true", help="direct kernel boot instead of SeaBIOS")
    ap.add_argument("--vmlinuz", default=os.path.join(SHARE, "debian-vm-vmlinuz"))
    ap.add_argument("--initrd", default=os.path.join(SHARE, "debian-vm-initrd.img"))
    ap.add_argument("--memory", default="1024")
    ap.add_argument("--tb-size", type=int, help="TCG translation cache in MiB (QEMU's default is 1 GiB)")
    ap.add_argument("--overlay-size", default="4G", help="virtual size of the overlay (growpart fills it)")
    ap.add_argument("--network", choices=sorted(NETWORK_CONFIG), default="subnet",
                    help="which network-config the seed carries")
    ap.add_argument("--ignore-power-button", action="store_true",
                    help="user-data makes the guest ignore system_powerdown; checks that it does")
    ap.add_argument("--log", help="write the timestamped serial console here")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="husk-vm-bench.")
    proc = None
    results = {"mode": "kernel" if args.kernel_boot else "firmware", "network": args.network}
    checks = []

    def check(name, ok, detail=""):
        checks.append((name, bool(ok), detail))
        print("%-44s %s %s" % (name, "ok" if ok else "FAILED", detail), flush=True)

    try:
        keys = {}
        for k in ("meta", "user", "wrong"):
            path = os.path.join(tmp, "key-" + k)
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "husk-bench-" + k, "-f", path)
            keys[k + "_path"] = path
            with open(path + ".pub") as f:
                keys[k] = f.read().strip()
        seed = make_seed(tmp, keys, args.network, args.ignore_power_button)
        overlay = os.path.join(tmp, "overlay.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.abspath(args.disk), "-F", "qcow2",
            overlay, args.overlay_size)
        disk_hash = run("sha256sum", args.disk).stdout.split()[0]
        ssh_port, http_port = free_port(), free_port()
        qmp_path, qga_path = os.path.join(tmp, "qmp.sock"), os.path.join(tmp, "qga.sock")
        cmd = [
            "qemu-system-x86_64", "-M", "pc",
            "-accel", "tcg" + (",tb-size=%d" % args.tb_size if args.tb_size else ""), "-cpu", "max",
            "-m", args.memory, "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-drive", "if=none,id=root,file=%s,format=qcow2,discard=unmap" % overlay,
            # -kernel's option ROM takes boot index 0 itself.
            "-device", "virtio-blk-pci,drive=root" + ("" if args.kernel_boot else ",bootindex=0"),
            "-drive", "if=none,id=seed,file=%s,format=raw,readonly=on" % seed,
            "-device", "virtio-blk-pci,drive=seed",
            "-netdev", "user,id=net0,restrict=on,net=10.0.2.0/24,"
                       "hostfwd=tcp:127.0.0.1:%d-%s:22,hostfwd=tcp:127.0.0.1:%d-%s:8080"
                       % (ssh_port, GUEST_IP, http_port, GUEST_IP),
            "-device", "virtio-net-pci,netdev=net0,mac=%s" % MAC,
            "-device", "virtio-serial-pci",
            "-chardev", "socket,id=qga0,path=%s,server=on,wait=off" % qga_path,
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-device", "pvpanic",
            "-qmp", "unix:%s,server=on,wait=off" % qmp_path,
        ]
        if args.kernel_boot:
            cmd += ["-kernel", args.vmlinuz, "-initrd", args.initrd,
                    "-append", "root=/dev/vda1 ro console=ttyS0,115200n8"]
        results["command"] = " ".join(cmd)
        results["host_load_at_start"] = os.getloadavg()[0]
        print("$ " + results["command"], flush=True)
        log = open(args.log, "w") if args.log else open(os.devnull, "w")
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        serial = Serial(proc, t0, log)
        serial.start()
        since = lambda: round(time.monotonic() - t0, 1)

        # Both probes are cheap for the guest (a TCP connect, a banner read).
        banner = threading.Thread(target=lambda: poll_until(lambda: ssh_banner(ssh_port), args.timeout, 0.5)
                                  and results.__setitem__("sshd_banner_s", since()), daemon=True)
        web = threading.Thread(target=lambda: poll_until(
            lambda: urllib.request.urlopen("http://127.0.0.1:%d/" % http_port, timeout=2).status == 200,
            args.timeout, 1) and results.__setitem__("http_s", since()), daemon=True)
        banner.start()
        web.start()

        results["login_prompt_s"] = serial.wait("login", args.timeout)
        results["ci_finished_s"] = serial.wait("ci_finished", args.timeout)
        for k in ("login_prompt_s", "ci_finished_s"):
            results[k] = results[k] and round(results[k], 1)
        results["qemu_cpu_at_login_s"] = serial.cpu.get("login")
        results["qemu_cpu_at_ci_finished_s"] = serial.cpu.get("ci_finished")
        if proc.poll() is not None:
            serial.join(5)
            raise SystemExit("QEMU exited with %s before the guest finished booting (see --log)" % proc.returncode)
        check("serial login prompt", results["login_prompt_s"], "%s s" % results["login_prompt_s"])
        check("cloud-init finished line", results["ci_finished_s"], "%s s" % results["ci_finished_s"])
        results["qemu_rss_at_finished_kib"] = rss_kib(proc.pid, "VmRSS")
        banner.join(120)
        web.join(120)
        check("sshd banner", "sshd_banner_s" in results, "%s s" % results.get("sshd_banner_s"))
        body = ""
        try:
            body = urllib.request.urlopen("http://127.0.0.1:%d/" % http_port, timeout=10).read().decode().strip()
        except OSError as e:
            body = repr(e)
        check("user-data web server serves hostname", body == HOSTNAME, "%s s, %r" % (results.get("http_s"), body))
        check("ssh with meta-data public-keys key", ssh_ok(ssh_port, keys["meta_path"]))
        check("ssh with user-data ssh_authorized_keys key", ssh_ok(ssh_port, keys["user_path"]))
        check("ssh with a key not given is refused", not ssh_ok(ssh_port, keys["wrong_path"]))

        agent = Agent(qga_path, 30)
        agent.sync(4242)
        info = agent.call("guest-info")
        check("guest agent answers", True, "version %s" % info.get("version"))
        code, out, err = agent.exec(["/bin/sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"])
        check("guest-exec exit 7, stdout, stderr", (code, out, err) == (7, "to-stdout\n", "to-stderr\n"),
              repr((code, out, err)))
        code, out, _ = agent.exec(["/usr/sbin/ip", "-o", "link"])
        nic = next((l.split(":")[1].strip() for l in out.splitlines() if MAC in l), None)
        check("the NIC, by MAC", nic == ("eth0" if NETWORK_CONFIG[args.network] else nic) and nic, str(nic))
        nic = nic or "eth0"
        code, out, _ = agent.exec(["/usr/sbin/ip", "-o", "addr", "show", "dev", nic])
        check("NIC has the pod address",
              code == 0 and " %s/%d " % (GUEST_IP, PREFIX[args.network]) in out, out.strip().splitlines()[0])
        code, out, _ = agent.exec(["/usr/sbin/ip", "route"])
        if NETWORK_CONFIG[args.network]:
            check("default route via the gateway", code == 0 and "default via 10.0.2.2 dev %s" % nic in out,
                  "; ".join(out.strip().splitlines()))
        else:
            print("routes (DHCP without router option): " + "; ".join(out.strip().splitlines()))
        code, out, _ = agent.exec(["/usr/sbin/ip", "-o", "link", "show", "dev", nic])
        mtu = MTU if NETWORK_CONFIG[args.network] else 1500
        check("NIC MTU", code == 0 and "mtu %d " % mtu in out, out.strip()[:80])
        code, out, _ = agent.exec(["/usr/bin/hostname"])
        check("hostname from meta-data", out.strip() == HOSTNAME, out.strip())
        code, out, _ = agent.exec(["/usr/bin/df", "-BM", "--output=size", "/"])
        check("root grown to the overlay's size (growpart)", code == 0, " ".join(out.split()))
        code, out, _ = agent.exec(["/usr/bin/systemctl", "is-system-running"])
        check("systemd is-system-running", out.strip() == "running", out.strip())
        code, out, _ = agent.exec(["/usr/bin/cloud-init", "status", "--long"])
        check("cloud-init status done", "status: done" in out, " ".join(out.split())[:120])
        if NETWORK_CONFIG[args.network]:
            code, out, _ = agent.exec(["/usr/bin/resolvectl", "dns", nic])
            check("DNS server from network-config", code == 0 and "10.0.2.3" in out, out.strip())
            code, out, _ = agent.exec(["/usr/bin/resolvectl", "domain", nic])
            check("DNS search domain from network-config", "default.svc.cluster.local" in out, out.strip())
        code, out, _ = agent.exec(["/usr/bin/systemd-analyze"])
        results["systemd_analyze"] = out.strip().splitlines()[0] if out.strip() else ""
        code, out, _ = agent.exec(["/usr/bin/systemd-analyze", "blame", "--no-pager"])
        results["systemd_blame_top"] = "; ".join(" ".join(l.split()) for l in out.strip().splitlines()[:8])
        agent.close()

        results["host_load_at_end"] = os.getloadavg()[0]
        results["qemu_rss_kib"] = rss_kib(proc.pid, "VmRSS")
        results["qemu_hwm_kib"] = rss_kib(proc.pid, "VmHWM")
        qmp = JsonSocket(qmp_path, 10)
        qmp.recv()  # greeting
        qmp.send({"execute": "qmp_capabilities"})
        qmp.recv()
        t_down = time.monotonic()
        qmp.send({"execute": "system_powerdown"})
        qmp.recv()
        if args.ignore_power_button:
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                rc = None
            check("guest ignores system_powerdown for 30 s", rc is None, "rc=%s" % rc)
            qmp.send({"execute": "quit"})
            rc = proc.wait(30)
            qmp.close()
            serial.join(10)
            check("QMP quit ends QEMU", rc == 0, "rc=%s" % rc)
        else:
            try:
                rc = proc.wait(120)
            except subprocess.TimeoutExpired:
                rc = None
            results["powerdown_s"] = round(time.monotonic() - t_down, 1)
            qmp.close()
            serial.join(10)
            check("system_powerdown: QEMU exits 0", rc == 0, "rc=%s after %s s" % (rc, results["powerdown_s"]))
            check("guest printed 'reboot: Power down'", "power_down" in serial.seen)
        check("image file unchanged", run("sha256sum", args.disk).stdout.split()[0] == disk_hash)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    for k, v in results.items():
        if k != "command":
            print("%-28s %s" % (k, v))
    failed = [c for c in checks if not c[1]]
    print("%d passed, %d failed" % (len(checks) - len(failed), len(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
