#!/usr/bin/env bash
# husk-deploy.sh against a node's real containerd, without the deploy
# image or a VM: deploy/husk-deploy.sh from the repository, a payload of
# containerd-config.sh, its two snippets and this build's husk and shim,
# and the node (sandbox.sh) as the DaemonSet's /host. install must have
# the node's containerd dump the staged configuration through chroot,
# swap it in, restart containerd and find it answering with its default
# check (`ctr version` chrooted into the node); containerd then has both
# handlers. cleanup must leave config.toml byte for byte the node's own.
# Then a node containerd that does not come back with husk's handler:
# the restart command starts it on another socket then, so the default
# check does not see it; install must roll back (config.toml the node's
# own again, containerd restarted twice and answering, not ready). Run as
#   unshare -m --propagation private tests/node/deploy-config.sh TARGET_DIR
# with TARGET_DIR holding husk and containerd-shim-husk-v2.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=sandbox.sh
. "$here/sandbox.sh"
bins=${1:?usage: deploy-config.sh TARGET_DIR}

node_up
mkdir -p "$NODE/etc/containerd"
[ -f "$NODE/etc/containerd/config.toml" ] || printf 'version = 2\n' > "$NODE/etc/containerd/config.toml"
cp "$NODE/etc/containerd/config.toml" "$NODE_TMP/config.toml.orig"

step "the payload: containerd-config.sh, its snippets, husk, the shim"
P=$NODE_TMP/payload
mkdir -p "$P/usr/local/share/husk" "$P/usr/local/bin"
cp "$repo/scripts/containerd-config.sh" "$repo/config/containerd-cri.toml" \
    "$repo/config/containerd-husk-v3.toml" "$P/usr/local/share/husk/"
cp "$bins/husk" "$bins/containerd-shim-husk-v2" "$P/usr/local/bin/"

node_containerd_start
cat > "$NODE/run/restart-containerd.sh" <<'RESTART'
pid=$(cat /run/containerd.pid)
kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
set --
if [ -n "${BREAK_WITH_HUSK:-}" ] && grep -rqs io.containerd.husk /etc/containerd; then
    set -- --address /run/containerd/elsewhere.sock
fi
containerd "$@" >>/run/containerd.log 2>&1 </dev/null & echo $! > /run/containerd.pid
RESTART
restarts=$NODE_TMP/restarts
deploy() { # VERB [break]: husk-deploy.sh VERB on the node, under busybox sh
    env -i PATH="$NODE_PATH" HUSK_HOST_ROOT="$NODE" HUSK_PAYLOAD="$P" \
        HUSK_READY_FILE="$NODE_TMP/ready" HUSK_CONTAINERD_WAIT="${WAIT:-30}" \
        HUSK_RESTART_CONTAINERD="echo >> $restarts; BREAK_WITH_HUSK=${2:-} PATH=$NODE_PATH chroot $NODE /bin/sh /run/restart-containerd.sh" \
        busybox sh "$repo/deploy/husk-deploy.sh" "$1"
}

step "husk-deploy.sh install"
: > "$restarts"
deploy install > "$NODE_TMP/install.log" 2>&1 || { cat "$NODE_TMP/install.log"; fail "install failed"; }
cat "$NODE_TMP/install.log"
[ -f "$NODE_TMP/ready" ] || fail "install did not mark the pod ready"
[ "$(wc -l < "$restarts")" = 1 ] || fail "containerd restarted $(wc -l < "$restarts") times, not once"
grep -q 'config version' "$NODE_TMP/install.log" || fail "containerd-config.sh did not say what it wrote"
dump=$(in_node containerd config dump)
for t in io.containerd.husk.v2 io.containerd.husk-vm.v2; do
    echo "$dump" | grep -q "runtime_type = \"$t\"" || fail "containerd's dump has no $t handler"
done
in_node ctr version >/dev/null || fail "containerd does not answer"

step "husk-deploy.sh cleanup"
deploy cleanup || fail "cleanup failed"
cmp "$NODE/etc/containerd/config.toml" "$NODE_TMP/config.toml.orig" ||
    fail "config.toml is not the node's own after cleanup"
[ ! -e "$NODE/usr/local/bin/husk" ] || fail "husk is still on the node"

step "husk-deploy.sh install; containerd does not come back on its socket"
: > "$restarts"
rm -f "$NODE_TMP/ready"
if WAIT=5 deploy install break > "$NODE_TMP/rollback.log" 2>&1; then
    cat "$NODE_TMP/rollback.log"; fail "install succeeded without containerd answering"
fi
cat "$NODE_TMP/rollback.log"
grep -q 'ROLLING BACK' "$NODE_TMP/rollback.log" || fail "no ROLLING BACK"
grep -q 'ROLLED BACK' "$NODE_TMP/rollback.log" || fail "no ROLLED BACK"
in_node ctr version >/dev/null || fail "containerd does not answer after the rollback"
cmp "$NODE/etc/containerd/config.toml" "$NODE_TMP/config.toml.orig" ||
    fail "config.toml is not the node's own after the rollback"
[ "$(wc -l < "$restarts")" = 2 ] || fail "containerd restarted $(wc -l < "$restarts") times, not twice"
[ ! -f "$NODE_TMP/ready" ] || fail "ready after a rollback"
echo "PASS: husk-deploy.sh wrote and took back the handler through /host, and rolled back when containerd did not answer"
