#!/bin/sh
# Runs inside the box's root (chroot) after debootstrap (recipe/rootfs/ was
# laid down before it).
# Usage: configure.sh RELEASE SUITE MIRROR VAGRANT_PUBKEY KERNEL_PACKAGE [KERNEL_SUITE]
# KERNEL_PACKAGE is installed here, with apt (debootstrap left it out; see
# boxes.py step_debootstrap), from KERNEL_SUITE when given (backports).
set -eu
release=$1
suite=$2
mirror=$3
pubkey=$4
kernel_package=$5
kernel_suite=${6:-}

# No daemons start from package scripts in the chroot (zfsutils-linux would
# try); seal.sh removes this again.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d

echo "snaplab-$release" > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 snaplab-%s\n::1 localhost ip6-localhost ip6-loopback\n' \
  "$release" > /etc/hosts

# The release's own suite only (no -updates, no -security), and the kernel's
# suite if it has its own: the zfs step needs the headers of exactly the
# kernel installed here. The mirror is the one the box was built from.
{
  echo "deb $mirror $suite main contrib"
  if [ -n "$kernel_suite" ]; then echo "deb $mirror $kernel_suite main contrib"; fi
} > /etc/apt/sources.list
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends ${kernel_suite:+-t "$kernel_suite"} "$kernel_package"

systemctl enable systemd-networkd.service snaplab-firstboot.service
# wait-online would hold boot for the tunnel NIC vagrant-libvirt adds, which
# never gets an address. systemd-firstboot would prompt on the console on a
# first boot. The apt timers would take the dpkg lock at random times in a
# guest that has no network to update from anyway. e2scrub checks LVM
# snapshots (there is no LVM here) and at boot competes with the way to SSH.
systemctl mask systemd-networkd-wait-online.service systemd-firstboot.service \
  apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service e2scrub_all.timer

useradd --create-home --shell /bin/bash --groups sudo vagrant
# Vagrant's convention (also gives a login on the serial console).
echo 'vagrant:vagrant' | chpasswd
chmod 0440 /etc/sudoers.d/vagrant
install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh
install -m 0600 -o vagrant -g vagrant "$pubkey" /home/vagrant/.ssh/authorized_keys
