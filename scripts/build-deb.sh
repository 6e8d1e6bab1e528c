#!/usr/bin/env bash
# Builds the Debian package of husk from the install tree: what
# scripts/install.sh puts under /usr/local (release binaries, virtiofsd,
# vhost-device-vsock, the guest kernel and initrd, configuration.toml and
# the containerd snippets), packed with dpkg-deb. A node with QEMU
# installs it with
#   apt install ./husk_<version>_amd64.deb
# and then, for Kubernetes, writes containerd's handler when it chooses to:
#   /usr/local/share/husk/containerd-config.sh install && systemctl restart containerd
# The package never edits containerd's configuration itself.
#
# Usage: scripts/build-deb.sh [OUTPUT_DIR]   (default target/husk)
set -euo pipefail
umask 022
repo=$(cd "$(dirname "$0")/.." && pwd)
outdir=${1:-$repo/target/husk}
version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
[ -n "$version" ] || { echo "build-deb.sh: no workspace version in Cargo.toml" >&2; exit 1; }

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
chmod 0755 "$tree"
bash "$repo/scripts/install.sh" --destdir "$tree"

mkdir -p "$tree/DEBIAN"
# virtiofsd links libseccomp and libcap-ng; husk's own binaries are static.
cat > "$tree/DEBIAN/control" <<EOF
Package: husk
Version: $version
Architecture: amd64
Maintainer: husk maintainers <husk@invalid>
Section: admin
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$tree" | cut -f1)
Depends: qemu-system-x86, libc6, libgcc-s1, libseccomp2, libcap-ng0
Recommends: containerd, containernetworking-plugins, ovmf, swtpm
Description: container runtime that runs every pod in its own micro-VM
 husk is a containerd shim v2 (containerd-shim-husk-v2) that boots a small
 guest under QEMU (TCG where there is no vmx/svm) or husk-vmm (KVM) for
 each pod and runs the pod's containers inside it. The package installs
 under /usr/local: the shim, the husk command (check, env, metrics,
 console), husk-vmm, virtiofsd, vhost-device-vsock, the guest kernel and
 initrd. containerd's configuration is left alone: run
 /usr/local/share/husk/containerd-config.sh install to add the handler.
EOF
cat > "$tree/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    echo "husk: run 'husk check' to see what this node has; for Kubernetes add the"
    echo "husk handler with /usr/local/share/husk/containerd-config.sh install"
    echo "and restart containerd."
fi
EOF
chmod 0755 "$tree/DEBIAN/postinst"
(cd "$tree" && find usr -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum) > "$tree/DEBIAN/md5sums"

mkdir -p "$outdir"
deb=$outdir/husk_${version}_amd64.deb
dpkg-deb --root-owner-group --build "$tree" "$deb.tmp" >/dev/null
mv -f "$deb.tmp" "$deb"
echo "package: $deb ($(stat -c %s "$deb") bytes)"
dpkg-deb --contents "$deb" | awk '{print $6}' | grep -v '/$'
