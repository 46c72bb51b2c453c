"""Draw a :class:`~data_collector.coverage.grid.CoverageMap`: a PNG (Pillow, with matplotlib's
fonts) or one HTML file.

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
from typing import TYPE_CHECKING, Any

import numpy as np

from data_collector.coverage.grid import OUTSIDE, STATE_LABELS, STATES, CoverageMap, CoverageRow, iso
from data_collector.errors import MissingExtraError
from data_collector.markets import HOUR_MS

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL.Image import Image as PILImage

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
#: Labels, dates and summaries (the page's text colour).
TEXT_RGB = (34, 34, 34)
TEXT_LEVELS = 64
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


def _pillow() -> tuple[Any, Any, Path]:
    """Pillow's ``Image`` and ``ImageDraw``, and matplotlib's bundled fonts folder (the extra)."""
    try:
        import matplotlib
        from PIL import Image, ImageDraw
    except ImportError:
        raise MissingExtraError(f"the PNG coverage map needs matplotlib: {INSTALL_HINT}") from None
    return Image, ImageDraw, Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def render_image(cover: CoverageMap) -> PILImage:
    """The map as a Pillow palette image (``P``) of exactly :func:`image_size` pixels.

    Drawn with Pillow (which matplotlib requires) and matplotlib's bundled DejaVu fonts, not with
    matplotlib's Agg renderer: at 600 rows (1455 x 9680 pixels, ~57,000 glyphs of labels and
    summaries) ``Figure.savefig`` took 13.5 s, and still 11.3 s with the labels joined into one
    text artist per column and no image at all; Pillow draws the same text in 0.5 s. The image
    is built as palette indices: a cell's colour is its state's palette entry, exact by
    construction, and the antialiased text (always on white) takes 64 grey levels; the PNG is
    ~15x smaller than RGB and written twice as fast.
    """
    image_mod, draw_mod, fonts = _pillow()
    from PIL import ImageFont

    def font(name: str, px: int) -> Any:
        return ImageFont.truetype(str(fonts / name), px)

    width, height = image_size(cover)
    count, cw = cover.grid.count, cell_px(cover.grid.count)
    # Palette index = state index (0, "outside", is the white background).
    index = np.zeros((height, width), dtype=np.uint8)
    for r, row in enumerate(cover.rows):
        top = TOP_PX + r * ROW_PX + CELL_PAD_PX
        index[top : top + CELL_H_PX, LABEL_PX : LABEL_PX + count * cw] = np.repeat(row.states, cw)[None, :]
    sans, mono, small = font("DejaVuSans.ttf", 10), font("DejaVuSansMono.ttf", 10), font("DejaVuSans.ttf", 9)
    legend = []
    x, legend_y = 8, height - LEGEND_PX // 2
    for state in STATES[1:]:
        y0 = legend_y - CELL_H_PX // 2
        index[y0 : y0 + CELL_H_PX, x : x + CELL_H_PX] = STATES.index(state)
        legend.append((x + CELL_H_PX + 4, STATE_LABELS[state]))
        x += CELL_H_PX + 4 + int(sans.getlength(STATE_LABELS[state])) + 16
    # Text goes into an 8-bit coverage mask, then becomes grey palette entries where it is.
    mask = image_mod.new("L", (width, height), 0)
    draw = draw_mod.Draw(mask)

    def text(xy: tuple[float, float], s: str, face: Any = sans) -> None:
        draw.text(xy, s, font=face, fill=255, anchor="lm")

    text((8, 12), _title(cover), font("DejaVuSans-Bold.ttf", 12))
    for i, label in _axis_ticks(cover):
        text((LABEL_PX + i * cw, 36), label, small)
    if not cover.rows:
        text((LABEL_PX, TOP_PX + ROW_PX / 2), "no coverage recorded")
    summary_x = LABEL_PX + count * cw + SUMMARY_GAP_PX
    for r, row in enumerate(cover.rows):
        y = TOP_PX + r * ROW_PX + ROW_PX / 2
        text((8, y), row.label, mono)
        text((summary_x, y), row.summary())
    for x, label in legend:
        text((x, legend_y), label)
    ink = np.asarray(mask)
    inked = ink > 0
    index[inked] = len(STATES) + (ink[inked] >> 2)
    image: PILImage = image_mod.fromarray(index, "P")
    image.putpalette(_indexed_palette().tobytes())
    return image


def _indexed_palette() -> np.ndarray:
    """The states' colours, then 64 levels from white to :data:`TEXT_RGB`."""
    alpha = (np.arange(TEXT_LEVELS, dtype=np.float64) * 4 + 2) / 255.0
    greys = 255.0 + alpha[:, None] * (np.array(TEXT_RGB, dtype=np.float64) - 255.0)
    return np.concatenate([_palette(), np.rint(greys).astype(np.uint8)])


def render_figure(cover: CoverageMap) -> Figure:
    """The map as a matplotlib ``Figure`` of exactly :func:`image_size` pixels at 100 dpi: the
    image of :func:`render_image`, placed 1:1 (no resampling)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError(f"the PNG coverage map needs matplotlib: {INSTALL_HINT}") from None
    image = render_image(cover)
    fig = Figure(figsize=(image.width / DPI, image.height / DPI), dpi=DPI)
    fig.figimage(np.asarray(image.convert("RGB")), xo=0, yo=0, origin="upper")
    return fig


def save_png(cover: CoverageMap, path: Path) -> Path:
    """Write the map's PNG to ``path``."""
    render_image(cover).save(path, format="PNG")
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
