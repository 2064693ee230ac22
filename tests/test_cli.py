"""NAME=VALUE command-line lists (benchmark data sources, splits)."""

import pytest

from gdpo.cli import named_values


def test_named_values_parse_and_keep_the_value_whole():
    got = named_values(["apps=data/apps", "taco=BAAI/TACO:ALL", "amc=a=b.json"], "--source")
    assert got == {"apps": "data/apps", "taco": "BAAI/TACO:ALL", "amc": "a=b.json"}
    assert named_values([], "--data") == {}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("apps", "--source expects NAME=VALUE, got 'apps'"),
        ("apps=", "--source expects NAME=VALUE, got 'apps='"),
        ("=data", "--source expects NAME=VALUE, got '=data'"),
        ("mbpp=x", "--source: unknown name 'mbpp' in 'mbpp=x'; known: ['apps', 'taco']"),
    ],
)
def test_named_values_name_the_flag_and_the_item(item, message):
    with pytest.raises(SystemExit) as err:
        named_values([item], "--source", ("apps", "taco"))
    assert str(err.value) == message
