"""Import directions between the packages, read from the source with ``ast`` (nothing is imported).

The rules (issue 10, "Layout"):

* ``utils`` never imports ``data_collector.cli``.
* The library never imports the command line: no module of ``data_collector`` outside
  ``data_collector.cli`` imports ``data_collector.cli``, which covers ``backfill/``, ``streaming/``
  and ``storage/``.
* ``data_collector`` imports ``utils`` only through the allowed front: the ``data_collector.cli``
  package (the application layer that wires monitors and metrics servers) and
  ``data_collector.backfill.monitor``, whose ``default_monitor()`` fetches the process-wide
  ``utils.performance_monitor`` monitor when the caller gives none.
* ``utils`` modules import no ``data_collector`` module that imports ``utils``, directly or through
  other ``data_collector`` modules: the shared pieces ``utils`` builds on (errors, config, Redis
  keys and the Redis client factory) stand on their own.

Every import counts, including those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("data_collector", "utils")
CLI = "data_collector.cli"
UTILS_FRONTS = frozenset({"data_collector.backfill.monitor"})


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of :data:`PACKAGES` under ``root``."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".")
            anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            yield candidate if candidate in known else base


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules (of :data:`PACKAGES`) it imports anywhere in its source."""
    files = module_files(root)
    known = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(tree):
            for name in _imported(node, module, is_package, known):
                if any(_within(name, p) for p in PACKAGES):
                    targets.add(name)
        graph[module] = targets
    return graph


def _reachable_in_data_collector(graph: dict[str, set[str]], start: str) -> set[str]:
    """``data_collector`` modules ``start`` reaches by following ``data_collector`` imports."""
    seen: set[str] = set()
    todo = [t for t in graph.get(start, ()) if _within(t, "data_collector")]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += [t for t in graph.get(module, ()) if _within(t, "data_collector")]
    return seen


def violations(root: Path) -> list[str]:
    """Every import that breaks a rule of this module's docstring, as ``importer -> imported: why``."""
    graph = import_graph(root)
    found: list[str] = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if _within(module, "utils") and _within(target, CLI):
                found.append(f"{module} -> {target}: utils must not import the command line")
            if _within(module, "data_collector") and not _within(module, CLI) and _within(target, CLI):
                found.append(f"{module} -> {target}: the library must not import the command line")
            if (
                _within(module, "data_collector")
                and _within(target, "utils")
                and not _within(module, CLI)
                and module not in UTILS_FRONTS
            ):
                found.append(
                    f"{module} -> {target}: data_collector reaches utils only through {CLI} "
                    f"or {', '.join(sorted(UTILS_FRONTS))}"
                )
    for module in sorted(m for m in graph if _within(m, "utils")):
        for reached in sorted(_reachable_in_data_collector(graph, module)):
            back = sorted(t for t in graph.get(reached, ()) if _within(t, "utils"))
            if back:
                found.append(f"{module} -> {reached}: imports utils back ({', '.join(back)})")
    return found


def test_the_tree_keeps_the_import_directions() -> None:
    assert violations(ROOT) == []


MAX_LINES = 450


def test_long_modules_say_why_in_their_docstring() -> None:
    unexplained = []
    for module, path in module_files(ROOT).items():
        text = path.read_text()
        if text.count("\n") > MAX_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if not any(line.startswith("Long because") for line in doc.splitlines()):
                unexplained.append(module)
    assert unexplained == [], f"over {MAX_LINES} lines without a 'Long because' line in the docstring"


def test_the_graph_sees_the_imports_it_judges() -> None:
    graph = import_graph(ROOT)
    assert "data_collector.redis.client" in graph["utils.cache_manager"]
    assert "utils.performance_monitor" in graph["data_collector.backfill.monitor"]  # a function-level import
    reached = _reachable_in_data_collector(graph, "utils.cache_manager")
    assert {"data_collector.config", "data_collector.redis.url", "data_collector.errors"} <= reached


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


