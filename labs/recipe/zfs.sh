#!/bin/sh
# Runs inside the box's root (chroot): OpenZFS built by DKMS for the box's
# kernel. Usage: zfs.sh KERNEL_VERSION PACKAGE_LIST_FILE
set -eu
kver=$1
packages=$(sed -e 's/#.*//' "$2" | xargs)
export DEBIAN_FRONTEND=noninteractive
# Kbuild appends KCFLAGS last, so -g0 cancels the kernel config's -g: DKMS
# strips the debug info from the modules it installs anyway, and compiling
# without it saves much of the build's CPU time.
export KCFLAGS=-g0

apt-get update -q
# The headers first, in their own transaction: zfs-dkms's postinst builds the
# module for every kernel whose headers are installed when it runs. It also
# names the host's running kernel, for which there are no headers; it skips it.
apt-get install -y -q --no-install-recommends "linux-headers-$kver"
# shellcheck disable=SC2086 # one word per package
apt-get install -y -q --no-install-recommends $packages

# The postinst builds quietly and a failure there does not fail the install:
# check the module is really there for this kernel, and say which version.
if ! modinfo -k "$kver" -F version zfs >/dev/null 2>&1; then
  version=$(dpkg-query -W -f='${Version}' zfs-dkms | sed 's/-[^-]*$//')
  dkms install "zfs/$version" -k "$kver"
fi
echo "zfs module for $kver: $(modinfo -k "$kver" -F version zfs)"
# The package enabled its units; the box's preset (etc/systemd/system-preset/
# 40-snaplab.preset) turns them off again.
# shellcheck disable=SC2046 # one word per unit
systemctl preset $(systemctl list-unit-files --no-legend 'zfs*' | awk '$1 !~ /@\./ {print $1}')
