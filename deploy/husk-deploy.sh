#!/bin/sh
# husk-deploy: installs husk onto the Kubernetes node this container runs
# on, and takes it off again (deploy/husk-deploy.yaml runs it as a
# DaemonSet, like kata-deploy). The node's root is mounted at $HOST.
#   install  copies the payload (the .deb's files, under /usr/local) onto
#            the node, writes containerd's husk handler for the node's
#            containerd version (containerd-config.sh, which has the
#            node's containerd dump the new configuration before it swaps
#            it in), restarts containerd and, once containerd answers,
#            labels the node husk.io/runtime=true
#   cleanup  the reverse: unlabels the node, takes the handler out,
#            restarts containerd, removes exactly the files install wrote
#   run      install, then wait; SIGTERM (the DaemonSet deleted, the pod
#            stopped) runs cleanup before exiting. An install that rolled
#            back waits too, not ready: exiting would have the DaemonSet
#            restart the pod and containerd with it, again and again
# Rollback: when containerd does not answer within HUSK_CONTAINERD_WAIT
# seconds (default 60) of a restart, containerd's config.toml and husk's
# drop-in are put back as they were before, byte for byte, containerd is
# restarted again, and the step fails, saying so loudly; the node is not
# labelled (install) or husk's files are kept for the config put back
# (cleanup).
# Environment: NODE_NAME (the downward API's spec.nodeName; without it the
# node is not labelled), HUSK_HOST_ROOT (default /host),
# HUSK_CONTAINERD_VERSION (default: the node object's
# containerRuntimeVersion, else the node's `containerd --version`),
# HUSK_RESTART_CONTAINERD (default: systemctl restart containerd in the
# host's namespaces, through nsenter into PID 1: needs hostPID),
# HUSK_CONTAINERD_READY (default: the node's `ctr version` on
# HUSK_CONTAINERD_SOCKET, default /run/containerd/containerd.sock),
# HUSK_KUBE_API (default: the in-cluster API server), HUSK_READY_FILE
# (default /tmp/husk-deployed, what the readiness probe looks for).
set -eu
HOST=${HUSK_HOST_ROOT:-/host}
PAYLOAD=${HUSK_PAYLOAD:-/husk-deploy/payload}
LABEL=husk.io/runtime
SA=/var/run/secrets/kubernetes.io/serviceaccount
SHARE=/usr/local/share/husk
MANIFEST=$HOST$SHARE/.deployed-files
API=${HUSK_KUBE_API:-https://${KUBERNETES_SERVICE_HOST:-}:${KUBERNETES_SERVICE_PORT:-443}}
READY=${HUSK_READY_FILE:-/tmp/husk-deployed}
ETC=$HOST/etc/containerd
# The files containerd-config.sh changes, under $ETC.
CONFIG_FILES="config.toml conf.d/husk.toml"
WAIT=${HUSK_CONTAINERD_WAIT:-60}
SOCKET=${HUSK_CONTAINERD_SOCKET:-/run/containerd/containerd.sock}

log() { echo "husk-deploy: $*"; }
die() { echo "husk-deploy: $*" >&2; exit 1; }

# curl to this node's object in the API server.
node_api() {
    set -- -sS --fail --max-time 30 "$@"
    [ -f "$SA/ca.crt" ] && set -- --cacert "$SA/ca.crt" "$@"
    [ -f "$SA/token" ] && set -- -H "Authorization: Bearer $(cat "$SA/token")" "$@"
    curl "$@" "$API/api/v1/nodes/$NODE_NAME"
}

label() { # "true" or null
    if [ -z "${NODE_NAME:-}" ]; then
        log "NODE_NAME is not set: the node's label is left alone"
        return 0
    fi
    node_api -X PATCH -H 'Content-Type: application/merge-patch+json' \
        --data "{\"metadata\":{\"labels\":{\"$LABEL\":$1}}}" >/dev/null
    log "node $NODE_NAME: label $LABEL=$1"
}

containerd_version() {
    if [ -n "${HUSK_CONTAINERD_VERSION:-}" ]; then
        echo "$HUSK_CONTAINERD_VERSION"
        return
    fi
    if [ -n "${NODE_NAME:-}" ]; then
        v=$(node_api 2>/dev/null | grep -o '"containerRuntimeVersion": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/')
        case $v in containerd://*) echo "${v#containerd://}"; return ;; esac
    fi
    chroot "$HOST" containerd --version | awk '{print $3}'
}

restart_containerd() {
    log "restarting containerd"
    if [ -n "${HUSK_RESTART_CONTAINERD:-}" ]; then
        sh -c "$HUSK_RESTART_CONTAINERD"
    else
        nsenter -t 1 -m -u -i -n -p -- systemctl restart containerd
    fi
}

# Whether the node's containerd answers on its socket.
containerd_answers() {
    if [ -n "${HUSK_CONTAINERD_READY:-}" ]; then
        sh -c "$HUSK_CONTAINERD_READY" >/dev/null 2>&1
    else
        chroot "$HOST" /usr/bin/env PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin \
            ctr --address "$SOCKET" version >/dev/null 2>&1
    fi
}

# Restarts containerd and waits up to $WAIT seconds for it to answer.
restart_and_wait() {
    restart_containerd || log "the restart command failed"
    i=0
    until containerd_answers; do
        i=$((i + 1))
        [ "$i" -le "$WAIT" ] || return 1
        sleep 1
    done
}

# Copies the files containerd-config.sh changes into $1 (one that is not
# there: not copied, so that restore removes it).
save_config() {
    mkdir -p "$1"
    for f in $CONFIG_FILES; do
        [ -e "$ETC/$f" ] || continue
        mkdir -p "$1/$(dirname "$f")"
        cat "$ETC/$f" > "$1/$f"
    done
}

# Puts the files saved in $1 back, byte for byte (in place: mode, owner
# and a symbolic link kept), and removes those that were not there.
restore_config() {
    for f in $CONFIG_FILES; do
        if [ -e "$1/$f" ]; then
            mkdir -p "$(dirname "$ETC/$f")"
            cat "$1/$f" > "$ETC/$f"
        else
            rm -f "$ETC/$f"
        fi
    done
}

# Restarts containerd on the new configuration; when it does not come
# back, puts the one saved in $1 back and restarts it again. Fails then.
restart_or_roll_back() {
    if restart_and_wait; then
        return 0
    fi
    {
        echo "husk-deploy: ================================================================"
        echo "husk-deploy: ROLLING BACK: containerd did not answer within ${WAIT}s of a restart"
        echo "husk-deploy: with the new configuration; putting containerd's config.toml and"
        echo "husk-deploy: conf.d/husk.toml back as they were and restarting it again"
        echo "husk-deploy: ================================================================"
    } >&2
    restore_config "$1"
    if restart_and_wait; then
        echo "husk-deploy: ROLLED BACK: containerd answers again on its previous configuration" >&2
    else
        echo "husk-deploy: ROLLBACK FAILED: containerd does not answer on its previous configuration either: the node needs a person" >&2
    fi
    return 1
}

install_husk() {
    [ -d "$PAYLOAD/usr/local" ] || die "no payload at $PAYLOAD"
    version=$(containerd_version)
    [ -n "$version" ] || die "cannot tell the node's containerd version"
    log "node containerd $version; installing husk under $HOST/usr/local"
    list=$(mktemp)
    (cd "$PAYLOAD" && find usr -type f | LC_ALL=C sort) > "$list"
    while read -r f; do
        mkdir -p "$(dirname "$HOST/$f")"
        cp -p "$PAYLOAD/$f" "$HOST/$f.husk-new"
        mv -f "$HOST/$f.husk-new" "$HOST/$f"
    done < "$list"
    cp "$list" "$MANIFEST"
    rm -f "$list"
    saved=$(mktemp -d)
    save_config "$saved"
    sh "$PAYLOAD$SHARE/containerd-config.sh" install --root "$HOST" --containerd-version "$version"
    if ! restart_or_roll_back "$saved"; then
        rm -rf "$saved"
        echo "husk-deploy: NOT INSTALLED: husk's handler is not in containerd's configuration; the node is not labelled" >&2
        rolled_back=1
        return 0
    fi
    rm -rf "$saved"
    label '"true"'
    touch "$READY"
    log "installed"
}

cleanup_husk() {
    rm -f "$READY"
    label null || log "could not unlabel the node"
    if [ -f "$PAYLOAD$SHARE/containerd-config.sh" ]; then
        saved=$(mktemp -d)
        save_config "$saved"
        sh "$PAYLOAD$SHARE/containerd-config.sh" remove --root "$HOST"
        if ! restart_or_roll_back "$saved"; then
            rm -rf "$saved"
            echo "husk-deploy: NOT REMOVED: containerd's configuration has husk's handler again, so husk's files stay" >&2
            rolled_back=1
            return 0
        fi
        rm -rf "$saved"
    fi
    if [ -f "$MANIFEST" ]; then
        while read -r f; do
            case $f in usr/local/*) rm -f "$HOST/$f" ;; esac
        done < "$MANIFEST"
        rm -f "$MANIFEST"
    fi
    rmdir "$HOST$SHARE" 2>/dev/null || true
    log "removed"
}

# Set when a step rolled back (the functions return 0 then, so that
# `set -e` still stops them at any other failure).
rolled_back=
case ${1:-} in
    install)
        install_husk
        [ -z "$rolled_back" ] || exit 1
        ;;
    cleanup)
        cleanup_husk
        [ -z "$rolled_back" ] || exit 1
        ;;
    run)
        sleeper=
        trap '[ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null || true; rolled_back=; cleanup_husk; [ -z "$rolled_back" ] || exit 1; exit 0' TERM INT
        install_husk
        [ -z "$rolled_back" ] || log "waiting, not ready (the readiness probe fails), until the pod is deleted"
        # In the background, so that the trap runs as soon as TERM comes.
        while :; do
            sleep 3600 &
            sleeper=$!
            wait "$sleeper" || true
        done
        ;;
    *) die "usage: husk-deploy.sh install|cleanup|run" ;;
esac
