"""Bit specs and QuantConfig, parsed in one place."""

import pytest

from vitq import BitSpec, QuantConfig, parse_bits
from vitq.errors import ConfigError
from vitq.methods import available_methods, get_method


@pytest.mark.parametrize("spec,expected", [
    ("W8A8", (8, 8, 8)), ("w4a4", (4, 4, 4)), ("4-4-8", (4, 4, 8)), ("2-2-8", (2, 2, 8)), ("W6A6", (6, 6, 6)),
    ("8-8", (8, 8, 8)), ("W4A8", (4, 8, 8)),
])
def test_parse(spec, expected):
    b = parse_bits(spec)
    assert (b.w, b.a, b.attn) == expected


@pytest.mark.parametrize("spec", ["W9A8", "W1A4", "4-4-16", "W32A32", "0-8-8"])
def test_out_of_range(spec):
    with pytest.raises(ConfigError, match="out of range") as err:
        parse_bits(spec)
    assert "2 to 8" in err.value.hint


@pytest.mark.parametrize("spec", ["", "W4", "fourbits", "4/4/8", "W4A4X", None])
def test_malformed(spec):
    with pytest.raises(ConfigError, match="cannot read bit spec"):
        parse_bits(spec)


def test_config_fields_and_round_trip():
    c = QuantConfig(method="omse", bits="4-4-8", components="both", exclude=["*.head"])
    assert (c.w_bits, c.a_bits, c.attn_bits) == (4, 4, 8) and c.components == ("image", "text")
    assert str(c.spec) == "4-4-8" and str(BitSpec(8, 8, 8)) == "W8A8"
    assert QuantConfig.from_dict(c.to_dict()) == c
    assert QuantConfig(w_bits=4, a_bits=4, attn_bits=8).bits == "4-4-8"
    with pytest.raises(ConfigError, match="unknown component"):
        QuantConfig(components="audio")


def test_method_registry():
    assert {"minmax", "ema", "percentile", "omse"} <= set(available_methods())
    with pytest.raises(ConfigError, match="unknown method") as err:
        get_method("awq")
    assert "minmax" in err.value.hint
