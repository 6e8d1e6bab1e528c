#!/usr/bin/env bash
# Sets up a Debian 12 host to run husk and its tests, idempotently:
#   1. Debian packages (QEMU, kernel source and build tools, protoc, ...)
#   2. husk itself, release builds under /usr/local (scripts/install.sh:
#      the shim, husk, husk-vmm, virtiofsd and vhost-device-vsock, the
#      guest kernel and initrd); containerd's configuration is not touched
#      (scripts/install.sh --containerd-config does that, when asked);
#      cargo-fuzz for the fuzz targets, cached by version
#   3. test fixtures in /usr/local/share/husk: the replaced-agent initrd,
#      the busybox test image and the CRI pod sandbox (pause) image (OCI
#      archives for `ctr images import`), and the husk-vm test images: a
#      Debian 12 VM disk as KubeVirt containerDisk archives (cached by inputs)
#   4. the workspace's test suite (debug build; skipped with --no-tests)
#   5. containerd 1.7 (Debian 13) and 2.x (Debian unstable) for the tests,
#      unpacked beside the system's 1.6 (scripts/fetch-containerd.sh)
# Artifacts are cached under $HUSK_CACHE (default /var/cache/husk). Needs
# root.
#
# Usage: scripts/setup.sh [--no-tests]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export HUSK_CACHE=${HUSK_CACHE:-/var/cache/husk}
CARGO_FUZZ_VERSION=0.13.2
SHARE=/usr/local/share/husk
tests=1
[ "${1:-}" = --no-tests ] && tests=0

log() { printf '\n== setup: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (it installs packages and writes $SHARE)" >&2
    exit 1
fi

# Disk: a full run (release and debug builds, the static agent, the fuzz
# build, the guest kernel tree, the VM images) peaks near NEED_GIB in the
# repository's file system. Too little space fails late and obscurely (the
# linker dies with SIGBUS mid-link), so say so up front.
NEED_GIB=12
free_gib=$(df --output=avail -BG "$repo" | tail -1 | tr -dc 0-9)
echo "setup.sh: ${free_gib} GiB free in $repo's file system"
if [ "$free_gib" -lt "$NEED_GIB" ]; then
    echo "setup.sh: warning: a full build and test run needs about $NEED_GIB GiB free there; expect 'No space left on device' or a linker SIGBUS" >&2
fi

packages=(qemu-system-x86 linux-source-6.1 build-essential flex bison bc libelf-dev
    cpio xz-utils libseccomp-dev libcap-ng-dev protobuf-compiler pkg-config
    busybox-static containerd runc iproute2 procps binutils
    containernetworking-plugins iptables
    mmdebstrap qemu-utils extlinux syslinux-common fdisk dosfstools mtools openssh-client
    ovmf)
not_installed() {
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
}
# Twice at most: installing one package can remove another as a conflict
# (a machine that came with bookworm-backports' qemu-utils 10.0 loses it
# when QEMU 7.2's qemu-system-common goes in), so what is missing after
# the first pass is installed from this Debian's own suite.
for pass in 1 2; do
    not_installed
    [ ${#missing[@]} -eq 0 ] && break
    log "installing Debian packages (pass $pass): ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    [ "$pass" = 1 ] && apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done
not_installed
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: these Debian packages could not be installed together: ${missing[*]}" >&2
    exit 1
fi

bash "$repo/scripts/install.sh"

# cargo-fuzz, for the fuzz targets (fuzz/, scripts/fuzz.sh): a test tool,
# built once per version into the cache and linked onto PATH.
fuzz_root="$HUSK_CACHE/tools/cargo-fuzz-$CARGO_FUZZ_VERSION"
if [ ! -x "$fuzz_root/bin/cargo-fuzz" ]; then
    log "building cargo-fuzz $CARGO_FUZZ_VERSION (cached in $fuzz_root)"
    rm -rf "$fuzz_root.tmp"
    cargo install --quiet --locked --root "$fuzz_root.tmp" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
    rm -rf "$fuzz_root" && mv "$fuzz_root.tmp" "$fuzz_root"
fi
ln -sfn "$fuzz_root/bin/cargo-fuzz" /usr/local/bin/cargo-fuzz

log "test fixtures"
# A replaced, unresponsive agent: the hostile-guest tests boot it.
bash "$repo/scripts/build-initrd.sh" --fake "$SHARE/husk-fake-agent-initrd.cpio"

log "test images"
bash "$repo/scripts/build-test-image.sh" "$SHARE/busybox-oci.tar"
bash "$repo/scripts/build-pause-image.sh" "$SHARE/pause-oci.tar"

log "husk-vm test images (Debian 12 disk; a cold build takes minutes)"
bash "$repo/scripts/build-vm-image.sh" "$SHARE"

if [ "$tests" = 1 ]; then
    log "husk workspace and its tests (debug)"
    (cd "$repo" && cargo build --locked --workspace --all-targets)
fi

log "containerd 1.7 and 2.x for the tests (cached in $HUSK_CACHE/containerd)"
bash "$repo/scripts/fetch-containerd.sh"
log "done"
