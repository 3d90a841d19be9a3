"""leankd's training loop against the bare PyTorch loop of examples/minimal_kd.py: time per step, side by side.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/loop_overhead.py --data-dir ../shared/data
    ... --reps 5 --train-limit 10000 --epochs 2 --precision bf16            # longer, or in bf16
    ... --arms plain,kd --bare-format contiguous                             # minimal_kd.py's own memory format

Both sides train the same registry models (student `resnet8`, teacher `resnet20`, the teacher's weights from one
file, frozen) on the same CIFAR-10 slice (leankd's fixed `data.train_limit` slice, handed to both), with the same
batch size, epochs, optimiser (SGD, momentum 0.9, Nesterov, weight decay 5e-4, linear LR decay to 0 from the first
step), loss (CE, or Hinton KD with T=4, alpha=0.9), augmentation (random 4-px crop + horizontal flip on the fly),
precision (fp32, or bf16 autocast), threads (`--threads`, default 1) and memory format (channels-last, as leankd
builds its models: ~1.5x faster than contiguous for these convs on this CPU; `--bare-format contiguous` for
minimal_kd.py's own). Device: CUDA when available, else CPU, for both.

leankd side: `run_experiment` on the demo config with those settings, in this process (`metering.isolate_arms=
false`), one experiment per arm in a fresh `--out` folder per repetition; its time is the row's `train_s` (the
whole step loop: batch assembly + augmentation, teacher forwards, forward/backward/step, and what the loop does
besides: loss checks, progress bar, the epoch-end checkpoint; evaluation, FLOP counting and saving excluded). The
script wraps `leankd.jobs.steps.fit` (unchanged) to read this thread's CPU seconds around it.
Bare side: a copy of minimal_kd.py's `train()` loop, `augment()` and loss functions (minimal_kd.py runs on import,
so they are mirrored here, line for line, plus one `.contiguous(memory_format=...)` on each batch, as leankd does),
timed the way minimal_kd.py times its student (device synchronised, training only). Differences that stay, since
they are what each side is: minimal_kd keeps the normalised float images on the device and augments them there
with torch's RNG (reflect padding); leankd keeps uint8 images on the CPU, draws crops and flips from (seed, epoch,
index) (zero padding) and normalises each batch before copying it to the device; leankd decays weights only (not
BatchNorm gains or biases).

Arms: `plain` (CE) and `kd` with the teacher run online every step on both sides; `kd_cache` is leankd's kd with
its teacher cache (`cache: on`, built once per repetition before training, not in `train_s`), compared with the
bare online kd. Each repetition runs every arm on both sides, alternating which side goes first; `--warmup` extra
repetitions run first and are not counted. Printed: each repetition's seconds, then per arm the ratio leankd / bare
of seconds per training step, median and min..max over the repetitions, as wall time (train_s vs perf_counter) and
as this thread's CPU time (the figure to read when other processes share the core: wall time then measures the
scheduler), and each side's median ms per step on this machine (not a claim about any other). Target: ratio <=
1.05 for plain and kd.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from leankd.config import load_config
from leankd.data.cifar10 import cifar10_splits
from leankd.experiment import run_experiment
from leankd.jobs import steps
from leankd.log import setup_logging
from leankd.models import create_model

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs/demo/cifar10-resnet20-resnet8.yaml"
ARMS = ("plain", "kd", "kd_cache")  # kd_cache: leankd only, against the bare online kd
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("LEANKD_DATA_DIR", "../shared/data"),
                   help="folder holding cifar10/cifar10_{train,test}.npz (default: $LEANKD_DATA_DIR or ../shared/data)")
    p.add_argument("--train-limit", type=int, default=5000, help="training images (leankd's fixed slice, both sides)")
    p.add_argument("--test-limit", type=int, default=500, help="test images for leankd's evaluation (not timed)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per training run")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size")
    p.add_argument("--lr", type=float, default=0.05, help="peak SGD learning rate (minimal_kd.py's default)")
    p.add_argument("--reps", type=int, default=3, help="counted repetitions (each: every arm, both sides)")
    p.add_argument("--warmup", type=int, default=1, help="uncounted repetitions run first")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="both sides (bf16: autocast)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    p.add_argument("--student", default="resnet8", help="registry model of the student")
    p.add_argument("--teacher", default="resnet20", help="registry model of the teacher")
    p.add_argument("--bare-format", choices=list(FORMATS), default="channels_last",
                   help="the bare side's memory format (leankd's models run channels-last; minimal_kd.py's do not)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    p.add_argument("--out", default=None, help="folder for leankd's runs (default: a temporary folder, removed)")
    p.add_argument("--verbose", action="store_true", help="leankd's INFO logs")
    return p.parse_args()


# ---- the bare side: minimal_kd.py's loop, mirrored ----------------------------------------------------------------

def bare_data(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """minimal_kd.py's load(): normalised float images (N,3,32,32) and labels, on the device."""
    x = torch.from_numpy(images).float().div(255)
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    return ((x - mean[:, None, None]) / std[:, None, None]).to(device), torch.from_numpy(labels).to(device)


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random 32x32 crop of the 4-px reflect-padded batch, then a random horizontal flip (minimal_kd.py's)."""
    (n, c), dev = x.shape[:2], x.device
    padded, ar = F.pad(x, (4, 4, 4, 4), mode="reflect"), torch.arange(32, device=dev)
    rows = (torch.randint(0, 9, (n, 1), device=dev) + ar)[:, None, :, None]
    cols = (torch.randint(0, 9, (n, 1), device=dev) + ar)[:, None, None, :]
    x = padded[torch.arange(n, device=dev)[:, None, None, None], ar[:c, None, None], rows, cols]
    return torch.where(torch.rand(n, 1, 1, 1, device=dev) < 0.5, x.flip(3), x)


def ce_loss(model, teacher, x, y, args):
    return F.cross_entropy(model(x), y)


def kd_loss(student, teacher, x, y, args):
    with torch.no_grad():
        t = teacher(x).float()
    s, T, alpha = student(x).float(), 4.0, 0.9
    kl = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1), log_target=True, reduction="batchmean")
    return (1 - alpha) * F.cross_entropy(s, y) + alpha * T**2 * kl


