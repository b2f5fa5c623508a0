"""What each `snaplab` verb does: check its arguments, open the snapshotter,
call it, and write ctr's output (snaplab.ctr_output) or --json.

snaplab.cli parses the command line (each verb's help is there) and calls
cmd_VERB(opener, args, settings, out) with opener(create, read_only=False)
opening the snapshotter of the settings (root, backend, options, json).
"""

import json
import os
import sys
import time

from . import errors
from . import labels as labelrules
from . import layers as layerlib
from . import mount as mountlib
from .ctr_output import (format_findings, format_labels, format_list, format_tree, format_usage,
                         go_json, machine_json, tabulate, tree_json)
from .types import Info, Kind


class UsageError(errors.InvalidArgument):
    """The command line itself is wrong (exit code of InvalidArgument)."""


class Failure(Exception):
    """An error re-worded by a verb (rm's "failed to remove"), keeping its exit code."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


# -- arguments and errors ---------------------------------------------------


def parse_label(text):
    """'k=v' -> (k, v); the value may be empty (deletes in `label`)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise UsageError("label %r must be KEY=VALUE (an empty VALUE deletes)" % text)
    if not key:
        raise UsageError("label %r has an empty key" % text)
    return key, value


def parse_labels(texts):
    return dict(parse_label(text) for text in texts or ())


