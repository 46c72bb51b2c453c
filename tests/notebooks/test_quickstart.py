"""notebooks/quickstart.ipynb runs end to end in a real Jupyter kernel (ipykernel, driven by
nbclient) against the simulator and the test Redis; any cell error fails the test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.services import REDIS_URL

nbclient = pytest.importorskip(
    "nbclient", reason="nbclient is a dev dependency: pip install -r requirements-dev.txt"
)
nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def test_stored_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_quickstart_runs_in_a_kernel(
    tmp_path: Path, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel is a child process: it inherits these (the checkout first on its path).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("DC_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("DC_NOTEBOOK_PREFIX", redis_prefix)
    monkeypatch.setenv("DC_NOTEBOOK_STREAM_S", "3")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error

    outputs = {i: c.outputs for i, c in enumerate(notebook.cells) if c.cell_type == "code"}
    texts = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for outs in outputs.values()
        for o in outs
    )
    html = "\n".join(str(o.get("data", {}).get("text/html", "")) for outs in outputs.values() for o in outs)
    assert "2 symbols" in texts or "SOL/USDT" in texts
    assert "Gap(" in texts and "'hole'" in texts
    assert html.count('class="row"') == 4 and 'data-state="hole"' in html  # 2 symbols x 2 timeframes
    written = next(line for line in texts.splitlines() if line.endswith("messages written"))
    assert int(written.split()[0]) > 0
    assert any("image/png" in o.get("data", {}) for outs in outputs.values() for o in outs)  # the plot
