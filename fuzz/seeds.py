#!/usr/bin/env python3
"""Writes the seed inputs of husk's fuzz targets into fuzz/seeds/<target>/.

Each seed is a real input in the target's input format (see the comment at
the top of each fuzz_targets/*.rs): the Linux virtio-mmio driver's probe
and set-up of each of husk-vmm's devices, the 8250 driver's console set-up,
descriptor chains as the Linux virtio-rng and virtio-net drivers post
them, the handshake lines vhost-device-vsock and the agent's forwarder
send, the agent's replies as gRPC frames, what containerd 1.6-2.3 write
on a shim's stdin, QMP and guest agent lines as QEMU 7.2 writes them, DHCP
requests as Debian 12's clients send them, disk headers as qemu-img,
sfdisk and mke2fs write them, kubelet's and users' files for cloud-init,
and a VM's console and /proc files. tests/tools/fuzz.sh merges these
into fuzz/corpus/ (which is what is committed, minimized); run this again
only when an input format changes: python3 fuzz/seeds.py (the disk
headers need qemu-img, sfdisk and mke2fs; without them those seeds stay
as committed)

Not written here: seeds/snapshot_state/, real husk-vmm state files
(docs/fuzzing.md says how they were made).
"""

import os
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def seed(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- virtio-mmio (virtio 1.2, 4.2.2) ----------------------------------

MAGIC, VERSION, DEVICE_ID, VENDOR_ID = 0x000, 0x004, 0x008, 0x00C
DEVICE_FEATURES, DEVICE_FEATURES_SEL = 0x010, 0x014
DRIVER_FEATURES, DRIVER_FEATURES_SEL = 0x020, 0x024
QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY = 0x030, 0x034, 0x038, 0x044
QUEUE_NOTIFY, INTERRUPT_STATUS, INTERRUPT_ACK, STATUS = 0x050, 0x060, 0x064, 0x070
QUEUE_DESC, QUEUE_AVAIL, QUEUE_USED = 0x080, 0x090, 0x0A0
CONFIG_GENERATION, CONFIG = 0x0FC, 0x100
ACK, DRIVER, FEATURES_OK, DRIVER_OK = 1, 2, 8, 4


def access(write, offset, value=0, window=0, width=4, pio=False):
    """One 8-byte `Access` record (fuzz/src/virtio.rs)."""
    kind = (1 if write else 0) | (2 if pio else 0) | ({1: 0, 2: 1, 4: 2, 8: 3}[width] << 2)
    return struct.pack("<BBHI", kind, window, offset, value & 0xFFFFFFFF)


def rd(offset, window=0, width=4):
    return access(False, offset, 0, window, width)


def wr(offset, value, window=0, width=4):
    return access(True, offset, value, window, width)


def probe_and_setup(window, features, queues, config_reads=()):
    """Linux's virtio_mmio.c vm_probe, then virtio_dev_probe and the
    device driver's find_vqs: `queues` is [(index, size, desc, avail, used)]."""
    out = [rd(MAGIC, window), rd(VERSION, window), rd(DEVICE_ID, window), rd(VENDOR_ID, window)]
    out += [wr(STATUS, 0, window), wr(STATUS, ACK, window), wr(STATUS, ACK | DRIVER, window)]
    out += [wr(DEVICE_FEATURES_SEL, 1, window), rd(DEVICE_FEATURES, window)]
    out += [wr(DEVICE_FEATURES_SEL, 0, window), rd(DEVICE_FEATURES, window)]
    out += [wr(DRIVER_FEATURES_SEL, 1, window), wr(DRIVER_FEATURES, features >> 32, window)]
    out += [wr(DRIVER_FEATURES_SEL, 0, window), wr(DRIVER_FEATURES, features, window)]
    out += [wr(STATUS, ACK | DRIVER | FEATURES_OK, window), rd(STATUS, window)]
    for off, width in config_reads:
        out += [rd(CONFIG_GENERATION, window), rd(CONFIG + off, window, width)]
    for index, size, desc, avail, used in queues:
        out += [wr(QUEUE_SEL, index, window), rd(QUEUE_READY, window), rd(QUEUE_NUM_MAX, window)]
        out += [wr(QUEUE_NUM, size, window)]
        for reg, addr in ((QUEUE_DESC, desc), (QUEUE_AVAIL, avail), (QUEUE_USED, used)):
            out += [wr(reg, addr, window), wr(reg + 4, addr >> 32, window)]
        out += [wr(QUEUE_READY, 1, window)]
    out += [wr(STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK, window)]
    for index, *_ in queues:
        out += [wr(QUEUE_NOTIFY, index, window)]
    out += [rd(INTERRUPT_STATUS, window), wr(INTERRUPT_ACK, 1, window)]
    return b"".join(out)


def rings(page, size=16, base=0):
    """A queue's rings in their own 4 KiB page, as the split ring lays
    them out (desc, avail after it, used 4-aligned after that)."""
    desc = base + page * 0x1000
    return (size, desc, desc + 16 * size, desc + 0x800)


VERSION_1 = 1 << 32
NET_FEATURES = VERSION_1 | (1 << 5) | 1 | 2 | (1 << 7) | (1 << 8) | (1 << 11) | (1 << 12)
HIGH = 1 << 32  # high RAM starts at 4 GiB

net = probe_and_setup(0, NET_FEATURES, [(0, *rings(0)), (1, *rings(1))],
                      [(i, 1) for i in range(6)])
rng = probe_and_setup(1, VERSION_1, [(0, *rings(2))])
vsock = probe_and_setup(2, VERSION_1, [(i, *rings(3 + i)) for i in range(3)], [(0, 4), (4, 4)])
fs = probe_and_setup(3, VERSION_1, [(i, *rings(i, 64, HIGH)) for i in range(2)],
                     [(i, 4) for i in range(0, 40, 4)])


def console(text):
    """The 8250 driver's set-up of COM1 (115200 8N1, FIFO), then `text`
    written byte by byte after polling LSR."""
    pio = lambda w, port, v=0: access(w, 0, v, port, 1, True)
    out = [pio(1, 3, 0x80), pio(1, 0, 1), pio(1, 1, 0), pio(1, 3, 0x03), pio(1, 2, 0xC7),
           pio(1, 4, 0x0B), pio(1, 1, 0x01), pio(0, 2), pio(0, 5), pio(0, 6)]
    for b in text:
        out += [pio(0, 5), pio(1, 0, b)]
    return b"".join(out)


boot = console(b"[    0.000000] Linux version 6.1\n")
seed("mmio_registers", "net", b"\x00" + net)
seed("mmio_registers", "rng", b"\x00" + rng)
seed("mmio_registers", "vsock", b"\x00" + vsock)
seed("mmio_registers", "fs_high_ram", b"\x00" + fs)
seed("mmio_registers", "boot_all_devices", b"\x00" + boot + net + rng + vsock + fs)
# The device refuses (net and rng: queues not the ones it needs), the
# driver resets and sets the device up again.
seed("mmio_registers", "refused_then_reset", b"\x03" + net + wr(STATUS, 0) + net)
seed("mmio_registers", "unclaimed_window", b"\x00" + rd(MAGIC, 4) + wr(STATUS, 1, 4))

vsock_only_event = probe_and_setup(0, VERSION_1, [(2, *rings(0))])
seed("virtqueue_vhost_user", "vsock", b"\x00" + probe_and_setup(0, VERSION_1, [(i, *rings(i)) for i in range(3)]))
seed("virtqueue_vhost_user", "vsock_event_queue_only", b"\x00" + vsock_only_event)
seed("virtqueue_vhost_user", "fs_high_ram",
     b"\x01" + probe_and_setup(0, VERSION_1, [(i, *rings(i, 1024, HIGH)) for i in range(2)]))
seed("virtqueue_vhost_user", "fs_reset_and_again",
     b"\x01" + probe_and_setup(0, VERSION_1, [(i, *rings(i, 64)) for i in range(2)])
     + wr(STATUS, 0) + probe_and_setup(0, VERSION_1, [(i, *rings(2 + i, 64, HIGH)) for i in range(2)]))

# ---- split virtqueues (virtio 1.2, 2.7) --------------------------------

NEXT, WRITE, INDIRECT = 1, 2, 4


class Ram:
    """The guest RAM image the virtqueue targets copy in at address 0."""

    def __init__(self, size=0x1000):
        self.b = bytearray(size)

    def put(self, addr, data):
        if addr + len(data) > len(self.b):
            self.b.extend(bytes(addr + len(data) - len(self.b)))
        self.b[addr:addr + len(data)] = data

    def image(self):
        """Without the zeros at the end: the target's RAM starts zeroed."""
        return bytes(self.b).rstrip(b"\0")

    def desc(self, table, i, addr, length, flags=0, nxt=0):
        self.put(table + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def avail(self, ring, heads):
        self.put(ring, struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads))


def layout(size, desc, avail, used):
    return struct.pack("<HHHH", size, desc, avail, used)


def rng_seed(name, build, filler=0):
    ram = Ram()
    heads = build(ram)
    ram.avail(0x100, heads)
    seed("virtqueue_rng", name, layout(8, 0x000, 0x100, 0x200) + bytes([filler]) + ram.image())


# Linux's virtio-rng posts one buffer at a time (rng_current's 64-byte
# read); hwrng reads of up to 4 KiB; a chain of two; a loop; an indirect
# table; a buffer that covers the avail ring itself.
rng_seed("one_64_byte_buffer", lambda r: (r.desc(0, 0, 0x400, 64, WRITE), [0])[1])
rng_seed("four_buffers", lambda r: ([r.desc(0, i, 0x400 + 0x100 * i, 0x100, WRITE) for i in range(4)], [0, 1, 2, 3])[1])
rng_seed("chain_of_two", lambda r: (r.desc(0, 0, 0x400, 16, WRITE | NEXT, 1), r.desc(0, 1, 0x500, 128 * 1024, WRITE), [0])[2], 0x06)
rng_seed("descriptor_loop", lambda r: (r.desc(0, 0, 0x400, 16, WRITE | NEXT, 1), r.desc(0, 1, 0x500, 16, WRITE | NEXT, 0), [0])[2])
rng_seed("indirect", lambda r: (r.desc(0, 0, 0x800, 32, INDIRECT), r.desc(0x800, 0, 0x400, 64, WRITE | NEXT, 1), r.desc(0x800, 1, 0x600, 64, WRITE), [0])[3])
rng_seed("buffer_over_its_rings", lambda r: (r.desc(0, 0, 0x0, 0x300, WRITE), [0, 0])[1], 0x80)

# virtio-net: rx at 0x000/0x100/0x200, tx at 0x300/0x400/0x500, four 2 KiB
# rx buffers from 0x1000, a tx frame (vnet header + an ARP request) at 0x800.
ARP = bytes.fromhex("ffffffffffff" "020000000001" "0806" "0001080006040001"
                    "020000000001" "0a580002" "000000000000" "0a580001") + bytes(18)


def net_seed(name, frames, build, features=0):
    ram = Ram(0x3000)
    build(ram)
    head = layout(8, 0x000, 0x100, 0x200) + layout(8, 0x300, 0x400, 0x500)
    head += struct.pack("<IB", features, len(frames)) + b"".join(struct.pack("<H", f // 2) for f in frames)
    seed("virtqueue_net", name, head + ram.image())


def rx_buffers(r, n=4, size=0x800):
    for i in range(n):
        r.desc(0x000, i, 0x1000 + i * size, size, WRITE)
    r.avail(0x100, list(range(n)))


def tx_arp(r):
    r.put(0x800, bytes(12) + ARP)
    r.desc(0x300, 0, 0x800, 12, NEXT, 1)
    r.desc(0x300, 1, 0x80C, len(ARP))
    r.avail(0x400, [0])


net_seed("arp_out_two_frames_in", [74, 1514], lambda r: (rx_buffers(r), tx_arp(r)))
net_seed("frame_larger_than_buffers", [4000, 60], lambda r: rx_buffers(r))
net_seed("tso_big_packets", [65000], lambda r: (r.desc(0, 0, 0x1000, 0x10000, WRITE), r.avail(0x100, [0])),
         features=0b1 | 0b10 | (1 << 7) | (1 << 11))
net_seed("tx_header_only", [], lambda r: (r.desc(0x300, 0, 0x800, 12), r.avail(0x400, [0])))

# ---- hybrid vsock handshakes --------------------------------------------

# vhost-device-vsock answers CONNECT with the host side's local port.
seed("vsock_handshake", "ok", b"\x00OK 1073741824\n")
seed("vsock_handshake", "ok_then_grpc", b"\x00OK 1024\nPRI * HTTP/2.0\r\n")
seed("vsock_handshake", "refused", b"\x00")
seed("vsock_handshake", "forward_ok", b"\x01OK\nHTTP/1.1 200 OK\r\n")
seed("vsock_handshake", "forward_refused", b"\x01ERR connect 127.0.0.1:8080: Connection refused (os error 111)\n")

# ---- the agent's replies ----------------------------------------------


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, value):
    """A protobuf field: int -> varint, bytes/str -> length-delimited."""
    if isinstance(value, int):
        return varint(num << 3) + varint(value) if value else b""
    if isinstance(value, str):
        value = value.encode()
    return varint((num << 3) | 2) + varint(len(value)) + value


def smap(num, d):
    return b"".join(field(num, field(1, k) + field(2, v)) for k, v in d.items())


def grpc(*messages):
    return b"".join(b"\x00" + struct.pack(">I", len(m)) + m for m in messages)


# Reply indexes of fuzz_targets/agent_replies.rs.
CREATE, START, WAIT, EMPTY, LIST, STATS, OUTPUT, OOM, HEALTH, INFO, READ, SHUTDOWN, STDIN = range(13)


def reply(name, kind, body, shape=0b10, code=0, message=b"", cuts=()):
    """`shape` bit 0: trailers-only; bit 1: trailers after the body; bits
    2-4: number of `cuts`."""
    shape |= len(cuts) << 2
    head = bytes([kind, shape, code]) + struct.pack("<H", len(message)) + message
    head += b"".join(struct.pack("<H", c) for c in cuts)
    seed("agent_replies", name, head + body)


# A stats reply with the cgroup v2 files of the guest kernel (Linux 6.1) as
# the agent reads them for a busybox container: every key of cpu.stat,
# memory.stat and memory.events.
cpu = dict(usage_usec=21874, user_usec=9832, system_usec=12042, nr_periods=0, nr_throttled=0,
           throttled_usec=0, nr_bursts=0, burst_usec=0)
mem = dict(anon=1118208, file=4096000, kernel=528384, kernel_stack=49152, pagetables=86016,
           sec_pagetables=0, percpu=0, sock=0, vmalloc=0, shmem=0, file_mapped=2215936,
           file_dirty=0, file_writeback=0, swapcached=0, anon_thp=0, file_thp=0, shmem_thp=0,
           inactive_anon=1105920, active_anon=12288, inactive_file=3997696, active_file=98304,
           unevictable=0, slab_reclaimable=180224, slab_unreclaimable=196608, slab=376832,
           workingset_refault_anon=0, workingset_refault_file=0, workingset_activate_anon=0,
           workingset_activate_file=0, workingset_restore_anon=0, workingset_restore_file=0,
           workingset_nodereclaim=0, pgscan=0, pgsteal=0, pgscan_kswapd=0, pgscan_direct=0,
           pgsteal_kswapd=0, pgsteal_direct=0, pgfault=1923, pgmajfault=33, pgrefill=0,
           pgactivate=3, pgdeactivate=0, pglazyfree=0, pglazyfreed=0, thp_fault_alloc=0,
           thp_collapse_alloc=0)
events = dict(low=0, high=0, max=0, oom=0, oom_kill=0, oom_group_kill=0)
io = field(1, 254) + field(2, 0) + field(3, 4435968) + field(4, 8192) + field(5, 93) + field(6, 2)
stats = (smap(1, cpu) + smap(2, mem) + smap(3, events) + field(4, 5742592) + field(5, 0)
         + field(6, 6209536) + field(7, 1) + field(8, 0) + field(9, io))
reply("stats", STATS, grpc(stats))
reply("stats_in_pieces", STATS, grpc(stats), cuts=(3, 700, 1400))
reply("stats_limits", STATS, grpc(smap(3, dict(max=7, oom_kill=2)) + field(5, 1 << 28)))
reply("create", CREATE, grpc(field(1, 61)))
reply("start", START, grpc(b""))
reply("wait_exit_137", WAIT, grpc(field(1, 137)))
reply("empty", EMPTY, grpc(b""))
reply("list", LIST, grpc(b"".join(field(1, p) for p in (1, 27, 31))))
reply("output", OUTPUT, grpc(field(1, "hello\n"), field(1, "x" * 300)), cuts=(5, 9))
reply("oom", OOM, grpc(field(1, 1), field(1, 2)))
reply("health", HEALTH, grpc(field(1, "0.1.0")))
reply("guest_info", INFO, grpc(field(1, "0.1.0") + field(2, "6.1.0-husk") + field(3, "6b0d7c43-6a2b-4b9e-9c1d-2f4f3b0e9a11")
                               + field(4, 2934) + field(5, 812) + field(6, 833) + field(7, 497144)
                               + field(8, 451212) + field(9, 2) + field(10, "/run/husk/shared") + field(11, "virtio_rng.0")))
reply("read_shared_file", READ, grpc(field(1, "husk-boot-check 1234\n")))
reply("shutdown", SHUTDOWN, grpc(b""))
# Errors as the agent's tonic server sends them: trailers-only, and after
# a body; a message with control characters, percent-encoded.
reply("not_found", WAIT, b"", shape=0b01, code=5, message=b'container "c1" not found')
reply("internal_after_body", STATS, grpc(b""), code=13, message=b"reading cgroup: %1B[2Jgone%0A")
reply("missing_message", CREATE, b"", code=0)
# Containerd's stdin to `start`: runtime options (1.6 to 2.2) as an Any of
# runc's Options with a shim cgroup, and 2.3's bootstrap parameters.
options = field(1, "containerd.runc.v1.Options") + field(2, field(3, "/kubepods/burstable/pod1234"))
seed("agent_replies", "start_options", bytes([STDIN]) + options)
boot_params = (field(1, "husk-pod") + field(2, "k8s.io") + field(3, 4) + field(4, "v2.3.0")
               + field(5, "/run/containerd/containerd.sock.ttrpc") + field(6, "/run/containerd/containerd.sock")
               + field(7, "/usr/bin/containerd") + field(8, field(1, options)))
seed("agent_replies", "start_bootstrap", bytes([STDIN]) + boot_params)
seed("agent_replies", "start_empty", bytes([STDIN]))

# ---- OCI specs for the agent's planner --------------------------------
# fuzz/seeds/oci_plan also holds real specs, not made here: containerd
# 1.6's `ctr oci spec` (with `sh` as args) and a CRI sandbox's and
# container's config.json from a test pod's bundle (the latter also with an
# exec process after a NUL), each rewritten for the guest as the shim's
# spec::prepare does (container id c1).
import json  # noqa: E402

base = {
    "ociVersion": "1.1.0",
    "root": {"path": "/run/husk/shared/c1/rootfs", "readonly": True},
    "hostname": "web-0",
    "process": {
        "terminal": False, "user": {"uid": 1000, "gid": 1000, "additionalGids": [5, 1000], "umask": 18},
        "args": ["/bin/sh", "-c", "exec nginx"], "env": ["PATH=/usr/bin:/bin", "TERM=xterm"], "cwd": "/var/www",
        "capabilities": {k: ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"] for k in ("bounding", "effective", "permitted")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}, {"type": "RLIMIT_NPROC", "hard": 64, "soft": 64}],
        "noNewPrivileges": True, "oomScoreAdj": 500,
    },
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/etc/hosts", "type": "bind", "source": "/run/husk/shared/c1/mounts/8", "options": ["rbind", "rprivate", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        {"destination": "/data", "type": "bind", "source": "/run/husk/shared/c1/mounts/4", "options": ["rbind", "rslave", "rw"]},
    ],
    "linux": {
        "namespaces": [{"type": "pid"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}, {"type": "uts"}, {"type": "mount"},
                       {"type": "network", "path": "/proc/1/ns/net"}, {"type": "cgroup"}],
        "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0}],
        "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1"},
        "resources": {"memory": {"limit": 134217728}, "cpu": {"shares": 512, "quota": 50000, "period": 100000},
                      "pids": {"limit": 128}},
        "cgroupsPath": "/kubepods/burstable/pod1/c1",
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
        "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        "seccomp": {
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["read", "write", "exit_group", "futex", "mmap", "brk"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 131072, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS"},
            ],
        },
    },
}


