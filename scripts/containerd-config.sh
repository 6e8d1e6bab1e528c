#!/bin/sh
# Writes, removes or shows husk's runtime handler (`husk`, runtime_type
# io.containerd.husk.v2) in containerd's configuration, in the schema the
# node's containerd reads:
#   config.toml `version = 2` (containerd 1.6/1.7, and 2.x reading a v2
#     file): containerd-cri.toml appended between BEGIN/END marker lines;
#   config.toml `version = 3` (containerd 2.x): containerd-husk-v3.toml as
#     conf.d/husk.toml, and an `imports` line for conf.d/*.toml (marked)
#     when config.toml has none;
#   no config.toml: one made for the containerd found (v2 with the handler
#     for 1.x; v3 importing conf.d for 2.x), marked as made by husk.
# `remove` takes out exactly what `install` put in (a made file goes
# whole), so install + remove leaves config.toml as it was. Nothing is
# restarted: restart containerd afterwards (systemctl restart containerd).
#
# Usage: containerd-config.sh install|remove|show [--root DIR]
#                             [--containerd-version X.Y[.Z]]
#   --root DIR   the node's root (a DaemonSet mounts it at /host); the
#                containerd there is run with chroot to learn its version
#   --containerd-version   skip asking containerd (e.g. from the node's
#                status.nodeInfo.containerRuntimeVersion)
# Installed as /usr/local/share/husk/containerd-config.sh beside the two
# files it writes from (in the repository: scripts/, files in config/).
# POSIX sh with busybox's tools: the DaemonSet image runs it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ -f "$here/containerd-cri.toml" ]; then snippets=$here; else snippets=$here/../config; fi
V2_SNIPPET=$snippets/containerd-cri.toml
V3_DROP_IN=$snippets/containerd-husk-v3.toml
BEGIN='# BEGIN husk runtime handler (written by containerd-config.sh install; taken out by remove)'
END='# END husk runtime handler'
MADE='# Made by husk containerd-config.sh install; removed whole by remove.'
IMPORT='imports = ["/etc/containerd/conf.d/*.toml"]'

die() { echo "containerd-config.sh: $*" >&2; exit 1; }
say() { echo "containerd-config.sh: $*"; }

action=${1:-}
if [ $# -gt 0 ]; then shift; fi
root=/
version=
while [ $# -gt 0 ]; do
    case $1 in
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        --containerd-version) version=${2:?--containerd-version needs a version}; shift 2 ;;
        *) die "unknown argument $1" ;;
    esac
done
etc=${root%/}/etc/containerd
main=$etc/config.toml
drop_in=$etc/conf.d/husk.toml

# Runs the node's containerd (chrooted into --root when it is not /).
node_containerd() {
    if [ "$root" = / ]; then containerd "$@"; else chroot "$root" containerd "$@"; fi
}

