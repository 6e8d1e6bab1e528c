#!/usr/bin/env bash
# Builds the VM-image test images for the husk-vm runtime:
# a Debian 12 disk with its stock kernel, systemd, cloud-init,
# qemu-guest-agent and openssh-server, bootable by SeaBIOS (MBR + extlinux)
# and by direct kernel boot, packed as KubeVirt containerDisk OCI archives
# for `ctr images import`:
#   debian-vm-oci.tar         docker.io/husk/debian-vm:test
#                             /disk/disk.qcow2 (107:107), nothing else
#   debian-vm-kernel-oci.tar  docker.io/husk/debian-vm-kernel:test
#                             the same plus /boot/vmlinuz and /boot/initrd.img
#   vm-bad-two-disks-oci.tar  docker.io/husk/vm-bad-two-disks:test
#                             two (tiny, valid) qcow2 files under /disk/
#   vm-bad-not-disk-oci.tar   docker.io/husk/vm-bad-not-disk:test
#                             a text file as the only file under /disk/
# (An image with no /disk/ at all is the busybox test image.)
# The disk alone is also kept (disk.qcow2, vmlinuz, initrd.img) for booting
# it under bare QEMU (scripts/bench-vm-image.py).
#
# The disk is built without partition device nodes (none appear here): the
# root filesystem is made from a directory with `mkfs.ext4 -d` into a
# partition-sized file, copied at 1 MiB into a file with an MBR written by
# sfdisk and syslinux's mbr.bin; extlinux is installed through a loop device
# over that offset (`losetup -o`). See docs/vm-pods.md.
#
# Cache: $HUSK_CACHE/vm-image/<key>/, <key> = first 16 hex digits of
# sha256(this script), which holds the suite, the package list and every
# build step. Debian's bookworm is not pinned to a snapshot: a cold
# build takes the suite's packages of the day. $HUSK_CACHE/vm-image/current
# -> <key>. A cached build is reused as it is.
#
# Usage: scripts/build-vm-image.sh [OUT_DIR]   (needs root)
#   OUT_DIR: where the archives and the disk are installed as well (setup.sh
#   passes /usr/local/share/husk).
set -euo pipefail
umask 022 # file modes go into the disk and the layers: keep them fixed
export LC_ALL=C

SCRIPT=$(readlink -f -- "${BASH_SOURCE[0]}")
HUSK_CACHE=${HUSK_CACHE:-/var/cache/husk}
IMAGE_DIR=$HUSK_CACHE/vm-image
OUT=${1:-}

# No mirror is named: mmdebstrap's default Debian mirror, to which it adds
# the -updates and -security suites for a stable release.
SUITE=bookworm
# On top of the minbase variant (priority required). Recommends are not
# installed (mmdebstrap's default). The merged-usr hook keeps usrmerge, and
# with it perl, out.
PACKAGES=(
    linux-image-amd64 systemd-sysv udev dbus
    cloud-init python3-cffi-backend cloud-guest-utils
    qemu-guest-agent openssh-server
    systemd-resolved iproute2 netbase procps
)
# Files a test VM never reads: docs, man pages, translations, and kernel
# modules for hardware a QEMU machine does not have (sound, GPUs, cameras,
# radios, InfiniBand, sensors). The kernel itself is Debian's, unchanged.
# Quoted: patterns for dpkg, never globbed here; dpkg matches the paths in
# the packages (bookworm's kernel ships /lib/modules, not /usr/lib/modules).
DPKG_EXCLUDES=(
    '/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*' '/usr/share/lintian/*'
    '/lib/modules/*/kernel/sound/*'
    '/lib/modules/*/kernel/drivers/gpu/*'
    '/lib/modules/*/kernel/drivers/media/*'
    '/lib/modules/*/kernel/drivers/net/wireless/*'
    '/lib/modules/*/kernel/drivers/infiniband/*'
    '/lib/modules/*/kernel/drivers/iio/*'
    '/lib/modules/*/kernel/drivers/staging/*'
    '/lib/modules/*/kernel/drivers/comedi/*'
    '/lib/modules/*/kernel/drivers/bluetooth/*'
    '/lib/modules/*/kernel/drivers/isdn/*'
    '/lib/modules/*/kernel/net/wireless/*'
    '/lib/modules/*/kernel/net/mac80211/*'
    '/lib/modules/*/kernel/net/bluetooth/*'
)
DPKG_INCLUDES=('/usr/share/doc/*/copyright' '/usr/share/locale/locale.alias')
# Modules the initrd needs to mount the root disk (MODULES=list keeps it
# small; `dep` would look at the build host). The rest load from the root.
INITRD_MODULES=(virtio_pci virtio_blk virtio_scsi sd_mod ata_piix ext4)
PART_SIZE_MIB=2048    # the root partition; the qcow2 stores only what is used
PART_START_SECTOR=2048
ROOT_LABEL=debian-root
CONTAINERDISK_UID=107 # KubeVirt's qemu user

