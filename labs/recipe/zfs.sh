#!/bin/sh
# Runs inside the box's root (chroot): OpenZFS built by DKMS for the box's
# kernel. Usage: zfs.sh KERNEL_VERSION PACKAGE_LIST_FILE [SUITE]
# SUITE: take OpenZFS (and the toolchain) from there first (a backports
# kernel wants the backports OpenZFS, the newest built for it).
# Exit 3 when zfs-dkms does not build for this kernel: the packages are
# purged again, the reason is in zfs-unavailable.txt beside this script,
# and the box is made without zfs (boxes.py step_zfs).
set -eu
kver=$1
packages=$(sed -e 's/#.*//' "$2" | xargs)
target=${3:+-t $3}
here=$(dirname "$0")
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# The headers and the toolchain first, in their own transaction, so that
# they are configured whatever order dpkg picks: zfs-dkms's postinst builds
# the module for every kernel whose headers are installed when it runs. It
# also names the host's running kernel, for which there are no headers; it
# skips it.
# shellcheck disable=SC2086 # "-t SUITE" is two words, or none
apt-get install -y -q --no-install-recommends $target "linux-headers-$kver" dkms build-essential

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
# zfs-dkms did not build for this kernel: say why in one line (configure's
# verdict, e.g. "*** Cannot build against kernel version 7.3. The maximum
# supported kernel version is 7.1."), purge what was installed, exit 3.
did_not_build() {
  for log in /var/lib/dkms/zfs/*/build/make.log /var/lib/dkms/zfs/*/build/build/build.log; do
    [ -e "$log" ] && { echo "==== $log"; tail -n 30 "$log"; }
  done
  version=$(dpkg-query -W -f='${Version}' zfs-dkms 2>/dev/null || echo "?")
  # configure's verdict is the "*** " lines after "configure: error:":
  # e.g. 'None of the expected "iops->create()" interfaces were detected.'
  # and "Highest compatible kernel version: 7.2".
  verdict=$(cat /var/lib/dkms/zfs/*/build/make.log 2>/dev/null \
    | sed -n -e '/configure: error:/,/^[^*[:space:]]/p' \
    | grep -E 'None of the|Cannot build|Highest compatible|maximum supported' \
    | sed -e 's/^[*[:space:]]*//' -e 's/[.]$//' | paste -s -d ';' | sed -e 's/;/; /g' | cut -c1-300)
  echo "zfs-dkms $version does not build for kernel $kver: ${verdict:-see the box's build log}" \
    > "$here/zfs-unavailable.txt"
  apt-get purge -y -q zfs-dkms zfsutils-linux >/dev/null 2>&1 \
    || dpkg --purge --force-all zfs-dkms zfsutils-linux
  apt-get autoremove -y -q --purge
  exit 3
}

# (dkms 3.2's "openssl not found" is not a failure: the module is left
# unsigned, which the box's kernel loads; nothing boots with Secure Boot.)
# shellcheck disable=SC2086 # one word per package; "-t SUITE" is two
apt-get install -y -q --no-install-recommends $target $packages || did_not_build

# The postinst builds quietly and a failure there does not fail the install:
# check the module is really there for this kernel, and say which version.
if ! modinfo -k "$kver" -F version zfs >/dev/null 2>&1; then
  version=$(dpkg-query -W -f='${Version}' zfs-dkms | sed 's/-[^-]*$//')
  dkms install "zfs/$version" -k "$kver" || did_not_build
fi
echo "zfs module for $kver: $(modinfo -k "$kver" -F version zfs)"
# The package enabled its units; the box's preset (etc/systemd/system-preset/
# 40-snaplab.preset) turns them off again.
# shellcheck disable=SC2046 # one word per unit
systemctl preset $(systemctl list-unit-files --no-legend 'zfs*' | awk '$1 !~ /@\./ {print $1}')
