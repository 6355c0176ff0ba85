"""The Lua scripts are built from the key scheme: each placeholder, evaluated as Lua would, names
the same key or field the Python side uses."""

from __future__ import annotations

import re

import pytest

from strata import keyspace, lookup_scripts
from strata.keyspace import KeySpace
from strata.lookup_scripts import lua


def evaluate(expr: str, variables: dict[str, str]) -> str:
    """A Lua concatenation of single-quoted literals and variables, evaluated."""
    out = []
    for part in expr.split(" .. "):
        if part.startswith("'"):
            out.append(part[1:-1].encode().decode("unicode_escape"))
        else:
            out.append(variables[part])
    return "".join(out)


V = {"p": "env:lk", "ver": "3f2a9c", "code": "u", "b": "17", "exp": "feed", "uid": "u-7"}


@pytest.mark.parametrize(
    ("placeholder", "python"),
    [
        ("${live}", KeySpace("env:lk").live),
        ("${tombstones}", KeySpace("env:lk").tombstones),
        ("${tombstone_log}", KeySpace("env:lk").tombstone_log),
        ("${tombstone_seq}", KeySpace("env:lk").tombstone_seq),
        ("${meta(ver)}", KeySpace("env:lk").meta("3f2a9c")),
        ("${catalog(ver)}", KeySpace("env:lk").catalog("3f2a9c")),
        ("${bucket(ver, code, b)}", KeySpace("env:lk").bucket("3f2a9c", "user_id", 17, 100)),
        ("${buckets_field(code)}", keyspace.buckets_field("u")),
        ("${buckets_field('l')}", "buckets:l"),
        ("${experiment_field(exp)}", keyspace.experiment_field("feed")),
        ("${tombstone_field(code, exp, uid)}", keyspace.tombstone_field("user_id", "u-7", "feed")),
        ("${STATE}", keyspace.STATE),
        ("${RETIRED}", keyspace.RETIRED),
    ],
)
def test_a_placeholder_names_what_python_names(placeholder, python):
    assert evaluate(lua(placeholder), V) == python


def test_literal_arguments_are_folded():
    assert lua("${buckets_field('d')}") == "'buckets:d'"
    assert lua("${bucket(ver, 'u', string.format('%d', h % n))}") == (
        "p .. ':' .. ver .. ':u:' .. string.format('%d', h % n)"
    )


def test_the_tombstone_pattern_parses_a_tombstone_field():
    pattern = keyspace.TOMBSTONE_FIELD_LUA_PATTERN.replace("%a", "[A-Za-z]")
    field = keyspace.tombstone_field("url", "https://x/p", "landing")
    assert re.match(pattern, field, re.DOTALL).groups() == ("l", "landing", "https://x/p")


@pytest.mark.parametrize("template", ["${nope}", "${meta(ver}", "${state}"])
def test_an_unknown_placeholder_is_an_error(template):
    with pytest.raises(ValueError, match="unknown placeholder"):
        lua(template)


def test_no_script_is_left_with_a_placeholder():
    for name in dir(lookup_scripts):
        if name.endswith("_LUA"):
            assert "${" not in getattr(lookup_scripts, name), name
