"""Draw a :class:`~data_collector.coverage.grid.CoverageMap`: a PNG (matplotlib) or one HTML file.

Both share one pixel geometry (:func:`cell_box`), so a test can read the PNG, or a screenshot of
the page, at the cell it expects.

The HTML is hand-built inline SVG with no script and no external reference (a
Content-Security-Policy of ``default-src 'none'`` says so to the browser): one ``<rect>`` per run
of equal cells, each with a ``<title>`` tooltip holding its counts. A plotly page would need its
~3.5 MB JavaScript bundle inlined into every file to work offline, and a 600-row, 5-year map
as plotly heatmap data is several MB more; this page is tens of kB and opens without JavaScript.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data_collector.coverage.grid import OUTSIDE, STATE_LABELS, STATES, CoverageMap, CoverageRow, iso
from data_collector.errors import MissingExtraError
from data_collector.markets import HOUR_MS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: State -> colour (ColorBrewer RdYlBu-like, distinct for the common colour-vision deficiencies).
COLOURS: dict[str, str] = {
    "outside": "#ffffff",
    "stored": "#1a9850",
    "exchange": "#4575b4",
    "missing": "#fee08b",
    "hole": "#d73027",
}
LABEL_PX = 240
TOP_PX = 48
ROW_PX = 16
CELL_PAD_PX = 2
CELL_H_PX = ROW_PX - 2 * CELL_PAD_PX
SUMMARY_GAP_PX = 12
SUMMARY_PX = 420
LEGEND_PX = 32
#: The grid's width in pixels at most; cells are 2 to 16 pixels wide.
MAX_GRID_PX = 1040
DPI = 100
INSTALL_HINT = "pip install 'data-collector[coverage]'"


def cell_px(cell_count: int) -> int:
    """Width of one cell in pixels for a grid of ``cell_count`` cells."""
    return max(2, min(16, MAX_GRID_PX // max(cell_count, 1)))


def cell_box(cell_count: int, row: int, col: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of a cell in pixels from the top left, in the PNG and the page alike."""
    width = cell_px(cell_count)
    x0 = LABEL_PX + col * width
    y0 = TOP_PX + row * ROW_PX + CELL_PAD_PX
    return x0, y0, x0 + width, y0 + CELL_H_PX


def image_size(cover: CoverageMap) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG."""
    width = LABEL_PX + cover.grid.count * cell_px(cover.grid.count) + SUMMARY_GAP_PX + SUMMARY_PX
    return width, TOP_PX + max(1, len(cover.rows)) * ROW_PX + LEGEND_PX


def _palette() -> np.ndarray:
    return np.array([[int(COLOURS[s][i : i + 2], 16) for i in (1, 3, 5)] for s in STATES], dtype=np.uint8)


def _axis_ticks(cover: CoverageMap) -> list[tuple[int, str]]:
    # A label every ~100 pixels at least, so dates never overlap however narrow the cells.
    step = max(1, cover.grid.count // 6, -(-100 // cell_px(cover.grid.count)))
    return [(i, iso(cover.grid.cell_start_ms(i))) for i in range(0, cover.grid.count, step)]


def _title(cover: CoverageMap) -> str:
    grid = cover.grid
    rows = len(cover.rows)
    return f"Coverage {iso(grid.start_ms)} .. {iso(grid.end_ms)}, one cell per {grid.cell}, {rows} row{'s' if rows != 1 else ''}"


def render_figure(cover: CoverageMap) -> Figure:
    """The map as a matplotlib ``Figure`` of exactly :func:`image_size` pixels at 100 dpi."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError(f"the PNG coverage map needs matplotlib: {INSTALL_HINT}") from None
    width, height = image_size(cover)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    count, cw = cover.grid.count, cell_px(cover.grid.count)
    rows = max(1, len(cover.rows))
    image = np.full((rows * ROW_PX, count * cw, 3), 255, dtype=np.uint8)
    palette = _palette()
    for r, row in enumerate(cover.rows):
        top = r * ROW_PX + CELL_PAD_PX
        image[top : top + CELL_H_PX] = np.repeat(palette[row.states], cw, axis=0)[None, :, :]
    # figimage puts pixels 1:1 at an integer offset (no resampling), so cell_box() is exact.
    fig.figimage(image, xo=LABEL_PX, yo=height - TOP_PX - rows * ROW_PX, origin="upper")

    def text(x: float, y: float, s: str, **kw: object) -> None:
        fig.text(x / width, 1 - y / height, s, **{"va": "center", "fontsize": 7.5, **kw})  # type: ignore[arg-type]

    text(8, 12, _title(cover), fontsize=9, weight="bold")
    for i, label in _axis_ticks(cover):
        text(LABEL_PX + i * cw, 36, label, fontsize=7)
    if not cover.rows:
        text(LABEL_PX, TOP_PX + ROW_PX / 2, "no coverage recorded")
    summary_x = LABEL_PX + count * cw + SUMMARY_GAP_PX
    for r, row in enumerate(cover.rows):
        y = TOP_PX + r * ROW_PX + ROW_PX / 2
        text(8, y, row.label, family="monospace")
        text(summary_x, y, row.summary())
    legend_y = height - LEGEND_PX / 2
    x = 8
    for state in STATES[1:]:
        swatch = np.empty((CELL_H_PX, CELL_H_PX, 3), dtype=np.uint8)
        swatch[:] = palette[STATES.index(state)]
        fig.figimage(swatch, xo=x, yo=int(LEGEND_PX / 2 - CELL_H_PX / 2), origin="upper")
        text(x + CELL_H_PX + 4, legend_y, STATE_LABELS[state])
        x += CELL_H_PX + 16 + 6 * len(STATE_LABELS[state])
    return fig


