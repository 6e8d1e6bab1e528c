#!/usr/bin/env bash
# Builds the tools disk of husk-vm VMs: husk-vm-tools (agent/src/bin/
# husk-vm-tools.rs, the guest helper of `kubectl exec -it`), linked
# statically so it runs on any x86-64 Linux guest, alone on a small
# read-only ext4 file system labelled husk-tools. The VM's cloud-init
# mounts it and starts the helper (shim/src/vm_image/tools.rs).
# Usage: scripts/build-vm-tools.sh OUTPUT
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: build-vm-tools.sh OUTPUT}
target=x86_64-unknown-linux-gnu
command -v mkfs.ext4 >/dev/null || { echo "build-vm-tools: mkfs.ext4 missing (apt-get install e2fsprogs)" >&2; exit 1; }
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p husk-agent --bin husk-vm-tools --target "$target")
helper=$repo/target/$target/release/husk-vm-tools
if readelf -l "$helper" | grep -q 'Requesting program interpreter'; then
    echo "build-vm-tools: $helper is dynamically linked" >&2
    exit 1
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/root"
install -m 0755 "$helper" "$stage/root/husk-vm-tools"
touch -d @1 "$stage/root/husk-vm-tools" "$stage/root"
# Room for the helper and ext4's own blocks; a fixed UUID, label and hash
# seed (what the guest sees of it does not change between builds).
size_mib=$(( $(stat -c %s "$helper") / 1048576 + 4 ))
truncate -s "${size_mib}M" "$stage/tools.img"
E2FSPROGS_FAKE_TIME=1 mkfs.ext4 -q -F -L husk-tools -U 6b757368-6b2d-746f-6f6c-732d64697363 \
    -E root_owner=0:0,hash_seed=6b757368-6b2d-746f-6f6c-732d64697363 -O ^has_journal \
    -d "$stage/root" "$stage/tools.img"
mv -f "$stage/tools.img" "$out"
