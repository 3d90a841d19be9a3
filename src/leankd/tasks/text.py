"""Sequence classification / regression with Hugging Face encoders: GLUE (metrics on the dev split), or your own
CSV / JSON Lines / Parquet files (`data.dataset: textfile`, data/textfile.py; metrics on data.eval_file).

Saved models are `save_pretrained` folders with their tokenizer (loadable by `transformers` alone), plus a
JSON sidecar `<folder>.json` with leankd's metadata.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from leankd.data.glue import get_task, load_glue
from leankd.data.text import TextLoader, tokenize_split
from leankd.models.text import build_text_model, load_tokenizer, student_from_teacher
from leankd.tasks.metrics import classification_metrics, glue_metrics


class TextTask:
    def __init__(self, cfg, data_dir: Path, cache_dir: Path | None = None):
        self.cfg, self.data_dir, self.cache_dir = cfg, Path(data_dir), cache_dir
        if cfg.data.dataset == "textfile":
            from leankd.data.textfile import TextFiles

            self.files = TextFiles(self.data_dir, cfg.data)
            self.name = f"textfile-{self.files.paths['train'].stem}"
            self.eval_split, self.extra_eval_splits = "eval", []
            self.is_regression, self.num_outputs = False, len(self.files.label_names)
        else:
            self.glue = get_task(cfg.data.task)
            self.name = f"glue-{self.glue.name}"
            self.eval_split = self.glue.dev_splits[0]
            self.extra_eval_splits = list(self.glue.dev_splits[1:])  # MNLI: dev_mismatched beside dev_matched
            self.is_regression = self.glue.is_regression
            self.num_outputs = 1 if self.is_regression else len(self.glue.label_names)
        self.tokenizer = load_tokenizer(cfg.teacher.model)
        self._enc: dict[str, tuple] = {}

    def _load(self, split: str):
        """A split's texts and labels (a GlueSplit), from the GLUE TSVs or your own files."""
        if self.cfg.data.dataset == "textfile":
            return self.files.load(split)
        return load_glue(self.data_dir, self.glue.name, split)

    def _split(self, split: str):
        if split not in self._enc:
            data = self._load(split)
            limit = self.cfg.data.train_limit if split == "train" else self.cfg.data.test_limit
            n = min(limit or len(data), len(data))
            enc = tokenize_split(self.tokenizer, data.texts_a[:n], data.texts_b[:n] if data.texts_b else None,
                                 self.cfg.data.max_length, self.cache_dir)
            self._enc[split] = (enc, data.labels[:n])
        return self._enc[split]

    def train_loader(self, batch_size: int, seed: int, views: int = 1) -> TextLoader:
        """Shuffled, length-bucketed batches; text has one view (no augmentation), whatever `views` says."""
        enc, labels = self._split("train")
        return TextLoader(enc, labels, batch_size, seed=seed, shuffle=True, bucket=self.cfg.data.bucket,
                          pad_id=self.tokenizer.pad_token_id or 0)

    def num_train(self) -> int:
        """Training examples (train_limit applied), counted from the file without tokenising."""
        n = len(self._load("train").labels)
        return min(self.cfg.data.train_limit or n, n)

    def eval_loader(self, split: str, batch_size: int) -> TextLoader | None:
        if split == "val":
            return None  # GLUE reports on dev; no validation split is carved from train here
        enc, labels = self._split(split)
        return TextLoader(enc, labels, batch_size, bucket=True, pad_id=self.tokenizer.pad_token_id or 0)

    def calibration_loader(self, n: int, batch_size: int, seed: int) -> TextLoader:
        """A fixed random sample of n training examples (for layer ranking)."""
        enc, labels = self._split("train")
        idx = np.sort(np.random.default_rng(seed).permutation(len(labels))[:n])
        sub = {k: [v[i] for i in idx] for k, v in enc.items()}
        return TextLoader(sub, labels[idx], batch_size, bucket=True, pad_id=self.tokenizer.pad_token_id or 0)

    def build_model(self, name: str, init_layers=None, teacher=None) -> torch.nn.Module:
        """`name` from the hub/local/offline encoders, or, with init_layers, a student built from `teacher`'s
        embeddings, head and those encoder layers."""
        if init_layers is not None:
            return student_from_teacher(teacher, list(init_layers))
        return build_text_model(name, self.num_outputs)

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        return logits[:, 0] if self.is_regression else logits.argmax(-1)

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        if self.cfg.data.dataset == "textfile":
            return classification_metrics(self.predictions(logits), labels)
        return glue_metrics(self.glue.name, self.predictions(logits), labels)

    def save(self, model: torch.nn.Module, path: Path, meta: dict) -> Path:
        path = Path(path)
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        path.with_suffix(".json").write_text(json.dumps({**meta, "num_labels": self.num_outputs}, indent=2))
        return path

    @staticmethod
    def load(path: Path) -> tuple[torch.nn.Module, dict]:
        from transformers import AutoModelForSequenceClassification

        meta = json.loads(Path(path).with_suffix(".json").read_text())
        return AutoModelForSequenceClassification.from_pretrained(str(path)), meta
