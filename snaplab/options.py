"""Backend options, declared with their types.

Each backend lists its options as Option values (as a containerd plugin
declares its Config struct). The CLI's --option K=V, `snaplab serve`, the
Ansible modules' backend_options and their documentation all read the same
declaration, so an option is typed and described once.
"""

from dataclasses import dataclass
from typing import Any, Tuple

from . import errors

TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})


@dataclass(frozen=True)
class Option:
    """One backend option: its name, its kind (bool, list of strings, or
    str), its default and one sentence on what it does."""

    name: str
    kind: str
    default: Any
    description: str

    def convert(self, value):
        """The typed value of `value`: a typed value is checked, a text one
        is read (booleans as true/false, yes/no, on/off, 1/0; lists split on
        commas). InvalidArgument when it is neither."""
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                word = value.strip().lower()
                if word in TRUE_WORDS:
                    return True
                if word in FALSE_WORDS:
                    return False
            raise errors.InvalidArgument(
                "option %s expects a boolean (true/false, yes/no, on/off, 1/0), not %r"
                % (self.name, value))
        if self.kind == "list":
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return list(value)
            raise errors.InvalidArgument("option %s expects a list of strings, not %r"
                                         % (self.name, value))
        if isinstance(value, str):
            return value
        raise errors.InvalidArgument("option %s expects a string, not %r" % (self.name, value))

    def text(self, value):
        """The K=V text of a typed value (what convert reads back)."""
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "list":
            return ",".join(value)
        return str(value)


def _declared(options, name, backend):
    for option in options:
        if option.name == name:
            return option
    raise errors.InvalidArgument("backend %s has no option %s (it accepts: %s)" % (
        backend, name, ", ".join(sorted(o.name for o in options)) or "none"))


def convert(options: Tuple[Option, ...], given, backend):
    """{name: value} (typed, or text as YAML or a user gave it) -> typed
    keyword options; InvalidArgument for an unknown name or a bad value."""
    return {name: _declared(options, name, backend).convert(value)
            for name, value in dict(given).items()}


def parse_texts(options: Tuple[Option, ...], texts, backend):
    """NAME=VALUE texts (--option) -> typed keyword options. A list option
    given twice adds up; any other given twice takes the later value."""
    parsed = {}
    for text in texts or ():
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not name:
            raise errors.InvalidArgument("--option %r must be NAME=VALUE" % text)
        option = _declared(options, name, backend)
        typed = option.convert(value)
        if option.kind == "list" and name in parsed:
            typed = parsed[name] + typed
        parsed[name] = typed
    return parsed


def to_texts(options: Tuple[Option, ...], typed, backend):
    """Typed keyword options -> NAME=VALUE texts that parse_texts reads back."""
    return ["%s=%s" % (name, _declared(options, name, backend).text(value))
            for name, value in sorted(dict(typed).items())]
