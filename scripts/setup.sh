#!/usr/bin/env bash
# Sets up a Debian 12 host to run husk and its tests, idempotently:
#   1. Debian packages (QEMU, kernel source and build tools, protoc, ...)
#   2. virtiofsd and vhost-device-vsock from crates.io, cached by version
#   3. the guest kernel (cached by its inputs), the agent initrd, the
#      busybox test image and the CRI pod sandbox (pause) image (OCI
#      archives for `ctr images import`), and the husk-vm test images: a
#      Debian 12 VM disk as KubeVirt containerDisk archives (cached by inputs)
#   4. the husk workspace, and containerd-shim-husk-v2 on containerd's PATH
#      (and containerd-shim-husk-vm-v2, a link to it, for husk-vm pods)
#   5. containerd 1.7 (Debian 13) and 2.x (Debian unstable) for the tests,
#      unpacked beside the system's 1.6 (scripts/fetch-containerd.sh)
# Artifacts are cached under $HUSK_CACHE (default /var/cache/husk) and
# installed where configuration.toml's defaults point. Needs root.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export HUSK_CACHE=${HUSK_CACHE:-/var/cache/husk}
VIRTIOFSD_VERSION=1.14.0
VSOCK_VERSION=0.3.0
SHARE=/usr/local/share/husk

log() { printf '\n== setup: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (it installs packages and writes $SHARE)" >&2
    exit 1
fi

packages=(qemu-system-x86 linux-source-6.1 build-essential flex bison bc libelf-dev
    cpio xz-utils libseccomp-dev libcap-ng-dev protobuf-compiler pkg-config
    busybox-static containerd runc iproute2 procps binutils
    containernetworking-plugins iptables
    mmdebstrap qemu-utils extlinux syslinux-common fdisk dosfstools mtools openssh-client
    ovmf)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A crate binary, built once per version into the cache, linked onto PATH.
cargo_tool() {
    local crate=$1 version=$2 root="$HUSK_CACHE/tools/$1-$2"
    if [ ! -x "$root/bin/$crate" ]; then
        log "building $crate $version (cached in $root)"
        rm -rf "$root.tmp"
        cargo install --quiet --locked --root "$root.tmp" "$crate" --version "$version"
        rm -rf "$root" && mv "$root.tmp" "$root"
    fi
    ln -sfn "$root/bin/$crate" "/usr/local/bin/$crate"
}
cargo_tool virtiofsd "$VIRTIOFSD_VERSION"
cargo_tool vhost-device-vsock "$VSOCK_VERSION"

log "guest kernel"
bash "$repo/scripts/build-guest-kernel.sh"
mkdir -p "$SHARE"
install -m 0644 "$HUSK_CACHE/kernel/current/vmlinux" "$SHARE/vmlinux.tmp"
mv "$SHARE/vmlinux.tmp" "$SHARE/vmlinux"

log "agent initrd"
bash "$repo/scripts/build-initrd.sh" "$SHARE/husk-initrd.cpio"
# A replaced, unresponsive agent: the hostile-guest tests boot it.
bash "$repo/scripts/build-initrd.sh" --fake "$SHARE/husk-fake-agent-initrd.cpio"

log "test images"
bash "$repo/scripts/build-test-image.sh" "$SHARE/busybox-oci.tar"
bash "$repo/scripts/build-pause-image.sh" "$SHARE/pause-oci.tar"

log "husk-vm test images (Debian 12 disk; a cold build takes minutes)"
bash "$repo/scripts/build-vm-image.sh" "$SHARE"

log "husk workspace"
(cd "$repo" && cargo build --locked --workspace --all-targets)
# containerd finds runtime v2 shims on its PATH.
install -m 0755 "$repo/target/debug/containerd-shim-husk-v2" /usr/local/bin/containerd-shim-husk-v2
# The same executable runs husk-vm pods (runtime io.containerd.husk-vm.v2)
# when it runs under this name (docs/vm-pods.md, "Mode selection").
ln -sfn containerd-shim-husk-v2 /usr/local/bin/containerd-shim-husk-vm-v2
# husk-vmm, which hypervisor.backend = "auto" uses where KVM can
# run guests (vmx/svm); QEMU otherwise.
install -m 0755 "$repo/target/debug/husk-vmm" /usr/local/bin/husk-vmm

log "containerd 1.7 and 2.x for the tests (cached in $HUSK_CACHE/containerd)"
bash "$repo/scripts/fetch-containerd.sh"
log "done"
