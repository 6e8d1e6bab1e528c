#!/usr/bin/env bash
# What the test command adds to scripts/setup.sh, idempotently:
#   1. the Debian packages only the tests use (mmdebstrap, extlinux, ... for
#      the VM test image; openssh-client to log into it)
#   2. cargo-fuzz for the fuzz targets (fuzz/, tests/tools/fuzz.sh), cached
#      by version
#   3. test fixtures in /usr/local/share/husk: the replaced-agent initrd,
#      the CRI pod sandbox (pause) image, and the husk-vm test images (a
#      Debian 12 VM disk as KubeVirt containerDisk archives, cached by
#      inputs)
#   4. the workspace's tests (debug build)
#   5. containerd 1.7 (Debian 13) and 2.x (Debian unstable), unpacked
#      beside the system's 1.6 (tests/tools/fetch-containerd.sh)
# Run after scripts/setup.sh (tests/../scripts/test.sh does both). Needs
# root.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export HUSK_CACHE=${HUSK_CACHE:-/var/cache/husk}
CARGO_FUZZ_VERSION=0.13.2
SHARE=/usr/local/share/husk

log() { printf '\n== test setup: %s\n' "$*"; }

# Disk: the debug build of every test, the fuzz build and the VM images
# peak near NEED_GIB beyond what scripts/setup.sh needs.
NEED_GIB=8
free_gib=$(df --output=avail -BG "$repo" | tail -1 | tr -dc 0-9)
if [ "$free_gib" -lt "$NEED_GIB" ]; then
    echo "tests/setup.sh: warning: the tests need about $NEED_GIB GiB free in $repo's file system, $free_gib left; expect 'No space left on device' or a linker SIGBUS" >&2
fi

# shellcheck source=scripts/packages.sh
. "$repo/scripts/packages.sh"
install_packages mmdebstrap extlinux syslinux-common fdisk openssh-client

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
bash "$repo/tests/fixtures/build-pause-image.sh" "$SHARE/pause-oci.tar"

log "husk-vm test images (Debian 12 disk; a cold build takes minutes)"
bash "$repo/tests/fixtures/build-vm-image.sh" "$SHARE"

log "husk workspace and its tests (debug)"
(cd "$repo" && cargo build --locked --workspace --all-targets)

log "containerd 1.7 and 2.x for the tests (cached in $HUSK_CACHE/containerd)"
bash "$repo/tests/tools/fetch-containerd.sh"
log "done"
