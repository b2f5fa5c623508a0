#!/bin/sh
# Runs as root inside a freshly booted box (`boxes.py check` pipes it to
# `sudo sh -s DISK`). Prints key=value lines and `done=1` at the end; stops
# at the first failure. DISK is an empty scratch disk that may be wiped.
set -eu
disk=$1

echo "kernel=$(uname -r)"
echo "python3=$(python3 -c 'import platform; print(platform.python_version())')"
echo "pytest=$(python3 -c 'import pytest; print(pytest.__version__)')"
echo "machine_id=$(cat /etc/machine-id)"
# Empty once the first boot's id is on disk (else: the transient mount).
echo "machine_id_mount=$(findmnt --noheadings --output SOURCE /etc/machine-id || true)"
echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"
echo "firstboot_unit=$(systemctl is-active snaplab-firstboot.service || true)"
# SSH can be up before the rest of boot is; wait for it (or give up: the
# state is then reported as it is).
echo "system_state=$(timeout 120 systemctl is-system-running --wait 2>/dev/null || true)"
echo "failed_units=$(systemctl list-units --state=failed --no-legend --plain | awk '{print $1}' | xargs)"

# A box whose kernel OpenZFS does not build for has no zfs (its manifest
# says why): zfs_module=none.
if command -v zpool >/dev/null; then
  modprobe zfs
  echo "zfs_module=$(cat /sys/module/zfs/version)"
  echo "zfs_tools=$(zfs version 2>/dev/null | head -1 || zfs --version 2>/dev/null | head -1)"
  zpool create -f -o ashift=12 -O mountpoint=/snaplabcheck snaplabcheck "$disk"
  zfs create snaplabcheck/data
  echo written > /snaplabcheck/data/file
  zfs snapshot snaplabcheck/data@one
  zfs clone snaplabcheck/data@one snaplabcheck/clone
  test "$(cat /snaplabcheck/clone/file)" = written
  zpool destroy snaplabcheck
  echo "zfs_pool=ok"
else
  echo "zfs_module=none"
fi

mnt=$(mktemp -d)
for fs in ext4 xfs btrfs; do
  wipefs --all --quiet "$disk"
  case $fs in
    ext4) mkfs.ext4 -q -F "$disk" ;;
    xfs) mkfs.xfs -q -f "$disk" ;;
    btrfs) mkfs.btrfs -q -f "$disk" >/dev/null ;;
  esac
  mount -t "$fs" "$disk" "$mnt"
  echo written > "$mnt/file"
  umount "$mnt"
  echo "$fs=ok"
done

# xfs without d_type needs the V4 format (crc=0), which a kernel built
# without CONFIG_XFS_SUPPORT_V4 refuses to mount.
wipefs --all --quiet "$disk"
if mkfs.xfs -q -f -m crc=0 -n ftype=0 "$disk" 2>/dev/null && mount -t xfs "$disk" "$mnt" 2>/dev/null; then
  umount "$mnt"
  echo "xfs_v4=yes"
else
  echo "xfs_v4=no"
fi
wipefs --all --quiet "$disk"

work=$(mktemp -d)
mkdir "$work/lower" "$work/upper" "$work/work" "$work/merged"
echo lower > "$work/lower/file"
mount -t overlay overlay -o "lowerdir=$work/lower,upperdir=$work/upper,workdir=$work/work" "$work/merged"
echo upper >> "$work/merged/file"
umount "$work/merged"
test -f "$work/upper/file"
echo "overlay=ok"

truncate -s 64M "$work/loop.img"
loop=$(losetup --find --show "$work/loop.img")
losetup --detach "$loop"
echo "loop=ok"

modprobe fuse
test -c /dev/fuse
echo "fuse=ok"

rm -rf "$work"
rmdir "$mnt"
echo "done=1"
