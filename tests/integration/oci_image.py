"""A small OCI image built offline, for running containers on a snapshotter.

    image = whiteout_image()              # the image's layers, as data
    image.write_archive("/tmp/img.tar")   # an OCI image layout tarball for `ctr images import`
    image.expected_tree()                 # {path: Entry}: the root a snapshotter must give
    image.expected_output()               # what the entrypoint prints in that root

Two layers. The first holds a shell and its libraries, copied from the host
(the host's dash and what `ldd` names: no network, no package), the script
the container runs, and a tree under /data. The second removes a file and a
directory with whiteouts (`.wh.<name>`), replaces a directory's content with
an opaque marker (`.wh..wh..opq`), rewrites one file, changes one mode and
adds files, a hard link and a symlink. It is gzip-compressed, the first is
not, so both layer media types are unpacked.

The expected root is computed here from the layers (whiteouts and opaque
directories applied by this module's own reading of the OCI layer rules), so
a snapshotter is compared with the specification and not only with another
snapshotter. Archives are byte-for-byte reproducible (fixed mtimes, owners,
order, gzip header), so digests are stable.
"""

import dataclasses
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import tarfile
from typing import Dict, List, Optional, Tuple

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = MEDIA_LAYER + "+gzip"
NAME_ANNOTATION = "io.containerd.image.name"  # ctr's import names the image by it
REF_ANNOTATION = "org.opencontainers.image.ref.name"
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MTIME = 1700000000  # every entry's: the archives are reproducible
SCRIPT = "/show.sh"
DATA = "/data"
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
                 "s390x": "s390x", "riscv64": "riscv64"}

# What the container runs: it walks /data (sorted, as the shell's globs are)
# and prints each entry's kind and each file's lines, then the top-level
# names. Only the shell's builtins: the image has no other program.
SHOW_SCRIPT = r"""#!/bin/sh
walk() {
  for path in "$1"/* "$1"/.[!.]*; do
    if [ -L "$path" ]; then
      echo "link $path"
    elif [ -d "$path" ]; then
      echo "dir $path"
      walk "$path"
    elif [ -f "$path" ]; then
      echo "file $path"
      while IFS= read -r line || [ -n "$line" ]; do echo "  $line"; done < "$path"
    fi
  done
}
walk /data
for path in /* /.[!.]*; do
  [ -e "$path" ] || [ -L "$path" ] && echo "top $path"
done
echo "done"
"""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One path of a layer or of a root: kind file, dir, symlink or hardlink
    (layers only: `target` is the linked path); mode without the type bits."""

    kind: str
    mode: int
    content: bytes = b""
    target: str = ""


def directory(mode=0o755):
    return Entry("dir", mode)


def regular(content, mode=0o644):
    return Entry("file", mode, content if isinstance(content, bytes) else content.encode())


def symlink(target):
    return Entry("symlink", 0o777, target=target)


def hardlink(target, mode=0o644):
    """The header's mode is the target's: containerd's applier chmods the
    shared inode to it (as docker's tar writer gives it, the target's own)."""
    return Entry("hardlink", mode, target=target)


Layer = List[Tuple[str, Entry]]  # absolute paths, parents before children


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(layer):
    """The uncompressed tar of a layer: root-owned, fixed mtime, in order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, entry in layer:
            info = tarfile.TarInfo(path.lstrip("/") + ("/" if entry.kind == "dir" else ""))
            info.mtime, info.mode, info.uid, info.gid = MTIME, entry.mode, 0, 0
            data = None
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
            elif entry.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, entry.target.lstrip("/")
            else:
                info.size, data = len(entry.content), io.BytesIO(entry.content)
            tar.addfile(info, data)
    return out.getvalue()


