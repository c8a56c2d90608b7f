"""The report page: rows, columns and means in, one self-contained HTML document out.

Everything the page needs is inside it (style, a few lines of script, the histograms as SVG) except the pictures:
thumbnails and full-size files are linked by paths relative to the page, so the page opens offline and travels
with its folder. Every name and path is escaped; every number a script sorts by is written in full
(``repr``) on its row, so what the page ranks is exactly what the JSON holds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .histogram import Series, histogram_svg
from .model import RAINY_PREFIX, Column, Metric, Row, difference, mean, number

BOX = 160  # thumbnails are shown within BOX x BOX CSS pixels (4 pictures and 6 numbers fit 1400 pixels)
EAGER_ROWS = 8  # the first screen's thumbnails are fetched while the page is parsed; the rest when scrolled to
ROLES = {"rainy": "rainy", "derained": "derained", "other": "other run", "target": "ground truth"}
BLUE, GREY, ORANGE = "#1f77b4", "#8c8c8c", "#e6780e"


@dataclass
class PageInfo:
    """What the page says about the run beside the rows."""

    title: str  # the dataset's name
    entry: dict[str, Any]  # the dataset's entry of the JSON report (means, protocol, weights, ...)
    metrics: list[Metric]
    columns: list[Column]
    sorted_by: Column | None
    roles: list[str]  # picture columns, in order
    other_source: str | None = None  # where the other run's scores came from (compare); None without one
    other_weights: str | None = None


def href(path: Path, page_dir: Path) -> str:
    """A link from a page in ``page_dir`` to ``path``: relative and percent-encoded; a ``file:`` URI when no
    relative path exists (another drive)."""
    try:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(page_dir))
    except ValueError:
        return Path(path).resolve().as_uri()
    return quote(Path(rel).as_posix(), safe="/")


def data_value(value: float | None) -> str:
    """A number as the page's script reads it back exactly (``Number(...)``); empty when there is none."""
    if value is None:
        return ""
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def _a(text: Any) -> str:
    return escape(str(text), quote=True)


