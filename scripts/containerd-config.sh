#!/bin/sh
# Writes, removes or shows husk's runtime handlers (`husk`, runtime_type
# io.containerd.husk.v2, and `husk-vm`, io.containerd.husk-vm.v2) in
# containerd's configuration, in the schema the node's containerd reads:
#   config.toml `version = 2` (containerd 1.6/1.7, and 2.x reading a v2
#     file): containerd-cri.toml appended between BEGIN/END marker lines;
#   config.toml `version = 3` (containerd 2.x): containerd-husk-v3.toml as
#     conf.d/husk.toml, and an `imports` line for conf.d/*.toml (marked)
#     when config.toml has none;
#   no config.toml: one made for the containerd found (v2 with the handler
#     for 1.x; v3 importing conf.d for 2.x), marked as made by husk.
# `remove` takes out exactly what `install` put in (a made file goes
# whole), so install + remove leaves config.toml as it was.
#
# Nothing is changed until the result is known to work: the new files are
# written beside the old ones, the node's containerd dumps them
# (`containerd --config STAGED config dump`, chrooted into --root), the
# dump must hold both handlers with their runtime_type and a CRI plugin
# that loads, and only then is each renamed over the old file (same
# directory: atomic; the old file's mode and owner kept). A handler called
# husk or husk-vm that is not husk's own (in config.toml outside the
# markers, or in any file config.toml imports) is refused, naming the
# file. The TOML is read by `husk containerd-config` (the static husk
# binary beside this script: $HUSK_BIN, else ../../bin/husk when this is
# .../share/husk, else ./husk, else PATH). Nothing is restarted: restart
# containerd afterwards (husk-deploy.sh restarts it and rolls back when
# it does not come back).
#
# Usage: containerd-config.sh install|remove|show [--root DIR]
#                             [--containerd-version X.Y[.Z]]
#   --root DIR   the node's root (a DaemonSet mounts it at /host); the
#                containerd there is run with chroot
#   --containerd-version   skip asking containerd its version (e.g. from
#                the node's status.nodeInfo.containerRuntimeVersion)
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
# husk's drop-in, as the node's containerd names it.
DROP_IN_NODE=/etc/containerd/conf.d/husk.toml

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
[ "$root" = / ] || root=${root%/}
case $root in /*) ;; *) root=$(cd "$root" && pwd) ;; esac
etc=${root%/}/etc/containerd
main=$etc/config.toml
drop_in=$etc/conf.d/husk.toml

# What this run made, taken away on exit unless swapped in.
scratch=
made_dirs=
cleanup() {
    # shellcheck disable=SC2086
    [ -z "$scratch" ] || rm -f $scratch
    for d in $made_dirs; do rmdir "$d" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# A new empty file beside $1 (same directory, hidden, not *.toml); its
# path in $staged.
new_file() {
    staged=$(mktemp "$(dirname "$1")/.$(basename "$1").husk.XXXXXX")
    scratch="$scratch $staged"
}

# mkdir -p that remembers what it made (removed again unless swapped).
make_dir() {
    [ -d "$1" ] && return 0
    make_dir "$(dirname "$1")"
    mkdir "$1"
    made_dirs="$1 $made_dirs"
}

# The node's path of a path under --root.
node_path() {
    if [ "$root" = / ]; then echo "$1"; else echo "${1#"$root"}"; fi
}

# Runs the node's containerd (chrooted into --root when it is not /).
node_containerd() {
    if [ "$root" = / ]; then containerd "$@"; else chroot "$root" containerd "$@"; fi
}

# The husk binary that reads TOML for this script.
find_husk() {
    for c in "${HUSK_BIN:-}" "$(case $here in */share/husk) echo "$here/../../bin/husk" ;; esac)" \
        "$here/husk" "$(command -v husk 2>/dev/null || true)"; do
        if [ -n "$c" ] && [ -x "$c" ]; then
            husk=$c
            return
        fi
    done
    die "no husk binary to read containerd's TOML with (\`husk containerd-config\`): looked at \
\$HUSK_BIN, $here/../../bin/husk (beside an installed script), $here/husk and PATH. \
In the repository: cargo build -p husk-shim --bin husk, then HUSK_BIN=target/debug/husk"
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
made_by_husk() { [ -f "$main" ] && head -n1 "$main" | grep -qxF "$MADE"; }

