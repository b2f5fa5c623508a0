"""What a snapshotter does where containerd's contract leaves it a choice: its traits.

The cases never ask which snapshotter they test. Where the right answer
depends on a choice the contract allows (are snapshots full copies? does
Usage count inodes?), a case reads the target's trait and checks what that
choice implies, or skips saying which trait rules it out.

A snapshotter declares its traits in a small YAML file, one `name: value`
per line (comments with #), every trait it leaves out at its default:

    # my-snapshotter.yml: snapshots are full copies
    usage_includes_parent: true
    removal: until-cleanup

`snaplab-conformance --traits FILE` reads one, `--trait NAME=VALUE` sets
one on top. snaplab's backends and containerd's plugins declare theirs the
same way, in the files of conformance/traits/ (snaplab-<backend>.yml,
containerd-<plugin>.yml). The format is a flat mapping of scalars, read
here without PyYAML: a node that runs the suite needs nothing more.
"""

import dataclasses
import functools
import os
import re

from snaplab import errors

TRAITS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "traits")


@dataclasses.dataclass(frozen=True)
class Trait:
    """One choice: its `name`, the `values` it may take (the first is the
    default, what containerd's overlayfs does) and what it means."""

    name: str
    values: tuple
    description: str

    @property
    def default(self):
        return self.values[0]


TRAITS = (
    Trait("usage_includes_parent", (False, True),
          "Usage of a snapshot counts its parents' content too (snapshots are full "
          "copies, as native's are); false: only what the snapshot itself adds"),
    Trait("committed_usage", ("measured", "image"),
          "what Usage of a committed snapshot reports: its active's usage measured at "
          "Commit (measured), or the disk usage of the image Commit made of it (image: "
          "erofs's layer.erofs, one inode)"),
    Trait("inodes_reported", (True, False),
          "Usage counts inodes; false: Usage.inodes is -1 (zfs reports only bytes)"),
    Trait("lower_directory_rename", (True, False),
          "a directory that comes from a parent can be renamed in a child; false: "
          "the kernel refuses it (overlayfs without redirect_dir)"),
    Trait("view_mounts", ("read-only", "read-write"),
          "what the mounts of a View allow: writing into a mounted view fails (read-only)"),
    Trait("removal", ("immediate", "until-cleanup"),
          "when Remove frees a snapshot's data: before it returns (immediate), or "
          "only at Cleanup or containerd's garbage collection (until-cleanup)"),
    Trait("rebase", (True, False),
          "Commit takes a parent (containerd 2.x's rebase capability): it fills an empty "
          "parent, repeats the same one and refuses another; false: it has no parent to "
          "read (containerd 1.6's snapshots API has none)"),
    Trait("root_mode", ("0755", "0700", "0711", "0777"),
          "the mode of the root directory of a new parentless snapshot, under umask 0"),
    Trait("remap", ("none", "idmapped", "chown"),
          "what the uid/gid mapping labels (containerd.io/snapshot/uidmapping, gidmapping) "
          "do at Prepare/View: nothing (none: stored only, as containerd 1.6's plugins, whose "
          "client then chowns itself), the parents' layers are idmapped in the Mounts "
          "(idmapped: containerd 2.x's overlayfs), or the new snapshot is a chowned copy (chown)"),
    Trait("storage_layout", (None, "snaplab-native", "snaplab-overlay", "snaplab-btrfs",
                             "snaplab-zfs", "snaplab-blockfile", "snaplab-erofs"),
          "the on-disk layout under the root that white-box cases check (none: the "
          "storage is only seen through the API and the mounts)"),
)
TRAIT_OF_NAME = {trait.name: trait for trait in TRAITS}

_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.*?)\s*$")


class Traits:
    """A target's traits: `traits.removal`, `traits["removal"]`; `source`
    says where they were declared (shown in skip reasons)."""

    def __init__(self, values=None, source="defaults"):
        self.values = {trait.name: trait.default for trait in TRAITS}
        for name, value in (values or {}).items():
            self.values[name] = check(name, value)
        self.source = source

    def __getattr__(self, name):
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name):
        return self.values[name]

    def __eq__(self, other):
        return isinstance(other, Traits) and self.values == other.values

    def __repr__(self):
        shown = ("%s=%s" % (name, text(value)) for name, value in sorted(self.values.items()))
        return "Traits(%s)" % ", ".join(shown)

    def replace(self, source=None, **values):
        """These traits with `values` changed (checked), from `source`."""
        return Traits(dict(self.values, **values), source or self.source)

    def declared(self):
        """The traits that differ from their defaults, as a file would say them."""
        return {trait.name: self.values[trait.name] for trait in TRAITS
                if self.values[trait.name] != trait.default}

    def summary(self):
        """One line for the report: where they come from and what differs
        from the defaults."""
        declared = self.declared()
        if not declared:
            return "%s: every trait at its default" % self.source
        return "%s: %s" % (self.source, ", ".join("%s: %s" % (name, text(value))
                                                  for name, value in declared.items()))

    def skip_reason(self, name, needed):
        """Why a case that needs trait `name` at one of `needed` cannot run."""
        return "%s declares %s: %s (the case needs %s)" % (
            self.source, name, text(self.values[name]), " or ".join(text(v) for v in needed))