def bare_train(model, teacher, loss_fn, x_train, y_train, args) -> dict:
    """minimal_kd.py's train(), timed as it times its student: wall and this thread's CPU seconds (training only)."""
    device, fmt = x_train.device, FORMATS[args.bare_format]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    sync()
    t0, c0 = time.perf_counter(), time.thread_time()
    steps = args.epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    model.train()
    for _ in range(args.epochs):
        for idx in torch.randperm(len(x_train), device=device).split(args.batch_size):
            x, y = augment(x_train[idx]).contiguous(memory_format=fmt), y_train[idx]  # the format leankd feeds
            with autocast:
                loss = loss_fn(model, teacher, x, y, args)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    sync()
    return {"train_s": time.perf_counter() - t0, "cpu_s": time.thread_time() - c0}


def run_bare(arm: str, data, teacher_path: Path, args, seed: int) -> dict:
    torch.manual_seed(seed)
    device = data[0].device
    teacher = None
    if arm != "plain":
        teacher = create_model(args.teacher, 10)
        teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
        teacher = teacher.to(device, memory_format=FORMATS[args.bare_format]).eval().requires_grad_(False)
    student = create_model(args.student, 10).to(device, memory_format=FORMATS[args.bare_format])
    return bare_train(student, teacher, ce_loss if arm == "plain" else kd_loss, *data, args)


# ---- the leankd side ------------------------------------------------------------------------------------------------

def leankd_config(arm: str, teacher_path: Path, args, seed: int):
    over = [f"name=overhead-{arm}", f"data.train_limit={args.train_limit}", f"data.test_limit={args.test_limit}",
            f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
            "train.schedule=onecycle", "train.warmup_frac=0", f"precision={args.precision}",
            f"threads={args.threads}", "metering.isolate_arms=false", f"teacher.model={args.teacher}",
            f"student.model={args.student}", f"teacher.checkpoint={teacher_path}", "guard.refuse_chance_teacher=false",
            f"seeds=[{seed}]"]
    cfg = load_config(DEMO, over)
    kd = cfg.arms["kd"]  # T=4, alpha=0.9, as minimal_kd.py
    cfg.arms = {"plain": {"plain": cfg.arms["plain"]},
                "kd": {"kd": kd.model_copy(update={"cache": "off"})},
                "kd_cache": {"kd_cache": kd.model_copy(update={"cache": "on"})}}[arm]
    return cfg


def _cpu_timed(fit):
    """leankd's fit(), unchanged, with this thread's CPU seconds around it recorded (one clock read per call)."""
    def timed(*a, **k):
        c0 = time.thread_time()
        out = fit(*a, **k)
        FIT_CPU_S.append(time.thread_time() - c0)
        return out
    return timed


