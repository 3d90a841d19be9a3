"""The report as one self-contained HTML page: `<out>/report.html`, written by `leankd report` and `leankd run`
beside report.md.

    write_page(Path("runs/report.html"), {name: summarise(rows)}, {name: rows}, store.failures(), Path("runs"))

Per experiment: the headline table (leankd.report.headline), the compute-matched comparisons, the full ledger
(the Markdown report's table) behind a `<details>`, and figures: quality against total seconds and against
total FLOPs with the students' Pareto front, inference latency, peak memory, the teacher's layer ranking when the
experiment has one, and energy (drawn only where measured; otherwise said in words, with its source).
Everything is inline (CSS, SVG): the page makes no request.
"""
from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path

from leankd.report import plots
from leankd.report.headline import BETTER, LEGEND, TEST_COLUMN, WORSE, columns, headline
from leankd.report.table import _LEGEND, to_markdown

log = logging.getLogger(__name__)

CSS = """
:root { --ink: #1d1d1f; --muted: #62646a; --rule: #dcdde1; --band: #f6f7f9; --accent: #b8323a; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.5;
       font: 15px/1.5 -apple-system, "Segoe UI", "Helvetica Neue", Helvetica, Arial, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 28px 32px 64px; }
@media (max-width: 640px) { main { padding: 16px 12px 40px; } h1 { font-size: 1.35rem; } }
h1 { font-size: 1.6rem; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 1.25rem; margin: 44px 0 4px; padding-top: 12px; border-top: 2px solid var(--ink); }
h3 { font-size: 0.95rem; margin: 24px 0 8px; text-transform: uppercase; letter-spacing: 0.04em; color: var(--muted); }
p.meta, p.note, figcaption, .legend { color: var(--muted); font-size: 0.85rem; }
p, li, figcaption { overflow-wrap: anywhere; }  /* long names and paths wrap instead of widening the page */
code { font: 0.92em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--band);
       padding: 0 3px; border-radius: 3px; }
.legend { max-width: 70em; }
.scroll { overflow-x: auto; max-width: 100%; }  /* a wide table scrolls in its own box, never the page */
table { border-collapse: collapse; font-size: 0.85rem; font-variant-numeric: tabular-nums; margin: 4px 0 8px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--rule); white-space: nowrap; }
th { text-align: right; font-weight: 600; border-bottom: 1.5px solid var(--ink); vertical-align: bottom;
     white-space: normal; }
td:first-child { white-space: normal; min-width: 9em; }  /* "plain_at_kd (plain at kd's FLOPs)" wraps */
th:first-child, td:first-child { text-align: left; }
td.num { text-align: right; }
tbody tr:nth-child(even) { background: var(--band); }
tr.teacher td { color: var(--muted); }
.better { color: #1b7f3b; font-weight: 600; } .worse { color: #c0392b; font-weight: 600; }
.ns { color: var(--muted); }
ul.compare { padding-left: 1.2em; margin: 6px 0; } ul.compare li { margin: 2px 0; }
details { margin: 10px 0 4px; } summary { cursor: pointer; font-weight: 600; color: var(--accent); }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(460px, 100%), 1fr)); gap: 18px 28px; }
figure { margin: 0; padding: 12px 14px; border: 1px solid var(--rule); border-radius: 6px; background: #fff;
         min-width: 0; }
/* matplotlib writes a viewBox: the figure scales to its box, up to twice its drawn size */
figure svg { width: 100%; max-width: 780px; height: auto; display: block; margin: 0 auto; }
figcaption b { color: var(--ink); }
.failures li { color: var(--accent); }
"""


