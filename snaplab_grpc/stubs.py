"""Generate and import the Python stubs of containerd's snapshots API.

    python3 -m snaplab_grpc.stubs        # (re)generate; `make venv` and `make wheels` run it

The stubs are generated from the .proto files under proto/ with grpcio-tools
into _generated/ beside this file (git-ignored), at build time rather than
committed: generated code follows the grpcio/protobuf versions pinned in
requirements.txt, and the .proto files stay the one source.

Where: at build time, into the package itself: `make venv` for the checkout,
`make wheels` into the wheel (proto/ and _generated/ are package data,
pyproject.toml). Not at first use into a per-user cache: an installed
package's directory may be read-only (a system site-packages; serve run by
another user, or rootless, with no writable home), a cache would need
grpcio-tools at run time and a key per protobuf version, and the wheel's
`grpc` extra pins protobuf to the version its stubs were generated for.

`load()` checks the stamp _generated/.generated: each .proto file's sha256 and
the protobuf version the stubs were made for. Stubs that do not match (a
checkout whose .proto files changed, a venv whose pins moved, a build without
them) are regenerated where the directory is writable, and refused with the
reason where it is not; a stale build is never used by mistake.
"""

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "proto")
OUT_DIR = os.path.join(HERE, "_generated")
STAMP = os.path.join(OUT_DIR, ".generated")
SCRATCH_PREFIX = "_generating-"  # a generation in progress, beside OUT_DIR
PROTOS = ["containerd/types/mount.proto",
          "containerd/services/snapshots/v1/snapshots.proto"]
SNAPSHOTS_MODULE = "containerd.services.snapshots.v1.snapshots_pb2"
INSTALL_HINT = "pip install -r requirements.txt, or `make venv`; installed: the `grpc` extra"


class StubsUnavailable(ImportError):
    """grpcio / grpcio-tools / protobuf are not installed, the .proto files are
    missing, or the stubs are missing or stale and cannot be generated."""


def expected_stamp():
    """The stamp of stubs made from the installed .proto files for the
    installed protobuf."""
    missing = [p for p in PROTOS if not os.path.isfile(os.path.join(PROTO_DIR, p))]
    if missing:
        raise StubsUnavailable(
            "the .proto files of containerd's snapshots API are not installed in %s "
            "(missing: %s): this snaplab_grpc was installed without its package data; "
            "install a wheel built by `make wheels`" % (PROTO_DIR, ", ".join(missing)))
    try:
        from google.protobuf import __version__ as protobuf_version
    except ImportError as missing_module:
        raise StubsUnavailable("the containerd gRPC API needs protobuf (%s): %s"
                               % (INSTALL_HINT, missing_module)) from None
    lines = ["protobuf %s" % protobuf_version]
    for proto in PROTOS:
        with open(os.path.join(PROTO_DIR, proto), "rb") as source:
            lines.append("%s %s" % (hashlib.sha256(source.read()).hexdigest(), proto))
    return "\n".join(lines) + "\n"


def generated_stamp():
    """The stamp the stubs in OUT_DIR were made with; None if there are none."""
    try:
        with open(STAMP, encoding="utf-8") as stamp:
            return stamp.read()
    except FileNotFoundError:
        return None


def generate():
    """Run protoc (grpcio-tools) over PROTOS into OUT_DIR, then stamp it."""
    stamp = expected_stamp()
    try:
        from grpc_tools import protoc
        import grpc_tools
    except ImportError as missing:
        raise StubsUnavailable(
            "generating the stubs of the containerd gRPC API needs grpcio-tools (%s): %s"
            % (INSTALL_HINT, missing)) from None
    # The scratch directory is made in HERE, the files land in OUT_DIR.
    if not all(os.access(d, os.W_OK) for d in (HERE, OUT_DIR) if os.path.isdir(d)):
        raise StubsUnavailable(
            "the stubs of the containerd gRPC API in %s are %s and that directory is not "
            "writable: run `python3 -m snaplab_grpc.stubs` as its owner, or install a wheel "
            "built by `make wheels` (it carries them)"
            % (OUT_DIR, "stale" if generated_stamp() else "missing"))
    # Generated beside OUT_DIR, then each file renamed into place and the
    # stamp renamed last: a process importing the stubs meanwhile reads old
    # or new files whole, and an interrupted run leaves no matching stamp.
    # Two processes may generate at once: each has its own scratch, stamp
    # included, and the last rename wins with the same content.
    _remove_stale_scratch()
    scratch = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=HERE)
    try:
        # protoc's own well-known types (google/protobuf/*.proto) ship inside grpc_tools.
        well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        argv = ["grpc_tools.protoc", "-I" + PROTO_DIR, "-I" + well_known,
                "--python_out=" + scratch, "--grpc_python_out=" + scratch] + PROTOS
        if protoc.main(argv) != 0:
            raise StubsUnavailable("protoc failed on %s (its message is above)"
                                   % ", ".join(os.path.join(PROTO_DIR, p) for p in PROTOS))
        # Packages for the generated modules (protoc writes none).
        for proto in PROTOS:
            package = os.path.dirname(proto)
            while package:
                with open(os.path.join(scratch, package, "__init__.py"), "a", encoding="utf-8"):
                    pass
                package = os.path.dirname(package)
        for directory, _, files in os.walk(scratch):
            target = os.path.join(OUT_DIR, os.path.relpath(directory, scratch))
            os.makedirs(target, exist_ok=True)
            for name in files:
                os.replace(os.path.join(directory, name), os.path.join(target, name))
        new_stamp = os.path.join(scratch, os.path.basename(STAMP))
        with open(new_stamp, "w", encoding="utf-8") as stamp_file:
            stamp_file.write(stamp)
        os.replace(new_stamp, STAMP)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove_stale_scratch():
    """A killed generation's scratch directory, once it is old enough that
    no live generation (seconds long) can own it."""
    now = time.time()
    for name in os.listdir(HERE):
        path = os.path.join(HERE, name)
        try:
            stale = name.startswith(SCRATCH_PREFIX) and now - os.lstat(path).st_mtime > 600
        except FileNotFoundError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)


def load():
    """(snapshots_pb2, snapshots_pb2_grpc, mount_pb2), generating them first if needed."""
    try:
        import grpc  # noqa: F401 - the stubs need it at import
    except ImportError as missing:
        raise StubsUnavailable("the containerd gRPC API needs grpcio (%s): %s"
                               % (INSTALL_HINT, missing)) from None
    if generated_stamp() != expected_stamp():
        generate()
    if OUT_DIR not in sys.path:
        # The generated modules import each other as `containerd.…`, their
        # proto package names.
        sys.path.insert(0, OUT_DIR)
    return (importlib.import_module(SNAPSHOTS_MODULE),
            importlib.import_module(SNAPSHOTS_MODULE + "_grpc"),
            importlib.import_module("containerd.types.mount_pb2"))


if __name__ == "__main__":
    generate()
    print("stubs generated in %s" % OUT_DIR)