# The node's config.toml without what install put in, into $1: husk's
# marked lines taken out; empty when husk made the file or there is none.
strip_husk() {
    if [ -f "$main" ] && ! made_by_husk; then
        awk -v b="$BEGIN" -v e="$END" '$0 == b {skip = 1} !skip {print} $0 == e {skip = 0}' "$main" > "$1"
    else
        : > "$1"
    fi
}

# containerd 1.x's own default handler. A v2 config.toml that names any
# handler replaces containerd's default set with its own, and without runc
# in it the CRI plugin refuses to load (default_runtime_name = "runc" has
# no runtime): Debian's stock config.toml names none, so husk's block
# brings runc's back.
RUNC_V2='[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"'

# The handlers (`husk containerd-config handlers`) that $2 — the node's
# config.toml as it would be — and every file it imports define; $1:
# --all for every handler, else husk's names only. husk's drop-in is not
# read: install writes it.
handlers_of() {
    # $1 unquoted: empty, it is no argument.
    # shellcheck disable=SC2086
    "$husk" containerd-config handlers $1 --root "$root" --as "$(node_path "$main")" \
        --skip "$DROP_IN_NODE" "$2" ||
        die "could not read containerd's configuration (above): nothing changed"
}

# Fails, naming each file, when a husk or husk-vm handler that is not
# husk's own is in $1 or what it imports.
refuse_foreign() {
    local found
    found=$(handlers_of "" "$1")
    [ -z "$found" ] && return
    echo "$found" | while read -r file name plugin; do
        echo "containerd-config.sh: $file already defines the runtime handler $name ($plugin), outside husk's markers" >&2
    done
    die "leaving containerd's configuration as it is: take that handler out (or keep it and do not install husk's)"
}

# Appends husk's v2 block to $2 (a copy of $1), with runc's handler when
# $1 and what it imports name no handler.
append_v2_block() {
    local with_runc=0
    [ -n "$(handlers_of --all "$1")" ] || with_runc=1
    cat "$1" > "$2"
    if [ -s "$2" ] && [ "$(tail -c1 "$2" | od -An -c | tr -d ' ')" != '\n' ]; then
        echo >> "$2"
    fi
    {
        printf '%s\n' "$BEGIN"
        cat "$V2_SNIPPET"
        if [ "$with_runc" = 1 ]; then
            printf '# containerd'"'"'s default runc handler: naming husk'"'"'s would drop it otherwise.\n%s\n' "$RUNC_V2"
        fi
        printf '%s\n' "$END"
    } >> "$2"
}

# $2: $1 with the marked `imports` line for conf.d after its `version`,
# unless $1 has an imports line (which must name conf.d/*.toml).
add_v3_import() {
    if grep -q '^[[:space:]]*imports[[:space:]]*=' "$1"; then
        grep -q '/etc/containerd/conf.d/\*\.toml' "$1" ||
            die "$main has its own imports line without /etc/containerd/conf.d/*.toml: add it there"
        cat "$1" > "$2"
        return
    fi
    awk -v b="$BEGIN" -v e="$END" -v i="$IMPORT" \
        '{print} !done && /^[[:space:]]*version[[:space:]]*=/ {print b; print i; print e; done = 1}' "$1" > "$2"
}

# Has the node's containerd dump the staged configuration — $2, the new
# config.toml, and $3, the new drop-in (none: husk's drop-in removed) —
# and checks the dump ($1: install, or remove). Dies, nothing changed,
# when containerd rejects it or it would not run husk.
validate() {
    local plan check dump verify_flag=
    if [ -n "${3:-}" ]; then
        plan="--replace $DROP_IN_NODE=$(node_path "$3")"
    else
        plan="--absent $DROP_IN_NODE"
    fi
    [ "$1" = remove ] && verify_flag=--removed
    new_file "$main"
    check=$staged
    # shellcheck disable=SC2086
    "$husk" containerd-config stage --root "$root" --as "$(node_path "$main")" $plan "$2" "$check" ||
        die "could not stage the new configuration (above): $main left as it was"
    dump=$(mktemp)
    scratch="$scratch $dump $dump.err"
    if ! node_containerd --config "$(node_path "$check")" config dump > "$dump" 2> "$dump.err"; then
        tail -n 5 "$dump.err" >&2
        die "the node's containerd rejects the new configuration (above): $main left as it was"
    fi
    # shellcheck disable=SC2086
    "$husk" containerd-config verify-dump $verify_flag "$dump" ||
        die "the new configuration would not do (above): $main left as it was"
}