def ledger_html(markdown: str) -> str:
    """The Markdown ledger's table (leankd.report.table.to_markdown) as an HTML table, numbers right-aligned."""
    rows = [ln for ln in markdown.splitlines() if ln.startswith("| ")]
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]] for ln in rows]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in cells[1:])
    return (f'<div class="scroll"><table class="ledger"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def prose(markdown: str) -> str:
    """A line of the Markdown report's prose as HTML: escaped, with `inline code` as <code> (the only markup the
    legends use), never raw backticks."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(markdown))


def _td(text: str, extra: str = "") -> str:
    num = re.match(r"^[+\-−]?\d", text) or text in ("—", "unavailable")
    cls = " ".join(c for c in ("num" if num else "", extra) if c)
    return f'<td class="{cls}">{html.escape(text)}</td>' if cls else f"<td>{html.escape(text)}</td>"


def _direction_class(test: dict) -> str:
    """CSS class of a paired comparison's direction: green only for a significant gain, red for a significant
    loss, muted for n.s. and n/a."""
    direction = test.get("direction")
    return {BETTER: "better", WORSE: "worse"}.get(direction, "ns" if direction else "")


def headline_html(head: dict) -> str:
    cols = columns(head)
    body = []
    for ln in head["lines"]:
        tds = [_td(cell(ln), _direction_class(ln) if name == TEST_COLUMN else "") for name, cell in cols]
        body.append(f'<tr class="{ln["role"]}">' + "".join(tds) + "</tr>")
    thead = "".join(f"<th>{html.escape(name)}</th>" for name, _ in cols)
    table = (f'<div class="scroll"><table class="headline"><thead><tr>{thead}</tr></thead>'
             f'<tbody>{"".join(body)}</tbody></table></div>')
    compare = "".join(f'<li class="{_direction_class(c)}">{html.escape(c["text"])}</li>' for c in head["comparisons"])
    return table + (f'<ul class="compare">{compare}</ul>' if compare else "") + \
        f'<p class="legend">{prose(LEGEND)}</p>'


def find_ranking(rows: list[dict], out_dir: Path) -> tuple[dict, Path] | None:
    """The experiment's layer ranking: the file its rows name (`extra.ranking.path`), else one stored beside its
    teacher (`<out>/teachers/<key>/ranking-*.json`, the newest)."""
    candidates: list[Path] = []
    for r in reversed(rows):
        path = ((r.get("extra") or {}).get("ranking") or {}).get("path")
        if path:
            p = Path(path)
            parts = p.parts[p.parts.index("teachers"):] if "teachers" in p.parts else ()
            candidates += [p, out_dir / p] + ([out_dir.joinpath(*parts)] if parts else [])
    for r in rows:
        if r.get("role") == "teacher":
            for key in {r.get("config_hash"), (r.get("extra") or {}).get("reused_teacher")} - {None}:
                tdir = out_dir / "teachers" / str(key)
                candidates += sorted(tdir.glob("ranking-*.json"), key=lambda f: f.stat().st_mtime, reverse=True)
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text()), path
            except (OSError, ValueError) as e:
                log.warning("could not read the layer ranking %s: %s", path, e)
    return None


def _figure(title: str, svg: str | None, caption: str, missing: str) -> str:
    body = svg if svg else f'<p class="note">{html.escape(missing)}</p>'
    return (f'<figure class="plot"><figcaption><b>{html.escape(title)}</b> {html.escape(caption)}</figcaption>'
            f"{body}</figure>")


def _energy_note(lines: list[dict]) -> str:
    """Arms without a measured energy, by source, e.g. "unavailable (energy_source: unavailable, no NVML or RAPL
    counter was readable): plain, kd"."""
    by_source: dict[str, list[str]] = {}
    for ln in lines:
        if ln["energy_j"] is None:
            by_source.setdefault(ln["energy_source"] or "unavailable", []).append(ln["arm"])
    why = {"unavailable": ", no NVML or RAPL counter was readable"}
    return "; ".join(f"unavailable (energy_source: {src}{why.get(src, '')}): {', '.join(arms)}"
                     for src, arms in by_source.items())