def apply_layer(tree, layer):
    """Apply a layer to `tree` ({path: Entry}) as the OCI spec says: a
    whiteout removes its name (and what is below), an opaque marker hides
    what lower layers have in its directory, a hard link copies its target."""
    opaque = [os.path.dirname(path) for path, _ in layer if os.path.basename(path) == OPAQUE]
    for parent in opaque:
        for path in [p for p in tree if p.startswith(parent.rstrip("/") + "/")]:
            del tree[path]
    for path, entry in layer:
        name, parent = os.path.basename(path), os.path.dirname(path)
        if name == OPAQUE:
            continue
        if name.startswith(WHITEOUT):
            gone = os.path.join(parent, name[len(WHITEOUT):])
            for doomed in [p for p in tree if p == gone or p.startswith(gone + "/")]:
                del tree[doomed]
        elif entry.kind == "hardlink":
            tree[path] = tree[entry.target]
        else:
            tree[path] = entry
    return tree


@dataclasses.dataclass
class Image:
    """An image's layers and entrypoint; `name` is what ctr imports it as."""

    name: str
    layers: List[Layer]
    compressed: List[bool]
    entrypoint: List[str]

    def __post_init__(self):
        self._blobs: Dict[str, bytes] = {}
        self.manifest_digest: Optional[str] = None
        self.diff_ids = [sha256(layer_tar(layer)) for layer in self.layers]

    def chain_ids(self):
        """The layers' chain IDs: the names of the committed snapshots an
        unpack makes (the last is the image's top snapshot)."""
        chain = []
        for diff_id in self.diff_ids:
            below = chain[-1] if chain else None
            chain.append(sha256(("%s %s" % (below, diff_id)).encode()) if below else diff_id)
        return chain

    def expected_tree(self):
        tree = {}
        for layer in self.layers:
            apply_layer(tree, layer)
        return tree

    def expected_output(self):
        """What SHOW_SCRIPT prints in the expected root: depth first, each
        directory's names in byte order (as the shell's globs sort them)."""
        tree = self.expected_tree()
        lines = []
        for path in sorted((p for p in tree if p.startswith(DATA + "/")), key=_components):
            entry = tree[path]
            kind = {"symlink": "link", "dir": "dir", "file": "file"}[entry.kind]
            lines.append("%s %s" % (kind, path))
            if entry.kind == "file":
                lines += ["  " + line for line in entry.content.decode().splitlines()]
        lines += ["top " + p for p in sorted(p for p in tree if p.count("/") == 1)]
        return "\n".join(lines + ["done"]) + "\n"

    def _add_blob(self, data):
        digest = sha256(data)
        self._blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    def blobs(self):
        """{digest: bytes} of every blob (layers, config, manifest); sets manifest_digest."""
        self._blobs = {}
        layer_descriptors = []
        for layer, compress in zip(self.layers, self.compressed):
            data = layer_tar(layer)
            if compress:
                data = gzip.compress(data, mtime=0)
            layer_descriptors.append(dict(mediaType=MEDIA_LAYER_GZIP if compress else MEDIA_LAYER,
                                          **self._add_blob(data)))
        config = {
            "architecture": ARCHITECTURES.get(platform.machine(), platform.machine()),
            "os": "linux",
            "config": {"Entrypoint": self.entrypoint, "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids},
            "history": [{"created_by": "snaplab tests/integration/oci_image.py layer %d" % n}
                        for n in range(1, len(self.layers) + 1)],
        }
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                    "config": dict(mediaType=MEDIA_CONFIG, **self._add_blob(_json(config))),
                    "layers": layer_descriptors}
        manifest_descriptor = self._add_blob(_json(manifest))
        self.manifest_digest = manifest_descriptor["digest"]
        return dict(self._blobs)

    def index(self):
        tag = self.name.rsplit(":", 1)[1]
        self.blobs()
        return {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [{
            "mediaType": MEDIA_MANIFEST, "digest": self.manifest_digest,
            "size": len(self._blobs[self.manifest_digest]),
            "annotations": {NAME_ANNOTATION: self.name, REF_ANNOTATION: tag}}]}

    def write_archive(self, path):
        """An OCI image layout as one tar file (what `ctr images import` reads)."""
        index = self.index()
        files = [("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
                 ("index.json", _json(index))]
        files += [("blobs/sha256/" + digest.split(":", 1)[1], data)
                  for digest, data in sorted(self._blobs.items())]
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for directory_name in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(directory_name)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
                tar.addfile(info)
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, MTIME
                tar.addfile(info, io.BytesIO(data))
        return path


def _components(path):
    return path.encode().split(b"/")


def _json(document):
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def host_program(program):
    """[(path in the image, Entry)] for a dynamic host program and the
    libraries its loader needs (`ldd`), each at the path ldd gives, with
    the content of the file it resolves to; its parent directories first."""
    binary = shutil.which(program)
    if binary is None:
        raise FileNotFoundError("%s is not installed" % program)
    listing = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libraries = sorted(set(re.findall(r"(?:=>\s*|^\s*)(/\S+)\s+\(0x", listing, re.MULTILINE)))
    entries, parents = [], set()
    programs = [("/bin/sh", binary)] + [(library, library) for library in libraries]
    for path, source in programs:
        parent_parts = os.path.dirname(path).strip("/").split("/")
        for depth in range(1, len(parent_parts) + 1):
            parent = "/" + "/".join(parent_parts[:depth])
            if parent not in parents:
                parents.add(parent)
                entries.append((parent, directory()))
        with open(os.path.realpath(source), "rb") as data:
            entries.append((path, regular(data.read(), 0o755)))
    return entries


def whiteout_image(name="snaplab.test/whiteouts:1"):
    """The two-layer image of the module docstring."""
    base = host_program("dash") + [
        (SCRIPT, regular(SHOW_SCRIPT, 0o755)),
        # mount points runc would otherwise create in the container's own layer
        ("/dev", directory()), ("/proc", directory(0o555)), ("/sys", directory(0o555)),
        ("/run", directory()), ("/etc", directory()), ("/etc/motd", regular("layer one\n")),
        (DATA, directory()),
        (DATA + "/gone.txt", regular("removed by a whiteout in layer two\n")),
        (DATA + "/kept.txt", regular("kept from layer one\n", 0o640)),
        (DATA + "/rewritten.txt", regular("layer one's version\n")),
        (DATA + "/chmod.txt", regular("mode 0644 in layer one, 0600 in layer two\n")),
        (DATA + "/gone-dir", directory()),
        (DATA + "/gone-dir/inside.txt", regular("goes with its directory\n")),
        (DATA + "/opaque", directory(0o750)),
        (DATA + "/opaque/old.txt", regular("hidden by the opaque marker\n")),
        (DATA + "/opaque/old-sub", directory()),
        (DATA + "/opaque/old-sub/deep.txt", regular("hidden too\n")),
        (DATA + "/private", directory(0o700)),
        (DATA + "/private/secret.txt", regular("0600 in a 0700 directory\n", 0o600)),
        (DATA + "/motd-link", symlink("/etc/motd")),
    ]
    top = [
        (DATA, directory()),
        (DATA + "/" + WHITEOUT + "gone.txt", regular("")),
        (DATA + "/" + WHITEOUT + "gone-dir", regular("")),
        (DATA + "/rewritten.txt", regular("layer two's version\n")),
        (DATA + "/chmod.txt", regular("mode 0644 in layer one, 0600 in layer two\n", 0o600)),
        (DATA + "/opaque", directory(0o750)),
        (DATA + "/opaque/" + OPAQUE, regular("")),
        (DATA + "/opaque/new.txt", regular("the opaque directory's only file\n")),
        (DATA + "/added", directory()),
        (DATA + "/added/one.txt", regular("added in layer two\n")),
        (DATA + "/added/same-inode.txt", hardlink(DATA + "/added/one.txt")),
        (DATA + "/added/relative-link", symlink("../kept.txt")),
    ]
    return Image(name, [base, top], compressed=[False, True], entrypoint=["/bin/sh", SCRIPT])