def spec_seed(name, spec, process=None):
    data = json.dumps(spec, separators=(",", ":")).encode()
    if process is not None:
        data += b"\0" + json.dumps(process, separators=(",", ":")).encode()
    seed("oci_plan", name, data)


spec_seed("every_concern", base)
spec_seed("every_concern_exec", base, {"args": ["cat", "/etc/hosts"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                                       "env": ["A=1"], "terminal": True})
# Destinations through the image's symlinks (the target's rootfs has them).
links = dict(base, mounts=[{"destination": d, "type": "tmpfs", "source": "tmpfs"} for d in
                           ("/escape/shadow", "/abs/etc/passwd", "/etc/up/x", "/var/run/link/s.sock",
                            "/bin/../../../x", "/host-passwd")],
             linux=dict(base["linux"], devices=[{"path": "/escape/sda", "type": "b", "major": 8, "minor": 0}]))
spec_seed("symlinked_destinations", links)
spec_seed("symlink_loop", dict(base, mounts=[{"destination": "/ping/x", "type": "tmpfs", "source": "tmpfs"}]))

# ---- QMP and the QEMU guest agent (qemu_lines) ------------------------
# Lines as QEMU 7.2 (Debian 12) writes them on QMP, ending in CRLF, and as
# qemu-guest-agent 7.2 writes them, ending in LF; the sync reply starts
# with 0xFF. Input: u16 line bound, u32 sync id, 4 read sizes, stream.


def qemu_lines(name, stream, max_line=4095, sync_id=0, sizes=(255, 255, 255, 255)):
    seed("qemu_lines", name, struct.pack("<HI", max_line, sync_id) + bytes(sizes) + stream)


def ts(s, us):
    return '"timestamp": {"seconds": %d, "microseconds": %d}' % (s, us)


GREETING = (b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
            b'"package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}\r\n')
qmp_session = (
    GREETING
    + b'{"return": {}, "id": 1}\r\n'
    + b'{"return": {}, "id": 2}\r\n'
    + ("{%s, \"event\": \"RESUME\"}\r\n" % ts(1764487201, 533012)).encode()
    + ("{%s, \"event\": \"NIC_RX_FILTER_CHANGED\", \"data\": {\"path\": "
       "\"/machine/peripheral-anon/device[1]/virtio-backend\"}}\r\n" % ts(1764487215, 84217)).encode()
    + b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": 3}\r\n'
    + b'{"return": {}, "id": 4}\r\n'
    + ("{%s, \"event\": \"POWERDOWN\"}\r\n" % ts(1764487290, 112873)).encode()
    + ("{%s, \"event\": \"SHUTDOWN\", \"data\": {\"guest\": true, \"reason\": \"guest-shutdown\"}}\r\n"
       % ts(1764487293, 901244)).encode()
)
qemu_lines("qmp_session", qmp_session)
qemu_lines("qmp_session_in_pieces", qmp_session, sizes=(1, 7, 64, 3))
qemu_lines("qmp_panic", GREETING + b'{"return": {}, "id": 1}\r\n'
           + ("{%s, \"event\": \"GUEST_PANICKED\", \"data\": {\"action\": \"pause\", \"info\": "
              "{\"core\": 0, \"psw-mask\": 0, \"type\": \"hyper-v\", \"arg1\": 0}}}\r\n" % ts(1764487300, 1)).encode()
           + ("{%s, \"event\": \"STOP\"}\r\n" % ts(1764487300, 2)).encode())
qemu_lines("qmp_errors", GREETING
           + b'{"id": 5, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}\r\n'
           + b'{"id": 6, "error": {"class": "GenericError", "desc": "Parameter \'id\' expects \\u001b[31m"}}\r\n'
           + ("{%s, \"event\": \"SHUTDOWN\", \"data\": {\"guest\": false, \"reason\": \"host-qmp-quit\"}}\r\n"
              % ts(1764487400, 5)).encode())
qemu_lines("qmp_line_over_bound", GREETING + b'{"return": {"x": "' + b"y" * 300 + b'"}, "id": 1}\r\n',
           max_line=256)
# qemu-guest-agent: a stale reply, the sync reply, guest-exec and its
# status polls (base64 output, as `sh -c 'echo hello; echo oops >&2'`
# leaves it), a failed exec, a truncated one.
qga = (
    b'{"return": {"pid": 812}}\n'
    + b"\xff" + b'{"return": 1234567}\n'
    + b'{"return": {"pid": 913}}\n'
    + b'{"return": {"exited": false}}\n'
    + b'{"return": {"exitcode": 0, "out-data": "aGVsbG8K", "err-data": "b29wcwo=", "exited": true}}\n'
    + b'{"return": {"exitcode": 137, "signal": 9, "exited": true}}\n'
    + b'{"error": {"class": "GenericError", "desc": "Guest agent command failed, error was '
    + b"'Failed to execute child process \\u201c/nonexistent\\u201d (No such file or directory)'\"}}\n"
    + b'{"return": {"exitcode": 0, "out-data": "' + b"QUFB" * 200 + b'", "out-truncated": true, "exited": true}}\n'
)
qemu_lines("qga_session", qga, sync_id=1234567)
qemu_lines("qga_session_in_pieces", qga, sync_id=1234567, sizes=(2, 9, 1, 40))
qemu_lines("qga_partial_before_sync", b'{"return": {"exitc' + b"\xff" + b'{"return": 42}\n', sync_id=42)
qemu_lines("qga_bad_base64", b'{"return": {"exited": true, "out-data": "%%%\\u0007"}}\n'
           b'{"return": {"exited": "yes"}}\n', sync_id=7)

# ---- DHCP (dhcp_frames) -----------------------------------------------
# Requests as Debian 12's clients send them on boot: systemd-networkd 252
# (sd-dhcp-client: IP TOS CS6, client id 0xff + IAID + DUID-EN, max
# message size, parameter request list, no padding) and ISC dhclient
# 4.4.3 (TOS low-delay, padded to BOOTP's 300 bytes); each built from the
# clients' defaults with a UDP checksum. Input: mode byte (bit 0: the
# lease's MAC is the frame's), lease, frame.

VM_MAC = bytes.fromhex("0a580afa0305")


def inet_sum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def dhcp_frame(options, mac=VM_MAC, xid=0x3903F326, secs=0, flags=0, tos=0xC0, pad_to=0, chaddr=None):
    bootp = struct.pack("!BBBBIHH", 1, 1, 6, 0, xid, secs, flags) + bytes(16)
    bootp += (chaddr or mac) + bytes(10) + bytes(64 + 128) + bytes([99, 130, 83, 99])
    bootp += b"".join(bytes([c, len(v)]) + v for c, v in options) + b"\xff"
    bootp += bytes(max(0, pad_to - len(bootp)))
    udp_len = 8 + len(bootp)
    src, dst = bytes(4), b"\xff" * 4
    pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", 68, 67, udp_len, 0) + bootp
    csum = inet_sum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + udp_len, 0, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", inet_sum(ip)) + ip[12:]
    return b"\xff" * 6 + mac + b"\x08\x00" + ip + udp


def ip_le(text):
    """An IPv4 address as the target's u32 (little-endian) reads it."""
    return bytes(reversed([int(x) for x in text.split(".")]))


def lease_bytes(address, prefix, gateway, mtu, dns, hostname, search):
    out = ip_le(address) + bytes([prefix])
    out += (b"\x01" + ip_le(gateway)) if gateway else b"\x00"
    out += struct.pack("<HB", mtu, len(dns)) + b"".join(ip_le(d) for d in dns)
    out += bytes([len(hostname)]) + hostname + bytes([len(search)]) + search
    return out


POD_LEASE = lease_bytes("10.250.3.5", 24, "10.250.3.1", 1450, ["10.96.0.10"], b"vm-1",
                        b"default.svc.cluster.local svc.cluster.local cluster.local")
CALICO_LEASE = lease_bytes("192.168.45.7", 32, "169.254.1.1", 1480, ["10.96.0.10"], b"web-0",
                           b"prod.svc.cluster.local svc.cluster.local cluster.local")
duid = bytes.fromhex("ff") + bytes.fromhex("5bd3f0a1") + bytes.fromhex("0002000082bd") + bytes.fromhex("8a7cbe5e4ff2b9c01a6d")
networkd_prl = bytes([1, 3, 6, 12, 15, 28, 42, 119, 121, 249])
networkd_discover = dhcp_frame([(53, b"\x01"), (61, duid), (57, struct.pack("!H", 1472)), (12, b"vm-1"),
                                (55, networkd_prl)])
networkd_request = dhcp_frame([(53, b"\x03"), (61, duid), (57, struct.pack("!H", 1472)), (12, b"vm-1"),
                               (50, bytes([10, 250, 3, 5])), (54, bytes([10, 250, 3, 1])), (55, networkd_prl)],
                              secs=1)
dhclient_prl = bytes([1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42])
dhclient_discover = dhcp_frame([(53, b"\x01"), (12, b"debian"), (55, dhclient_prl)], xid=0x5A1E0C27,
                               tos=0x10, pad_to=300)
dhclient_request = dhcp_frame([(53, b"\x03"), (54, bytes([10, 250, 3, 1])), (50, bytes([10, 250, 3, 5])),
                               (12, b"debian"), (55, dhclient_prl)], xid=0x5A1E0C27, tos=0x10, pad_to=300)
seed("dhcp_frames", "networkd_discover", b"\x01" + POD_LEASE + networkd_discover)
seed("dhcp_frames", "networkd_request", b"\x01" + POD_LEASE + networkd_request)
seed("dhcp_frames", "networkd_discover_calico", b"\x01" + CALICO_LEASE + networkd_discover)
seed("dhcp_frames", "dhclient_discover", b"\x01" + POD_LEASE + dhclient_discover)
seed("dhcp_frames", "dhclient_request_calico", b"\x01" + CALICO_LEASE + dhclient_request)
# Not the VM's: another MAC in chaddr, a RELEASE, an option that runs
# past the end, a frame cut short.
seed("dhcp_frames", "other_chaddr", b"\x01" + POD_LEASE
     + dhcp_frame([(53, b"\x01")], chaddr=bytes.fromhex("020000000001")))
seed("dhcp_frames", "release", b"\x01" + POD_LEASE + dhcp_frame([(53, b"\x07"), (54, bytes([10, 250, 3, 1]))]))
seed("dhcp_frames", "option_past_end", b"\x01" + POD_LEASE + networkd_discover[:-1] + b"\x0c\xc8vm")
seed("dhcp_frames", "cut_short", b"\x01" + POD_LEASE + networkd_discover[:200])
# A lease with many DNS servers and long search domains, and a frame
# from a MAC given apart from it.
many = lease_bytes("10.0.0.2", 8, "10.0.0.1", 9000, ["10.0.0.%d" % i for i in range(70)], b"h" * 255,
                   b" ".join(b"n%d.io" % i for i in range(35)))
seed("dhcp_frames", "long_lease_values", b"\x00" + VM_MAC + many + networkd_discover)
# The answer budget: a DISCOVER storm, then a retry every few seconds,
# the clock stepping back once.
seed("dhcp_frames", "budget_storm", b"\x02" + b"".join(struct.pack("<H", s) for s in
                                                        [0] * 12 + [100] * 10 + [2000, 500, 0x8000 | 3000, 4000]))

# ---- disk headers (disk_headers) --------------------------------------
# Made with the tools a user makes a containerDisk with, where the machine
# has them (run as root on the build machine; each is the first 4 KiB of
# the file and the file's length, trailing zeros dropped): qemu-img 7.2's
# qcow2 v3 (compat=1.1) and v2 (compat=0.10), with a backing file, with an
# external data file; an MBR disk (sfdisk), a GPT disk, a bare ext4
# (mke2fs, fixed UUID and time), and the first 4 KiB of the Debian 12
# genericcloud image husk's tests boot (HUSK_TEST_IMAGE). Where a tool is
# missing, the committed seed stays.
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402


def disk_seed(name, path):
    with open(path, "rb") as f:
        head = f.read(4096)
    # A VMDK descriptor's random content id, fixed.
    head = re.sub(rb"\nCID=[0-9a-f]{8}", b"\nCID=6b0d7c43", head)
    size = os.path.getsize(path)
    seed("disk_headers", name, b"\x00" + struct.pack("<Q", size) + head.rstrip(b"\0"))


def disk_seeds():
    with tempfile.TemporaryDirectory() as d:
        # Relative names: a backing or data file's name is in the header.
        def run(*args, env=None, stdin=None):
            subprocess.run(args, check=True, cwd=d, input=stdin, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))

        p = lambda n: os.path.join(d, n)
        if shutil.which("qemu-img"):
            run("qemu-img", "create", "-f", "qcow2", p("v3.qcow2"), "2G")
            disk_seed("qcow2_v3", p("v3.qcow2"))
            run("qemu-img", "create", "-f", "qcow2", "-o", "compat=0.10", p("v2.qcow2"), "10G")
            disk_seed("qcow2_v2", p("v2.qcow2"))
            run("qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", "v3.qcow2", "backed.qcow2")
            disk_seed("qcow2_backing_file", p("backed.qcow2"))
            run("qemu-img", "create", "-f", "qcow2", "-o", "data_file=data.raw", "ext.qcow2", "1G")
            disk_seed("qcow2_external_data", p("ext.qcow2"))
            run("qemu-img", "create", "-f", "vmdk", p("d.vmdk"), "1G")
            disk_seed("vmdk", p("d.vmdk"))
        if shutil.which("sfdisk"):
            for label, name in (("dos", "mbr_disk"), ("gpt", "gpt_disk")):
                with open(p(name), "wb") as f:
                    f.truncate(64 << 20)
                script = "label: %s\nlabel-id: %s\ntype=L%s\n" % (
                    label, "0x1234abcd" if label == "dos" else "5B3E3C2A-0D5C-4C1E-9E1F-6B1E4B8C2D11",
                    "" if label == "dos" else ", uuid=0FC63DAF-8483-4772-8E79-3D69D8477DE5")
                run("sfdisk", "-q", name, stdin=script.encode())
                disk_seed(name, p(name))
        if shutil.which("mke2fs"):
            with open(p("ext4"), "wb") as f:
                f.truncate(16 << 20)
            run("mke2fs", "-q", "-t", "ext4", "-U", "6b0d7c43-6a2b-4b9e-9c1d-2f4f3b0e9a11",
                "-E", "hash_seed=6b0d7c43-6a2b-4b9e-9c1d-2f4f3b0e9a12", p("ext4"),
                env={"E2FSPROGS_FAKE_TIME": "1764487200"})
            disk_seed("ext4_bare", p("ext4"))
    image = os.environ.get("HUSK_TEST_IMAGE", "/usr/local/share/husk/debian-vm.qcow2")
    if os.path.exists(image):
        disk_seed("debian12_genericcloud", image)


