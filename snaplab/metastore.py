"""Snapshot metadata on SQLite: the store every backend shares.

It plays the role of containerd's core/snapshots/storage (bolt) and keeps
its semantics (docs/semantics.md §3): one key space for active, view and committed
snapshots; ids that increase and are never reused (AUTOINCREMENT keeps a
persisted sequence); Commit keeps the id; any child blocks Remove; the order
of checks, and so the error class when several things are wrong, is
containerd's.

Several processes may use one root at once. Writers take the database lock
up front (BEGIN IMMEDIATE) and wait for each other through SQLite's busy
timeout; WAL lets readers go on meanwhile. A backend does its filesystem work
inside the write transaction, so nothing else can observe or sweep a
half-made snapshot.
"""

import collections
import contextlib
import errno
import fcntl
import os
import sqlite3
import struct
import threading
import time
import urllib.parse

from . import errors
from . import filters
from . import labels as labelrules
from .types import Info, Kind, Usage, now_ns

SCHEMA_VERSION = "1"
# The database's name in a snapshotter root: its presence is what makes a root.
METADATA_FILE = "metadata.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    key       TEXT NOT NULL UNIQUE,
    kind      INTEGER NOT NULL,
    parent_id INTEGER REFERENCES snapshots(id),
    created   INTEGER NOT NULL,
    updated   INTEGER NOT NULL,
    size      INTEGER NOT NULL DEFAULT 0,
    inodes    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_by_parent ON snapshots(parent_id);
