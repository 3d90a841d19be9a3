"""Stored teachers: a teacher trained (or loaded) once is kept under `<out>/teachers/<key>/` and reused by any
experiment with the same key (its config, the identity of its data files, its checkpoint or module weights).

    key = teacher_key(cfg, data_identity(cfg, data_dir))
    if not is_stored(out_dir, key): ...run the teacher job...
    teacher_weights(out_dir, key)      # hash of the stored weights: part of every student row's identity
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from leankd.config import config_hash
from leankd.data.files import file_identity
from leankd.errors import CheckpointError, TrainingError
from leankd.models.checkpoint import state_identity
from leankd.tasks.metrics import below_min


def teacher_key(cfg, data_files: list[str], module: torch.nn.Module | None = None) -> str:
    """Hash of the teacher's settings, the data files' identities, and its checkpoint file or module weights."""
    # precision, shard: how it distils; min_metric: a check on it. None is what the teacher is.
    settings = cfg.teacher.model_dump(mode="json", exclude={"precision", "min_metric", "shard"})
    ident = {"teacher": settings, "data": cfg.data.model_dump(mode="json"),
             "precision": cfg.precision, "files": data_files}
    if cfg.teacher.checkpoint:
        if not Path(cfg.teacher.checkpoint).is_file():
            raise CheckpointError(f"checkpoint error: teacher.checkpoint '{cfg.teacher.checkpoint}' not found")
        ident["checkpoint"] = file_identity(Path(cfg.teacher.checkpoint))
    if module is not None:  # a user's trained module: identified by its class and weights
        ident["module"] = [type(module).__qualname__, state_identity(module)]
    return config_hash(ident)


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
    (teacher_dir(out_dir, key) / "row.json").write_text(json.dumps(row))


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
