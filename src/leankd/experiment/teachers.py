"""Stored teachers: a teacher trained (or loaded) once is kept under `<out>/teachers/<key>/` and reused by any
experiment with the same key (its config, the identity of its data files, its checkpoint or module weights).

    key = teacher_key(cfg, data_identity(cfg, data_dir))
    if not is_stored(out_dir, key): ...run the teacher job...
    teacher_weights(out_dir, key)      # hash of the stored weights: part of every student row's identity
    check_stored(out_dir, key)         # CheckpointError when a stored file no longer matches its sha256
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from leankd.config import config_hash
from leankd.data.files import checksum_problem, checksums, file_identity
from leankd.errors import CheckpointError, TrainingError, not_found
from leankd.models.checkpoint import state_identity
from leankd.models.user import model_source
from leankd.tasks.metrics import below_min


def teacher_key(cfg, data_files: list[str], module: torch.nn.Module | None = None) -> str:
    """Hash of the teacher's settings, the data files' identities, and its checkpoint file or module weights."""
    # precision, shard: how it distils; min_metric: a check on it. None is what the teacher is.
    settings = cfg.teacher.model_dump(mode="json", exclude={"precision", "min_metric", "shard"})
    ident = {"teacher": settings, "data": cfg.data.settings(), "precision": cfg.precision, "files": data_files,
             **({"speed": cfg.speed.changed()} if cfg.speed.changed() else {})}
    if cfg.teacher.checkpoint:
        if not Path(cfg.teacher.checkpoint).is_file():
            raise CheckpointError(f"checkpoint error: teacher.checkpoint '{cfg.teacher.checkpoint}' "
                                  f"{not_found(cfg.teacher.checkpoint)}")
        ident["checkpoint"] = file_identity(Path(cfg.teacher.checkpoint))
    if module is not None:  # a user's trained module: identified by its class and weights
        ident["module"] = [type(module).__qualname__, state_identity(module)]
    source = model_source(cfg.teacher.model)
    if source is not None and source.is_file():  # a user's model file: edited code is a new teacher
        ident["model_source"] = file_identity(source)
    return config_hash(ident)


CHECKSUMS = "checksums.json"  # {file: {sha256, bytes}} of a stored teacher's files, written before row.json


def teacher_dir(out_dir: Path, key: str) -> Path:
    return Path(out_dir) / "teachers" / key


def model_path(out_dir: Path, key: str) -> Path:
    return teacher_dir(out_dir, key) / "model"


def eval_logits_path(out_dir: Path, key: str) -> Path:
    return teacher_dir(out_dir, key) / "eval_logits.npy"


def is_stored(out_dir: Path, key: str) -> bool:
    d = teacher_dir(out_dir, key)
    return (d / "model.json").is_file() and (d / "row.json").is_file()  # both written last


def teacher_weights(out_dir: Path, key: str) -> str | None:
    """The stored teacher's weights hash (written by the job's save step); None for an older store or a teacher not
    trained yet (planning)."""
    path = teacher_dir(out_dir, key) / "model.json"
    return json.loads(path.read_text()).get("weights") if path.is_file() else None


def save_row(out_dir: Path, key: str, row: dict) -> None:
    """The teacher's row, written last (it marks the teacher stored), after the sha256 of every file the job stored."""
    folder = teacher_dir(out_dir, key)
    names = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file() and f.name != CHECKSUMS)
    (folder / CHECKSUMS).write_text(json.dumps(checksums(folder, names), indent=1))
    (folder / "row.json").write_text(json.dumps(row))


def check_stored(out_dir: Path, key: str) -> None:
    """Every file of a stored teacher as it was stored (weights, eval logits, sidecar; a flipped byte is found before
    any student reads it); a teacher stored before leankd recorded checksums is taken as it is."""
    folder = teacher_dir(out_dir, key)
    if not (folder / CHECKSUMS).is_file():
        return
    try:
        problem = checksum_problem(folder, json.loads((folder / CHECKSUMS).read_text()))
    except (ValueError, KeyError, TypeError, AttributeError):
        problem = f"{CHECKSUMS} is unreadable"
    if problem:
        raise CheckpointError(f"checkpoint error: stored teacher '{folder}' is damaged: {problem} (as recorded when "
                              "it was stored); remove that folder and rerun to train it again, or restore a backup")


def reused_row(name: str, out_dir: Path, key: str) -> dict:
    """A stored teacher's row for experiment `name`: its original training ledger, marked as reused."""
    row = json.loads((teacher_dir(out_dir, key) / "row.json").read_text())
    row["experiment"] = name
    row["extra"] = {**row["extra"], "reused_teacher": key}
    return row


def check_metric(row: dict, min_metric: float | None) -> None:
    """A stored teacher below teacher.min_metric is not used (the check ran at training time for the rest)."""
    why = below_min(row.get("metrics") or {}, min_metric)
    if why:
        raise TrainingError(f"stored teacher {row.get('config_hash')}: {why}; lower teacher.min_metric, or remove "
                            "it (its folder under --out/teachers) and rerun to train it again")
