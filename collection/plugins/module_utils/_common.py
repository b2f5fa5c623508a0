# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is PRIVATE to the collection: it can change at
# any time. Do not use it from other collections.

"""What every snaplab module does the same way: name a snapshotter root,
open it, and turn the core's errors into fail_json."""

from __future__ import annotations

import sqlite3

from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab import errors
from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab.backends import open_snapshotter
from ansible_collections.snaplab.snapshots.plugins.module_utils._snaplab.types import format_timestamp

# The options of doc_fragments/_snapshotter.py.
SNAPSHOTTER_ARGUMENT_SPEC = dict(
    root=dict(type="path", required=True),
    backend=dict(type="str", default="overlay"),
    backend_options=dict(type="dict", default={}),
)

# What a module reports as a failure with its class name, rather than a traceback.
EXPECTED_ERRORS = (errors.SnapshotError, OSError, sqlite3.Error)


def open_root(module, create, read_only=False):
    """The snapshotter of the module's root, backend and backend_options
    (typed by the backend's declaration).

    Without `create`, a root that does not exist yet is NotFound: reading or
    check mode must not make one. `read_only` (info modules, check mode):
    nothing at all is written to the root, so it works on a read-only one.
    """
    params = module.params
    return open_snapshotter(params["root"], params["backend"], create=create,
                            read_only=read_only, **params["backend_options"])


def open_root_if_any(module, read_only=False):
    """open_root without creating: None when there is no root yet (what a
    module that plans from nothing, or in check mode, wants)."""
    try:
        return open_root(module, create=False, read_only=read_only)
    except errors.NotFound:
        return None


def error_class(err):
    """containerd's errdefs name of the error (NotFound, AlreadyExists...),
    also for a subclass (FilterParseError is InvalidArgument); else the
    Python class name (MountError, OSError...)."""
    for cls in errors.ALL:
        if isinstance(err, cls):
            return cls.__name__
    return type(err).__name__


def fail(module, err, msg=None, **result):
    """fail_json with the error's class, and its message unless `msg` says more."""
    module.fail_json(msg=msg or str(err) or type(err).__name__, error_class=error_class(err),
                     **result)


def run_module(module, run):
    """Every module's main(): exit_json with what run(module) returns, or
    fail_json for the errors the core raises on purpose."""
    try:
        module.exit_json(**run(module))
    except EXPECTED_ERRORS as err:
        fail(module, err)


def info_dict(info):
    """An Info as modules return it."""
    return dict(key=info.name, kind=info.kind.filter_value, parent=info.parent,
                labels=dict(info.labels), created=format_timestamp(info.created),
                updated=format_timestamp(info.updated))


def mount_dicts(mounts):
    return [dict(type=m.type, source=m.source, target=m.target, options=list(m.options))
            for m in mounts]
