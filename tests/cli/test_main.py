"""``data-collector``: the dispatcher in :mod:`data_collector.cli.main` (parsing only, in-process).

The installed command itself is run from outside the checkout in ``tests/test_packaging.py``.
"""

from __future__ import annotations

import pytest

from data_collector import __version__
from data_collector.cli.main import COMMANDS, main


def _exit(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    return int(stop.value.code or 0)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"data-collector {__version__}"


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: data-collector")
    assert all(f"data-collector {command}" in out for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_its_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit([command, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: data-collector {command}")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        ([], "give a command: collect"),
        (["--bogus"], "--bogus"),
        (["colect"], "unknown command 'colect'"),
        (["collect", "--bogus"], "--bogus"),
        (["demo", "--demo-schema"], "--demo-schema"),
        (["stream", "--duration", "x"], "--duration"),
        (["health", "--skip", "nope"], "--skip"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _exit(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert named in err


def test_simulate_bad_usage_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--port", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--port" in err, err
