"""Point labels that never overlap. Each label goes to the first free place for it: beside its point (right, left,
above, below, the diagonals), then in a column stacked right or left of the point, then anywhere in the axes,
nearest first; away from its point, a thin leader line joins the label's nearest edge to the point. Free means
that the label's text box, measured by matplotlib's renderer, stays inside the axes and touches no other label,
no obstacle (markers, error bars, lines) and no leader line, and that its own leader crosses no other label.

    obstacles = [Bbox(...) for each marker, error bar and line segment, in display pixels]
    placed = place(ax, [(x, y, "kd", "#dd7f3c"), ...], obstacles, gap_px=8)   # None: some label found no room

Call it once the figure's layout is final and fixed (`fig.set_layout_engine("none")` after a draw): it works in
display pixels.
"""
from __future__ import annotations

import numpy as np
from matplotlib.text import Annotation
from matplotlib.transforms import Bbox

PAD = 2.0  # px kept clear around every label: a browser's font can be a little wider than matplotlib's measure
_DIRS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1))  # right, left, above, below, ...


def segment_boxes(points, pad: float) -> list[Bbox]:
    """Display-pixel boxes around the axis-aligned segments between consecutive `points` (error bars, step lines),
    `pad` pixels wide on each side."""
    return [Bbox([[min(a[0], b[0]) - pad, min(a[1], b[1]) - pad], [max(a[0], b[0]) + pad, max(a[1], b[1]) + pad]])
            for a, b in zip(points, points[1:])]


def _candidates(px: float, py: float, w: float, h: float, gap: float, area: Bbox) -> np.ndarray:
    """Lower-left corners (M, 2) of places for a w x h label of the point (px, py), best first: beside the point,
    then stacked in a column right or left of it, then on a grid over the axes, nearest first."""
    beside = [(px + ux * gap - (w if ux < 0 else w / 2 if ux == 0 else 0),
               py + uy * gap - (h if uy < 0 else h / 2 if uy == 0 else 0)) for ux, uy in _DIRS]
    column = [(px + side * 1.5 * gap - (w if side < 0 else 0), py + sign * k * h - h / 2)
              for k in range(1, int(area.height / h) + 1) for side in (1, -1) for sign in (1, -1)]
    gx, gy = np.meshgrid(np.arange(area.x0, area.x1 - w, w / 4), np.arange(area.y0, area.y1 - h, h / 2))
    grid = np.column_stack([gx.ravel(), gy.ravel()]).reshape(-1, 2)
    grid = grid[np.argsort(np.hypot(*(_edges(px, py, grid, w, h) - (px, py)).T), kind="stable")]
    return np.concatenate([np.array(beside + column).reshape(-1, 2), grid])


def _edges(px: float, py: float, corners: np.ndarray, w: float, h: float) -> np.ndarray:
    """The points (M, 2) of the w x h boxes at `corners` nearest (px, py): where their leader lines meet them."""
    return np.clip((px, py), corners, corners + (w, h))


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B): box a[i] and box b[j] (x0, y0, x1, y1) share an area."""
    return ((a[:, None, 0] < b[None, :, 2]) & (b[None, :, 0] < a[:, None, 2]) &
            (a[:, None, 1] < b[None, :, 3]) & (b[None, :, 1] < a[:, None, 3]))


def _crosses(seg: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(S, B): segment seg[i] (x0, y0, x1, y1) meets box box[j] (Liang-Barsky clipping, vectorised)."""
    x0, y0 = seg[:, None, 0], seg[:, None, 1]
    dx, dy = seg[:, None, 2] - x0, seg[:, None, 3] - y0
    lo, hi = np.zeros((len(seg), len(box))), np.ones((len(seg), len(box)))
    apart = np.zeros((len(seg), len(box)), dtype=bool)
    for p, q in ((-dx, x0 - box[None, :, 0]), (dx, box[None, :, 2] - x0),
                 (-dy, y0 - box[None, :, 1]), (dy, box[None, :, 3] - y0)):
        p, q = np.broadcast_arrays(p, q)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = q / p
        apart |= (p == 0) & (q < 0)
        lo = np.where(p < 0, np.maximum(lo, r), lo)
        hi = np.where(p > 0, np.minimum(hi, r), hi)
    return ~apart & (lo <= hi)


