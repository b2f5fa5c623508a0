"""The `snaplab` command line: containerd's `ctr snapshots` verbs on a snaplab root.

    snaplab [--root DIR] [--backend NAME] [--option K=V ...] [--json] VERB ...

What each verb does and prints, the global options and the exit codes are in
the parser below (`snaplab --help`, `snaplab VERB --help`); the verbs
themselves in snaplab.verbs, ctr's output formats in snaplab.ctr_output.
"""

import argparse
import functools
import os
import sqlite3
import sys
import textwrap

from . import backends
from . import errors
from . import options as optionlib
from .verbs import (Failure, UsageError, cmd_apply_layer, cmd_apply_layers, cmd_capabilities,
                    cmd_cleanup, cmd_commit, cmd_doctor, cmd_info, cmd_label, cmd_ls, cmd_mount,
                    cmd_mounts, cmd_prepare, cmd_rm, cmd_serve, cmd_tree, cmd_umount, cmd_usage,
                    cmd_view, describe, exit_code_of)

DEFAULT_ROOT = "/var/lib/snaplab"
DEFAULT_BACKEND = "overlay"
ROOT_ENV = "SNAPLAB_ROOT"
BACKEND_ENV = "SNAPLAB_BACKEND"


# -- the argument parser ---------------------------------------------------
# Each verb's help and description live in its subparser: `snaplab --help`
# and `snaplab VERB --help` are the manual.


def parse_size(text):
    """Bytes from `123`, `64K`, `64M`, `1G`, `1T` (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper(), ""
    if number[-1:] in units and number[-1:]:
        number, unit = number[:-1], number[-1]
    if not number.isdigit():
        raise UsageError("not a size: %r (bytes, or a number with K, M, G or T)" % text)
    return int(number) * units[unit]


DESCRIPTION = (
    "containerd-style snapshots on a snaplab root: the verbs of `ctr snapshots`, with ctr's "
    "names and aliases. The text output is ctr's, byte for byte, except that `label` sorts "
    "what ctr prints in Go map order and a mount without options prints no `-o`; `--filter` "
    "on ls/tree/usage is snaplab's own. `snaplab VERB --help` says what a verb does and what "
    "it prints with --json.\n\n"
    "Global options may also follow the verb (`snaplab ls --json`); given both before and "
    "after the verb, the later one wins (`--option`s add up).")

RULES = (
    "Label arguments must be K=V with a non-empty K (ctr would read a bare `K` as K=true; "
    "snaplab refuses it, so that a typo cannot set a label).\n\n"
    "Verbs that only read or remove never create a root: on a directory without metadata.db "
    "they fail with NotFound (\"no snapshotter root at ...\"), so a mistyped --root is "
    "noticed. prepare, view, apply-layers and serve create the root if needed. Verbs that "
    "only read (mounts, ls, tree, info, usage, label without K=V, mount, doctor without --fix) "
    "write nothing to the root, so they work on a root whose filesystem is mounted read-only."
    "\n\n"
    "--json prints one JSON document on stdout. In the shapes each verb's help gives, Info is "
    "Info.to_dict(): Kind, Name, Parent and Labels (omitted when empty), Created, Updated; "
    "Mount is Mount.to_dict(): Type, Source, Target, Options.\n\n"
    "Errors: one line `snaplab: <message>` on stderr (also with --json), no traceback, and "
    "the exit code of the error class (snaplab.errors):")

EXIT_CODES = """\
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

So 2 always means NotFound: argparse's own exit status 2 is not used."""


def backend_options_help():
    """The backends' declared options (snaplab.options.Option), for --help."""
    lines, without = ["backend options (--option K=V):"], []
    for name in backends.BACKENDS:
        declared = backends.declared_options(name)
        if not declared:
            without.append(name)
        for option in declared:
            lines.append("  %-8s %s (%s, default %s)" % (
                name, option.name, option.kind, option.text(option.default) or "empty"))
            lines += textwrap.wrap(option.description, 66, initial_indent=" " * 13,
                                   subsequent_indent=" " * 13)
            name = ""
    lines.append("  %s: none" % ", ".join(without))
    return "\n".join(lines)


