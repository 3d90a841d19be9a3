"""The headline of an experiment: one line per arm with its quality, its paired difference to `plain` (with a 95%
confidence interval and a paired t-test over the seeds both arms ran), and its cost as multiples of `plain`'s.

    summary = summarise(rows)                  # leankd.report.table
    head = headline(summary)
    head["lines"][2]["delta"], head["lines"][2]["mark"]      # e.g. 1.9, "better (p=0.012, n=3)"
    print(headline_markdown(head))

Quality is the task's first metric (accuracy for CIFAR-10 and SST-2), in points when it is a fraction; higher is
better for every metric leankd records first. Seeds are shared between arms (the same seed gives the same
initialisation and data order), so an arm is compared with `plain` seed by seed: delta is the mean of the per-seed
differences over the seeds both arms have, with its 95% CI (t distribution, n - 1 degrees of freedom) and the p of
`scipy.stats.ttest_rel`. A difference is called "better" or "worse" only when p < 0.05 with at least 3 paired
seeds; otherwise "n.s." (or "n/a" with fewer than 3 seeds). The teacher is not tested (one seed, its own model).
Only each arm's current config is in the headline; older configs stay in the full ledger.

A compute-matched plain arm (rows with `extra.budget = {"match": "kd", "by": "flops" | "seconds", "target",
"epochs"}`) is labelled "plain_matched (plain at kd's FLOPs)", and its target arm is compared with it, paired the
same way: is distillation better than training the student longer for the same compute?
"""
from __future__ import annotations

import math
import statistics

from scipy import stats

from leankd.report.table import _arm_label, _is_percent, _num, _ratio, _ratio_cell

ALPHA, MIN_SEEDS = 0.05, 3
BETTER, WORSE, NOT_SIGNIFICANT, NOT_APPLICABLE = "better", "worse", "n.s.", "n/a"
TEST_COLUMN = "p (paired, n)"


def p_text(p: float) -> str:
    """p to 2-3 decimals ("p=0.012", "p=0.19", "p<0.001"); a p under ALPHA never prints as "p=0.050"."""
    if p < 0.001:
        return "p<0.001"
    text = f"{p:.3f}" if p < 0.1 else f"{p:.2f}"
    return f"p={p:.4f}" if p < ALPHA and float(text) >= ALPHA else f"p={text}"


def _no_test(n: int, delta: float | None, mark: str) -> dict:
    return {"delta": delta, "ci_low": None, "ci_high": None, "p": None, "n": n, "direction": NOT_APPLICABLE,
            "mark": mark}


def significance(a: dict | None, b: dict | None) -> dict | None:
    """Paired comparison of arm `a` with arm `b`, each `{seed: value}`, over the seeds both have (None seeds and
    non-finite values left out): {"delta": mean of a - b, "ci_low", "ci_high" (95% CI of that mean), "p"
    (scipy.stats.ttest_rel), "n" (paired seeds), "direction": better | worse | n.s. | n/a, "mark": the direction
    with its p and n or its reason, e.g. "better (p=0.012, n=3)", "n.s. (p=0.19, n=5)", "n/a (n=2: needs 3
    seeds)"}.
    None when either arm has no values. Never nan."""
    if not a or not b:
        return None
    seeds = [s for s in a if s is not None and s in b and math.isfinite(a[s]) and math.isfinite(b[s])]
    n = len(seeds)
    if n == 0:
        return _no_test(0, None, "n/a (no seed in both arms)")
    diffs = [a[s] - b[s] for s in seeds]
    delta = statistics.fmean(diffs)
    if n == 1:
        return _no_test(1, delta, "n/a (1 seed)")
    identical = all(abs(d) < 1e-9 for d in diffs)  # 1e-9 points: float noise, not a difference
    delta, sd = (0.0, 0.0) if identical else (delta, statistics.stdev(diffs))
    if sd <= 1e-12 * abs(delta):
        # ttest_rel is nan here (0 / 0). Every seed gives the same difference: none at all (e.g. a cached teacher's
        # kd against an online teacher's kd) is "identical", p = 1; a constant nonzero one is as sure as a
        # difference gets, p = 0.
        sd, p = 0.0, 1.0 if identical else 0.0
    else:
        p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    out = {"delta": delta, "ci_low": delta - half, "ci_high": delta + half, "p": p, "n": n}
    if n < MIN_SEEDS:
        return {**out, "direction": NOT_APPLICABLE, "mark": f"n/a (n={n}: needs {MIN_SEEDS} seeds)"}
    if identical:
        return {**out, "direction": NOT_SIGNIFICANT, "mark": f"n.s. (identical, n={n})"}
    direction = NOT_SIGNIFICANT if p >= ALPHA else BETTER if delta > 0 else WORSE
    return {**out, "direction": direction, "mark": f"{direction} ({p_text(p)}, n={n})"}


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


