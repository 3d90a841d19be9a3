"""Your own images: `<root>/train/<class>/*.png|jpg|jpeg` and `<root>/test/<class>/...` (or `val/`).

Class names are the train folder's subfolders, sorted (label 0 is the first). Metrics are on `test/`, or on `val/`
when there is no `test/`; with both, `val/` is the validation split (`extra.val_metrics`, as `data.val_size` carves
for CIFAR-10). Files of other types and hidden files or folders are ignored. Images are decoded once (Pillow, to RGB)
into a uint8 N x H x W x 3 array per split, cached as `<out>/cache/images/<key>.npz` (the CIFAR-10 npz layout) and
served by the same `VisionLoader` as CIFAR-10, normalised by the train split's per-channel mean and std.

    data = imagefolder_splits(data_dir, DataConfig(dataset="imagefolder", root="pets"), Path("runs/cache"))
    loader = VisionLoader(*data.splits["train"], batch_size=128, norm=data.norm)

Sizes: with `data.image_size=N` every image is resized to N x N (scaled, then centre-cropped to square: aspect kept,
`PIL.ImageOps.fit`); without it every image must already be one size. The cache key is each file's relative path,
size in bytes and modification time (a stat per file, no reading), plus the size rule; rows and teachers are keyed
by the files' content instead (`folder_identity`: a sha256 of every file).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leankd.data.cifar10 import fixed_splits
from leankd.data.files import resolve_path
from leankd.errors import DataError

log = logging.getLogger(__name__)
EXTENSIONS = (".png", ".jpg", ".jpeg")
LAYOUT = "<root>/train/<class>/*.png|jpg|jpeg and <root>/test/<class>/... (or val/)"
CACHE_VERSION = 1  # bump when the decoded cache's content changes for the same files


@dataclass
class Listing:
    """One split folder: its image files (class-major, sorted) and their class ids (into the train classes)."""
    folder: Path
    files: list[Path]
    labels: np.ndarray


@dataclass
class ImageFolder:
    classes: list[str]
    splits: dict            # train / val / test -> (images uint8 N x 3 x H x W, labels int64 N), val may be None
    norm: tuple             # the train split's per-channel (mean, std) of pixels / 255


def _images_of(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if not p.name.startswith(".") and p.suffix.lower() in EXTENSIONS]
    if not files:
        others = sum(1 for p in folder.iterdir() if not p.name.startswith("."))
        raise DataError(f"data error: class folder '{folder}' holds no .png/.jpg/.jpeg images ({others} other "
                        "entries); add its images or remove the folder")
    return sorted(files)


def _class_folders(folder: Path, split: str) -> list[str]:
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "not found"
        raise DataError(f"data error: {split} folder '{folder}' {what}; expected {LAYOUT}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"data error: '{folder}' has no class folders; put each class's images in "
                        f"{folder}/<class>/ (expected {LAYOUT})")
    return classes


def list_folders(data_dir: Path, root_value: str) -> tuple[list[str], dict[str, Listing]]:
    """(classes, {"train", "test" and maybe "val": Listing}); DataError on a missing or malformed folder."""
    root = resolve_path(data_dir, root_value)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "not found"
        raise DataError(f"data error: data.root '{root}' {what}; set data.root to the folder holding train/ and "
                        f"test/ (expected {LAYOUT})")
    classes = _class_folders(root / "train", "train")
    if len(classes) < 2:
        raise DataError(f"data error: '{root / 'train'}' has one class folder: every label is '{classes[0]}'; "
                        "distillation needs >= 2 classes (add a folder per class)")
    evals = [s for s in ("test", "val") if (root / s).exists()]
    if not evals:
        raise DataError(f"data error: '{root}' has train/ but no test/ or val/ folder to compute metrics on; "
                        f"add one (expected {LAYOUT})")
    listings = {}
    for split, folder in [("train", "train"), ("test", evals[0])] + ([("val", "val")] if len(evals) == 2 else []):
        names = _class_folders(root / folder, folder) if split != "train" else classes
        unknown = [c for c in names if c not in classes]
        if unknown:
            raise DataError(f"data error: class folder '{root / folder / unknown[0]}' has no counterpart in "
                            f"train/ (train classes: {', '.join(classes)}); add train/{unknown[0]}/ or remove it")
        per_class = [_images_of(root / folder / c) for c in names]
        labels = np.concatenate([np.full(len(f), classes.index(c), np.int64) for c, f in zip(names, per_class)])
        listings[split] = Listing(root / folder, [p for f in per_class for p in f], labels)
    return classes, listings


def _size_mismatch(first: Path, first_size: tuple, path: Path, size: tuple) -> DataError:
    return DataError(f"data error: images differ in size: '{first}' is {first_size[0]}x{first_size[1]}, '{path}' is "
                     f"{size[0]}x{size[1]}; set data.image_size=N to resize (centre crop) every image to N x N")


def _unreadable(path: Path, err: Exception) -> DataError:
    from PIL import UnidentifiedImageError

    detail = ("not an image format Pillow can identify" if isinstance(err, UnidentifiedImageError) else
              f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else 'no detail'}")
    return DataError(f"data error: '{path}' is not a readable image ({detail}); replace or remove the file")


def _open(path: Path):
    from PIL import Image

    try:
        return Image.open(path)  # reads the header only; the pixels are decoded by .convert / .load
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from None


def check_imagefolder(data_dir: Path, data_cfg) -> None:
    """The up-front check, before any work: the folder layout, every image's header (readable, and one size when
    data.image_size is unset), and data.val_size leaving training images."""
    _, listings = list_folders(data_dir, data_cfg.root)
    first = None
    for listing in listings.values():
        for path in listing.files:
            with _open(path) as im:
                size = im.size
            if first is None:
                first = (path, size)
            elif data_cfg.image_size is None and size != first[1]:
                raise _size_mismatch(*first, path, size)
    n = len(listings["train"].files)
    if data_cfg.val_size >= n or (data_cfg.val_size and "val" in listings):
        why = (f"leaves no training images ('{listings['train'].folder}' holds {n}); use a data.val_size below {n}"
               if data_cfg.val_size >= n else "carves a validation split from train/, but val/ is one already; "
               "set data.val_size=0")
        raise DataError(f"data error: data.val_size={data_cfg.val_size} {why}")


def decode(files: list[Path], size: tuple | None, resize: bool, ref: Path | None = None) -> np.ndarray:
    """uint8 N x H x W x 3 RGB; `size` (W, H): every image's (resized to it when `resize`, else refused when it
    differs; `ref` is the image that has it); None: the first image's."""
    from PIL import Image, ImageOps

    out = None
    for i, path in enumerate(files):
        with _open(path) as im:
            try:
                rgb = im.convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError) as err:  # truncated or corrupt pixel data
                raise _unreadable(path, err) from None
        if size is None:
            size, ref = rgb.size, path
        if rgb.size != size:
            if not resize:
                raise _size_mismatch(ref, size, path, rgb.size)
            rgb = ImageOps.fit(rgb, size, Image.Resampling.BILINEAR)
        if out is None:
            out = np.empty((len(files), size[1], size[0], 3), np.uint8)
        out[i] = np.asarray(rgb)
    return out


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple, tuple]:
    """Per-channel (mean, std) of pixels / 255 over N x H x W x 3 uint8 images, in chunks (no float copy of all)."""
    total, squares = np.zeros(3), np.zeros(3)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].reshape(-1, 3).astype(np.float64) / 255
        total += x.sum(0)
        squares += (x * x).sum(0)
    n = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean * mean, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def cache_key(listing: Listing, size: tuple | None, resize: bool) -> str:
    """The decoded cache's key: every file's relative path, byte size and modification time, and the size rule."""
    stats = [(str(p.relative_to(listing.folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in listing.files]
    blob = json.dumps([CACHE_VERSION, size, resize, stats])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_split(listing: Listing, size: tuple | None, resize: bool, cache_dir: Path | None,
               ref: Path | None = None) -> tuple[np.ndarray, tuple]:
    """The split's decoded images (N x H x W x 3) and their (mean, std), from `<cache_dir>/images/<key>.npz` when it
    is there, else decoded and (with a cache_dir) written there."""
    path = Path(cache_dir) / "images" / f"{cache_key(listing, size, resize)}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["images"], (tuple(z["mean"].tolist()), tuple(z["std"].tolist()))
    log.info("decoding %d images of %s%s", len(listing.files), listing.folder, f" (cached as {path})" if path else "")
    images = decode(listing.files, size, resize, ref)
    stats = channel_stats(images)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images, labels=listing.labels, mean=stats[0], std=stats[1])  # uncompressed: disk speed
        tmp.replace(path)  # atomic: a crash (or a job decoding beside this one) never leaves a half-written cache
    return images, stats


def imagefolder_splits(data_dir: Path, data_cfg, cache_dir: Path | None = None) -> ImageFolder:
    """train / val / test as `fixed_splits` makes them for CIFAR-10 (data.train_limit, test_limit, val_size apply),
    NCHW uint8, and the train split's normalisation."""
    classes, listings = list_folders(data_dir, data_cfg.root)
    resize = data_cfg.image_size is not None
    size = (data_cfg.image_size,) * 2 if resize else None
    train, norm = load_split(listings["train"], size, resize, cache_dir)
    size = size or (train.shape[2], train.shape[1])  # the other splits: the train images' size
    ref = listings["train"].files[0]
    test = load_split(listings["test"], size, resize, cache_dir, ref)[0]
    nchw = [np.ascontiguousarray(x.transpose(0, 3, 1, 2)) for x in (train, test)]
    splits = fixed_splits(nchw[0], listings["train"].labels, nchw[1], listings["test"].labels, data_cfg)
    if "val" in listings:
        val = load_split(listings["val"], size, resize, cache_dir, ref)[0]
        splits["val"] = (np.ascontiguousarray(val.transpose(0, 3, 1, 2)), listings["val"].labels)
    return ImageFolder(classes, splits, norm)


def folder_identity(data_dir: Path, root_value: str) -> list[str]:
    """Content hashes (16 hex) of each split folder: every image's relative path and sha256, in order."""
    _, listings = list_folders(data_dir, root_value)
    out = []
    for listing in listings.values():
        h = hashlib.sha256()
        for path in listing.files:
            h.update(str(path.relative_to(listing.folder)).encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
        out.append(h.hexdigest()[:16])
    return out