disk_seeds()
# Crafted: a corrupt v3, a v3 cut after the version, a header claiming
# 2^64-1 bytes, raw of a size that is not whole sectors.
QCOW2_V3 = (b"QFI\xfb" + struct.pack(">IQIIQIIQQIIQQQQII", 3, 0, 0, 16, 2 << 30, 0, 4, 0x30000, 0x10000, 1, 0, 0,
                                      2, 0, 0, 4, 112))
seed("disk_headers", "qcow2_corrupt", b"\x00" + struct.pack("<Q", 196616) + QCOW2_V3)
seed("disk_headers", "qcow2_truncated", b"\x01QFI\xfb\x00\x00\x00\x03")
seed("disk_headers", "qcow2_huge", b"\x00" + struct.pack("<Q", 196616)
     + QCOW2_V3[:24] + b"\xff" * 8 + QCOW2_V3[32:])
seed("disk_headers", "raw_odd_size", b"\x00" + struct.pack("<Q", (1 << 20) + 3) + bytes(510) + b"\x55\xaa")

# ---- cloud-init inputs (cloud_init_inputs) ----------------------------
# kubelet's files for a pod (resolv.conf for ClusterFirst, with the node's
# search domains after the cluster's; for dnsPolicy Default, the node's
# own; a dnsConfig with an IPv6 server), its hostname file, authorized_keys
# as users write them (options, comments, CRLF from an editor on Windows),
# cloud-init files a user puts in a ConfigMap, and the pod network as CNI
# made it (bridge with a /24 and a gateway; Calico's /32 with 169.254.1.1;
# dual stack). Input: flags byte, then NUL-separated parts.


