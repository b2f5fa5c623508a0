"""The text `ctr snapshots` prints, byte for byte, and snaplab's --json.

Pure functions from the snapshotter's values (Info, Usage, Mount, Finding)
to text; the command line (snaplab.cli) writes what they return.
"""

import json

from .types import Info, Kind

SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


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


def format_findings(findings):
    """`snaplab doctor` output: `KIND SUBJECT: DETAIL (fix: WHAT)` per Finding."""
    return "".join("%s %s: %s%s\n" % (f.kind, f.subject, f.detail,
                                      " (fix: %s)" % f.fix if f.fix else " (no automatic fix)")
                   for f in findings)


def go_json(value, indent=4):
    """JSON as Go's json.MarshalIndent writes it (HTML characters escaped)."""
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)  # these only occur inside strings
    return text + "\n"


def machine_json(value):
    """snaplab's --json output: one document, indented by 2."""
    return json.dumps(value, indent=2, sort_keys=False) + "\n"
