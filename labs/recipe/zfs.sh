#!/bin/sh
# Runs inside the box's root (chroot): OpenZFS built by DKMS for the box's
# kernel. Usage: zfs.sh KERNEL_VERSION PACKAGE_LIST_FILE
set -eu
kver=$1
packages=$(sed -e 's/#.*//' "$2" | xargs)
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# The headers and the toolchain first, in their own transaction, so that
# they are configured whatever order dpkg picks: zfs-dkms's postinst builds
# the module for every kernel whose headers are installed when it runs. It
# also names the host's running kernel, for which there are no headers; it
# skips it.
apt-get install -y -q --no-install-recommends "linux-headers-$kver" dkms build-essential

# Kbuild appends KCFLAGS last, so -g0 cancels the kernel config's -g: DKMS
# strips the debug info from the modules it installs anyway, and compiling
# without it saves much of the build's CPU time. Not where the headers just
# installed ship a vmlinux (trixie's 6.12; not bookworm's or bullseye's):
# Kbuild then makes each module's BTF with pahole from its DWARF, which fails on every
# -g0 module ("pahole: ...ko: Invalid argument"), and zfs's configure reads
# its failed test modules as "CONFIG_MODULES is not defined".
if [ ! -e "/lib/modules/$kver/build/vmlinux" ]; then
  export KCFLAGS=-g0
fi
# shellcheck disable=SC2086 # one word per package
if ! apt-get install -y -q --no-install-recommends $packages; then
  # zfs-dkms's postinst failed. DKMS's log has configure's verdict; the
  # kernel test modules' build log has the compiler's or Kbuild's reason.
  # (dkms 3.2's "openssl not found" is not it: the module is left unsigned,
  # which the box's kernel loads; nothing boots with Secure Boot here.)
  for log in /var/lib/dkms/zfs/*/build/make.log /var/lib/dkms/zfs/*/build/build/build.log; do
    [ -e "$log" ] && { echo "==== $log"; tail -n 30 "$log"; }
  done
  exit 1
fi

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