def cloud(name, flags, resolv=b"", hostname=b"", keys=b"", instance=b"", meta=b"", netcfg=b"", userdata=b"",
          net=b""):
    seed("cloud_init_inputs", name, bytes([flags]) + b"\0".join(
        [resolv, hostname, keys, instance, meta, netcfg, userdata, net]))


CLUSTER_FIRST = (b"search default.svc.cluster.local svc.cluster.local cluster.local "
                 b"europe-west1-b.c.my-project.internal c.my-project.internal google.internal\n"
                 b"nameserver 10.96.0.10\noptions ndots:5\n")
NODE_RESOLV = b"nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
DNS_CONFIG = (b"search ns1.svc.cluster-domain.example my.dns.search.suffix\n"
              b"nameserver 192.0.2.1\nnameserver 2001:db8::53\noptions ndots:2 edns0\n")
KEYS = (b"# alice's laptop\n"
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9xZ3J0dW9hZ2ZrM2xqZjkwMjNrbGZqYXNkZjkwMjM alice@laptop\n"
        b"\n"
        b"from=\"10.0.0.0/8\",no-agent-forwarding,no-X11-forwarding ssh-rsa "
        b"AAAAB3NzaC1yc2EAAAADAQABAAABgQC7" + b"x" * 64 + b"== ci@build\r\n"
        b"ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBE= bob \"quoted\" comment\n")