def _per_seed(s: dict, metric: str | None, scale: float) -> dict | None:
    values = (s.get("per_seed") or {}).get(metric) if metric else None
    return None if values is None else {seed: v * scale for seed, v in values.items()}


_UNTESTED = {"delta": None, "ci_low": None, "ci_high": None, "p": None, "n": None, "direction": None, "mark": None}


def _test(s: dict, plain: dict | None, metric: str | None, scale: float, quality: dict | None) -> dict:
    """The line's comparison with plain: none for plain itself; the teacher's difference of means, untested."""
    if plain is None or s is plain:
        return _UNTESTED
    if s["role"] == "teacher":
        ref = _scaled(plain["metrics"].get(metric), scale) if metric else None
        delta = quality["mean"] - ref["mean"] if quality and ref else None
        return {**_UNTESTED, "delta": delta, "direction": NOT_APPLICABLE, "mark": "n/a (teacher)"}
    return significance(_per_seed(s, metric, scale), _per_seed(plain, metric, scale)) or _UNTESTED


def _line(s: dict, plain: dict | None, metric: str | None, scale: float) -> dict:
    quality = _scaled(s["metrics"].get(metric), scale) if metric else None
    test = _test(s, plain, metric, scale, quality)
    return {"arm": s["arm"], "label": _arm_label(s), "role": s["role"], "n": s["n"], "budget": s.get("budget"),
            "budget_epochs": s.get("budget_epochs") or [], "per_seed": _per_seed(s, metric, scale),
            "quality": quality, **{k: test[k] for k in ("delta", "ci_low", "ci_high", "p", "direction", "mark")},
            "n_paired": test["n"],
            "total_s": s["total_s"], "total_flops": s["total_flops"],
            "total_s_x": _ratio(s["total_s"], plain["total_s"]) if plain else None,
            "flops_x": _ratio(s["total_flops"], plain["total_flops"]) if plain else None,
            "peak_mem_mb": s["peak_mem_mb"], "peak_mem_source": s.get("peak_mem_source"),
            "infer_ms_p50": s["infer_ms_p50"], "infer_ms_p90": s["infer_ms_p90"],
            "infer_ms_p50_b1": s["infer_ms_p50_b1"], "infer_ms_p90_b1": s["infer_ms_p90_b1"],
            "infer_batch_size": s["infer_batch_size"], "energy_j": s["energy_j"],
            "energy_source": s.get("energy_source"), "teacher_layers": s.get("teacher_layers")}


def comparison_text(test: dict | None, unit: str) -> str:
    """A paired comparison in words, e.g. "+1.17 points, 95% CI [+0.71, +1.63]: better (p=0.012, n=3)"."""
    if test is None or test["delta"] is None:
        return "unavailable" if test is None else test["mark"]  # e.g. "n/a (no seed in both arms)"
    text = f"{test['delta']:+.2f} {unit}".rstrip()
    if test["ci_low"] is not None:
        text += f", 95% CI [{test['ci_low']:+.2f}, {test['ci_high']:+.2f}]"
    return f"{text}: {test['mark']}"


