"""Tokenised text batches: tokenise once (cached on disk), pad per batch, bucket by length.

    enc = tokenize_split(tokenizer, split, max_length=128, cache_dir=Path("runs/cache"))
    loader = TextLoader(enc, labels, batch_size=32, seed=0, shuffle=True, bucket=True)
    for inputs, y in loader.epoch(0): model(**inputs)

The padded token ids of the whole split sit in one (N, longest) matrix (host, or the training device when it fits:
`loader.place(device, "auto")`, data/placement.py): a batch is a gather of rows cut to its longest, its attention
mask a comparison with the lengths, made on the device with no copy per step and nothing read back.

Bucketing: each epoch's shuffled order (a pure function of seed and epoch) is cut into chunks of 50
batches; each chunk is sorted by length and cut into batches, and the batch order is shuffled again.
SST-2 train sentences average ~13 tokens while random batches of 32 pad to ~40, so this cuts the tokens
processed ~3x. Evaluation loaders sort the whole split by length (the order is independent of the batch
size, so two models' predictions line up).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from leankd.data import randomness as rnd
from leankd.data.placement import HOST, Placement, place
from leankd.data.shard import Sharded

log = logging.getLogger(__name__)
STREAM_BATCH_ORDER = 5
CHUNK_BATCHES = 50


def tokenize_split(tokenizer, texts_a: list[str], texts_b: list[str] | None, max_length: int,
                   cache_dir: Path | None = None) -> dict[str, list[np.ndarray]]:
    """Token ids (and token type ids) per sample, truncated to `max_length`; cached by content hash."""
    key = hashlib.sha256(repr((tokenizer.name_or_path, len(tokenizer), max_length, texts_a, texts_b)).encode())
    path = Path(cache_dir) / "tokens" / f"{key.hexdigest()[:16]}.npz" if cache_dir else None
    if path is not None and path.is_file():
        z = np.load(path)
        return {name: np.split(z[name], z["offsets"][1:-1]) for name in ("input_ids", "token_type_ids")}
    enc = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
    out = {"input_ids": [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]}
    types = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
    out["token_type_ids"] = [np.asarray(x, dtype=np.int8) for x in types]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.cumsum([0] + [len(x) for x in out["input_ids"]])
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, input_ids=np.concatenate(out["input_ids"]),
                 token_type_ids=np.concatenate(out["token_type_ids"]), offsets=offsets)
        tmp.replace(path)  # atomic: a crash never leaves a half-written cache
    return out


def _padded(rows: list[np.ndarray], lengths: np.ndarray, fill: int, dtype) -> torch.Tensor:
    """(len(rows), longest) tensor of each row's first `lengths[i]` values left-aligned, `fill` after them."""
    out = np.full((len(rows), int(lengths.max(initial=1))), fill, dtype=dtype)
    for i, (r, n) in enumerate(zip(rows, lengths)):
        out[i, :n] = r[:n]
    return torch.from_numpy(out)


