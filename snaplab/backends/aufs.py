"""aufs: the fifth snapshotter of the talk, gone from current kernels.

aufs was never merged into Linux; distributions carried it as a patch
(Debian's aufs-dkms, last in bullseye, and Ubuntu's kernels until 20.10), and
containerd's aufs snapshotter (containerd/aufs) was removed in containerd 2.0.
snaplab does not implement it: opening it probes the kernel and refuses with
the reason, so the conformance matrix shows aufs as not runnable (and why)
instead of leaving it out.
"""

from .. import errors
from .. import kernel
from .base import StoreSnapshotter


def why_not_runnable():
    """The reason aufs cannot be run here (it never can with snaplab)."""
    release = kernel.release()
    if not kernel.filesystem_in_kernel("aufs"):
        return ("aufs is not runnable: kernel %s has no aufs (/proc/filesystems does not "
                "list it). aufs was never merged into Linux, Debian dropped aufs-dkms after "
                "bullseye and containerd removed its aufs snapshotter in 2.0; use the overlay "
                "backend" % release)
    return ("aufs is not runnable: kernel %s has aufs, but snaplab has no aufs backend "
            "(containerd removed its aufs snapshotter in 2.0); use the overlay backend" % release)


class AufsSnapshotter(StoreSnapshotter):
    name = "aufs"
    # The reason, asked of the class: nothing needs an instance to know it.
    why_not_runnable = staticmethod(why_not_runnable)

    def check_filesystem(self, path):
        raise errors.FailedPrecondition(why_not_runnable())
