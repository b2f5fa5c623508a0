"""Plain data types of the snapshotter model: Kind, Info, Usage, Mount.

Timestamps are integers of nanoseconds since the Unix epoch (UTC), because
containerd compares Created/Updated to the nanosecond and Python's datetime
stops at microseconds.
"""

import dataclasses
import enum
import os.path
import time
from typing import Dict, List


class Kind(enum.IntEnum):
    """Kind of a snapshot; the values are containerd's (gRPC enum too)."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    def __str__(self):
        return self.name.capitalize()  # "View", "Active", "Committed", "Unknown"

    @property
    def filter_value(self):
        """The value the Walk filter field `kind` compares against."""
        return self.name.lower()

    @classmethod
    def parse(cls, text):
        """Case-insensitive; anything else is UNKNOWN (as containerd's ParseKind)."""
        try:
            kind = cls[str(text).upper()]
        except KeyError:
            return cls.UNKNOWN
        return kind


def now_ns():
    return time.time_ns()


def format_timestamp(ns):
    """RFC 3339 with nanoseconds in UTC, as Go's time.RFC3339Nano prints it."""
    seconds, frac = divmod(int(ns), 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if frac:
        base += "." + ("%09d" % frac).rstrip("0")
    return base + "Z"


@dataclasses.dataclass
class Info:
    """What Stat and Walk return. Only `labels` is mutable (through Update)."""

    kind: Kind
    name: str
    parent: str = ""
    labels: Dict[str, str] = dataclasses.field(default_factory=dict)
    created: int = 0
    updated: int = 0

    def to_dict(self):
        """containerd's JSON shape (`ctr snapshots info`)."""
        out = {"Kind": str(self.kind), "Name": self.name}
        if self.parent:
            out["Parent"] = self.parent
        if self.labels:
            out["Labels"] = dict(self.labels)
        out["Created"] = format_timestamp(self.created)
        out["Updated"] = format_timestamp(self.updated)
        return out


@dataclasses.dataclass
class Usage:
    """Resources used by a snapshot itself, excluding its parents."""

    size: int = 0
    inodes: int = 0

    def add(self, other):
        return Usage(self.size + other.size, self.inodes + other.inodes)

    def to_dict(self):
        return {"Size": self.size, "Inodes": self.inodes}


@dataclasses.dataclass
class Mount:
    """One mount(2) call: what a caller mounts to see a snapshot.

    `target` is an optional sub-directory inside the previous mount.
    """

    type: str
    source: str
    target: str = ""
    options: List[str] = dataclasses.field(default_factory=list)

    @property
    def read_only(self):
        """Read-only-ness as containerd derives it (Mount.ReadOnly())."""
        if self.type == "overlay":
            return "ro" in self.options or not any(
                o.startswith("upperdir=") for o in self.options)
        return "ro" in self.options

    def to_dict(self):
        return {"Type": self.type, "Source": self.source,
                "Target": self.target, "Options": list(self.options)}

    def point_under(self, target):
        """Where this mount goes when its snapshot is mounted at `target`:
        its Target (relative to `target`, as containerd's mount.All reads
        it), or `target` itself."""
        return os.path.join(target, self.target.lstrip("/")) if self.target else target

    def command_line(self, target):
        """The `mount -t ...` line ctr prints for this mount at `target`."""
        return "mount -t %s %s %s -o %s" % (self.type, self.source, self.point_under(target),
                                            ",".join(self.options))


@dataclasses.dataclass
class Finding:
    """One inconsistency between a root's metadata, its storage, its mounts
    and its temporary names, as `snaplab doctor` reports it.

    `fix` says what Cleanup (`doctor --fix`) does about it; empty when it is
    nothing snaplab may repair on its own (data a snapshot still needs is
    missing). `repair`, when set, is how Cleanup does it: called inside the
    write transaction with it, it returns the storage entries to remove
    once the transaction is over.
    """

    kind: str
    subject: str
    detail: str
    fix: str = ""
    repair: object = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self):
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail,
                "fix": self.fix}
