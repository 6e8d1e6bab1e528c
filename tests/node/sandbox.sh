# shellcheck shell=bash
# A throwaway node for install tests, sourced by the scripts beside it and
# run under `unshare -m --propagation private` so that nothing it mounts is
# seen outside: NODE is a copy-on-write overlay of this machine's root
# (writes go to a tmpfs and vanish with the mount namespace), with husk's
# installed files hidden (a node without husk), its own /run,
# /var/lib/containerd and /tmp, and this machine's /dev, /proc and /sys.
# containerd runs chrooted into it with its default paths, so on its own
# socket, state and root. Every process rooted in NODE is killed at the
# end (node_down, also on error).

NODE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HUSK_FILES=(usr/local/bin/containerd-shim-husk-v2 usr/local/bin/husk usr/local/bin/husk-vmm
    usr/local/bin/virtiofsd usr/local/bin/vhost-device-vsock usr/local/share/husk)

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

# Runs a command in the node, as root there, with a clean environment.
in_node() { chroot "$NODE" env -i PATH="$NODE_PATH" HOME=/root "$@"; }

node_up() {
    [ "$(id -u)" = 0 ] || fail "needs root"
    NODE_TMP=$(mktemp -d /tmp/husk-node.XXXXXX)
    mount -t tmpfs -o mode=0755 tmpfs "$NODE_TMP"
    mkdir -p "$NODE_TMP"/{upper,work,node}
    NODE=$NODE_TMP/node
    mount -t overlay overlay -o "lowerdir=/,upperdir=$NODE_TMP/upper,workdir=$NODE_TMP/work" "$NODE"
    trap node_down EXIT
    for f in "${HUSK_FILES[@]}"; do rm -rf "${NODE:?}/$f"; done
    for d in run var/lib/containerd tmp; do
        mkdir -p "$NODE/$d"
        mount -t tmpfs -o mode=0755 tmpfs "$NODE/$d"
    done
    chmod 1777 "$NODE/tmp"
    mount --rbind /dev "$NODE/dev"
    mount -t proc proc "$NODE/proc"
    mount --rbind /sys "$NODE/sys"
    step "node at $NODE (overlay of /, husk hidden)"
}

node_containerd_start() {
    in_node sh -c 'containerd >>/run/containerd.log 2>&1 </dev/null & echo $! > /run/containerd.pid'
    for _ in $(seq 300); do
        in_node ctr version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    tail -20 "$NODE/run/containerd.log" >&2
    fail "containerd in the node did not answer"
}

node_containerd_stop() {
    local pid
    pid=$(cat "$NODE/run/containerd.pid" 2>/dev/null) || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$NODE/run/containerd.pid"
}

# The pids of every process whose root is the node (or below it).
node_pids() {
    local p root
    for p in /proc/[0-9]*; do
        root=$(readlink "$p/root" 2>/dev/null) || continue
        case $root in "$NODE_TMP"/*) echo "${p#/proc/}" ;; esac
    done
}

node_down() {
    [ -n "${NODE_TMP:-}" ] || return 0
    node_containerd_stop 2>/dev/null || true
    local pids
    pids=$(node_pids)
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
    for _ in $(seq 50); do [ -z "$(node_pids)" ] && break; sleep 0.1; done
    # The mounts go with the namespace; the directory is this machine's.
    umount -R "$NODE_TMP" 2>/dev/null || umount -l "$NODE_TMP" 2>/dev/null || true
    rmdir "$NODE_TMP" 2>/dev/null || true
    NODE_TMP=
}

# The release in the node's guest kernel banner.
guest_release() {
    grep -a -o -m1 'Linux version [^ ]*' "$NODE/usr/local/share/husk/vmlinux" | awk '{print $3}'
}

# Runs busybox's `uname -r` in a husk VM through the node's containerd.
run_in_vm() {
    in_node ctr run --rm --runtime io.containerd.husk.v2 docker.io/husk/busybox:test "$1" uname -r
}