def _plots(head: dict, rows: list[dict], out_dir: Path) -> str:
    lines, quality = head["lines"], columns(head)[2][0]
    front = "Each arm at its seed mean, bars = std over seeds; ringed: the Pareto front of the student arms " \
            "(nothing cheaper is as good). The teacher's cost is its own training."
    figs = [_figure("Quality vs total seconds.", plots.cost_quality(
                lines, "total_s", "total_s (training + shared costs)", quality, "s"),
                    front, "unavailable: no arm has both figures"),
            _figure("Quality vs total FLOPs.", plots.cost_quality(
                lines, "total_flops", "total FLOPs (training + cache share)", quality, "FLOP"),
                    front, "unavailable: no arm has both figures"),
            _figure("Inference latency.", plots.latency(lines), "ms per batch, eval mode; bar p50, whisker p90.",
                    "unavailable: no latency measured"),
            _figure("Peak memory.", plots.memory(lines),
                    "source: " + ", ".join(sorted({ln["peak_mem_source"] or "unavailable" for ln in lines})),
                    "unavailable: no peak memory measured")]
    found = find_ranking(rows, out_dir)
    if found:
        ranking, path = found
        chosen = {i for r in rows for i in ((r.get("extra") or {}).get("teacher_layers") or [])}
        by = ranking.get("by", "ablation")
        figs.append(_figure("Teacher layer importance.", plots.ranking(ranking.get("ranked") or [], by, chosen),
                            f"ranked by {by} on {ranking.get('samples')} samples ({ranking.get('seconds', 0):.1f} s); "
                            f"highlighted: layers an arm distils; from {path.name}", "unavailable: empty ranking"))
    note = _energy_note(lines)
    svg = plots.energy(lines)
    figs.append(_figure("Training energy.", svg, "Measured by a counter (NVML, RAPL) or not shown; never estimated" +
                        (f". {note}" if svg and note else "."), note or "unavailable"))
    return '<div class="plots">' + "".join(figs) + "</div>"


def section(name: str, summary: list[dict], rows: list[dict], out_dir: Path) -> str:
    head = headline(summary)
    where = ", ".join(f"{k}: {v}" for k in ("task", "split") if (v := summary[0].get(k)))
    seeds = sorted({seed for s in summary for seed in s["seeds"] if seed is not None})
    ledger = to_markdown(summary, name)
    return "".join([
        f'<section id="{html.escape(name)}"><h2>{html.escape(name)}</h2>',
        f'<p class="meta">{html.escape(where)}; quality: {html.escape(str(head["metric"]))}; seeds {seeds}</p>',
        "<h3>Headline</h3>", headline_html(head),
        "<details><summary>Full ledger (every figure, every arm and config)</summary>",
        f'{ledger_html(ledger)}<p class="legend">{prose(_LEGEND)}</p></details>',
        "<h3>Figures</h3>", _plots(head, rows, out_dir), "</section>"])


def failures_html(failures: list[dict]) -> str:
    if not failures:
        return ""
    items = "".join("<li>" + prose(f"{f['experiment']}: {f['arm']} seed {f['seed']}: {f['error']}") + "</li>"
                    for f in failures)
    return f'<section><h2>Failed jobs</h2><p class="note">No row; rerunning the same command tries them again.</p>' \
           f'<ul class="failures">{items}</ul></section>'


def write_page(path: Path, summaries: dict[str, list[dict]], by_exp: dict[str, list[dict]], failures: list[dict],
               out_dir: Path) -> Path:
    """Write the page to `path` (see the module docstring) and return it."""
    sections = "".join(section(name, s, by_exp[name], Path(out_dir)) for name, s in summaries.items())
    toc = " · ".join(f'<a href="#{html.escape(n)}">{html.escape(n)}</a>' for n in summaries)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>leankd report</title><style>{CSS}</style></head>'
            f'<body><main><h1>leankd report</h1><p class="meta">{toc}</p>{sections}{failures_html(failures)}'
            f"</main></body></html>")
    path.write_text(page, encoding="utf-8")
    return path
