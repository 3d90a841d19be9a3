"""The data directory (from --data-dir or LEANKD_DATA_DIR) and the identity (content hash) of data files.

    data_dir = resolve_data_dir(args.data_dir)          # DataError naming the fix when missing
    out_dir = prepare_out_dir(args.out)                 # ConfigError when it is a file or not writable
    file_identity(data_dir / "cifar10" / "cifar10_train.npz")   # 16-hex sha256, part of row identities
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from leankd.errors import ConfigError, DataError

LAYOUT = ("<data_dir>/cifar10/cifar10_{train,test}.npz (uint8 'images' (N,32,32,3), int64 'labels' (N,)) and "
          "<data_dir>/glue/<TASK>/{train,dev,test}.tsv")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    raw = data_dir or os.environ.get("LEANKD_DATA_DIR")
    if not raw:
        raise DataError("data error: no data directory given; pass --data-dir DIR or set LEANKD_DATA_DIR "
                        f"(expected layout: {LAYOUT})")
    path = Path(raw).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise DataError(f"data error: data directory '{path}' {what}; pass --data-dir DIR or set "
                        "LEANKD_DATA_DIR to the folder holding cifar10/ and glue/")
    return path.resolve()  # absolute once, here: child jobs may run from another working directory


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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
