"""The read-only status page `syncd run` serves at `/` (with `[metrics] listen`).

It shows the one reading of the state (state/readings.py) that `syncd status`, the metrics
and the alerts show: `render()` turns it into one self-contained HTML page: inline CSS and
an inline SVG chart, no script, no external request (the server's Content-Security-Policy
forbids them anyway), escaped text, a viewport for phones, and a refresh every 30 seconds.
Only counts and config names appear: no user ids, e-mails or keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from html import escape

from sqlalchemy import Engine

from syncd import __version__
from syncd.config import Config
from syncd.model import PairOutcome, RunOutcome
from syncd.render import duration, plural, readable
from syncd.state.operator import RunSummary
from syncd.state.readings import RECENT_RUNS, Reading, read

REFRESH_SECONDS = 30
CHART_SERIES = (("sent", "#4c78a8"), ("acknowledged", "#54a24b"), ("failed", "#e45756"))


def page_renderer(config: Config, engine: Engine) -> Callable[[], str]:
    return lambda: render(read(config, engine))


# --- rendering (pure) --------------------------------------------------------------------

_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;padding:12px;max-width:1200px;
color:#1d1d1f;background:#fff}
h1{font-size:1.3em;margin:0 0 4px}h2{font-size:1.1em;margin:20px 0 6px}
.meta{color:#666;font-size:.85em;margin:0}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:5px 7px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th:first-child,td:first-child,th.l,td.l{text-align:left}
th{background:#f4f4f6;font-weight:600;white-space:normal}
#pairs td:first-child{white-space:normal;overflow-wrap:anywhere;min-width:9em}
@media (max-width:600px){
#pairs thead{display:none}
#pairs,#pairs tbody,#pairs tr{display:block}
#pairs tr{border:1px solid #ddd;border-radius:6px;margin:0 0 10px;padding:4px 0}
#pairs td{display:flex;justify-content:space-between;gap:12px;border:0;padding:3px 10px;
white-space:normal;overflow-wrap:anywhere;text-align:right}
#pairs td::before{content:attr(data-label);color:#666;font-weight:400;text-align:left;white-space:nowrap}
}
.ok{color:#1e7b34}.bad{color:#b42318;font-weight:600}.warn{color:#a15c00;font-weight:600}
svg{width:100%;height:auto;max-height:240px;display:block}
.legend span{display:inline-block;margin-right:12px;font-size:.85em}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
#now{margin:10px 0 0}
#attention{padding-left:18px;margin:10px 0}#attention li{margin:0 0 8px;overflow-wrap:anywhere}
.next{color:#444}
code{font:.9em ui-monospace,monospace;background:#f4f4f6;padding:1px 4px;border-radius:3px;
overflow-wrap:anywhere}
"""


def render(data: Reading) -> str:
    """The whole page as one HTML string (UTF-8)."""
    stamp = readable(data.at)
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<link rel="icon" href="data:,">',  # no /favicon.ico request
        f"<title>syncd status</title><style>{_CSS}</style></head><body>",
        "<h1>syncd status</h1>",
        f'<p class="meta">syncd {escape(__version__)} &middot; {stamp} &middot; refreshes every '
        f"{REFRESH_SECONDS} s</p>",
        _now(data),
        _attention(data),
        "<h2>Audiences &times; destinations</h2>",
        _pairs_table(data),
        f"<h2>Last {plural(len(data.runs), 'run')}</h2>" if data.runs else "<h2>Runs</h2>",
        _chart(data.runs) if data.runs else "<p>No runs yet.</p>",
        _runs_table(data.runs) if data.runs else "",
        "</body></html>\n",
    ])