# Renames the staged $1 over $2 (same directory: atomic); $2 keeps its
# mode and owner (0644 when it is new). A symbolic link is written
# through, in place.
swap_in() {
    if [ -L "$2" ]; then
        cat "$1" > "$2"
        rm -f "$1"
        say "wrote $2 through its symbolic link (in place, not atomically)"
        return
    fi
    if [ -e "$2" ]; then
        chmod "$(stat -c %a "$2")" "$1"
        chown "$(stat -c %u:%g "$2")" "$1"
    else
        chmod 0644 "$1"
    fi
    mv -f "$1" "$2"
}

# Whether the staged $1 and $2 (drop-in, or none) are what is there now.
unchanged() {
    cmp -s "$1" "$main" || return 1
    if [ -n "$2" ]; then cmp -s "$2" "$drop_in"; else [ ! -e "$drop_in" ]; fi
}

install_handler() {
    [ -f "$V2_SNIPPET" ] && [ -f "$V3_DROP_IN" ] || die "missing $V2_SNIPPET or $V3_DROP_IN"
    find_husk
    local major schema base new drop='' check
    major=$(containerd_major)
    make_dir "$etc"
    new_file "$main"
    base=$staged
    strip_husk "$base"
    new_file "$main"
    new=$staged
    if [ -s "$base" ]; then
        schema=$(schema_of "$base")
    elif [ "$major" -ge 2 ]; then
        schema=3
        printf '%s\nversion = 3\n%s\n' "$MADE" "$IMPORT" > "$base"
    else
        schema=2
        printf '%s\nversion = 2\n' "$MADE" > "$base"
    fi
    case $schema in
        3)
            add_v3_import "$base" "$new"
            make_dir "$etc/conf.d"
            new_file "$drop_in"
            drop=$staged
            cat "$V3_DROP_IN" > "$drop"
            # What config.toml imports once husk's line is in.
            check=$new
            ;;
        2)
            append_v2_block "$base" "$new"
            check=$base
            ;;
        *) die "$main has no version = 2 or 3: husk's handler needs one (containerd config migrate)" ;;
    esac
    refuse_foreign "$check"
    validate install "$new" "$drop"
    if unchanged "$new" "$drop"; then
        say "husk's handlers are in $main already (config version $schema): unchanged"
        return
    fi
    [ -z "$drop" ] || swap_in "$drop" "$drop_in"
    [ -n "$drop" ] || [ ! -e "$drop_in" ] || rm -f "$drop_in"
    swap_in "$new" "$main"
    made_dirs=
    say "added the husk and husk-vm handlers (config version $schema): $main${drop:+, $drop_in}"
}

remove_handler() {
    local new=
    if ! has_block && ! made_by_husk && [ ! -e "$drop_in" ]; then
        say "no husk handler in $main: nothing to remove"
        return
    fi
    find_husk
    if has_block && ! made_by_husk; then
        new_file "$main"
        new=$staged
        strip_husk "$new"
    fi
    # What is left of config.toml must still be containerd's.
    if [ -n "$new" ]; then
        validate remove "$new"
    elif [ -f "$main" ] && ! made_by_husk; then
        validate remove "$main"
    fi
    if [ -n "$new" ]; then
        swap_in "$new" "$main"
        say "took husk's lines out of $main"
    elif made_by_husk; then
        rm -f "$main"
        say "removed $main (husk made it)"
    fi
    if [ -e "$drop_in" ]; then
        rm -f "$drop_in"
        say "removed $drop_in"
    fi
    # Directories go only when empty: they may have been the node's.
    rmdir "$etc/conf.d" 2>/dev/null || true
    rmdir "$etc" 2>/dev/null || true
}

show_handler() {
    node_containerd config dump 2>/dev/null |
        grep -E -B1 -A8 'runtime_type = .io\.containerd\.husk(-vm)?\.v2.' ||
        die "containerd's config has no husk handler"
}

case $action in
    install) install_handler; say "restart containerd for it to take effect" ;;
    remove) remove_handler; say "restart containerd for it to take effect" ;;
    show) show_handler ;;
    *) die "usage: containerd-config.sh install|remove|show [--root DIR] [--containerd-version X.Y]" ;;
esac
