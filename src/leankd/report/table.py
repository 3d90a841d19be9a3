"""Comparison tables (teacher / plain / distilled arms) from run rows, as Markdown and JSON.

Usage::

    from leankd.results.store import ResultsStore
    from leankd.report.table import summarise, to_markdown, write_report
    rows = ResultsStore("runs/results.db").rows()
    text = write_report(rows, "runs/report")  # writes runs/report/report.md, .json, .html; returns the headlines
    summary = summarise([r for r in rows if r["experiment"] == "cifar-demo"])
    print(to_markdown(summary, "cifar-demo"))

`summarise` gives one dict per (arm, config_hash) group: rows made by different settings are never
averaged together. Arms come teacher first, then `plain`, then the other arms in the order first seen;
within an arm the newest group (highest row id) comes first and is the arm's current row, and older
groups (an edited config rerun under the same experiment name) follow it with ``"older": True``; so do student
rows written under another identity rule (`extra.identity_version`, an older leankd): never a current row.
Every metric and every numeric ledger figure becomes ``{"mean", "std", "n"}`` over the group's seeds
(sample std, 0.0 for one value; None values skipped; the whole figure is None when no seed has a
value). A seed that appears twice in a group (a re-run) counts once, with its latest row. ``per_seed`` keeps each
metric's value per seed, ``{metric: {seed: value}}``, for paired comparisons between arms.
Ratios ``total_s_vs_plain`` / ``train_flops_vs_plain`` are ratios of means to the current plain group,
given for current student groups only (None for the teacher and for older groups).
"""
from __future__ import annotations

import json
import logging
import math
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leankd.results.store import IDENTITY_VERSION

log = logging.getLogger(__name__)

LEDGER_FIGURES = ("train_s", "teacher_s", "cache_share_s", "ranking_share_s", "total_s", "train_flops", "total_flops",
                  "infer_ms_p50", "infer_ms_p90", "infer_ms_p50_b1", "infer_ms_p90_b1",
                  "peak_mem_mb", "energy_j", "params", "size_mb")
# Metrics stored as fractions that read better as percent (GLUE reports MCC/correlations x100 too).
_PERCENT_HINTS = ("acc", "f1", "agreement", "precision", "recall", "matthews", "mcc",
                  "pearson", "spearman")
_NA = "—"  # not applicable (teacher and older-config ratios, a metric an arm does not have)
_LEGEND = ("n = seeds; cells are mean ± sample std over seeds (the mean alone for n = 1). One row per arm "
           "and config: an arm's first row is its newest config; `(older config <hash>)` rows are earlier "
           "configs rerun under the same experiment name, never averaged with it. Times in s: train_s is "
           "the training loop only (evaluation and warm-up excluded); teacher_s is a breakdown (part of "
           "train_s for an online teacher, the cache share for a cached one); ranking_share_s: the layer "
           "ranking's seconds charged to each arm that uses it, as a stated share; total_s = train_s + "
           "cache_share_s + ranking_share_s; total_flops = train_flops + the cache build's FLOP share. "
           "teacher: where a distilled arm's teacher outputs came from (online forwards, or a cache built once "
           "and shared by the experiment's jobs that use it). Memory in MiB, energy in J with its source. "
           "×plain: ratio of means to the plain arm's current config, for current configs only (flops: "
           "total_flops); standalone ×plain charges a cached arm the whole cache build, as if it alone used it. "
           "teacher layers: the teacher layers (candidate indices, `leankd layers`) whose features the arm "
           "distils.")


def _standalone(r: dict, fig: str) -> float | None:
    """A cached row's cost with the whole cache build on it (its share replaced by the full build)."""
    cache = (r.get("extra") or {}).get("cache")
    if fig == "s":
        total, share, build = r.get("total_s"), r.get("cache_share_s") or 0.0, (cache or {}).get("build_s")
    else:
        total, share, build = _total_flops(r), r.get("cache_share_flops") or 0, (cache or {}).get("build_flops")
    return total if total is None or not cache or build is None else total - share + build


