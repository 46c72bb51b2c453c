"""The venue registry (``data_collector.venues``): which adapter serves which ccxt id, and the
README's guarantees table kept equal to what each adapter declares."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from data_collector.errors import UsageError
from data_collector.venues import ADAPTERS, STREAMS, adapter_for, stream_venue
from data_collector.venues.base import Guarantees
from data_collector.venues.ccxt_generic import GENERIC
from data_collector.venues.stream import StreamParts

README = Path(__file__).resolve().parent.parent / "README.md"
#: README column -> adapter, in the table's order.
COLUMNS = {"Binance native": "binance", "OKX native": "okx", "generic ccxt.pro": "ccxt_generic"}


def readme_guarantees() -> dict[str, dict[str, str]]:
    """Adapter name -> guarantee row label -> cell, from the table between the README's markers."""
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- venue-guarantees:start -->")[1].split("<!-- venue-guarantees:end -->")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.strip().splitlines()]
    header, body = rows[0], rows[2:]
    names = [COLUMNS[h] for h in header[1:]]
    return {name: {row[0]: row[i + 1] for row in body} for i, name in enumerate(names)}


def test_the_readme_table_says_what_each_adapter_guarantees() -> None:
    declared = {
        a.name: {f.name.replace("_", " "): getattr(a.guarantees, f.name) for f in fields(Guarantees)}
        for a in (*ADAPTERS, GENERIC)
    }
    assert readme_guarantees() == declared


@pytest.mark.parametrize(
    ("exchange_id", "adapter"),
    [
        ("binance", "binance"),
        ("binanceusdm", "binance"),
        ("okx", "okx"),
        ("myokx", "okx"),
        ("kraken", "ccxt_generic"),
    ],
)
def test_each_id_finds_its_adapter(exchange_id: str, adapter: str) -> None:
    assert adapter_for(exchange_id).name == adapter


def test_no_id_is_served_twice_and_every_stream_belongs_to_its_adapter() -> None:
    ids = [i for a in ADAPTERS for i in a.ids]
    assert len(ids) == len(set(ids))
    assert all(adapter_for(p).streams[p] is v for p, v in STREAMS.items())


def test_stream_venue_native_generic_and_unknown() -> None:
    assert stream_venue("okx").kind == "okx" and stream_venue("okx", "ccxt").kind == "ccxt"
    assert stream_venue("kraken").channels == ("trade", "depth")
    with pytest.raises(UsageError, match="unknown exchange.id 'notavenue'"):
        stream_venue("notavenue")
    with pytest.raises(UsageError, match="streaming.adapter must be one of native, ccxt"):
        stream_venue("okx", "fast")


@pytest.mark.parametrize("protocol", [*STREAMS, "kraken"])
def test_each_stream_builds_its_parts_from_its_own_folder(protocol: str) -> None:
    venue = stream_venue(protocol)
    adapter = "ccxt_generic" if protocol not in STREAMS else adapter_for(protocol).name
    assert venue.parts.startswith(f"data_collector.venues.{adapter}."), venue.parts
    assert isinstance(venue.stream_parts(), StreamParts)


def test_the_registry_does_not_import_the_parts() -> None:
    """The config reads the registry and the streaming package reads the config: the parts (which
    import the streaming package) are imported only when a streamer starts."""
    code = (
        "import sys, data_collector.config, data_collector.venues\n"
        "print(sorted(m for m in sys.modules if m.endswith('.parts') or m.startswith('data_collector.streaming')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_backfill_reaches_the_archives_through_the_adapter() -> None:
    from data_collector.venues.binance.archive_run import ArchiveSource

    assert adapter_for("binance").archive_source() is ArchiveSource
    assert adapter_for("okx").archive_source() is None
    assert GENERIC.archive_source() is None
    from tests.test_layout import ROOT, import_graph

    direct = {
        (module, target)
        for module, targets in import_graph(ROOT).items()
        if module.startswith("data_collector.backfill")
        for target in targets
        if target.startswith("data_collector.venues.binance.archive")
    }
    assert direct == set(), direct
