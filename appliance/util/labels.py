"""Label and field selectors, ported from ``k8s.io/apimachinery``.

Label selectors (``labels.Parse``)::

    <selector-syntax>         ::= <requirement> | <requirement> "," <selector-syntax>
    <requirement>             ::= [!] KEY [ <set-based-restriction> | <exact-match-restriction> ]
    <set-based-restriction>   ::= "" | <inclusion-exclusion> <value-set>
    <inclusion-exclusion>     ::= "in" | "notin"
    <value-set>               ::= "(" <values> ")"
    <values>                  ::= VALUE | VALUE "," <values>
    <exact-match-restriction> ::= ["=" | "==" | "!=" | ">" | "<"] VALUE

Keys must be qualified names, values valid label values (``names``); the
error texts are Kubernetes' own, e.g. ``unable to parse requirement: found
'(', expected: identifier``. Requirements are kept sorted by key, and set
values sorted and de-duplicated, as Kubernetes does.

The object form (``matchLabels``/``matchExpressions``, ``metav1.LabelSelector``)
follows ``metav1.LabelSelectorAsSelector``: ``None`` selects nothing, an
empty object selects everything.

Field selectors (``fields.ParseSelector``) are comma-separated ``field=value``,
``field==value`` or ``field!=value`` terms with no whitespace trimming; in a
value, ``\\``, ``,`` and ``=`` must be escaped with a backslash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import NamedTuple

from appliance.util.names import label_value, qualified_name

__all__ = [
    "EVERYTHING",
    "NOTHING",
    "FieldRequirement",
    "FieldSelector",
    "LabelSelector",
    "Operator",
    "Requirement",
    "SelectorError",
    "escape_field_value",
    "new_requirement",
    "parse_field_selector",
    "parse_label_selector",
    "selector_from_label_selector_object",
    "selector_from_set",
]


class SelectorError(ValueError):
    """A label or field selector is malformed; the message is Kubernetes' own."""


class Operator(StrEnum):
    """``selection.Operator`` values."""

    DOES_NOT_EXIST = "!"
    EQUALS = "="
    DOUBLE_EQUALS = "=="
    IN = "in"
    NOT_EQUALS = "!="
    NOT_IN = "notin"
    EXISTS = "exists"
    GREATER_THAN = "gt"
    LESS_THAN = "lt"


_BINARY_OPERATORS = ["in", "notin", "=", "==", "!=", "gt", "lt"]
_VALID_OPERATORS = _BINARY_OPERATORS + ["exists", "!"]
_MAX_INT64 = (1 << 63) - 1


# -- Go-compatible error text --------------------------------------------------

_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def _go_quote(s: str) -> str:
    """Go's ``%q`` for a string (``strconv.Quote``), close enough for messages."""
    out = []
    for ch in s:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _invalid(path: str, value: str | Sequence[str], detail: str) -> str:
    """``field.Invalid(path, value, detail).Error()``."""
    if isinstance(value, str):
        shown = _go_quote(value)
    else:
        shown = "[]string{" + ", ".join(_go_quote(v) for v in value) + "}"
    return f"{path}: Invalid value: {shown}: {detail}"


def _aggregate(messages: Iterable[str]) -> str:
    """``ErrorList.ToAggregate().Error()``: de-duplicated, bracketed when several."""
    unique = list(dict.fromkeys(messages))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"


def _go_parse_int64(text: str) -> int | None:
    body = text[1:] if text[:1] in ("+", "-") else text
    if not body or not body.isascii() or not body.isdigit():
        return None
    value = int(text)
    return value if -_MAX_INT64 - 1 <= value <= _MAX_INT64 else None


# -- label requirements -------------------------------------------------------

