# The VM lab's boxes; included by the top-level Makefile.
#
#   make lab-deps                     host packages for building and booting boxes
#   make boxes [LAB_RELEASES=...]     build the boxes the cache lacks (one at a time)
#   make boxes-check [LAB_RELEASES=]  boot each box under qemu and check it
#   make boxes-list                   what the cache holds
#
# Boxes live in $(SNAPLAB_BOX_CACHE) (default /var/cache/snaplab/boxes),
# outside the clone, named by release and recipe hash: an unchanged recipe
# is reused, a changed one rebuilt. See labs/boxes.py.

LAB_PYTHON ?= /usr/bin/python3
LAB_RELEASES ?= bullseye bookworm trixie trixie-backports forky
# Building: debootstrap, sfdisk (fdisk), extlinux (+ its MBR in
# syslinux-common), qemu-img. Booting: qemu-system-x86, ssh. The Vagrant side (vagrant-libvirt, libvirtd)
# is for the lab's Vagrantfile; vagrant also ships the insecure key pair the
# boxes are built with.
LAB_APT_PACKAGES := qemu-system-x86 qemu-utils debootstrap fdisk extlinux syslinux-common \
	openssh-client vagrant vagrant-libvirt libvirt-daemon-system

.PHONY: lab-deps boxes boxes-check boxes-list

## Only missing packages are installed. libvirt's "default" NAT network must
## never start here (a bridge with a private-range address): if a package
## marked it for autostart, the mark is removed.
lab-deps:
	@missing=""; for p in $(LAB_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@if [ -e /etc/libvirt/qemu/networks/autostart/default.xml ]; then \
	  echo "removing the autostart mark of libvirt's default network"; \
	  rm -f /etc/libvirt/qemu/networks/autostart/default.xml; \
	fi

boxes: lab-deps
	$(LAB_PYTHON) labs/boxes.py build $(LAB_RELEASES)

boxes-check: boxes
	$(LAB_PYTHON) labs/boxes.py check $(LAB_RELEASES)

boxes-list:
	$(LAB_PYTHON) labs/boxes.py list