def _total_flops(r: dict) -> float | None:
    return r.get("total_flops") if r.get("total_flops") is not None else r.get("train_flops")  # older rows


def _stats(values: list[Any]) -> dict[str, float | int] | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals)}


def _distinct(values: list[Any]) -> list[Any]:
    return list(dict.fromkeys(v for v in values if v is not None))


def _joined(values: list[Any]) -> str | None:
    return ", ".join(str(v) for v in _distinct(values)) or None


def _layers(layers: list | None) -> str | None:
    """Distilled teacher layers as the report shows them, e.g. "2,5,8"."""
    return ",".join(str(x) for x in layers) if layers else None


def _ratio(arm: dict | None, plain: dict | None) -> float | None:
    if arm is None or plain is None or not plain["mean"]:
        return None
    return arm["mean"] / plain["mean"]


def _groups(rows: list[dict]) -> list[tuple[str, Any, list[dict]]]:
    """(arm, config_hash, latest row of each seed) per group, in report order (see the module docstring)."""
    # Rows in insertion order: by id where they have one (store rows), else by list position.
    ordered = [r for _, r in sorted(enumerate(rows), key=lambda p: (
        p[1]["id"] if p[1].get("id") is not None else -1, p[0]))]
    latest: dict[tuple[str, Any], dict[Any, dict]] = {}
    newest: dict[tuple[str, Any], int] = {}
    for pos, r in enumerate(ordered):
        key = ("teacher" if r.get("role") == "teacher" else r["arm"], r.get("config_hash"))
        latest.setdefault(key, {})[r.get("seed")] = r  # a later row of the same seed replaces it
        newest[key] = pos
    arms = list(dict.fromkeys(arm for arm, _ in latest))
    arms = [a for a in ("teacher", "plain") if a in arms] + [a for a in arms if a not in ("teacher", "plain")]
    out = []
    for arm in arms:
        keys = sorted((k for k in latest if k[0] == arm), key=newest.__getitem__, reverse=True)
        out += [(arm, config_hash, list(latest[(arm, config_hash)].values())) for _, config_hash in keys]
    return out


def _summarise_group(arm: str, config_hash: Any, runs: list[dict], older: bool) -> dict:
    metric_names = _distinct([k for r in runs for k in (r.get("metrics") or {})])
    s: dict[str, Any] = {
        "experiment": runs[0]["experiment"], "arm": arm,
        "role": "teacher" if arm == "teacher" else "student",
        "config_hash": config_hash, "older": older,
        "latest_id": max((r["id"] for r in runs if r.get("id") is not None), default=None),
        "n": len(runs), "seeds": [r.get("seed") for r in runs],
        "model": _joined([r.get("model") for r in runs]),
        "task": _joined([r.get("task") for r in runs]),
        "split": _joined([r.get("split") for r in runs]),
        "teacher_layers": _joined([_layers((r.get("extra") or {}).get("teacher_layers")) for r in runs]),
        # a compute-matched arm: {"match": arm, "by": "flops" | "seconds", "target", "epochs"} (None otherwise)
        "budget": next((b for r in reversed(runs) if (b := (r.get("extra") or {}).get("budget"))), None),
        "budget_epochs": [b["epochs"] for r in runs if (b := (r.get("extra") or {}).get("budget"))],
        "metrics": {m: _stats([(r.get("metrics") or {}).get(m) for r in runs]) for m in metric_names},
        # each seed's value (its latest row), for paired comparisons across arms (leankd.report.headline)
        "per_seed": {m: {r.get("seed"): float(v) for r in runs if (v := (r.get("metrics") or {}).get(m)) is not None}
                     for m in metric_names},
    }
    for fig in LEDGER_FIGURES:
        s[fig] = _stats([r.get(fig) for r in runs])
    s["total_flops"] = _stats([_total_flops(r) for r in runs])
    s["standalone_s"] = _stats([_standalone(r, "s") for r in runs])
    s["standalone_flops"] = _stats([_standalone(r, "flops") for r in runs])
    s["teacher"] = _joined([(r.get("extra") or {}).get("teacher_source", "").split(":")[0] or None for r in runs])
    s["compile_s"] = _stats([((r.get("extra") or {}).get("compile") or {}).get("compile_s") for r in runs])
    sizes = _distinct([r.get("infer_batch_size") for r in runs])
    s["infer_batch_size"] = sizes[0] if len(sizes) == 1 else (sizes or None)
    s["energy_source"] = _joined([r.get("energy_source") for r in runs])
    s["peak_mem_source"] = _joined([r.get("peak_mem_source") for r in runs])
    return s