@dataclass(frozen=True)
class Requirement:
    """One ``key <operator> values`` term of a label selector."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """``Requirement.Matches``."""
        op = self.operator
        if op in (Operator.IN, Operator.EQUALS, Operator.DOUBLE_EQUALS):
            return self.key in labels and labels[self.key] in self.values
        if op in (Operator.NOT_IN, Operator.NOT_EQUALS):
            return self.key not in labels or labels[self.key] not in self.values
        if op is Operator.EXISTS:
            return self.key in labels
        if op is Operator.DOES_NOT_EXIST:
            return self.key not in labels
        if op in (Operator.GREATER_THAN, Operator.LESS_THAN):
            if self.key not in labels or len(self.values) != 1:
                return False
            have = _go_parse_int64(labels[self.key])
            want = _go_parse_int64(self.values[0])
            if have is None or want is None:
                return False
            return have > want if op is Operator.GREATER_THAN else have < want
        return False

    def __str__(self) -> str:
        op = self.operator
        text = ("!" if op is Operator.DOES_NOT_EXIST else "") + self.key
        if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST):
            return text
        text += {Operator.IN: " in ", Operator.NOT_IN: " notin ", Operator.GREATER_THAN: ">",
                 Operator.LESS_THAN: "<"}.get(op, str(op))
        values = self.values[0] if len(self.values) == 1 else ",".join(sorted(self.values))
        if op in (Operator.IN, Operator.NOT_IN):
            return f"{text}({values})"
        return text + values


def _requirement_errors(key: str, op: str, values: Sequence[str]) -> list[str]:
    """``labels.NewRequirement`` validation, as field error messages."""
    errs: list[str] = []
    if key_errs := qualified_name(key):
        errs.append(_invalid("key", key, "; ".join(key_errs)))
    if op in (Operator.IN, Operator.NOT_IN):
        if not values:
            errs.append(_invalid("values", values,
                                 "for 'in', 'notin' operators, values set can't be empty"))
    elif op in (Operator.EQUALS, Operator.DOUBLE_EQUALS, Operator.NOT_EQUALS):
        if len(values) != 1:
            errs.append(_invalid("values", values,
                                 "exact-match compatibility requires one single value"))
    elif op in (Operator.EXISTS, Operator.DOES_NOT_EXIST):
        if values:
            errs.append(_invalid("values", values,
                                 "values set must be empty for exists and does not exist"))
    elif op in (Operator.GREATER_THAN, Operator.LESS_THAN):
        if len(values) != 1:
            errs.append(_invalid("values", values,
                                 "for 'Gt', 'Lt' operators, exactly one value is required"))
        for i, value in enumerate(values):
            if _go_parse_int64(value) is None:
                errs.append(_invalid(f"values[{i}]", value,
                                     "for 'Gt', 'Lt' operators, the value must be an integer"))
    else:
        supported = ", ".join(_go_quote(o) for o in _VALID_OPERATORS)
        errs.append(f"operator: Unsupported value: {_go_quote(op)}: supported values: {supported}")
    for i, value in enumerate(values):
        if value_errs := label_value(value):
            errs.append(_invalid(f"values[{i}][{key}]", value, "; ".join(value_errs)))
    return errs


def new_requirement(key: str, operator: str, values: Sequence[str] = ()) -> Requirement:
    """``labels.NewRequirement``: a validated requirement, or ``SelectorError``.

    ``values`` keep their order (the string parser passes them sorted).
    """
    errs = _requirement_errors(key, operator, values)
    if errs:
        raise SelectorError(_aggregate(errs))
    return Requirement(key, Operator(operator), tuple(values))


@dataclass(frozen=True)
class LabelSelector:
    """An AND of requirements; or, with ``matches_nothing``, ``labels.Nothing()``."""

    requirements: tuple[Requirement, ...] = ()
    matches_nothing: bool = False

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether every requirement holds for ``labels``."""
        if self.matches_nothing:
            return False
        return all(r.matches(labels) for r in self.requirements)

    @property
    def is_empty(self) -> bool:
        """``Selector.Empty``: true when it does not restrict (selects everything)."""
        return not self.matches_nothing and not self.requirements

    def requires_exact_match(self, key: str) -> str | None:
        """``RequiresExactMatch``: the single value ``key`` must have, if any."""
        for r in self.requirements:
            if r.key == key:
                if r.operator in (Operator.EQUALS, Operator.DOUBLE_EQUALS, Operator.IN) \
                        and len(r.values) == 1:
                    return r.values[0]
                return None
        return None

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


EVERYTHING = LabelSelector()
NOTHING = LabelSelector(matches_nothing=True)


def _sorted_by_key(requirements: Iterable[Requirement]) -> tuple[Requirement, ...]:
    return tuple(sorted(requirements, key=lambda r: r.key.encode("utf-8", "surrogatepass")))


# -- the label selector parser --------------------------------------------------

class _Tok(Enum):
    ERROR = "error"
    END = "end"
    CLOSED_PAR = ")"
    COMMA = ","
    DOES_NOT_EXIST = "!"
    DOUBLE_EQUALS = "=="
    EQUALS = "="
    GREATER_THAN = ">"
    IDENTIFIER = "identifier"
    IN = "in"
    LESS_THAN = "<"
    NOT_EQUALS = "!="
    NOT_IN = "notin"
    OPEN_PAR = "("


