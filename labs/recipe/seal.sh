#!/bin/sh
# Runs inside the box's root (chroot) last: removes what the build leaves
# behind and what must differ between clones (see
# rootfs/etc/systemd/system/snaplab-firstboot.service for the first boot).
set -eu
rm -f /usr/sbin/policy-rc.d /etc/dpkg/dpkg.cfg.d/snaplab-build /etc/apt/apt.conf.d/99snaplab-build
apt-get clean
rm -rf /var/lib/apt/lists/*

rm -f /etc/ssh/ssh_host_*
# "uninitialized" (not an empty file) is what systemd documents for images
# (docs/BUILDING_IMAGES.md): each boot that finds it makes a random id and
# counts as the first boot; snaplab-firstboot.service commits the id.
echo uninitialized > /etc/machine-id
# D-Bus reads its id from here when present; the build made it a copy or a
# link of the build's id.
rm -f /var/lib/dbus/machine-id
ln -s /etc/machine-id /var/lib/dbus/machine-id
# Every clone would seed its random pool with the same bytes.
rm -f /var/lib/systemd/random-seed
rm -rf /var/log/journal/*
# The recipe's scripts were copied to /tmp/snaplab-recipe for the build.
rm -rf /tmp/* /var/tmp/*
