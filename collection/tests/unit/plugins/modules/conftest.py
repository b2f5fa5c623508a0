# Copyright (c) snaplab maintainers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Running a module's main() in-process: args in, result dict out."""

from __future__ import annotations

import contextlib
import json

import pytest

from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes

try:  # ansible-core >= 2.19: the supported way (data tagging broke the old one)
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core 2.18
    from unittest import mock

    @contextlib.contextmanager
    def patch_module_args(args=None):
        serialized = to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args or {}}))
        with mock.patch.object(basic, "_ANSIBLE_ARGS", serialized):
            yield


class ModuleExit(Exception):
    """exit_json or fail_json was called; `result` is what it was given."""

    def __init__(self, result):
        super().__init__(result)
        self.result = result


def _exit_json(self, **result):
    result.setdefault("changed", False)
    raise ModuleExit(result)


def _fail_json(self, msg, **result):
    result.update(failed=True, msg=msg)
    raise ModuleExit(result)


@pytest.fixture
def run_module(monkeypatch):
    """run_module(main, args, check=False, diff=False) -> result dict
    (result["failed"] is True when the module failed)."""
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", _exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", _fail_json)

    def run(main, args, check=False, diff=False):
        args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
        with patch_module_args(args):
            with pytest.raises(ModuleExit) as exited:
                main()
        return exited.value.result

    return run