class TextLoader(Sharded):
    """Batches of ({input_ids, token_type_ids, attention_mask}, labels), padded to the batch's longest."""

    def __init__(self, enc: dict[str, list[np.ndarray]], labels: np.ndarray, batch_size: int, seed: int = 0,
                 shuffle: bool = False, bucket: bool = False, pad_id: int = 0):
        self.ids, self.types = enc["input_ids"], enc["token_type_ids"]
        self.lengths = np.array([len(x) for x in self.ids])
        self.labels = torch.from_numpy(np.asarray(labels))
        self.batch_size, self.seed, self.shuffle, self.bucket, self.pad_id = batch_size, seed, shuffle, bucket, pad_id
        self.table = {"input_ids": _padded(self.ids, self.lengths, pad_id, np.int32),
                      "token_type_ids": _padded(self.types, self.lengths, 0, np.int8),
                      "lengths": torch.from_numpy(self.lengths.astype(np.int64)), "labels": self.labels}
        self.where: Placement = HOST
        self._table = self.table  # where batches are gathered from

    def place(self, device: torch.device, on_device: str = "auto") -> "TextLoader":
        """Batches made on `device`; the token table moved there once if `on_device` (auto: it fits) says so."""
        nbytes = sum(t.numel() * t.element_size() for t in self.table.values())
        self.where = place(on_device, device, nbytes, f"token ids ({self.table['input_ids'].numel() / 1e6:.1f}M)")
        self._table = {k: self.where.keep(t) for k, t in self.table.items()}
        return self

    def __len__(self) -> int:
        return -(-len(self.ids) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.ids)

    def batches(self, epoch: int) -> list[np.ndarray]:
        n, b = len(self.ids), self.batch_size
        if not self.shuffle:  # evaluation: sorted by length, independent of the batch size
            order = np.argsort(self.lengths, kind="stable") if self.bucket else np.arange(n)
            return [order[i:i + b] for i in range(0, n, b)]
        order = rnd.shuffle_order(n, self.seed, epoch)
        if not self.bucket:
            return [order[i:i + b] for i in range(0, n, b)]
        out = []
        for c in range(0, n, b * CHUNK_BATCHES):
            chunk = order[c:c + b * CHUNK_BATCHES]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            out += [chunk[i:i + b] for i in range(0, len(chunk), b)]
        perm = np.argsort(rnd.hash64(self.seed, epoch, np.arange(len(out)), STREAM_BATCH_ORDER), kind="stable")
        return [out[i] for i in perm]

    def collate(self, idx: np.ndarray, length: int | None = None, on_device: torch.Tensor | None = None):
        """Inputs and labels of samples `idx` padded (or cut) to `length` (default: their longest), on the device;
        `on_device`: `idx` already there (a slice of the epoch's order)."""
        length = length or int(self.lengths[idx].max())
        if self.where.resident:
            table, rows = self._table, self.where.put(torch.from_numpy(idx)) if on_device is None else on_device
        else:  # gathered on the host, then copied (pinned, non-blocking)
            table, rows = self.table, torch.from_numpy(idx)
        width = table["input_ids"].shape[1]
        cut = min(length, width)
        ids, types = table["input_ids"][rows, :cut].long(), table["token_type_ids"][rows, :cut].long()
        if length > width:  # a longer shape asked for (FLOP counting): padded
            ids = torch.nn.functional.pad(ids, (0, length - width), value=self.pad_id)
            types = torch.nn.functional.pad(types, (0, length - width))
        mask = (torch.arange(length, device=ids.device) < table["lengths"][rows, None]).long()
        x = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
        y = table["labels"][rows]
        if not self.where.resident:
            x, y = {k: self.where.put(v) for k, v in x.items()}, self.where.put(y)
        return x, y

    def inputs(self, idx: np.ndarray, view: np.ndarray | int = 0) -> dict[str, torch.Tensor]:
        """The inputs of samples `idx` padded to their longest (text has one view: no augmentation)."""
        return self.collate(idx)[0]

    def keyed_epoch(self, epoch: int, start: int = 0):
        """(inputs, labels, key) batches from batch `start` on; key = {"index": sample indices, "view": zeros,
        "on_device": the two as rows of a tensor on the device}. The epoch's order is copied to the device once."""
        batches = self.batches(epoch)
        ends = np.cumsum([0] + [len(b) for b in batches])
        order = np.concatenate(batches) if batches else np.zeros(0, np.int64)
        keys = self.where.put(torch.from_numpy(np.stack([order, np.zeros_like(order)])))  # (index, view) rows, once
        for k in range(start, len(batches)):
            idx, dev = self.local(batches[k]), self.local(keys[:, ends[k]:ends[k + 1]])
            x, y = self.collate(idx, on_device=dev[0])
            yield x, y, {"index": idx, "view": np.zeros_like(idx), "on_device": dev}

    def epoch(self, epoch: int):
        for x, y, _ in self.keyed_epoch(epoch):
            yield x, y

    def samples_per_shape(self, epochs: int, steps: int | None = None) -> dict[int, int]:
        """Samples processed per padded length over `epochs` epochs, or the first `steps` batches (FLOPs depend
        on it)."""
        counts: dict[int, int] = {}
        steps = epochs * len(self) if steps is None else steps
        for e in range(-(-steps // len(self))):
            for idx in self.batches(e)[:steps - e * len(self)]:
                idx = self.local(idx)
                length = int(self.lengths[idx].max())
                counts[length] = counts.get(length, 0) + len(idx)
        return counts

    def example(self, shape: int | None, batch: int):
        """Real (inputs, labels, key) of `batch` samples padded (or truncated) to length `shape` (None: their
        own longest)."""
        idx = np.arange(batch) % len(self.ids)
        return *self.collate(idx, shape), {"index": idx, "view": np.zeros_like(idx)}
