"""Reading a layer's bytes fast, for archive.py: the decompressed stream
on a thread of its own with its hash (ThreadedReader), an uncompressed
file hashed on a thread while tarfile seeks through it (FileHasher,
LayerFile), and a regular file's data copied in the kernel (copy_data).

Each reader knows the layer's file it was opened on (file_identity) and its
drain() fails if that file changed while it was read.
"""

import errno
import hashlib
import os
import queue
import tarfile
import threading

from .. import errors

CHUNK = 1 << 20  # bytes read or copied at a time


class ThreadedReader:
    """Reads a (decompressing) stream on a thread of its own, hashing what
    passes there: the DiffID of a layer. zlib, zstd's pipe and hashlib
    release the GIL, so decompression and hashing run beside the parsing
    and writing of the entries. InvalidArgument as soon as more than `limit`
    bytes came through (None: no limit), so that a decompression bomb is
    stopped, not read to its end; what the stream raises (a damaged gzip)
    is raised where the data is read."""

    _AHEAD = 8  # chunks decompressed ahead of the reader at most

    def __init__(self, stream, raw, limit=None, over_limit="more than %d bytes", hashing=True):
        self.stream = stream
        self.raw_fd = raw.fileno()
        self.identity = file_identity(os.fstat(self.raw_fd))
        self.sha256 = hashlib.sha256() if hashing else None
        self.size = 0
        self.limit = limit
        self.over_limit = over_limit
        self.chunks = queue.Queue(self._AHEAD)
        self.stopping = threading.Event()
        self.buffer = b""
        self.position = 0
        self.ended = False
        self.thread = threading.Thread(target=self._produce, name="layer-reader", daemon=True)
        self.thread.start()

    def _produce(self):
        try:
            while not self.stopping.is_set():
                data = self.stream.read(CHUNK)
                if self.sha256 is not None:
                    self.sha256.update(data)
                self.size += len(data)
                if self.limit is not None and self.size > self.limit:
                    raise errors.InvalidArgument(self.over_limit % self.limit)
                self._hand_over(data)
                if not data:
                    return
        except BaseException as err:  # pylint: disable=broad-except
            self._hand_over(err)

    def _hand_over(self, item):
        while not self.stopping.is_set():
            try:
                self.chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, size=-1):
        if size is None or size < 0:
            size = CHUNK
        while self.position >= len(self.buffer):
            if self.ended:
                return b""
            item = self.chunks.get()
            if isinstance(item, BaseException):
                self.ended = True
                raise item
            if not item:
                self.ended = True
                return b""
            self.buffer, self.position = item, 0
        data = self.buffer[self.position:self.position + size]
        self.position += len(data)
        return data

    def drain(self):
        """Read to the end: the DiffID covers what follows the tar's end too.
        InvalidArgument if the layer's file changed meanwhile."""
        while self.read(CHUNK):
            pass
        if file_identity(os.fstat(self.raw_fd)) != self.identity:
            raise errors.InvalidArgument("layer file changed while it was read")

    def close(self):
        self.stopping.set()
        self.thread.join()

    @property
    def digest(self):
        """The DiffID, or None if not hashing."""
        return None if self.sha256 is None else "sha256:" + self.sha256.hexdigest()


