"""Security: secrets stay secret, and no SQL is built by formatting values into strings."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from data_collector.config import load_config
from data_collector.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = [d for d in ("data_collector", "utils", "scripts", "benchmarks") if (ROOT / d).is_dir()]
SECRET = "sk-CHAOS-7f3a9b1c-DO-NOT-LEAK"
DB_PASSWORD = "pw-CHAOS-91d2e4"

#: Calls whose first argument is SQL text.
SQL_CALLS = {
    "execute",
    "executemany",
    "fetch",
    "fetchrow",
    "fetchval",
    "text",
    "exec_driver_sql",
    "prepare",
    "cursor",
    "copy_from_query",
}


def _secret_config() -> dict[str, object]:
    return {
        "exchange": {"api_key": SECRET, "secret": SECRET + "-s"},
        "database": {"url": f"postgresql+asyncpg://u:{DB_PASSWORD}@127.0.0.1:5432/test"},
        "redis": {"url": f"redis://:{DB_PASSWORD}@127.0.0.1:6379/0"},
        "logging": {"file": None},
    }


def _assert_clean(text: str) -> None:
    assert SECRET not in text
    assert DB_PASSWORD not in text


def test_secrets_hidden_in_repr_str_and_dumps() -> None:
    config = load_config(_secret_config())
    for text in (
        repr(config),
        str(config),
        repr(config.exchange),
        repr(config.database),
        repr(config.redis),
        config.model_dump_json(),
        str(config.model_dump()),
    ):
        _assert_clean(text)
    # The secret is still there for the code that needs it.
    assert config.exchange.api_key is not None and config.exchange.api_key.get_secret_value() == SECRET


def test_secrets_from_the_environment_stay_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DC__EXCHANGE__API_KEY", SECRET)
    monkeypatch.setenv("DC__DATABASE__URL", f"postgresql+asyncpg://u:{DB_PASSWORD}@127.0.0.1/x")
    config = load_config({"logging": {"file": None}})
    assert config.exchange.api_key is not None
    assert config.exchange.api_key.get_secret_value() == SECRET
    _assert_clean(repr(config) + config.model_dump_json())


@pytest.mark.parametrize(
    "bad",
    [
        {"performance": {"db_pool_size": "many"}},
        {"database": {"schema": "x; drop"}},
        {"exchange": {"timeout_s": -1}},
        {"database": {"url": f"mysql://u:{DB_PASSWORD}@h/db"}},
        {"redis": {"url": 12, "prefix": "a:b*"}},
        {"exchange": {"api_key": 12345}},
        {"exchange": {"api_key": SECRET, "unknown": 1}},
    ],
)
def test_config_errors_never_echo_secrets(bad: dict[str, dict[str, object]]) -> None:
    data = _secret_config()
    for section, values in bad.items():
        data[section] = {**dict(data.get(section) or {}), **values}  # type: ignore[call-overload]
    with pytest.raises(ConfigError) as info:
        load_config(data)
    _assert_clean(str(info.value))
    _assert_clean(repr(info.value))


def test_logging_a_config_leaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(_secret_config())
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("data_collector").info("config %s", config)
        logging.getLogger("data_collector").info("exchange %r database %r", config.exchange, config.database)
    _assert_clean(caplog.text)


def test_ruff_s608_finds_no_sql_built_from_strings(tmp_path: Path) -> None:
    # The rule must bite: a planted violation is reported...
    planted = tmp_path / "planted.py"
    planted.write_text('def q(conn, x):\n    return conn.execute(f"SELECT * FROM t WHERE a = {x}")\n')
    bad = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--select", "S608", str(planted)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1 and "S608" in bad.stdout
    # ...and the project has none.
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "S608", *CODE_DIRS],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _formatted(node: ast.expr) -> str | None:
    """How ``node`` builds a string from values at runtime, or None when it is a plain literal/name."""
    if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.FormattedValue) for v in node.values):
        return "f-string"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return "% formatting"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        if any(isinstance(side, (ast.JoinedStr, ast.Constant)) for side in (node.left, node.right)):
            return "string concatenation"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return ".format()"
    return None


def _identifier_only(node: ast.JoinedStr) -> bool:
    """True when every placeholder of an f-string is an SQL identifier from code: named like one
    (schema/table/quoted) or standing in a ``"quoted identifier"`` position; or an ``int(...)``
    (which cannot carry SQL; e.g. SQLite's ``PRAGMA busy_timeout=`` takes no parameters).

    The house style allows identifiers from code (the validated schema name); values never.
    """
    parts = node.values
    for i, value in enumerate(parts):
        if isinstance(value, ast.FormattedValue):
            if isinstance(value.value, ast.Call) and ast.unparse(value.value.func) == "int":
                continue
            before = parts[i - 1] if i > 0 else None
            after = parts[i + 1] if i + 1 < len(parts) else None
            if (
                isinstance(before, ast.Constant)
                and str(before.value).endswith('"')
                and isinstance(after, ast.Constant)
                and str(after.value).startswith('"')
            ):
                continue  # in a "quoted identifier" position: a name from code, not a value
            src = ast.unparse(value.value).lower()
            if not any(word in src for word in ("schema", "table", "ident", "_q(", "quote")):
                return False
    return True


def sql_formatting_violations(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else ""
            )
            if name not in SQL_CALLS:
                continue
            how = _formatted(node.args[0])
            if how is None:
                continue
            if isinstance(node.args[0], ast.JoinedStr) and _identifier_only(node.args[0]):
                continue
            found.append(f"{path}:{node.lineno}: {name}() gets SQL built by {how}")
    return found


def test_sql_calls_get_no_formatted_values(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "async def f(conn, sym, schema):\n"
        '    await conn.execute(f"SELECT 1 FROM x WHERE s = {sym}")\n'
        '    await conn.fetch("SELECT %s" % sym)\n'
        '    text("SELECT {}".format(sym))\n'
        '    await conn.execute(f"CREATE TABLE \\"{schema}\\".t (x int)")\n'
        '    await conn.execute(f"DROP SCHEMA \\"{sym}\\" CASCADE")\n'
        "    await conn.execute(f\"SELECT 1 FROM t WHERE s = '{sym}'\")\n"
        '    await conn.execute("SELECT $1", sym)\n'
    )
    assert len(sql_formatting_violations([planted])) == 4
    files = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")]
    assert files
    assert sql_formatting_violations(files) == []


async def _run_script(config: dict[str, object], tmp_path: Path, *extra: str) -> tuple[int, str]:
    import asyncio
    import os

    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "DC__EXCHANGE__SECRET": SECRET + "-env"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "optimized_collection.py"),
        "--config",
        str(path),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=str(tmp_path),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return int(proc.returncode or 0), out.decode(errors="replace")


async def test_collector_run_at_debug_leaks_no_secret(pg_schema: str, tmp_path: Path) -> None:
    """A whole backfill run at DEBUG, then one against an unreachable database: neither the API
    key and secret nor the database password appear on the console or in the log file."""
    simulator = pytest.importorskip("data_collector.simulator")
    from tests.support.services import free_port

    async with simulator.SimulatedExchange(symbols=["SOL/USDT"], seed=1) as sim:
        exchange = {**sim.exchange_config(), "api_key": SECRET}
        log_file = tmp_path / "collector.log"
        config: dict[str, object] = {
            "exchange": exchange,
            "symbols": ["SOL/USDT"],
            "timeframes": ["1h"],
            "start": "2024-01-01",
            "end": "2024-01-03",
            "database": {
                "url": f"postgresql+asyncpg://postgres:{DB_PASSWORD}@127.0.0.1:5432/test",
                "schema": pg_schema,
            },
            "logging": {"file": str(log_file), "level": "DEBUG"},
        }
        code, out = await _run_script(config, tmp_path, "--log-level", "DEBUG")
        assert code == 0, out[-2000:]
        logged = log_file.read_text()
        assert "DEBUG" in logged  # the run did log at DEBUG, so the scan means something
        for text in (out, logged):
            _assert_clean(text)
            assert SECRET + "-env" not in text

        config["database"] = {
            "url": f"postgresql+asyncpg://postgres:{DB_PASSWORD}@127.0.0.1:{free_port()}/test"
        }
        code, out = await _run_script(config, tmp_path, "--log-level", "DEBUG")
        assert code == 1, out[-2000:]
        assert "error:" in out
        _assert_clean(out + log_file.read_text())