class _HelpFormatter(argparse.HelpFormatter):
    """Fills each paragraph of a description or epilog on its own; a
    paragraph with indented lines (a table) is kept as written."""

    def _fill_text(self, text, width, indent):
        return "\n\n".join(
            paragraph if any(line.startswith(" ") for line in paragraph.split("\n")) else
            textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                          subsequent_indent=indent, break_on_hyphens=False)
            for paragraph in text.split("\n\n"))


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        verb = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = (verb + ": ") if verb else ""
        raise UsageError("%s%s (see '%s --help')" % (where, message, self.prog))


class _TopParser(_Parser):
    """`snaplab`'s own parser. Its epilog lists every backend's options,
    which loads every backend: made only when the help is."""

    def format_help(self):
        self.epilog = "\n\n".join((backend_options_help(), RULES, EXIT_CODES))
        return super().format_help()


def _add_globals(parser, suffix):
    """The global options; after the verb they land in dest+suffix."""
    # Absent from the namespace unless given, so that parse_args can tell
    # "not given" from a value and apply env/defaults itself.
    extra = {"default": argparse.SUPPRESS}
    helps = {"help": argparse.SUPPRESS} if suffix else {}
    parser.add_argument("--root", dest="root" + suffix, metavar="DIR",
                        help=helps.get("help", "the snapshotter root (env %s, default %s)"
                                       % (ROOT_ENV, DEFAULT_ROOT)), **extra)
    parser.add_argument("--backend", dest="backend" + suffix, metavar="NAME",
                        help=helps.get("help", "the backend: %s (env %s, default %s). A root "
                                       "belongs to the backend that created it; another "
                                       "backend is refused with FailedPrecondition naming "
                                       "the right one" % (", ".join(backends.BACKENDS),
                                                          BACKEND_ENV, DEFAULT_BACKEND)),
                        **extra)
    parser.add_argument("--option", dest="option" + suffix, metavar="K=V", action="append",
                        help=helps.get("help", "a backend option (listed below), repeatable. "
                                       "Booleans take true/false, yes/no, on/off, 1/0; list "
                                       "options split on commas (repeating one adds up)"),
                        **extra)
    parser.add_argument("--json", dest="json" + suffix, action="store_true",
                        help=helps.get("help", "machine-readable output (each verb's --help "
                                       "shows its shape)"), **extra)