def _older_identity(r: dict) -> bool:
    """A row a leankd job wrote (it records its arm_config) under an older identity rule: it cannot be proven equal
    to a row of today's config, so it is never the current one."""
    extra = r.get("extra") or {}
    return "arm_config" in extra and extra.get("identity_version") != IDENTITY_VERSION


def summarise(rows: list[dict]) -> list[dict]:
    """One summary dict per (arm, config_hash) for the rows of one experiment (see the module docstring)."""
    if len({r["experiment"] for r in rows}) > 1:
        raise ValueError("summarise() takes the rows of one experiment; group them first "
                         "(write_report does this)")
    out, seen = [], set()
    for arm, config_hash, runs in _groups(rows):
        stale = arm != "teacher" and any(_older_identity(r) for r in runs)
        out.append(_summarise_group(arm, config_hash, runs, older=arm in seen or stale))
        if not stale:
            seen.add(arm)

    plain = next((s for s in out if s["arm"] == "plain" and not s["older"]), None)
    for s in out:
        current_student = s["role"] == "student" and not s["older"] and plain is not None
        for name, fig, ref in (("total_s", "total_s", "total_s"), ("train_flops", "total_flops", "total_flops"),
                               ("standalone_s", "standalone_s", "total_s"),
                               ("standalone_flops", "standalone_flops", "total_flops")):
            s[f"{name}_vs_plain"] = _ratio(s[fig], plain[ref]) if current_student else None
    return out


# ---- formatting -----------------------------------------------------------------------------

def _num(x: float, ref: float | None = None) -> str:
    """About 3 significant digits of `ref` (the mean), so a std prints to the mean's decimals."""
    ax = abs(x if ref is None else ref)
    if not math.isfinite(x) or not math.isfinite(ax):
        return str(x)
    decimals = 2 - math.floor(math.log10(ax)) if ax else 2
    return f"{x:.{max(decimals, 0)}f}" if decimals <= 6 else f"{x:.3g}"


def _pm(stat: dict | None, fmt: Callable[..., str], drop_zero_std: bool = False) -> str:
    """`mean ± std` for several values, the mean alone for one; "unavailable" when None."""
    if stat is None:
        return "unavailable"
    if stat["n"] == 1 or (drop_zero_std and stat["std"] == 0):
        return fmt(stat["mean"])
    return f"{fmt(stat['mean'])} ± {fmt(stat['std'], stat['mean'])}"


def _flops(stat: dict | None) -> str:
    if stat is None:
        return "unavailable"
    scale, unit = next(((10.0 ** e, u) for e, u in ((18, "E"), (15, "P"), (12, "T"), (9, "G"),
                                                    (6, "M"), (3, "K")) if stat["mean"] >= 10.0 ** e),
                       (1.0, ""))
    return _pm(stat, lambda v, ref=None: f"{v / scale:.2f}") + f" {unit}FLOP"


def _params(stat: dict | None) -> str:
    def fmt(v: float, ref: float | None = None) -> str:
        return f"{v / 1e9:.2f}B" if abs(v) >= 1e9 else f"{v / 1e6:.2f}M"
    return _pm(stat, fmt, drop_zero_std=True)  # same architecture over seeds: no "± 0.00M"