_STRING_TO_TOKEN = {
    ")": _Tok.CLOSED_PAR, ",": _Tok.COMMA, "!": _Tok.DOES_NOT_EXIST, "==": _Tok.DOUBLE_EQUALS,
    "=": _Tok.EQUALS, ">": _Tok.GREATER_THAN, "in": _Tok.IN, "<": _Tok.LESS_THAN,
    "!=": _Tok.NOT_EQUALS, "notin": _Tok.NOT_IN, "(": _Tok.OPEN_PAR,
}
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")
_EOF = "\x00"


class _Lexer:
    """Port of ``labels.Lexer`` (a NUL character behaves as end of input, as in Go)."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.pos = 0

    def read(self) -> str:
        if self.pos < len(self.s):
            ch = self.s[self.pos]
            self.pos += 1
            return ch
        return _EOF

    def unread(self) -> None:
        self.pos -= 1

    def scan_id_or_keyword(self) -> tuple[_Tok, str]:
        buf = []
        while True:
            ch = self.read()
            if ch == _EOF:
                break
            if ch in _SPECIAL or ch in _WHITESPACE:
                self.unread()
                break
            buf.append(ch)
        text = "".join(buf)
        return _STRING_TO_TOKEN.get(text, _Tok.IDENTIFIER), text

    def scan_special_symbol(self) -> tuple[_Tok, str]:
        last: tuple[_Tok, str] | None = None
        buf = ""
        while True:
            ch = self.read()
            if ch == _EOF:
                break
            if ch in _SPECIAL:
                buf += ch
                if buf in _STRING_TO_TOKEN:
                    last = (_STRING_TO_TOKEN[buf], buf)
                elif last is not None:
                    self.unread()
                    break
            else:
                self.unread()
                break
        if last is None:
            return _Tok.ERROR, f"error expected: keyword found '{buf}'"
        return last

    def lex(self) -> tuple[_Tok, str]:
        ch = self.read()
        while ch in _WHITESPACE:
            ch = self.read()
        if ch == _EOF:
            return _Tok.END, ""
        self.unread()
        if ch in _SPECIAL:
            return self.scan_special_symbol()
        return self.scan_id_or_keyword()


class _Parser:
    """Port of ``labels.Parser``; raises ``SelectorError`` with Kubernetes' messages."""

    def __init__(self, text: str) -> None:
        lexer = _Lexer(text)
        self.items: list[tuple[_Tok, str]] = []
        while True:
            item = lexer.lex()
            self.items.append(item)
            if item[0] is _Tok.END:
                break
        self.position = 0

    def _get(self, index: int, values: bool) -> tuple[_Tok, str]:
        tok, lit = self.items[index]
        if values and tok in (_Tok.IN, _Tok.NOT_IN):
            tok = _Tok.IDENTIFIER
        return tok, lit

    def lookahead(self, values: bool = True) -> tuple[_Tok, str]:
        return self._get(self.position, values)

    def consume(self, values: bool = True) -> tuple[_Tok, str]:
        self.position += 1
        return self._get(self.position - 1, values)

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        while True:
            tok, lit = self.lookahead()
            if tok in (_Tok.IDENTIFIER, _Tok.DOES_NOT_EXIST):
                try:
                    requirements.append(self.parse_requirement())
                except SelectorError as exc:
                    raise SelectorError(f"unable to parse requirement: {exc}") from None
                tok, lit = self.consume()
                if tok is _Tok.END:
                    return requirements
                if tok is _Tok.COMMA:
                    tok2, lit2 = self.lookahead()
                    if tok2 not in (_Tok.IDENTIFIER, _Tok.DOES_NOT_EXIST):
                        raise SelectorError(f"found '{lit2}', expected: identifier after ','")
                else:
                    raise SelectorError(f"found '{lit}', expected: ',' or 'end of string'")
            elif tok is _Tok.END:
                return requirements
            else:
                raise SelectorError(f"found '{lit}', expected: !, identifier, or 'end of string'")

    def parse_requirement(self) -> Requirement:
        key, operator = self.parse_key_and_infer_operator()
        if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST):
            return new_requirement(key, operator, [])
        operator = self.parse_operator()
        if operator in (Operator.IN, Operator.NOT_IN):
            values = self.parse_values()
        else:
            values = self.parse_exact_value()
        return new_requirement(key, operator, sorted(values))

    def parse_key_and_infer_operator(self) -> tuple[str, Operator | None]:
        operator: Operator | None = None
        tok, literal = self.consume()
        if tok is _Tok.DOES_NOT_EXIST:
            operator = Operator.DOES_NOT_EXIST
            tok, literal = self.consume()
        if tok is not _Tok.IDENTIFIER:
            raise SelectorError(f"found '{literal}', expected: identifier")
        if errs := qualified_name(literal):
            raise SelectorError(_invalid("<nil>", literal, "; ".join(errs)))
        if self.lookahead()[0] in (_Tok.END, _Tok.COMMA) and operator is None:
            operator = Operator.EXISTS
        return literal, operator

    def parse_operator(self) -> Operator:
        tok, lit = self.consume(values=False)
        ops = {_Tok.IN: Operator.IN, _Tok.EQUALS: Operator.EQUALS,
               _Tok.DOUBLE_EQUALS: Operator.DOUBLE_EQUALS, _Tok.GREATER_THAN:
               Operator.GREATER_THAN, _Tok.LESS_THAN: Operator.LESS_THAN,
               _Tok.NOT_IN: Operator.NOT_IN, _Tok.NOT_EQUALS: Operator.NOT_EQUALS}
        if tok not in ops:
            raise SelectorError(f"found '{lit}', expected: {', '.join(_BINARY_OPERATORS)}")
        return ops[tok]

    def parse_values(self) -> set[str]:
        tok, lit = self.consume()
        if tok is not _Tok.OPEN_PAR:
            raise SelectorError(f"found '{lit}' expected: '('")
        tok, lit = self.lookahead()
        if tok in (_Tok.IDENTIFIER, _Tok.COMMA):
            values = self.parse_identifiers_list()
            if self.consume()[0] is not _Tok.CLOSED_PAR:  # pragma: no cover - unreachable
                raise SelectorError(f"found '{lit}', expected: ')'")
            return values
        if tok is _Tok.CLOSED_PAR:  # "()"
            self.consume()
            return {""}
        raise SelectorError(f"found '{lit}', expected: ',', ')' or identifier")

    def parse_identifiers_list(self) -> set[str]:
        values: set[str] = set()
        while True:
            tok, lit = self.consume()
            if tok is _Tok.IDENTIFIER:
                values.add(lit)
                tok2, lit2 = self.lookahead()
                if tok2 is _Tok.COMMA:
                    continue
                if tok2 is _Tok.CLOSED_PAR:
                    return values
                raise SelectorError(f"found '{lit2}', expected: ',' or ')'")
            if tok is _Tok.COMMA:  # "(,", ",,", ",)" stand for empty values
                if not values:
                    values.add("")
                tok2 = self.lookahead()[0]
                if tok2 is _Tok.CLOSED_PAR:
                    values.add("")
                    return values
                if tok2 is _Tok.COMMA:
                    values.add("")
            else:
                raise SelectorError(f"found '{lit}', expected: ',', or identifier")

    def parse_exact_value(self) -> set[str]:
        if self.lookahead()[0] in (_Tok.END, _Tok.COMMA):
            return {""}
        tok, lit = self.consume()
        if tok is _Tok.IDENTIFIER:
            return {lit}
        raise SelectorError(f"found '{lit}', expected: identifier")