def build_parser():
    parser = _TopParser(prog="snaplab", allow_abbrev=False, formatter_class=_HelpFormatter,
                        description=DESCRIPTION)
    _add_globals(parser, "")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verbs.required = True

    def verb(name, handler, help_text, description, json_shape, aliases=()):
        """A verb: `help_text` in `snaplab --help`, `description` and its
        --json output `json_shape` in `snaplab VERB --help`."""
        sub = verbs.add_parser(name, aliases=list(aliases), help=help_text, allow_abbrev=False,
                               description=description, epilog="--json: " + json_shape,
                               formatter_class=_HelpFormatter)
        _add_globals(sub, "_after")
        sub.set_defaults(handler=handler)
        return sub

    def max_expanded_flag(sub):
        sub.add_argument("--max-expanded-size", type=parse_size, default=None, metavar="SIZE",
                         help="refuse a layer whose uncompressed tar is larger (bytes, or "
                              "with K/M/G/T: 64M; a decompression bomb), before anything is "
                              "written")

    def label_flag(sub):
        sub.add_argument("--label", action="append", default=[], metavar="K=V",
                         help="label to set, repeatable")

    for name, handler, text, description in (
            ("prepare", cmd_prepare, "prepare an active snapshot",
             "Prepare an active snapshot KEY on the committed PARENT (none: an empty one). It "
             "gets containerd.io/gc.root=<RFC 3339 now> as ctr sets it (an explicit --label "
             "containerd.io/gc.root=... wins; an empty value leaves it out). Nothing is "
             "printed unless -t prints the `mount -t ...` lines for PATH, or --mounts the "
             "mounts as JSON (ctr's shape: 4-space indent)."),
            ("view", cmd_view, "create a read-only view",
             "The same as prepare for a read-only view KEY of PARENT, without the gc.root "
             "label.")):
        sub = verb(name, handler, text, description, "[Mount, ...]")
        sub.add_argument("-t", "--target", metavar="PATH",
                         help="print the mount commands for PATH")
        sub.add_argument("--mounts", action="store_true", help="print the mounts as JSON")
        label_flag(sub)
        sub.add_argument("key", metavar="KEY")
        sub.add_argument("parent", metavar="PARENT", nargs="?", default=None)

    sub = verb("mounts", cmd_mounts, "print the mount commands of a snapshot",
               "Print the `mount -t TYPE SOURCE TARGET -o OPTIONS` lines of KEY's mounts at "
               "TARGET (nothing is mounted).", "[Mount, ...]", aliases=["m"])
    sub.add_argument("target", metavar="TARGET")
    sub.add_argument("key", metavar="KEY")

    sub = verb("commit", cmd_commit, "commit an active snapshot",
               "Commit the active snapshot KEY as NAME, with the gc.root label (as ctr).",
               "the Info of the committed snapshot")
    label_flag(sub)
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("key", metavar="KEY")

    sub = verb("rm", cmd_rm, "remove snapshots",
               "Remove each KEY in order (all are checked first); stop at the first failure: "
               "`failed to remove \"KEY\": <reason>`, with the exit code of the reason.",
               "{\"removed\": [KEY, ...]}, also printed when a removal fails, listing those "
               "removed before it", aliases=["del", "delete", "remove"])
    sub.add_argument("keys", metavar="KEY", nargs="+")

    for name, handler, text, description, shape, aliases in (
            ("ls", cmd_ls, "list snapshots",
             "`KEY PARENT KIND` columns, laid out as Go's tabwriter does for ctr (each column "
             "as wide as its widest cell + 1 space, trailing one too).",
             "[Info, ...]", ["list"]),
            ("tree", cmd_tree, "show snapshots as a tree of parents",
             "ctr's tree, each snapshot under its parent, lines as quoted here:\n\n"
             "  \" name\"\n  \"  \\_ child\"\n  \"    \\_ grandchild\"",
             "[Node, ...], the roots in walk order; Node is Info plus \"Children\": "
             "[Node, ...]; a parent the walk did not return is {\"Name\": ..., \"Children\": "
             "[...]}", [])):
        sub = verb(name, handler, text, description, shape, aliases)
        sub.add_argument("-f", "--filter", action="append", default=[], metavar="FILTER",
                         help="containerd filter (e.g. kind==committed), repeatable: OR")

    sub = verb("info", cmd_info, "show a snapshot's Info as JSON",
               "The Info of KEY as JSON indented by 4 spaces, as ctr prints it.", "Info")
    sub.add_argument("key", metavar="KEY")

    sub = verb("usage", cmd_usage, "show disk usage of snapshots",
               "`KEY SIZE INODES` of each KEY (no KEY: of all); SIZE as ctr's `%02.1f` with "
               "1024 steps (\"0.0 B\", \"4.0 KiB\", \"7.6 MiB\"), raw bytes with -b.",
               "[{\"key\": KEY, \"size\": BYTES, \"inodes\": N}, ...]")
    sub.add_argument("-b", dest="bytes", action="store_true", help="sizes in bytes")
    sub.add_argument("-f", "--filter", action="append", default=[], metavar="FILTER",
                     help="without KEYs: only snapshots matching (repeatable: OR)")
    sub.add_argument("keys", metavar="KEY", nargs="*")

    sub = verb("label", cmd_label, "set, delete or show labels",
               "Set labels of NAME (an empty value deletes one; other labels stay); print the "
               "resulting labels as `k=v,k=v` (sorted by key). No K=V: just show them.", "Info")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("labels", metavar="K=V", nargs="*")

    verb("cleanup", cmd_cleanup, "remove unreferenced on-disk data",
         "Remove on-disk data no longer referenced (orphans, async removals). A backend "
         "without a cleanup (NotImplemented) is not an error: exit 0 with a note on stderr, as "
         "containerd's GC ignores NotImplemented from Cleanup -- after the call there is "
         "nothing unreferenced left that the backend could remove, which is what the caller "
         "asked for.", "{\"cleanup\": \"done\"} or {\"cleanup\": \"not implemented\"}")

    verb("capabilities", cmd_capabilities, "the containerd plugin capabilities the backend "
         "has here, one a line",
         "(beyond ctr) The capabilities containerd's client asks a snapshotter plugin for: "
         "remap-ids when the backend honours the uid/gid mapping labels itself (overlay: where "
         "a probe mount shows the kernel idmaps overlay lowerdirs on the root's filesystem; "
         "native and btrfs: always, by a chown remap). Writes no snapshot; overlay's probe "
         "needs a writable root.",
         "{\"capabilities\": [NAME, ...]}")

    sub = verb("doctor", cmd_doctor, "report inconsistencies between metadata, storage, "
               "mounts and temporary names (exit 1 if any)",
               "(beyond ctr) Report every inconsistency between the metadata, the storage "
               "(directories, subvolumes, datasets), the mounts and the temporary names of the "
               "root -- what a killed operation leaves -- one per line: `KIND SUBJECT: DETAIL "
               "(fix: WHAT)`. Reads only (works on a root mounted read-only). Exit 0 when there "
               "is nothing, 1 when there are findings.",
               "{\"clean\": BOOL, \"findings\": [{\"kind\": K, \"subject\": S, \"detail\": D, "
               "\"fix\": F}, ...]} (after the repairs with --fix)")
    sub.add_argument("--fix", action="store_true",
                     help="run cleanup (which makes every repair shown with a fix), then "
                          "report what is left")

    sub = verb("mount", cmd_mount, "mount a snapshot at a directory (not ctr's alias)",
               "(beyond ctr; NOT ctr's alias of `mounts`) Really mount KEY's mounts at TARGET, "
               "an existing directory that is not already a mount point. Nothing is printed.",
               "{\"target\": ABS_TARGET, \"key\": KEY, \"mounts\": [Mount, ...]}")
    sub.add_argument("target", metavar="TARGET")
    sub.add_argument("key", metavar="KEY")

    sub = verb("umount", cmd_umount, "unmount what is mounted at a directory",
               "(beyond ctr) Unmount everything stacked on TARGET; NotFound if nothing is "
               "mounted there. It does not check who mounted it (like umount(8)).",
               "{\"target\": ABS_TARGET, \"unmounted\": true}")
    sub.add_argument("target", metavar="TARGET")

    sub = verb("apply-layers", cmd_apply_layers,
               "unpack OCI layer tars into committed snapshots named by chainID",
               "(beyond ctr; as containerd unpacks) Unpack OCI layer tars (plain, gzip, zstd), "
               "bottom layer first, into committed snapshots named by their chainIDs, each on "
               "the previous one; a chainID already committed is skipped, so a re-run changes "
               "nothing. Prints `LAYER DIFF-ID CHAIN-ID STATUS` (applied or present). A layer "
               "that would write outside its snapshot is refused (InvalidArgument) before "
               "anything is written, and so is one that would not fit in the free space (or "
               "inodes).",
               "{\"layers\": [{\"path\": TAR, \"diff_id\": D, \"chain_id\": C, \"applied\": "
               "BOOL}, ...], \"chain_id\": TOP_CHAIN_ID}")
    label_flag(sub)
    sub.add_argument("--diff-id", action="append", dest="diff_ids", metavar="DIFF_ID",
                     help="the DiffID of each layer, in order, as the image config lists "
                          "them (sha256:...): nothing is read to plan, each missing layer is "
                          "written in one read, checked entry by entry as it goes, and "
                          "committed only if its digest is the one given (a refused layer "
                          "leaves no snapshot)")
    max_expanded_flag(sub)
    sub.add_argument("tars", metavar="TAR", nargs="+", help="layer tars, bottom layer first")

    sub = verb("apply-layer", cmd_apply_layer, "apply OCI layer tars to an active snapshot",
               "(beyond ctr) Apply layer tars, in order, to the active snapshot KEY (whiteouts "
               "delete what they name); prints each layer's DiffID.",
               "{\"key\": KEY, \"layers\": [{\"path\": TAR, \"diff_id\": D}, ...]}")
    max_expanded_flag(sub)
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("tars", metavar="TAR", nargs="+", help="layer tars, applied in order")

    sub = verb("serve", cmd_serve, "serve the root over containerd's snapshots gRPC API "
               "(a containerd proxy snapshotter plugin; needs grpcio)",
               "(beyond ctr; needs grpcio: snaplab_grpc) Serve the root over containerd's "
               "snapshots gRPC API on the unix socket PATH (0600), for containerd's "
               "proxy_plugins. Logs to stderr; one \"ready\" line once it answers; stops on "
               "SIGTERM/SIGINT (calls in flight finish), removes its socket, exits 0. A path "
               "that is not a socket is refused (FailedPrecondition), as is a socket someone "
               "answers on; a dead one is replaced. Without grpcio: NotImplemented.",
               "nothing (it logs to stderr)")
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


# -- entry point -------------------------------------------------------------


def _opener(settings):
    """The verbs' opener: the snapshotter closes itself at the end of a `with`."""
    return functools.partial(open_snapshotter, settings)


def run(argv=None, out=None, environ=None, opener_factory=_opener):
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
