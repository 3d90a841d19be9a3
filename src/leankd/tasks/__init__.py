"""Tasks, the one domain seam: what differs between vision and text (data splits and loaders, how models are
built, saved and loaded, metrics). The jobs, loop, ledger and store are shared.

    task = build_task(cfg, data_dir, cache_dir)
    loader = task.train_loader(batch_size=128, seed=0)
    model = task.build_model(cfg.teacher.model)
"""
from __future__ import annotations

from pathlib import Path


def build_task(cfg, data_dir: Path, cache_dir: Path | None = None):
    if cfg.data.dataset == "glue":
        from leankd.tasks.text import TextTask

        return TextTask(cfg, data_dir, cache_dir)
    from leankd.tasks.vision import VisionTask

    return VisionTask(cfg, data_dir)


def data_identity(cfg, data_dir: Path) -> list[str]:
    """Identities (hashes) of the data files a teacher is trained and evaluated on."""
    from leankd.data.cifar10 import cifar10_file
    from leankd.data.files import file_identity

    if cfg.data.dataset == "glue":
        from leankd.data.glue import get_task

        t = get_task(cfg.data.task)
        return [file_identity(t.path(data_dir, s)) for s in ("train", *t.dev_splits) if t.path(data_dir, s).is_file()]
    return [file_identity(cifar10_file(data_dir, s)) for s in ("train", "test")]


def check_data(cfg, data_dir: Path) -> None:
    """Fail before any work if a data file the experiment needs is missing or malformed."""
    if cfg.data.dataset == "glue":
        from leankd.data.glue import get_task, load_glue

        for split in ("train", *get_task(cfg.data.task).dev_splits):
            load_glue(data_dir, cfg.data.task, split)
        return
    from leankd.data.cifar10 import check_cifar10

    check_cifar10(data_dir, cfg.data)
