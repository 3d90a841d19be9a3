"""leankd vs torchdistill: the same Hinton KD (ResNet-20 -> ResNet-8, CIFAR-10) side by side in one run.

    python benchmarks/vs_torchdistill.py --data-dir ../shared/data                 # 3k-image slice, 2 epochs
    python benchmarks/vs_torchdistill.py --data-dir ../shared/data --train-limit 0 --epochs 2   # all 50k
    (on the 2-core machines: taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vs_torchdistill.py ...)

leankd trains the ResNet-20 teacher once and distils ResNet-8 twice, `kd_online` (teacher forward every step)
and `kd` at its default (teacher cache on: the teacher's logits are built once per augmentation view and read
back). torchdistill (PyPI `torchdistill`, in its own virtual environment benchmarks/.venv-torchdistill, created
and filled on first use: it needs torchvision and its own torch build) distils the same teacher weights into a
ResNet-8 that starts from the same initial weights (torchdistill's CIFAR ResNet has leankd's modules and
state-dict keys), via its YAML config and DistillationBox (benchmarks/torchdistill_side.py). Same data slice
(read here from `<data_dir>/cifar10/*.npz` and handed over as arrays), same augmentation (4-px pad crop + flip,
torchvision's on that side), batch, SGD (nesterov, decay on weights only), warm-up + linear-decay schedule,
T and alpha, epochs, precision and threads. Prints per toolkit: epoch seconds (training loop only), the
ratio to leankd online, test accuracy and agreement with the teacher; leankd's cache build is shown
separately (it is paid once, not per epoch). Figures are one run on one machine: compare the ratios.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from leankd.config import load_config
from leankd.data.cifar10 import MEAN, STD, cifar10_splits
from leankd.experiment import run_experiment
from leankd.log import setup_logging
from leankd.models import create_model
from leankd.results.store import ResultsStore

from peer_table import peer_table  # benchmarks/ is on sys.path when a benchmark is run as a script

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/demo/cifar10-resnet20-resnet8.yaml"
VENV = REPO / "benchmarks/.venv-torchdistill"
SIDE = REPO / "benchmarks/torchdistill_side.py"
# pip on Python 3.11 takes these two from this machine's wheel store; torchdistill from PyPI
VENV_PACKAGES = (["torch==2.14.1", "torchvision==0.29.1"], ["torchdistill"])


def ensure_venv() -> Path:
    """The torchdistill environment's python, creating it (a few minutes, ~5.5 GB) if it cannot import torchdistill."""
    python = VENV / "bin/python"
    if python.exists() and subprocess.run([python, "-c", "import torchdistill, torchvision"],
                                          capture_output=True).returncode == 0:
        return python
    print(f"creating {VENV} (torch + torchvision + torchdistill) ...", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    for pkgs in VENV_PACKAGES:
        subprocess.run([python, "-m", "pip", "install", "-q", *pkgs], check=True)
    return python


def leankd_rows(args) -> tuple[dict, dict, object]:
    over = ["name=vs-torchdistill", f"data.train_limit={args.train_limit or 'null'}",
            f"data.test_limit={args.test_limit or 'null'}", f"teacher.train.epochs={args.teacher_epochs}",
            f"train.epochs={args.epochs}", f"precision={args.precision}", f"threads={args.threads}",
            f"seeds=[{args.seed}]", "cache.mode=on"]
    cfg = load_config(CONFIG, over)
    kd = cfg.arms["kd"]
    cfg.arms = {"kd_online": kd.model_copy(update={"cache": "off"}), "kd": kd.model_copy(update={"cache": "on"})}
    run_experiment(cfg, args.data_dir, args.out)  # a rerun resumes: rows already stored are not retrained
    rows = {r["arm"]: r for r in ResultsStore(Path(args.out) / "results.db").rows("vs-torchdistill")}
    return rows, rows["teacher"], cfg


def torchdistill_run(python: Path, cfg, teacher_row: dict, args) -> dict:
    """Hands the slice, the teacher's and the student's initial weights to torchdistill_side.py; its JSON line."""
    splits = cifar10_splits(Path(args.data_dir), cfg.data)  # leankd's fixed slice, exactly
    with tempfile.TemporaryDirectory() as tmp:  # outside the repository: data is never copied into it
        tmp = Path(tmp)
        (xt, yt), (xe, ye) = splits["train"], splits["test"]
        np.savez(tmp / "data.npz", train_images=xt, train_labels=yt, test_images=xe, test_labels=ye)
        torch.save(load_file(teacher_row["extra"]["checkpoint"]), tmp / "teacher.pt")
        torch.manual_seed(args.seed)  # leankd's student init: manual_seed(seed), then the registry model
        torch.save(create_model(cfg.student.model, 10).state_dict(), tmp / "student.pt")
        t = cfg.train
        spec = {"data": str(tmp / "data.npz"), "teacher_state": str(tmp / "teacher.pt"),
                "student_state": str(tmp / "student.pt"), "teacher_depth": 20, "student_depth": 8,
                "mean": MEAN, "std": STD, "augment": cfg.data.augment, "epochs": t.epochs,
                "batch_size": t.batch_size, "lr": t.lr, "momentum": t.momentum, "nesterov": t.nesterov,
                "weight_decay": t.weight_decay, "warmup_frac": t.warmup_frac, "temperature": cfg.arms["kd"].temperature,
                "alpha": cfg.arms["kd"].alpha, "precision": args.precision, "threads": args.threads, "seed": args.seed}
        (tmp / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run([python, SIDE, tmp / "spec.json"], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"torchdistill side failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("LEANKD_DATA_DIR"), help="data directory ($LEANKD_DATA_DIR)")
    p.add_argument("--out", default="runs/bench-vs-torchdistill", help="leankd results folder")
    p.add_argument("--train-limit", type=int, default=3000, help="training images (0: all 50k; default 3000)")
    p.add_argument("--test-limit", type=int, default=2000, help="test images (0: all 10k; default 2000)")
    p.add_argument("--teacher-epochs", type=int, default=5, help="teacher epochs (leankd trains it once; default 5)")
    p.add_argument("--epochs", type=int, default=2, help="student epochs, every toolkit (default 2)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="every toolkit (default fp32)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, every toolkit (default 1)")
    p.add_argument("--seed", type=int, default=0, help="student init and data-order seed")
    args = p.parse_args()
    if not args.data_dir:
        p.error("give --data-dir or set LEANKD_DATA_DIR")
    setup_logging(logging.WARNING)
    python = ensure_venv()
    rows, teacher, cfg = leankd_rows(args)
    td = torchdistill_run(python, cfg, teacher, args)
    print(f"CIFAR-10 {len(cifar10_splits(Path(args.data_dir), cfg.data)['train'][1])} train images, "
          f"ResNet-20 teacher ({100 * teacher['metrics']['accuracy']:.2f}%) -> ResNet-8, Hinton KD "
          f"T={cfg.arms['kd'].temperature} alpha={cfg.arms['kd'].alpha}, {args.epochs} epoch(s), "
          f"batch {cfg.train.batch_size}, {args.precision}, {args.threads} thread(s)\n")
    views = rows["kd"]["extra"]["cache"]["views"]
    print(peer_table(rows, f"torchdistill {td['versions']['torchdistill']}", td, f" ({views} augmentation view(s))"))


if __name__ == "__main__":
    main()
