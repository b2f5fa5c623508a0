"""The `snaplab` command line: containerd's `ctr snapshots` verbs on a snaplab root.

Usage::

    snaplab [--root DIR] [--backend NAME] [--option K=V ...] [--json] VERB ...

Global options may also follow the verb (`snaplab ls --json`); given both
before and after the verb, the later one wins (`--option`s add up).

    --root DIR       the snapshotter root (env SNAPLAB_ROOT; /var/lib/snaplab)
    --backend NAME   native, overlay, ... (env SNAPLAB_BACKEND; overlay). A root
                     belongs to the backend that created it; another backend is
                     refused with FailedPrecondition naming the right one.
    --option K=V     a backend option: async_remove=true, upperdir_label=true,
                     mount_options=a,b. Booleans take true/false, yes/no, on/off,
                     1/0; list options split on commas (repeating one adds up).
    --json           machine-readable output (shapes below)

Verbs (ctr's names and aliases; the text output is ctr's, byte for byte, except
that `label` sorts what ctr prints in Go map order and a mount without options
prints no `-o`; `--filter` on ls/tree/usage is snaplab's own):

    prepare [-t PATH] [--mounts] [--label K=V]... KEY [PARENT]
        Prepare an active snapshot; adds containerd.io/gc.root=<RFC 3339 now>
        as ctr does (an explicit --label containerd.io/gc.root=... wins; an
        empty value leaves it out). -t prints `mount -t ...` lines for PATH,
        --mounts prints the mounts as JSON (ctr's shape: 4-space indent).
    view [-t PATH] [--mounts] [--label K=V]... KEY [PARENT]
        The same for a read-only view, without the gc.root label.
    mounts (m) TARGET KEY
        Print the `mount -t TYPE SOURCE TARGET -o OPTIONS` lines of KEY.
    commit [--label K=V]... NAME KEY
        Commit active KEY as NAME, with the gc.root label (as ctr).
    rm (del, delete, remove) KEY...
        Remove each in order; stop at the first failure:
        `failed to remove "KEY": <reason>` (exit code of the reason).
    ls (list) [--filter F]...
        `KEY PARENT KIND` columns, laid out as Go's tabwriter does for ctr
        (each column as wide as its widest cell + 1 space, trailing one too).
    tree [--filter F]...
        ctr's tree: " name", "  \\_ child", "    \\_ grandchild".
    info KEY
        The Info as JSON indented by 4 spaces, as ctr prints it.
    usage [-b] [--filter F]... [KEY...]
        `KEY SIZE INODES`; SIZE as ctr's `%02.1f` with 1024 steps
        ("0.0 B", "4.0 KiB", "7.6 MiB"), raw bytes with -b; no KEY = all.
    label NAME [K=V ...]
        Set labels (an empty value deletes one; other labels stay); print the
        resulting labels as `k=v,k=v` (sorted by key). No K=V: just show them.
    cleanup
        Remove on-disk data no longer referenced (orphans, async removals).
        A backend without a cleanup (NotImplemented) is not an error: exit 0
        with a note on stderr, as containerd's GC ignores NotImplemented from
        Cleanup -- after the call there is nothing unreferenced left that the
        backend could remove, which is what the caller asked for.
    doctor [--fix]          (beyond ctr)
        Report every inconsistency between the metadata, the storage
        (directories, subvolumes, datasets), the mounts and the temporary
        names of the root -- what a killed operation leaves -- one per line:
        `KIND SUBJECT: DETAIL (fix: WHAT)`. Reads only (works on a root
        mounted read-only). Exit 0 when there is nothing, 1 when there are
        findings. --fix runs cleanup (which makes every repair shown with a
        fix) and then reports what is left.
    mount TARGET KEY        (beyond ctr; NOT ctr's alias of `mounts`)
        Really mount KEY's mounts at TARGET, an existing directory that is not
        already a mount point. Nothing is printed.
    umount TARGET           (beyond ctr)
        Unmount everything stacked on TARGET; NotFound if nothing is mounted
        there. It does not check who mounted it (like umount(8)).
    apply-layers [--label K=V]... [--max-expanded-size SIZE] TAR...
                            (beyond ctr; as containerd unpacks)
        Unpack OCI layer tars (plain, gzip, zstd), bottom layer first, into
        committed snapshots named by their chainIDs, each on the previous
        one; a chainID already committed is skipped, so a re-run changes
        nothing. Prints `LAYER DIFF-ID CHAIN-ID STATUS` (applied or present).
        A layer that would write outside its snapshot is refused
        (InvalidArgument) before anything is written.
        --max-expanded-size SIZE refuses a layer whose uncompressed tar is
        larger (a decompression bomb), before anything is written; a layer
        that would not fit in the free space (or inodes) is always refused.
    apply-layer [--max-expanded-size SIZE] KEY TAR...  (beyond ctr)
        Apply layer tars, in order, to the active snapshot KEY (whiteouts
        delete what they name); prints each layer's DiffID.
    serve --socket PATH     (beyond ctr; needs grpcio: snaplab_grpc)
        Serve the root over containerd's snapshots gRPC API on the unix
        socket PATH (0600), for containerd's proxy_plugins. Logs to stderr;
        one "ready" line once it answers; stops on SIGTERM/SIGINT (calls in
        flight finish), removes its socket, exits 0. A path that is not a
        socket is refused (FailedPrecondition), as is a socket someone
        answers on; a dead one is replaced. Without grpcio: NotImplemented.

Label arguments must be K=V with a non-empty K (ctr would read a bare `K` as
K=true; snaplab refuses it, so that a typo cannot set a label).

Verbs that only read or remove never create a root: on a directory without
metadata.db they fail with NotFound ("no snapshotter root at ..."), so a
mistyped --root is noticed. prepare and view create the root if needed.
Verbs that only read (mounts, ls, tree, info, usage, label without K=V,
mount, doctor without --fix) write nothing to the root, so they work on a
root whose filesystem is mounted read-only.

--json output (one JSON document on stdout; Info is Info.to_dict(): Kind, Name,
Parent and Labels omitted when empty, Created, Updated; Mount is
Mount.to_dict(): Type, Source, Target, Options):

    prepare, view, mounts   [Mount, ...]
    commit                  Info of the committed snapshot
    rm                      {"removed": [KEY, ...]} -- also printed when a
                            removal fails, listing those removed before it
    ls                      [Info, ...]
    tree                    [Node, ...] roots in walk order; Node is Info plus
                            "Children": [Node, ...]; a parent the walk did not
                            return is {"Name": ..., "Children": [...]}
    info, label             Info
    usage                   [{"key": KEY, "size": BYTES, "inodes": N}, ...]
    cleanup                 {"cleanup": "done"} or {"cleanup": "not implemented"}
    doctor                  {"clean": BOOL, "findings": [{"kind": K, "subject": S,
                            "detail": D, "fix": F}, ...]} (after the repairs with --fix)
    mount                   {"target": ABS_TARGET, "key": KEY, "mounts": [Mount, ...]}
    umount                  {"target": ABS_TARGET, "unmounted": true}
    apply-layers            {"layers": [{"path": TAR, "diff_id": D, "chain_id": C,
                            "applied": BOOL}, ...], "chain_id": TOP_CHAIN_ID}
    apply-layer             {"key": KEY, "layers": [{"path": TAR, "diff_id": D}, ...]}

Errors: one line `snaplab: <message>` on stderr (also with --json), no
traceback, and the exit code of the error class (snaplab.errors):

    0    success
    1    any other failure: OSError, mount(2)/umount(2), an unreadable
         metadata database (sqlite3 errors)
    2    NotFound
    3    AlreadyExists
    4    FailedPrecondition
    5    InvalidArgument, and every command-line usage error (unknown verb or
         option, missing argument, bad K=V): bad input is bad input
    6    NotImplemented
    130  interrupted (SIGINT)

So 2 always means NotFound: argparse's own exit status 2 is not used.
"""