CREATE TABLE IF NOT EXISTS labels (
    snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, name)
) WITHOUT ROWID;
"""

# How long a writer waits for another process's write transaction. Writers
# may copy whole trees while they hold the lock (native Prepare), so this is
# generous; a caller should never see "database is locked".
BUSY_TIMEOUT_SECONDS = 600

# A snapshot as a backend needs it: where its data lives and its chain.
# parent_ids[0] is the immediate parent, the last one the base layer.
Snapshot = collections.namedtuple("Snapshot", "id kind parent_ids")


class MetaStore:
    """The metadata database at <root>/metadata.db."""

    def __init__(self, path, backend, read_only=False):
        self.path = path
        self.read_only = read_only
        self._lock = threading.RLock()  # one connection, shared by threads
        self._db = None
        self._guard = None
        try:
            self._db, self._guard = _connect(path, read_only)
            if not read_only:
                self._retry_locked(lambda: self._db.execute("PRAGMA journal_mode = WAL"))
            self._db.execute("PRAGMA foreign_keys = ON")
            # A root that is already set up for this backend is opened
            # without writing: a full or read-only filesystem can still be
            # listed, and a Remove or Cleanup can still free space.
            if not self._claimed_by(backend):
                if read_only:
                    raise errors.NotFound("%s holds no snapshotter metadata" % path)
                os.chmod(path, 0o600)
                with self.transaction(write=True) as tx:
                    tx.db.executescript_safe(_SCHEMA)
                    tx.claim_backend(backend)
        except sqlite3.DatabaseError as err:
            self.close()
            translated = _translated(err, path)
            if isinstance(translated, OSError):
                raise translated from None
            if not read_only and _read_only_directory(os.path.dirname(path) or "."):
                raise errors.FailedPrecondition(
                    "the snapshotter root %s is read-only (%s): only the verbs that read "
                    "(ls, info, usage, mounts, doctor...) work there"
                    % (os.path.dirname(path), err)) from None
            raise errors.FailedPrecondition(
                "metadata store %s cannot be used: %s" % (path, err)) from None
        except BaseException:
            self.close()
            raise

    def _claimed_by(self, backend):
        """True if the store has its schema and belongs to `backend`;
        FailedPrecondition if it belongs to another one."""
        with self.transaction() as tx:
            has_meta = tx.db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
            if has_meta is None:
                return False
            row = tx.db.execute("SELECT value FROM meta WHERE name = 'backend'").fetchone()
            if row is None:
                return False
            tx.claim_backend(backend)  # raises for another backend; writes nothing here
            return True

    @staticmethod
    def _retry_locked(fn):
        # SQLite answers some lock conflicts (switching to WAL, a reader
        # upgrading) at once instead of waiting; wait here in its place.
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        delay = 0.001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as err:
                locked = "locked" in str(err) or "busy" in str(err)
                if not locked or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    @contextlib.contextmanager
    def transaction(self, write=False):
        """One transaction; rolled back if the block raises or it is read-only."""
        if self._db is None:
            raise errors.FailedPrecondition("metadata store %s is closed" % self.path)
        if write and self.read_only:
            raise errors.FailedPrecondition(
                "the snapshotter root of %s was opened read-only" % self.path)
        with self._lock:
            try:
                self._retry_locked(
                    lambda: self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN"))
            except sqlite3.OperationalError as err:
                raise _translated(err, self.path) from err
            try:
                yield Transaction(_Conn(self._db), write)
            except BaseException as err:
                # SQLite may have rolled back already (a full disk does).
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(err, sqlite3.OperationalError):
                    raise _translated(err, self.path) from err
                raise
            if not write:
                self._db.execute("ROLLBACK")
                return
            try:
                self._retry_locked(lambda: self._db.execute("COMMIT"))
            except BaseException as err:
                # A COMMIT that failed leaves the transaction open: end it,
                # so the connection is usable and nothing half-done stays.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(err, sqlite3.OperationalError):
                    raise _translated(err, self.path) from err
                raise

    def close(self):
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._guard is not None:
                os.close(self._guard)
                self._guard = None


def _translated(err, path):
    """The OSError a failed write of the store really is (a full disk says
    "database or disk is full", ENOSPC underneath), so callers see the
    cause and its class; other SQLite errors stay as they are."""
    text = str(err)
    if "full" in text or ("disk I/O error" in text and _no_space_left(path)):
        return OSError(errno.ENOSPC, "No space left on device (writing the metadata store: "
                       "%s)" % text, path)
    if "disk I/O error" in text:
        return OSError(errno.EIO, "I/O error writing the metadata store (%s); a full "
                       "disk is one cause" % text, path)
    if "readonly" in text or "read-only" in text:
        return errors.FailedPrecondition("the metadata store %s is read-only: %s" % (path, text))
    return err


def _no_space_left(path):
    """SQLite says only "disk I/O error" when it cannot grow its -shm file."""
    try:
        return os.statvfs(os.path.dirname(path) or ".").f_bavail == 0
    except OSError:
        return False


# The file _read_only_directory makes for a moment (Cleanup knows the prefix).
WRITE_PROBE_PREFIX = ".snaplab-write-probe-"


def _read_only_directory(directory):
    """Whether nothing can be created in `directory` because its filesystem
    is read-only (asked only once the store failed to open for writing:
    access(2) does not know a zfs dataset's readonly=on)."""
    probe = os.path.join(directory, "%s%d" % (WRITE_PROBE_PREFIX, os.getpid()))
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError as err:
        return err.errno == errno.EROFS
    os.unlink(probe)
    return False


# SQLite's lock bytes in the database file (os_unix.c): a connection in WAL
# mode holds a read lock in the SHARED range for as long as it is open.
_SQLITE_SHARED_FIRST = 0x40000000 + 2
_SQLITE_SHARED_SIZE = 510


def _connect(path, read_only):
    """(connection, guard fd or None) to the database at `path`.

    Read-only, nothing may be written to the root, not even SQLite's -wal
    and -shm files (they change the root's mtime and fail on a read-only
    mount). On a filesystem mounted read-only nobody can change the database
    under us, so it is opened immutable (no locks, no -shm). On a writable
    one with the -wal already there (another process has the store open),
    mode=ro reads through those files without creating any. Otherwise the
    database is complete in its main file (see below).
    """
    if not read_only:
        return sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS,
                               isolation_level=None, check_same_thread=False), None
    quoted = urllib.parse.quote(os.path.abspath(path))
    if not os.path.exists(path):
        raise errors.NotFound("no snapshotter metadata at %s" % path)
    immutable = "file:%s?immutable=1" % quoted
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return sqlite3.connect(immutable, uri=True, isolation_level=None,
                               check_same_thread=False), None
    if os.path.exists(path + "-wal") and os.path.exists(path + "-shm"):
        return sqlite3.connect("file:%s?mode=ro" % quoted, uri=True,
                               timeout=BUSY_TIMEOUT_SECONDS,
                               isolation_level=None, check_same_thread=False), None
    # No -wal: the whole database is in its main file (the last connection
    # to close checkpointed it). Read that file as it is, immutable, under a
    # read lock on SQLite's SHARED byte range: a writer that opens meanwhile
    # writes to a new -wal, and its checkpoint at close, which would rewrite
    # the main file under us, needs the EXCLUSIVE lock we now stand in the
    # way of (it leaves its -wal instead). Nothing is created, so this also
    # works on a full filesystem.
    guard = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # struct flock: l_type, l_whence, l_start, l_len, l_pid (OFD: 0).
        fcntl.fcntl(guard, fcntl.F_OFD_SETLKW,
                    struct.pack("hhqqi", fcntl.F_RDLCK, os.SEEK_SET, _SQLITE_SHARED_FIRST,
                                _SQLITE_SHARED_SIZE, 0))
        return sqlite3.connect(immutable, uri=True, isolation_level=None,
                               check_same_thread=False), guard
    except BaseException:
        os.close(guard)
        raise


