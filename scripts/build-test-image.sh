#!/usr/bin/env bash
# Builds the test image: an OCI image archive (image layout tarball) with
# Debian's busybox-static and an applet symlink per command, plus
# /bin/vsock-probe (tests/fixtures/vsock-probe.c), imported with
# `ctr images import` as docker.io/husk/busybox:test. No registry needed.
# Reproducible: fixed mtimes and owners, so the same busybox and gcc give
# the same digest.
# Usage: scripts/build-test-image.sh [OUTPUT]  (default target/husk/busybox-oci.tar)
set -euo pipefail
umask 022 # file modes go into the layer: keep them independent of the caller
export LC_ALL=C # --sort=name and the applet list: byte order
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/target/husk/busybox-oci.tar}
name=docker.io/husk/busybox:test
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "build-test-image: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,proc,sys,dev,tmp,etc,root,run}
chmod 0755 "$root" "$root"/{bin,proc,sys,dev,etc,root,run}
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"
install -m 0755 "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
# The vsock door probe (tests/fixtures/vsock-probe.c, for
# tests/tests/vsock_door.rs): static, so it needs nothing from the image.
command -v gcc >/dev/null || { echo "build-test-image: gcc missing (apt-get install build-essential)" >&2; exit 1; }
gcc -static -O2 -s -o "$root/bin/vsock-probe" "$repo/tests/fixtures/vsock-probe.c"
chmod 0755 "$root/bin/vsock-probe"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$root/etc/group"

bash "$repo/scripts/oci-archive.sh" "$root" "$name" "$out" \
    "husk scripts/build-test-image.sh (busybox-static, vsock-probe)" sh | sed 's/^image:/test image:/'
