"""What the crash and concurrency harnesses share: a snapshotter root per
backend on a real loop filesystem, the CLI run in-process, reading a
snapshot's content back through a mount, the mounts and the unreferenced
storage a run may leave, and the fixture data (a parent with thousands of
files, layer tars with many entries).

Everything lives under one `snaplab-test-torture-*` scratch directory (so
`make leaks` recognises what a killed run leaves); `Lab` undoes its mounts,
datasets, pools and loop devices on leaving, also on failure.
"""

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import stat
import tarfile
import tempfile

from snaplab import cli as snaplab_cli
from snaplab import layers as layerlib
from snaplab import mount as mountlib

BACKENDS = ("native", "overlay", "btrfs", "zfs", "blockfile", "erofs")
# The loop filesystem each backend's root lives on (native, overlay, blockfile
# and erofs share one; blockfile's images are sparse copies there).
FILESYSTEM_OF = {"native": "ext4", "overlay": "ext4", "btrfs": "btrfs", "zfs": "zfs",
                 "blockfile": "ext4", "erofs": "ext4"}
# Room for a few hundred copies of the parent (ext4's inodes: 1 per 16 KiB).
FILESYSTEM_SIZES_MIB = {"ext4": 2048, "btrfs": 2048}
SCRATCH_PREFIX = "snaplab-test-torture-"
MNT_DETACH = 2

# Temp names snaplab itself makes outside a root (every other temporary
# name is under the root: apply-layer's and declare's mounts are in
# <root>/mounts).
SNAPLAB_TEMP_PREFIXES = (mountlib.TEMPORARY_MOUNT_PREFIX,)


class CliResult:
    __slots__ = ("code", "out", "err")

    def __init__(self, code, out, err):
        self.code = code
        self.out = out
        self.err = err

    def __repr__(self):
        return "exit %s, stderr %r" % (self.code, self.err.strip()[-500:])