UID = b"6b0d7c43-6a2b-4b9e-9c1d-2f4f3b0e9a11"
BRIDGE = b"nic 0A:58:0A:FA:03:05 eth0 1450\naddr 10.250.3.5/24\nroute - 10.250.3.1\n"
CALICO = b"nic ee:ee:ee:ee:ee:ee eth0 1480\naddr 192.168.45.7/32\nroute - 169.254.1.1\n"
DUAL = (b"nic 0a:58:0a:f4:00:0c eth0 1500\naddr 10.244.0.12/24\naddr fd00:10:244::c/64\n"
        b"route - 10.244.0.1\nroute ::/0 fd00:10:244::1\nroute 10.96.0.0/12 -\n")
cloud("cluster_first_bridge", 8, CLUSTER_FIRST, b"vm-pod\n", KEYS, UID, net=BRIDGE)
cloud("node_dns_calico", 8, NODE_RESOLV, b"web-0.nginx.default.svc.cluster.local\n", b"", UID, net=CALICO)
cloud("dns_config_dual_stack", 8, DNS_CONFIG, b"db-1\n", KEYS, UID, net=DUAL)
cloud("user_files", 0b1111, CLUSTER_FIRST, b"vm-pod\n", KEYS, UID,
      b"instance-id: mine\nlocal-hostname: custom\n",
      b"version: 2\nethernets:\n  id0:\n    match:\n      name: e*\n    dhcp4: true\n",
      b"#cloud-config\npackages: [nginx]\nruncmd:\n  - [systemctl, enable, --now, nginx]\n", BRIDGE)