def _now(data: Reading) -> str:
    """The run in progress (from whichever process runs it) and the next scheduled run."""
    running = data.running
    if running is None:
        now = "No run in progress."
    else:
        now = (f"<b>Run {running.run_id} in progress</b> since {readable(running.started_at)} "
               f"({_age(running.age_seconds)}, pid {running.pid} on {escape(running.host)}): "
               f"{running.snapshots} of {plural(running.audiences, 'snapshot')} taken; "
               "changes acknowledged so far per pair under <i>This run</i>.")
    upcoming = data.next_run
    if upcoming is None or upcoming.next_run_at is None:
        after = "Next run: none scheduled (no <code>syncd run</code> is running on this state database)."
    else:
        wait = max(0, round((upcoming.next_run_at - data.at).total_seconds()))
        after = (f"Next run: {readable(upcoming.next_run_at)} (in {_age(wait)}; <code>syncd run</code>, "
                 f"pid {upcoming.pid} on {escape(upcoming.host)}).")
    return f'<p id="now">{now}<br>{after}</p>'


def _pairs_table(data: Reading) -> str:
    if not data.pairs:
        return "<p>No audiences configured.</p>"
    headers = ["Audience", "Destination", "Members", "Acknowledged", "Pending", "Oldest pending",
               "ETA", "Skipped", "Failed", "Held exits", "Last run", "Outcome"]
    if data.running is not None:
        headers.append("This run")

    def rows() -> Iterator[list[str]]:
        for p in data.pairs:
            seconds = p.oldest_pending_age_seconds
            age = _age(seconds) if p.pending and seconds is not None else "-"
            eta = _age(p.eta_seconds) if p.pending and p.eta_seconds is not None else "-"
            last = _started(p.last_run_started_at, p.last_run_duration_seconds)
            cells = [_td(p.audience, "l"), _td(p.destination, "l"), _td(p.members), _td(p.acknowledged),
                     _count(p.pending, "warn"), _td(age), _td(eta), _td(p.skipped), _count(p.failed, "bad"),
                     _count(p.held_exits, "bad"), _td(last), _outcome(p.last_outcome)]
            if data.running is not None:
                cells.append(_td(p.running_acknowledged or 0))
            # On a phone each pair becomes a card: the cell's header shows beside its value.
            yield [cell.replace("<td", f'<td data-label="{escape(h)}"', 1) for cell, h in zip(cells, headers,
                                                                                                 strict=True)]

    return _table(headers, rows(), "pairs")


def _attention(data: Reading) -> str:
    """Each pair whose last run was not `ok`: why, and what resolves it (as `syncd status` says)."""
    items = [f'<li><span class="bad">{escape(p.audience)} &rarr; {escape(p.destination)}: '
             f"{escape(p.last_outcome or '')}</span> {_words(p.last_message or '')}"
             + (f'<br><span class="next">Next: {_words(p.next_step)}</span>' if p.next_step else "")
             + "</li>"
             for p in data.pairs if p.last_outcome not in (None, PairOutcome.OK) and p.last_message]
    return f'<h2>Needs attention</h2><ul id="attention">{"".join(items)}</ul>' if items else ""


def _started(at: datetime | None, seconds: int | None) -> str:
    """A run's start (as `history` shows it) and how long it took: '28 Nov 10:00Z, 1m35s'."""
    if at is None:
        return "-"
    return at.strftime("%d %b %H:%MZ") + ("" if seconds is None else f", {_age(seconds)}")


def _words(text: str) -> str:
    """A message as HTML: escaped, `code` in backticks and the commands it names set as code."""
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text, quote=False))
    return re.sub(r"(?<!<code>)(syncd approve [^()<]*[^()< ])", r"<code>\1</code>", html)


def _runs_table(runs: list[RunSummary]) -> str:
    headers = ["Run", "Started", "Outcome", "Sent", "Acknowledged", "Failed", "Pending", "Held pairs"]

    def rows() -> Iterator[list[str]]:
        for r in runs:
            took = round((r.finished_at - r.started_at).total_seconds()) if r.finished_at else None
            yield [_td(r.id), _td(_started(r.started_at, took), "l"),
                   _outcome(r.outcome or RunOutcome.RUNNING), _td(r.sent), _td(r.acknowledged),
                   _count(r.failed, "bad"), _td(r.pending), _td(r.held)]

    return _table(headers, rows(), "runs")


_LEFT = {"Audience", "Destination", "Started", "Outcome"}  # text columns: aligned left


