"""leankd's training loop against the bare PyTorch loop of examples/minimal_kd.py: time per step, side by side.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/loop_overhead.py --data-dir ../shared/data
    ... --reps 5 --train-limit 10000 --epochs 2 --precision bf16            # longer, or in bf16
    ... --devices cuda --train-limit 50000 --precision bf16                   # the GPU alone (default: cpu + cuda)
    ... --arms plain,kd --memory-format contiguous                            # minimal_kd.py's own memory format
    ... --compile                                                             # torch.compile, both sides

Both sides train the same registry models (student `resnet8`, teacher `resnet20`, the teacher's weights from one
file, frozen) on the same CIFAR-10 slice (leankd's fixed `data.train_limit` slice, handed to both), with the same
batch size, epochs, optimiser (SGD, momentum 0.9, Nesterov, weight decay 5e-4, linear LR decay to 0 from the first
step), loss (CE, or Hinton KD with T=4, alpha=0.9), augmentation (random 4-px crop + horizontal flip on the fly),
precision (fp32, or bf16 autocast), threads (`--threads`, default 1: torch's intra-op threads, which set the speed
of CPU steps; on a GPU they only serve the host-side work) and memory format (`--memory-format`: leankd's
`speed.memory_format`, and the bare side's models and batches; channels_last, leankd's default, takes ~1.3x less CPU
time per step than contiguous for these models on this project's CPU, fp32, one thread). Both sides keep torch's
default backend settings (cudnn.benchmark off, for one).

`--compile`: leankd runs with `speed.compile=true`, which (as speed.py specifies) compiles before training and
records the compile as `extra.compile.compile_s`, not in `train_s`; the bare side calls
`nn.Module.compile(dynamic=False)` on the student (and the teacher), then runs one forward/backward for each batch
shape training will see (the full batch and the epoch's last, smaller one) on the student's state, restored after;
that warm-up (tracing, code generation, autotuning) is timed apart, as its compile seconds, and the timed loop
starts after it. The optimiser step is not compiled on either side. Every run shares this one process and both sides
compile the same `forward`: Dynamo's per-function cache limit is raised to 64 so that no run falls back to eager,
and the compile seconds printed depend on what compiled before (leankd resets Dynamo around its own compile;
Inductor's on-disk cache serves both sides): they show that compiling stayed out of the timed seconds, not what a
compile costs.

`--devices` (default: cpu, plus cuda when torch sees a GPU): the whole paired comparison runs on each device in
turn, leankd with `device=<dev>`, the bare side with its tensors there; one table per device, then (with more than
one device) a summary table that puts the GPU ratio beside the CPU one. `--on-device auto|on|off` is leankd's
`data.on_device` (it changes nothing on CPU, where the data is in host memory already).

leankd side: `run_experiment` on the demo config with those settings, in this process (`metering.isolate_arms=
false`), one experiment per arm in a fresh `--out` folder per repetition; its time is the row's `train_s` (the
whole step loop: batch assembly + augmentation, teacher forwards, forward/backward/step, and what the loop does
besides: loss checks, progress bar, the epoch-end checkpoint; evaluation, FLOP counting, compiling and saving
excluded). The script wraps `leankd.jobs.steps.fit` (unchanged) to read this thread's CPU seconds around it.
Bare side: a copy of minimal_kd.py's `train()` loop, `augment()` and loss functions (minimal_kd.py runs on import,
so they are mirrored here, line for line, plus one `.contiguous(memory_format=...)` on each batch, as leankd does),
timed the way minimal_kd.py times its student (device synchronised, training only). Differences that stay, since
they are what each side is: minimal_kd keeps the normalised float images on the device, draws one permutation per
epoch there and augments each batch there with torch's RNG (reflect padding). leankd keeps the uint8 images and
draws crops and flips from (seed, epoch, index) (zero padding): each epoch's plan (order, crop offsets, flips) is
made on the host in one vectorised call and copied to the device once, and each step gathers its uint8 images,
crops, flips and normalises on the device. On a GPU the uint8 set lives in GPU memory (`data.on_device=auto`: when
it takes <= 25% of the free memory; 154 MB for all of CIFAR-10), so no step copies images from the host; with
`--on-device off` (or a set too large) each batch's uint8 images are gathered on the host and copied, pinned and
non-blocking. On CPU both sides work in host memory. leankd decays weights only (not BatchNorm gains or biases).

Arms: `plain` (CE) and `kd` with the teacher run online every step on both sides; `kd_cache` is leankd's kd with
its teacher cache (`cache: on`, built once per repetition before training, not in `train_s`), compared with the
bare online kd. Each repetition runs every arm on both sides, alternating which side goes first; `--warmup` extra
repetitions run first and are not counted. Printed per device: each repetition's seconds, then per arm the ratio
leankd / bare of seconds per training step, median and min..max over the repetitions, as wall time (train_s vs
perf_counter) and as this thread's CPU time (the figure to read when other processes share the core: wall time then
measures the scheduler; on a GPU the thread spins while it waits for the device, so there CPU time should follow
wall time), and each side's median ms per step on this machine, wall and CPU (not a claim about any other).
Target: ratio <= 1.05 for plain and kd, on CPU and on GPU (fp32 and bf16). Ctrl-C or SIGTERM (a time limit) stops
the repetitions and reports the ones finished, then exits 130.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import signal
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
    p.add_argument("--warmup", type=int, default=1, help="uncounted repetitions run first (per device)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="both sides (bf16: autocast)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides (CPU steps' speed)")
    p.add_argument("--devices", default=None,
                   help="comma-separated devices, each a whole paired comparison (default: cpu, plus cuda when "
                        "torch sees a GPU)")
    p.add_argument("--memory-format", choices=list(FORMATS), default="channels_last",
                   help="both sides: leankd's speed.memory_format, the bare side's models and batches")
    p.add_argument("--compile", action="store_true",
                   help="both sides: leankd speed.compile=true; the bare side nn.Module.compile(), its compile and "
                        "warm-up outside the timed seconds")
    p.add_argument("--on-device", choices=["auto", "on", "off"], default="auto",
                   help="leankd's data.on_device (GPU: the uint8 training set in GPU memory; no effect on CPU)")
    p.add_argument("--student", default="resnet8", help="registry model of the student")
    p.add_argument("--teacher", default="resnet20", help="registry model of the teacher")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    p.add_argument("--out", default=None, help="folder for leankd's runs (default: a temporary folder, removed)")
    p.add_argument("--verbose", action="store_true", help="leankd's INFO logs")
    return p.parse_args()


def devices_of(arg: str | None) -> list[torch.device]:
    names = arg.split(",") if arg else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = [torch.device(n.strip()) for n in names if n.strip()]
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        raise SystemExit("--devices names cuda but torch sees no GPU here; use --devices cpu")
    return devices


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"cpu (torch {torch.__version__})"


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


def _sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _autocast(device: torch.device, args):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def bare_train(model, teacher, loss_fn, x_train, y_train, args) -> dict:
    """minimal_kd.py's train(), timed as it times its student: wall and this thread's CPU seconds (training only)."""
    device, fmt, sync = x_train.device, FORMATS[args.memory_format], _sync(x_train.device)
    autocast = _autocast(device, args)
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


def bare_compile(model, teacher, loss_fn, x_train, y_train, args) -> float:
    """Compile both models, then one forward/backward per batch shape the loop will see (full, and the epoch's last
    when smaller) on the student's state, restored after: every compile lands here, none in the timed loop. Seconds."""
    sync, fmt = _sync(x_train.device), FORMATS[args.memory_format]
    sync()
    t0 = time.perf_counter()
    for m in (model, teacher):
        if m is not None:
            m.compile(dynamic=False)  # one static graph per batch shape: two shapes, both warmed below
    state = copy.deepcopy(model.state_dict())  # BatchNorm's running stats move in a train-mode forward
    model.train()
    for size in {min(args.batch_size, len(x_train)), len(x_train) % args.batch_size or args.batch_size}:
        x = augment(x_train[:size]).contiguous(memory_format=fmt)
        with _autocast(x.device, args):
            loss = loss_fn(model, teacher, x, y_train[:size], args)
        loss.backward()
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - t0


