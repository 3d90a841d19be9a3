"""Tasks, the one domain seam: what differs between vision and text (data splits and loaders, how models are
built, saved and loaded, metrics). The jobs, loop, ledger and store are shared.

    task = build_task(cfg, data_dir, cache_dir)
    loader = task.train_loader(batch_size=128, seed=0)
    model = task.build_model(cfg.teacher.model)

Vision: CIFAR-10 (`data.dataset: cifar10`) or a folder of your own images (`imagefolder`); text: GLUE (`glue`) or
your own CSV / JSON Lines / Parquet files (`textfile`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def build_task(cfg, data_dir: Path, cache_dir: Path | None = None):
    """The task of `cfg`; `cache_dir` (`<out>/cache`) keeps what is made from the data once: tokens, decoded
    images."""
    if cfg.data.is_text:
        from leankd.tasks.text import TextTask

        return TextTask(cfg, data_dir, cache_dir)
    from leankd.tasks.vision import VisionTask

    return VisionTask(cfg, data_dir, cache_dir)


def data_identity(cfg, data_dir: Path) -> list[str]:
    """Identities (hashes) of the data files a teacher is trained and evaluated on."""
    from leankd.data.cifar10 import cifar10_file
    from leankd.data.files import file_identity

    if cfg.data.dataset == "glue":
        from leankd.data.glue import get_task

        t = get_task(cfg.data.task)
        return [file_identity(t.path(data_dir, s)) for s in ("train", *t.dev_splits) if t.path(data_dir, s).is_file()]
    if cfg.data.dataset == "imagefolder":
        from leankd.data.imagefolder import folder_identity

        return folder_identity(data_dir, cfg.data.root)
    if cfg.data.dataset == "textfile":
        from leankd.data.textfile import SPLITS, TextFiles

        files = TextFiles(data_dir, cfg.data)
        return [file_identity(files.path(s)) for s in SPLITS]
    return [file_identity(cifar10_file(data_dir, s)) for s in ("train", "test")]


def check_data(cfg, data_dir: Path) -> None:
    """Fail before any work if a data file the experiment needs is missing or malformed."""
    if cfg.data.dataset == "glue":
        from leankd.data.files import check_classes
        from leankd.data.glue import get_task, load_glue

        task = get_task(cfg.data.task)
        for split in ("train", *task.dev_splits):
            data = load_glue(data_dir, cfg.data.task, split)
            if split == "train":  # what is trained on: its first data.train_limit examples, as the file names them
                note = f" (its first {cfg.data.train_limit}: data.train_limit)" if cfg.data.train_limit else ""
                labels = data.labels[:cfg.data.train_limit]
                labels = labels if task.is_regression else np.asarray(task.label_names)[labels]
                check_classes(labels, task.path(data_dir, split), note, task.is_regression)
        return
    if cfg.data.dataset == "imagefolder":
        from leankd.data.imagefolder import check_imagefolder

        return check_imagefolder(data_dir, cfg.data)
    if cfg.data.dataset == "textfile":
        from leankd.data.textfile import SPLITS, TextFiles

        files = TextFiles(data_dir, cfg.data)
        for split in SPLITS:
            files.load(split)  # every row read, every label known to the train file, >= 2 classes
        return
    from leankd.data.cifar10 import check_cifar10

    check_cifar10(data_dir, cfg.data)