def _comparison(line: dict, target: dict, unit: str) -> dict:
    """The matched target arm against the compute-matched plain arm `line`, paired over their shared seeds."""
    budget = line["budget"]
    test = significance(target["per_seed"], line["per_seed"])
    by = "FLOPs" if budget.get("by") == "flops" else budget.get("by")
    text = f"{target['arm']} vs plain at {target['arm']}'s {by}: " + comparison_text(test, unit)
    epochs = line["budget_epochs"] or [budget["epochs"]] if budget.get("epochs") is not None else []
    if epochs:  # seconds vary run to run, so a seconds-matched arm's length differs per seed
        span = f"{min(epochs):.3g}" if max(epochs) - min(epochs) < 5e-3 else \
            f"{min(epochs):.3g}-{max(epochs):.3g} (per seed)"
        text += f"; {line['arm']} trained {span} epochs to match"
    return {"target": target["arm"], "matched": line["arm"], "by": budget.get("by"),
            **(test or {**_UNTESTED, "n": 0}), "text": text}


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


def ci_cell(line: dict) -> str:
    return "—" if line["ci_low"] is None else f"[{line['ci_low']:+.2f}, {line['ci_high']:+.2f}]"


def mark_cell(line: dict) -> str:
    """The direction with p and the paired seeds, e.g. "better (p=0.012, n=3)", "n/a (n=2: needs 3 seeds)"."""
    return "—" if line["mark"] is None else line["mark"]


def mean_cell(stat: dict | None) -> str:
    return "unavailable" if stat is None else _num(stat["mean"])


def columns(head: dict) -> list[tuple[str, object]]:
    """(header, line -> cell text) of the headline table."""
    sizes = {ln["infer_batch_size"] for ln in head["lines"] if not isinstance(ln["infer_batch_size"], list)}
    bs = f"@bs={next(iter(sizes))}" if len(sizes) == 1 else "@train bs"
    quality = f"{head['metric']} (%)" if head["percent"] else (head["metric"] or "quality")
    delta = "Δ vs plain" + (" (points)" if head["percent"] else "")
    return [("arm", lambda ln: ln["label"]), ("n", lambda ln: str(ln["n"])), (quality, lambda ln: quality_cell(
        ln["quality"])), (delta, delta_cell), ("95% CI", ci_cell), (TEST_COLUMN, mark_cell),
            ("total_s ×plain", lambda ln: _ratio_cell(ln["total_s_x"])),
            ("FLOPs ×plain", lambda ln: _ratio_cell(ln["flops_x"])),
            ("peak mem (MiB)", lambda ln: mean_cell(ln["peak_mem_mb"])),
            (f"infer ms p50 {bs}", lambda ln: mean_cell(ln["infer_ms_p50"]))]


LEGEND = ("Quality: mean ± sample std over seeds. Arms share seeds (same seed: same initialisation and data "
          "order), so each arm is compared with plain seed by seed, over the seeds both ran: Δ is the mean of the "
          "per-seed differences, 95% CI its confidence interval (mean ± t(0.975, n-1)·sd/√n), p the two-sided "
          "paired t-test (scipy.stats.ttest_rel) and n the number of paired seeds. \"better\" / \"worse\" only "
          "when p < 0.05 with n ≥ 3; otherwise n.s. (not significant; \"identical\" when every seed gives the same "
          "value), and n/a with fewer than 3 paired seeds. The teacher is not tested (Δ: difference of means). "
          "×plain: ratio of means (total_s, total FLOPs) to plain's; the teacher's is its own training. Current "
          "configs only.")


def headline_markdown(head: dict) -> str:
    """The headline table and the compute-matched comparisons, as Markdown."""
    cols = columns(head)
    lines = ["**Headline**", "", "| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(ln).replace("|", "\\|") for _, cell in cols) + " |" for ln in head["lines"]]
    lines += [""] + [f"- {c['text']}" for c in head["comparisons"]]
    lines += ([""] if head["comparisons"] else []) + [LEGEND, ""]
    return "\n".join(lines)