def run_bare(arm: str, data, teacher_path: Path, args, seed: int) -> dict:
    torch.manual_seed(seed)
    device, fmt = data[0].device, FORMATS[args.memory_format]
    teacher = None
    if arm != "plain":
        teacher = create_model(args.teacher, 10)
        teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
        teacher = teacher.to(device, memory_format=fmt).eval().requires_grad_(False)
    student = create_model(args.student, 10).to(device, memory_format=fmt)
    loss_fn = ce_loss if arm == "plain" else kd_loss
    compile_s = bare_compile(student, teacher, loss_fn, *data, args) if args.compile else None
    return {**bare_train(student, teacher, loss_fn, *data, args), "compile_s": compile_s}


# ---- the leankd side ------------------------------------------------------------------------------------------------

def leankd_config(arm: str, teacher_path: Path, args, seed: int, device: torch.device):
    over = [f"name=overhead-{arm}", f"data.train_limit={args.train_limit}", f"data.test_limit={args.test_limit}",
            f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
            "train.schedule=onecycle", "train.warmup_frac=0", f"precision={args.precision}",
            f"threads={args.threads}", "metering.isolate_arms=false", f"teacher.model={args.teacher}",
            f"student.model={args.student}", f"teacher.checkpoint={teacher_path}", "guard.refuse_chance_teacher=false",
            f"seeds=[{seed}]", f"device={device}", f"data.on_device={args.on_device}",
            f"speed.memory_format={args.memory_format}", f"speed.compile={str(args.compile).lower()}"]
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


