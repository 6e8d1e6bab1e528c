#!/usr/bin/env bash
# Packs a root file system directory as a one-layer OCI image archive
# (image layout tarball) that `ctr images import` takes: no registry and no
# image builder needed. Reproducible: fixed mtimes and owners, so the same
# tree gives the same digest.
# Usage: scripts/oci-archive.sh [--entrypoint] ROOTFS NAME OUTPUT CREATED_BY CMD [ARG...]
#   --entrypoint  CMD ... is the image's Entrypoint (a pause image), not its Cmd
#   NAME          e.g. docker.io/husk/busybox:test (the tag is the ref name)
#   CREATED_BY    the image history's one line
#   CMD ...       the image's command
set -euo pipefail
export LC_ALL=C # --sort=name: byte order
command_key=Cmd
if [ "${1:-}" = --entrypoint ]; then command_key=Entrypoint; shift; fi
[ $# -ge 5 ] || { echo "usage: oci-archive.sh [--entrypoint] ROOTFS NAME OUTPUT CREATED_BY CMD [ARG...]" >&2; exit 2; }
root=$1 name=$2 out=$3 created_by=$4
shift 4
for tool in tar gzip sha256sum python3; do
    command -v "$tool" >/dev/null || { echo "oci-archive: $tool missing" >&2; exit 1; }
done

work=$(mktemp -d)
out_tmp=
trap 'rm -rf "$work"; [ -z "$out_tmp" ] || rm -f "$out_tmp"' EXIT
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
    "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
               "WorkingDir": "/", sys.argv[3]: sys.argv[4:]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sys.argv[1]]},
    "history": [{"created_by": sys.argv[2]}],
}, separators=(",", ":")), end="")' "$diff_id" "$created_by" "$command_key" "$@" | blob)

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
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
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
echo "image: $out ($name, manifest sha256:$manifest_digest, $(stat -c %s "$out") bytes)"
