#!/usr/bin/env bash
# Builds the test image: an OCI image archive (image layout tarball) with
# Debian's busybox-static and an applet symlink per command, imported with
# `ctr images import` as docker.io/husk/busybox:test. No registry needed.
# Reproducible: fixed mtimes and owners, so the same busybox gives the same
# digest.
# Usage: scripts/build-test-image.sh [OUTPUT]  (default target/husk/busybox-oci.tar)
set -euo pipefail
umask 022 # file modes go into the layer: keep them independent of the caller
export LC_ALL=C # --sort=name and the applet list: byte order
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/target/husk/busybox-oci.tar}
name=docker.io/husk/busybox:test
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "build-test-image: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
for tool in tar gzip sha256sum python3; do
    command -v "$tool" >/dev/null || { echo "build-test-image: $tool missing" >&2; exit 1; }
done

work=$(mktemp -d)
out_tmp=
trap 'rm -rf "$work"; [ -z "$out_tmp" ] || rm -f "$out_tmp"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,proc,sys,dev,tmp,etc,root,run}
chmod 0755 "$root" "$root"/{bin,proc,sys,dev,etc,root,run}
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"
install -m 0755 "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$root/etc/group"

layout=$work/layout
mkdir -p "$layout/blobs/sha256"
layer_tar=$work/layer.tar
tar --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$layer_tar" .
diff_id=$(sha256sum "$layer_tar" | cut -d' ' -f1)
gzip -n -9 -c "$layer_tar" > "$work/layer.tar.gz"
layer_digest=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar.gz")
mv "$work/layer.tar.gz" "$layout/blobs/sha256/$layer_digest"

blob() { # stores stdin as a blob, prints "digest size"
    local tmp=$work/blob d
    cat > "$tmp"
    d=$(sha256sum "$tmp" | cut -d' ' -f1)
    mv "$tmp" "$layout/blobs/sha256/$d"
    echo "$d $(stat -c %s "$layout/blobs/sha256/$d")"
}

read -r config_digest config_size < <(python3 -c '
import json, sys
print(json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sys.argv[1]]},
    "history": [{"created_by": "husk scripts/build-test-image.sh (busybox-static)"}],
}, separators=(",", ":")), end="")' "$diff_id" | blob)

read -r manifest_digest manifest_size < <(python3 -c '
import json, sys
cd, cs, ld, ls = sys.argv[1:5]
print(json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": int(cs)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + ld, "size": int(ls)}],
}, separators=(",", ":")), end="")' "$config_digest" "$config_size" "$layer_digest" "$layer_size" | blob)

python3 -c '
import json, sys
md, ms, name = sys.argv[1:4]
print(json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + md, "size": int(ms),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "test"},
    }],
}, separators=(",", ":")), end="")' "$manifest_digest" "$manifest_size" "$name" > "$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"

mkdir -p "$(dirname "$out")"
# Written next to the output, then renamed: readers never see half an archive.
out_tmp=$(mktemp "$out.tmp.XXXXXX")
tar --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$out_tmp" .
chmod 0644 "$out_tmp"
mv -f "$out_tmp" "$out"
out_tmp=
echo "test image: $out ($name, manifest sha256:$manifest_digest, $(stat -c %s "$out") bytes)"