log() { printf 'build-vm-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap, chroot, loop mount)"
for tool in mmdebstrap mkfs.ext4 sfdisk losetup extlinux qemu-img tar gzip sha256sum python3 flock; do
    command -v "$tool" >/dev/null || die "$tool missing (apt-get install mmdebstrap e2fsprogs fdisk extlinux syslinux-common qemu-utils)"
done
MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$MBR_BIN" ] || die "$MBR_BIN missing (apt-get install syslinux-common)"

KEY=$(sha256sum "$SCRIPT" | cut -c1-16)
KEY_DIR=$IMAGE_DIR/$KEY
ARCHIVES=(debian-vm-oci.tar debian-vm-kernel-oci.tar vm-bad-two-disks-oci.tar vm-bad-not-disk-oci.tar)
OUTPUTS=(disk.qcow2 vmlinuz initrd.img "${ARCHIVES[@]}")

# put SRC DEST: DEST replaced whole (written beside it, then renamed).
put() {
    install -m 0644 -- "$1" "$2.tmp.$$"
    mv -f -- "$2.tmp.$$" "$2"
}

install_outputs() {
    ln -sfn -- "$KEY" "$IMAGE_DIR/.current.$$"
    mv -fT -- "$IMAGE_DIR/.current.$$" "$IMAGE_DIR/current"
    if [ -n "$OUT" ]; then
        mkdir -p -- "$OUT"
        local f
        for f in "${ARCHIVES[@]}"; do put "$KEY_DIR/$f" "$OUT/$f"; done
        # The bare disk and its kernel, for booting under plain QEMU.
        put "$KEY_DIR/disk.qcow2" "$OUT/debian-vm.qcow2"
        put "$KEY_DIR/vmlinuz" "$OUT/debian-vm-vmlinuz"
        put "$KEY_DIR/initrd.img" "$OUT/debian-vm-initrd.img"
    fi
    log "image $KEY: $(cat "$KEY_DIR/release") $(du -h "$KEY_DIR/disk.qcow2" | cut -f1) qcow2${OUT:+, installed in $OUT}"
}

cached() {
    local f
    for f in "${OUTPUTS[@]}" release; do [ -f "$KEY_DIR/$f" ] || return 1; done
}

if cached; then install_outputs; exit 0; fi
mkdir -p -- "$IMAGE_DIR"
exec 9>"$IMAGE_DIR/.lock"
flock 9 # one build at a time; the cache is checked again under the lock
if cached; then install_outputs; exit 0; fi

WORK=$(mktemp -d -- "$IMAGE_DIR/build.XXXXXX")
LOOP=
MNT=$WORK/mnt
# Mount points under $WORK, deepest first (mmdebstrap unmounts its own
# /dev, /proc and /sys in the chroot, but a killed run may leave them).
mounts_under_work() {
    awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r
}
cleanup() {
    local m
    for m in $(mounts_under_work); do umount -- "$m" || umount -l -- "$m" || true; done
    if [ -n "$LOOP" ]; then losetup -d "$LOOP" || true; fi
    if [ -n "$(mounts_under_work)" ]; then
        log "mounts remain under $WORK: not deleting it"
    else
        rm -rf --one-file-system -- "$WORK"
    fi
    rm -f -- "$IMAGE_DIR/.current.$$"
    [ -z "$OUT" ] || rm -f -- "$OUT"/*.tmp.$$
}
trap cleanup EXIT
START=$SECONDS
ROOT=$WORK/root
# Derived from the key: the same script gives the same filesystem UUID.
ROOT_UUID=$(python3 -c 'import sys, uuid; print(uuid.UUID(sys.argv[1][:32], version=4))' "$(printf '%s' "$KEY" | sha256sum)")

# --- 1. Root filesystem ------------------------------------------------------
dpkgopts=()
for p in "${DPKG_EXCLUDES[@]}"; do dpkgopts+=("--dpkgopt=path-exclude=$p"); done
for p in "${DPKG_INCLUDES[@]}"; do dpkgopts+=("--dpkgopt=path-include=$p"); done
# Runs after the essential packages and before the rest, so the kernel's one
# initrd is the small one. Neither file belongs to a package (no conffile
# prompt).
cat > "$WORK/essential-hook.sh" <<EOF
#!/bin/sh
set -eu
mkdir -p "\$1/etc/initramfs-tools/conf.d" "\$1/usr/share/initramfs-tools/modules.d"
echo MODULES=list > "\$1/etc/initramfs-tools/conf.d/husk-vm.conf"
printf '%s\\n' ${INITRD_MODULES[*]} > "\$1/usr/share/initramfs-tools/modules.d/husk-vm"
EOF
chmod 0755 "$WORK/essential-hook.sh"
log "key $KEY: mmdebstrap $SUITE (minbase + ${#PACKAGES[@]} packages) in $WORK"
if ! mmdebstrap --variant=minbase --format=directory \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --essential-hook="$WORK/essential-hook.sh" \
        --include="$(IFS=,; echo "${PACKAGES[*]}")" \
        "${dpkgopts[@]}" \
        "$SUITE" "$ROOT" < /dev/null > "$WORK/mmdebstrap.log" 2>&1; then
    tail -n 40 "$WORK/mmdebstrap.log" >&2
    die "mmdebstrap failed"
fi
log "bootstrap done in $((SECONDS - START)) s"

KVER=$(cd "$ROOT/boot" && ls vmlinuz-* | sed 's/^vmlinuz-//')
[ "$(wc -w <<<"$KVER")" = 1 ] || die "expected one kernel in /boot, found: $KVER"
[ -f "$ROOT/boot/initrd.img-$KVER" ] || die "no initrd for $KVER"

# --- 2. Configuration ---------------------------------------------------------
echo debian > "$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
printf 'UUID=%s\t/\text4\terrors=remount-ro\t0\t1\n' "$ROOT_UUID" > "$ROOT/etc/fstab"
# cloud-init's locale module regenerates locales (slow under TCG) unless the
# system locale is already set.
echo LANG=C.UTF-8 > "$ROOT/etc/default/locale"
cat > "$ROOT/etc/cloud/cloud.cfg.d/90_husk_vm.cfg" <<'EOF'
# husk test image: the datasources KubeVirt offers (NoCloud, ConfigDrive),
# so ds-identify probes nothing else; systemd-networkd renders the network.
datasource_list: [ NoCloud, ConfigDrive, None ]
system_info:
  network:
    renderers: [ networkd ]
EOF
# Host keys are made per instance on first boot (cloud-init's ssh module),
# never shipped in the image.
rm -f "$ROOT"/etc/ssh/ssh_host_*
chroot "$ROOT" systemctl enable --quiet systemd-networkd.service systemd-resolved.service ssh.service
# Timers that would run apt in a test VM.
chroot "$ROOT" systemctl disable --quiet apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer
rm -f "$ROOT/var/lib/dbus/machine-id"
: > "$ROOT/etc/machine-id"
mkdir -p "$ROOT/boot/extlinux"
cat > "$ROOT/boot/extlinux/extlinux.conf" <<EOF
SERIAL 0 115200
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /boot/vmlinuz-$KVER
  INITRD /boot/initrd.img-$KVER
  APPEND root=UUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200n8
EOF
rm -rf "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log "$ROOT"/tmp/* "$ROOT"/var/tmp/*
chroot "$ROOT" dpkg-query -W -f='${Package} ${Version}\n' > "$WORK/packages.txt"

# --- 3. Bootable disk -----------------------------------------------------------
used_mib=$(du -sm --apparent-size "$ROOT" | cut -f1)
[ $((used_mib * 10 / 7)) -lt "$PART_SIZE_MIB" ] || die "root tree of $used_mib MiB fills over 70% of the $PART_SIZE_MIB MiB partition"
part_bytes=$((PART_SIZE_MIB * 1024 * 1024))
offset=$((PART_START_SECTOR * 512))
truncate -s "$part_bytes" "$WORK/root.ext4"
# No 64bit: syslinux's ext4 reader predates it and 2 GiB does not need it.
mkfs.ext4 -q -F -L "$ROOT_LABEL" -U "$ROOT_UUID" -O ^64bit -E root_owner=0:0 -d "$ROOT" "$WORK/root.ext4"
raw=$WORK/disk.raw
truncate -s $((offset + part_bytes)) "$raw"
printf 'label: dos\nlabel-id: 0x%s\nstart=%d, size=%d, type=83, bootable\n' \
    "${KEY:0:8}" "$PART_START_SECTOR" $((part_bytes / 512)) | sfdisk -q "$raw"
dd if="$MBR_BIN" of="$raw" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/root.ext4" of="$raw" bs=1M seek=$((offset / 1048576)) conv=notrunc,sparse status=none
rm -f "$WORK/root.ext4"
LOOP=$(losetup --find --show --offset "$offset" --sizelimit "$part_bytes" "$raw")
mkdir -p "$MNT"
mount -t ext4 "$LOOP" "$MNT"
extlinux --install "$MNT/boot/extlinux" 2>&1 | sed 's/^/extlinux: /' >&2
umount "$MNT"
losetup -d "$LOOP"
LOOP=
qemu-img convert -c -f raw -O qcow2 "$raw" "$WORK/disk.qcow2"
rm -f "$raw"
install -m 0644 "$ROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
install -m 0644 "$ROOT/boot/initrd.img-$KVER" "$WORK/initrd.img"
log "disk: root tree $used_mib MiB, qcow2 $(du -m "$WORK/disk.qcow2" | cut -f1) MiB after $((SECONDS - START)) s"

# --- 4. containerDisk OCI archives ---------------------------------------------
# pack_oci ROOTFS NAME OUTPUT: one gzip layer of ROOTFS (owners as they are on
# disk), a config with no entrypoint, an index naming the image; fixed mtimes,
# so the same files give the same digest. As scripts/build-test-image.sh.
pack_oci() {
    local rootfs=$1 name=$2 out=$3 layout
    layout=$(mktemp -d -- "$WORK/layout.XXXXXX")
    mkdir -p "$layout/blobs/sha256"
    tar --format=gnu --sort=name --mtime=@0 --numeric-owner -C "$rootfs" -cf "$layout/layer.tar" .
    python3 - "$layout" "$name" <<'PY'
import gzip, hashlib, json, os, shutil, sys
layout, name = sys.argv[1:3]
blobs = os.path.join(layout, "blobs", "sha256")
def store(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + d, "size": len(data)}
tar_path = os.path.join(layout, "layer.tar")
gz_path = os.path.join(layout, "layer.tar.gz")
diff = hashlib.sha256()
with open(tar_path, "rb") as src, open(gz_path, "wb") as raw:
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            diff.update(chunk)
            gz.write(chunk)
os.remove(tar_path)
h = hashlib.sha256()
with open(gz_path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
         "digest": "sha256:" + h.hexdigest(), "size": os.path.getsize(gz_path)}
shutil.move(gz_path, os.path.join(blobs, h.hexdigest()))
dump = lambda o: json.dumps(o, separators=(",", ":")).encode()
config = store(dump({
    "architecture": "amd64", "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff.hexdigest()]},
    "history": [{"created_by": "husk scripts/build-vm-image.sh"}],
}))
config["mediaType"] = "application/vnd.oci.image.config.v1+json"
manifest = store(dump({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": config, "layers": [layer],
}))
with open(os.path.join(layout, "index.json"), "wb") as f:
    f.write(dump({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [dict(manifest,
            mediaType="application/vnd.oci.image.manifest.v1+json",
            platform={"architecture": "amd64", "os": "linux"},
            annotations={"io.containerd.image.name": name,
                         "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]})],
    }))
with open(os.path.join(layout, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
PY
    tar --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$out" .
    chmod 0644 "$out"
    rm -rf -- "$layout"
    log "$name: $(du -h "$out" | cut -f1)"
}

# new_tree DIR: an image root with /disk owned by root.
new_tree() { mkdir -p "$1/disk"; chmod 0755 "$1" "$1/disk"; }
# add_disk_file SRC DEST: the file as KubeVirt's images have it (107:107).
add_disk_file() {
    cp -- "$1" "$2"
    chown "$CONTAINERDISK_UID:$CONTAINERDISK_UID" "$2"
    chmod 0444 "$2"
}

t=$WORK/img-disk
new_tree "$t"
add_disk_file "$WORK/disk.qcow2" "$t/disk/disk.qcow2"
pack_oci "$t" docker.io/husk/debian-vm:test "$WORK/debian-vm-oci.tar"
mkdir -p "$t/boot" && chmod 0755 "$t/boot"
install -m 0644 "$WORK/vmlinuz" "$t/boot/vmlinuz"
install -m 0644 "$WORK/initrd.img" "$t/boot/initrd.img"
pack_oci "$t" docker.io/husk/debian-vm-kernel:test "$WORK/debian-vm-kernel-oci.tar"
rm -rf -- "$t"

t=$WORK/img-two
new_tree "$t"
qemu-img create -q -f qcow2 "$WORK/small.qcow2" 16M
add_disk_file "$WORK/small.qcow2" "$t/disk/a.qcow2"
add_disk_file "$WORK/small.qcow2" "$t/disk/b.qcow2"
pack_oci "$t" docker.io/husk/vm-bad-two-disks:test "$WORK/vm-bad-two-disks-oci.tar"

t=$WORK/img-text
new_tree "$t"
# Not a multiple of 512 bytes, no qcow2 magic, no MBR signature.
printf 'This is not a disk image.\n' > "$WORK/disk.txt"
add_disk_file "$WORK/disk.txt" "$t/disk/disk.img"
pack_oci "$t" docker.io/husk/vm-bad-not-disk:test "$WORK/vm-bad-not-disk-oci.tar"

printf '%s\n' "$KVER" > "$WORK/release"

# --- 5. Into the cache, atomically ---------------------------------------------
stage=$WORK/out
mkdir -p "$stage"
for f in "${OUTPUTS[@]}" release packages.txt; do mv -- "$WORK/$f" "$stage/$f"; done
rm -rf -- "$KEY_DIR"
mv -T -- "$stage" "$KEY_DIR"
log "built in $((SECONDS - START)) s"
install_outputs
