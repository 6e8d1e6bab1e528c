#!/usr/bin/env bash
# Builds the guest initrd: the statically linked husk-agent as /init in a
# cpio (newc) archive, owned by root, with fixed mtimes and no host paths.
# Usage: scripts/build-initrd.sh [--fake] [OUTPUT]
#   (default target/husk/husk-initrd.cpio)
# --fake packs husk-fake-agent instead: a replaced agent that never
# answers the calls that matter, for the hostile-guest tests only.
# The real agent's initrd also carries Debian's busybox-static as
# /bin/busybox: the shell of the debug console (`husk console`), which the
# agent keeps only when the host asks for the console and frees otherwise
# (agent/src/console.rs).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=husk-agent
features=()
if [ "${1:-}" = --fake ]; then
    bin=husk-fake-agent
    features=(--features fake-agent)
    shift
fi
out=${1:-$repo/target/husk/husk-initrd.cpio}
target=x86_64-unknown-linux-gnu

# --target keeps crt-static off the build scripts and proc-macros, which
# must stay dynamic; glibc's static libc.a comes with libc6-dev.
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p husk-agent "${features[@]}" --bin "$bin" --target "$target")
agent=$repo/target/$target/release/$bin
if readelf -l "$agent" | grep -q 'Requesting program interpreter'; then
    echo "build-initrd: $agent is dynamically linked; the initrd has no libc" >&2
    exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$agent" "$stage/init"
if [ "$bin" = husk-agent ]; then
    [ -x /bin/busybox ] && ! readelf -l /bin/busybox | grep -q 'Requesting program interpreter' || {
        echo "build-initrd: /bin/busybox missing or not static (apt-get install busybox-static)" >&2
        exit 1
    }
    install -D -m 0755 /bin/busybox "$stage/bin/busybox"
    touch -d @0 "$stage/bin/busybox" "$stage/bin"
fi
touch -d @0 "$stage/init" "$stage"
mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) > "$out.tmp"
mv "$out.tmp" "$out"
echo "initrd: $out ($(stat -c %s "$out") bytes; agent $(stat -c %s "$agent") bytes)"
