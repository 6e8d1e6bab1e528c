#!/usr/bin/env bash
# The DaemonSet's pod on a node, as far as it can run without a cluster:
# the image built by scripts/build-deploy-image.sh is unpacked as the
# container's root, with the node's root at /host (as the DaemonSet mounts
# it), and husk-deploy.sh run starts there against a stand-in API server
# (fake-api.py) and the node's running containerd. It must install husk,
# write the handler for that containerd, restart it, and label the node;
# a husk VM then runs; SIGTERM (the DaemonSet deleted) must unlabel the
# node, restore containerd's config byte for byte, restart containerd and
# remove every file it wrote. Run as
#   unshare -m --propagation private tests/node/deploy.sh DEPLOY_IMAGE.tar BUSYBOX_IMAGE.tar
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=sandbox.sh
. "$here/sandbox.sh"
archive=${1:?usage: deploy.sh DEPLOY_IMAGE BUSYBOX_IMAGE}
image=${2:?usage: deploy.sh DEPLOY_IMAGE BUSYBOX_IMAGE}

node_up
cp "$image" "$NODE/tmp/busybox-oci.tar"
cp "$NODE/etc/containerd/config.toml" "$NODE_TMP/config.toml.orig"

step "the container: the deploy image's layer, the node's root at /host"
C=$NODE_TMP/container
mkdir -p "$C" "$NODE_TMP/image"
tar -xf "$archive" -C "$NODE_TMP/image"
layer=$(python3 -c '
import json, sys, os
d = sys.argv[1]
idx = json.load(open(os.path.join(d, "index.json")))
m = json.load(open(os.path.join(d, "blobs/sha256", idx["manifests"][0]["digest"].split(":")[1])))
print(os.path.join(d, "blobs/sha256", m["layers"][0]["digest"].split(":")[1]))' "$NODE_TMP/image")
tar -xzf "$layer" -C "$C"
mkdir -p "$C/host" "$C/dev" "$C/proc"
mount --rbind "$NODE" "$C/host"
mount --rbind /dev "$C/dev"
payload_files=$(cd "$C/husk-deploy/payload" && find usr -type f | sort)
[ -n "$payload_files" ] || fail "the image has no payload"

step "the node's containerd, without husk"
node_containerd_start
version=$(in_node containerd --version | awk '{print $3}')
# How the pod restarts the node's containerd here: in the node's root,
# with systemd's default PATH (which has /usr/local/bin, for ctr's shim lookup).
cat > "$NODE/run/restart-containerd.sh" <<'RESTART'
pid=$(cat /run/containerd.pid)
kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
containerd >>/run/containerd.log 2>&1 </dev/null & echo $! > /run/containerd.pid
i=0; until ctr version >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 300 ] || exit 1; sleep 0.1; done
RESTART

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
api_log=$NODE_TMP/api.log
: > "$api_log"
python3 "$here/fake-api.py" "$port" "$api_log" "containerd://$version" &
api_pid=$!
trap 'kill $api_pid 2>/dev/null || true; node_down' EXIT
for _ in $(seq 50); do curl -s "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done

step "husk-deploy.sh run (NODE_NAME=test-node, containerd $version)"
chroot "$C" env -i PATH=/usr/bin:/bin NODE_NAME=test-node HUSK_HOST_ROOT=/host \
    HUSK_KUBE_API="http://127.0.0.1:$port" \
    HUSK_RESTART_CONTAINERD="PATH=$NODE_PATH chroot /host /bin/sh /run/restart-containerd.sh" \
    HUSK_CONTAINERD_READY="PATH=$NODE_PATH chroot /host ctr version" \
    /husk-deploy/husk-deploy.sh run > "$NODE_TMP/deploy.log" 2>&1 &
deploy_pid=$!
for _ in $(seq 1200); do
    [ -f "$C/tmp/husk-deployed" ] && break
    kill -0 $deploy_pid 2>/dev/null || { cat "$NODE_TMP/deploy.log"; fail "husk-deploy.sh exited"; }
    sleep 0.1
done
cat "$NODE_TMP/deploy.log"
[ -f "$C/tmp/husk-deployed" ] || fail "husk-deploy.sh did not finish installing"

echo "$payload_files" | while read -r f; do
    cmp -s "$C/husk-deploy/payload/$f" "$NODE/$f" || fail "/$f is not the payload's on the node"
done
grep -q "^GET /api/v1/nodes/test-node" "$api_log" || fail "the node's containerd version was not asked"
grep -q '^PATCH /api/v1/nodes/test-node application/merge-patch+json {"metadata":{"labels":{"husk.io/runtime":"true"}}}$' \
    "$api_log" || { cat "$api_log"; fail "the node was not labelled"; }
in_node ctr plugins ls | grep -Eq '^io\.containerd\.grpc\.v1 +cri .* ok *$' ||
    fail "containerd's CRI plugin did not load with husk's handler"
out=$(in_node husk check) || { echo "$out"; fail "husk check fails on the deployed node"; }
echo "$out" | grep -E '^(ok|warn|fail) +(handler|kernel|containerd) '
in_node ctr images import /tmp/busybox-oci.tar >/dev/null
got=$(run_in_vm deploy-vm | tr -d '\r')
[ "$got" = "$(guest_release)" ] || fail "the VM ran kernel '$got', not the deployed '$(guest_release)'"
echo "a husk VM ran kernel $got (host: $(uname -r))"

step "SIGTERM: the DaemonSet deleted"
kill -TERM $deploy_pid
for _ in $(seq 1200); do kill -0 $deploy_pid 2>/dev/null || break; sleep 0.1; done
! kill -0 $deploy_pid 2>/dev/null || fail "husk-deploy.sh did not exit on SIGTERM"
wait $deploy_pid || fail "husk-deploy.sh exited with failure on SIGTERM"
tail -8 "$NODE_TMP/deploy.log"
grep -q '^PATCH /api/v1/nodes/test-node application/merge-patch+json {"metadata":{"labels":{"husk.io/runtime":null}}}$' \
    "$api_log" || { cat "$api_log"; fail "the node's label was not removed"; }
cmp "$NODE/etc/containerd/config.toml" "$NODE_TMP/config.toml.orig" ||
    fail "containerd's config.toml is not the node's own again"
[ ! -e "$NODE/etc/containerd/conf.d/husk.toml" ] || fail "the v3 drop-in is still there"
echo "$payload_files" | while read -r f; do
    [ ! -e "$NODE/$f" ] || fail "/$f is still on the node"
done
[ ! -e "$NODE/usr/local/share/husk" ] || fail "/usr/local/share/husk is still on the node"
in_node ctr version >/dev/null || fail "containerd does not answer after cleanup"
if in_node containerd config dump | grep -q 'io.containerd.husk.v2'; then
    fail "containerd still has the husk handler"
fi
echo "PASS: husk-deploy.sh installed, labelled and ran a VM, and SIGTERM took all of it back"
