"""Kubernetes ``resource.Quantity``: parsing and canonical formatting.

A faithful port of ``k8s.io/apimachinery/pkg/api/resource`` (``ParseQuantity``
and ``Quantity.String``), using :class:`decimal.Decimal` for the value.

Grammar (from the Go source)::

    <quantity>        ::= <signedNumber><suffix>
    <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
    <signedNumber>    ::= <number> | <sign><number>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
    <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>

Parsing semantics kept from Kubernetes:

* negative quantities parse (range checks belong to validation);
* values more precise than 1n are rounded *up* (away from zero) to 1n;
* ``BinarySI`` values are capped at 2^63-1 in magnitude;
* a few odd inputs parse as Kubernetes parses them: ``"."``, ``"-"`` and
  ``"+"`` are zero, ``"1."`` is one, ``"1.G"`` is 10^9;
* no surrounding whitespace (``ParseQuantity`` is strict; the JSON decoder
  trims first, which :func:`canonical_quantity` does too).

Formatting rule (:func:`format_quantity`): the canonical form Kubernetes emits
for a quantity of the given format. No precision is lost, no fractional digits
are emitted, and the exponent/suffix is as large as possible:

* ``DecimalSI`` (the default): mantissa times a power of 1000 written with
  n u m "" k M G T P E, e.g. 1.5 -> ``1500m``, 2000 -> ``2k``; a power outside
  that range falls back to exponent notation (10^21 -> ``1e21``);
* ``BinarySI``: integers with magnitude >= 1024 as mantissa times a power of
  1024 (Ki..Ei), e.g. 1536Mi stays ``1536Mi``, 2048 -> ``2Ki``; anything
  smaller than 1024 or fractional is written as ``DecimalSI``; a power beyond
  Ei falls back to ``DecimalExponent``;
* ``DecimalExponent``: like ``DecimalSI`` but ``e<n>`` (``1e3``, ``80e-3``);
* ``memory`` (alias ``storage``), a convenience of ours, not a Kubernetes
  format: the ``BinarySI`` form when it has a Ki..Ei suffix and its mantissa
  has no more digits than the ``DecimalSI`` one, else the ``DecimalSI`` form:
  ``128974848`` -> ``123Mi``, ``16Gi`` -> ``16Gi``, ``1000Ki`` -> ``1000Ki``,
  ``1G`` -> ``1G``, ``1T`` -> ``1T`` (not ``976562500Ki``);
* ``cpu``: an alias of ``DecimalSI`` (``500m``, ``2``, ``1500m``).
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

__all__ = [
    "ParsedQuantity",
    "QuantityError",
    "QuantityFormat",
    "canonical_quantity",
    "format_quantity",
    "parse_quantity",
    "parse_quantity_with_format",
]


class QuantityFormat(StrEnum):
    """The three serialisations Kubernetes remembers for a parsed quantity."""

    DECIMAL_SI = "DecimalSI"
    BINARY_SI = "BinarySI"
    DECIMAL_EXPONENT = "DecimalExponent"


SPLIT_RE_STRING = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
ERR_FORMAT_WRONG = "quantities must match the regular expression '" + SPLIT_RE_STRING + "'"
ERR_NUMERIC = "unable to parse numeric part of quantity"
ERR_SUFFIX = "unable to parse quantity's suffix"


class QuantityError(ValueError):
    """A string is not a Kubernetes quantity.

    ``reason`` is Kubernetes' own error text (what the API server reports);
    ``str(err)`` adds the offending value.
    """

    def __init__(self, value: object, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(f"cannot parse quantity {value!r}: {reason}")


@dataclass(frozen=True)
class ParsedQuantity:
    """A parsed quantity: its value, the format it remembers, and its text.

    ``canonical`` is what Kubernetes serialises the quantity back as; it is
    the input verbatim when Kubernetes' parser keeps the input string (it does
    so for inputs already in canonical shape, which includes ``"+5"``).
    """

    value: Decimal
    format: QuantityFormat
    canonical: str


_MAX_INT64 = (1 << 63) - 1
_MAX_INT32 = (1 << 31) - 1
_NANO = -9
_MAX_INT64_FACTORS = 18
_DIGITS = frozenset(string.digits)
_SUFFIX_CHARS = frozenset("eEinumkKMGTP")

_DEC_SUFFIXES: dict[str, int] = {
    "n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18,
}
_DEC_BY_EXP = {exp: sfx for sfx, exp in _DEC_SUFFIXES.items()}
_BIN_SUFFIXES: dict[str, int] = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_BIN_BY_POWER = {exp // 10: sfx for sfx, exp in _BIN_SUFFIXES.items()}

_HINTS: dict[str, str] = {
    "": "DecimalSI",
    "DecimalSI": "DecimalSI",
    "cpu": "DecimalSI",
    "BinarySI": "BinarySI",
    "DecimalExponent": "DecimalExponent",
    "memory": "memory",
    "storage": "memory",
}


# -- parsing -----------------------------------------------------------------

@dataclass(frozen=True)
class _Scanned:
    positive: bool
    value: str  # sign, digits and point as written (Kubernetes' "value")
    num: str  # integer digits, leading zeros stripped, "0" when none
    denom: str  # fraction digits as written
    suffix: str


def _scan(s: str) -> _Scanned:
    """Port of ``parseQuantityString``; raises ``QuantityError`` on bad shape."""
    positive = True
    pos = 0
    end = len(s)
    if pos < end and s[0] in "+-":
        positive = s[0] == "+"
        pos += 1
    # leading zeros
    while pos < end and s[pos] == "0":
        pos += 1
    if pos >= end:
        return _Scanned(positive, "0", "0", "", "")
    start = pos
    while pos < end and s[pos] in _DIGITS:
        pos += 1
    num = s[start:pos] or "0"
    if pos >= end:
        return _Scanned(positive, s, num, "", "")
    denom = ""
    if s[pos] == ".":
        pos += 1
        start = pos
        while pos < end and s[pos] in _DIGITS:
            pos += 1
        denom = s[start:pos]
        if pos >= end:
            return _Scanned(positive, s, num, denom, "")
    value = s[:pos]
    suffix_start = pos
    while pos < end and s[pos] in _SUFFIX_CHARS:
        pos += 1
    if pos >= end:
        return _Scanned(positive, value, num, denom, s[suffix_start:])
    if s[pos] in "+-":
        pos += 1
    while pos < end and s[pos] in _DIGITS:
        pos += 1
    if pos < end:
        raise QuantityError(s, ERR_FORMAT_WRONG)
    return _Scanned(positive, value, num, denom, s[suffix_start:])


def _go_parse_int64(text: str) -> int | None:
    """``strconv.ParseInt(text, 10, 64)``: optional sign, digits, in range."""
    body = text[1:] if text[:1] in ("+", "-") else text
    if not body or not all(c in _DIGITS for c in body):
        return None
    value = int(text)
    if not -_MAX_INT64 - 1 <= value <= _MAX_INT64:
        return None
    return value


def _interpret(suffix: str, original: str) -> tuple[int, int, QuantityFormat]:
    """Port of ``suffixHandler.interpret``: (base, exponent, format)."""
    if suffix in _DEC_SUFFIXES:
        return 10, _DEC_SUFFIXES[suffix], QuantityFormat.DECIMAL_SI
    if suffix in _BIN_SUFFIXES:
        return 2, _BIN_SUFFIXES[suffix], QuantityFormat.BINARY_SI
    if len(suffix) > 1 and suffix[0] in "eE":
        exponent = _go_parse_int64(suffix[1:])
        # the exponent becomes an int32 scale that is later negated
        if exponent is not None and -_MAX_INT32 <= exponent <= _MAX_INT32:
            return 10, exponent, QuantityFormat.DECIMAL_EXPONENT
    raise QuantityError(original, ERR_SUFFIX)


def _make_decimal(unscaled: int, exponent: int) -> Decimal:
    """An exact ``unscaled * 10**exponent`` (no context rounding)."""
    return Decimal(f"{unscaled}e{exponent}")


def _round_up_to_nano(unscaled: int, exponent: int) -> tuple[int, int]:
    """Round a non-negative value up (away from zero) to a multiple of 1n."""
    if exponent >= _NANO or unscaled == 0:
        return unscaled, exponent
    shift = _NANO - exponent
    if shift > len(str(unscaled)):  # below 1n: rounds up to exactly 1n
        return 1, _NANO
    quotient, remainder = divmod(unscaled, 10**shift)
    return quotient + (1 if remainder else 0), _NANO


def _coerce(s: str | float | Decimal) -> str:
    if isinstance(s, bool):
        raise QuantityError(s, "a quantity must be a string or a number")
    if isinstance(s, str):
        return s
    if isinstance(s, int):
        return str(s)
    if isinstance(s, float):
        if not math.isfinite(s):
            raise QuantityError(s, ERR_FORMAT_WRONG)
        return repr(s)
    if isinstance(s, Decimal):
        if not s.is_finite():
            raise QuantityError(s, ERR_FORMAT_WRONG)
        return str(s)
    raise QuantityError(s, "a quantity must be a string or a number")


def parse_quantity_with_format(s: str | float | Decimal) -> ParsedQuantity:
    """Parse like ``resource.ParseQuantity``: value, remembered format, text.

    Numbers are converted with ``str``/``repr`` first (``1.5`` -> ``"1.5"``).
    """
    text = _coerce(s)
    if not text:
        raise QuantityError(s, ERR_FORMAT_WRONG)
    if text == "0":
        return ParsedQuantity(Decimal(0), QuantityFormat.DECIMAL_SI, "0")

    sc = _scan(text)
    base, exponent, fmt = _interpret(sc.suffix, text)

    # The fast path of the Go parser; it matters only for when Kubernetes
    # keeps the input text as the serialised form.
    if fmt is QuantityFormat.BINARY_SI:
        scale = 0
        mantissa = 1
        if exponent >= 0 and not sc.denom:
            mantissa = 1 << exponent
            precision = 15 - len(sc.num) - exponent * 3 // 10 - 1
        else:
            precision = -1
    else:
        scale = exponent
        mantissa = 1
        precision = _MAX_INT64_FACTORS - (len(sc.num) + len(sc.denom))
    if precision >= 0:
        scale -= len(sc.denom)
        if scale >= _NANO:
            shifted = sc.num + sc.denom
            digits = int(shifted)
            result = digits * mantissa
            if result <= _MAX_INT64:
                value = _make_decimal(result if sc.positive else -result, scale)
                if fmt is QuantityFormat.BINARY_SI:
                    keep = exponent % 10 == 0 and digits & 0x07 != 0
                else:
                    keep = (scale % 3 == 0 and not shifted.endswith("000")
                            and shifted[0] != "0")
                canonical = text if keep else format_quantity(value, fmt)
                return ParsedQuantity(value, fmt, canonical)

    # The general path (inf.Dec in Go).
    if not any(c in _DIGITS for c in sc.value):
        raise QuantityError(s, ERR_NUMERIC)
    unscaled = int(sc.num + sc.denom)
    exp10 = -len(sc.denom)
    if base == 10:
        exp10 += exponent
    else:
        unscaled <<= exponent
    unscaled, exp10 = _round_up_to_nano(unscaled, exp10)
    if fmt is QuantityFormat.BINARY_SI and _make_decimal(unscaled, exp10) > _MAX_INT64:
        unscaled, exp10 = _MAX_INT64, 0
    magnitude = _make_decimal(unscaled, exp10)
    if fmt is QuantityFormat.BINARY_SI and 0 < magnitude < 1:
        fmt = QuantityFormat.DECIMAL_SI
    value = _make_decimal(unscaled if sc.positive else -unscaled, exp10)
    return ParsedQuantity(value, fmt, format_quantity(value, fmt))


def parse_quantity(s: str | float | Decimal) -> Decimal:
    """Parse a Kubernetes quantity (``"500m"``, ``"16Gi"``, ``"1e3"``) to a Decimal.

    Raises :class:`QuantityError` for input Kubernetes rejects.
    """
    return parse_quantity_with_format(s).value


def canonical_quantity(s: str | float | Decimal) -> str:
    """What the API server stores and returns for a quantity field.

    Mirrors Kubernetes' JSON round trip: surrounding whitespace is trimmed,
    the value is parsed, and the canonical text for its remembered format is
    returned (``"1.5"`` -> ``"1500m"``, ``"1024Mi"`` -> ``"1Gi"``,
    ``"128974848"`` -> ``"128974848"``).
    """
    if isinstance(s, str):
        s = s.strip()
    return parse_quantity_with_format(s).canonical


# -- formatting --------------------------------------------------------------

def _decimal_parts(d: Decimal) -> tuple[int, int]:
    """(unscaled, exponent) with trailing zeros moved into the exponent."""
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    unscaled = int("".join(map(str, digits)) or "0")
    if unscaled == 0:
        return 0, 0
    stripped = str(unscaled).rstrip("0")
    exponent += len(str(unscaled)) - len(stripped)
    unscaled = int(stripped)
    return (-unscaled if sign else unscaled), exponent


def _canonical_decimal(unscaled: int, exponent: int) -> tuple[str, int]:
    """``AsCanonicalBytes``: mantissa text and an exponent that is a multiple of 3."""
    while exponent % 3 != 0:
        unscaled *= 10
        exponent -= 1
    return str(unscaled), exponent


def _format_decimal(unscaled: int, exponent: int, fmt: str) -> str:
    number, exp = _canonical_decimal(unscaled, exponent)
    if fmt == "DecimalSI" and exp in _DEC_BY_EXP:
        return number + _DEC_BY_EXP[exp]
    return number if exp == 0 else f"{number}e{exp}"


def _binary_parts(unscaled: int, exponent: int) -> tuple[int, int] | None:
    """Mantissa and power of 1024 for an integer value with |value| >= 1024.

    ``None`` when the value is fractional (Kubernetes then writes DecimalSI).
    The power may exceed 6 (beyond ``Ei``).
    """
    if exponent < 0:  # trailing zeros are stripped, so this is fractional
        return None
    if exponent >= 70:  # 10**70 is divisible by 1024**7: past Ei for sure
        return unscaled, 7
    n = unscaled * 10**exponent
    negative = n < 0
    n = abs(n)
    power = 0
    while n >= 1024 and n % 1024 == 0:
        n //= 1024
        power += 1
    return (-n if negative else n), power


def format_quantity(d: Decimal, hint: str = "") -> str:
    """Canonical Kubernetes text for ``d``.

    ``hint`` picks the format: ``""``/``"DecimalSI"``/``"cpu"``,
    ``"BinarySI"``, ``"DecimalExponent"``, or ``"memory"``/``"storage"``
    (a binary suffix when exact and not longer, else DecimalSI). See the module docstring for
    the rules. ``d`` is written exactly; it is not rounded to 1n.
    """
    try:
        fmt = _HINTS[hint]
    except KeyError:
        raise ValueError(f"unknown quantity format hint {hint!r}; "
                         f"expected one of {sorted(_HINTS)}") from None
    if not isinstance(d, Decimal):
        raise TypeError(f"format_quantity needs a Decimal, not {type(d).__name__}")
    if not d.is_finite():
        raise ValueError(f"cannot format non-finite quantity {d}")
    unscaled, exponent = _decimal_parts(d)
    if unscaled == 0:
        return "0"
    if fmt == "DecimalExponent":
        return _format_decimal(unscaled, exponent, "DecimalExponent")
    if fmt in ("BinarySI", "memory") and not -1024 < d < 1024:
        parts = _binary_parts(unscaled, exponent)
        if parts is not None:
            mantissa, power = parts
            if power > 6:  # no binary suffix that large
                if fmt == "BinarySI":
                    return _format_decimal(unscaled, exponent, "DecimalExponent")
            elif fmt == "BinarySI":
                return str(mantissa) + _BIN_BY_POWER.get(power, "")
            elif power > 0:
                decimal_number, _ = _canonical_decimal(unscaled, exponent)
                if len(str(abs(mantissa))) <= len(decimal_number.lstrip("-")):
                    return str(mantissa) + _BIN_BY_POWER[power]
    return _format_decimal(unscaled, exponent, "DecimalSI")
