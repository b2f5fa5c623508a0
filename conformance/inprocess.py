"""snaplab's own backends as conformance targets, opened in the test process."""

import functools

from snaplab import backends

from .target import Target, make_snaplab_root, snaplab_refusal


class InProcessTarget(Target):
    """A snaplab backend on one filesystem, e.g. overlay-on-xfs, opened in
    the test process through the registry (snaplab.backends)."""

    @property
    def snaplab_backend(self):
        """The snaplab backend opened: the target's own (rootless.py's
        targets run one their own way)."""
        return self.backend

    @functools.cached_property
    def traits(self):
        # The files of conformance/traits/ describe the backends as served;
        # in-process, Remove deletes the data before it returns, unless the
        # backend's own option leaves it to Cleanup (overlay's async_remove).
        traits = super().traits
        if self.options.get("async_remove"):
            return traits
        return traits.replace(source="%s (in-process)" % traits.source, removal="immediate")

    def opener(self, root):
        return functools.partial(backends.open_snapshotter, root, self.snaplab_backend,
                                 **self.options)

    def kept_mounts_under(self, directory):
        return backends.kept_mounts_under(self.snaplab_backend, directory)

    def expected_refusal(self):
        return snaplab_refusal(self.snaplab_backend, self)

    def open(self, root, **options):
        """A snapshotter on `root`; raises what the backend raises.

        A zfs backend root on the zfs filesystem is first made a dataset of
        its own, when it does not exist yet (or is an empty directory).
        """
        make_snaplab_root(self.snaplab_backend, getattr(self, "fs", None), root)
        return backends.open_snapshotter(root, self.snaplab_backend, **dict(self.options, **options))


__all__ = ["InProcessTarget"]