containerd_major() {
    local v=$version
    if [ -z "$v" ]; then
        v=$(node_containerd --version 2>/dev/null | awk '{print $3}') ||
            die "no containerd to ask its version: pass --containerd-version"
        [ -n "$v" ] || die "no containerd to ask its version: pass --containerd-version"
    fi
    v=${v#containerd://}
    v=${v#v}
    echo "${v%%.*}"
}

# The schema of a config file: its `version = N`, 1 when it has none.
schema_of() {
    local n
    n=$(sed -n 's/^[[:space:]]*version[[:space:]]*=[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$1" | head -n1)
    echo "${n:-1}"
}

has_block() { [ -f "$main" ] && grep -qxF "$BEGIN" "$main"; }

remove_handler() {
    if has_block; then
        local tmp
        tmp=$(mktemp "$main.husk.XXXXXX")
        awk -v b="$BEGIN" -v e="$END" '$0 == b {skip = 1} !skip {print} $0 == e {skip = 0}' "$main" > "$tmp"
        # Written over, not renamed: the file keeps its mode and owner.
        cat "$tmp" > "$main"
        rm -f "$tmp"
        say "took husk's lines out of $main"
    fi
    if [ -f "$main" ] && head -n1 "$main" | grep -qxF "$MADE"; then
        rm -f "$main"
        say "removed $main (husk made it)"
    fi
    if [ -f "$drop_in" ]; then
        rm -f "$drop_in"
        say "removed $drop_in"
    fi
    # Directories go only when empty: they may have been the node's.
    rmdir "$etc/conf.d" 2>/dev/null || true
    rmdir "$etc" 2>/dev/null || true
}

# containerd 1.x's own default handler. A v2 config.toml that names any
# handler replaces containerd's default set with its own, and without runc
# in it the CRI plugin refuses to load (default_runtime_name = "runc" has
# no runtime): Debian's stock config.toml names none, so husk's block
# brings runc's back.
RUNC_V2='[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"'

install_v2_block() {
    if grep -q 'runtimes\.husk\]' "$main"; then
        die "$main already defines a husk runtime handler (not between husk's markers): leaving it"
    fi
    local with_runc=0
    grep -q 'containerd\.runtimes\.' "$main" || with_runc=1
    if [ -s "$main" ] && [ "$(tail -c1 "$main" | od -An -c | tr -d ' ')" != '\n' ]; then
        echo >> "$main"
    fi
    {
        printf '%s\n' "$BEGIN"
        cat "$V2_SNIPPET"
        if [ "$with_runc" = 1 ]; then
            printf '# containerd'"'"'s default runc handler: naming husk'"'"'s would drop it otherwise.\n%s\n' "$RUNC_V2"
        fi
        printf '%s\n' "$END"
    } >> "$main"
    say "added the husk handler to $main (config version 2)"
}

install_v3() {
    mkdir -p "$etc/conf.d"
    install -m 0644 "$V3_DROP_IN" "$drop_in"
    say "wrote $drop_in (config version 3)"
    if grep -q '^[[:space:]]*imports[[:space:]]*=' "$main"; then
        grep -q '/etc/containerd/conf.d/\*\.toml' "$main" ||
            die "$main has its own imports line without /etc/containerd/conf.d/*.toml: add it there"
        return
    fi
    local tmp
    tmp=$(mktemp "$main.husk.XXXXXX")
    awk -v b="$BEGIN" -v e="$END" -v i="$IMPORT" \
        '{print} !done && /^[[:space:]]*version[[:space:]]*=/ {print b; print i; print e; done = 1}' "$main" > "$tmp"
    cat "$tmp" > "$main"
    rm -f "$tmp"
    say "added $IMPORT to $main"
}

install_handler() {
    [ -f "$V2_SNIPPET" ] && [ -f "$V3_DROP_IN" ] || die "missing $V2_SNIPPET or $V3_DROP_IN"
    remove_handler >/dev/null
    local major
    major=$(containerd_major)
    mkdir -p "$etc"
    if [ ! -s "$main" ]; then
        if [ "$major" -ge 2 ]; then
            printf '%s\nversion = 3\n%s\n' "$MADE" "$IMPORT" > "$main"
            say "made $main (containerd $major.x, config version 3)"
            install_v3
        else
            printf '%s\nversion = 2\n' "$MADE" > "$main"
            say "made $main (containerd $major.x, config version 2)"
            install_v2_block
        fi
        return
    fi
    case $(schema_of "$main") in
        3) install_v3 ;;
        2) install_v2_block ;;
        *) die "$main has no version = 2 or 3: husk's handler needs one (containerd config migrate)" ;;
    esac
}

show_handler() {
    node_containerd config dump 2>/dev/null | grep -B1 -A8 'runtime_type = .io.containerd.husk.v2.' ||
        die "containerd's config has no husk handler"
}

case $action in
    install) install_handler; say "restart containerd for it to take effect" ;;
    remove) remove_handler; say "restart containerd for it to take effect" ;;
    show) show_handler ;;
    *) die "usage: containerd-config.sh install|remove|show [--root DIR] [--containerd-version X.Y]" ;;
esac
