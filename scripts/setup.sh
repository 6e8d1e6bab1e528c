#!/usr/bin/env bash
# Sets up a Debian 12 host to run husk, idempotently: what the main job
# (scripts/demo.sh) runs and nothing more.
#   1. Debian packages: QEMU and what husk-vm pods use (qemu-utils, OVMF,
#      dosfstools, mtools), containerd, runc and the CNI plugins, and what
#      husk is built with (kernel source and build tools, protoc, ...)
#   2. husk itself, release builds under /usr/local (scripts/install.sh:
#      the shim, husk, husk-vmm, virtiofsd and vhost-device-vsock, the
#      guest kernel and initrd); containerd's configuration is not touched
#      (scripts/install.sh --containerd-config does that, when asked)
#   3. the busybox image the main job runs (tests/fixtures/build-test-image.sh)
# The test command adds its fixtures and tools with tests/setup.sh.
# Artifacts are cached under $HUSK_CACHE (default /var/cache/husk). Needs
# root.
#
# Usage: scripts/setup.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export HUSK_CACHE=${HUSK_CACHE:-/var/cache/husk}
SHARE=/usr/local/share/husk

log() { printf '\n== setup: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (it installs packages and writes $SHARE)" >&2
    exit 1
fi

# Disk: the release builds, the static agent and the guest kernel tree take
# about NEED_GIB in the repository's file system; too little space fails
# late and obscurely (the linker dies with SIGBUS mid-link), so say so.
NEED_GIB=6
free_gib=$(df --output=avail -BG "$repo" | tail -1 | tr -dc 0-9)
echo "setup.sh: ${free_gib} GiB free in $repo's file system"
if [ "$free_gib" -lt "$NEED_GIB" ]; then
    echo "setup.sh: warning: building husk needs about $NEED_GIB GiB free there; expect 'No space left on device' or a linker SIGBUS" >&2
fi

# shellcheck source=scripts/packages.sh
. "$repo/scripts/packages.sh"
install_packages qemu-system-x86 qemu-utils ovmf swtpm dosfstools mtools \
    containerd runc containernetworking-plugins iptables iproute2 procps \
    linux-source-6.1 build-essential flex bison bc libelf-dev cpio xz-utils binutils \
    libseccomp-dev libcap-ng-dev protobuf-compiler pkg-config busybox-static

bash "$repo/scripts/install.sh"

log "the busybox image (docker.io/husk/busybox:test)"
bash "$repo/tests/fixtures/build-test-image.sh" "$SHARE/busybox-oci.tar"
log "done"
