"""Checkpoint I/O for models: safetensors weights with a JSON sidecar, loading user checkpoints, weight hashes.

    save_model(model, Path("runs/students/demo/kd-seed0.safetensors"), {"model": "resnet8", ...})
    load_weights(create_model("resnet20", 10), "teacher.safetensors")   # or a torch.save'd state dict
    state_identity(model)                                                # 16-hex hash of every tensor
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from leankd.errors import CheckpointError, not_found


def state_identity(model: torch.nn.Module) -> str:
    """sha256 (16 hex) over the names and bytes of every tensor in the state dict."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_model(model: torch.nn.Module, path: Path, meta: dict) -> None:
    """Weights as safetensors plus a JSON sidecar (model name, classes, data, arm...) for `leankd eval`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))


def load_weights(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load safetensors or a `torch.save`d state_dict (weights_only=True: never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint error: '{path}' {not_found(path)}")
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
