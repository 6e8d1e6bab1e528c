#!/usr/bin/env bash
# Builds the pod sandbox ("pause") image for the CRI tests: an OCI image
# archive, imported with `ctr -n k8s.io images import` as
# docker.io/husk/pause:test and named by the CRI plugin's sandbox_image.
# Its entrypoint /pause (busybox sh) is what the pause container must be:
# it waits forever, reaps the zombies re-parented to it, and exits 0 at once
# on SIGTERM or SIGINT. Same approach as build-test-image.sh: Debian's
# busybox-static, fixed mtimes and owners, so the same busybox gives the same
# digest.
# Usage: scripts/build-pause-image.sh [OUTPUT]  (default target/husk/pause-oci.tar)
set -euo pipefail
umask 022 # file modes go into the layer: keep them independent of the caller
export LC_ALL=C
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/target/husk/pause-oci.tar}
name=docker.io/husk/pause:test
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "build-pause-image: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
for tool in tar gzip sha256sum python3; do
    command -v "$tool" >/dev/null || { echo "build-pause-image: $tool missing" >&2; exit 1; }
done

work=$(mktemp -d)
out_tmp=
trap 'rm -rf "$work"; [ -z "$out_tmp" ] || rm -f "$out_tmp"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,proc,sys,dev,etc}
chmod 0755 "$root" "$root"/{bin,proc,sys,dev,etc}
install -m 0755 "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
ln -s busybox "$root/bin/sleep"
# `wait` in ash waits for any child, so orphans re-parented to the pause
# process (PID 1 of the pod) are reaped while it waits; a trapped signal
# interrupts `wait` at once.
cat > "$root/pause" <<'EOF'
#!/bin/sh
# Pod sandbox pause process: wait forever, reap zombies, exit 0 on TERM/INT.
# A background job's stdin is /dev/null: without it every `&` fails at once.
[ -c /dev/null ] || { echo "pause: /dev/null missing" >&2; exit 1; }
child=
trap 'kill "$child" 2>/dev/null; exit 0' TERM INT
while :; do
    sleep 2147483647 &
    child=$!
    wait "$child"
done
EOF
chmod 0755 "$root/pause"

layout=$work/layout
mkdir -p "$layout/blobs/sha256"
layer_tar=$work/layer.tar
tar --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$layer_tar" .
diff_id=$(sha256sum "$layer_tar" | cut -d' ' -f1)
gzip -n -9 -c "$layer_tar" > "$work/layer.tar.gz"
layer_digest=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
mv "$work/layer.tar.gz" "$layout/blobs/sha256/$layer_digest"

# Config, manifest and index in one go; each blob is stored under its digest.
manifest_digest=$(python3 - "$layout" "$diff_id" "$layer_digest" "$name" <<'EOF'
import hashlib, json, os, sys
layout, diff_id, layer_digest, name = sys.argv[1:5]
blobs = os.path.join(layout, "blobs", "sha256")
def blob(obj):
    data = json.dumps(obj, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)
config = blob({
    "architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": ["/pause"], "WorkingDir": "/"},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
    "history": [{"created_by": "husk scripts/build-pause-image.sh (busybox-static)"}],
})
layer_size = os.path.getsize(os.path.join(blobs, layer_digest))
manifest = blob({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config[0], "size": config[1]},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + layer_digest, "size": layer_size}],
})
with open(os.path.join(layout, "index.json"), "w") as f:
    f.write(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest[0], "size": manifest[1],
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "test"},
        }],
    }, separators=(",", ":")))
with open(os.path.join(layout, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
print(manifest[0])
EOF
)

mkdir -p "$(dirname "$out")"
# Written next to the output, then renamed: readers never see half an archive.
out_tmp=$(mktemp "$out.tmp.XXXXXX")
tar --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$out_tmp" .
chmod 0644 "$out_tmp"
mv -f "$out_tmp" "$out"
out_tmp=
echo "pause image: $out ($name, manifest $manifest_digest, $(stat -c %s "$out") bytes)"
