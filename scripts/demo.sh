#!/usr/bin/env bash
# The main job: set the host up (scripts/setup.sh), make sure containerd
# runs (starting it if nothing answers on its socket), import the test
# image, and run a container in a husk micro-VM through containerd.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"

sock=/run/containerd/containerd.sock
if ! ctr --address "$sock" version >/dev/null 2>&1; then
    echo "== starting containerd (log: /var/log/husk-containerd.log)"
    mkdir -p /var/log
    # setsid: containerd keeps running after this script, as a service would.
    setsid containerd >/var/log/husk-containerd.log 2>&1 < /dev/null &
    for _ in $(seq 100); do
        ctr --address "$sock" version >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
ctr --address "$sock" images import /usr/local/share/husk/busybox-oci.tar >/dev/null

echo "== host kernel: $(uname -r)"
echo "== ctr run --runtime io.containerd.husk.v2 docker.io/husk/busybox:test ..."
ctr --address "$sock" run --rm --runtime io.containerd.husk.v2 \
    docker.io/husk/busybox:test "husk-demo-$$" \
    sh -c 'echo "hello from a husk micro-VM: kernel $(uname -r), $(nproc) vCPU, $(grep MemTotal /proc/meminfo | tr -s " ")"'
