"""The headline of an experiment: one line per arm with its quality, its difference to `plain` and whether that
difference is larger than the seed spread, and its cost as multiples of `plain`'s.

    summary = summarise(rows)                  # leankd.report.table
    head = headline(summary)
    head["lines"][0]["delta"], head["lines"][0]["mark"]      # e.g. 1.9, "significant"
    print(headline_markdown(head))

Quality is the task's first metric (accuracy for CIFAR-10 and SST-2), in points when it is a fraction.
Significance: the spread of a difference of two single runs is sqrt(std_a^2 + std_b^2) (sample stds over seeds);
a difference no larger than it is marked "n.s.", and with one seed on either side there is no spread ("n/a").
Only each arm's current config is in the headline; older configs stay in the full ledger.

A compute-matched plain arm (rows with `extra.budget = {"match": "kd", "by": "flops" | "seconds", "target",
"epochs"}`) is labelled "plain_matched (plain at kd's FLOPs)", and its target arm is compared with it: is
distillation better than training the student longer for the same compute?
"""
from __future__ import annotations

import math

from leankd.report.table import _arm_label, _is_percent, _num, _ratio, _ratio_cell

SIGNIFICANT, NOT_SIGNIFICANT, ONE_SEED = "significant", "n.s.", "n/a (1 seed)"


def significance(a: dict | None, b: dict | None) -> tuple[float | None, float | None, str | None]:
    """(delta = mean_a - mean_b, spread, mark) for two `{"mean", "std", "n"}` stats; mark is "significant" when
    |delta| > spread = sqrt(std_a^2 + std_b^2), "n.s." when not, "n/a (1 seed)" when either has one seed."""
    if a is None or b is None:
        return None, None, None
    delta = a["mean"] - b["mean"]
    if a["n"] < 2 or b["n"] < 2:
        return delta, None, ONE_SEED
    spread = math.sqrt(a["std"] ** 2 + b["std"] ** 2)
    return delta, spread, SIGNIFICANT if abs(delta) > spread else NOT_SIGNIFICANT


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated (cost, quality) points, cheapest first: no other point costs no more and
    scores no less, with one of the two strictly better. Equal points are all kept."""
    front = [i for i, (c, q) in enumerate(points)
             if not any(c2 <= c and q2 >= q and (c2 < c or q2 > q) for c2, q2 in points)]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def quality_metric(summary: list[dict]) -> str | None:
    """The task's first metric: the first one recorded by the first group that has any."""
    return next((next(iter(s["metrics"])) for s in summary if s["metrics"]), None)


def _scaled(stat: dict | None, scale: float) -> dict | None:
    return None if stat is None else {**stat, "mean": stat["mean"] * scale, "std": stat["std"] * scale}


def _line(s: dict, plain: dict | None, metric: str | None, scale: float) -> dict:
    quality = _scaled(s["metrics"].get(metric), scale) if metric else None
    ref = _scaled(plain["metrics"].get(metric), scale) if plain is not None and metric else None
    delta, spread, mark = significance(quality, ref) if plain is not None and s is not plain else (None,) * 3
    return {"arm": s["arm"], "label": _arm_label(s), "role": s["role"], "n": s["n"], "budget": s.get("budget"),
            "budget_epochs": s.get("budget_epochs") or [],
            "quality": quality, "delta": delta, "spread": spread, "mark": mark,
            "total_s": s["total_s"], "total_flops": s["total_flops"],
            "total_s_x": _ratio(s["total_s"], plain["total_s"]) if plain else None,
            "flops_x": _ratio(s["total_flops"], plain["total_flops"]) if plain else None,
            "peak_mem_mb": s["peak_mem_mb"], "peak_mem_source": s.get("peak_mem_source"),
            "infer_ms_p50": s["infer_ms_p50"], "infer_ms_p90": s["infer_ms_p90"],
            "infer_ms_p50_b1": s["infer_ms_p50_b1"], "infer_ms_p90_b1": s["infer_ms_p90_b1"],
            "infer_batch_size": s["infer_batch_size"], "energy_j": s["energy_j"],
            "energy_source": s.get("energy_source"), "teacher_layers": s.get("teacher_layers")}