class _Conn:
    """The connection as a transaction sees it, with text encoding guarded."""

    def __init__(self, db):
        self._db = db

    def execute(self, sql, params=()):
        return self._db.execute(sql, params)

    def executescript_safe(self, script):
        # executescript() would COMMIT the open transaction: run one by one.
        for statement in script.split(";"):
            if statement.strip():
                self._db.execute(statement)


class Transaction:
    """The metadata operations in containerd's check order (docs/semantics.md §3)."""

    def __init__(self, db, write):
        self.db = db
        self.write = write

    # -- meta ------------------------------------------------------------

    def claim_backend(self, backend):
        """A root belongs to one backend: refuse to mix them on disk."""
        row = self.db.execute("SELECT value FROM meta WHERE name = 'backend'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('backend', ?), ('schema', ?)",
                            (backend, SCHEMA_VERSION))
        elif row[0] != backend:
            raise errors.FailedPrecondition(
                "this snapshotter root was created by the %r backend, not %r; "
                "use --backend %s or another root" % (row[0], backend, row[0]))

    # -- reading ---------------------------------------------------------

    def _row(self, key):
        return self.db.execute(
            "SELECT s.id, s.kind, s.parent_id, p.key, s.created, s.updated, s.size, s.inodes "
            "FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id WHERE s.key = ?",
            (key,)).fetchone()

    def _labels(self, snapshot_id):
        return dict(self.db.execute(
            "SELECT name, value FROM labels WHERE snapshot_id = ? ORDER BY name",
            (snapshot_id,)).fetchall())

    def _info(self, key, row):
        return Info(kind=Kind(row[1]), name=key, parent=row[3] or "",
                    labels=self._labels(row[0]), created=row[4], updated=row[5])

    def _require(self, key):
        row = self._row(key)
        if row is None:
            raise errors.NotFound("snapshot %r does not exist" % key)
        return row

    def get_info(self, key):
        """(id, Info, Usage) of any snapshot; NotFound if missing."""
        row = self._require(key)
        return row[0], self._info(key, row), Usage(size=row[6], inodes=row[7])

    def parent_ids(self, parent_id):
        chain = []
        while parent_id is not None:
            chain.append(parent_id)
            row = self.db.execute("SELECT parent_id FROM snapshots WHERE id = ?",
                                  (parent_id,)).fetchone()
            if row is None:
                raise errors.NotFound("missing parent id %d" % parent_id)
            parent_id = row[0]
        return chain

    def get_snapshot(self, key):
        """The Snapshot of an active or view key; committed → FailedPrecondition."""
        row = self._require(key)
        if row[1] == Kind.COMMITTED:
            raise errors.FailedPrecondition(
                "snapshot %r is committed; only active and view snapshots have mounts" % key)
        return Snapshot(row[0], Kind(row[1]), self.parent_ids(row[2]))

    def walk(self, matcher):
        """Every matching Info in key order (byte order of the UTF-8 key)."""
        rows = self.db.execute(
            "SELECT s.key, s.id, s.kind, s.parent_id, p.key, s.created, s.updated "
            "FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id ORDER BY s.key"
        ).fetchall()
        found = []
        for key, *row in rows:
            info = self._info(key, row)
            if filters.match_info(matcher, info):
                found.append(info)
        return found

    def snapshot_rows(self):
        """[(id, key, Kind, parent_id, labels)] of every snapshot, by id."""
        rows = self.db.execute(
            "SELECT id, key, kind, parent_id FROM snapshots ORDER BY id").fetchall()
        return [(i, key, Kind(kind), parent, self._labels(i)) for i, key, kind, parent in rows]

    def id_map(self):
        """{id: key} of every snapshot; what is on disk and not here is an orphan."""
        return dict(self.db.execute("SELECT id, key FROM snapshots").fetchall())

    # -- writing ---------------------------------------------------------

    def _write_labels(self, snapshot_id, labels):
        self.db.execute("DELETE FROM labels WHERE snapshot_id = ?", (snapshot_id,))
        for name, value in labelrules.without_empty(labels).items():
            self.db.execute("INSERT INTO labels VALUES (?, ?, ?)", (snapshot_id, name, value))

    def create_snapshot(self, kind, key, parent, labels):
        """Insert an active or view snapshot; returns its Snapshot."""
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise errors.InvalidArgument("snapshot kind must be active or view, not %s" % kind)
        parent_id = None
        chain = []
        if parent:
            prow = self._row(parent)
            if prow is None:
                raise errors.NotFound("parent snapshot %r does not exist" % parent)
            if prow[1] != Kind.COMMITTED:
                raise errors.InvalidArgument(
                    "parent %r is not a committed snapshot (it is %s)" % (parent, Kind(prow[1])))
            parent_id = prow[0]
            chain = self.parent_ids(parent_id)
        if self._row(key) is not None:
            raise errors.AlreadyExists("snapshot %r already exists" % key)
        stamp = now_ns()
        cursor = self.db.execute(
            "INSERT INTO snapshots (key, kind, parent_id, created, updated) VALUES (?, ?, ?, ?, ?)",
            (key, int(kind), parent_id, stamp, stamp))
        self._write_labels(cursor.lastrowid, labels)
        return Snapshot(cursor.lastrowid, kind, chain)

    def commit_active(self, key, name, usage, labels, parent=None):
        """Turn active `key` into committed `name`, keeping its id; returns the id."""
        if self._row(name) is not None:
            raise errors.AlreadyExists("snapshot %r already exists" % name)
        row = self._row(key)
        if row is None:
            raise errors.NotFound("failed to get active snapshot %r: it does not exist" % key)
        if row[1] != Kind.ACTIVE:
            raise errors.FailedPrecondition(
                "snapshot %r is not active (it is %s); only active snapshots can be committed"
                % (key, Kind(row[1])))
        snapshot_id, parent_id = row[0], row[2]
        if parent:  # rebase: may fill an empty parent or repeat the same one
            prow = self._row(parent)
            if parent_id is not None and (prow is None or prow[0] != parent_id):
                raise errors.InvalidArgument(
                    "cannot change parent of active snapshot %r from %r to %r"
                    % (key, row[3], parent))
            if prow is None:
                raise errors.NotFound("parent snapshot %r does not exist" % parent)
            if prow[1] != Kind.COMMITTED:
                raise errors.FailedPrecondition("parent %r is not committed" % parent)
            parent_id = prow[0]
        stamp = now_ns()
        self.db.execute(
            "UPDATE snapshots SET key = ?, kind = ?, parent_id = ?, created = ?, updated = ?, "
            "size = ?, inodes = ? WHERE id = ?",
            (name, int(Kind.COMMITTED), parent_id, stamp, stamp, usage.size, usage.inodes,
             snapshot_id))
        self._write_labels(snapshot_id, labels)
        return snapshot_id

    def remove(self, key):
        """Delete `key`; returns (id, kind). Any child blocks it."""
        row = self._require(key)
        child = self.db.execute("SELECT key FROM snapshots WHERE parent_id = ? LIMIT 1",
                                (row[0],)).fetchone()
        if child is not None:
            raise errors.FailedPrecondition(
                "cannot remove snapshot %r with child %r: remove its children first"
                % (key, child[0]))
        self.db.execute("DELETE FROM snapshots WHERE id = ?", (row[0],))
        return row[0], Kind(row[1])

    def update_info(self, info, fieldpaths):
        """Labels-only update with containerd's field path rules (§1.9)."""
        row = self._require(info.name)
        stored = self._labels(row[0])
        wanted = dict(info.labels or {})
        if not fieldpaths:
            stored = wanted
        for path in fieldpaths:
            if path == "labels":
                stored = dict(wanted)
            elif path.startswith("labels."):
                name = path[len("labels."):]
                stored[name] = wanted.get(name, "")
            else:
                raise errors.InvalidArgument(
                    "cannot update %r field on snapshot %r" % (path, info.name))
        # Empty values are deletions (a path naming a label the request does
        # not carry deletes it): only what is stored must be valid, so
        # "labels." (the label named "", absent) changes nothing, as in
        # containerd.
        stored = labelrules.without_empty(stored)
        labelrules.validate(stored)
        self._write_labels(row[0], stored)
        self.db.execute("UPDATE snapshots SET updated = ? WHERE id = ?", (now_ns(), row[0]))
        return self._info(info.name, self._row(info.name))
