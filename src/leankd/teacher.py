"""The teacher, obtained once: trained from the config or loaded from a checkpoint, then stored.

A teacher is stored under `<out>/teachers/<key>/` where `key` hashes its config and the identity of the
data it was trained and evaluated on; any later experiment with the same key reuses it without training.

    key = teacher_key(cfg, data_dir)
    if not is_stored(out_dir, key): ...train it in a child process (leankd.runner)...
    model, meta = task.load(teacher_dir(out_dir, key) / "model")
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from leankd.config import config_hash
from leankd.data.cifar10 import file_identity


class CheckpointError(ValueError):
    """A one-line, user-facing checkpoint error."""


def state_identity(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def teacher_key(cfg, data_dir: Path, module: torch.nn.Module | None = None) -> str:
    from leankd.tasks import data_identity
    ident = {"teacher": cfg.teacher.model_dump(mode="json"), "data": cfg.data.model_dump(mode="json"),
             "precision": cfg.precision, "files": data_identity(cfg, data_dir)}
    if cfg.teacher.checkpoint:
        if not Path(cfg.teacher.checkpoint).is_file():
            raise CheckpointError(f"checkpoint error: teacher.checkpoint '{cfg.teacher.checkpoint}' not found")
        ident["checkpoint"] = file_identity(Path(cfg.teacher.checkpoint))
    if module is not None:  # a user's trained module: identified by its class and weights
        ident["module"] = [type(module).__qualname__, state_identity(module)]
    return config_hash(ident)


def teacher_dir(out_dir: Path, key: str) -> Path:
    return Path(out_dir) / "teachers" / key


def is_stored(out_dir: Path, key: str) -> bool:
    d = teacher_dir(out_dir, key)
    return (d / "model.json").is_file() and (d / "row.json").is_file()  # both written last


def save_model(model: torch.nn.Module, path: Path, meta: dict) -> None:
    """Weights as safetensors plus a JSON sidecar (model name, classes, data, arm...) for `leankd eval`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))


def load_weights(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load safetensors or a `torch.save`d state_dict (weights_only=True: never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint error: '{path}' not found")
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True,
                                                                                       map_location="cpu")
    except Exception as err:  # corrupt file: report the file and the cause in one line
        raise CheckpointError(f"checkpoint error: cannot read '{path}': {str(err).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint error: '{path}' does not fit {type(model).__name__}: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}; check teacher.model")
    return model
