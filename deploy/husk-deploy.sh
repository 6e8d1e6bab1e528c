#!/bin/sh
# husk-deploy: installs husk onto the Kubernetes node this container runs
# on, and takes it off again (deploy/husk-deploy.yaml runs it as a
# DaemonSet, like kata-deploy). The node's root is mounted at $HOST.
#   install  copies the payload (the .deb's files, under /usr/local) onto
#            the node, writes containerd's husk handler for the node's
#            containerd version (containerd-config.sh), restarts
#            containerd and labels the node husk.io/runtime=true
#   cleanup  the reverse: unlabels the node, takes the handler out,
#            restarts containerd, removes exactly the files install wrote
#   run      install, then wait; SIGTERM (the DaemonSet deleted, the pod
#            stopped) runs cleanup before exiting
# Environment: NODE_NAME (the downward API's spec.nodeName; without it the
# node is not labelled), HUSK_HOST_ROOT (default /host),
# HUSK_CONTAINERD_VERSION (default: the node object's
# containerRuntimeVersion, else the node's `containerd --version`),
# HUSK_RESTART_CONTAINERD (default: systemctl restart containerd in the
# host's namespaces, through nsenter into PID 1: needs hostPID),
# HUSK_KUBE_API (default: the in-cluster API server).
set -eu
HOST=${HUSK_HOST_ROOT:-/host}
PAYLOAD=${HUSK_PAYLOAD:-/husk-deploy/payload}
LABEL=husk.io/runtime
SA=/var/run/secrets/kubernetes.io/serviceaccount
SHARE=/usr/local/share/husk
MANIFEST=$HOST$SHARE/.deployed-files
API=${HUSK_KUBE_API:-https://${KUBERNETES_SERVICE_HOST:-}:${KUBERNETES_SERVICE_PORT:-443}}
READY=/tmp/husk-deployed

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
    sh "$PAYLOAD$SHARE/containerd-config.sh" install --root "$HOST" --containerd-version "$version"
    restart_containerd
    label '"true"'
    touch "$READY"
    log "installed"
}

cleanup_husk() {
    rm -f "$READY"
    label null || log "could not unlabel the node"
    if [ -f "$PAYLOAD$SHARE/containerd-config.sh" ]; then
        sh "$PAYLOAD$SHARE/containerd-config.sh" remove --root "$HOST"
        restart_containerd || log "could not restart containerd"
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

case ${1:-} in
    install) install_husk ;;
    cleanup) cleanup_husk ;;
    run)
        sleeper=
        trap '[ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null || true; cleanup_husk; exit 0' TERM INT
        install_husk
        # In the background, so that the trap runs as soon as TERM comes.
        while :; do
            sleep 3600 &
            sleeper=$!
            wait "$sleeper" || true
        done
        ;;
    *) die "usage: husk-deploy.sh install|cleanup|run" ;;
esac