def gc_root_label():
    """containerd.io/gc.root's value as ctr sets it: RFC 3339 UTC, seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def describe(err):
    """One line for an error: OSErrors as 'reason: path', others as str()."""
    if isinstance(err, Failure):
        text = str(err)
    elif isinstance(err, OSError) and err.strerror:
        text = err.strerror
        if err.filename is not None:
            text += ": %s" % (err.filename,)
        if err.filename2 is not None:
            text += " -> %s" % (err.filename2,)
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split("\n"))


def exit_code_of(err):
    code = getattr(err, "exit_code", None)
    if isinstance(code, int):
        return code
    return 1


# -- verbs -------------------------------------------------------------------
# Each returns an exit code.


def _key(value, what="key"):
    """A key that names an existing snapshot (a key made before the rule on
    control characters can still be looked up, committed and removed)."""
    labelrules.validate_existing_key(value, what)
    return value


def _new_key(value, what="key"):
    """A key for a snapshot to be made."""
    labelrules.validate_key(value, what)
    return value


def _create(verb_kind, opener, args, settings, out):
    key = _new_key(args.key)
    parent = args.parent
    if parent is not None and parent == "":
        raise errors.InvalidArgument("parent must not be empty; leave it out for a "
                                     "snapshot without parent")
    if parent:
        _key(parent, "parent")
    labels = {}
    if verb_kind == Kind.ACTIVE:
        labels[labelrules.GC_ROOT] = gc_root_label()
    labels.update(parse_labels(args.label))
    with opener(True) as sn:
        method = sn.prepare if verb_kind == Kind.ACTIVE else sn.view
        mounts = method(key, parent or "", labels=labels)
    if settings.json:
        out.write(machine_json([m.to_dict() for m in mounts]))
        return 0
    if args.target:
        for m in mounts:
            out.write(m.command_line(args.target) + "\n")
    if args.mounts:
        out.write(go_json([m.to_dict() for m in mounts]))
    return 0


def cmd_prepare(opener, args, settings, out):
    return _create(Kind.ACTIVE, opener, args, settings, out)


def cmd_view(opener, args, settings, out):
    return _create(Kind.VIEW, opener, args, settings, out)


def cmd_mounts(opener, args, settings, out):
    key = _key(args.key)
    with opener(False, read_only=True) as sn:
        mounts = sn.mounts(key)
    if settings.json:
        out.write(machine_json([m.to_dict() for m in mounts]))
    else:
        for m in mounts:
            out.write(m.command_line(args.target) + "\n")
    return 0


def cmd_commit(opener, args, settings, out):
    name = _new_key(args.name, "name")
    key = _key(args.key)
    labels = {labelrules.GC_ROOT: gc_root_label()}
    labels.update(parse_labels(args.label))
    with opener(False) as sn:
        sn.commit(name, key, labels=labels)
        info = sn.stat(name) if settings.json else None
    if settings.json:
        out.write(machine_json(info.to_dict()))
    return 0


def cmd_rm(opener, args, settings, out):
    keys = [_key(k) for k in args.keys]  # all checked before anything is removed
    removed = []
    try:
        with opener(False) as sn:
            for key in keys:
                try:
                    sn.remove(key)
                except (errors.SnapshotError, OSError) as err:
                    raise Failure("failed to remove %s: %s" % (json.dumps(key), describe(err)),
                                  exit_code_of(err)) from err
                removed.append(key)
    finally:
        if settings.json:
            out.write(machine_json({"removed": removed}))
    return 0


def cmd_ls(opener, args, settings, out):
    with opener(False, read_only=True) as sn:
        infos = sn.list(*args.filter)
    if settings.json:
        out.write(machine_json([info.to_dict() for info in infos]))
    else:
        out.write(format_list(infos))
    return 0


def cmd_tree(opener, args, settings, out):
    with opener(False, read_only=True) as sn:
        infos = sn.list(*args.filter)
    if settings.json:
        out.write(machine_json(tree_json(infos)))
    else:
        out.write(format_tree(infos))
    return 0


def cmd_info(opener, args, settings, out):
    key = _key(args.key)
    with opener(False, read_only=True) as sn:
        info = sn.stat(key)
    out.write(machine_json(info.to_dict()) if settings.json else go_json(info.to_dict()))
    return 0


def cmd_usage(opener, args, settings, out):
    keys = [_key(k) for k in args.keys]
    if keys and args.filter:
        raise UsageError("usage: give KEYs or --filter, not both")
    entries = []
    with opener(False, read_only=True) as sn:
        if not keys:
            keys = [info.name for info in sn.list(*args.filter)]
        for key in keys:
            entries.append((key, sn.usage(key)))
    if settings.json:
        out.write(machine_json([{"key": k, "size": u.size, "inodes": u.inodes}
                                for k, u in entries]))
    else:
        out.write(format_usage(entries, raw=args.bytes))
    return 0


def cmd_label(opener, args, settings, out):
    name = _key(args.name, "name")
    wanted = parse_labels(args.labels)
    with opener(False, read_only=not wanted) as sn:
        if wanted:
            paths = ["labels." + k for k in wanted]
            info = sn.update(Info(kind=Kind.UNKNOWN, name=name, labels=wanted), *paths)
        else:
            info = sn.stat(name)
    if settings.json:
        out.write(machine_json(info.to_dict()))
    else:
        out.write(format_labels(info.labels))
    return 0


def cmd_cleanup(opener, args, settings, out):
    status = "done"
    with opener(False) as sn:
        try:
            sn.cleanup()
        except errors.NotImplemented as err:
            status = "not implemented"
            sys.stderr.write("snaplab: nothing to clean up: %s\n" % describe(err))
    if settings.json:
        out.write(machine_json({"cleanup": status}))
    return 0


def cmd_capabilities(opener, args, settings, out):
    # Not read-only: overlay asks the kernel with a probe mount in the root.
    with opener(False) as sn:
        capabilities = sn.capabilities()
    if settings.json:
        out.write(machine_json({"capabilities": capabilities}))
    else:
        out.write("".join(name + "\n" for name in capabilities))
    return 0


def cmd_doctor(opener, args, settings, out):
    with opener(False, read_only=not args.fix) as sn:
        if args.fix:
            sn.cleanup()
        findings = sn.doctor()
    if settings.json:
        out.write(machine_json({"clean": not findings,
                                "findings": [f.to_dict() for f in findings]}))
    else:
        out.write(format_findings(findings))
    return 1 if findings else 0


def _directory(target):
    if not target:
        raise errors.InvalidArgument("the mount target must not be empty")
    path = os.path.abspath(target)
    if not os.path.lexists(path):
        raise errors.NotFound("mount target %s does not exist" % path)
    if not os.path.isdir(path):
        raise errors.InvalidArgument("mount target %s is not a directory" % path)
    return path


def cmd_mount(opener, args, settings, out):
    key = _key(args.key)
    target = _directory(args.target)
    if mountlib.is_mountpoint(target):
        raise errors.FailedPrecondition(
            "%s is already a mount point; unmount it first (snaplab umount %s)"
            % (target, target))
    with opener(False, read_only=True) as sn:
        mounts = sn.mounts(key)
    mountlib.mount_all(mounts, target)
    if settings.json:
        out.write(machine_json({"target": target, "key": key,
                                "mounts": [m.to_dict() for m in mounts]}))
    return 0


def cmd_umount(opener, args, settings, out):
    target = _directory(args.target)
    if not mountlib.is_mountpoint(target):
        raise errors.NotFound("nothing is mounted at %s" % target)
    mountlib.unmount_all(target)
    if settings.json:
        out.write(machine_json({"target": target, "unmounted": True}))
    return 0


def cmd_apply_layers(opener, args, settings, out):
    labels = parse_labels(args.label)
    with opener(True) as sn:
        results = layerlib.apply_layers(sn, args.tars, labels=labels,
                                        max_expanded_size=args.max_expanded_size,
                                        diff_ids=args.diff_ids)
    if settings.json:
        out.write(machine_json({
            "layers": [{"path": path, "diff_id": r.diff_id, "chain_id": r.chain_id,
                        "applied": r.applied} for path, r in zip(args.tars, results)],
            "chain_id": results[-1].chain_id}))
    else:
        rows = [("LAYER", "DIFF-ID", "CHAIN-ID", "STATUS")]
        rows += [(path, r.diff_id, r.chain_id, "applied" if r.applied else "present")
                 for path, r in zip(args.tars, results)]
        out.write(tabulate(rows))
    return 0


def cmd_apply_layer(opener, args, settings, out):
    key = _key(args.key)
    applied = []
    with opener(False) as sn:
        for path in args.tars:
            applied.append({"path": path, "diff_id": layerlib.apply_layer(
                sn, key, path, max_expanded_size=args.max_expanded_size)})
    if settings.json:
        out.write(machine_json({"key": key, "layers": applied}))
    else:
        for layer in applied:
            out.write(layer["diff_id"] + "\n")
    return 0


def cmd_serve(opener, args, settings, out):
    # Imported here: the core and the other verbs work without grpcio.
    from snaplab_grpc import stubs  # standard library only
    try:
        from snaplab_grpc import server
    except stubs.StubsUnavailable as unavailable:
        # It names what is missing: a package, the .proto files, a writable place.
        raise errors.NotImplemented("snaplab serve: %s" % unavailable) from None
    except ImportError as missing:
        raise errors.NotImplemented(
            "snaplab serve needs the Python packages grpcio, grpcio-tools and protobuf "
            "(pip install -r requirements.txt, or make venv): %s" % missing) from None
    server.configure_logging()
    socket_path = server.SocketPath(args.socket)  # checked before the root is opened
    with opener(True) as sn:
        return server.serve(sn, socket_path, "%s snapshotter at %s" % (
            settings.backend, os.path.abspath(settings.root)))
