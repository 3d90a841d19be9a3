"""The report page's figures, as inline SVG strings (matplotlib's SVG backend, no pyplot state). Text stays text
(`<text>` elements in the page's sans-serif font, DejaVu Sans where installed): it scales with the figure, can be
selected, and the page's browser test can check that no two labels touch.

    svg = cost_quality(head["lines"], "total_s", "total seconds (training + shared costs)", "accuracy (%)")

Every function takes the headline lines of leankd.report.headline (seed means and stds) and returns None when
there is nothing measured to draw. A figure that is unavailable is never drawn as zero. Point labels are placed by
leankd.report.labels (free spots measured with matplotlib's renderer); legends sit outside the axes.
"""
from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from leankd.report.headline import pareto_front
from leankd.report.labels import PAD, place, segment_boxes

TEACHER, PLAIN, MATCHED, DISTILLED, FRONT = "#4d4d4d", "#3b6ea8", "#8fb3d9", "#dd7f3c", "#b8323a"
_RC = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "axes.titlesize": 10,
       "axes.titleweight": "bold", "axes.grid": True, "grid.color": "#e4e4e4", "grid.linewidth": 0.6,
       "svg.fonttype": "none", "font.family": "sans-serif",
       "font.sans-serif": ["DejaVu Sans", "Verdana", "Arial", "Helvetica"]}  # the SVG names these, in this order


def _figure(width: float, height: float) -> Figure:
    import matplotlib

    matplotlib.rcParams.update(_RC)  # style only; Figure() does not touch pyplot or the global backend
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure text with (labels, ticks); the SVG is still drawn by savefig
    return fig


def fit_ticks(fig: Figure) -> None:
    """Fewer x ticks on any axes whose tick labels would touch (long labels such as "2.50 TFLOP" on a narrow
    panel): a linear axis gets one bin less until they fit, a log axis keeps its decades only. Leaves the figure
    drawn (laid out) as it will be saved."""
    from matplotlib.ticker import LogLocator, MaxNLocator

    for _ in range(6):
        fig.draw_without_rendering()
        crowded = False
        for ax in fig.axes:
            low, high = sorted(ax.get_xlim())
            boxes = sorted((t.get_window_extent() for loc, t in zip(ax.get_xticks(), ax.get_xticklabels())
                            if low <= loc <= high and t.get_text()), key=lambda b: b.x0)
            if any(a.x1 + 2 * PAD > b.x0 for a, b in zip(boxes, boxes[1:])):
                crowded = True
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0,)) if ax.get_xscale() == "log"
                                           else MaxNLocator(nbins=max(len(boxes) - 2, 1)))
        if not crowded:
            return


def to_svg(fig: Figure, fit: bool = True) -> str:
    """The figure as an `<svg>` element (the XML prolog and doctype dropped, for inlining in HTML; no date, so the
    same figure gives the same text); `fit`: thin out crowded ticks first (fit_ticks)."""
    if fit:
        fit_ticks(fig)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _colour(ln: dict) -> str:
    if ln["role"] == "teacher":
        return TEACHER
    return MATCHED if ln["budget"] else PLAIN if ln["arm"] == "plain" else DISTILLED


def _err(stat: dict) -> float | None:
    return stat["std"] if stat["n"] > 1 and stat["std"] > 0 else None


def _off_scale(pts: list[dict], cost: str) -> set[int]:
    """Teachers far from the students (in quality or in cost) are left off the axes, which then fit the students'
    differences; the figure's legend names them with their true values. Returns the ids of such lines."""
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


def _legend(fig, shown: list[dict], front: list[dict], notes: list[str]) -> None:
    """A legend of what the colours and markers mean, below the axes (outside them, so it never covers a point);
    a teacher left off the axes is named there with its true values."""
    from matplotlib.lines import Line2D

    roles = {TEACHER: "teacher", PLAIN: "plain", DISTILLED: "distilled", MATCHED: "plain at a matched budget"}
    present = {_colour(ln) for ln in shown}
    handles = [Line2D([], [], ls="none", marker="D" if c == TEACHER else "o", color=c, ms=6, label=name)
               for c, name in roles.items() if c in present]
    if front:
        handles.append(Line2D([], [], color=FRONT, ls="--", lw=1.2, marker="o", ms=10, mfc="none", mew=1.4,
                              label="Pareto front (students)"))
    handles += [Line2D([], [], ls="none", marker="D", color=TEACHER, ms=6, label=note) for note in notes]
    legend = fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=8,
                        frameon=False, handletextpad=0.4, columnspacing=1.2)
    for ncols in range(min(len(handles), 3) - 1, 0, -1):  # fewer columns until it fits the figure's width
        if legend.get_window_extent(fig.canvas.get_renderer()).width <= fig.bbox.width - 2 * PAD:
            break
        legend.set_ncols(ncols)