cloud("no_network", 0, CLUSTER_FIRST, b"vm-pod\n", KEYS, UID)
# Hostile: quotes and a YAML document marker in a key's comment, control
# characters and C1 codes, a hostname that is not one, search domains
# that are not names.
cloud("hostile_strings", 8, b"search a..b -x.y " + b"l" * 64 + b".example ok.example\nnameserver 10.0.0.1%eth0\n",
      b"bad..name\n", b"ssh-ed25519 AAAA x\"\n---\npublic-keys: [evil]\x7f\xc2\x85\xe2\x80\xa8\n",
      b"id\"\ninstance-id: evil", net=b"nic 0a:58:0a:fa:03:05 eth0\"\\n 1450\naddr 10.0.0.2/33\nroute 0.0.0.0/0 x\n")

# ---- the console and /proc (console_and_proc) --------------------------
# The console in the shape husk's guest prints it on ttyS0 (the kernel's
# lines end in CRLF on a serial console; the agent's marker line), cut
# where a 20 ms batch of a TCG guest's UART would cut it; and a VMM's
# /proc files with the command names QEMU and husk-vmm have and ones a
# guest that took the VMM over could set (PR_SET_NAME takes 15 bytes).

MARKER = b"husk-agent: listening on vsock"
boot_log = (b"[    0.000000] Linux version 6.1.119-husk (root@build) (gcc (Debian 12.2.0-14) 12.2.0) #1 SMP\r\n"
            b"[    0.000000] Command line: console=ttyS0 reboot=k panic=1 quiet\r\n"
            b"[    0.412233] virtio_blk virtio1: [vda] 2097152 512-byte logical blocks\r\n"
            b"[    0.731902] Run /init as init process\r\n"
            + MARKER + b"\r\n"
            b"[    1.020011] random: crng init done\r\n")


