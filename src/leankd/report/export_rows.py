"""What one store row becomes in MLflow: params, metrics, tags, the model files to attach, the data input. Pure
functions of the row (no MLflow import); `leankd.report.export` does the logging.

    params = row_params(row)                   # {"arm": "kd", "seed": "0", "arms.kd.temperature": "4.0", ...}
    metrics, unavailable = row_metrics(row)    # {"accuracy": 0.64, ...}, {"unavailable.energy_j": "unavailable"}
    files, why = model_files(row, Path("runs"))   # [model.safetensors, model.json], None  |  [], "why not"
    data, why = row_data(row)                  # {"name", "digest", "source", "files", "context"} | None, "why not"
"""
from __future__ import annotations

import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from leankd.config import config_hash
from leankd.report.table import LEDGER_FIGURES

FIGURES = LEDGER_FIGURES + ("lost_s", "cache_share_flops")
PARAM_COLUMNS = ("experiment", "arm", "seed", "role", "model", "task", "split", "config_hash", "infer_batch_size")
# config sections that are not a row's own settings: the seed list (the row ran one seed: the `seed` param), and
# for the teacher the student side (it trains with teacher.train, reads no cache or ranking)
NOT_OWN = {"student": ("seeds",), "teacher": ("seeds", "arms", "student", "train", "cache", "ranking")}
_FIGURE_COLUMN_SOURCE = {"energy_j": "energy_source", "peak_mem_mb": "peak_mem_source"}
_MAX_VALUE = 5000  # longest param/tag value every MLflow >= 2.10 store accepts


def key(name: str) -> str:
    """An MLflow key: letters, digits, _ - . / and spaces only, at most 250 characters."""
    return re.sub(r"[^\w\-./ ]", "_", str(name))[:250]


def text(value: Any) -> str:
    out = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return out if len(out) <= _MAX_VALUE else out[:_MAX_VALUE - 12] + "[truncated]"


def ms(iso: str | None) -> int | None:
    try:
        return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else None
    except ValueError:
        return None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}; lists and scalars are leaves."""
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def number(value: Any) -> float | None:
    """A finite float, or None (missing, not a number, NaN or infinite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _source(row: dict, figure: str) -> str:
    """Where a figure came from: the row's `sources`, else its `<figure>_source` column."""
    sources = row.get("sources") or {}
    found = sources.get(figure) or (sources.get("infer_ms") if figure.startswith("infer_ms") else None)
    return str(found or row.get(_FIGURE_COLUMN_SOURCE.get(figure, "")) or "not recorded in the row")


def own_config(row: dict) -> dict:
    """The row's resolved config with only its own settings: its arm alone under `arms` (see NOT_OWN)."""
    config = dict((row.get("provenance") or {}).get("config") or {})
    for section in NOT_OWN["teacher" if row.get("role") == "teacher" else "student"]:
        config.pop(section, None)
    if isinstance(config.get("arms"), dict):
        config["arms"] = {a: s for a, s in config["arms"].items() if a == row.get("arm")}
    return config


def row_params(row: dict) -> dict[str, str]:
    """The row's own config flattened to dotted keys, then the row's identity columns (its seed among them)."""
    params = {key(k): text(v) for k, v in flatten(own_config(row)).items()}
    params.update({c: text(row[c]) for c in PARAM_COLUMNS if row.get(c) is not None})
    return params


def row_metrics(row: dict) -> tuple[dict[str, float], dict[str, str]]:
    """({metric: value}, {"unavailable.<figure>": its source}) from the row's metrics and ledger figures."""
    values: dict[str, Any] = dict(row.get("metrics") or {})
    values.update({f"val_{k}": v for k, v in ((row.get("extra") or {}).get("val_metrics") or {}).items()})
    values.update({f: row.get(f) for f in FIGURES})
    metrics, unavailable = {}, {}
    for name, value in values.items():
        found = number(value)
        if found is not None:
            metrics[key(name)] = found
        else:
            why = _source(row, name) if value is None else f"{_source(row, name)} (value: {value!r})"
            unavailable[key(f"unavailable.{name}")] = text(why)
    return metrics, unavailable


def row_tags(row: dict, store_path: Path) -> dict[str, str]:
    """Identity (store path, row id), provenance, the precision that ran, each figure's source."""
    prov = row.get("provenance") or {}
    extra = row.get("extra") or {}
    tags = {"leankd.store": str(store_path), "leankd.row_id": str(row["id"]), "leankd.role": str(row["role"])}
    tags.update({key(f"provenance.{k}"): text(v) for k, v in prov.items()
                 if k != "config" and not isinstance(v, (dict, list))})
    if prov.get("git_commit"):
        tags["mlflow.source.git.commit"] = str(prov["git_commit"])
    for k in ("precision", "precision_reason", "teacher_precision", "method"):
        if extra.get(k) is not None:
            tags[k] = text(extra[k])
    tags.update({key(f"source.{k}"): text(v) for k, v in (row.get("sources") or {}).items()})
    for column in _FIGURE_COLUMN_SOURCE.values():
        if row.get(column) is not None:
            tags[column] = text(row[column])
    return tags


def model_files(row: dict, out_dir: Path) -> tuple[list[Path], str | None]:
    """The model the row saved (a .safetensors file, or a save_pretrained folder for text) and its JSON sidecar:
    ([paths], None), or ([], why not). Looked for under `out_dir` (the store's folder: `students/<experiment>/...`
    or `teachers/<key>/...` as the runner lays them out) first, then at the path the row records."""
    recorded = (row.get("extra") or {}).get("checkpoint")
    if not recorded:
        return [], "the row records no saved model (extra.checkpoint)"
    path = Path(recorded)
    places = [out_dir.joinpath(*path.parts[-3:])] if path.parts[-3:-2] in (("students",), ("teachers",)) else []
    for found in places + [path]:
        if found.exists():
            sidecar = found.with_suffix(".json")
            return [found] + ([sidecar] if sidecar.is_file() else []), None
    return [], text(f"saved model not found at {recorded} (moved or deleted)")


def row_data(row: dict) -> tuple[dict | None, str | None]:
    """The data the row ran on, as an MLflow dataset's fields, or (None, why not)."""
    data = (row.get("extra") or {}).get("data") or {}
    if not data.get("files") or not data.get("dir"):
        return None, "the row records no data identity (extra.data; rows of an older leankd lack it)"
    evaluated = (row.get("extra") or {}).get("from_checkpoint")  # a loaded model: evaluated, not trained, on it
    return {"name": str(row.get("task") or "data"), "digest": config_hash(data["files"]), "source": data["dir"],
            "files": ",".join(map(str, data["files"])), "context": "evaluation" if evaluated else "training"}, None
