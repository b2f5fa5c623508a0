"""Generate and import the Python stubs of containerd's snapshots API.

    python3 -m snaplab_grpc.stubs        # (re)generate; `make venv` runs it

The stubs are generated from the .proto files under proto/ with grpcio-tools
into _generated/ beside this file (git-ignored), at build time rather than
committed: generated code follows the grpcio/protobuf versions pinned in
requirements.txt, and the .proto files stay the one source. `load()`
regenerates when a .proto file is newer than the stubs (a checkout that
changed them), so a stale build cannot be used by mistake.
"""

import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "proto")
OUT_DIR = os.path.join(HERE, "_generated")
PROTOS = ["containerd/types/mount.proto",
          "containerd/services/snapshots/v1/snapshots.proto"]
SNAPSHOTS_MODULE = "containerd.services.snapshots.v1.snapshots_pb2"


class StubsUnavailable(ImportError):
    """grpcio / grpcio-tools are not installed, or generation failed."""


def _stale():
    stamp = os.path.join(OUT_DIR, ".generated")
    if not os.path.exists(stamp):
        return True
    built = os.path.getmtime(stamp)
    return any(os.path.getmtime(os.path.join(PROTO_DIR, p)) > built for p in PROTOS)


def generate():
    """Run protoc (grpcio-tools) over PROTOS into OUT_DIR."""
    try:
        from grpc_tools import protoc
        import grpc_tools
    except ImportError as missing:
        raise StubsUnavailable(
            "the containerd gRPC API needs grpcio and grpcio-tools "
            "(pip install -r requirements.txt, or `make venv`): %s" % missing) from None
    os.makedirs(OUT_DIR, exist_ok=True)
    # protoc's own well-known types (google/protobuf/*.proto) ship inside grpc_tools.
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    argv = ["grpc_tools.protoc", "-I" + PROTO_DIR, "-I" + well_known,
            "--python_out=" + OUT_DIR, "--grpc_python_out=" + OUT_DIR] + PROTOS
    if protoc.main(argv) != 0:
        raise StubsUnavailable("protoc failed on %s" % ", ".join(PROTOS))
    # Packages for the generated modules (protoc writes none).
    for proto in PROTOS:
        package = os.path.dirname(proto)
        while package:
            init = os.path.join(OUT_DIR, package, "__init__.py")
            if not os.path.exists(init):
                with open(init, "w", encoding="utf-8"):
                    pass
            package = os.path.dirname(package)
    with open(os.path.join(OUT_DIR, ".generated"), "w", encoding="utf-8") as stamp:
        stamp.write("generated from %s\n" % ", ".join(PROTOS))


def load():
    """(snapshots_pb2, snapshots_pb2_grpc, mount_pb2), generating them first if needed."""
    try:
        import grpc  # noqa: F401 - the stubs need it at import
    except ImportError as missing:
        raise StubsUnavailable(
            "the containerd gRPC API needs grpcio (pip install -r requirements.txt, "
            "or `make venv`): %s" % missing) from None
    if _stale():
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