def run_leankd(arm: str, out: Path, teacher_path: Path, args, seed: int, device: torch.device) -> dict:
    """One leankd job (its own experiment): the row's train_s, cache_share_s and compile seconds (None when it
    recorded no compile), the CPU seconds of its fit()."""
    FIT_CPU_S.clear()
    rows = run_experiment(leankd_config(arm, teacher_path, args, seed, device), args.data_dir, out)
    row = next(r for r in rows if r["arm"] == arm)
    compiled = (row.get("extra") or {}).get("compile") or {}
    return {"train_s": row["train_s"], "cpu_s": FIT_CPU_S[-1], "cache_share_s": row["cache_share_s"],
            "compile_s": compiled.get("compile_s")}


# ---- the comparison -------------------------------------------------------------------------------------------------

def repetition(rep: int, arms: list[str], data, teacher_path: Path, args, root: Path) -> dict:
    """Every arm on both sides; the side that goes first alternates by repetition and arm."""
    device, out, times = data[0].device, root / f"rep{rep}", {}
    for i, arm in enumerate(arms):
        sides = ["leankd"] if arm == "kd_cache" else ["leankd", "bare"]
        if (rep + i) % 2:
            sides.reverse()
        for side in sides:
            if side == "leankd":
                times[arm] = run_leankd(arm, out, teacher_path, args, seed=0, device=device)
            else:
                times[f"bare_{arm}"] = run_bare(arm, data, teacher_path, args, seed=0)
    return times


def compare(device: torch.device, arms: list[str], images, labels, teacher_path: Path, args,
            root: Path) -> tuple[list, bool]:
    """The paired repetitions on one device: the counted ones' seconds (warm-ups printed, not kept), and whether
    Ctrl-C or SIGTERM (a time limit) stopped them early (the repetitions finished by then are kept)."""
    data, reps = bare_data(images, labels, device), []
    print(f"\n== {describe(device)}", flush=True)
    try:
        for rep in range(args.warmup + args.reps):
            times = repetition(rep, arms, data, teacher_path, args, root / str(device).replace(":", ""))
            counted = rep >= args.warmup
            reps += [times] if counted else []
            print(f"rep {rep + 1}/{args.warmup + args.reps}{'' if counted else ' (warm-up, not counted)'}: "
                  + ", ".join(f"{k} {v['train_s']:.2f} s (cpu {v['cpu_s']:.2f})" for k, v in times.items()),
                  flush=True)
    except KeyboardInterrupt:
        print(f"stopped: reporting the {len(reps)} counted repetition(s) finished", flush=True)
        return reps, True
    return reps, False


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def _median_or_dash(values: list, fmt: str = "{:.1f}") -> str:
    values = [v for v in values if v is not None]
    return fmt.format(statistics.median(values)) if values else "-"


def _ms_per_step(reps: list[dict], key: str, steps: int) -> str:
    """Median ms per step of one side's runs, wall and (in brackets) this thread's CPU time."""
    wall, cpu = (statistics.median(1000 * r[key][k] / steps for r in reps) for k in ("train_s", "cpu_s"))
    return f"{wall:.1f} ({cpu:.1f})"


