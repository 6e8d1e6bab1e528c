#!/usr/bin/env bash
# Installs husk on this node under its one prefix, /usr/local — what
# configuration.toml's defaults and the containerd snippets name:
#   /usr/local/bin/          containerd-shim-husk-v2, husk, husk-vmm
#                            (release builds, statically linked), virtiofsd
#                            and vhost-device-vsock (crates.io, cached)
#   /usr/local/share/husk/   vmlinux, husk-initrd.cpio (the guest), and
#                            configuration.toml (every key, documented),
#                            runtimeclass.yaml, the containerd snippets and
#                            containerd-config.sh, which writes them
# and, only with --containerd-config, husk's runtime handler into
# containerd's configuration (containerd-config.sh install; restart
# containerd afterwards). /etc/husk/configuration.toml is never written:
# without it the shim uses the defaults.
#
# Usage: scripts/install.sh [--destdir DIR] [--containerd-config]
#   --destdir DIR  install under DIR/usr/local instead (a package's tree:
#                  scripts/build-deb.sh)
# Needs the build tools scripts/setup.sh installs (Debian packages, Rust);
# builds are cached under $HUSK_CACHE (default /var/cache/husk) and cargo's
# target/.
set -euo pipefail
umask 022
repo=$(cd "$(dirname "$0")/.." && pwd)
export HUSK_CACHE=${HUSK_CACHE:-/var/cache/husk}
PREFIX=/usr/local
VIRTIOFSD_VERSION=1.14.0
VSOCK_VERSION=0.3.0
TARGET=x86_64-unknown-linux-gnu

destdir=
containerd_config=0
while [ $# -gt 0 ]; do
    case $1 in
        --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
        --containerd-config) containerd_config=1; shift ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -n "$destdir" ] && [ "$containerd_config" = 1 ]; then
    echo "install.sh: --containerd-config writes this node's containerd config; not with --destdir" >&2
    exit 2
fi
log() { printf '\n== install: %s\n' "$*"; }

# A crate binary, built once per version into the cache.
cargo_tool() {
    local crate=$1 version=$2 root="$HUSK_CACHE/tools/$1-$2"
    if [ ! -x "$root/bin/$crate" ]; then
        log "building $crate $version (cached in $root)" >&2
        rm -rf "$root.tmp"
        cargo install --quiet --locked --root "$root.tmp" "$crate" --version "$version"
        rm -rf "$root" && mv "$root.tmp" "$root"
    fi
    echo "$root/bin/$crate"
}
virtiofsd=$(cargo_tool virtiofsd "$VIRTIOFSD_VERSION")
vsock=$(cargo_tool vhost-device-vsock "$VSOCK_VERSION")

log "guest kernel"
bash "$repo/scripts/build-guest-kernel.sh"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
log "guest initrd (the static agent, and busybox for the debug console)"
bash "$repo/scripts/build-initrd.sh" "$stage/husk-initrd.cpio"
log "husk-vm's tools disk (the static guest helper of kubectl exec -it)"
bash "$repo/scripts/build-vm-tools.sh" "$stage/husk-vm-tools.img"

log "husk binaries (release, static)"
# Static like the agent: one build runs on any node's libc, which is what
# the DaemonSet image needs. --target keeps crt-static off build scripts.
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$TARGET" -p husk-shim -p husk-vmm --bins)
out=$repo/target/$TARGET/release
for bin in containerd-shim-husk-v2 husk husk-vmm; do
    if readelf -l "$out/$bin" | grep -q 'Requesting program interpreter'; then
        echo "install.sh: $out/$bin is dynamically linked" >&2
        exit 1
    fi
done

root=${destdir%/}$PREFIX
log "installing under ${destdir:-}$PREFIX"
install -d -m 0755 "$root/bin" "$root/share/husk"
for bin in containerd-shim-husk-v2 husk husk-vmm; do
    install -m 0755 "$out/$bin" "$root/bin/$bin.new"
done
install -m 0755 "$virtiofsd" "$root/bin/virtiofsd.new"
install -m 0755 "$vsock" "$root/bin/vhost-device-vsock.new"
install -m 0644 "$HUSK_CACHE/kernel/current/vmlinux" "$root/share/husk/vmlinux.new"
install -m 0644 "$stage/husk-initrd.cpio" "$root/share/husk/husk-initrd.cpio.new"
install -m 0644 "$stage/husk-vm-tools.img" "$root/share/husk/husk-vm-tools.img.new"
for f in configuration.toml runtimeclass.yaml containerd-cri.toml containerd-husk-v3.toml; do
    install -m 0644 "$repo/config/$f" "$root/share/husk/$f.new"
done
install -m 0755 "$repo/scripts/containerd-config.sh" "$root/share/husk/containerd-config.sh.new"
# Renamed into place: a shim starting meanwhile sees the old file or the
# new one (a running shim keeps its own).
for f in "$root"/bin/*.new "$root"/share/husk/*.new; do
    # A link left by an older setup (virtiofsd into the cache) is replaced.
    mv -fT "$f" "${f%.new}"
done
# The same executable runs husk-vm pods (runtime io.containerd.husk-vm.v2)
# when it runs under this name (docs/vm-pods.md, "Mode selection").
ln -sfn containerd-shim-husk-v2 "$root/bin/containerd-shim-husk-vm-v2"
echo "installed: $(cd "$root" && ls bin/containerd-shim-husk-v2 bin/husk bin/husk-vmm bin/virtiofsd \
    bin/vhost-device-vsock share/husk/vmlinux share/husk/husk-initrd.cpio share/husk/husk-vm-tools.img | tr '\n' ' ')"

if [ "$containerd_config" = 1 ]; then
    log "containerd's configuration"
    bash "$PREFIX/share/husk/containerd-config.sh" install
    echo "restart containerd (systemctl restart containerd) for the husk handler to take effect"
fi
