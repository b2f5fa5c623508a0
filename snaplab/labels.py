"""Label and key rules shared by every backend (docs/semantics.md §2)."""

from . import errors

MAX_LABEL_SIZE = 4096  # bytes of key + value, containerd's pkg/labels limit

INHERITED_PREFIX = "containerd.io/snapshot/"
SNAPSHOT_REF = "containerd.io/snapshot.ref"
GC_ROOT = "containerd.io/gc.root"
# Set by the overlay backend on Stat/Walk (its upperdir_label option), never stored.
UPPERDIR_LABEL = "containerd.io/snapshot/overlay.upperdir"


def _utf8(text, what):
    if not isinstance(text, str):
        raise errors.InvalidArgument("%s must be a string, not %s" % (what, type(text).__name__))
    if "\x00" in text:
        raise errors.InvalidArgument("%s %r contains a NUL byte" % (what, text))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidArgument("%s %r is not valid UTF-8" % (what, text)) from None


# C0 control characters and DEL: refused in keys (validate_key says why).
CONTROL_CHARACTERS = frozenset(chr(c) for c in list(range(0x20)) + [0x7F])


def validate_key(key, what="key"):
    """A key or name a snapshot is given: an opaque string, but never empty,
    never with NUL bytes and never with a control character (U+0000-U+001F,
    U+007F).

    The control characters are a deliberate deviation from containerd,
    whose keys may be any string: a key is printed one per line by
    `snaplab ls` and in every message that names it, and a newline, tab,
    carriage return or escape sequence in one would forge lines or columns
    there (a key "a\\nb" listed as two snapshots). No real client needs one:
    containerd's own keys are digests, "extract-<n>-<r> <chainID>" and
    names a person chose. Keys that only look a snapshot up are checked by
    validate_existing_key, so that one made before this rule can still be
    committed or removed.
    """
    validate_existing_key(key, what)
    bad = sorted(set(key) & CONTROL_CHARACTERS)
    if bad:
        raise errors.InvalidArgument("%s %r contains the control character %s" % (
            what, key, ", ".join("U+%04X" % ord(c) for c in bad)))
    return key


def validate_existing_key(key, what="key"):
    """A key that names a snapshot which may already exist (to commit,
    remove or update it, or as a parent): a string, not empty, no NUL byte."""
    if isinstance(key, str) and key == "":
        raise errors.InvalidArgument("%s must not be empty" % what)
    _utf8(key, what)
    return key


def validate(labels):
    """Return a clean copy of `labels`; InvalidArgument if one is malformed.

    Empty values are kept here: they mean "delete" and the store drops them.
    """
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise errors.InvalidArgument("labels must be a mapping of strings, not %s"
                                     % type(labels).__name__)
    clean = {}
    for name, value in labels.items():
        name_bytes = _utf8(name, "label key")
        value_bytes = _utf8(value, "label value of %r" % name)
        if not name_bytes:
            raise errors.InvalidArgument("label key must not be empty")
        size = len(name_bytes) + len(value_bytes)
        if size > MAX_LABEL_SIZE:
            raise errors.InvalidArgument(
                "label key and value length (%d bytes) greater than maximum size "
                "(%d bytes), key: %s" % (size, MAX_LABEL_SIZE, name[:64]))
        clean[name] = value
    return clean


def without_empty(labels):
    """Empty values are deletions: what is stored never holds one."""
    return {k: v for k, v in labels.items() if v != ""}


def filter_inherited(labels):
    """The labels containerd's metadata layer lets through to a backend."""
    if labels is None:
        return None
    return {k: v for k, v in labels.items()
            if k == SNAPSHOT_REF or k.startswith(INHERITED_PREFIX)}
