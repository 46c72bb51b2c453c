"""The coverage map: which symbols, timeframes and days are stored, which gaps are the
exchange's own, and which are ours to repair (missing, holes).

```python
from data_collector.coverage import build_coverage_map

cover = await build_coverage_map(store, ["binance"], since="2024-01-01")
print(cover.summary())
cover.save_png("coverage.png")    # needs matplotlib: pip install 'data-collector[coverage]'
cover.save_html("coverage.html")  # one self-contained file, no network
```

:meth:`OptimizedDataCollector.coverage_map` is the same for the collector's venue;
``data-collector coverage`` is the command.
"""

from data_collector.coverage.build import build_coverage_map
from data_collector.coverage.grid import CellGrid, CoverageMap, CoverageRow

__all__ = ["CellGrid", "CoverageMap", "CoverageRow", "build_coverage_map"]
