"""Remove's data deletion in a thread, for a long-lived process (snaplab serve).

containerd's Remove deletes metadata only and leaves the data to its garbage
collector; snaplab serve's Remove likewise answers once the metadata is
committed, and this thread deletes the data once Removes have been quiet
for a moment (StoreSnapshotter.remove_data_in_background).
"""

import logging
import queue
import threading

from .. import faults
from . import reserve

log = logging.getLogger("snaplab")

# Removed snapshots whose data may wait in the queue (and as many again in
# the batch the thread has taken): each holds its lease's lock file open, so
# a burst of Removes beyond that waits for room instead of running out of
# file descriptors.
PENDING_REMOVALS_LIMIT = 64
# How long no Remove must come before the thread deletes what is pending.
QUIET_SECONDS = 0.05


class BackgroundRemoval:
    """A thread that deletes the data of removed snapshots, in the order
    they were removed (StoreSnapshotter.remove_data_in_background).

    Each deletion comes with the lease (base.REMOVAL_LEASE) its Remove
    took inside the metadata transaction, released once the data is gone:
    a Cleanup (in any process) leaves pending data alone, and doctor does
    not report it; a kill releases every lease, and the data becomes
    orphans that the next Cleanup deletes.
    """

    def __init__(self, root, delete):
        self._root = root
        self._delete = delete  # delete(key, snapshot_id): the data of a removed snapshot
        self._pending = queue.Queue(maxsize=PENDING_REMOVALS_LIMIT)
        self._thread = threading.Thread(target=self._run, name="snaplab-remove", daemon=True)
        self._thread.start()

    def submit(self, key, snapshot_id, lease):
        """Hand over the deletion of removed snapshot `snapshot_id` (`key`
        for the log) and its `lease` (a context manager, released after)."""
        try:
            self._pending.put((key, snapshot_id, lease))
        except BaseException:  # not handed over (interrupted while waiting for room)
            lease.close()
            raise

    def wait(self):
        """Return once every deletion handed over so far is done."""
        self._pending.join()

    def stop(self):
        """Finish the deletions handed over, then end the thread."""
        if self._thread.is_alive():
            self._pending.put(None)
            self._thread.join()

    def _run(self):
        stopping = False
        while not stopping:
            batch = [self._pending.get()]
            # Removes come in bursts (containerd's garbage collection, an
            # image removed layer by layer): deleting while the burst goes on
            # would compete with its calls (the CPU, the journal commit each
            # metadata transaction waits for), so the thread waits for a quiet
            # moment, or until as many as may wait are waiting.
            while batch[-1] is not None and len(batch) < PENDING_REMOVALS_LIMIT:
                try:
                    batch.append(self._pending.get(timeout=QUIET_SECONDS))
                except queue.Empty:
                    break
            for item in batch:
                if item is None:
                    stopping = True
                else:
                    self._delete_one(*item)
                self._pending.task_done()

    def _delete_one(self, key, snapshot_id, lease):
        try:
            with lease:
                faults.point("remove.background")
                self._delete(key, snapshot_id)
            reserve.refill(self._root)  # given back if the filesystem was full
        except Exception:  # noqa: BLE001 - the thread must outlive any failure
            # The lease is released: what is left is an orphan for cleanup().
            log.exception("deleting the data of removed snapshot %r", key)


__all__ = ["BackgroundRemoval", "PENDING_REMOVALS_LIMIT"]
