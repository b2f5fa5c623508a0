"""containerd's filter language (pkg/filters), as Walk and `ls --filter` use it.

    selectors := selector ("," selector)*
    selector  := fieldpath [op value]
    fieldpath := field ("." field)*
    field     := quoted | [A-Za-z0-9_]+
    op        := "==" | "!=" | "~="
    value     := quoted | [^\\s,]+

A comma ANDs selectors within one filter string; several filter strings OR.
An empty string matches everything, and so does no filter string at all.
A selector without an operator tests that the field is present; `==` wants it
present and equal; `!=` wants its value (an absent field has the value "")
to differ; `~=` searches the value (again "" when absent) with a regular
expression.

The scanner and parser follow containerd's token by token, so that the same
strings are accepted, mean the same thing and fail at the same place:

- Quoted strings use Go string-literal escapes (\\a \\b \\f \\n \\r \\t \\v \\\\,
  \\ooo octal, \\xhh, \\uhhhh, \\Uhhhhhhhh, and an escaped quote). The quote
  characters are `"` and, for `~=` values only, `/` and `|`, so a regular
  expression can hold quotes and commas: `name~=/a,"b"/`. A `/` or `|`
  anywhere else starts a quoted string that is then refused, which is why
  `labels.containerd.io/gc.root` must be written `labels."containerd.io/gc.root"`
  and why a plain value cannot start with `/`.
- Whitespace may precede a field, an operator or a value, but nothing may
  follow a selector except `,` or the end: containerd refuses "name==a " too.
- Parse errors read like containerd's, marking the character at fault:
  `filters: parse error: [labels. >|||< foo|==x]: invalid quote encountered`.
  Positions count characters, where Go counts bytes.

Deliberate differences from containerd:

- A `~=` value that is not a valid regular expression is a parse error
  (InvalidArgument). containerd compiles it at match time, logs, and matches
  nothing, which hides the mistake.
- The regular expression is Python's `re.search`, not Go's RE2. Patterns in
  the common subset behave the same; known differences: Python also accepts
  backreferences and lookarounds (RE2 refuses them), `$` also matches before a
  final newline, `\\d` `\\w` `\\s` are Unicode-aware, and RE2-only syntax such
  as `\\pL`, `[[:alpha:]]` or a mid-pattern `(?i)` is refused or read
  differently.
"""

import dataclasses
import re
import unicodedata
from typing import Callable, Optional, Tuple

from .errors import InvalidArgument
from .types import Kind

__all__ = ["Filter", "FilterParseError", "match_info", "parse", "snapshot_fields"]

Lookup = Callable[[Tuple[str, ...]], Optional[str]]
"""Maps a field path to the field's value, or None when the field is absent."""

PRESENT = "?"  # containerd's name for the operator-less selector
EQUAL = "=="
NOT_EQUAL = "!="
MATCHES = "~="


class FilterParseError(InvalidArgument):
    """A filter string that does not parse; says where and why."""

    def __init__(self, filter_string, position, reason):
        self.filter_string = filter_string
        self.position = position
        self.reason = reason
        super().__init__("filters: parse error: %s: %s"
                         % (_point_at(filter_string, position), reason))


def _point_at(text, position):
    """containerd's way of showing where a parse went wrong: `[ab >|c|< d]`."""
    if position < len(text):
        return "[%s >|%s|< %s]" % (text[:position], text[position], text[position + 1:])
    return "[%s]" % text


@dataclasses.dataclass(frozen=True)
class Selector:
    """One `fieldpath [op value]` term."""

    fieldpath: Tuple[str, ...]
    operator: str = PRESENT
    value: str = ""
    regex: Optional["re.Pattern"] = None

    def match(self, lookup):
        value = lookup(self.fieldpath)
        if self.operator == PRESENT:
            return value is not None
        if self.operator == EQUAL:
            return value is not None and value == self.value
        if value is None:
            value = ""  # absent compares as empty for != and ~= (containerd)
        if self.operator == NOT_EQUAL:
            return value != self.value
        return self.regex.search(value) is not None