def _comparison(line: dict, target: dict, unit: str) -> dict:
    """The matched target arm against the compute-matched plain arm `line`."""
    budget = line["budget"]
    delta, spread, mark = significance(target["quality"], line["quality"])
    by = "FLOPs" if budget.get("by") == "flops" else budget.get("by")
    text = f"{target['arm']} vs plain at {target['arm']}'s {by}: "
    text += "unavailable" if delta is None else f"{delta:+.2f} {unit} " + (
        f"({mark})" if mark != ONE_SEED else "(n/a: 1 seed)")
    epochs = line["budget_epochs"] or [budget["epochs"]] if budget.get("epochs") is not None else []
    if epochs:  # seconds vary run to run, so a seconds-matched arm's length differs per seed
        span = f"{min(epochs):.3g}" if max(epochs) - min(epochs) < 5e-3 else \
            f"{min(epochs):.3g}-{max(epochs):.3g} (per seed)"
        text += f"; {line['arm']} trained {span} epochs to match"
    return {"target": target["arm"], "matched": line["arm"], "by": budget.get("by"), "delta": delta,
            "spread": spread, "mark": mark, "text": text}


def headline(summary: list[dict]) -> dict:
    """The headline of one experiment's `summarise` output (current configs only; see the module docstring)."""
    metric = quality_metric(summary)
    percent = metric is not None and _is_percent(metric)
    scale, unit = (100.0, "points") if percent else (1.0, metric or "")
    current = [s for s in summary if not s["older"]]
    plain = next((s for s in current if s["arm"] == "plain"), None)
    lines = [_line(s, plain, metric, scale) for s in current]
    by_arm = {ln["arm"]: ln for ln in lines}
    comparisons = [_comparison(ln, by_arm[ln["budget"]["match"]], unit) for ln in lines
                   if ln["budget"] and ln["budget"].get("match") in by_arm]
    return {"metric": metric, "percent": percent, "unit": unit, "lines": lines, "comparisons": comparisons,
            "has_plain": plain is not None}


# ---- formatting (shared by the Markdown and the HTML page) -------------------------------------

def quality_cell(stat: dict | None) -> str:
    if stat is None:
        return "unavailable"
    return f"{stat['mean']:.2f}" if stat["n"] == 1 else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def delta_cell(line: dict) -> str:
    return "—" if line["delta"] is None else f"{line['delta']:+.2f}"


def mark_cell(line: dict) -> str:
    if line["mark"] is None:
        return "—"
    return line["mark"] if line["spread"] is None else f"{line['mark']} (spread {line['spread']:.2f})"


def mean_cell(stat: dict | None) -> str:
    return "unavailable" if stat is None else _num(stat["mean"])


def columns(head: dict) -> list[tuple[str, object]]:
    """(header, line -> cell text) of the headline table."""
    sizes = {ln["infer_batch_size"] for ln in head["lines"] if not isinstance(ln["infer_batch_size"], list)}
    bs = f"@bs={next(iter(sizes))}" if len(sizes) == 1 else "@train bs"
    quality = f"{head['metric']} (%)" if head["percent"] else (head["metric"] or "quality")
    delta = "Δ vs plain" + (" (points)" if head["percent"] else "")
    return [("arm", lambda ln: ln["label"]), ("n", lambda ln: str(ln["n"])), (quality, lambda ln: quality_cell(
        ln["quality"])), (delta, delta_cell), ("vs seed spread", mark_cell),
            ("total_s ×plain", lambda ln: _ratio_cell(ln["total_s_x"])),
            ("FLOPs ×plain", lambda ln: _ratio_cell(ln["flops_x"])),
            ("peak mem (MiB)", lambda ln: mean_cell(ln["peak_mem_mb"])),
            (f"infer ms p50 {bs}", lambda ln: mean_cell(ln["infer_ms_p50"]))]


LEGEND = ("Quality: mean ± sample std over seeds. Δ: difference of means; n.s. when |Δ| ≤ sqrt(std_a² + std_b²) "
          "(the spread of a single-run difference), n/a with one seed on either side. ×plain: ratio of means "
          "(total_s, total FLOPs) to plain's; the teacher's is its own training. Current configs only.")


def headline_markdown(head: dict) -> str:
    """The headline table and the compute-matched comparisons, as Markdown."""
    cols = columns(head)
    lines = ["**Headline**", "", "| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(ln).replace("|", "\\|") for _, cell in cols) + " |" for ln in head["lines"]]
    lines += [""] + [f"- {c['text']}" for c in head["comparisons"]]
    lines += ([""] if head["comparisons"] else []) + [LEGEND, "", "**Full ledger**", ""]
    return "\n".join(lines)
