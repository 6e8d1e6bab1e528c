#!/usr/bin/env bash
# The .deb on a node that has QEMU but not husk: `apt-get install` of the
# package, `husk check` before and after containerd's handler is written,
# a container in a husk VM through the node's containerd, then `apt-get
# remove --purge` leaves none of husk's files. The node is a throwaway
# overlay of this machine (sandbox.sh); run as
#   unshare -m --propagation private tests/node/deb.sh husk_<v>_amd64.deb IMAGE.tar
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=sandbox.sh
. "$here/sandbox.sh"
deb=${1:?usage: deb.sh DEB BUSYBOX_IMAGE}
image=${2:?usage: deb.sh DEB BUSYBOX_IMAGE}

node_up
[ ! -e "$NODE/usr/local/bin/containerd-shim-husk-v2" ] || fail "husk is not hidden in the node"
cp "$deb" "$NODE/tmp/husk.deb"
cp "$image" "$NODE/tmp/busybox-oci.tar"

step "apt-get install ./husk.deb (nothing to fetch: QEMU and the libraries are on the node)"
in_node env DEBIAN_FRONTEND=noninteractive apt-get install -y /tmp/husk.deb
for f in usr/local/bin/containerd-shim-husk-v2 usr/local/bin/husk usr/local/bin/husk-vmm \
    usr/local/bin/virtiofsd usr/local/bin/vhost-device-vsock \
    usr/local/share/husk/vmlinux usr/local/share/husk/husk-initrd.cpio \
    usr/local/share/husk/configuration.toml usr/local/share/husk/containerd-config.sh; do
    [ -f "$NODE/$f" ] || fail "the package did not install /$f"
done
in_node dpkg -s husk | grep -q '^Status: install ok installed' || fail "dpkg does not list husk"

step "husk check without containerd's handler: exit 1, the handler line fails"
node_containerd_start
set +e
out=$(in_node husk check 2>&1); rc=$?
set -e
echo "$out"
[ "$rc" = 1 ] || fail "husk check exited $rc, expected 1"
echo "$out" | grep -q '^fail  handler' || fail "no failed handler line"
echo "$out" | grep -q '^ok    kernel ' || fail "the package's kernel is not ok"
node_containerd_stop

step "containerd-config.sh install, containerd restarted: husk check passes"
in_node /usr/local/share/husk/containerd-config.sh install
node_containerd_start
in_node ctr plugins ls | grep -Eq '^io\.containerd\.grpc\.v1 +cri .* ok *$' ||
    fail "containerd's CRI plugin did not load with husk's handler"
out=$(in_node husk check) || { echo "$out"; fail "husk check failed after the handler was written"; }
echo "$out"
echo "$out" | grep -q '^ok    handler            husk (runtime_path /usr/local/bin/containerd-shim-husk-v2)' ||
    fail "the handler line does not name the installed shim"

step "a container in a husk VM from the package's kernel and initrd"
in_node ctr images import /tmp/busybox-oci.tar >/dev/null
got=$(run_in_vm deb-vm | tr -d '\r')
want=$(guest_release)
echo "guest kernel: $got (package's vmlinux: $want; host: $(uname -r))"
[ -n "$want" ] && [ "$got" = "$want" ] || fail "the VM ran kernel '$got', not the package's '$want'"
node_containerd_stop

step "containerd-config.sh remove; apt-get remove --purge husk"
in_node /usr/local/share/husk/containerd-config.sh remove
cmp "$NODE/etc/containerd/config.toml" /etc/containerd/config.toml ||
    fail "containerd's config.toml differs from the node's own after remove"
in_node env DEBIAN_FRONTEND=noninteractive apt-get remove -y --purge husk
for f in "${HUSK_FILES[@]}"; do
    [ ! -e "$NODE/$f" ] || fail "/$f is still there after apt-get remove --purge"
done
echo "PASS: the .deb installs with apt, runs a VM, and leaves nothing when removed"