def _energy(s: dict) -> str:
    src = s["energy_source"]
    if s["energy_j"] is None:
        return "unavailable" + (f" ({src})" if src and src != "unavailable" else "")
    return _pm(s["energy_j"], _num) + (f" ({src})" if src else "")


def _is_percent(metric: str) -> bool:
    return any(h in metric.lower() for h in _PERCENT_HINTS)


def _metric_cell(s: dict, name: str) -> str:
    if name not in s["metrics"]:
        return _NA
    fmt = (lambda v, ref=None: f"{100 * v:.2f}") if _is_percent(name) else _num
    return _pm(s["metrics"][name], fmt)


def _arm_label(s: dict) -> str:
    """The arm name; a compute-matched arm says what it matches, e.g. "plain_matched (plain at kd's FLOPs)", and an
    older group names its config, e.g. "kd (older config 1a2b3c)"."""
    label = s["arm"]
    if budget := s.get("budget"):
        by = "FLOPs" if budget.get("by") == "flops" else budget.get("by")
        label += f" (plain at {budget.get('match')}'s {by})"
    if not s.get("older"):
        return label
    return f"{label} (older config {str(s.get('config_hash') or 'unknown')[:6]})"


def _ratio_cell(value: float | None) -> str:
    return _NA if value is None else f"{value:.2f}"


def _where(summary: list[dict]) -> str:
    """e.g. "task: cifar10, split: test"."""
    return ", ".join(f"{k}: {v}" for k in ("task", "split") if (v := _joined([s[k] for s in summary])))


def to_markdown(summary: list[dict], title: str) -> str:
    """A `## title` section with one table row per arm (teacher first), every ledger figure, and a legend."""
    metric_names = _distinct([m for s in summary for m in s["metrics"]])
    sizes = _distinct([b for s in summary for b in (s["infer_batch_size"] if
                       isinstance(s["infer_batch_size"], list) else [s["infer_batch_size"]])])
    one_bs = len(sizes) <= 1  # else each cell names its own batch size
    bs = f"bs={sizes[0]}" if len(sizes) == 1 else "train bs"

    def infer(fig: str) -> Callable[[dict], str]:
        def cell(s: dict) -> str:
            text = _pm(s[fig], _num)
            return text if one_bs or fig.endswith("_b1") else f"{text} (bs={s['infer_batch_size']})"
        return cell

    columns: list[tuple[str, Callable[[dict], str]]] = [("arm", _arm_label),
                                                        ("n", lambda s: str(s["n"]))]
    if any(s.get("teacher_layers") for s in summary):  # selective layer distillation: which layers
        columns.append(("teacher layers", lambda s: s.get("teacher_layers") or _NA))
    columns += [(f"{m} (%)" if _is_percent(m) else m, lambda s, m=m: _metric_cell(s, m))
                for m in metric_names]
    cached = any(s.get("teacher") and "cache" in s["teacher"] for s in summary)
    if cached:
        columns.append(("teacher", lambda s: s.get("teacher") or _NA))
    columns += [(f, lambda s, f=f: _pm(s[f], _num))
                for f in ("train_s", "teacher_s", "cache_share_s", "ranking_share_s", "total_s")]
    if any(s.get("compile_s") for s in summary):  # speed.compile: its seconds, reported apart from total_s
        columns.append(("compile_s (not in total_s)", lambda s: _pm(s["compile_s"], _num) if s["compile_s"] else "-"))
    columns += [("train_flops", lambda s: _flops(s["train_flops"]))]
    if cached:
        columns.append(("total_flops", lambda s: _flops(s["total_flops"])))
    columns += [
                (f"infer ms p50 @{bs}", infer("infer_ms_p50")),
                (f"infer ms p90 @{bs}", infer("infer_ms_p90")),
                ("infer ms p50 @bs=1", infer("infer_ms_p50_b1")),
                ("infer ms p90 @bs=1", infer("infer_ms_p90_b1")),
                ("peak_mem_mb", lambda s: _pm(s["peak_mem_mb"], _num)),
                ("energy_j", _energy),
                ("params", lambda s: _params(s["params"])),
                ("size_mb", lambda s: _pm(s["size_mb"], _num, drop_zero_std=True)),
                ("total_s ×plain", lambda s: _ratio_cell(s["total_s_vs_plain"]))]
    if cached:
        columns.append(("standalone ×plain", lambda s: _ratio_cell(s["standalone_s_vs_plain"])))
    columns.append(("flops ×plain", lambda s: _ratio_cell(s["train_flops_vs_plain"])))

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [f"## {title}", ""]
    if where := _where(summary):
        lines += [where, ""]
    lines.append(line([h for h, _ in columns]))
    lines.append("|" + "---|" * len(columns))
    lines += [line([cell(s) for _, cell in columns]) for s in summary]
    lines += ["", _LEGEND, ""]
    return "\n".join(lines)