FIT_CPU_S: list[float] = []
steps.fit = _cpu_timed(steps.fit)  # the job's train step calls leankd.jobs.steps.fit


def run_leankd(arm: str, out: Path, teacher_path: Path, args, seed: int) -> dict:
    """One leankd job (its own experiment): the row's train_s and cache_share_s, the CPU seconds of its fit()."""
    FIT_CPU_S.clear()
    rows = run_experiment(leankd_config(arm, teacher_path, args, seed), args.data_dir, out)
    row = next(r for r in rows if r["arm"] == arm)
    return {"train_s": row["train_s"], "cpu_s": FIT_CPU_S[-1], "cache_share_s": row["cache_share_s"]}


# ---- the comparison -------------------------------------------------------------------------------------------------

def repetition(rep: int, arms: list[str], data, teacher_path: Path, args, root: Path) -> dict:
    """Every arm on both sides; the side that goes first alternates by repetition and arm."""
    out, times = root / f"rep{rep}", {}
    for i, arm in enumerate(arms):
        sides = ["leankd"] if arm == "kd_cache" else ["leankd", "bare"]
        if (rep + i) % 2:
            sides.reverse()
        for side in sides:
            if side == "leankd":
                times[arm] = run_leankd(arm, out, teacher_path, args, seed=0)
            else:
                times[f"bare_{arm}"] = run_bare(arm, data, teacher_path, args, seed=0)
    return times


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def report(reps: list[dict], arms: list[str], steps: int, args) -> None:
    print(f"\nleankd / bare, seconds per training step: median (min..max) over {len(reps)} repetition(s) of paired "
          f"runs; {args.train_limit} images, {args.epochs} epoch(s), batch {args.batch_size} = {steps} steps per run, "
          f"{args.student} <- {args.teacher}, {args.precision}, {args.threads} thread(s), bare side "
          f"{args.bare_format}\n")
    print("| arm | leankd / bare (wall) | leankd / bare (CPU) | leankd ms/step | bare ms/step | "
          "leankd cache build s (not in train_s) |")
    print("|---|---|---|---|---|---|")
    for arm in arms:
        bare = f"bare_{'kd' if arm == 'kd_cache' else arm}"
        wall = [r[arm]["train_s"] / r[bare]["train_s"] for r in reps]
        cpu = [r[arm]["cpu_s"] / r[bare]["cpu_s"] for r in reps]
        ms, bare_ms = ([1000 * r[k]["train_s"] / steps for r in reps] for k in (arm, bare))
        build = f"{statistics.median(r[arm]['cache_share_s'] for r in reps):.1f}" if arm == "kd_cache" else "-"
        label = f"{arm} (vs bare kd, teacher online)" if arm == "kd_cache" else arm
        print(f"| {label} | {spread(wall)} | {spread(cpu)} | {statistics.median(ms):.1f} | "
              f"{statistics.median(bare_ms):.1f} | {build} |")
    print("\nwall: leankd's train_s vs the bare loop's perf_counter seconds; CPU: this thread's CPU seconds of the "
          "same loops (less sensitive to other processes on the core). Target: leankd / bare <= 1.05 for plain and kd.")


def main() -> None:
    args = parse_args()
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    torch.set_num_threads(args.threads)
    arms = [a for a in args.arms.split(",") if a]
    if unknown := set(arms) - set(ARMS):
        raise SystemExit(f"unknown arm(s) {sorted(unknown)}; choose from {', '.join(ARMS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = leankd_config("plain", Path("unused"), args, 0)
    images, labels = cifar10_splits(Path(args.data_dir), cfg.data)["train"]  # leankd's slice, for both sides
    data = bare_data(images, labels, device)
    steps = args.epochs * -(-len(labels) // args.batch_size)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        root = Path(tmp)
        teacher_path = root / f"{args.teacher}.pt"
        torch.manual_seed(0)  # the teacher's weights: the cost of a step does not depend on them
        torch.save(create_model(args.teacher, 10).state_dict(), teacher_path)
        reps = []
        for rep in range(args.warmup + args.reps):
            times = repetition(rep, arms, data, teacher_path, args, root)
            counted = rep >= args.warmup
            reps += [times] if counted else []
            print(f"rep {rep + 1}/{args.warmup + args.reps}{'' if counted else ' (warm-up, not counted)'}: "
                  + ", ".join(f"{k} {v['train_s']:.2f} s (cpu {v['cpu_s']:.2f})" for k, v in times.items()), flush=True)
    report(reps, arms, steps, args)


if __name__ == "__main__":
    main()
