#!/usr/bin/env bash
# Build the husk guest kernel: an uncompressed x86_64 `vmlinux` with a PVH
# entry point, for QEMU microvm (`-kernel vmlinux`).
#
# Source: Debian's linux-source-6.1 package (/usr/src/linux-source-6.1.tar.xz).
# Config: `make tinyconfig` + config/guest-kernel.config (merged, verified).
#
# Output: $HUSK_CACHE/kernel/<key>/{vmlinux,config,release}, where <key> is
# the first 16 hex digits of sha256(fragment + linux-source-6.1 package
# version + this script). $HUSK_CACHE/kernel/current -> <key>.
# A cached build is reused without rebuilding.
#
# Usage: scripts/build-guest-kernel.sh   (HUSK_CACHE defaults to /var/cache/husk)
set -euo pipefail

SCRIPT=$(readlink -f -- "${BASH_SOURCE[0]}")
REPO_ROOT=$(dirname -- "$(dirname -- "$SCRIPT")")
FRAGMENT="$REPO_ROOT/config/guest-kernel.config"
SRC_PKG=linux-source-6.1
TARBALL="/usr/src/$SRC_PKG.tar.xz"
HUSK_CACHE="${HUSK_CACHE:-/var/cache/husk}"
KERNEL_DIR="$HUSK_CACHE/kernel"

log() { printf 'build-guest-kernel: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -f "$FRAGMENT" ]] || die "config fragment not found: $FRAGMENT"
[[ -f "$TARBALL" ]] || die "$TARBALL not found (apt-get install $SRC_PKG)"
SRC_VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null) \
    || die "package $SRC_PKG is not installed"
[[ -n "$SRC_VERSION" ]] || die "package $SRC_PKG has no version (not installed?)"

KEY=$({ cat -- "$FRAGMENT"; printf '%s' "$SRC_VERSION"; cat -- "$SCRIPT"; } \
    | sha256sum | cut -c1-16)
OUT_DIR="$KERNEL_DIR/$KEY"

update_current() {
    ln -sfn -- "$KEY" "$KERNEL_DIR/.current.$$"
    mv -fT -- "$KERNEL_DIR/.current.$$" "$KERNEL_DIR/current"
}

report_cached() {
    update_current
    log "cached kernel ${KEY}: release $(cat -- "$OUT_DIR/release" 2>/dev/null || echo '?')"
    echo "$OUT_DIR/vmlinux"
}

if [[ -f "$OUT_DIR/vmlinux" ]]; then
    report_cached
    exit 0
fi

mkdir -p -- "$KERNEL_DIR"
# Serialise concurrent builds; re-check the cache once we hold the lock.
exec 9>"$KERNEL_DIR/.lock"
flock 9
if [[ -f "$OUT_DIR/vmlinux" ]]; then
    report_cached
    exit 0
fi

BUILD_DIR=$(mktemp -d -- "$HUSK_CACHE/build-kernel.XXXXXX")
cleanup() { rm -rf -- "$BUILD_DIR" "$OUT_DIR"/.*.tmp.$$ "$KERNEL_DIR/.current.$$"; }
trap cleanup EXIT

START=$SECONDS
log "key $KEY ($SRC_PKG $SRC_VERSION); building in $BUILD_DIR"
log "extracting $TARBALL"
tar -xJf "$TARBALL" -C "$BUILD_DIR" --strip-components=1

cd -- "$BUILD_DIR"
# Fixed, non-interactive build environment.
export ARCH=x86_64 KBUILD_BUILD_USER=husk KBUILD_BUILD_HOST=husk LOCALVERSION=
unset CROSS_COMPILE KCONFIG_CONFIG KBUILD_OUTPUT O
MAKE=(make -s ARCH=x86_64)

log "make tinyconfig + $(basename -- "$FRAGMENT")"
"${MAKE[@]}" tinyconfig </dev/null >/dev/null
scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" >/dev/null
"${MAKE[@]}" olddefconfig </dev/null >/dev/null

# Kconfig silently drops options whose dependencies are unmet: verify that
# every option requested by the fragment survived into the final .config.
missing=()
while IFS= read -r line; do
    if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=y$ ]]; then
        grep -qxF -- "$line" .config || missing+=("${BASH_REMATCH[1]}")
    elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        sym=${BASH_REMATCH[1]}
        ! grep -q -- "^$sym=" .config || missing+=("$sym (should be unset)")
    fi
done < "$FRAGMENT"
# Off whatever the fragment says: the vsock loopback transport lets every
# guest process, a container's too, connect to the agent (docs/security.md).
for sym in CONFIG_VSOCKETS_LOOPBACK; do
    ! grep -q -- "^$sym=" .config || missing+=("$sym (must be off: docs/security.md)")
done
if ((${#missing[@]})); then
    for sym in "${missing[@]}"; do log "  not in final .config: $sym"; done
    die "${#missing[@]} option(s) from $FRAGMENT were not applied (unmet dependencies?)"
fi
log "all fragment options present in final .config"

log "make -j$(nproc) vmlinux"
make ARCH=x86_64 -j"$(nproc)" vmlinux </dev/null
RELEASE=$("${MAKE[@]}" kernelrelease)

# Install: companions first, vmlinux last (its presence marks a complete entry).
mkdir -p -- "$OUT_DIR"
cp -- .config "$OUT_DIR/.config.tmp.$$"
mv -f -- "$OUT_DIR/.config.tmp.$$" "$OUT_DIR/config"
printf '%s\n' "$RELEASE" > "$OUT_DIR/.release.tmp.$$"
mv -f -- "$OUT_DIR/.release.tmp.$$" "$OUT_DIR/release"
cp -- vmlinux "$OUT_DIR/.vmlinux.tmp.$$"
mv -f -- "$OUT_DIR/.vmlinux.tmp.$$" "$OUT_DIR/vmlinux"
update_current

cd /
rm -rf -- "$BUILD_DIR"

SIZE=$(stat -c %s "$OUT_DIR/vmlinux")
log "kernel release: $RELEASE"
log "vmlinux size: $SIZE bytes ($(( (SIZE + 1023) / 1024 )) KiB)"
log "build time: $(( SECONDS - START ))s"
echo "$OUT_DIR/vmlinux"