def cli(root, backend, *argv):
    """`snaplab --root ROOT --backend BACKEND ARGV...` in this process:
    CliResult(exit code, stdout, stderr). An exception that escapes main()
    (a traceback for a user) propagates."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = snaplab_cli.main(["--root", root, "--backend", backend, *argv])
    return CliResult(code, out.getvalue(), err.getvalue())


def info_of(root, backend, key):
    """The Info dict of `key`, or None if it does not exist (exit 2)."""
    result = cli(root, backend, "--json", "info", key)
    if result.code == 2:
        return None
    if result.code != 0:
        raise CheckFailed("info %s: %r" % (key, result))
    return json.loads(result.out)


class CheckFailed(Exception):
    """A step of the checker itself failed: the message is the finding."""


# -- content -------------------------------------------------------------------


def manifest(directory):
    """{relative path: (type, permission bits, size, sha256 or link target)} of
    everything below `directory` (the directory itself as ".")."""
    found = {".": ("dir", stat.S_IMODE(os.lstat(directory).st_mode), 0, "")}
    for top, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(top, name)
            relative = os.path.relpath(path, directory)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                found[relative] = ("dir", mode, 0, "")
            elif stat.S_ISLNK(st.st_mode):
                found[relative] = ("symlink", 0, 0, os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256()
                with open(path, "rb") as data:
                    for block in iter(lambda: data.read(1 << 20), b""):
                        digest.update(block)
                found[relative] = ("file", mode, st.st_size, digest.hexdigest())
            else:
                found[relative] = ("other", mode, 0, "%o" % stat.S_IFMT(st.st_mode))
    return found


def manifest_difference(expected, found, limit=5):
    """A short text of how two manifests differ ("" if they are equal)."""
    if expected == found:
        return ""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    changed = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    parts = []
    for what, names in (("missing", missing), ("unexpected", extra), ("changed", changed)):
        if names:
            parts.append("%d %s (%s%s)" % (len(names), what, ", ".join(names[:limit]),
                                           ", ..." if len(names) > limit else ""))
    return "; ".join(parts)


@contextlib.contextmanager
def mounted(root, backend, key, tmpdir):
    """KEY (active or view) mounted on a new temp directory, with `snaplab mount`."""
    target = tempfile.mkdtemp(prefix="read-", dir=tmpdir)
    try:
        result = cli(root, backend, "mount", target, key)
        if result.code != 0:
            raise CheckFailed("mount %s: %r" % (key, result))
        try:
            yield target
        finally:
            result = cli(root, backend, "umount", target)
            if result.code != 0:
                raise CheckFailed("umount of %s: %r" % (key, result))
    finally:
        os.rmdir(target)


def content_of(root, backend, key, tmpdir):
    """The manifest of snapshot `key`: an active or view snapshot is mounted
    as it is; a committed one through a View of it, removed afterwards."""
    found = info_of(root, backend, key)
    if found is None:
        raise CheckFailed("%s does not exist" % key)
    if found["Kind"] != "Committed":
        with mounted(root, backend, key, tmpdir) as target:
            return manifest(target)
    view = "torture-read-" + os.urandom(4).hex()
    result = cli(root, backend, "view", view, key)
    if result.code != 0:
        raise CheckFailed("view of %s: %r" % (key, result))
    try:
        with mounted(root, backend, view, tmpdir) as target:
            return manifest(target)
    finally:
        result = cli(root, backend, "rm", view)
        if result.code != 0:
            raise CheckFailed("rm of the reading view of %s: %r" % (key, result))


def write_files(directory, count, rng, prefix="f", max_size=1024):
    """`count` files of random sizes (up to max_size) in subdirectories of 100."""
    for number in range(count):
        sub = os.path.join(directory, "%s%03d" % (prefix, number // 100))
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, "%s%05d" % (prefix, number)), "wb") as data:
            data.write(rng.randbytes(rng.randint(0, max_size)))


def make_layer_tar(path, entries, rng, remove=()):
    """An OCI layer tar: `entries` files of up to 4 KiB in directories of 100,
    a symlink per directory, and a whiteout (.wh.NAME) for each of `remove`."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for number in range(entries):
            directory = "layer/d%03d" % (number // 100)
            if number % 100 == 0:
                member = tarfile.TarInfo(directory)
                member.type, member.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(member)
                link = tarfile.TarInfo(directory + "/link")
                link.type, link.linkname = tarfile.SYMTYPE, "e%05d" % number
                tar.addfile(link)
            data = rng.randbytes(rng.randint(0, 4096))
            member = tarfile.TarInfo("%s/e%05d" % (directory, number))
            member.size, member.mode = len(data), 0o644
            tar.addfile(member, io.BytesIO(data))
        for name in remove:
            head, tail = os.path.split(name)
            member = tarfile.TarInfo(os.path.join(head, ".wh." + tail))
            tar.addfile(member, io.BytesIO(b""))


def layers_manifest(tars, scratch):
    """The manifest of the layers applied in order to an empty directory."""
    target = tempfile.mkdtemp(prefix="layers-", dir=scratch)
    try:
        os.chmod(target, 0o755)
        for tar in tars:
            layerlib.apply_layer_to_directory(tar, target)
        return manifest(target)
    finally:
        shutil.rmtree(target)


# -- what a run may leave ----------------------------------------------------


def _under(path, directory):
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def mounts_of(directories):
    """{(mount point, source, fstype)} mounted at or below any of `directories`."""
    return {(e.mountpoint, e.source, e.fstype) for e in mountlib.mount_table()
            if any(_under(e.mountpoint, d) for d in directories)}


def snaplab_temp_names(tmpdir):
    """Names snaplab made in the temp directory (its own prefixes)."""
    try:
        return sorted(n for n in os.listdir(tmpdir) if n.startswith(SNAPLAB_TEMP_PREFIXES))
    except FileNotFoundError:
        return []


def unreferenced(root, backend):
    """Findings of `snaplab doctor --json`: on-disk data the metadata does
    not reference, and the other inconsistencies it knows."""
    result = cli(root, backend, "--json", "doctor")
    if result.code not in (0, 1):
        return ["doctor: %r" % result]
    try:
        report = json.loads(result.out)
    except ValueError:
        return ["doctor printed no JSON: %r" % result.out[-300:]]
    findings = ["%s %s: %s" % (f.get("kind"), f.get("subject"), f.get("detail"))
                for f in report.get("findings", [])]
    if report.get("clean") != (not findings) or (result.code == 0) != (not findings):
        findings.append("doctor's clean=%r and exit %d disagree with its %d findings"
                        % (report.get("clean"), result.code, len(findings)))
    return findings


# -- roots on loop filesystems -------------------------------------------------


class Lab:
    """Snapshotter roots for `backends` on loop filesystems in a scratch
    directory; also a private TMPDIR (snaplab's temp mounts go there, where
    nothing else's do). Use as a context manager: leaving removes it all."""

    def __init__(self, backends):
        self.backends = list(backends)
        self.base = tempfile.mkdtemp(prefix=SCRATCH_PREFIX)
        self.pool = None
        self.roots = {}
        self.filesystems = {}
        self.tmpdir = os.path.join(self.base, "tmp")
        os.mkdir(self.tmpdir)

    def __enter__(self):
        from conformance.filesystems import FilesystemPool
        try:
            self.pool = FilesystemPool(self.base, sizes_mib=FILESYSTEM_SIZES_MIB)
            for backend in self.backends:
                fs = self.pool.get(FILESYSTEM_OF[backend])
                self.filesystems[backend] = fs
                root = os.path.join(fs.mountpoint, backend + "-root")
                if backend == "zfs":
                    fs.make_root_dataset(root)
                self.roots[backend] = root
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def scratch(self, backend):
        """A directory for the backend's own files (tars, reports)."""
        path = os.path.join(self.base, "scratch-" + backend)
        os.makedirs(path, exist_ok=True)
        return path

    def tmp_for(self, backend):
        """The backend's private TMPDIR (so leftovers are told apart per backend)."""
        path = os.path.join(self.tmpdir, backend)
        os.makedirs(path, exist_ok=True)
        return path

    def close(self):
        problems = []
        # What a test left mounted in our temp directory (a killed apply-layer's mount).
        for where in mountlib.mounts_under(self.tmpdir):
            try:
                mountlib.unmount_all(where, MNT_DETACH)
            except OSError as err:
                problems.append(str(err))
        if self.pool is not None:
            for backend, fs in self.filesystems.items():
                if backend != "zfs":  # a bind of a view left mounted, say
                    for where in mountlib.mounts_under(self.roots[backend]):
                        with contextlib.suppress(OSError):
                            mountlib.unmount_all(where, MNT_DETACH)
            try:
                self.pool.destroy()
            except RuntimeError as err:
                problems.append(str(err))
        if not problems:
            shutil.rmtree(self.base, ignore_errors=True)
        if problems:
            raise RuntimeError("torture lab clean-up left things behind in %s: %s"
                               % (self.base, "; ".join(problems)))


def seeded(seed, *salt):
    """A random.Random for one part of a run, reproducible from the run's seed."""
    return random.Random("%s/%s" % (seed, "/".join(str(s) for s in salt)))
