"""The command line's shared flags and value types (latentseg.cli.flags), on a parser of
their own: what a command that declares a flag reads, and what a bad value says."""

from __future__ import annotations

import argparse

import pytest

from latentseg.cli import flags


def parser_with(*declare) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x", exit_on_error=False)
    for add in declare:
        add(parser)
    return parser


def test_shared_flags_read_as_documented():
    parser = parser_with(
        flags.tracking_uri, flags.host_and_port, flags.json_output, flags.overrides
    )
    defaults = parser.parse_args([])
    assert (defaults.tracking_uri, defaults.host, defaults.port) == (None, "127.0.0.1", 5000)
    assert defaults.json is False and defaults.overrides == []
    given = parser.parse_args(
        ["--tracking-uri", "sqlite:///a.db", "--port", "5001", "--json",
         "--set", "optim.lr=3e-4", "--set", "train.epochs=2"]
    )  # fmt: skip
    assert given.tracking_uri == "sqlite:///a.db" and given.port == 5001 and given.json
    assert given.overrides == ["optim.lr=3e-4", "train.epochs=2"]  # repeatable, in order


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (flags.positive_int, "0", "must be at least 1, got 0"),
        (flags.positive_int, "two", "not an integer: 'two'"),
        (flags.image_size, "30", "must be a multiple of 4 between 8 and 4096, got 30"),
        (flags.image_size, "4", "must be a multiple of 4 between 8 and 4096, got 4"),
        (flags.image_size, "8192", "must be a multiple of 4 between 8 and 4096, got 8192"),
    ],
)
def test_bad_values_say_what_is_allowed(kind, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        kind(text)


def test_good_values_are_integers():
    assert flags.positive_int("3") == 3
    assert [flags.image_size(t) for t in ("8", "128", "4096")] == [8, 128, 4096]
