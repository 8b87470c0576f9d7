"""Quantity parsing/formatting, checked against apimachinery's own test tables."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from appliance.util.quantity import (
    ERR_FORMAT_WRONG,
    ERR_NUMERIC,
    ERR_SUFFIX,
    QuantityError,
    QuantityFormat,
    canonical_quantity,
    format_quantity,
    parse_quantity,
    parse_quantity_with_format,
)

DSI = QuantityFormat.DECIMAL_SI
BSI = QuantityFormat.BINARY_SI
DEX = QuantityFormat.DECIMAL_EXPONENT
MAX = (1 << 63) - 1


def dec(unscaled: int, exponent: int) -> Decimal:
    return Decimal(f"{unscaled}e{exponent}")


# TestQuantityParse in quantity_test.go: input -> (value, format)
PARSE_TABLE = [
    ("0", dec(0, 0), DSI), ("0n", dec(0, 0), DSI), ("0u", dec(0, 0), DSI),
    ("0m", dec(0, 0), DSI), ("0Ki", dec(0, 0), BSI), ("0k", dec(0, 0), DSI),
    ("0Mi", dec(0, 0), BSI), ("0M", dec(0, 0), DSI), ("0Gi", dec(0, 0), BSI),
    ("0G", dec(0, 0), DSI), ("0Ti", dec(0, 0), BSI), ("0T", dec(0, 0), DSI),
    ("1", dec(1, 0), DSI),
    ("1Ki", dec(1024, 0), BSI), ("8Ki", dec(8 * 1024, 0), BSI),
    ("7Mi", dec(7 * 1024**2, 0), BSI), ("6Gi", dec(6 * 1024**3, 0), BSI),
    ("5Ti", dec(5 * 1024**4, 0), BSI), ("4Pi", dec(4 * 1024**5, 0), BSI),
    ("3Ei", dec(3 * 1024**6, 0), BSI),
    ("10Ti", dec(10 * 1024**4, 0), BSI), ("100Ti", dec(100 * 1024**4, 0), BSI),
    ("5n", dec(5, -9), DSI), ("4u", dec(4, -6), DSI), ("3m", dec(3, -3), DSI),
    ("9", dec(9, 0), DSI), ("8k", dec(8, 3), DSI), ("50k", dec(5, 4), DSI),
    ("7M", dec(7, 6), DSI), ("6G", dec(6, 9), DSI), ("5T", dec(5, 12), DSI),
    ("40T", dec(4, 13), DSI), ("300T", dec(3, 14), DSI), ("2P", dec(2, 15), DSI),
    ("1E", dec(1, 18), DSI),
    ("1E-3", dec(1, -3), DEX), ("1e3", dec(1, 3), DEX), ("1E6", dec(1, 6), DEX),
    ("1e9", dec(1, 9), DEX), ("1E12", dec(1, 12), DEX), ("1e15", dec(1, 15), DEX),
    ("1E18", dec(1, 18), DEX),
    ("1e14", dec(1, 14), DEX), ("1e13", dec(1, 13), DEX),
    ("100.035k", dec(100035, 0), DSI),
    ("0.001", dec(1, -3), DSI), ("0.0005k", dec(5, -1), DSI), ("0.005", dec(5, -3), DSI),
    ("0.05", dec(5, -2), DSI), ("0.5", dec(5, -1), DSI), ("0.00050k", dec(5, -1), DSI),
    ("0.00500", dec(5, -3), DSI), ("0.05000", dec(5, -2), DSI),
    ("0.50000", dec(5, -1), DSI), ("0.5e0", dec(5, -1), DEX),
    ("0.5e-1", dec(5, -2), DEX), ("0.5e-2", dec(5, -3), DEX),
    ("10.035M", dec(10035, 3), DSI),
    ("1.2e3", dec(12, 2), DEX), ("1.3E+6", dec(13, 5), DEX), ("1.40e9", dec(14, 8), DEX),
    ("1.53E12", dec(153, 10), DEX), ("1.6e15", dec(16, 14), DEX),
    ("1.7E18", dec(17, 17), DEX),
    ("9.01", dec(901, -2), DSI), ("8.1k", dec(81, 2), DSI),
    ("7.123456M", dec(7123456, 0), DSI), ("6.987654321G", dec(6987654321, 0), DSI),
    ("5.444T", dec(5444, 9), DSI), ("40.1T", dec(401, 11), DSI),
    ("300.2T", dec(3002, 11), DSI), ("2.5P", dec(25, 14), DSI), ("1.01E", dec(101, 16), DSI),
    # things that saturate or round
    ("3.001n", dec(4, -9), DSI), ("1.1E-9", dec(2, -9), DEX),
    ("0.0000000001", dec(1, -9), DSI), ("0.0000000005", dec(1, -9), DSI),
    ("0.00000000050", dec(1, -9), DSI), ("0.5e-9", dec(1, -9), DEX),
    ("0.9n", dec(1, -9), DSI), ("0.00000012345", dec(124, -9), DSI),
    ("0.00000012354", dec(124, -9), DSI),
    ("9Ei", dec(MAX, 0), BSI), ("9223372036854775807Ki", dec(MAX, 0), BSI),
    ("12E", dec(12, 18), DSI),
    # fractional binary
    ("100.035Ki", dec(10243584, -2), BSI), ("0.5Mi", dec(512 * 1024, 0), BSI),
    ("0.05Gi", dec(536870912, -1), BSI), ("0.025Ti", dec(274877906944, -1), BSI),
    # "things written by trolls"
    ("0.000000000001Ki", dec(2, -9), DSI), (".001", dec(1, -3), DSI),
    (".0001k", dec(100, -3), DSI), ("1.", dec(1, 0), DSI), ("1.G", dec(1, 9), DSI),
]


@pytest.mark.parametrize(("text", "value", "fmt"), PARSE_TABLE)
def test_parse_table(text: str, value: Decimal, fmt: QuantityFormat) -> None:
    got = parse_quantity_with_format(text)
    assert got.value == value
    assert got.format == fmt
    # and the negative / explicitly positive spellings
    neg = parse_quantity_with_format("-" + text)
    assert neg.value == -value
    assert neg.format == fmt
    pos = parse_quantity_with_format("+" + text)
    assert pos.value == value
    assert pos.format == fmt


@pytest.mark.parametrize(("text", "reason"), [
    ("", ERR_FORMAT_WRONG),
    ("1.1.M", ERR_FORMAT_WRONG),
    ("1+1.0M", ERR_FORMAT_WRONG),
    ("0.1mi", ERR_SUFFIX),
    ("0.1am", ERR_FORMAT_WRONG),
    ("aoeu", ERR_FORMAT_WRONG),
    (".5i", ERR_SUFFIX),
    ("1i", ERR_SUFFIX),
    ("-3.01i", ERR_SUFFIX),
    ("-3.01e-", ERR_SUFFIX),
    ("1e4294967297", ERR_SUFFIX),
    ("1E2147483648", ERR_SUFFIX),
    (" 1", ERR_FORMAT_WRONG),
    ("1 ", ERR_FORMAT_WRONG),
    ("1ki", ERR_SUFFIX),  # suffixes are case sensitive
    ("1e", ERR_SUFFIX),
    ("Non-Numeric", ERR_FORMAT_WRONG),
    (".e-10", ERR_NUMERIC),  # no digits at all, on the slow path
])
def test_invalid(text: str, reason: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_quantity(text)
    assert info.value.reason == reason
    assert repr(text) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_invalid_types() -> None:
    for bad in (True, None, [1], float("nan"), float("inf"), Decimal("NaN")):
        with pytest.raises(QuantityError):
            parse_quantity(bad)  # type: ignore[arg-type]


def test_quirks_kept_from_kubernetes() -> None:
    # parseQuantityString turns signs and a bare point into zero
    for text in (".", "-.", "+", "-", "00", "-0"):
        assert parse_quantity(text) == 0
        assert canonical_quantity(text) == "0"
    assert parse_quantity("1E2147483647") == dec(1, 2147483647)
    assert parse_quantity("1e-2147483647") == dec(1, -9)  # rounded up to 1n


def test_numbers() -> None:
    assert parse_quantity(2) == 2
    assert parse_quantity(-3) == -3
    assert parse_quantity(1.5) == Decimal("1.5")
    assert parse_quantity(1e-05) == Decimal("0.00001")
    assert parse_quantity(1e20) == Decimal("1e20")
    assert parse_quantity(Decimal("1E+3")) == 1000
    assert canonical_quantity(0.5) == "500m"


# TestQuantityString: (value, format) -> canonical text
STRING_TABLE = [
    (dec(1024**3, 0), BSI, "1Gi"), (dec(300 * 1024**2, 0), BSI, "300Mi"),
    (dec(6 * 1024, 0), BSI, "6Ki"), (dec(1001 * 1024**3, 0), BSI, "1001Gi"),
    (dec(1024**4, 0), BSI, "1Ti"), (dec(5, 0), BSI, "5"), (dec(500, -3), BSI, "500m"),
    (dec(1, 9), DSI, "1G"), (dec(1000, 6), DSI, "1G"), (dec(1000000, 3), DSI, "1G"),
    (dec(1000000000, 0), DSI, "1G"), (dec(1, -3), DSI, "1m"), (dec(80, -3), DSI, "80m"),
    (dec(1080, -3), DSI, "1080m"), (dec(108, -2), DSI, "1080m"),
    (dec(10800, -4), DSI, "1080m"), (dec(300, 6), DSI, "300M"), (dec(1, 12), DSI, "1T"),
    (dec(1, 18), DSI, "1E"), (dec(1, 21), DSI, "1e21"), (dec(5, 21), DSI, "5e21"),
    (dec(1, 24), DSI, "1e24"),
    (dec(1, 70), BSI, "10e69"), (dec(2, 70), BSI, "20e69"), (dec(1, 72), BSI, "1e72"),
    (dec(1234567, 6), DSI, "1234567M"), (dec(1234567, -3), BSI, "1234567m"),
    (dec(3, 3), DSI, "3k"), (dec(1025, 0), BSI, "1025"), (dec(0, 0), DSI, "0"),
    (dec(0, 0), BSI, "0"), (dec(1, 9), DEX, "1e9"), (dec(1, -3), DEX, "1e-3"),
    (dec(1, -9), DEX, "1e-9"), (dec(80, -3), DEX, "80e-3"), (dec(300, 6), DEX, "300e6"),
    (dec(1, 12), DEX, "1e12"), (dec(1, 3), DEX, "1e3"), (dec(3, 3), DEX, "3e3"),
    (dec(0, 0), DEX, "0"), (dec(1, -9), DSI, "1n"), (dec(80, -9), DSI, "80n"),
    (dec(1080, -9), DSI, "1080n"), (dec(108, -8), DSI, "1080n"),
    (dec(10800, -10), DSI, "1080n"), (dec(1, -6), DSI, "1u"), (dec(80, -6), DSI, "80u"),
    (dec(1080, -6), DSI, "1080u"),
    # TestBinarySIPastEiArithmeticRoundTrip, TestBinarySIZeroExponentString
    (dec(2**70, 0), BSI, "1180591620717411303424"),
    (dec(2000, 0), BSI, "2000"), (dec(-2000, 0), BSI, "-2000"),
    # TestQuantityStringBelowNano
    (dec(1, -12), DSI, "1e-12"), (dec(1, -10), DSI, "100e-12"),
]


@pytest.mark.parametrize(("value", "fmt", "text"), STRING_TABLE)
def test_string_table(value: Decimal, fmt: QuantityFormat, text: str) -> None:
    assert format_quantity(value, fmt) == text
    if value > 0:  # negatives differ only by the sign
        assert format_quantity(-value, fmt) == "-" + text
    # what comes out parses back to the same value (above 1n)
    if abs(value) >= Decimal("1e-9") or value == 0:
        assert parse_quantity(text) == value


@pytest.mark.parametrize(("alternate", "canonical"), [
    ("1024Mi", "1Gi"), ("307200Ki", "300Mi"), ("1025024Mi", "1001Gi"), ("1024Gi", "1Ti"),
    ("1000M", "1G"), ("0.001T", "1G"), ("1000u", "1m"), ("1.08", "1080m"),
    ("1080000000n", "1080m"), (".001e12", "1e9"), ("0.001e0", "1e-3"),
    ("1000e-12", "1e-9"), ("00", "0"), ("1000E", "1e21"),
    # TestQuantityParseEmit
    ("1Ki", "1Ki"), ("1Mi", "1Mi"), ("1Gi", "1Gi"), (".001Ki", "1024m"),
    (".000001Ki", "1024u"), (".000000001Ki", "1024n"), (".000000000001Ki", "2n"),
    ("-.001Ki", "-1024m"),
])
def test_canonical(alternate: str, canonical: str) -> None:
    assert canonical_quantity(alternate) == canonical


def test_canonical_keeps_text_kubernetes_keeps() -> None:
    # ParseQuantity reuses the input string when it is already canonical in shape
    assert canonical_quantity("+5") == "+5"
    assert canonical_quantity("1E3") == "1E3"
    assert canonical_quantity("1025Ki") == "1025Ki"
    assert canonical_quantity("2048Ki") == "2Mi"
    assert canonical_quantity(" 1500m\n") == "1500m"  # the JSON decoder trims


@pytest.mark.parametrize(("text", "hint", "want"), [
    ("2", "", "2"), ("500m", "", "500m"), ("1.5", "", "1500m"), ("2", "cpu", "2"),
    ("0.1", "cpu", "100m"), ("2000m", "cpu", "2"), ("16Gi", "memory", "16Gi"),
    ("200Gi", "memory", "200Gi"), ("128974848", "memory", "123Mi"), ("1G", "memory", "1G"),
    ("1T", "memory", "1T"), ("1000Ki", "memory", "1000Ki"), ("1536Mi", "memory", "1536Mi"),
    ("1.5Gi", "memory", "1536Mi"), ("2048", "memory", "2Ki"), ("1000", "memory", "1k"),
    ("100", "memory", "100"), ("0.5", "memory", "500m"), ("-1Gi", "storage", "-1Gi"),
    ("128974848", "", "128974848"), ("16Gi", "BinarySI", "16Gi"), ("1G", "BinarySI", "1000000000"),
    ("1500", "DecimalExponent", "1500"), ("2000", "DecimalExponent", "2e3"),
])
def test_format_hints(text: str, hint: str, want: str) -> None:
    assert format_quantity(parse_quantity(text), hint) == want


def test_format_errors() -> None:
    with pytest.raises(ValueError, match="unknown quantity format hint"):
        format_quantity(Decimal(1), "bogus")
    with pytest.raises(ValueError, match="non-finite"):
        format_quantity(Decimal("Infinity"))
    with pytest.raises(TypeError):
        format_quantity(1.5)  # type: ignore[arg-type]


def test_binary_cap() -> None:
    # 10**19 written in Ki is above 2**63-1, so it parses capped, like Kubernetes
    assert format_quantity(dec(1, 19), "BinarySI") == "9765625000000000Ki"
    assert parse_quantity("9765625000000000Ki") == MAX
    assert parse_quantity("-9765625000000000Ki") == -MAX
    assert parse_quantity("1e19") == dec(1, 19)  # decimal formats are not capped


def nano_values(seed: int, count: int = 3000) -> list[Decimal]:
    """Multiples of 1n below 2**63 in magnitude (BinarySI input above that is capped)."""
    rng = random.Random(seed)
    values: list[Decimal] = []
    while len(values) < count:
        binary = rng.choice([1, -1]) * rng.randint(1, 1000) * 1024 ** rng.randint(0, 3)
        unscaled = rng.choice([rng.randint(-(10**9), 10**9), rng.randint(-2000, 2000), binary])
        value = dec(unscaled, rng.randint(-9, 9))
        if abs(value) < MAX:
            values.append(value)
    return values


@pytest.mark.parametrize("hint", ["", "BinarySI", "DecimalExponent", "memory"])
def test_format_parse_round_trip(hint: str) -> None:
    for value in nano_values(1):
        text = format_quantity(value, hint)
        assert parse_quantity(text) == value, text
        # the canonical text is a fixed point
        assert format_quantity(parse_quantity(text), hint) == text


@pytest.mark.parametrize("fmt", list(QuantityFormat))
def test_canonical_is_stable(fmt: QuantityFormat) -> None:
    for value in nano_values(2):
        text = format_quantity(value, fmt)
        again = parse_quantity_with_format(text)
        assert again.value == value, text
        assert canonical_quantity(again.canonical) == again.canonical
