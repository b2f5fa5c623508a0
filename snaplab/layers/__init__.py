"""Applying OCI image layer tars to snapshots (docs/semantics.md §8).

A layer is a tar of the changes one image layer makes, with whiteouts for
what it deletes; its DiffID is the sha256 of the uncompressed tar. A layer
never writes outside the snapshot, and a layer that is refused leaves
nothing: apply_layer refuses it before its first write (a scan, then a dry
run against the snapshot), apply_layers writes it in one pass into the
snapshot it made for it and removes that snapshot at the refusal
(docs/hostile-layers.md measures this).

    apply_layers(snapshotter, [tar, ...])   unpack a chain, one committed
                                            snapshot per layer named by its
                                            chainID (idempotent)
    apply_layer(snapshotter, key, tar)      apply one layer to an active
                                            snapshot
    apply_layer_to_directory(tar, dir)      apply one layer to a directory
                                            (a mounted snapshot)
    plan_layers(snapshotter, [tar, ...])    what apply_layers would do
    inspect_layer(tar)                      DiffID and safety scan, no writes

The modules, each importing only those above it (containerd's lines):

    stream.py    reading a layer's bytes fast: decompressing and hashing on
                 threads, kernel copies of file data
    archive.py   reading a layer: decompression, tar members, the names and
                 sizes it may hold; the safety scan (inspect_layer)
    tree.py      the directory a layer is written into, symlinks resolved
                 inside it (continuity's RootPath), and the dry run
    apply.py     writing one scanned layer into a directory: entries,
                 whiteouts, hardlinks, owners, xattrs, times
    unpack.py    layers and snapshots: chainIDs, apply_layer, plan_layers,
                 apply_layers (extract keys, leases, commit, labels)
"""

from .apply import apply_layer_to_directory
from .archive import clean_name, detect_compression, inspect_layer, whiteout_of
from .unpack import apply_layer, apply_layers, chain_ids, plan_layers

__all__ = [
    "apply_layer", "apply_layer_to_directory", "apply_layers", "chain_ids", "clean_name",
    "detect_compression", "inspect_layer", "plan_layers", "whiteout_of",
]
