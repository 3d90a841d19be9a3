"""The leankd command line: argument parsing, and mapping user errors to one line and an exit code.

    leankd run configs/demo/cifar10-resnet20-resnet8.yaml [key=value ...] [--out runs] [--data-dir DIR]
    leankd report [--out runs] [--experiment NAME] [--json]
    leankd eval runs/students/<experiment>/kd-seed0.safetensors [--data-dir DIR]   (or a text model folder)
    leankd layers resnet20 | minilm-l6 | CONFIG            (candidate layers: index, module name, output shape)
    leankd layers CONFIG --rank [--out runs]               (teacher layers ranked by measured importance)
    leankd cache ls | rm NAME... [--out runs]              (teacher-output caches and their sizes)
    leankd run CONFIG --smoke                              (the experiment end to end on a small slice)
    leankd run CONFIG --executor slurm --slurm-partition gpu --slurm-gpus 1   (each wave's jobs as SLURM jobs)
    leankd plan CONFIG [key=value ...] [--gpu-tflops X]    (full-run FLOPs, time, memory from a few steps)
    leankd export --mlflow sqlite:///runs/mlflow.db [--out runs] [--experiment NAME]   (a nested MLflow run per row)

User mistakes (config, data, checkpoint, NaN loss: `leankd.errors.UserError`) print one line naming the problem
and the fix, and exit with status 2; nothing already written is lost. Nothing imports this module.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from leankd.errors import EXIT_FAILED, EXIT_USER, CheckpointError, ConfigError, JobFailed, UserError, not_found
from leankd.log import setup_logging

log = logging.getLogger("leankd")


def cmd_run(args) -> int:
    from leankd.api import run_experiment  # the Python API's run: the same log lines and report files
    from leankd.config import load_config
    from leankd.experiment.executors import from_args

    overrides = args.overrides
    if args.smoke:  # the run as written, on a slice: config overrides through the normal config path
        from leankd.experiment.smoke import smoke_overrides

        overrides, said = smoke_overrides(args.config, args.overrides)
        log.info("%s", said)
    cfg = load_config(args.config, overrides)
    run_experiment(cfg, args.data_dir, Path(args.out), executor=from_args(args), show=print)
    return 0


def cmd_report(args) -> int:
    from leankd.report.table import summarise, to_json, write_report
    from leankd.results.store import ResultsStore

    db = Path(args.out) / "results.db"
    if Path(args.out).is_file():
        raise ConfigError(f"config error: --out '{args.out}' is a file, not a folder; give the folder holding "
                          "results.db")
    if not db.is_file():
        print(f"error: no results store at '{db}'; run `leankd run CONFIG --out {args.out}` first", file=sys.stderr)
        return EXIT_USER
    store = ResultsStore(db)
    names = [args.experiment] if args.experiment else store.experiments()
    if args.experiment and args.experiment not in store.experiments():
        known = ", ".join(store.experiments()) or "none yet"
        print(f"error: no experiment '{args.experiment}' in {db}; known: {known}", file=sys.stderr)
        return EXIT_USER
    if args.json:
        print(json.dumps({n: json.loads(to_json(summarise(store.rows(n)))) for n in names}, indent=2))
    else:
        print(write_report(store.rows(), args.out, args.experiment, store.failures(args.experiment)))
    return 0


def cmd_eval(args) -> int:
    import torch

    from leankd.config import build_config
    from leankd.data.files import resolve_data_dir
    from leankd.precision import Precision
    from leankd.tasks import build_task
    from leankd.train import predict

    ckpt = Path(args.checkpoint)
    if args.batch_size < 1:
        raise ConfigError(f"config error: --batch-size must be a positive integer, got {args.batch_size}")
    if not ckpt.exists():
        raise CheckpointError(f"checkpoint error: '{ckpt}' not found; give a model saved by `leankd run` (under "
                              "<out>/students/ or <out>/teachers/)")
    sidecar = ckpt.with_suffix(".json")
    if not sidecar.is_file():
        raise CheckpointError(f"checkpoint error: '{sidecar}' (model name and data settings) {not_found(sidecar)}, "
                              f"next to '{ckpt}'; evaluate models saved by `leankd run`")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        cfg = build_config(meta["config"])
    except ConfigError as err:  # e.g. a model named by import path that this working directory cannot import
        raise CheckpointError(f"checkpoint error: the config saved with '{ckpt}' does not load here: "
                              f"{str(err).removeprefix('config error: ')}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint error: '{sidecar}' is not valid JSON written by `leankd run` ("
                              f"{type(err).__name__}: {str(err)[:120]}); save the model again with `leankd run`"
                              ) from None
    task = build_task(cfg, resolve_data_dir(args.data_dir, cfg.data))
    model, _ = task.load(ckpt)
    split = args.split or task.eval_split
    loader = task.eval_loader(split, args.batch_size)
    if loader is None:
        raise CheckpointError(f"checkpoint error: split '{split}' is empty for this model's data settings")
    prec = Precision.create(args.precision, torch.device("cpu"))
    metrics = task.metrics(*predict(model, loader, prec, torch.device("cpu")))
    stored = meta.get("metrics", {})
    print(f"{ckpt}: {meta['model']} on {task.name} {split} ({loader.num_samples} samples, {prec.name})")
    for k, v in metrics.items():
        print(f"  {k}: {100 * v:.2f}%" + (f"  (recorded at training: {100 * stored[k]:.2f}%)" if k in stored else ""))
    return 0


def _models_of(target: str, overrides: list[str]):
    """[(role, name, untrained model, example input)] for a model name or an experiment config."""
    import torch

    from leankd.models import create_model, list_models
    from leankd.models.text import build_text_model, load_tokenizer, student_from_teacher
    from leankd.models.user import is_import_path

    def text_input(name: str):
        return dict(load_tokenizer(name)("leankd lists the layers of this model", return_tensors="pt"))

    image = torch.zeros(1, 3, 32, 32)
    if not target.endswith((".yaml", ".yml")) and overrides:  # key=value sets keys of a config
        raise ConfigError(f"config error: '{target}' is a model name, not a config: drop the override(s) {overrides}")
    if not target.endswith((".yaml", ".yml")):
        if target in list_models() or is_import_path(target):  # a user's FILE.py:FUNCTION too
            return [("model", target, create_model(target, 10), image)]
        return [("model", target, build_text_model(target, 2), text_input(target))]
    from leankd.config import load_config
    from leankd.distill.selection import init_layer_indices

    cfg = load_config(target, overrides)
    if not cfg.data.is_text:
        return [("teacher", cfg.teacher.model, create_model(cfg.teacher.model, 10), image),
                ("student", cfg.student.model, create_model(cfg.student.model, 10), image)]
    teacher, x = build_text_model(cfg.teacher.model, 2), text_input(cfg.teacher.model)
    if cfg.student.layers is not None:
        layers = init_layer_indices(teacher, cfg.student.layers)
        student = ("student", f"{cfg.teacher.model}{layers}", student_from_teacher(teacher, layers), x)
    else:
        student = ("student", cfg.student.model, build_text_model(cfg.student.model, 2), x)
    return [("teacher", cfg.teacher.model, teacher, x), student]


def cmd_layers(args) -> int:
    import torch

    from leankd.batching import logits_of
    from leankd.distill.taps import Taps, candidate_layers

    if args.rank:
        return _rank(args)
    for role, name, model, x in _models_of(args.target, args.overrides):
        names = candidate_layers(model)
        model.eval()
        with Taps(model, names) as taps, torch.no_grad():
            logits_of(model, x)
            feats = taps.pop()
        print(f"{role} {name}: {len(names)} candidate layers (shapes for one sample)")
        width = max(len(n) for n in names)
        for i, n in enumerate(names):
            print(f"  {i:>3}  {n:<{width}}  {tuple(feats[n]['out'].shape)}")
    return 0


def _rank(args) -> int:
    from leankd.config import load_config
    from leankd.device import resolve_device
    from leankd.distill.importance import format_ranking
    from leankd.distill.ranking import load_or_rank, ranking_path
    from leankd.distill.taps import candidate_layers
    from leankd.experiment import obtain_teacher
    from leankd.experiment.teachers import model_path, teacher_dir
    from leankd.metering.flops import forward_flops
    from leankd.precision import Precision
    from leankd.tasks import build_task

    if not args.target.endswith((".yaml", ".yml")):
        raise ConfigError("config error: --rank scores a trained teacher on its data: give an experiment "
                          "config (e.g. configs/findings/cifar10-resnet20-resnet8.yaml), not a model name")
    cfg = load_config(args.target, args.overrides)
    t0 = time.perf_counter()
    data_dir, key = obtain_teacher(cfg, args.data_dir, args.out)  # trains it first if none is stored
    tdir = teacher_dir(Path(args.out), key)
    device = resolve_device(cfg.device)
    task = build_task(cfg, data_dir, Path(args.out) / "cache")
    teacher = task.load(model_path(Path(args.out), key))[0].to(device)
    if args.recompute:
        ranking_path(tdir, cfg.ranking).unlink(missing_ok=True)
    result = load_or_rank(task, teacher, tdir, cfg.ranking, Precision.create(cfg.precision, device), device,
                          experiment=cfg.name, flops_of=forward_flops(teacher))
    print(f"teacher {cfg.teacher.model} ({tdir}): {len(result['ranked'])} layers ranked by {result['by']} "
          f"on {result['samples']} training samples")
    print(format_ranking(result["ranked"], result["by"]))
    made = "reused the stored ranking, which took" if result["reused"] else "took"
    print(f"ranking cost: {made} {result['seconds']:.1f} s; this command {time.perf_counter() - t0:.1f} s; "
          f"stored in {result['path']}")
    student = _models_of(args.target, args.overrides)[1][2]
    s = len(candidate_layers(student))
    print(f"pairs: auto for this student ({s} layers) distils teacher layers "
          f"{sorted(r['index'] for r in result['ranked'][:s])}")
    return 0


def cmd_cache(args) -> int:
    from leankd.distill.cache import list_caches, remove_cache

    root = Path(args.out) / "cache" / "teacher"
    if args.action == "rm":
        if not args.names:
            raise ConfigError("config error: `leankd cache rm` needs the name(s) of caches to remove "
                              "(see `leankd cache ls`)")
        for name in args.names:
            print(f"removed {name}: {remove_cache(root, name) / 2**20:.1f} MiB freed")
        return 0
    caches = list_caches(root)
    if not caches:
        print(f"no teacher caches under {root}")
        return 0
    print(f"{'name':<14} {'valid':<6} {'MiB':>8}  {'views':>5}  {'precision':<9} {'dtype':<8} created")
    for c in caches:
        key = c["key"] or {}
        print(f"{c['name']:<14} {'yes' if c['valid'] else 'NO':<6} {c['bytes'] / 2**20:>8.2f}  "
              f"{key.get('views', '?'):>5}  {key.get('precision', '?'):<9} {key.get('dtype', '?'):<8} "
              f"{c['created_at'] or '?'}")
    print(f"{len(caches)} cache(s), {sum(c['bytes'] for c in caches) / 2**20:.1f} MiB under {root}")
    return 0


def cmd_plan(args) -> int:
    from leankd.config import load_config
    from leankd.data.files import resolve_data_dir
    from leankd.experiment.projection import format_projection, project_config
    from leankd.experiment.smoke import local_overrides

    if args.steps < 1 or args.gpu_util > 1:  # float flags are finite and > 0 (main)
        raise ConfigError("config error: --steps must be >= 1 and --gpu-util at most 1 (the sustained fraction)")
    overrides, said = local_overrides(args.config, args.overrides)
    cfg = load_config(args.config, overrides)
    proj = project_config(cfg, resolve_data_dir(args.data_dir, cfg.data), args.steps)
    print(f"{args.config}: {said}")
    print(format_projection(proj, args.gpu_tflops, args.gpu_util, args.gpu_mem_gb))
    return 0


def cmd_export(args) -> int:
    from leankd.report.export import export_mlflow  # imports mlflow (seconds) only when exporting

    if Path(args.out).is_file():
        raise ConfigError(f"config error: --out '{args.out}' is a file, not a folder; give the folder holding "
                          "results.db")
    for name, logged, skipped in export_mlflow(Path(args.out) / "results.db", args.mlflow, args.experiment):
        print(f"{name}: {logged} run(s) logged to MLflow at {args.mlflow}, {skipped} already there")
    return 0


def _add_export_parser(sub) -> None:
    ex = sub.add_parser("export", help="log every stored row to MLflow (a run each, nested under a parent run per "
                        "experiment; reruns add only new rows)")
    ex.add_argument("--mlflow", required=True, metavar="URI", help="MLflow tracking URI, e.g. "
                    "sqlite:///runs/mlflow.db (offline) or http://host:5000; needs `pip install -e \".[mlflow]\"`")
    ex.add_argument("--out", default="runs", help="folder holding results.db and report.md (default: runs)")
    ex.add_argument("--experiment", default=None, help="only this experiment (default: all)")
    ex.set_defaults(func=cmd_export)


def _add_executor_args(r) -> None:
    """`leankd run --executor ...`: where its jobs run (built by leankd.experiment.executors.from_args)."""
    r.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local", help="local: a "
                   "child process per job, one at a time (default); slurm: each wave's jobs at once as SLURM jobs "
                   "(submitit, `pip install 'leankd[cluster]'`); submitit-local: the same as processes here")
    r.add_argument("--executor-folder", default=None, help="submitit's job files and logs (default: OUT/.submitit)")
    for flag, kind, what in [("partition", str, "SLURM partition"), ("time", int, "time limit per job, minutes "
                             "(default: 60)"), ("gpus", int, "GPUs per job (default: 0)"), ("cpus", int, "CPUs per "
                             "job"), ("mem", float, "memory per job, GB"), ("account", str, "SLURM account"),
                             ("qos", str, "SLURM quality of service")]:
        r.add_argument(f"--slurm-{flag}", type=kind, default={"time": 60, "gpus": 0}.get(flag), help=what)


def _add_plan_parser(sub) -> None:
    pl = sub.add_parser("plan", help="project a config's full run (FLOPs, time, memory per job) from a few steps "
                        "measured here")
    pl.add_argument("config", help="experiment YAML, e.g. configs/paper/cifar10-resnet50-resnet18.yaml")
    pl.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.task=sst2")
    pl.add_argument("--steps", type=int, default=5, help="training steps timed per job, after 1 warm-up (default 5)")
    pl.add_argument("--gpu-tflops", type=float, default=None, help="also project the time on a GPU of this "
                    "throughput (TFLOP/s; see --gpu-util)")
    pl.add_argument("--gpu-util", type=float, default=1.0, help="fraction of --gpu-tflops sustained in training "
                    "(default 1: the figure is taken as sustained; e.g. 0.4 for a datasheet peak)")
    pl.add_argument("--gpu-mem-gb", type=float, default=None, help="say which jobs fit in a GPU of this memory")
    pl.add_argument("--data-dir", default=None, help="data directory (default: $LEANKD_DATA_DIR)")
    pl.set_defaults(func=cmd_plan)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="leankd", description="Knowledge distillation at minimal compute, "
                                "with an honest cost ledger.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (implies --verbose)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run an experiment: teacher once, then every arm x seed")
    r.add_argument("config", help="experiment YAML, e.g. configs/demo/cifar10-resnet20-resnet8.yaml")
    r.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=3 seeds=[0,1]")
    r.add_argument("--out", default="runs", help="folder for the results DB, stored teachers, configs and "
                   "reports (default: runs)")
    r.add_argument("--data-dir", default=None, help="data directory holding cifar10/ (default: $LEANKD_DATA_DIR)")
    r.add_argument("--smoke", action="store_true", help="end to end on a small slice (a few dozen samples, 1 epoch, "
                   "1 seed; precision and offline hub names made runnable here; name suffixed -smoke)")
    _add_executor_args(r)
    r.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="print and write the comparison table (Markdown, or JSON)")
    rep.add_argument("--out", default="runs", help="folder holding results.db (default: runs)")
    rep.add_argument("--experiment", default=None, help="only this experiment (default: all)")
    rep.add_argument("--json", action="store_true", help="print the table rows as JSON for scripts")
    rep.set_defaults(func=cmd_report)

    e = sub.add_parser("eval", help="re-evaluate a saved model (a .safetensors written by leankd run)")
    e.add_argument("checkpoint", help="path to a saved student or teacher .safetensors")
    e.add_argument("--data-dir", default=None, help="data directory (default: $LEANKD_DATA_DIR)")
    e.add_argument("--split", default=None, help="split to score (default: the task's report split, test or dev)")
    e.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default: 256)")
    e.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"], help="default: fp32")
    e.set_defaults(func=cmd_eval)

    ly = sub.add_parser("layers", help="list a model's candidate layers, or rank a teacher's by importance")
    ly.add_argument("target", help="a model name (resnet20, minilm-l6, bert-base, a local HF folder, your own "
                    "FILE.py:FUNCTION) or an experiment YAML")
    ly.add_argument("overrides", nargs="*", help="dotted key=value overrides for a config")
    ly.add_argument("--rank", action="store_true", help="score every teacher layer (ablation, block influence, "
                    "probe accuracy) on a calibration sample; trains the teacher first if none is stored")
    ly.add_argument("--out", default="runs", help="folder with stored teachers and rankings (default: runs)")
    ly.add_argument("--data-dir", default=None, help="data directory (default: $LEANKD_DATA_DIR)")
    ly.add_argument("--recompute", action="store_true", help="rank again even if a ranking is stored")
    ly.set_defaults(func=cmd_layers)

    ca = sub.add_parser("cache", help="list or remove teacher-output caches (with their sizes)")
    ca.add_argument("action", choices=["ls", "rm"], help="ls: list caches; rm NAME...: remove them")
    ca.add_argument("names", nargs="*", help="for rm: cache names as `leankd cache ls` prints them")
    ca.add_argument("--out", default="runs", help="folder holding cache/teacher/ (default: runs)")
    ca.set_defaults(func=cmd_cache)
    _add_export_parser(sub)
    _add_plan_parser(sub)
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `key=value` overrides may also follow a flag (`run c.yaml --smoke device=cuda`), which
    argparse alone refuses once a flag has ended the positionals."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    from leankd.errors import check_positive, raise_on_signals

    args = parse(argv)
    setup_logging(logging.DEBUG if args.verbose or args.debug else logging.INFO)
    restore = raise_on_signals()  # Ctrl-C, SIGTERM: one line saying what a rerun resumes from, exit 130 / 143
    try:
        check_positive({f"--{k.replace('_', '-')}": v for k, v in vars(args).items() if isinstance(v, float)})
        return args.func(args)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (errors.Interrupted): not an error, never a traceback
        where = getattr(err, "where", None) or ("its first unfinished job" if args.command == "run" else "the start")
        print(f"interrupted; rerun the same command to resume from {where}", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    except UserError as err:
        if args.debug:
            raise
        print(str(err), file=sys.stderr)
        return EXIT_USER
    except JobFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # a bug, not the user's mistake: one line, the traceback under --debug
        if args.debug:
            raise
        print(f"internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} (rerun with "
              "--debug for the traceback, and please report it)", file=sys.stderr)
        return EXIT_FAILED
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
