"""The teacher-output cache on disk: sharded .npy files per field, view and sample range, keyed and checksummed.

    cache = TeacherCache(root, key={"teacher": weights_hash, "data": ..., "views": ..., "dtype": "float16"})
    cache.build(num_samples=50_000, views=10, fields={"logits": ((10,), "float16")}, fill=run_teacher)
    reader = cache.reader()                          # CheckpointError (one line) if missing or damaged
    logits = reader.get("logits", view, index)       # (len(index), 10), gathered from memory-mapped shards

Layout: root/<config_hash(key)>/{manifest.json, <field>-v<view>-s<shard>.npy}, shard s holding samples
[s * shard_size, (s + 1) * shard_size). A build runs under an exclusive flock on root/<name>.lock, writes into
root/.tmp-<name>-<pid>-<random>, fsyncs, checksums, and renames the folder into place, so a crash never leaves
a half-written cache at the final path. `is_valid()` re-hashes every shard: it reads the whole cache once.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from leankd.config import config_hash
from leankd.data.files import checksum_problem, checksums
from leankd.errors import CheckpointError, did_you_mean
from leankd.locks import locked

MANIFEST = "manifest.json"
MAX_OPEN_MAPS = 128  # each open memmap holds a file descriptor; a large cache has thousands of shards


def shard_name(field: str, view: int, shard: int) -> str:
    return f"{field}-v{view}-s{shard}.npy"


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True)


def _expected_files(manifest: dict) -> set[str]:
    """Every shard file name a manifest's layout implies."""
    shards = -(-int(manifest["num_samples"]) // int(manifest["shard_size"]))
    return {shard_name(f, v, s) for f in manifest["fields"] for v in range(int(manifest["views"]))
            for s in range(shards)}


def _check(path: Path, key: dict | None = None) -> str | None:
    """Why the cache folder `path` is not valid (one phrase), or None if it is. `key` None: the manifest's own key,
    which must hash to the folder name. Never raises."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        if key is None and config_hash(manifest["key"]) != path.name:
            return "its manifest key does not hash to the folder name"
        if key is not None and _canonical(manifest["key"]) != _canonical(key):
            return "it was built for another key"
        files = manifest["files"]
        shards = -(-int(manifest["num_samples"]) // int(manifest["shard_size"]))
        if len(manifest["fields"]) * int(manifest["views"]) * shards != len(files):  # cheap, before building names
            return "its manifest lists the wrong number of shards"
        missing = _expected_files(manifest) - set(files)
        if missing:
            return f"its manifest lists no {sorted(missing)[0]}"
        return checksum_problem(path, files)
    except FileNotFoundError:
        return "it has no manifest" if path.is_dir() else "it does not exist"
    except Exception as e:  # garbage of any shape in the manifest means invalid, never a crash
        return f"its manifest is unreadable ({type(e).__name__})"
    return None


def _read_manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


class _OpenMaps:
    """At most MAX_OPEN_MAPS memmaps kept open, least recently used closed first."""

    def __init__(self, folder: Path, mode: str):
        self.folder, self.mode, self.maps = folder, mode, OrderedDict()

    def __call__(self, name: str) -> np.ndarray:
        if name in self.maps:
            self.maps.move_to_end(name)
        else:
            if len(self.maps) >= MAX_OPEN_MAPS:
                self._close(self.maps.popitem(last=False)[1])
            self.maps[name] = np.load(self.folder / name, mmap_mode=self.mode)
        return self.maps[name]

    def _close(self, mm: np.ndarray) -> None:
        if self.mode != "r":
            mm.flush()

    def close(self) -> None:
        while self.maps:
            self._close(self.maps.popitem()[1])


class _Layout:
    """Fields, views, sample count and shard size, with the checks shared by the writer and the reader."""

    def __init__(self, num_samples: int, views: int, fields: dict[str, tuple[tuple[int, ...], str]],
                 shard_size: int):
        if num_samples < 0 or views < 1 or shard_size < 1 or not fields:
            raise ValueError(f"cache layout needs num_samples >= 0, views >= 1, shard_size >= 1 and at least one "
                             f"field; got {num_samples}, {views}, {shard_size}, {list(fields)}")
        self.num_samples, self.views, self.shard_size = int(num_samples), int(views), int(shard_size)
        self.fields = {f: (tuple(int(d) for d in shape), np.dtype(dtype)) for f, (shape, dtype) in fields.items()}
        self.shards = -(-self.num_samples // self.shard_size)

    def field(self, field: str) -> tuple[tuple[int, ...], np.dtype]:
        if field not in self.fields:
            raise ValueError(f"teacher cache has no field '{field}'{did_you_mean(field, self.fields, known=10)}")
        return self.fields[field]

    def indices(self, view, index) -> tuple[np.ndarray, np.ndarray]:
        """(view, index) as flat int64 arrays of one length, range-checked."""
        index = np.asarray(index, dtype=np.int64).ravel()
        view = np.broadcast_to(np.asarray(view, dtype=np.int64).ravel(), index.shape)
        if index.size and (index.min() < 0 or index.max() >= self.num_samples):
            raise IndexError(f"sample index out of range [0, {self.num_samples}): {index.min()}..{index.max()}")
        if view.size and (view.min() < 0 or view.max() >= self.views):
            raise IndexError(f"view out of range [0, {self.views}): {view.min()}..{view.max()}")
        return view, index

    def groups(self, view: np.ndarray, index: np.ndarray) -> Iterator[tuple[str, int, np.ndarray]]:
        """(view, shard, positions) for each (view, shard) pair that the samples fall in."""
        shard = index // self.shard_size
        pairs, inverse = np.unique(view * self.shards + shard, return_inverse=True)
        for k, pair in enumerate(pairs):
            yield int(pair // self.shards), int(pair % self.shards), np.flatnonzero(inverse == k)

    def to_json(self) -> dict:
        return {"num_samples": self.num_samples, "views": self.views, "shard_size": self.shard_size,
                "fields": {f: {"shape": list(shape), "dtype": dtype.name} for f, (shape, dtype) in self.fields.items()}}

    @classmethod
    def from_json(cls, manifest: dict) -> "_Layout":
        fields = {f: (tuple(s["shape"]), s["dtype"]) for f, s in manifest["fields"].items()}
        return cls(manifest["num_samples"], manifest["views"], fields, manifest["shard_size"])


class CacheWriter:
    """Scatters teacher outputs into the shards of a cache being built; `info` goes into the manifest."""

    def __init__(self, folder: Path, layout: _Layout):
        self.folder, self.layout, self.info = folder, layout, {}
        self._written = {f: np.zeros((layout.views, layout.num_samples), dtype=bool) for f in layout.fields}
        for f, (shape, dtype) in layout.fields.items():  # every shard exists (sparse, zeros) before fill runs
            for v in range(layout.views):
                for s in range(layout.shards):
                    rows = min(layout.shard_size, layout.num_samples - s * layout.shard_size)
                    mm = np.lib.format.open_memmap(folder / shard_name(f, v, s), "w+", dtype, (rows, *shape))
                    del mm
        self._maps = _OpenMaps(folder, "r+")

    def write(self, field: str, view: int, index: np.ndarray, values: np.ndarray) -> None:
        """values[k] is sample index[k]'s output for `view`; any dtype that casts (same kind) to the field's."""
        shape, dtype = self.layout.field(field)
        views, index = self.layout.indices(view, index)
        values = np.asarray(values)
        if values.shape != (len(index), *shape):
            raise ValueError(f"cache field '{field}' expects values of shape {(len(index), *shape)}, "
                             f"got {values.shape}")
        if not np.can_cast(values.dtype, dtype, "same_kind"):
            raise TypeError(f"cache field '{field}' is {dtype.name}; cannot cast {values.dtype.name} to it")
        for v, s, pos in self.layout.groups(views, index):
            self._maps(shard_name(field, v, s))[index[pos] - s * self.layout.shard_size] = values[pos]
            self._written[field][v, index[pos]] = True

    def close(self) -> None:
        self._maps.close()

    def reader(self) -> "CacheReader":
        """A reader of what has been written so far (flushed first), e.g. to check it before the manifest seals
        it; the writer can go on writing."""
        self.close()
        return CacheReader(self.folder, self.layout.to_json())

    def finish(self) -> dict[str, dict]:
        """Close the maps, check every sample was written, fsync and hash the shards: {file: {sha256, bytes}}."""
        self.close()
        for field, written in self._written.items():
            if not written.all():
                v, i = np.argwhere(~written)[0]
                raise ValueError(f"teacher cache fill left {int((~written).sum())} (view, sample) pairs of field "
                                 f"'{field}' unwritten, e.g. view {v} sample {i}")
        # fsync: the shards were written through mmaps; durable before the manifest vouches for them
        return checksums(self.folder, sorted(_expected_files(self.layout.to_json())), fsync=True)


class CacheReader:
    """Reads a valid cache through memory-mapped shards."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest
        self.layout = _Layout.from_json(manifest)
        self._maps = _OpenMaps(path, "r")

    def get(self, field: str, view: np.ndarray | int, index: np.ndarray) -> np.ndarray:
        """Values of samples `index` in views `view` (a scalar, or an array shaped like index), as a new array
        (*index.shape, *field shape); only the rows asked for are read from disk."""
        shape, dtype = self.layout.field(field)
        out_shape = (*np.shape(index), *shape)
        views, index = self.layout.indices(view, index)
        out = np.empty((len(index), *shape), dtype=dtype)
        for v, s, pos in self.layout.groups(views, index):
            out[pos] = self._maps(shard_name(field, v, s))[index[pos] - s * self.layout.shard_size]
        return out.reshape(out_shape)

    def close(self) -> None:
        self._maps.close()


class TeacherCache:
    """Teacher outputs on disk, per view and per sample, keyed and checksummed."""

    def __init__(self, root: str | Path, key: dict):
        self.root, self.key = Path(root), key
        self.name = config_hash(key)
        self.path = self.root / self.name

    def is_valid(self) -> bool:
        return _check(self.path, self.key) is None

    def size_bytes(self) -> int:
        return _dir_bytes(self.path)

    def reader(self) -> CacheReader:
        problem = _check(self.path, self.key)
        if problem is not None:
            raise CheckpointError(f"teacher cache {self.path} is not usable: {problem}; rerun to rebuild it, "
                                  f"or remove it with `leankd cache rm {self.name}`")
        return CacheReader(self.path, _read_manifest(self.path))

    def build(self, num_samples: int, views: int, fields: dict[str, tuple[tuple[int, ...], str]],
              fill: Callable[[CacheWriter], None], shard_size: int = 8192) -> dict:
        """Build the cache through `fill(writer)` unless a valid one is already there; returns its manifest."""
        layout = _Layout(num_samples, views, fields, shard_size)
        with locked(self.root, self.name):
            if self.is_valid():  # built before, or by another process while this one waited for the lock
                manifest = _read_manifest(self.path)
                self._check_layout(manifest, layout)
                return manifest
            # Holding the lock, no live build of this cache exists: any temp folder of it is from a crash.
            for stale in self.root.glob(f".tmp-{self.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if self.path.exists():
                shutil.rmtree(self.path)
            tmp = self.root / f".tmp-{self.name}-{os.getpid()}-{secrets.token_hex(4)}"
            tmp.mkdir()
            try:
                manifest = self._write(tmp, layout, fill)
                os.rename(tmp, self.path)  # atomic: the final path holds a complete cache or nothing
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            _fsync_dir(self.root)
        return manifest

    def _write(self, tmp: Path, layout: _Layout, fill: Callable[[CacheWriter], None]) -> dict:
        writer = CacheWriter(tmp, layout)
        try:
            fill(writer)
        finally:
            writer.close()
        files = writer.finish()
        manifest = {"name": self.name, "key": self.key, **layout.to_json(), "files": files,
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "info": writer.info}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        return manifest

    def _check_layout(self, manifest: dict, layout: _Layout) -> None:
        """A valid cache whose layout differs from the one asked for means the key misses something."""
        asked, have = layout.to_json(), _Layout.from_json(manifest).to_json()
        if any(asked[k] != have[k] for k in ("num_samples", "views", "fields")):  # shard size may differ
            raise CheckpointError(f"teacher cache {self.path} holds a different layout than this build asks for "
                                  f"(samples, views or fields) under the same key; remove it with "
                                  f"`leankd cache rm {self.name}` and rerun")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cache_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def list_caches(root: str | Path) -> list[dict]:
    """Every cache folder under root: name, path, bytes, valid (re-hashes its shards), key and created_at."""
    caches = []
    for path in _cache_dirs(Path(root)):
        try:
            manifest = _read_manifest(path)
        except Exception:  # a damaged cache is still listed, so that it can be removed
            manifest = {}
        manifest = manifest if isinstance(manifest, dict) else {}
        caches.append({"name": path.name, "path": str(path), "bytes": _dir_bytes(path), "valid": _check(path) is None,
                       "key": manifest.get("key"), "created_at": manifest.get("created_at")})
    return caches


def remove_cache(root: str | Path, name: str) -> int:
    """Remove cache `name` under root (under its build lock); returns the bytes freed."""
    root = Path(root)
    names = [p.name for p in _cache_dirs(root)]
    if name not in names:
        raise CheckpointError(f"no teacher cache '{name}' under {root}{did_you_mean(name, names, known=10)}; "
                              "list them with `leankd cache ls`")
    with locked(root, name):
        freed = _dir_bytes(root / name)
        shutil.rmtree(root / name)
    return freed