BASE = {
    "data_collector/__init__.py": "",
    "data_collector/errors.py": "",
    "data_collector/cli/__init__.py": "",
    "data_collector/cli/collect.py": "import utils.metrics\n",
    "data_collector/backfill/__init__.py": "",
    "data_collector/backfill/monitor.py": "def f():\n    from utils.metrics import M\n",
    "data_collector/storage/__init__.py": "",
    "data_collector/storage/store.py": "",
    "utils/__init__.py": "",
    "utils/metrics.py": "from data_collector.errors import UsageError\n",
}


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "utils/cli_user.py",
            "from data_collector.cli import collect\n",
            "utils must not import the command line",
        ),
        (
            "data_collector/storage/store.py",
            "def f():\n    from data_collector.cli.collect import run\n",
            "the library must not import the command line",
        ),
        ("data_collector/errors.py", "import utils.metrics\n", "imports utils back"),
        (
            "data_collector/storage/store.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from utils import metrics\n",
            "reaches utils only through",
        ),
    ],
)
def test_a_forbidden_import_is_reported(tmp_path: Path, name: str, text: str, expected: str) -> None:
    root = _tree(tmp_path, BASE)
    assert violations(root) == []
    (root / name).write_text(text)
    assert any(expected in line for line in violations(root)), violations(root)


# -- venues are folders (issue 14) ---------------------------------------------------------------
#
# Everything venue-specific lives in ``data_collector/venues/<venue>/``; the shared mechanisms ask
# the venue's adapter (``data_collector.venues.adapter_for`` / ``stream_venue``) instead of
# branching on its id. The rule, read from the source with ``ast``: outside ``data_collector.venues``
# and the simulator (which *is* the venues), no comparison has a venue id or adapter kind as a
# string operand (``x == "okx"``, ``x in ("binance", "binanceus")``, ``kind != "ccxt"``) and no
# code calls an ``is_<venue>`` helper. Default values (``id: str = "binance"``) are not branches.

#: The ccxt ids the native adapters serve, and the adapter kinds.
VENUE_WORDS = frozenset({"binance", "binanceus", "binanceusdm", "okx", "myokx", "okxus", "ccxt"})
#: Packages where venue knowledge belongs.
VENUE_HOMES = ("data_collector.venues", "data_collector.simulator")


def _venue_word(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in VENUE_WORDS:
        return node.value
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return next((w for e in node.elts if (w := _venue_word(e)) is not None), None)
    return None


def venue_branches(root: Path) -> dict[str, list[str]]:
    """Module -> ``line: what`` of each branch on a venue id outside :data:`VENUE_HOMES`."""
    found: dict[str, list[str]] = {}
    for module, path in module_files(root).items():
        if not _within(module, "data_collector") or any(_within(module, h) for h in VENUE_HOMES):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            what = None
            if isinstance(node, ast.Compare):
                word = next((w for n in (node.left, *node.comparators) if (w := _venue_word(n))), None)
                what = None if word is None else f"compares with {word!r}"
            elif isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name.startswith("is_") and name[3:] in VENUE_WORDS:
                    what = f"calls {name}()"
            if what is not None:
                found.setdefault(module, []).append(f"{node.lineno}: {what}")
    return found


def test_only_venue_folders_branch_on_a_venue() -> None:
    assert venue_branches(ROOT) == {}, (
        "a module outside data_collector/venues branches on a venue id (ask the venue's adapter, "
        f"or give StreamVenue a hook its folder fills): {venue_branches(ROOT)}"
    )


@pytest.mark.parametrize(
    "text",
    [
        'def f(x):\n    return x == "okx"\n',
        'def f(x):\n    return x in ("binance", "binanceus")\n',
        'def f(venue):\n    return venue.kind != "ccxt"\n',
        "def f(x):\n    return is_okx(x)\n",
        "def f(x):\n    return okx.is_okx(x.id)\n",
    ],
)
def test_a_venue_branch_is_reported(tmp_path: Path, text: str) -> None:
    root = _tree(tmp_path, {**BASE, "data_collector/venues/okx/__init__.py": text})
    assert venue_branches(root) == {}  # inside the venue's folder: where it belongs
    (root / "data_collector/backfill/run.py").write_text(text)
    (root / "data_collector/storage/store.py").write_text('ID: str = "okx"\n')  # a default, not a branch
    assert list(venue_branches(root)) == ["data_collector.backfill.run"], venue_branches(root)