class Filter:
    """A parsed filter: matches when every selector of any one alternative does."""

    def __init__(self, alternatives, sources=()):
        # One tuple of selectors per filter string; an empty tuple matches all.
        self.alternatives = tuple(tuple(selectors) for selectors in alternatives)
        self.sources = tuple(sources)

    def match(self, lookup):
        """lookup(fieldpath tuple) -> value str, or None for an absent field."""
        return any(all(selector.match(lookup) for selector in selectors)
                   for selectors in self.alternatives)

    def __repr__(self):
        return "Filter(%s)" % ", ".join(repr(s) for s in self.sources)


def parse(*filter_strings):
    """The Filter of containerd's ParseAll: OR of the strings; none = match all.

    Raises FilterParseError (an InvalidArgument) for the first malformed string.
    """
    if not filter_strings:
        return Filter([()])
    alternatives = []
    for text in filter_strings:
        if not isinstance(text, str):
            raise TypeError("a filter is a string, not %r" % (text,))
        # The empty string matches everything: an empty AND.
        alternatives.append(_Parser(text).parse() if text else ())
    return Filter(alternatives, filter_strings)


def snapshot_fields(info):
    """The Lookup of a snapshot Info: containerd's storage adaptSnapshot.

    kind → "active" | "view" | "committed"; name; parent (always present, ""
    without a parent); labels.<rest joined by "."> → that label's value,
    present only if the label exists. Any other field is absent.
    """
    def lookup(fieldpath):
        if not fieldpath:
            return None
        field, rest = fieldpath[0], fieldpath[1:]
        if field == "kind":
            return None if info.kind == Kind.UNKNOWN else Kind(info.kind).filter_value
        if field == "name":
            return info.name
        if field == "parent":
            return info.parent or ""
        if field == "labels":
            # Joined back, so unquoted labels.a.b still finds the label "a.b".
            return (info.labels or {}).get(".".join(rest))
        return None
    return lookup


def match_info(filter, info):  # noqa: A002 - reads naturally at the call site
    """Whether the snapshot Info matches the parsed Filter."""
    return filter.match(snapshot_fields(info))


# -- scanner -------------------------------------------------------------------
#
# Token kinds. EOF and ILLEGAL double as the "characters" the scanner's _next
# returns at the end of input and for a character that may not appear at all;
# both are longer than one character, so they never equal a real one.
EOF = "EOF"
ILLEGAL = "ILLEGAL"
QUOTED = "QUOTED"
VALUE = "VALUE"
FIELD = "FIELD"
SEPARATOR = "SEPARATOR"
OPERATOR = "OPERATOR"
CHAR = "CHAR"  # any other single character, which no rule of the grammar wants

_QUOTE_CHARS = frozenset('"/|')
_SEPARATOR_CHARS = frozenset(",.")
_OPERATOR_CHARS = frozenset("=!~")
_FIELD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
                   "t": "\t", "v": "\v", "\\": "\\"}
# Go's unicode.IsSpace (the White_Space property); str.isspace() differs.
_GO_SPACES = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                       + "".join(chr(c) for c in range(0x2000, 0x200B)))


def _is_space(ch):
    return ch in _GO_SPACES


def _is_value_char(ch):
    # Go: not ',' nor space, and a letter, digit, number, graphic or punctuation.
    return (len(ch) == 1 and ch != "," and not _is_space(ch)
            and unicodedata.category(ch)[0] in "LMNPS")


def _digit_value(ch):
    if len(ch) == 1 and ch in "0123456789abcdefABCDEF":
        return int(ch, 16)
    return 16  # larger than any digit of any base used here


