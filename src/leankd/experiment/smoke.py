"""Running a config past this machine here: what `--smoke` (and `leankd plan`) change, as plain config overrides.

    overrides, said = smoke_overrides("configs/paper/cifar10-resnet50-resnet18.yaml", user_overrides)
    cfg = load_config(path, overrides)        # the normal config path: nothing else differs from a real run
    overrides, said = local_overrides(path, user_overrides)   # only what cannot run here (precision, hub names)

`local_overrides` swaps what this machine cannot run: a precision it refuses (fp16 on CPU) becomes `auto`, and a
Hugging Face hub name that cannot be reached offline (`bert-large-uncased`) becomes leankd's from-config shape of
the same architecture (`bert-large`: random init). `smoke_overrides` adds a small slice on top: a few dozen
samples, one epoch, one seed, small batches (text: max_length 16), the chance-teacher guard off (a one-epoch
teacher on 32 images is at chance) and the experiment name suffixed `-smoke`, so its rows never mix with real
ones. The caller's own overrides win over the smoke values (the name suffix always applies).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from leankd.config import ExperimentConfig, parse_overrides
from leankd.device import resolve_device
from leankd.errors import ConfigError
from leankd.models.text import BERT_SHAPES, MINILM, hub_reachable
from leankd.precision import resolve

SMOKE_SLICE = {  # dataset -> (train samples, eval samples, batch size, extra overrides)
    "cifar10": (32, 16, 8, {}),
    "glue": (8, 8, 4, {"data.max_length": 16}),
}
SMOKE_SLICE.update(imagefolder=SMOKE_SLICE["cifar10"], textfile=SMOKE_SLICE["glue"])  # your own data: the same


def _default(key: str) -> Any:
    """The config's default for a dotted key (None for one it does not know)."""
    model: Any = ExperimentConfig
    for part in key.split("."):
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) \
            else field.default
    return model


class _Tree:
    """The config as written (YAML file + the caller's overrides), read by dotted key before validation."""

    def __init__(self, path: str | Path, overrides: list[str]):
        try:
            self.tree = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            self.tree = None  # load_config reports the file's problem in its own words
        self.stem = Path(path).stem
        self.user = dict(parse_overrides(list(overrides)))

    @property
    def readable(self) -> bool:
        return isinstance(self.tree, dict)

    def get(self, key: str) -> Any:
        if key in self.user:
            return self.user[key]
        node: Any = self.tree
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return self.stem if key == "name" else _default(key)
            node = node[part]
        return node


def _offline_shape(name: str) -> str | None:
    """`bert-large` for `bert-large-uncased` (and -cased) when the hub cannot be reached; None when `name` runs
    here as it is (a local shape, MiniLM, a local folder, a reachable hub) or has no from-config twin."""
    if name in BERT_SHAPES or name == MINILM or Path(name).exists():
        return None
    twin = re.sub(r"-(un)?cased$", "", name.split("/")[-1])
    if twin not in BERT_SHAPES or hub_reachable():
        return None
    return twin


def _local(t: _Tree) -> list[tuple[str, Any, str]]:
    """(key, new value, why) for what this machine cannot run as written."""
    out = []
    precision, device = t.get("precision"), t.get("device")
    try:
        resolve(str(precision), resolve_device(str(device)))
    except ConfigError:
        out.append(("precision", "auto", f"{precision} cannot run on {resolve_device(str(device)).type}"))
    if t.get("data.dataset") in ("glue", "textfile"):
        for key in ("teacher.model", "student.model"):
            twin = _offline_shape(str(t.get(key)))
            if twin:
                out.append((key, twin, "hub unreachable offline: leankd's from-config shape, random init"))
    return out


def _smoke(t: _Tree) -> list[tuple[str, Any, str]]:
    """(key, new value, why) for the smoke slice of this config."""
    dataset = t.get("data.dataset") if t.get("data.dataset") in SMOKE_SLICE else "cifar10"
    n_train, n_eval, batch, extra = SMOKE_SLICE[dataset]
    seeds = t.get("seeds") if isinstance(t.get("seeds"), list) and t.get("seeds") else [0]
    out = [("data.train_limit", n_train, "slice"), ("data.test_limit", n_eval, "slice"),
           ("teacher.train.epochs", 1, "slice"), ("train.epochs", 1, "slice"),
           ("teacher.train.batch_size", batch, "slice"), ("train.batch_size", batch, "slice"),
           ("seeds", seeds[:1], "slice"), ("metering.latency_warmup", 1, "slice"),
           ("guard.refuse_chance_teacher", False, "a one-epoch teacher on a slice is at chance"),
           *((k, v, "slice") for k, v in extra.items())]
    if t.get("teacher.min_metric") is not None:
        out.append(("teacher.min_metric", None, "a one-epoch teacher on a slice is at chance"))
    return out


def _apply(t: _Tree, changes: list[tuple[str, Any, str]], label: str) -> tuple[list[str], str]:
    """(overrides: the changes first, the caller's after them, so the caller's win; one line saying what changed)."""
    said, overrides = [], []
    for key, value, why in changes:
        if key in t.user:
            said.append(f"{key} kept at {t.user[key]!r} (your override)")
            continue
        if t.get(key) == value:
            continue
        overrides.append(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
        said.append(f"{key} {t.get(key)!r} -> {value!r}" + (f" ({why})" if why != "slice" else ""))
    return overrides, f"{label}: {'; '.join(said) if said else 'nothing (it runs here as written)'}"


def local_overrides(path: str | Path, overrides: list[str]) -> tuple[list[str], str]:
    """Overrides (before the caller's) that make `path` runnable here, and one line saying what they change."""
    t = _Tree(path, overrides)
    if not t.readable:
        return list(overrides), "unchanged"
    extra, said = _apply(t, _local(t), "changed to run here")
    return [*extra, *overrides], said


def smoke_overrides(path: str | Path, overrides: list[str]) -> tuple[list[str], str]:
    """The --smoke overrides (local ones, the slice, the `-smoke` name), the caller's in between, and one line
    saying exactly what --smoke changed."""
    t = _Tree(path, overrides)
    if not t.readable:
        return list(overrides), "--smoke changed nothing: the config could not be read"
    extra, said = _apply(t, [*_local(t), *_smoke(t)], "--smoke changed")
    name = f"{t.get('name')}-smoke"
    return [*extra, *overrides, f"name={name}"], f"{said}; name {t.get('name')!r} -> {name!r}"