def console_seed(name, stream, cuts=(), gap_ms=20):
    seed("console_and_proc", name, bytes([0, len(cuts)]) + b"".join(struct.pack("<H", c) for c in cuts)
         + struct.pack("<H", gap_ms) + stream)


console_seed("boot", boot_log, cuts=(64, 200, 250, 300))
console_seed("marker_cut_in_three", b"x\n" + MARKER + b"\n", cuts=(5, 17, 31))
console_seed("marker_in_a_long_line", b"say " + MARKER + b"\n" + MARKER + b" and more\n")
console_seed("flood", b"\x1b[2J\x1b[31m" + b"A" * 6000 + b"\xff\xfe\xc2\x85\n", cuts=(4096,), gap_ms=1000)


def proc_seed(name, comm, ticks=100, utime=250, stime=50, threads=7, kb=(524288, 600000, 400000, 100000, 24288),
              raw=None):
    head = bytes([1 if raw is None else 3, len(comm)]) + comm + struct.pack("<HQQH", ticks, utime, stime, threads)
    head += struct.pack("<5I", *kb)
    seed("console_and_proc", name, head + (raw or b""))


proc_seed("qemu", b"qemu-system-x86")
proc_seed("husk_vmm", b"husk-vmm", ticks=100, utime=10 ** 9, stime=3, threads=4)
proc_seed("name_with_parens", b"x) R 1 2 3 4 (")
proc_seed("name_with_newline", b"q\nVmRSS:\t9 kB")
proc_seed("name_not_utf8", b"\xffqemu\xc0\\")
proc_seed("raw_files", b"", raw=b"1 (a) S" + b"\0" + b"VmRSS:\t-5 kB\nVmHWM: x\n")

