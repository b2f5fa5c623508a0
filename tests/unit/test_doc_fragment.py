"""The collection's doc fragment lists the backend options the backends
declare (snaplab.backends, Option): every backend, every option with its
kind, default and description, and nothing else."""

import importlib.util
import os
import re

import yaml

from snaplab import backends
from snaplab.options import Option

FRAGMENT = os.path.join(os.path.dirname(__file__), "..", "..", "collection", "plugins",
                        "doc_fragments", "_snapshotter.py")

# How the fragment writes an Option's kind.
KIND_WORDS = {"bool": "bool", "list": "list of strings", "str": "str"}

# "V(overlay) takes C(async_remove) (bool, default V(false)). Remove only ..."
OPTION_ITEM = re.compile(r"V\((?P<backend>[^)]+)\) takes C\((?P<name>[^)]+)\) "
                         r"\((?P<kind>[^,]+), default V\((?P<default>.*?)\)\)\. "
                         r"(?P<description>.+)$")
# "V(native), V(btrfs), V(zfs) and V(aufs) take no options."
NONE_ITEM = re.compile(r"(?P<backends>.*) take no options\.$")


def backend_options_text():
    spec = importlib.util.spec_from_file_location("snapshotter_doc_fragment", FRAGMENT)
    fragment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fragment)
    documentation = yaml.safe_load(fragment.ModuleDocFragment.DOCUMENTATION)
    return documentation["options"]["backend_options"]["description"]


def default_text(option):
    if option.kind == "bool":
        return "true" if option.default else "false"
    if option.kind == "list":
        return "[%s]" % ", ".join(option.default)
    return str(option.default)


def documented():
    """{backend: {option name: (kind, default, description)}} as the fragment says."""
    found = {}
    for item in backend_options_text():
        option = OPTION_ITEM.match(item)
        if option:
            entry = (option["kind"], option["default"], option["description"])
            assert option["name"] not in found.setdefault(option["backend"], {}), item
            found[option["backend"]][option["name"]] = entry
            continue
        without = NONE_ITEM.match(item)
        if without:
            for backend in re.findall(r"V\(([^)]+)\)", without["backends"]):
                assert backend not in found, item
                found[backend] = {}
    return found


def declared():
    return {backend: {option.name: (KIND_WORDS[option.kind], default_text(option),
                                    option.description)
                      for option in backends.declared_options(backend)}
            for backend in backends.BACKENDS}


def test_the_fragment_lists_each_backends_declared_options():
    assert documented() == declared()


def test_the_check_notices_an_option_missing_from_the_fragment(monkeypatch):
    overlay = backends.backend_class("overlay")
    monkeypatch.setattr(overlay, "declared_options",
                        overlay.declared_options + (Option("extra", "str", "", "One more."),))
    assert documented() != declared()
    monkeypatch.setattr(overlay, "declared_options", overlay.declared_options[:1])
    assert documented() != declared()
