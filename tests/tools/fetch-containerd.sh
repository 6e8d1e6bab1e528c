#!/usr/bin/env bash
# Fetches containerd from other Debian suites into a cache, beside the
# system's own (Debian 12's 1.6, which setup.sh installs), so that the tests
# can run husk under every containerd a Kubernetes node runs:
#   trixie   (Debian 13): containerd 1.7.x
#   unstable (sid):       containerd 2.x
#
#   tests/tools/fetch-containerd.sh [SUITE...]     (default: trixie unstable)
#
# Each suite's `containerd` .deb is downloaded with `apt-get download`
# through a private sources list and a private apt state directory (the
# system's apt configuration, package lists and its containerd are never
# touched), checked by apt against Debian's signed Release file, and
# unpacked with `dpkg-deb -x` into
#   $HUSK_CACHE/containerd/<suite>-<version>/usr/bin/{containerd,ctr,...}
# with two links to it: <suite> and <major.minor> (e.g. `1.7`, `2.1`), the
# names HUSK_CONTAINERD takes (tests/src/containerd.rs). A suite already in
# the cache costs nothing: no network, no apt (HUSK_CONTAINERD_REFRESH=1
# asks the suite again for a newer version). Prints one line per suite:
#   <major.minor> <version> <bin dir>
# Needs no root when $HUSK_CACHE is writable.
set -euo pipefail
export HUSK_CACHE=${HUSK_CACHE:-/var/cache/husk}
MIRROR=${HUSK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
cache="$HUSK_CACHE/containerd"
[ $# -gt 0 ] || set -- trixie unstable

log() { printf '== fetch-containerd: %s\n' "$*" >&2; }

# The version unpacked for `suite`, from its link; empty when none is.
cached() {
    local link="$cache/$1"
    [ -x "$link/usr/bin/containerd" ] && [ -x "$link/usr/bin/ctr" ] || return 0
    cat "$link/VERSION"
}

fetch() {
    local suite=$1 apt="$cache/apt-$1"
    mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/etc/preferences.d" \
        "$apt/etc/apt.conf.d" "$apt/download"
    printf 'deb [signed-by=%s] %s %s main\n' "$KEYRING" "$MIRROR" "$suite" >"$apt/etc/sources.list"
    : >"$apt/status"
    # Everything apt reads or writes is below $apt: its own sources, no
    # preferences or config snippets of the system, an empty dpkg status.
    local opts=(
        -o "Dir::Etc::SourceList=$apt/etc/sources.list"
        -o "Dir::Etc::SourceParts=-"
        -o "Dir::Etc::Preferences=$apt/etc/preferences"
        -o "Dir::Etc::PreferencesParts=$apt/etc/preferences.d"
        -o "Dir::Etc::Parts=$apt/etc/apt.conf.d"
        -o "Dir::State=$apt"
        -o "Dir::State::Lists=$apt/lists"
        -o "Dir::State::status=$apt/status"
        -o "Dir::Cache=$apt"
        -o "Dir::Cache::archives=$apt/archives"
        -o "Dir::Cache::pkgcache="
        -o "Dir::Cache::srcpkgcache="
        -o "APT::Architecture=$(dpkg --print-architecture)"
        -o "APT::Architectures::=$(dpkg --print-architecture)"
        -o "Acquire::Languages=none"
        -o "Debug::NoLocking=1"
        # Files go to our own cache directory, which _apt cannot write.
        -o "APT::Sandbox::User=$(id -un)"
    )
    log "$suite: reading the package list from $MIRROR"
    DEBIAN_FRONTEND=noninteractive apt-get -qq "${opts[@]}" update >&2
    local version
    version=$(apt-cache "${opts[@]}" show --no-all-versions containerd |
        sed -n 's/^Version: //p' | head -n1)
    [ -n "$version" ] || { log "$suite has no containerd package"; return 1; }
    local dest="$cache/$suite-${version//[:~]/_}"
    if [ ! -x "$dest/usr/bin/containerd" ]; then
        log "$suite: downloading containerd $version"
        rm -f "$apt/download/"*.deb
        (cd "$apt/download" &&
            DEBIAN_FRONTEND=noninteractive apt-get -qq "${opts[@]}" download "containerd=$version" >&2)
        local deb=("$apt/download"/containerd_*.deb)
        rm -rf "$dest.tmp"
        dpkg-deb -x "${deb[0]}" "$dest.tmp"
        printf '%s\n' "$version" >"$dest.tmp/VERSION"
        rm -rf "$dest" && mv "$dest.tmp" "$dest"
        rm -f "$apt/download/"*.deb
    fi
    ln -sfn "$(basename "$dest")" "$cache/$suite"
}

mkdir -p "$cache"
for suite in "$@"; do
    case $suite in
    *[!a-z0-9-]* | '') echo "fetch-containerd.sh: not a Debian suite name: $suite" >&2; exit 2 ;;
    esac
    if [ -z "$(cached "$suite")" ] || [ "${HUSK_CONTAINERD_REFRESH:-0}" = 1 ]; then
        fetch "$suite"
    fi
    version=$(cached "$suite")
    bin="$cache/$suite/usr/bin"
    # The binary must run on this host (glibc, kernel), not just unpack.
    reported=$("$bin/containerd" --version) || {
        log "$suite: $bin/containerd does not run here"
        exit 1
    }
    "$bin/ctr" --version >/dev/null || { log "$suite: $bin/ctr does not run here"; exit 1; }
    minor=$(printf '%s\n' "$reported" | grep -oE ' v?[0-9]+\.[0-9]+' | head -n1 | tr -d ' v')
    [ -n "$minor" ] || { log "$suite: no version in: $reported"; exit 1; }
    ln -sfn "$(readlink "$cache/$suite")" "$cache/$minor"
    printf '%s %s %s\n' "$minor" "$version" "$cache/$minor/usr/bin"
done