def _table(headers: list[str], rows: Iterator[list[str]], table_id: str) -> str:
    head = "".join(('<th class="l">' if h in _LEFT else "<th>") + f"{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(rows_cells) + "</tr>" for rows_cells in rows)
    return (f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _td(value: object, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<td{cls}>{escape(str(value))}</td>"


def _count(value: int, css: str) -> str:
    """A count, highlighted when not zero."""
    return _td(value, css if value else "")


def _outcome(outcome: str | None) -> str:
    if outcome is None:
        return _td("-", "l")
    return _td(outcome, "l " + ("ok" if outcome == "ok" else "bad"))


_LABEL = 'font-size="16" text-anchor="end" fill="#666"'


def _chart(runs: list[RunSummary]) -> str:
    """Grouped bars per run, oldest on the left: sent, acknowledged, failed. The scale is
    logarithmic: after an initial send of thousands, a run of a few changes is still a bar,
    not a hairline; gridlines at 1, 10, 100, ... and the peak say what a height means."""
    ordered = list(reversed(runs))
    bar, gap, height, top, axis = 6, 8, 160, 10, 44
    group = bar * len(CHART_SERIES) + gap
    slots = max(len(ordered), RECENT_RUNS)  # fixed slots, newest on the right: bars keep their width
    width = axis + group * slots
    peak = max((max(r.sent, r.acknowledged, r.failed) for r in ordered), default=0) or 1
    span = math.log10(1 + peak)

    def y(value: float) -> float:
        return round(height + top - math.log10(1 + value) / span * height, 1)

    parts = [f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height + top + 4}" '
             'role="img" aria-label="sent, acknowledged and failed changes per run, on a log scale">',
             f'<line x1="{axis}" y1="{height + top}" x2="{width}" y2="{height + top}" stroke="#999"/>',
             f'<line x1="{axis}" y1="{top}" x2="{width}" y2="{top}" stroke="#eee"/>',
             f'<text x="{axis - 4}" y="{top + 12}" {_LABEL}>{_short(peak)}</text>',
             f'<text x="{axis - 4}" y="{height + top}" {_LABEL}>0</text>']
    for tick in _ticks(peak, height / span):
        if y(tick) - top >= 18 and height + top - y(tick) >= 16:  # clear of the peak's and 0's labels
            parts += [f'<line x1="{axis}" y1="{y(tick)}" x2="{width}" y2="{y(tick)}" stroke="#eee"/>',
                      f'<text x="{axis - 4}" y="{y(tick) + 6}" {_LABEL}>{_short(tick)}</text>']
    for i, run in enumerate(ordered):
        x = axis + (slots - len(ordered) + i) * group + gap / 2
        parts.append(f"<g><title>run {run.id}: {run.sent} sent, {run.acknowledged} acknowledged, "
                     f"{run.failed} failed</title>")
        for j, (name, colour) in enumerate(CHART_SERIES):
            value = int(getattr(run, name))
            parts.append(f'<rect class="{name}" x="{x + j * bar}" y="{y(value)}" '
                         f'width="{bar - 1}" height="{round(height + top - y(value), 1)}" fill="{colour}"/>')
        parts.append("</g>")
    parts.append("</svg>")
    legend = "".join(f'<span><i style="background:{c}"></i>{n}</span>' for n, c in CHART_SERIES)
    return "".join(parts) + f'<p class="legend">{legend}<span>log scale</span></p>'


def _ticks(peak: int, per_decade: float) -> list[int]:
    """Gridlines at powers of ten below the peak: every decade, or every few if a decade is
    less than 20 px high."""
    step = max(1, math.ceil(20 / per_decade))
    return [10 ** k for k in range(0, int(math.log10(peak)) + 1, step) if 10 ** k < peak]


def _short(count: int) -> str:
    """1, 950, 12k, 3M: a chart label."""
    for size, unit in ((1_000_000, "M"), (1_000, "k")):
        if (count >= size and count % size == 0) or count >= 10 * size:
            return f"{count // size}{unit}"
    return str(count)


def _age(seconds: int) -> str:
    return duration(seconds, most=2, pad=True)
