"""The data directory (from --data-dir or LEANKD_DATA_DIR) and the identity (content hash) of data files.

    data_dir = resolve_data_dir(args.data_dir)          # DataError naming the fix when missing
    out_dir = prepare_out_dir(args.out)                 # ConfigError when it is a file or not writable
    file_identity(data_dir / "cifar10" / "cifar10_train.npz")   # 16-hex sha256, part of row identities
    text = read_utf8(path)                              # DataError naming the line that is not UTF-8
    check_classes(train_labels, path)                   # DataError when every training label is the same
"""
from __future__ import annotations

import codecs
import hashlib
import os
from pathlib import Path

import numpy as np

from leankd.errors import ConfigError, DataError

LAYOUT = ("<data_dir>/cifar10/cifar10_{train,test}.npz (uint8 'images' (N,32,32,3), int64 'labels' (N,)) and "
          "<data_dir>/glue/<TASK>/{train,dev,test}.tsv")


def resolve_data_dir(data_dir: str | os.PathLike | None, data_cfg=None) -> Path:
    """The data directory, absolute; with `data_cfg` (the config's `data`) whose own paths are all absolute
    (data.root, data.train_file, data.eval_file), none is needed: the current directory stands in."""
    raw = data_dir or os.environ.get("LEANKD_DATA_DIR")
    if not raw and data_cfg is not None and not needs_data_dir(data_cfg):
        return Path.cwd().resolve()
    if not raw:
        raise DataError("data error: no data directory given; pass --data-dir DIR or set LEANKD_DATA_DIR "
                        f"(expected layout: {LAYOUT})")
    path = Path(raw).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise DataError(f"data error: data directory '{path}' {what}; pass --data-dir DIR or set "
                        "LEANKD_DATA_DIR to the folder holding cifar10/ and glue/")
    return path.resolve()  # absolute once, here: child jobs may run from another working directory


def needs_data_dir(data_cfg) -> bool:
    """Whether the config reads anything under the data directory (CIFAR-10, GLUE, a relative path of your own)."""
    own = [getattr(data_cfg, k, None) for k in ("root", "train_file", "eval_file")]
    return data_cfg.dataset in ("cifar10", "glue") or any(not Path(p).expanduser().is_absolute() for p in own if p)


def resolve_path(data_dir: Path, value: str) -> Path:
    """A path of the config (data.root, data.train_file, ...): absolute as given, relative under the data directory."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(data_dir) / path


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """The results folder, created if absent; a file in its place or a folder that cannot be written is refused
    before any work."""
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"config error: --out '{path}' is a file, not a folder; choose a folder for the results")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"config error: --out '{path}': cannot create the folder ({err.strerror}); choose a "
                          "writable folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"config error: --out '{path}': cannot write there (permission denied); choose a "
                          "writable folder")
    return path


def file_identity(path: Path) -> str:
    """sha256 of a data file (16 hex); part of the stored teacher's hash."""
    return sha256_file(path)[:16]


def sha256_file(path: Path, fsync: bool = False) -> str:
    """The hex sha256 of a file, read in 4 MiB chunks; `fsync`: made durable first (a file written through mmaps)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if fsync:
            os.fsync(f.fileno())
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(folder: Path, names, fsync: bool = False) -> dict[str, dict]:
    """{name: {"sha256", "bytes"}} of the files `names` (relative to `folder`): the manifest `checksum_problem` checks
    (a teacher cache's shards, a stored teacher's files)."""
    return {name: {"sha256": sha256_file(Path(folder) / name, fsync), "bytes": (Path(folder) / name).stat().st_size}
            for name in names}


def checksum_problem(folder: Path, files: dict[str, dict]) -> str | None:
    """Why the files under `folder` no longer match their manifest `files` (one phrase), or None when all do."""
    for name, entry in files.items():
        file = Path(folder) / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != entry["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {entry['bytes']}"
        if sha256_file(file) != entry["sha256"]:
            return f"{name} does not match its sha256"
    return None


def read_utf8(path: Path) -> str:
    """The text of a data file, a UTF-8 byte-order mark dropped; DataError naming the line of the first byte that
    is not UTF-8 (a file saved as Latin-1 or Windows-1252, typically)."""
    data = Path(path).read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, bom + err.start) + 1
        raise DataError(f"data error: '{path}' line {line} is not UTF-8 text (byte {bom + err.start}: {err.reason}; "
                        "Latin-1 or Windows-1252, perhaps); save the file as UTF-8") from None


def check_classes(labels, path: str | os.PathLike, note: str = "", regression: bool = False) -> None:
    """Refuse training labels that teach nothing: every label one class (a model then predicts that class, and on
    an eval set of it scores 100%), or for regression every target the same value. `path`: the file (or folder) the
    labels come from, named in the one-line DataError with `note` (e.g. " (its first 100 rows: data.train_limit)").
    Every data set calls it on what it trains on (CIFAR-10, GLUE; your own files and folders)."""
    values = np.unique(np.asarray(labels))
    if len(values) != 1:
        return
    value = values[0].item()  # a Python number or str, as the file holds it
    if regression:
        raise DataError(f"data error: every training target in '{path}'{note} is {value!r}; a regression needs "
                        "targets that vary")
    raise DataError(f"data error: every training label in '{path}'{note} is '{value}'; distillation needs >= 2 "
                    "classes (a one-class model learns nothing and scores 100% on that class)")
