#!/usr/bin/env bash
# Builds the pod sandbox ("pause") image for the CRI tests: an OCI image
# archive, imported with `ctr -n k8s.io images import` as
# docker.io/husk/pause:test and named by the CRI plugin's sandbox_image.
# Its entrypoint /pause (busybox sh) is what the pause container must be:
# it waits forever, reaps the zombies re-parented to it, and exits 0 at once
# on SIGTERM or SIGINT. Same approach as build-test-image.sh: Debian's
# busybox-static, packed by scripts/oci-archive.sh (fixed mtimes and owners,
# so the same busybox gives the same digest).
# Usage: scripts/build-pause-image.sh [OUTPUT]  (default target/husk/pause-oci.tar)
set -euo pipefail
umask 022 # file modes go into the layer: keep them independent of the caller
export LC_ALL=C
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/target/husk/pause-oci.tar}
name=docker.io/husk/pause:test
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "build-pause-image: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,proc,sys,dev,etc}
chmod 0755 "$root" "$root"/{bin,proc,sys,dev,etc}
install -m 0755 "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
ln -s busybox "$root/bin/sleep"
# `wait` in ash waits for any child, so orphans re-parented to the pause
# process (PID 1 of the pod) are reaped while it waits; a trapped signal
# interrupts `wait` at once.
cat > "$root/pause" <<'EOF'
#!/bin/sh
# Pod sandbox pause process: wait forever, reap zombies, exit 0 on TERM/INT.
# A background job's stdin is /dev/null: without it every `&` fails at once.
[ -c /dev/null ] || { echo "pause: /dev/null missing" >&2; exit 1; }
child=
trap 'kill "$child" 2>/dev/null; exit 0' TERM INT
while :; do
    sleep 2147483647 &
    child=$!
    wait "$child"
done
EOF
chmod 0755 "$root/pause"

bash "$repo/scripts/oci-archive.sh" --entrypoint "$root" "$name" "$out" \
    "husk scripts/build-pause-image.sh (busybox-static)" /pause | sed "s/^image:/pause image:/"
