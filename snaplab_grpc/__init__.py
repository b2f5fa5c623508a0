"""containerd's snapshots gRPC API for snaplab — the optional part that needs grpcio.

- `stubs`: the Python stubs of the .proto files in proto/, generated with
  grpcio-tools at build time (`python3 -m snaplab_grpc.stubs`, run by
  `make venv`) into snaplab_grpc/_generated (not in git).
- `convert`: the one place that turns snaplab's types and errors into
  messages and gRPC status codes, and back.

The core (`snaplab/`) never imports this package: Ansible ships the core to
nodes, which need not have grpcio.
"""