import argparse
import json
import os
import sqlite3
import sys
import time

from . import errors
from . import labels as labelrules
from . import layers as layerlib
from . import mount as mountlib
from . import backends
from . import options as optionlib
from .types import Info, Kind

DEFAULT_ROOT = "/var/lib/snaplab"
DEFAULT_BACKEND = "overlay"
ROOT_ENV = "SNAPLAB_ROOT"
BACKEND_ENV = "SNAPLAB_BACKEND"

SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


class UsageError(errors.InvalidArgument):
    """The command line itself is wrong (exit code of InvalidArgument)."""


class Failure(Exception):
    """An error re-worded by a verb (rm's "failed to remove"), keeping its exit code."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


# -- pure helpers (unit-tested) --------------------------------------------


def human_size(size):
    """ctr's size text: go-units CustomSize("%02.1f %s", size, 1024, KiB...).

    Go's %02.1f pads to width 2 with zeros, which never shows: "0.0 B".
    """
    value = float(size)
    unit = 0
    while value >= 1024 and unit < len(SIZE_UNITS) - 1:
        value /= 1024
        unit += 1
    return "%02.1f %s" % (value, SIZE_UNITS[unit])


def tabulate(rows):
    """Rows of cells as Go's tabwriter(minwidth 1, tabwidth 8, padding 1, ' ')
    lays out "cell\\tcell\\t...\\t\\n" lines: every column is as wide as its
    widest non-empty cell plus one space (at least 1), the last one included.
    Returns the text, one "\\n"-terminated line per row.
    """
    widths = []
    for row in rows:
        for index, cell in enumerate(row):
            if index == len(widths):
                widths.append(1)
            if cell:
                widths[index] = max(widths[index], len(cell) + 1)
    return "".join(
        "".join(cell.ljust(widths[index]) for index, cell in enumerate(row)) + "\n"
        for row in rows)


def format_list(infos):
    """`ctr snapshots ls` output for a list of Info."""
    rows = [("KEY", "PARENT", "KIND")]
    rows += [(info.name, info.parent or "", str(info.kind)) for info in infos]
    return tabulate(rows)


def format_usage(entries, raw=False):
    """`ctr snapshots usage` output for [(key, Usage)]."""
    rows = [("KEY", "SIZE", "INODES")]
    for key, usage in entries:
        size = "%d" % usage.size if raw else human_size(usage.size)
        rows.append((key, size, "%d" % usage.inodes))
    return tabulate(rows)


class _Node:
    __slots__ = ("info", "children")

    def __init__(self, info):
        self.info = info
        self.children = []


def build_tree(infos):
    """ctr's snapshotTree: (nodes in first-seen order, index by name).

    A parent not (yet) seen gets a placeholder node without parent, filled in
    if it shows up later; a placeholder never filled in prints as a root.
    """
    nodes = []
    index = {}

    def add(info):
        node = index.get(info.name)
        if node is None:
            node = _Node(info)
            nodes.append(node)
            index[info.name] = node
        else:
            node.info = info
        if info.parent:
            parent = index.get(info.parent)
            if parent is None:
                parent = add(Info(kind=Kind.UNKNOWN, name=info.parent))
            parent.children.append(info.name)
        return node

    for info in infos:
        add(info)
    return nodes, index


def format_tree(infos):
    """`ctr snapshots tree` output for a list of Info in walk order."""
    nodes, index = build_tree(infos)
    lines = []

    def emit(name, level):
        prefix = "  " * level + ("\\_" if level else "")
        lines.append(prefix + " " + name + "\n")
        for child in index[name].children:
            emit(child, level + 1)

    for node in nodes:
        if not node.info.parent:
            emit(node.info.name, 0)
    return "".join(lines)


def tree_json(infos):
    """The --json shape of `tree`: nested Info dicts with "Children"."""
    nodes, index = build_tree(infos)
    known = {info.name for info in infos}

    def convert(name):
        node = index[name]
        out = node.info.to_dict() if name in known else {"Name": name}
        out["Children"] = [convert(child) for child in node.children]
        return out

    return [convert(node.info.name) for node in nodes if not node.info.parent]


def format_labels(labels):
    """`ctr snapshots label` output (ctr prints map order; snaplab sorts)."""
    return ",".join("%s=%s" % (k, v) for k, v in sorted(labels.items())) + "\n"


def go_json(value, indent=4):
    """JSON as Go's json.MarshalIndent writes it (HTML characters escaped)."""
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)  # these only occur inside strings
    return text + "\n"