class _Scanner:
    """containerd's filter scanner: yields (position, kind, text) tokens.

    `start` is where the current character begins and `end` where it ends.
    After an operator the scanner is in value mode, where any run of value
    characters is one VALUE token instead of a FIELD.
    """

    def __init__(self, text):
        self.text = text
        self.start = 0
        self.end = 0
        self.in_value = False
        self.error = ""

    def _fail(self, message):
        if not self.error:  # the first problem is the one worth reporting
            self.error = message

    def _next(self):
        if self.start >= len(self.text):
            return EOF
        self.start = self.end
        if self.end >= len(self.text):
            return EOF
        ch = self.text[self.end]
        self.end += 1
        if ch == "\x00":
            self._fail("unexpected null")
            return ILLEGAL
        if "\ud800" <= ch <= "\udfff":  # undecodable byte (surrogateescape)
            self._fail("rune error")
            return ILLEGAL
        return ch

    def peek(self):
        saved = self.start, self.end
        ch = self._next()
        self.start, self.end = saved
        return ch

    def scan(self):
        ch = self._next()
        while _is_space(ch):
            ch = self._next()
        position = self.start
        if ch in (EOF, ILLEGAL):
            return position, ch, ""
        if ch in _QUOTE_CHARS:
            kind = QUOTED if self._scan_quoted(ch) else ILLEGAL
            return position, kind, self.text[position:self.end]
        if ch in _SEPARATOR_CHARS:
            self.in_value = False
            return position, SEPARATOR, ch
        if ch in _OPERATOR_CHARS:
            while self.peek() in _OPERATOR_CHARS:
                self._next()
            self.in_value = True
            return position, OPERATOR, self.text[position:self.end]
        if self.in_value:
            while _is_value_char(self.peek()):
                self._next()
            self.in_value = False
            return position, VALUE, self.text[position:self.end]
        if ch in _FIELD_CHARS:
            while self.peek() in _FIELD_CHARS:
                self._next()
            return position, FIELD, self.text[position:self.end]
        return position, CHAR, ch

    def _scan_quoted(self, quote):
        """Skip to the closing quote; False if the literal is malformed."""
        legal = True
        ch = self._next()
        while ch != quote:
            if ch in ("\n", EOF, ILLEGAL):
                self._fail("quoted literal not terminated")
                return False
            if ch == "\\":
                ch, escape_ok = self._scan_escape(quote)
                legal = legal and escape_ok
            else:
                ch = self._next()
        return legal

    def _scan_escape(self, quote):
        """Skip one escape; returns the character after it and whether it was legal."""
        ch = self._next()
        if ch in _SIMPLE_ESCAPES or ch == quote:
            return self._next(), True
        if len(ch) == 1 and ch in "01234567":
            return self._scan_digits(ch, 8, 3)
        digit_counts = {"x": 2, "u": 4, "U": 8}
        if ch in digit_counts:
            return self._scan_digits(self._next(), 16, digit_counts[ch])
        self._fail("illegal escape sequence")
        return ch, False

    def _scan_digits(self, ch, base, count):
        while count > 0 and _digit_value(ch) < base:
            ch = self._next()
            count -= 1
        if count > 0:
            self._fail("illegal numeric escape sequence")
            return ch, False
        return ch, True


# -- parser --------------------------------------------------------------------

