#!/usr/bin/env bash
# Builds the image of husk's DaemonSet (deploy/husk-deploy.yaml) as an OCI
# archive, docker.io/husk/deploy:<version>: busybox-static for the shell
# and tools, curl and its libraries (for the API server), the deploy
# script deploy/husk-deploy.sh, and as its payload the files of husk's
# .deb (scripts/build-deb.sh; built first when missing). Import it into a
# node's containerd with `ctr -n k8s.io images import`, or push it.
# Usage: scripts/build-deploy-image.sh [OUTPUT]  (default target/husk/husk-deploy-oci.tar)
set -euo pipefail
umask 022
export LC_ALL=C
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/target/husk/husk-deploy-oci.tar}
version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
deb=$repo/target/husk/husk_${version}_amd64.deb
[ -f "$deb" ] || bash "$repo/scripts/build-deb.sh" "$(dirname "$deb")"
for tool in /bin/busybox /usr/bin/curl; do
    [ -x "$tool" ] || { echo "build-deploy-image: $tool missing (busybox-static, curl)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,usr/bin,husk-deploy/payload}
chmod 1777 "$root/tmp"
install -m 0755 /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
# curl and every library it loads, at the paths the loader looks in.
install -m 0755 /usr/bin/curl "$root/usr/bin/curl"
for lib in $(ldd /usr/bin/curl | awk '/=> \// {print $3} /^[[:space:]]*\/lib/ {print $1}'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
printf 'root:x:0:0:root:/:/bin/sh\n' > "$root/etc/passwd"
dpkg-deb -x "$deb" "$root/husk-deploy/payload"
install -m 0755 "$repo/deploy/husk-deploy.sh" "$root/husk-deploy/husk-deploy.sh"
chroot "$root" /usr/bin/curl --version >/dev/null ||
    { echo "build-deploy-image: curl does not run in the image" >&2; exit 1; }

bash "$repo/scripts/oci-archive.sh" "$root" "docker.io/husk/deploy:$version" "$out" \
    "husk scripts/build-deploy-image.sh ($(basename "$deb"))" /husk-deploy/husk-deploy.sh run