def machine_json(value):
    return json.dumps(value, indent=2, sort_keys=False) + "\n"


def parse_size(text):
    """Bytes from `123`, `64K`, `64M`, `1G`, `1T` (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper(), ""
    if number[-1:] in units and number[-1:]:
        number, unit = number[:-1], number[-1]
    if not number.isdigit():
        raise UsageError("not a size: %r (bytes, or a number with K, M, G or T)" % text)
    return int(number) * units[unit]


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


# -- the argument parser ---------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        verb = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = (verb + ": ") if verb else ""
        raise UsageError("%s%s (see '%s --help')" % (where, message, self.prog))


def _add_globals(parser, suffix):
    """The global options; after the verb they land in dest+suffix."""
    # Absent from the namespace unless given, so that parse_args can tell
    # "not given" from a value and apply env/defaults itself.
    extra = {"default": argparse.SUPPRESS}
    helps = {"help": argparse.SUPPRESS} if suffix else {}
    parser.add_argument("--root", dest="root" + suffix, metavar="DIR",
                        help=helps.get("help", "snapshotter root (env %s, default %s)"
                                       % (ROOT_ENV, DEFAULT_ROOT)), **extra)
    parser.add_argument("--backend", dest="backend" + suffix, metavar="NAME",
                        help=helps.get("help", "backend (env %s, default %s)"
                                       % (BACKEND_ENV, DEFAULT_BACKEND)), **extra)
    parser.add_argument("--option", dest="option" + suffix, metavar="K=V", action="append",
                        help=helps.get("help", "backend option, repeatable "
                                       "(async_remove=true, mount_options=a,b, "
                                       "upperdir_label=true)"), **extra)
    parser.add_argument("--json", dest="json" + suffix, action="store_true",
                        help=helps.get("help", "machine-readable JSON output"), **extra)


def build_parser():
    parser = _Parser(prog="snaplab", allow_abbrev=False,
                     description="containerd-style snapshots on a snaplab root "
                                 "(the verbs of `ctr snapshots`).",
                     epilog="Exit codes: 0 ok, 1 other failure, 2 NotFound, 3 AlreadyExists, "
                            "4 FailedPrecondition, 5 InvalidArgument or usage error, "
                            "6 NotImplemented.")
    _add_globals(parser, "")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    def verb(name, handler, help_text, aliases=()):
        sub = verbs.add_parser(name, aliases=list(aliases), help=help_text,
                               description=help_text, allow_abbrev=False)
        _add_globals(sub, "_after")
        sub.set_defaults(handler=handler)
        return sub

    def max_expanded_flag(sub):
        sub.add_argument("--max-expanded-size", type=parse_size, default=None, metavar="SIZE",
                         help="refuse a layer whose uncompressed tar is larger (bytes, or "
                              "with K/M/G/T: 64M), before anything is written")

    def label_flag(sub):
        sub.add_argument("--label", action="append", default=[], metavar="K=V",
                         help="label to set, repeatable")

    for name, handler, text in (("prepare", cmd_prepare, "prepare an active snapshot"),
                                ("view", cmd_view, "create a read-only view")):
        sub = verb(name, handler, text)
        sub.add_argument("-t", "--target", metavar="PATH",
                         help="print the mount commands for PATH")
        sub.add_argument("--mounts", action="store_true", help="print the mounts as JSON")
        label_flag(sub)
        sub.add_argument("key", metavar="KEY")
        sub.add_argument("parent", metavar="PARENT", nargs="?", default=None)

    sub = verb("mounts", cmd_mounts, "print the mount commands of a snapshot", aliases=["m"])
    sub.add_argument("target", metavar="TARGET")
    sub.add_argument("key", metavar="KEY")

    sub = verb("commit", cmd_commit, "commit an active snapshot")
    label_flag(sub)
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("key", metavar="KEY")

    sub = verb("rm", cmd_rm, "remove snapshots", aliases=["del", "delete", "remove"])
    sub.add_argument("keys", metavar="KEY", nargs="+")

    for name, handler, text, aliases in (
            ("ls", cmd_ls, "list snapshots", ["list"]),
            ("tree", cmd_tree, "show snapshots as a tree of parents", [])):
        sub = verb(name, handler, text, aliases)
        sub.add_argument("-f", "--filter", action="append", default=[], metavar="FILTER",
                         help="containerd filter (e.g. kind==committed), repeatable: OR")

    sub = verb("info", cmd_info, "show a snapshot's Info as JSON")
    sub.add_argument("key", metavar="KEY")

    sub = verb("usage", cmd_usage, "show disk usage of snapshots")
    sub.add_argument("-b", dest="bytes", action="store_true", help="sizes in bytes")
    sub.add_argument("-f", "--filter", action="append", default=[], metavar="FILTER",
                     help="without KEYs: only snapshots matching (repeatable: OR)")
    sub.add_argument("keys", metavar="KEY", nargs="*")

    sub = verb("label", cmd_label, "set, delete or show labels")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("labels", metavar="K=V", nargs="*")

    verb("cleanup", cmd_cleanup, "remove unreferenced on-disk data")

    sub = verb("doctor", cmd_doctor, "report inconsistencies between metadata, storage, "
               "mounts and temporary names (exit 1 if any)")
    sub.add_argument("--fix", action="store_true",
                     help="repair what can be repaired (cleanup), then report what is left")

    sub = verb("mount", cmd_mount, "mount a snapshot at a directory (not ctr's alias)")
    sub.add_argument("target", metavar="TARGET")
    sub.add_argument("key", metavar="KEY")

    sub = verb("umount", cmd_umount, "unmount what is mounted at a directory")
    sub.add_argument("target", metavar="TARGET")

    sub = verb("apply-layers", cmd_apply_layers,
               "unpack OCI layer tars into committed snapshots named by chainID")
    label_flag(sub)
    max_expanded_flag(sub)
    sub.add_argument("tars", metavar="TAR", nargs="+", help="layer tars, bottom layer first")

    sub = verb("apply-layer", cmd_apply_layer, "apply OCI layer tars to an active snapshot")
    max_expanded_flag(sub)
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("tars", metavar="TAR", nargs="+", help="layer tars, applied in order")

    sub = verb("serve", cmd_serve, "serve the root over containerd's snapshots gRPC API "
               "(a containerd proxy snapshotter plugin; needs grpcio)")
    sub.add_argument("--socket", required=True, metavar="PATH",
                     help="unix socket to listen on (containerd's proxy_plugins address)")
    return parser


class Settings:
    """The resolved global options."""

    def __init__(self, root, backend, options, json_output):
        self.root = root
        self.backend = backend
        self.options = options
        self.json = json_output


def parse_args(argv, environ=None):
    """(argparse Namespace, Settings). UsageError/InvalidArgument on bad input;
    SystemExit(0) for --help."""
    environ = os.environ if environ is None else environ
    args = _parse(argv)

    def pick(name):
        after = getattr(args, name + "_after", None)
        return after if after is not None else getattr(args, name, None)

    root = pick("root") or environ.get(ROOT_ENV) or DEFAULT_ROOT
    backend = pick("backend") or environ.get(BACKEND_ENV) or DEFAULT_BACKEND
    if pick("root") == "":
        raise UsageError("--root must not be empty")
    if pick("backend") == "":
        raise UsageError("--backend must not be empty")
    option_texts = list(getattr(args, "option", None) or []) + \
        list(getattr(args, "option_after", None) or [])
    # Typed by the backend's declaration; an unknown backend or option is InvalidArgument.
    options = optionlib.parse_texts(backends.declared_options(backend), option_texts, backend)
    json_output = bool(getattr(args, "json", False) or getattr(args, "json_after", False))
    return args, Settings(root, backend, options, json_output)


def _parse(argv):
    return build_parser().parse_args(argv)


# -- opening the snapshotter -----------------------------------------------


def open_snapshotter(settings, create, read_only=False):
    """The snapshotter of the settings. Only verbs that create snapshots
    (`create`) may create a root: a mistyped --root must not claim a
    directory, so the others report that no root is there. Verbs that only
    read open it `read_only`: nothing is written to the root."""
    try:
        return backends.open_snapshotter(settings.root, settings.backend, create=create,
                                         read_only=read_only, **settings.options)
    except errors.NotFound as err:
        raise errors.NotFound("%s; check --root or SNAPLAB_ROOT" % err) from None


# -- verbs -------------------------------------------------------------------
# Each takes (snapshotter opener, args, settings, out) and returns an exit code.


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


def format_findings(findings):
    return "".join("%s %s: %s%s\n" % (f.kind, f.subject, f.detail,
                                      " (fix: %s)" % f.fix if f.fix else " (no automatic fix)")
                   for f in findings)


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
                                        max_expanded_size=args.max_expanded_size)
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
    try:
        from snaplab_grpc import server
    except ImportError as missing:
        raise errors.NotImplemented(
            "snaplab serve needs the Python packages grpcio, grpcio-tools and protobuf "
            "(pip install -r requirements.txt, or make venv): %s" % missing) from None
    server.configure_logging()
    socket_path = server.SocketPath(args.socket)  # checked before the root is opened
    with opener(True) as sn:
        return server.serve(sn, socket_path, "%s snapshotter at %s" % (
            settings.backend, os.path.abspath(settings.root)))


# -- entry point -------------------------------------------------------------


class _Opener:
    """opener(create, read_only=False) -> context manager closing the snapshotter."""

    def __init__(self, settings):
        self.settings = settings

    def __call__(self, create, read_only=False):
        return _Closing(open_snapshotter(self.settings, create, read_only))


class _Closing:
    def __init__(self, sn):
        self.sn = sn

    def __enter__(self):
        return self.sn

    def __exit__(self, *exc):
        self.sn.close()


def run(argv=None, out=None, environ=None, opener_factory=_Opener):
    """Parse and run one command; returns the exit code. Errors propagate."""
    out = sys.stdout if out is None else out
    args, settings = parse_args(argv, environ)
    return args.handler(opener_factory(settings), args, settings, out)


def main(argv=None):
    """Console entry point: run, turning known errors into one stderr line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        code = run(argv)
        sys.stdout.flush()
        return code
    except SystemExit as exit_:  # --help / --version from argparse
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except (errors.SnapshotError, OSError, Failure, sqlite3.Error) as err:
        if isinstance(err, BrokenPipeError):
            _silence_stdout()
            return 1
        _flush_quietly()
        message = describe(err)
        if isinstance(err, sqlite3.Error):
            message = "metadata store: " + message
        sys.stderr.write("snaplab: %s\n" % message)
        return exit_code_of(err)
    except KeyboardInterrupt:
        _flush_quietly()
        sys.stderr.write("snaplab: interrupted\n")
        return 130


def _flush_quietly():
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except OSError:
        pass


def _silence_stdout():
    # Python would complain again when it flushes stdout at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