def ratios(reps: list[dict], arms: list[str], steps: int) -> list[dict]:
    """Per arm: the leankd / bare ratios (wall, CPU), each side's ms per step, cache build and compile seconds."""
    rows = []
    for arm in arms:
        bare = f"bare_{'kd' if arm == 'kd_cache' else arm}"
        ms, bare_ms = (_ms_per_step(reps, k, steps) for k in (arm, bare))
        rows.append({"arm": f"{arm} (vs bare kd, teacher online)" if arm == "kd_cache" else arm,
                     "wall": spread([r[arm]["train_s"] / r[bare]["train_s"] for r in reps]),
                     "cpu": spread([r[arm]["cpu_s"] / r[bare]["cpu_s"] for r in reps]),
                     "ms": ms, "bare_ms": bare_ms,
                     "build": _median_or_dash([r[arm]["cache_share_s"] for r in reps]) if arm == "kd_cache" else "-",
                     "compile": f"{_median_or_dash([r[arm]['compile_s'] for r in reps])} / "
                                f"{_median_or_dash([r[bare]['compile_s'] for r in reps])}"})
    return rows


def report(device: torch.device, rows: list[dict], reps: list[dict], steps: int, args) -> None:
    print(f"\n{describe(device)}: leankd / bare, seconds per training step: median (min..max) over {len(reps)} "
          f"repetition(s) of paired runs; {args.train_limit} images, {args.epochs} epoch(s), batch {args.batch_size} "
          f"= {steps} steps per run, {args.student} <- {args.teacher}, {args.precision}, {args.threads} thread(s), "
          f"{args.memory_format}, compile {'on' if args.compile else 'off'}, leankd data.on_device={args.on_device}\n")
    head = ["arm", "leankd / bare (wall)", "leankd / bare (CPU)", "leankd ms/step wall (CPU)",
            "bare ms/step wall (CPU)", "leankd cache build s (not in train_s)"] + \
        (["compile s leankd / bare (not timed)"] if args.compile else [])
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    for r in rows:
        cells = [r["arm"], r["wall"], r["cpu"], r["ms"], r["bare_ms"], r["build"]]
        print("| " + " | ".join(cells + ([r["compile"]] if args.compile else [])) + " |")
    print("\nwall: leankd's train_s vs the bare loop's perf_counter seconds; CPU: this thread's CPU seconds of the "
          "same loops (less sensitive to other processes on the core). Target: leankd / bare <= 1.05 for plain and kd.")
    if args.compile and any(r[a]["compile_s"] is None for r in reps for a in r if not a.startswith("bare_")):
        print("note: leankd recorded no extra.compile.compile_s: its steps ran uncompiled (speed.compile not "
              "implemented in this checkout?), against the compiled bare loop")


def summary(tables: dict, args) -> None:
    """One table for every device: the GPU ratio beside the CPU one."""
    print(f"\nsummary: leankd / bare seconds per step, median (min..max); {args.precision}, {args.memory_format}, "
          f"compile {'on' if args.compile else 'off'}\n")
    print("| device | arm | leankd / bare (wall) | leankd / bare (CPU) | leankd ms/step wall (CPU) | "
          "bare ms/step wall (CPU) |\n"
          "|---|---|---|---|---|---|")
    for device, rows in tables.items():
        for r in rows:
            print(f"| {device} | {r['arm']} | {r['wall']} | {r['cpu']} | {r['ms']} | {r['bare_ms']} |")


def _stop(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (e.g. `timeout`): the repetitions finished so far are still reported


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _stop)
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    torch.set_num_threads(args.threads)
    arms = [a for a in args.arms.split(",") if a]
    if unknown := set(arms) - set(ARMS):
        raise SystemExit(f"unknown arm(s) {sorted(unknown)}; choose from {', '.join(ARMS)}")
    devices = devices_of(args.devices)
    if args.compile:
        torch._dynamo.config.recompile_limit = 64  # every run's graphs in one process (docstring)
    cfg = leankd_config("plain", Path("unused"), args, 0, torch.device("cpu"))
    images, labels = cifar10_splits(Path(args.data_dir), cfg.data)["train"]  # leankd's slice, for both sides
    steps = args.epochs * -(-len(labels) // args.batch_size)
    tables, stopped = {}, False
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        root = Path(tmp)
        teacher_path = root / f"{args.teacher}.pt"
        torch.manual_seed(0)  # the teacher's weights: the cost of a step does not depend on them
        torch.save(create_model(args.teacher, 10).state_dict(), teacher_path)
        for device in devices:
            reps, stopped = compare(device, arms, images, labels, teacher_path, args, root)
            if reps:
                tables[str(device)] = ratios(reps, arms, steps)
                report(device, tables[str(device)], reps, steps, args)
            if stopped:
                break
    if len(tables) > 1:
        summary(tables, args)
    if stopped:
        raise SystemExit(130)


if __name__ == "__main__":
    main()