class _Parser:
    """containerd's recursive-descent parser over _Scanner's tokens."""

    def __init__(self, text):
        self.text = text
        self.scanner = _Scanner(text)

    def fail(self, position, reason):
        raise FilterParseError(self.text, position, reason)

    def parse(self):
        selectors = [self.selector()]
        while True:
            # containerd peeks at the raw next character here, not at a token,
            # so even a space after a complete selector is unexpected input.
            ch = self.scanner.peek()
            if ch == EOF:
                return tuple(selectors)
            if ch != ",":
                shown = "\ufffd" if ch == ILLEGAL else ch  # Go prints string(rune(-7))
                self.fail(self.scanner.end, "unexpected input: %s" % shown)
            self.scanner.scan()  # the comma
            selectors.append(self.selector())

    def selector(self):
        fieldpath = self.fieldpath()
        if self.scanner.peek() in (",", EOF):
            return Selector(fieldpath)
        operator = self.operator()
        position, value = self.value(allow_alternative_quotes=operator == MATCHES)
        if operator != MATCHES:
            return Selector(fieldpath, operator, value)
        try:
            regex = re.compile(value)
        except re.error as error:
            self.fail(position, "invalid regular expression %s: %s" % (_go_quote(value), error))
        return Selector(fieldpath, operator, value, regex)

    def fieldpath(self):
        fields = [self.field()]
        while self.scanner.peek() == ".":
            self.scanner.scan()  # the dot
            fields.append(self.field())
        return tuple(fields)

    def field(self):
        position, kind, text = self.scanner.scan()
        if kind == FIELD:
            return text
        if kind == QUOTED:
            return self.unquote(position, text, allow_alternative_quotes=False)
        if kind == ILLEGAL:
            self.fail(position, self.scanner.error)
        self.fail(position, "expected field or quoted")

    def operator(self):
        position, kind, text = self.scanner.scan()
        if kind == OPERATOR:
            if text in (EQUAL, NOT_EQUAL, MATCHES):
                return text
            self.fail(position, "unsupported operator %s" % _go_quote(text))
        if kind == ILLEGAL:
            self.fail(position, self.scanner.error)
        self.fail(position, 'expected an operator ("=="|"!="|"~=")')

    def value(self, allow_alternative_quotes):
        position, kind, text = self.scanner.scan()
        if kind in (VALUE, FIELD):
            return position, text
        if kind == QUOTED:
            return position, self.unquote(position, text, allow_alternative_quotes)
        if kind == ILLEGAL:
            self.fail(position, self.scanner.error)
        self.fail(position, "expected value or quoted")

    def unquote(self, position, literal, allow_alternative_quotes):
        if not allow_alternative_quotes and literal[0] not in "'\"":
            self.fail(position, "invalid quote encountered")
        try:
            return _unquote(literal)
        except ValueError:
            self.fail(position, "unquoting failed: quote syntax error")


def _go_quote(text):
    """Roughly Go's %q: enough for messages, which is all it is used for."""
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def _unquote(literal):
    """The text of a Go-syntax string literal quoted with ", ' , / or |.

    Raises ValueError when the literal is malformed. As in Go, \\x and octal
    escapes give raw bytes: bytes that do not form UTF-8 become lone
    surrogates, which can never equal a real name or label.
    """
    if len(literal) < 2 or literal[0] != literal[-1]:
        raise ValueError(literal)
    quote, body = literal[0], literal[1:-1]
    if "\n" in body:
        raise ValueError(literal)
    if "\\" not in body and quote not in body:
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == quote:
            raise ValueError(literal)
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError(literal)
        escape = body[i + 1]
        i += 2
        if escape in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[escape].encode()
        elif escape in "xuU":
            count = {"x": 2, "u": 4, "U": 8}[escape]
            digits = body[i:i + count]
            if len(digits) < count or any(_digit_value(d) == 16 for d in digits):
                raise ValueError(literal)
            code = int(digits, 16)
            i += count
            if escape == "x":
                out.append(code)
            elif code > 0x10FFFF:
                raise ValueError(literal)
            else:
                # Go's utf8.EncodeRune writes U+FFFD for a surrogate.
                out += (chr(code) if not 0xD800 <= code <= 0xDFFF else "\ufffd").encode()
        elif escape in "01234567":
            digits = body[i - 1:i + 2]
            if len(digits) < 3 or any(d not in "01234567" for d in digits):
                raise ValueError(literal)
            code = int(digits, 8)
            i += 2
            if code > 255:
                raise ValueError(literal)
            out.append(code)
        elif escape in "'\"|/" and escape == quote:
            out += escape.encode()
        else:
            raise ValueError(literal)
    return out.decode("utf-8", "surrogateescape")
