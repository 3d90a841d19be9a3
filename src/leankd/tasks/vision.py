"""Image classification with the built-in CIFAR ResNets (metrics on the test split): CIFAR-10, or a folder of your
own images (`data.dataset: imagefolder`, data/imagefolder.py), both served by `VisionLoader`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from leankd.data.cifar10 import cifar10_splits
from leankd.data.images import FORMATS, MEAN, STD, VisionLoader
from leankd.models import create_model
from leankd.models.checkpoint import load_weights, save_model
from leankd.tasks.metrics import classification_metrics


class VisionTask:
    name, eval_split, is_regression, num_outputs = "cifar10", "test", False, 10
    extra_eval_splits: list[str] = []
    norm = (MEAN, STD)  # per-channel (mean, std) the images are normalised by

    def __init__(self, cfg, data_dir: Path, cache_dir: Path | None = None):
        self.cfg = cfg
        if cfg.data.dataset == "imagefolder":
            from leankd.data.files import resolve_path
            from leankd.data.imagefolder import imagefolder_splits

            data = imagefolder_splits(Path(data_dir), cfg.data, cache_dir)  # decoded once, then read from the cache
            self.splits, self.norm, self.num_outputs = data.splits, data.norm, len(data.classes)
            self.name = f"imagefolder-{resolve_path(Path(data_dir), cfg.data.root).resolve().name}"
        else:
            self.splits = cifar10_splits(Path(data_dir), cfg.data)

    def train_loader(self, batch_size: int, seed: int, views: int = 1) -> VisionLoader:
        """Shuffled, augmented batches; augmentation views are a pure function of (cache.seed, view, index)."""
        return VisionLoader(*self.splits["train"], batch_size=batch_size, seed=seed, augment=self.cfg.data.augment,
                            shuffle=True, views=views, aug_seed=self.cfg.cache.seed, norm=self.norm,
                            memory_format=self.cfg.speed.memory_format)

    def num_train(self) -> int:
        return len(self.splits["train"][1])

    def eval_loader(self, split: str, batch_size: int) -> VisionLoader | None:
        data = self.splits.get(split)
        return VisionLoader(*data, batch_size=batch_size, norm=self.norm,
                            memory_format=self.cfg.speed.memory_format) if data is not None else None

    def calibration_loader(self, n: int, batch_size: int, seed: int) -> VisionLoader:
        """A fixed random sample of n training images, not augmented (for layer ranking)."""
        images, labels = self.splits["train"]
        idx = np.sort(np.random.default_rng(seed).permutation(len(labels))[:n])
        return VisionLoader(images[idx], labels[idx], batch_size=batch_size, norm=self.norm,
                            memory_format=self.cfg.speed.memory_format)

    def build_model(self, name: str, init_layers=None, teacher=None) -> torch.nn.Module:
        """The registry model `name` (init_layers apply to text students only; the config refuses them here)."""
        return create_model(name, self.num_outputs).to(memory_format=FORMATS[self.cfg.speed.memory_format])

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return classification_metrics(logits.argmax(-1), labels)

    def save(self, model: torch.nn.Module, path: Path, meta: dict) -> Path:
        path = Path(path).with_suffix(".safetensors")
        data = self.cfg.data.model_dump(mode="json")
        save_model(model, path, {**meta, "num_classes": self.num_outputs, "data": data})
        return path

    @staticmethod
    def load(path: Path) -> tuple[torch.nn.Module, dict]:
        """A model saved by `save` (safetensors + JSON sidecar)."""
        path = Path(path).with_suffix(".safetensors")
        meta = json.loads(path.with_suffix(".json").read_text())
        model = load_weights(create_model(meta["model"], meta["num_classes"]), path)
        return model.to(memory_format=torch.channels_last), meta