def fit(size: tuple[int, int], box: int = BOX) -> tuple[int, int]:
    """(width, height) scaled down to fit in ``box`` x ``box``, keeping the aspect ratio."""
    width, height = size
    scale = min(1.0, box / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


# ----------------------------------------------------------------------------------------------------------------
# Parts of the page


def _caption(row: Row, role: str, metric: Metric | None) -> str:
    if role == "target":
        return "ground truth"
    if metric is None:
        return ""
    source = {"rainy": row.values, "derained": row.values, "other": row.other or {}}[role]
    key = RAINY_PREFIX + metric.key if role == "rainy" else metric.key
    value = number(source.get(key))
    return "" if value is None else f"{metric.format(value)}{metric.unit}"


def _picture_cell(row: Row, role: str, metric: Metric | None, page_dir: Path, lazy: bool = True) -> str:
    picture = row.pictures.get(role)
    other_error = (row.other or {}).get("error") if role == "other" else None
    if picture is None or picture.path is None:
        text = other_error or (picture.error if picture else None) or "none"
        return f'<td class="pic missing"><span class="err">{escape(str(text))}</span></td>'
    link = href(picture.path, page_dir)
    if picture.thumb is None:
        error = escape(picture.error or "no thumbnail")
        return f'<td class="pic"><a href="{_a(link)}">full size</a><span class="err">{error}</span></td>'
    width, height = fit(picture.size or (BOX, BOX))
    image = (
        f'<img src="{_a(href(picture.thumb, page_dir))}" width="{width}" height="{height}"'
        + (' loading="lazy"' if lazy else "")
        + f' decoding="async" alt="{_a(ROLES[role])}">'
    )
    caption = (
        f'<span class="err">{escape(str(other_error))}</span>'
        if other_error
        else (f'<span class="cap">{escape(_caption(row, role, metric))}</span>')
    )
    return f'<td class="pic"><a href="{_a(link)}">{image}</a>{caption}</td>'


def _number_cell(column: Column, value: float | None) -> str:
    text = column.metric.format(value, column.signed)
    tone = ""
    if column.signed and value is not None and value != 0:
        tone = " good" if column.goodness(value) > 0 else " bad"
    return f'<td class="num{tone}">{escape(text)}</td>'


def _row(rank: int, row: Row, info: PageInfo, page_dir: Path) -> str:
    primary = info.metrics[0] if info.metrics else None
    data = "".join(f' data-{c.id}="{data_value(c.value(row))}"' for c in info.columns)
    name = f'<td class="name">{escape(row.name).replace("_", "_<wbr>").replace("-", "-<wbr>")}'  # breaks at _ and -
    if row.error:
        name += f'<span class="err">did not run: {escape(row.error)}</span>'
    cells = [f'<td class="rank">{rank}</td>', name + "</td>"]
    cells += [_picture_cell(row, role, primary, page_dir, rank > EAGER_ROWS) for role in info.roles]
    cells += [_number_cell(c, c.value(row)) for c in info.columns]
    failed = ' class="failed"' if row.error else ""
    return f'<tr{failed} data-name="{_a(row.name)}"{data}>{"".join(cells)}</tr>'


def _table_start(info: PageInfo) -> str:
    """``<table id="rows">`` with its column widths and header row."""
    cells = ['<th data-col="rank" title="rank in the first order of the page">#</th>']
    cells.append('<th data-col="name" title="sort by name">name</th>')
    cells += [f"<th>{escape(ROLES[role])}</th>" for role in info.roles]
    for c in info.columns:
        better = "high" if c.metric.higher_is_better else "low"
        mark = ' class="sorted" aria-sort="ascending"' if c is info.sorted_by else ""
        title = f"{c.title}; {'higher' if better == 'high' else 'lower'} is better"
        cells.append(f'<th data-col="{c.id}" data-better="{better}" title="{_a(title)}"{mark}>{escape(c.label)}</th>')
    # Fixed column widths: columns keep their place when rows are sorted or filtered.
    widths = [40, 160] + [BOX + 14] * len(info.roles) + [78] * len(info.columns)
    columns = "".join(f'<col style="width:{w}px">' for w in widths)
    head = f"<colgroup>{columns}</colgroup><thead><tr>{''.join(cells)}</tr></thead>"
    return f'<table id="rows" style="width:{sum(widths)}px">{head}'


def _mean_of(entry: dict[str, Any], key: str, rows: list[Row]) -> float | None:
    """The JSON's mean when it has one (so the page shows the very same number), else the rows' mean."""
    given = number(entry.get(key))
    return given if given is not None else mean(number(r.values.get(key)) for r in rows)


def summary_table(info: PageInfo, rows: list[Row]) -> str:
    """Mean of each metric: this run, the rainy input, the paper, and the other run when comparing."""
    entry, compare = info.entry, info.other_source is not None
    head = ["", "this run", "rainy input", "Δ vs rainy"]
    has_paper = any(number(entry.get(f"paper_{m.key}")) is not None for m in info.metrics)
    if has_paper:
        head += ["paper", "vs paper"]
    if compare:
        head += ["other run", "Δ vs other", "images both"]
    lines = ["<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for m in info.metrics:
        own = _mean_of(entry, m.key, rows)
        rainy = _mean_of(entry, RAINY_PREFIX + m.key, rows)
        cells = [m.label, m.format(own), m.format(rainy), m.format(difference(own, rainy), True)]
        if has_paper:
            paper = number(entry.get(f"paper_{m.key}"))
            cells += [m.format(paper), m.format(difference(own, paper), True)]
        if compare:
            both = [
                r
                for r in rows
                if number(r.values.get(m.key)) is not None and r.other and number(r.other.get(m.key)) is not None
            ]
            # (r.other or {}): each r in both has its other run, which the type checker cannot see through the list
            other = mean(number((r.other or {}).get(m.key)) for r in both)
            delta = mean(difference(number(r.values[m.key]), number((r.other or {}).get(m.key))) for r in both)
            cells += [m.format(other), m.format(delta, True), str(len(both))]
        lines.append(f'<tr data-metric="{_a(m.key)}">' + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return '<table class="summary">' + "".join(lines) + "</table>"


def charts(info: PageInfo, rows: list[Row]) -> str:
    """A histogram of the first metric (this run, the rainy input, the other run) and, when comparing, one of the
    per-image difference from the other run."""
    if not info.metrics:
        return ""
    m = info.metrics[0]
    series = [Series("this run", [v for r in rows if (v := number(r.values.get(m.key))) is not None], BLUE)]
    rainy = [v for r in rows if (v := number(r.values.get(RAINY_PREFIX + m.key))) is not None]
    if rainy:
        series.append(Series("rainy input", rainy, GREY, filled=False))
    if info.other_source is not None:
        other = [v for r in rows if (v := number((r.other or {}).get(m.key))) is not None]
        series.append(Series("other run", other, ORANGE, filled=False))
    marks = []
    own_mean = _mean_of(info.entry, m.key, rows)
    if own_mean is not None:
        marks.append((own_mean, f"mean {m.format(own_mean)}"))
    paper = number(info.entry.get(f"paper_{m.key}"))
    if paper is not None:
        marks.append((paper, f"paper {m.format(paper)}"))
    unit = m.unit.strip()
    svgs = [histogram_svg(series, f"per-image {m.label}" + (f" ({unit})" if unit else ""), marks)]
    versus = next((c for c in info.columns if c.kind == "versus" and c.metric is m), None)
    if versus is not None:
        deltas = [v for r in rows if (v := versus.value(r)) is not None]
        title = f"{m.label} of this run minus the other run's, per image"
        svgs.append(histogram_svg([Series("images", deltas, ORANGE)], title, [(0.0, "equal")], cover_marks=True))
    return '<div class="charts">' + "".join(svgs) + "</div>"


def _facts(info: PageInfo, rows: list[Row]) -> str:
    entry = info.entry
    failed = sum(1 for r in rows if r.error)
    facts = [f"protocol <b>{escape(str(entry.get('protocol', '?')))}</b>", f"{len(rows)} images"]
    if failed:
        facts.append(f'<span class="err">{failed} did not run</span>')
    if entry.get("weights"):
        facts.append(f"weights {escape(str(entry['weights']))}")
    if number(entry.get("seconds")) is not None:
        facts.append(f"{entry['seconds']:.1f} s")
    if entry.get("folder"):
        facts.append(f"data {escape(str(entry['folder']))}")
    text = " · ".join(facts)
    if info.other_source is not None:
        weights = f" (weights {escape(info.other_weights)})" if info.other_weights else ""
        text += f"<br>other run{weights}: {escape(info.other_source)}"
    return f'<p class="facts">{text}</p>'


STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:16px;color:#222}
h1{font-size:20px;margin:0 0 4px}
.facts{color:#555;margin:0 0 10px}
table{border-collapse:collapse}
#rows{table-layout:fixed}
.summary th,.summary td{padding:2px 10px;text-align:right;border-bottom:1px solid #ddd}
.summary td:first-child{text-align:left;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:12px;margin:10px 0}
.hist{background:#fafafa;border:1px solid #e4e4e4;font-size:11px}
.hist .title{font-weight:600;font-size:12px}.hist .axis{stroke:#444}
.hist .mark{stroke:#c00;stroke-dasharray:4 3;fill:#c00}
.tools{margin:10px 0;position:sticky;top:0;background:#fff;padding:6px 0;z-index:2}
.tools input{font:inherit;padding:3px 6px;width:260px}
#rows th{position:sticky;top:40px;background:#f0f0f0;padding:4px 6px;z-index:1;text-align:left;vertical-align:bottom}
#rows th[data-col]{cursor:pointer;user-select:none}
#rows th.sorted::after{content:" \\25B2"}#rows th.sorted.best::after{content:" \\25BC"}
#rows td{border-top:1px solid #ddd;padding:4px 6px;vertical-align:top}
#rows td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
#rows td.name{overflow-wrap:anywhere}
.pic img{display:block;border:0}
.cap{display:block;color:#555;font-size:12px}
.good{color:#17803d}.bad{color:#c0392b}.err{display:block;color:#c0392b;font-size:12px}
tr.failed{background:#fff3f0}
.note{color:#666;font-size:12px}
"""

# Sorting and filtering; a number column sorts worst first on the first click, best first on the next.
SCRIPT = """
(function () {
  var table = document.getElementById("rows"), body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows), current = null, best = false;
  function goodness(row, col, higher) {
    var text = row.getAttribute("data-" + col);
    if (text === null || text === "") return -Infinity;
    var v = Number(text);
    return higher ? v : -v;
  }
  table.tHead.addEventListener("click", function (event) {
    var th = event.target.closest("th[data-col]");
    if (!th) return;
    var col = th.getAttribute("data-col"), higher = th.getAttribute("data-better") !== "low";
    best = th === current || (current === null && th.classList.contains("sorted")) ? !best : false;
    var keyed = rows.map(function (row, i) {
      var k = col === "name" ? row.getAttribute("data-name") : col === "rank" ? i : goodness(row, col, higher);
      return [k, i, row];
    });
    keyed.sort(function (a, b) {
      var d = a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
      return (best ? -d : d) || a[1] - b[1];
    });
    body.append.apply(body, keyed.map(function (k) { return k[2]; }));
    table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted", "best"); });
    th.classList.add("sorted");
    if (best) th.classList.add("best");
    current = th;
  });
  var filter = document.getElementById("filter"), shown = document.getElementById("shown");
  filter.addEventListener("input", function () {
    var text = filter.value.toLowerCase(), n = 0;
    rows.forEach(function (row) {
      var hit = row.getAttribute("data-name").toLowerCase().indexOf(text) >= 0;
      row.hidden = !hit;
      n += hit;
    });
    shown.textContent = n + " of " + rows.length + " images";
  });
})();
"""


def render(info: PageInfo, rows: list[Row], page_dir: Path) -> str:
    """The page for ``rows`` (already in their first order), linking files relative to ``page_dir``."""
    sorted_by = info.sorted_by
    order = "in the files' order"
    if sorted_by is not None:
        order = f"worst first by {sorted_by.label}" + (" (failed images first)" if any(r.error for r in rows) else "")
    body = "".join(_row(rank, row, info, page_dir) for rank, row in enumerate(rows, 1))
    title = f"{info.title}: drsformer test report"
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{escape(info.title)}</h1>",
            _facts(info, rows),
            summary_table(info, rows),
            charts(info, rows),
            '<div class="tools"><input id="filter" type="search" placeholder="filter by name" aria-label="filter by '
            f'name"> <span id="shown">{len(rows)} of {len(rows)} images</span> · <span class="note">rows {order}; '
            "click a column to sort by it: ▲ worst first, ▼ best first; a thumbnail opens the full-size "
            "file</span></div>",
            f"{_table_start(info)}<tbody>{body}</tbody></table>",
            f"<script>{SCRIPT}</script></body></html>\n",
        ]
    )
