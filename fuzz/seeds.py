#!/usr/bin/env python3
"""Writes the seed inputs of husk's fuzz targets into fuzz/seeds/<target>/.

Each seed is a real input in the target's input format (see the comment at
the top of each fuzz_targets/*.rs): the Linux virtio-mmio driver's probe
and set-up of each of husk-vmm's devices, the 8250 driver's console set-up,
descriptor chains as the Linux virtio-rng and virtio-net drivers post
them, the handshake lines vhost-device-vsock and the agent's forwarder
send, the agent's replies as gRPC frames, and what containerd 1.6-2.3 write
on a shim's stdin. tests/tools/fuzz.sh merges these into fuzz/corpus/ (which
is what is committed, minimized); run this again only when an input
format changes: python3 fuzz/seeds.py

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

if __name__ == "__main__":
    print("seeds written under", ROOT, file=sys.stderr)
