"""The report page's figures, as inline SVG strings (matplotlib's SVG backend, no pyplot state; text is drawn
as paths, so the page needs no font files).

    svg = cost_quality(head["lines"], "total_s", "total seconds (training + shared costs)", "accuracy (%)")

Every function takes the headline lines of leankd.report.headline (seed means and stds) and returns None when
there is nothing measured to draw. A figure that is unavailable is never drawn as zero.
"""
from __future__ import annotations

import io

from matplotlib.figure import Figure

from leankd.report.headline import pareto_front

TEACHER, PLAIN, MATCHED, DISTILLED, FRONT = "#4d4d4d", "#3b6ea8", "#8fb3d9", "#dd7f3c", "#b8323a"
_RC = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "axes.titlesize": 10,
       "axes.titleweight": "bold", "axes.grid": True, "grid.color": "#e4e4e4", "grid.linewidth": 0.6,
       "svg.fonttype": "path"}


def _figure(width: float, height: float) -> Figure:
    import matplotlib

    matplotlib.rcParams.update(_RC)  # style only; Figure() does not touch pyplot or the global backend
    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig: Figure) -> str:
    """The figure as an `<svg>` element (the XML prolog and doctype dropped, for inlining in HTML)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _colour(ln: dict) -> str:
    if ln["role"] == "teacher":
        return TEACHER
    return MATCHED if ln["budget"] else PLAIN if ln["arm"] == "plain" else DISTILLED


def _err(stat: dict) -> float | None:
    return stat["std"] if stat["n"] > 1 and stat["std"] > 0 else None


def _label_offsets(ax, pts: list[tuple[float, float, str]]) -> list[float]:
    """Vertical offsets (points) for the point labels so that no two overlap: a label that would sit on an
    earlier one (near in x and y, in display pixels) moves down a line."""
    placed: list[tuple[float, float, float]] = []  # display x0, x1, y of labels placed
    offsets = []
    for x, y, text in pts:
        dx, dy = ax.transData.transform((x, y))
        off = 0.0
        while any(abs(dy + off - py) < 10 and dx < x1 and dx + 5.5 * len(text) > x0 for x0, x1, py in placed):
            off -= 10.0
        placed.append((dx, dx + 5.5 * len(text), dy + off))
        offsets.append(off)
    return offsets


def _off_scale(pts: list[dict], cost: str) -> set[int]:
    """Teachers far from the students (in quality or in cost) are left off the axes, which then fit the students'
    differences; the figure names them in a note with their true values. Returns the ids of such lines."""
    students = [ln for ln in pts if ln["role"] != "teacher"]
    if not students:
        return set()
    q = [ln["quality"]["mean"] for ln in students]
    c = [ln[cost]["mean"] for ln in students]
    pad = max(max(q) - min(q), 1.0) * 0.6
    return {id(ln) for ln in pts if ln["role"] == "teacher" and not (
        min(q) - 4 * pad <= ln["quality"]["mean"] <= max(q) + 4 * pad and min(c) / 3 <= ln[cost]["mean"] <= 3 * max(c))}


def _cost_axis(ax, xs: list[float], unit: str) -> None:
    from matplotlib.ticker import EngFormatter, LogLocator, MaxNLocator, NullFormatter

    if min(xs) > 0 and max(xs) / min(xs) > 5:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.xaxis.set_major_formatter(EngFormatter(unit=unit, places=None if ax.get_xscale() == "linear" else 0, sep=" "))


def cost_quality(lines: list[dict], cost: str, xlabel: str, ylabel: str, unit: str = "") -> str | None:
    """Quality against `cost` ("total_s" or "total_flops"): a point per arm at its seed mean, std error bars,
    and the Pareto front (higher quality, lower cost) of the student arms as a step line through ringed points."""
    from matplotlib.ticker import EngFormatter

    pts = [ln for ln in lines if ln["quality"] is not None and ln[cost] is not None]
    if not pts:
        return None
    fig = _figure(5.4, 3.7)
    ax = fig.add_subplot()
    off = _off_scale(pts, cost)
    shown = [ln for ln in pts if id(ln) not in off]
    students = [ln for ln in pts if ln["role"] != "teacher"]
    front = [students[i] for i in pareto_front([(ln[cost]["mean"], ln["quality"]["mean"]) for ln in students])]
    _cost_axis(ax, [ln[cost]["mean"] for ln in shown], unit)
    ax.margins(x=0.12)
    for ln in shown:
        ax.errorbar(ln[cost]["mean"], ln["quality"]["mean"], xerr=_err(ln[cost]), yerr=_err(ln["quality"]),
                    fmt="D" if ln["role"] == "teacher" else "o", color=_colour(ln), ms=6, capsize=2, elinewidth=0.9,
                    zorder=3)
    if len(front) > 1:
        ax.step([ln[cost]["mean"] for ln in front], [ln["quality"]["mean"] for ln in front], where="post",
                color=FRONT, lw=1.2, ls="--", zorder=2, label="Pareto front (students)")
    if front:
        ax.scatter([ln[cost]["mean"] for ln in front], [ln["quality"]["mean"] for ln in front], s=140,
                   facecolors="none", edgecolors=FRONT, linewidths=1.4, zorder=4,
                   label=None if len(front) > 1 else "Pareto front (students)")
    placed = [(ln[cost]["mean"], ln["quality"]["mean"], ln["arm"]) for ln in shown]
    order = sorted(range(len(shown)), key=lambda i: -placed[i][1])
    for i, dy in zip(order, _label_offsets(ax, [placed[i] for i in order])):
        ax.annotate(placed[i][2], placed[i][:2], xytext=(7, dy), textcoords="offset points", fontsize=8,
                    color=_colour(shown[i]), va="center", annotation_clip=False)
    fmt = EngFormatter(unit=unit, places=3, sep=" ")
    notes = [f"{ln['arm']} (off scale): {ln['quality']['mean']:.2f}, {fmt(ln[cost]['mean'])}"
             for ln in pts if id(ln) in off]
    if notes:
        ax.text(0.01, 0.99, "\n".join(notes), transform=ax.transAxes, ha="left", va="top", fontsize=8, color=TEACHER)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if front:
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    return to_svg(fig)


def _barh(ax, labels: list[str], values: list[float], colours: list[str], whisker: list[float] | None = None):
    ys = range(len(labels))
    xerr = None if whisker is None else [[0.0] * len(values), [max(w - v, 0.0) for v, w in zip(values, whisker)]]
    ax.barh(ys, values, color=colours, xerr=xerr, capsize=3, error_kw={"elinewidth": 0.9}, height=0.62, zorder=3)
    ax.set_yticks(list(ys), labels)
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)


def latency(lines: list[dict]) -> str | None:
    """Inference ms per batch: p50 bars with a whisker to p90, at the training batch size and at batch 1."""
    panels = [(f, f.replace("p50", "p90"), t) for f, t in (("infer_ms_p50", "training batch size"),
                                                          ("infer_ms_p50_b1", "batch size 1"))
              if any(ln[f] is not None for ln in lines)]
    if not panels:
        return None
    fig = _figure(5.4, 0.9 + 0.28 * len(lines) * 1.0)
    for k, (p50, p90, title) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), k)
        shown = [ln for ln in lines if ln[p50] is not None]
        _barh(ax, [ln["arm"] for ln in shown] if k == 1 else [""] * len(shown),
              [ln[p50]["mean"] for ln in shown], [_colour(ln) for ln in shown],
              [(ln[p90] or ln[p50])["mean"] for ln in shown])
        ax.set_title(f"at {title}", fontsize=9, fontweight="normal")
        ax.set_xlabel("ms per batch (p50, whisker p90)")
    return to_svg(fig)


def memory(lines: list[dict]) -> str | None:
    """Peak memory (MiB) per model."""
    shown = [ln for ln in lines if ln["peak_mem_mb"] is not None]
    if not shown:
        return None
    fig = _figure(5.4, 0.9 + 0.28 * len(shown))
    ax = fig.add_subplot()
    _barh(ax, [ln["arm"] for ln in shown], [ln["peak_mem_mb"]["mean"] for ln in shown],
          [_colour(ln) for ln in shown])
    ax.set_xlabel("peak memory (MiB)")
    return to_svg(fig)


def energy(lines: list[dict]) -> str | None:
    """Energy (J) of the arms whose energy was measured (a counter, not an estimate); None when none was."""
    shown = [ln for ln in lines if ln["energy_j"] is not None]
    if not shown:
        return None
    fig = _figure(5.4, 0.9 + 0.28 * len(shown))
    ax = fig.add_subplot()
    _barh(ax, [f"{ln['arm']} ({ln['energy_source']})" for ln in shown], [ln["energy_j"]["mean"] for ln in shown],
          [_colour(ln) for ln in shown])
    ax.set_xlabel("training energy (J), measured")
    return to_svg(fig)


def ranking(ranked: list[dict], by: str, chosen: set[int]) -> str | None:
    """Layer importance in depth order: one bar per teacher layer (its `by` score), its rank beside it, the
    layers some arm distils highlighted."""
    layers = sorted((s for s in ranked if s.get(by) is not None), key=lambda s: s.get("index", s["rank"]))
    if not layers:
        return None
    fig = _figure(5.4, 0.9 + 0.26 * len(layers))
    ax = fig.add_subplot()
    _barh(ax, [f"{s.get('index', '?')}: {s['name']}" for s in layers], [s[by] for s in layers],
          [DISTILLED if s.get("index") in chosen else MATCHED for s in layers])
    for y, s in enumerate(layers):
        ax.annotate(f"#{s['rank']}", (s[by], y), xytext=(3, 0), textcoords="offset points", va="center",
                    fontsize=7.5)
    ax.set_xlabel(f"{by} score (higher = more important)")
    return to_svg(fig)
