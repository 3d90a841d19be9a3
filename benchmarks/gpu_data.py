"""CIFAR-10 small enough to travel with the repo to a lent GPU machine (the copy of the working tree that goes there
may hold 64 MiB; ../shared/data/cifar10 is 170 MB and stays behind): every image re-encoded as a JPEG at quality
75 with 4:2:0 chroma, the encoding the lossy copy was decoded from (56 MB for all 60,000),
decoded back there into the npz layout leankd reads. Used by benchmarks/gpu_check.sh.

    python benchmarks/gpu_data.py pack ../shared/data build/gpu-check/cifar10-jpeg.npz     # here
    python benchmarks/gpu_data.py unpack build/gpu-check/cifar10-jpeg.npz /tmp/data         # there: /tmp/data/cifar10/

The decoded images differ from the copy's by 0.16 grey levels per pixel on average (at most 66; measured here on all
60,000; the labels are the copy's): the same for timing; accuracies near, not equal to, those of runs on the copy.
"""
from __future__ import annotations

import argparse
import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "test")


def encode(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32, 32, 3) -> one byte array of N JPEGs and their N + 1 offsets."""
    blobs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=75, subsampling=2)  # 2: 4:2:0
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    return np.concatenate(blobs), np.cumsum([0] + [len(b) for b in blobs])


def decode(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The inverse of encode: uint8 (N, 32, 32, 3)."""
    return np.stack([np.asarray(Image.open(io.BytesIO(blob[a:b].tobytes())).convert("RGB"))
                     for a, b in zip(offsets[:-1], offsets[1:])])


def pack(data_dir: Path, dest: Path) -> None:
    arrays = {}
    for split in SPLITS:
        with np.load(data_dir / "cifar10" / f"cifar10_{split}.npz") as z:
            arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"] = encode(z["images"])
            arrays[f"{split}_labels"] = z["labels"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dest, **arrays)  # JPEG bytes do not compress further
    print(f"{dest}: {dest.stat().st_size / 1e6:.1f} MB")


def unpack(src: Path, data_dir: Path, workers: int) -> None:
    (data_dir / "cifar10").mkdir(parents=True, exist_ok=True)
    with np.load(src) as z, ProcessPoolExecutor(workers) as pool:
        for split in SPLITS:
            blob, offsets = z[f"{split}_jpeg"], z[f"{split}_offsets"]
            cuts = np.linspace(0, len(offsets) - 1, workers + 1).astype(int)
            chunks = [(blob[offsets[a]:offsets[b]], offsets[a:b + 1] - offsets[a]) for a, b in zip(cuts[:-1], cuts[1:])]
            parts = pool.map(decode, *zip(*chunks))  # each worker gets its own images' bytes only
            images = np.concatenate([p for p in parts if len(p)])
            np.savez(data_dir / "cifar10" / f"cifar10_{split}.npz", images=images, labels=z[f"{split}_labels"])
            print(f"{data_dir}/cifar10/cifar10_{split}.npz: {len(images)} images")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="DATA_DIR/cifar10/*.npz -> one npz of JPEG bytes")
    a.add_argument("data_dir", type=Path)
    a.add_argument("dest", type=Path)
    b = sub.add_parser("unpack", help="the packed npz -> DATA_DIR/cifar10/cifar10_{train,test}.npz")
    b.add_argument("src", type=Path)
    b.add_argument("data_dir", type=Path)
    b.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="decoding processes")
    args = p.parse_args()
    pack(args.data_dir, args.dest) if args.command == "pack" else unpack(args.src, args.data_dir, args.workers)


if __name__ == "__main__":
    main()