def save_png(cover: CoverageMap, path: Path) -> Path:
    """Write the map's PNG to ``path``."""
    render_figure(cover).savefig(path, dpi=DPI, format="png")
    return path


_CSS = f"""
.dc-coverage {{ font: 12px/16px sans-serif; color: #222; margin: 0; }}
.dc-coverage .title {{ height: 24px; line-height: 24px; padding-left: 8px; font-weight: bold;
  white-space: nowrap; overflow: hidden; }}
.dc-coverage .axis {{ position: relative; height: 24px; font-size: 11px; white-space: nowrap; }}
.dc-coverage .axis span {{ position: absolute; top: 4px; }}
.dc-coverage .row {{ display: flex; height: {ROW_PX}px; align-items: center; white-space: nowrap; }}
.dc-coverage .label {{ flex: none; width: {LABEL_PX - 8}px; padding-left: 8px; overflow: hidden;
  font-family: monospace; font-size: 11px; }}
.dc-coverage svg {{ flex: none; display: block; }}
.dc-coverage .summary {{ padding-left: {SUMMARY_GAP_PX}px; font-size: 11px; }}
.dc-coverage .legend {{ height: {LEGEND_PX}px; line-height: {LEGEND_PX}px; padding-left: 8px; }}
.dc-coverage .legend i {{ display: inline-block; width: {CELL_H_PX}px; height: {CELL_H_PX}px;
  vertical-align: middle; margin: 0 4px 0 12px; }}
"""


def _hours(ms: int) -> str:
    return f"{ms / HOUR_MS:,.1f} h"


def _run_title(row: CoverageRow, cover: CoverageMap, first: int, last: int) -> str:
    """The tooltip of cells ``first..last``: their span and counts of each kind."""
    grid = cover.grid
    span = slice(first, last + 1)
    stored = int(row.stored_candles[span].sum())
    holes = int(row.hole_candles[span].sum())
    state = STATES[int(row.states[first])]
    cells = last - first + 1
    return (
        f"{row.label}\n{iso(grid.cell_start_ms(first))} .. {iso(grid.cell_end_ms(last))} "
        f"({cells} {grid.cell}{'s' if cells > 1 else ''}): {STATE_LABELS[state]}\n"
        f"stored {stored:,} candles ({_hours(int(row.stored_ms[span].sum()))})\n"
        f"exchange-side gap {_hours(int(row.exchange_ms[span].sum()))}\n"
        f"missing {_hours(int(row.missing_ms[span].sum()))}\n"
        f"hole {holes:,} candles"
    )


def _row_svg(row: CoverageRow, cover: CoverageMap, cw: int) -> str:
    states = row.states
    width = len(states) * cw
    parts = [
        f'<svg width="{width}" height="{CELL_H_PX}" viewBox="0 0 {width} {CELL_H_PX}" '
        'shape-rendering="crispEdges" xmlns="http://www.w3.org/2000/svg">'
    ]
    # One rect per run of equal cells; its tooltip sums the run's counts.
    breaks = np.flatnonzero(np.diff(states) != 0) + 1
    starts = [0, *breaks.tolist()]
    ends = [*breaks.tolist(), len(states)]
    for first, end in zip(starts, ends, strict=True):
        state = int(states[first])
        if state == OUTSIDE:
            continue
        title = html.escape(_run_title(row, cover, first, end - 1))
        parts.append(
            f'<rect x="{first * cw}" y="0" width="{(end - first) * cw}" height="{CELL_H_PX}" '
            f'fill="{COLOURS[STATES[state]]}" data-state="{STATES[state]}"><title>{title}</title></rect>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(cover: CoverageMap, *, standalone: bool = True) -> str:
    """The map as HTML: a whole page, or with ``standalone=False`` a fragment for Jupyter."""
    cw = cell_px(cover.grid.count)
    body = [
        '<div class="dc-coverage">',
        f"<style>{_CSS}</style>",
        f'<div class="title">{html.escape(_title(cover))}</div>',
        '<div class="axis">',
        *(
            f'<span style="left:{LABEL_PX + i * cw}px">{html.escape(label)}</span>'
            for i, label in _axis_ticks(cover)
        ),
        "</div>",
    ]
    if not cover.rows:
        body.append('<div class="row"><span class="label"></span>no coverage recorded</div>')
    for r, row in enumerate(cover.rows):
        body.append(
            f'<div class="row" data-row="{r}"><span class="label" title="{html.escape(row.label)}">'
            f"{html.escape(row.label)}</span>{_row_svg(row, cover, cw)}"
            f'<span class="summary">{html.escape(row.summary())}</span></div>'
        )
    body.append('<div class="legend">')
    body += [f'<i style="background:{COLOURS[s]}"></i>{html.escape(STATE_LABELS[s])}' for s in STATES[1:]]
    body += ["</div>", "</div>"]
    fragment = "\n".join(body)
    if not standalone:
        return fragment
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        f"<title>{html.escape(_title(cover))}</title>\n"
        "<style>body { margin: 0; background: #fff; }</style></head>\n"
        f"<body>\n{fragment}\n</body></html>\n"
    )