# ---- the tools channel (tools_frames) -----------------------------------
# What husk-vm-tools sends: its hello, a session's start, output, exit and
# an error; byte 0 is the piece size the stream arrives in.


def tools_frame(kind, session, payload):
    return b"HT" + bytes([kind]) + struct.pack(">II", session, len(payload)) + payload


def tools_open(tty, rows, cols, cwd, args, env):
    out = bytes([1 if tty else 0]) + struct.pack(">HHHH", rows, cols, len(args), len(env))
    return out + b"".join(s + b"\0" for s in [cwd] + args + env)


seed("tools_frames", "session", b"\x07" + tools_frame(1, 0, b"\x01" * 8) + tools_frame(3, 1, struct.pack(">I", 812))
     + tools_frame(9, 1, b"# tty\r\n/dev/pts/0\r\n") + tools_frame(7, 1, struct.pack(">I", 3)))
seed("tools_frames", "error", b"\xff" + tools_frame(8, 2, b"/nonexistent: No such file or directory (os error 2)"))
seed("tools_frames", "open", b"\x00" + tools_frame(2, 5, tools_open(True, 33, 101, b"/", [b"sh", b"-c", b"id"], [b"TERM=xterm"]))
     + tools_frame(5, 5, struct.pack(">HH", 40, 120)))
seed("tools_frames", "garbage_then_hello", b"\x03" + b"garbage" + tools_frame(1, 0, b"\x02" * 8))

# ---- dictionaries (libFuzzer -dict) -----------------------------------


def dictionary(target, words):
    d = os.path.join(os.path.dirname(ROOT), "dict")
    os.makedirs(d, exist_ok=True)
    esc = lambda w: "".join(chr(c) if 32 <= c < 127 and c not in b'"\\' else "\\x%02x" % c for c in w)
    with open(os.path.join(d, target + ".dict"), "w") as f:
        for w in sorted(set(words)):
            f.write('"%s"\n' % esc(w))


def json_words(obj):
    """Every key and string value of a JSON document, quoted."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield json.dumps(k).encode()
            yield from json_words(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from json_words(v)
    elif isinstance(obj, str):
        yield json.dumps(obj).encode()


words = []
for name in sorted(os.listdir(os.path.join(ROOT, "oci_plan"))):
    with open(os.path.join(ROOT, "oci_plan", name), "rb") as f:
        for part in f.read().split(b"\0"):
            words += list(json_words(json.loads(part)))
dictionary("oci_plan", [w for w in words if len(w) <= 64])
# The map keys the shim looks up in a stats reply, as protobuf strings.
keys = list(cpu) + list(mem) + list(events)
dictionary("agent_replies", [field(1, k) for k in keys] + [k.encode() for k in keys]
           + [b"grpc-status", b"grpc-message", b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f"])

# QAPI's keys and the values husk acts on; BOOTP/DHCP's fixed bytes and
# the options a server reads; the words of resolv.conf, authorized_keys
# and the target's network lines.
dictionary("qemu_lines", [b'"return"', b'"error"', b'"event"', b'"id"', b'"QMP"', b'"data"', b'"class"',
                          b'"desc"', b'"guest"', b'"GUEST_PANICKED"', b'"SHUTDOWN"', b'"exited"', b'"exitcode"',
                          b'"signal"', b'"out-data"', b'"err-data"', b'"out-truncated"', b'"err-truncated"',
                          b"true", b"false", b"null", b"\xff", b"\r\n", b"\\u001b", b"\\ud800", b"1e999", b"-0"])
dictionary("dhcp_frames", [bytes([99, 130, 83, 99]), b"\x35\x01\x01", b"\x35\x01\x03", b"\x35\x01\x07",
                           b"\x08\x00\x45", b"\x00\x44\x00\x43", b"\x01\x01\x06\x00", b"\xff\xff\xff\xff"])
dictionary("cloud_init_inputs", [b"nameserver ", b"search ", b"options ndots:5", b"domain ", b"ssh-ed25519 ",
                                 b"ssh-rsa ", b"# ", b"\r\n", b"nic ", b"addr ", b"route ", b" - ", b"/32", b"/128",
                                 b"::", b"fe80::1%eth0", b"\xc2\x85", b"\xe2\x80\xa8", b"\x7f", b"\xef\xbb\xbf",
                                 b"\xef\xbf\xbe", b"\""])

if __name__ == "__main__":
    print("seeds written under", ROOT, file=sys.stderr)