def file_identity(st):
    """What changes when a file is written to or replaced."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileHasher:
    """The DiffID of an uncompressed layer: its file is hashed by a thread
    of its own (pread, the GIL released) while the tar is parsed from the
    same file by seeking over the data, which the writer copies in the
    kernel (copy_file_range). Since what is hashed and what is written are
    then two reads, the file must be the same at the end as at the start
    (device, inode, size, mtime, ctime), or it is InvalidArgument."""

    def __init__(self, raw, limit=None, over_limit="more than %d bytes", hashing=True):
        self.fd = raw.fileno()
        st = os.fstat(self.fd)
        self.identity = file_identity(st)
        self.size = st.st_size
        if limit is not None and self.size > limit:
            raise errors.InvalidArgument(over_limit % limit)
        self.sha256 = hashlib.sha256() if hashing else None
        self.stopping = False
        self.error = None
        self.thread = None
        if hashing:
            self.thread = threading.Thread(target=self._hash, name="layer-hash", daemon=True)
            self.thread.start()

    def _hash(self):
        offset = 0
        try:
            while not self.stopping and offset < self.size:
                data = os.pread(self.fd, CHUNK, offset)
                if not data:
                    break
                self.sha256.update(data)
                offset += len(data)
        except OSError as err:
            self.error = err

    def drain(self):
        """Wait for the hash; InvalidArgument if the file changed meanwhile."""
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise self.error
        if file_identity(os.fstat(self.fd)) != self.identity:
            raise errors.InvalidArgument("layer file changed while it was read")

    def close(self):
        self.stopping = True
        if self.thread is not None:
            self.thread.join()

    @property
    def digest(self):
        """The DiffID, or None if not hashing."""
        return None if self.sha256 is None else "sha256:" + self.sha256.hexdigest()


class LayerFile:
    """An uncompressed layer's file as tarfile reads it in "r:" mode:
    os.pread through a small read-ahead buffer and a position of its own,
    so that tarfile's many tell() and seek() calls make no system call
    (each one would let the hashing thread take the GIL)."""

    _AHEAD = 64 * 1024

    def __init__(self, raw):
        self.fd = raw.fileno()
        self.size = os.fstat(self.fd).st_size  # when it was opened: a change shows later
        self.name = raw.name
        self.mode = "rb"
        self.position = 0
        self.buffer = b""
        self.buffer_start = 0

    def fileno(self):
        return self.fd

    def tell(self):
        return self.position

    def seek(self, offset, whence=os.SEEK_SET):
        if whence == os.SEEK_CUR:
            offset += self.position
        elif whence == os.SEEK_END:
            offset += os.fstat(self.fd).st_size
        self.position = offset
        return offset

    def read(self, size=-1):
        if size is None or size < 0:
            size = max(0, os.fstat(self.fd).st_size - self.position)
        start = self.position - self.buffer_start
        if 0 <= start and start + size <= len(self.buffer):
            data = self.buffer[start:start + size]
        elif size >= self._AHEAD:
            data = os.pread(self.fd, size, self.position)
        else:
            self.buffer = os.pread(self.fd, self._AHEAD, self.position)
            self.buffer_start = self.position
            data = self.buffer[:size]
        self.position += len(data)
        return data


class ScannedTar:  # pylint: disable=too-few-public-methods
    """What copy_data needs of a tar whose members the scan kept: the file."""

    def __init__(self, fileobj):
        self.fileobj = fileobj


def seekable(tar):
    """Whether the tar is read from its uncompressed file (see archive.layer_entries)."""
    return not isinstance(tar.fileobj, tarfile._Stream)  # pylint: disable=protected-access


def copy_data(tar, member, fd):
    """The data of the regular file `member` into the open descriptor `fd`:
    copied in the kernel from an uncompressed layer's file (copy_file_range,
    else sendfile), else read through the tar. InvalidArgument if the
    archive holds less than the member claims."""
    if seekable(tar) and not member.issparse():
        source = tar.fileobj.fileno()
        offset, remaining = member.offset_data, member.size
        while remaining > 0:
            copied = _copy_range(source, fd, offset, remaining)
            if not copied:
                raise errors.InvalidArgument("the layer is truncated: entry %r claims %d more "
                                             "bytes than it holds" % (member.name[:64], remaining))
            offset += copied
            remaining -= copied
        return
    source = tar.extractfile(member)
    while True:
        data = source.read(CHUNK)
        if not data:
            return
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]


_RANGE_COPY = {"copy_file_range": hasattr(os, "copy_file_range")}


def _copy_range(source, fd, offset, count):
    """Copy up to `count` bytes at `offset` of `source` to `fd`'s position;
    the number copied (0 at the end of `source`). copy_file_range where the
    kernel takes it between these two files, else sendfile."""
    count = min(count, 1 << 30)
    if _RANGE_COPY["copy_file_range"]:
        try:
            return os.copy_file_range(source, fd, count, offset)
        except OSError as err:
            # Not between these filesystems, or not at all: sendfile does it.
            if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
    return os.sendfile(fd, source, offset, count)
