"""What the teacher costs a distilled arm: online teacher vs a teacher-output cache, side by side in one run.

    python benchmarks/teacher_cost.py --data-dir ../shared/data            # both demo pairs, 3 seeds
    python benchmarks/teacher_cost.py --data-dir ../shared/data --quick    # small slices, 1 epoch, 2 seeds

For each pair (CIFAR-10 ResNet-20 -> ResNet-8, SST-2 MiniLM-L6 -> 3 layers; the findings configs) it runs, with
one stored teacher at its default precision (`teacher.precision: same`, the students' precision as `precision:
auto` resolves it on this machine): every arm of the findings experiment (`cache: auto`, so the cache is
shared by all its distilled jobs whose targets it holds; an arm whose targets are not cacheable runs online and
its row says why) plus `kd_online`, the `kd` arm with the teacher online; then, each as a separate experiment,
`kd_cached_fp32`, `kd` reading a cache built by the fp32 teacher, and for SST-2 `kd_cached_int8` (the teacher's
Linear layers dynamically quantised to int8). It prints per arm the metric (mean +- std over
seeds), train_s, teacher_s, cache_share_s, how many jobs share the cache, total_s and total FLOPs as ratios to
`plain` (amortised: the build shared by its users; standalone: the whole build on one job), the cache's size
and build seconds. Ratios come from one run on one machine; absolute seconds are this machine's only.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from leankd.config import load_config
from leankd.experiment import run_experiment
from leankd.log import setup_logging
from leankd.report.table import summarise
from leankd.results.store import ResultsStore

REPO = Path(__file__).resolve().parents[1]
PAIRS = {"cifar10": "configs/findings/cifar10-resnet20-resnet8.yaml", "sst2": "configs/findings/sst2-minilm6-3l.yaml"}
VARIANTS = {"cifar10": ["fp32"], "sst2": ["fp32", "int8"]}  # int8: dynamic quantisation of Linear layers (text only)
# the scale of the published figures (the findings configs themselves run smaller slices: see docs/findings/)
FULL = {"cifar10": ["data.train_limit=null"], "sst2": ["data.train_limit=20000"]}
QUICK = {"cifar10": ["data.train_limit=2000", "data.test_limit=1000", "teacher.train.epochs=2", "train.epochs=2"],
         "sst2": ["data.train_limit=2000", "data.test_limit=300"]}


def run_pair(pair: str, args) -> list[dict]:
    path = REPO / PAIRS[pair]
    seeds = f"seeds=[{','.join(str(s) for s in range(args.seeds))}]"
    over = [f"name=bench-{pair}", seeds, "cache.mode=auto",
            *(QUICK[pair] if args.quick else FULL[pair])]
    cfg = load_config(path, over)
    # the findings arms that the teacher's cost concerns: not the budget-matched or fp32-student baselines
    cfg.arms = {a: arm for a, arm in cfg.arms.items() if arm.match is None and arm.precision is None}
    cfg.arms["kd_online"] = cfg.arms["kd"].model_copy(update={"cache": "off"})
    run_experiment(cfg, args.data_dir, args.out)  # a rerun resumes
    for prec in VARIANTS[pair]:
        variant = load_config(path, over + [f"name=bench-{pair}-{prec}-teacher", f"teacher.precision={prec}"])
        variant.arms = {f"kd_cached_{prec}": variant.arms["kd"].model_copy(update={"cache": "on"})}
        run_experiment(variant, args.data_dir, args.out)
    store = ResultsStore(Path(args.out) / "results.db")
    return [r for exp in [f"bench-{pair}", *(f"bench-{pair}-{p}-teacher" for p in VARIANTS[pair])]
            for r in store.rows(exp)]


def table(pair: str, rows: list[dict]) -> str:
    """The report's summary (leankd.report.table.summarise) of both experiments' rows, as the benchmark's table."""
    summary = [s for s in summarise([{**r, "experiment": pair} for r in rows]) if s["role"] == "student"]
    metric = next(iter(summary[0]["metrics"]))
    lines = [f"## {pair}: {metric}, ratios to plain (mean over {summary[0]['n']} seed(s))", "",
             f"| arm | teacher | {metric} (%) | train_s | teacher_s | cache_share_s | jobs sharing the cache | "
             "total_s x | standalone x | flops x | standalone flops x |", "|---" * 11 + "|"]
    users = {r["arm"]: (r["extra"].get("cache") or {}).get("users", "-") for r in rows}
    for s in summary:
        m = s["metrics"][metric]
        spread = f" ± {100 * m['std']:.2f}" if m["n"] > 1 else ""
        lines.append(f"| {s['arm']} | {s['teacher']} | {100 * m['mean']:.2f}{spread} | {s['train_s']['mean']:.1f} | "
                     f"{s['teacher_s']['mean']:.1f} | {s['cache_share_s']['mean']:.1f} | {users[s['arm']]} | "
                     f"{s['total_s_vs_plain']:.2f} | {s['standalone_s_vs_plain']:.2f} | "
                     f"{s['train_flops_vs_plain']:.2f} | {s['standalone_flops_vs_plain']:.2f} |")
    lines.append("")
    for exp in dict.fromkeys(r["experiment"] for r in rows):
        made = [r["extra"]["cache"] for r in rows if r["experiment"] == exp
                and (r["extra"].get("cache") or {}).get("made_for") == exp]
        if made:
            c = made[0]
            lines.append(f"cache of {exp}: {c['bytes'] / 2**20:.2f} MiB on disk, built in {c['build_s']:.1f} s "
                         f"({c['views']} view(s), fields {', '.join(c.get('fields', ['logits']))}), shared by "
                         f"{c['users']} job(s)")
        prec_of = {r["experiment"]: r["extra"].get("teacher_precision") for r in rows}
        fid = next((r["extra"]["teacher_fidelity"] for r in rows if r["experiment"] == exp
                    and r["extra"].get("teacher_fidelity")), None)
        if fid:
            lines.append(f"{exp}: {prec_of.get(exp, 'reduced-precision')} teacher vs its fp32 self on the eval split: "
                         f"top-1 agreement "
                         f"{100 * fid['agreement']:.2f}%, mean KL {fid['mean_kl']:.2e}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="data directory (default: $LEANKD_DATA_DIR)")
    p.add_argument("--out", default="runs/bench-teacher-cost", help="results folder (default: runs/bench-teacher-cost)")
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS), help="which pairs (default: both)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: 3, --quick: 2)")
    p.add_argument("--quick", action="store_true", help="small slices and short schedules (a few minutes)")
    args = p.parse_args()
    args.seeds = args.seeds or (2 if args.quick else 3)
    setup_logging(logging.WARNING)
    for pair in args.pairs:
        print(table(pair, run_pair(pair, args)), flush=True)
        print()


if __name__ == "__main__":
    main()
