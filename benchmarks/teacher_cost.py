"""What the teacher costs a distilled arm: online teacher vs a teacher-output cache, side by side in one run.

    python benchmarks/teacher_cost.py --data-dir ../shared/data            # both demo pairs, 3 seeds
    python benchmarks/teacher_cost.py --data-dir ../shared/data --quick    # small slices, 1 epoch, 2 seeds

For each pair (CIFAR-10 ResNet-20 -> ResNet-8, SST-2 MiniLM-L6 -> 3 layers; the findings configs) it runs, with
one stored teacher: `plain`, `kd` with the teacher online (fp32), `kd` reading a cache (fp32 teacher, the cache
shared by the experiment's cached jobs), and `kd` reading a cache built by a bf16 teacher. It prints per arm the
metric (mean +- std over seeds), train_s, teacher_s, cache_share_s, total_s and total FLOPs as ratios to `plain`
(amortised: the build shared by its users; standalone: the whole build on one job), the cache's size and build
seconds. Ratios come from one run on one machine; absolute seconds are this machine's only.
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
QUICK = {"cifar10": ["data.train_limit=2000", "data.test_limit=1000", "teacher.train.epochs=2", "train.epochs=2"],
         "sst2": ["data.train_limit=2000", "data.test_limit=300"]}


def _arms(kd: dict, arms: dict[str, str | None]) -> str:
    """An `arms=` override: name -> cache mode of a kd arm with the findings' kd settings (None: plain)."""
    loss = f"temperature: {kd['temperature']}, alpha: {kd['alpha']}"
    return "arms={" + ", ".join(f"{name}: {{method: plain}}" if mode is None else
                                f"{name}: {{method: kd, {loss}, cache: {mode}}}" for name, mode in arms.items()) + "}"


def run_pair(pair: str, args) -> list[dict]:
    path = REPO / PAIRS[pair]
    seeds = f"seeds=[{','.join(str(s) for s in range(args.seeds))}]"
    over = [f"name=bench-{pair}", seeds, "precision=fp32", *(QUICK[pair] if args.quick else [])]
    kd = load_config(path).arms["kd"].model_dump()
    arms = _arms(kd, {"plain": None, "kd_online": "off", "kd_cached": "on"})
    run_experiment(load_config(path, over + [arms]), args.data_dir, args.out)  # a rerun resumes
    bf16 = over[1:] + [f"name=bench-{pair}-bf16-teacher", "teacher.precision=bf16", _arms(kd, {"kd_cached_bf16": "on"})]
    run_experiment(load_config(path, bf16), args.data_dir, args.out)
    store = ResultsStore(Path(args.out) / "results.db")
    return store.rows(f"bench-{pair}") + store.rows(f"bench-{pair}-bf16-teacher")


def table(pair: str, rows: list[dict]) -> str:
    """The report's summary (leankd.report.table.summarise) of both experiments' rows, as the benchmark's table."""
    summary = [s for s in summarise([{**r, "experiment": pair} for r in rows]) if s["role"] == "student"]
    metric = next(iter(summary[0]["metrics"]))
    lines = [f"## {pair}: {metric}, ratios to plain (mean over {summary[0]['n']} seed(s))", "",
             f"| arm | teacher | {metric} (%) | train_s | teacher_s | cache_share_s | total_s x | standalone x | "
             "flops x | standalone flops x |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        m = s["metrics"][metric]
        spread = f" ± {100 * m['std']:.2f}" if m["n"] > 1 else ""
        lines.append(f"| {s['arm']} | {s['teacher']} | {100 * m['mean']:.2f}{spread} | {s['train_s']['mean']:.1f} | "
                     f"{s['teacher_s']['mean']:.1f} | {s['cache_share_s']['mean']:.1f} | "
                     f"{s['total_s_vs_plain']:.2f} | {s['standalone_s_vs_plain']:.2f} | "
                     f"{s['train_flops_vs_plain']:.2f} | {s['standalone_flops_vs_plain']:.2f} |")
    for r in (r for r in rows if (r["extra"].get("cache") or {}).get("made_for") == r["experiment"]):
        c = r["extra"]["cache"]
        lines.append(f"\ncache of {r['experiment']}: {c['bytes'] / 2**20:.2f} MiB on disk, built in "
                     f"{c['build_s']:.1f} s ({c['views']} view(s)), shared by {c['users']} job(s)")
        break
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