def _spot(px: float, py: float, size: tuple[float, float], gap: float, area: Bbox, obstacles: np.ndarray,
          labels: np.ndarray, leaders: np.ndarray) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The first free box (x0, y0, x1, y1) for a label of `size` (w, h) of the point (px, py), with its leader
    line (x0, y0, x1, y1; None when it sits beside the point); None when the axes have no room left. All the
    candidates are checked at once: numpy, not a Python loop per place."""
    w, h = size
    corners = _candidates(px, py, w, h, gap, area)
    boxes = np.column_stack([corners, corners + (w, h)])
    ok = ((boxes[:, 0] >= area.x0) & (boxes[:, 2] <= area.x1) & (boxes[:, 1] >= area.y0) & (boxes[:, 3] <= area.y1)
          & ~_overlap(boxes, np.concatenate([obstacles, labels])).any(1) & ~_crosses(leaders, boxes).any(0))
    ends = _edges(px, py, corners, w, h)
    far = np.hypot(*(ends - (px, py)).T) > 1.5 * gap
    lines = np.column_stack([np.broadcast_to((px, py), ends.shape), ends])
    ok &= ~far | ~_crosses(lines, labels).any(1)
    if not ok.any():
        return None
    i = int(np.argmax(ok))
    return boxes[i], lines[i] if far[i] else None


def place(ax, points: list[tuple[float, float, str, str]], obstacles: list[Bbox], gap_px: float,
          fontsize: float = 8, strict: bool = True) -> list[Annotation] | None:
    """Label each (x, y, text, colour) point of `ax` (data coordinates) away from `obstacles` and from each other;
    return the labels. When some label finds no free place: None, with nothing drawn (`strict`), or that label
    beside its point regardless (not `strict`: every point named, a last resort)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    area = ax.get_window_extent(renderer)
    to_pt = 72.0 / fig.dpi  # annotations are offset in points, so the SVG (saved at 72 dpi) keeps them in place
    blocked = np.array([b.extents for b in obstacles]).reshape(-1, 4)
    labels, leaders = np.empty((0, 4)), np.empty((0, 4))
    made: list[Annotation] = []
    for x, y, text, colour in points:
        px, py = ax.transData.transform((x, y))
        probe = ax.text(0, 0, text, fontsize=fontsize)
        size = probe.get_window_extent(renderer)
        probe.remove()
        w, h = size.width + 2 * PAD, size.height + 2 * PAD
        found = _spot(px, py, (w, h), gap_px, area, blocked, labels, leaders)
        if found is None and strict:
            for a in made:
                a.remove()
            return None
        box, leader = found or (np.array([px + gap_px, py - h / 2, px + gap_px + w, py + h / 2]), None)
        arrow = None
        if leader is not None:  # from the label's nearest edge (relpos: a fraction of the text's box) to the point
            relpos = np.clip((leader[2:] - box[:2] - PAD) / (w - 2 * PAD, h - 2 * PAD), 0, 1)
            arrow = {"arrowstyle": "-", "color": colour, "lw": 0.6, "relpos": tuple(relpos), "shrinkA": 1,
                     "shrinkB": gap_px * to_pt * 0.6}
            leaders = np.vstack([leaders, leader])
        made.append(ax.annotate(text, (x, y), xytext=((box[0] + PAD - px) * to_pt, (box[1] + PAD - py) * to_pt),
                                textcoords="offset points", ha="left", va="bottom", fontsize=fontsize, color=colour,
                                annotation_clip=False, arrowprops=arrow))
        labels = np.vstack([labels, box])
    return made
