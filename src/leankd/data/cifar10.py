"""CIFAR-10 from a data directory: `<data_dir>/cifar10/cifar10_{train,test}.npz`.

Each file holds uint8 `images` (N x 32 x 32 x 3, HWC RGB) and int64 `labels` (N,). The data directory comes
from `--data-dir` or the `LEANKD_DATA_DIR` environment variable. Images stay uint8 in memory (150 MB for the
full train split rather than 600 MB as float32) and are normalised per batch.

    splits = cifar10_splits(data_dir, DataConfig(train_limit=2000, test_limit=1000))
    loader = VisionLoader(*splits["train"], batch_size=128, seed=0, augment=True, shuffle=True)
    for x, y in loader.epoch(0): ...
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from leankd.data import randomness as rnd
from leankd.data.files import check_classes
from leankd.data.images import MEAN, STD, VisionLoader, augment, normalise  # noqa: F401  (the loader, re-exported)
from leankd.errors import DataError, not_found

LAYOUT = "<data_dir>/cifar10/cifar10_{train,test}.npz with uint8 'images' (N,32,32,3) and int64 'labels' (N,)"


def cifar10_file(data_dir: Path, split: str) -> Path:
    return data_dir / "cifar10" / f"cifar10_{split}.npz"


def _open(path: Path) -> np.lib.npyio.NpzFile:
    if not path.is_file():
        raise DataError(f"data error: CIFAR-10 file '{path}' {not_found(path)}; expected {LAYOUT}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"data error: '{path}' is not an .npz archive (np.savez_compressed writes one); "
                        f"expected {LAYOUT}")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"data error: '{path}' is not a readable .npz ({err}); expected {LAYOUT}") from None
    missing = {"images", "labels"} - set(z.files)
    if missing:
        z.close()
        raise DataError(f"data error: '{path}' lacks {sorted(missing)} (it holds {sorted(z.files)}); "
                        f"expected {LAYOUT}")
    return z


def _read(z, path: Path, name: str, header_only: bool = False):
    """An array of the archive, or (header_only) its (shape, dtype) without decompressing the data."""
    try:
        if not header_only:
            return z[name]
        with z.zip.open(f"{name}.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            return shape, dtype
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"data error: '{path}' member '{name}' is not readable ({err}); expected {LAYOUT}") from None


def _check(path: Path, shape: tuple, dtype: np.dtype, labels: np.ndarray) -> None:
    """The one check of a CIFAR-10 file's arrays: image shape and dtype, label dtype, count and range."""
    if dtype != np.uint8 or len(shape) != 4 or tuple(shape[1:]) != (32, 32, 3):
        raise DataError(f"data error: '{path}' images are {dtype} {tuple(shape)}; expected {LAYOUT}")
    if shape[0] == 0:
        raise DataError(f"data error: '{path}' holds no images; expected {LAYOUT}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"data error: '{path}' labels are {labels.dtype}, not integers; store the class "
                        f"indices 0..9 as int64 (expected {LAYOUT})")
    if labels.shape != (shape[0],):
        raise DataError(f"data error: '{path}' has {shape[0]} images but labels of shape {labels.shape}; "
                        f"expected one label per image")
    bad = labels[(labels < 0) | (labels > 9)]
    if len(bad):
        raise DataError(f"data error: '{path}' has label {bad[0]} ({len(bad)} label(s) outside 0..9, first at "
                        f"index {int(np.flatnonzero((labels < 0) | (labels > 9))[0])}); CIFAR-10 labels are 0..9")


def load_cifar10(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 N x 3 x 32 x 32, labels int64 N); raises DataError on a missing/bad file."""
    path = cifar10_file(data_dir, split)
    with _open(path) as z:
        images, labels = _read(z, path, "images"), _read(z, path, "labels")
    _check(path, images.shape, images.dtype, labels)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels.astype(np.int64)


def check_cifar10(data_dir: Path, data_cfg=None) -> None:
    """Cheap up-front check (images' header only, labels read): both files hold the expected arrays, and
    data.val_size leaves training images of more than one class."""
    for split in ("train", "test"):
        path = cifar10_file(data_dir, split)
        with _open(path) as z:
            shape, dtype = _read(z, path, "images", header_only=True)
            labels = _read(z, path, "labels")
            _check(path, shape, dtype, labels)
        if split == "train" and data_cfg is not None and data_cfg.val_size >= shape[0]:
            raise DataError(f"data error: data.val_size={data_cfg.val_size} leaves no training images ('{path}' "
                            f"holds {shape[0]}); use a data.val_size below {shape[0]}")
        if split == "train" and data_cfg is not None:  # what is trained on: the slice fixed_splits takes
            trained = fixed_splits(labels, labels, labels[:0], labels[:0], data_cfg)["train"][1]
            sliced = data_cfg.train_limit or data_cfg.val_size
            check_classes(trained, path, f" (the {len(trained)} trained on: data.train_limit, val_size)" * bool(sliced))


def cifar10_splits(data_dir: Path, data_cfg) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """train / val / test splits (see `fixed_splits`)."""
    return fixed_splits(*load_cifar10(data_dir, "train"), *load_cifar10(data_dir, "test"), data_cfg)


def fixed_splits(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray,
                 data_cfg) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """train / val / test from a train and a test set. Slices are fixed (seed-independent) so every arm sees the
    same data: train sets are class-major, so slices come from a fixed shuffle, val first, then train."""
    order = rnd.shuffle_order(len(x), seed=12345, epoch=0)
    val_idx = order[: data_cfg.val_size]
    rest = order[data_cfg.val_size:]
    train_idx = np.sort(rest[: data_cfg.train_limit] if data_cfg.train_limit else rest)
    if data_cfg.test_limit:
        test_idx = np.sort(rnd.shuffle_order(len(xt), seed=54321, epoch=0)[: data_cfg.test_limit])
        xt, yt = xt[test_idx], yt[test_idx]
    val = (x[np.sort(val_idx)], y[np.sort(val_idx)]) if len(val_idx) else None
    return {"train": (x[train_idx], y[train_idx]), "val": val, "test": (xt, yt)}