def text(value):
    """A trait value as the files write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_value(raw):
    """A scalar of the files: true/false, null, or a (possibly quoted) string."""
    lowered = raw.lower()
    if lowered in ("true", "yes"):
        return True
    if lowered in ("false", "no"):
        return False
    if lowered in ("null", "~", ""):
        return None
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def check(name, value):
    """`value` if trait `name` may take it; InvalidArgument naming what may."""
    trait = TRAIT_OF_NAME.get(name)
    if trait is None:
        raise errors.InvalidArgument("unknown trait %r (traits: %s)"
                                     % (name, ", ".join(TRAIT_OF_NAME)))
    if not any(value is allowed or (type(value) is type(allowed) and value == allowed)
               for allowed in trait.values):
        raise errors.InvalidArgument("trait %s cannot be %s (it is one of: %s)" % (
            name, text(value), ", ".join(text(v) for v in trait.values)))
    return value


def parse(content, source):
    """{name: value} of a traits file's `content`; InvalidArgument (naming
    `source` and the line) for anything but `name: scalar` lines."""
    lines = []
    for number, line in enumerate(content.splitlines(), 1):
        stripped = _strip_comment(line).rstrip()
        if not stripped.strip() or stripped.strip() == "---":
            continue
        match = _LINE.match(stripped)
        if match is None or stripped[0].isspace():
            # The shape first: `removal:` above a nested list is not a null.
            raise errors.InvalidArgument("%s:%d: a traits file is one `name: value` per line, "
                                         "not %r" % (source, number, line.strip()))
        lines.append((number, match.groups()))
    values = {}
    for number, (name, raw) in lines:
        if name in values:
            raise errors.InvalidArgument("%s:%d: trait %s given twice" % (source, number, name))
        try:
            values[name] = check(name, parse_value(raw))
        except errors.InvalidArgument as bad:
            raise errors.InvalidArgument("%s:%d: %s" % (source, number, bad)) from None
    return values


def _strip_comment(line):
    """`line` without a # comment (a # inside quotes stays)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def load(path):
    """The Traits a file declares (InvalidArgument when it cannot be read)."""
    try:
        with open(path, encoding="utf-8") as stream:
            content = stream.read()
    except OSError as err:
        raise errors.InvalidArgument("traits file %s: %s" % (path, err.strerror)) from None
    return Traits(parse(content, path), os.path.basename(path))


@functools.lru_cache(maxsize=None)
def known(name):
    """The Traits of conformance/traits/<name>.yml, or None when the suite
    knows no snapshotter of that name (read once a run: an endpoint's traits
    are asked for every case)."""
    path = os.path.join(TRAITS_DIR, name + ".yml")
    return load(path) if os.path.exists(path) else None


def of_plugin(plugin, declared=None, values=None):
    """The traits of a service's snapshotter `plugin`: those `declared` (a
    user's file), else the suite's own file for a plugin it knows (by the
    plugin's name, or containerd's plugins as containerd-<name>), else the
    defaults; `values` ({name: value}, a user's --trait) on top."""
    traits = declared
    for name in (plugin, "containerd-" + plugin):
        if traits is None:
            traits = known(name)
    traits = traits or Traits()
    if values:
        traits = traits.replace(source="%s and --trait" % traits.source, **values)
    return traits


def of_options(texts):
    """{name: value} of --trait NAME=VALUE options."""
    values = {}
    for option in texts:
        name, sep, raw = option.partition("=")
        if not sep:
            raise errors.InvalidArgument("--trait takes NAME=VALUE, not %r" % option)
        values[name.strip()] = check(name.strip(), parse_value(raw.strip()))
    return values


__all__ = ["TRAITS", "TRAITS_DIR", "TRAIT_OF_NAME", "Trait", "Traits", "check", "known", "load",
           "of_options", "of_plugin", "parse", "parse_value", "text"]