def parse_label_selector(s: str) -> LabelSelector:
    """``labels.Parse``: ``""`` selects everything; raises ``SelectorError``."""
    return LabelSelector(_sorted_by_key(_Parser(s).parse()))


def selector_from_set(labels: Mapping[str, str]) -> LabelSelector:
    """``labels.SelectorFromSet``: ``key=value`` for each pair, not validated."""
    return LabelSelector(_sorted_by_key(
        Requirement(k, Operator.EQUALS, (v,)) for k, v in labels.items()))


_OBJECT_OPERATORS = {"In": Operator.IN, "NotIn": Operator.NOT_IN, "Exists": Operator.EXISTS,
                     "DoesNotExist": Operator.DOES_NOT_EXIST}


def _str_list(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SelectorError(f"{what} must be a list of strings")
    return list(value)


def selector_from_label_selector_object(obj: Mapping[str, object] | None) -> LabelSelector:
    """``metav1.LabelSelectorAsSelector`` for a ``{matchLabels, matchExpressions}`` dict.

    ``None`` -> matches nothing; ``{}`` (or both parts empty) -> everything.
    Expression operators are ``In``, ``NotIn``, ``Exists``, ``DoesNotExist``.
    """
    if obj is None:
        return NOTHING
    if not isinstance(obj, Mapping):
        raise SelectorError("a label selector must be an object")
    match_labels = obj.get("matchLabels") or {}
    expressions = obj.get("matchExpressions") or []
    if not isinstance(match_labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in match_labels.items()):
        raise SelectorError("matchLabels must be a map of strings to strings")
    if not isinstance(expressions, list):
        raise SelectorError("matchExpressions must be a list")
    if not match_labels and not expressions:
        return EVERYTHING
    requirements = [new_requirement(k, Operator.EQUALS, [v])
                    for k, v in sorted(match_labels.items())]
    for expr in expressions:
        if not isinstance(expr, Mapping):
            raise SelectorError("matchExpressions entries must be objects")
        key = expr.get("key", "")
        operator = expr.get("operator", "")
        if not isinstance(key, str) or not isinstance(operator, str):
            raise SelectorError("matchExpressions key and operator must be strings")
        if operator not in _OBJECT_OPERATORS:
            raise SelectorError(f"{_go_quote(operator)} is not a valid label selector operator")
        values = _str_list(expr.get("values"), "matchExpressions values")
        requirements.append(new_requirement(key, _OBJECT_OPERATORS[operator], values))
    return LabelSelector(_sorted_by_key(requirements))


# -- field selectors -------------------------------------------------------------

class FieldRequirement(NamedTuple):
    """One field selector term; ``operator`` is ``"="`` (also for ``==``) or ``"!="``."""

    field: str
    operator: str
    value: str


def escape_field_value(value: str) -> str:
    """``fields.EscapeValue``: backslash-escape ``\\``, ``,`` and ``=``."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


@dataclass(frozen=True)
class FieldSelector:
    """An AND of field requirements (empty: selects everything)."""

    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, get: Callable[[str], str | None]) -> bool:
        """Whether every term holds; ``get(field)`` returning ``None`` counts as ``""``,
        as a missing key of a Kubernetes ``fields.Set`` does."""
        for field, op, value in self.requirements:
            have = get(field) or ""
            if (have == value) != (op == "="):
                return False
        return True

    @property
    def is_empty(self) -> bool:
        return not self.requirements

    def requires_exact_match(self, field: str) -> str | None:
        """The value ``field`` must equal, if an ``=`` term names it."""
        for f, op, value in self.requirements:
            if f == field and op == "=":
                return value
        return None

    def __str__(self) -> str:
        return ",".join(f"{f}{op}{escape_field_value(v)}" for f, op, v in self.requirements)


def _split_terms(selector: str) -> list[str]:
    if not selector:
        return []
    terms = []
    start = 0
    in_slash = False
    for i, c in enumerate(selector):
        if in_slash:
            in_slash = False
        elif c == "\\":
            in_slash = True
        elif c == ",":
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    for i in range(len(term)):
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op):]
    return None


def _unescape_value(s: str) -> str:
    if not any(c in s for c in "\\,="):
        return s
    out = []
    in_slash = False
    for c in s:
        if in_slash:
            if c not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{c}")
            out.append(c)
            in_slash = False
        elif c == "\\":
            in_slash = True
        elif c in ",=":
            # Kubernetes prints the rune as a number here
            raise SelectorError(
                f"invalid field selector: unescaped character in value: {ord(c)}")
        else:
            out.append(c)
    if in_slash:
        raise SelectorError("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


def parse_field_selector(s: str) -> FieldSelector:
    """``fields.ParseSelector``: ``""`` selects everything; raises ``SelectorError``.

    Terms come out sorted (Kubernetes sorts the raw terms); a term with an
    empty field and value (``"="``) is dropped, as Kubernetes does.
    """
    requirements = []
    for part in sorted(_split_terms(s)):
        if not part:
            continue
        split = _split_term(part)
        if split is None:
            raise SelectorError(f"invalid selector: '{s}'; can't understand '{part}'")
        field, op, raw = split
        value = _unescape_value(raw)
        if not field and not value:
            continue
        requirements.append(FieldRequirement(field, "!=" if op == "!=" else "=", value))
    return FieldSelector(tuple(requirements))
