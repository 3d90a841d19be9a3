"""A teacher's layer ranking: scored once on a calibration sample of the training data, stored beside the
teacher, reused by every `pairs: auto` arm and by `leankd layers --rank`.

    result = load_or_rank(task, teacher, teacher_dir, cfg.ranking, precision, device, experiment=cfg.name)
    result["ranked"][0]   # {"rank": 1, "index": 4, "name": "layer2.1", "ablation": ..., "influence": ..., "probe": ...}

Stored as `<teacher dir>/ranking-<hash of the ranking settings>.json` with its own cost (`seconds`, and `flops`
when counted) and the experiment it was made for (whose `auto` rows that read it share that cost; later
experiments reuse it for free).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from leankd.batching import to_device
from leankd.config import config_hash
from leankd.distill import importance, losses
from leankd.distill.taps import candidate_layers

log = logging.getLogger(__name__)


def ranking_path(tdir: Path, rcfg) -> Path:
    return Path(tdir) / f"ranking-{config_hash(rcfg.model_dump(mode='json'))}.json"


def rank_teacher(task, teacher: torch.nn.Module, rcfg, precision, device: torch.device,
                 flops_of: Callable | None = None) -> dict:
    """Score every candidate layer of `teacher` on `rcfg.samples` training samples; nothing is stored.
    `flops_of(x)`: FLOPs of one teacher forward on batch x (counted after the timed ranking: the ranking runs
    1 + len(layers) full forwards per batch, an ablated layer still computing before it is replaced)."""
    t0 = time.perf_counter()
    names = candidate_layers(teacher)
    loader = task.calibration_loader(rcfg.samples, rcfg.batch_size, rcfg.seed)
    batches = [(to_device(x, device), y.to(device)) for x, y in loader.epoch(0)]

    def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return losses.label_loss(logits, y, task.is_regression)

    scores = importance.layer_scores(teacher, names, batches, task_loss, autocast=precision.autocast)
    for i, s in enumerate(scores):
        s["index"] = i
    seconds = time.perf_counter() - t0
    flops = (1 + len(names)) * sum(flops_of(x) for x, _ in batches) if flops_of else None
    return {"by": rcfg.by, "samples": loader.num_samples, "seed": rcfg.seed, "precision": precision.name,
            "ranked": importance.rank(scores, rcfg.by), "seconds": seconds, "flops": flops}


def load_or_rank(task, teacher: torch.nn.Module, tdir: Path, rcfg, precision, device: torch.device,
                 experiment: str | None = None, flops_of: Callable | None = None) -> dict:
    """The stored ranking for these settings, or a new one made for `experiment` (then stored). `reused`
    says which; `experiment` in the result names the experiment it was made for."""
    path = ranking_path(tdir, rcfg)
    if path.is_file():
        result = json.loads(path.read_text())
        log.info("reusing the stored layer ranking %s (cost %.1f s when made)", path, result["seconds"])
        return {**result, "path": str(path), "reused": True}
    result = {**rank_teacher(task, teacher, rcfg, precision, device, flops_of), "experiment": experiment}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)  # atomic: an interrupted ranking never leaves a half-written file
    log.info("ranked %d teacher layers by %s in %.1f s; stored %s", len(result["ranked"]), rcfg.by,
             result["seconds"], path)
    return {**result, "path": str(path), "reused": False}