def _obstacles(ax, bars: list, front_xy: list[tuple[float, float]], shown_xy: list[tuple[float, float]]) -> list:
    """Display-pixel boxes a label must not touch: every marker (a front point's ring is larger), every error bar
    with its caps, and the Pareto front's step line."""
    from matplotlib.transforms import Bbox

    px = ax.figure.dpi / 72.0
    to_px = ax.transData.transform
    boxes = [Bbox.from_bounds(x - r, y - r, 2 * r, 2 * r) for (x, y), r in
             [(to_px(p), 4.5 * px) for p in shown_xy] + [(to_px(p), 7.5 * px) for p in front_xy]]
    for bar in bars:
        for coll in bar.lines[2]:
            for seg in coll.get_segments():
                boxes += segment_boxes(to_px(seg), 3 * px)  # 3 pt: the caps' half width, and a margin
    if len(front_xy) > 1:
        xy = [xy for a, b in zip(front_xy, front_xy[1:]) for xy in (a, (b[0], a[1]))] + [front_xy[-1]]
        boxes += segment_boxes(to_px(xy), 1.5 * px)
    return boxes


def cost_quality(lines: list[dict], cost: str, xlabel: str, ylabel: str, unit: str = "") -> str | None:
    """Quality against `cost` ("total_s" or "total_flops"): a point per arm at its seed mean, std error bars, the
    Pareto front (higher quality, lower cost) of the student arms as a step line through ringed points, each point
    named by a label that touches no other text, point or error bar (leankd.report.labels)."""
    from matplotlib.ticker import EngFormatter

    pts = [ln for ln in lines if ln["quality"] is not None and ln[cost] is not None]
    if not pts:
        return None
    fig = _figure(5.4, 4.0)
    ax = fig.add_subplot()
    off = _off_scale(pts, cost)
    shown = [ln for ln in pts if id(ln) not in off]
    students = [ln for ln in pts if ln["role"] != "teacher"]
    front = [students[i] for i in pareto_front([(ln[cost]["mean"], ln["quality"]["mean"]) for ln in students])]
    xy = {id(ln): (ln[cost]["mean"], ln["quality"]["mean"]) for ln in pts}
    _cost_axis(ax, [xy[id(ln)][0] for ln in shown], unit)
    ax.margins(x=0.15, y=0.12)
    bars = [ax.errorbar(*xy[id(ln)], xerr=_err(ln[cost]), yerr=_err(ln["quality"]), fmt="D" if ln["role"] == "teacher"
                        else "o", color=_colour(ln), ms=6, capsize=2, elinewidth=0.9, zorder=3) for ln in shown]
    if len(front) > 1:
        ax.step(*zip(*[xy[id(ln)] for ln in front]), where="post", color=FRONT, lw=1.2, ls="--", zorder=2)
    if front:
        ax.scatter(*zip(*[xy[id(ln)] for ln in front]), s=140, facecolors="none", edgecolors=FRONT, linewidths=1.4,
                   zorder=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fmt = EngFormatter(unit=unit, sep=" ")
    three = lambda v: fmt(float(f"{v:.3g}"))  # 3 significant digits: 269 s, 34.2 TFLOP (not 269.186 s)
    _legend(fig, shown, front, [f"{ln['arm']} (off scale): {ln['quality']['mean']:.2f}, {three(ln[cost]['mean'])}"
                                for ln in pts if id(ln) in off])
    _label_points(fig, ax, [(*xy[id(ln)], ln["arm"], _colour(ln)) for ln in shown], bars,
                  [xy[id(ln)] for ln in front])
    return to_svg(fig, fit=False)


def _label_points(fig, ax, points: list[tuple], bars: list, front_xy: list) -> None:
    """Name every point; when the axes are too crowded for that, widen the quality range and try again (the last
    try names every point, free place or not)."""
    tries = 6
    for attempt in range(tries):
        fit_ticks(fig)  # lays the figure out, as it will be saved
        fig.set_layout_engine("none")  # and keeps that layout: the labels are placed in its pixels
        obstacles = _obstacles(ax, bars, front_xy, [p[:2] for p in points])
        if place(ax, points, obstacles, fig.dpi / 72 * 7, strict=attempt < tries - 1):
            return
        fig.set_layout_engine("constrained")
        low, high = ax.get_ylim()
        ax.set_ylim(low - 0.15 * (high - low), high + 0.15 * (high - low))


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
        _barh(ax, [ln["arm"] for ln in shown], [ln[p50]["mean"] for ln in shown], [_colour(ln) for ln in shown],
              [(ln[p90] or ln[p50])["mean"] for ln in shown])
        ax.tick_params(axis="y", labelleft=k == 1)  # the arms are named once, on the left
        ax.set_title(f"at {title}", fontsize=9, fontweight="normal")
    fig.supxlabel("ms per batch (p50, whisker p90)", fontsize=9)  # one label: two would collide on a narrow figure
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