def to_json(summary: list[dict]) -> str:
    """The summary rows, machine readable."""
    return json.dumps(summary, indent=2)


def failures_markdown(failures: list[dict]) -> list[str]:
    """Failed jobs without a row (from `ResultsStore.failures`), one line each: what a rerun will try again."""
    if not failures:
        return []
    return ["## Failed jobs (no row; rerunning the same command tries them again)", ""] + \
        [f"- {f['experiment']}: {f['arm']} seed {f['seed']}: {f['error']}" for f in failures] + [""]


def _anchor(heading: str) -> str:
    """The fragment GitHub (and most Markdown viewers) give a heading: lower case, punctuation dropped, spaces to
    hyphens; e.g. "Full ledger: cifar-demo" -> "full-ledger-cifar-demo"."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _headline_section(name: str, summary: list[dict], headline: str) -> str:
    """`## name`, where it ran, the headline (Markdown) and a link to the experiment's full ledger."""
    where = _where(summary)
    link = f"[Full ledger: {name}](#{_anchor(f'Full ledger: {name}')})"
    return "\n".join([f"## {name}", ""] + ([where, ""] if where else []) +
                     [headline, f"Every figure of every arm and config: {link}", ""])


def write_report(store_rows: list[dict], out_dir: str | Path, experiment: str | None = None,
                 failures: list[dict] = ()) -> str:
    """Write `out_dir/report.md`, `report.json` and `report.html` (leankd.report.page) and return what to print.

    report.md opens with each experiment's headline (one line per arm, at most 10 columns: leankd.report.headline)
    and a link to its full ledger, then any failed jobs, then under `# Full ledger` each experiment's full table
    (every figure, every arm and config). The text returned is report.md up to the full ledgers, with one line
    saying where they are: a terminal shows the headline, not a table of every figure."""
    from leankd.report.headline import headline, headline_markdown  # both build on this module
    from leankd.report.page import write_page

    by_exp: dict[str, list[dict]] = {}
    for r in store_rows:
        by_exp.setdefault(r["experiment"], []).append(r)
    if experiment is not None:
        if experiment not in by_exp:
            raise ValueError(f"no rows for experiment {experiment!r}; experiments with rows: "
                             f"{list(by_exp)}")
        by_exp = {experiment: by_exp[experiment]}
    summaries = {name: summarise(rows) for name, rows in by_exp.items()}
    heads = [_headline_section(name, s, headline_markdown(headline(s))) for name, s in summaries.items()]
    top = "\n".join(["# leankd report", ""] + heads + failures_markdown(list(failures)))
    ledgers = [to_markdown(s, f"Full ledger: {name}") for name, s in summaries.items()]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join([top, "# Full ledger", ""] + ledgers), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(summaries, indent=2), encoding="utf-8")
    write_page(out / "report.html", summaries, by_exp, list(failures), out)
    log.info("wrote %s and report.html (%d experiment(s))", out / "report.md", len(summaries))
    return f"{top}\nFull ledger (every figure): {out / 'report.md'}, section Full ledger; page: {out / 'report.html'}\n"
