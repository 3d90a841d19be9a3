"""Your own text classification data: a train file and an eval file, each CSV, TSV, JSON Lines or Parquet.

    files = TextFiles(data_dir, DataConfig(dataset="textfile", train_file="reviews/train.csv",
                                           eval_file="reviews/test.csv", text_column="text", label_column="label"))
    train = files.load("train")          # a GlueSplit: texts_a, texts_b (None without text_pair_column), labels
    print(files.label_names)             # the train file's labels, sorted: class id i is label_names[i]

Labels are strings or integers, mapped to class ids in sorted order (numerically when every label is an integer,
so "2" < "10"); an eval label the train file lacks is refused. CSV/TSV (`utf-8-sig`, a header line) and JSON Lines
(one object per line) are read with the standard library; Parquet needs pyarrow (`pip install pyarrow`).
"""
from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np

from leankd.data.files import resolve_path
from leankd.data.glue import GlueSplit
from leankd.errors import DataError

FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")
SPLITS = {"train": "train_file", "eval": "eval_file"}  # split -> its config key


def _read_csv(path: Path, delimiter: str) -> tuple[list[str], list[tuple[str, dict]]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = list(reader.fieldnames or [])
        rows = [(f"line {reader.line_num}", row) for row in reader]
    return columns, rows


def _read_jsonl(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"data error: '{path}' line {n} is not valid JSON ({err.msg}); write one JSON object "
                                "per line") from None
            if not isinstance(row, dict):
                raise DataError(f"data error: '{path}' line {n} is a JSON {type(row).__name__}, not an object; write "
                                'one object per line, e.g. {"text": "...", "label": "..."}')
            rows.append((f"line {n}", row))
    return (list(rows[0][1]) if rows else []), rows


def _read_parquet(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"data error: reading '{path}' (Parquet) needs pyarrow, which is not installed; run "
                        "`pip install pyarrow` or give a .csv / .jsonl file") from None
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError family
        raise DataError(f"data error: '{path}' is not a readable Parquet file ({str(err)[:120]})") from None
    return table.column_names, [(f"row {i + 1}", row) for i, row in enumerate(table.to_pylist())]


def read_records(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    """(columns, [(where, record)]) of a data file; DataError when it cannot be read."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return _read_csv(path, "," if suffix == ".csv" else "\t")
        if suffix == ".jsonl":
            return _read_jsonl(path)
    except UnicodeDecodeError as err:
        raise DataError(f"data error: '{path}' is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except csv.Error as err:
        raise DataError(f"data error: '{path}' is not valid CSV ({err}); check its quoting") from None
    return _read_parquet(path)


class TextFiles:
    """The train and eval files of `data.dataset=textfile`, read once each."""

    def __init__(self, data_dir: Path, data_cfg):
        self.cfg = data_cfg
        self.paths = {split: resolve_path(data_dir, getattr(data_cfg, key)) for split, key in SPLITS.items()}
        self._records: dict[str, tuple] = {}

    def path(self, split: str) -> Path:
        """The split's file, checked to be a readable file of a known format."""
        path, key = self.paths[split], SPLITS[split]
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "not found"
            raise DataError(f"data error: data.{key} '{path}' {what}; set data.{key} to a "
                            f"{' / '.join(FORMATS)} file (a relative path is under the data directory)")
        if path.suffix.lower() not in FORMATS:
            raise DataError(f"data error: data.{key} '{path}' has an unknown format '{path.suffix}'; use one of "
                            f"{', '.join(FORMATS)}")
        return path

    def records(self, split: str) -> tuple[list[str], list[str] | None, list[str], list[str]]:
        """(texts, pair texts or None, raw labels as strings, where each came from) of a split, read once."""
        if split not in SPLITS:
            raise DataError(f"data error: data.dataset=textfile has the splits {', '.join(SPLITS)}, not '{split}'")
        if split not in self._records:
            self._records[split] = self._read(split)
        return self._records[split]

    def _read(self, split: str) -> tuple[list[str], list[str] | None, list[str], list[str]]:
        path, cfg = self.path(split), self.cfg
        columns, rows = read_records(path)
        if not rows:
            raise DataError(f"data error: '{path}' is empty (no {'rows' if columns else 'header or rows'}); give "
                            f"it a header line and at least one example")
        wanted = [c for c in (cfg.text_column, cfg.text_pair_column, cfg.label_column) if c is not None]
        absent = [c for c in wanted if c not in columns]
        if absent:
            key = next(k for k in ("text_column", "text_pair_column", "label_column") if getattr(cfg, k) == absent[0])
            raise DataError(f"data error: '{path}' has no column '{absent[0]}' (data.{key}); its columns are "
                            f"{columns}")
        out: dict[str, list[str]] = {c: [] for c in wanted}
        for where, row in rows:
            for c in wanted:
                value = row.get(c)
                if value is None or (c == cfg.label_column and str(value).strip() == ""):
                    raise DataError(f"data error: '{path}' {where} has no value in column '{c}'; fill it in or "
                                    "remove the row")
                out[c].append(value if isinstance(value, str) else str(value))
        pairs = out[cfg.text_pair_column] if cfg.text_pair_column else None
        return out[cfg.text_column], pairs, out[cfg.label_column], [w for w, _ in rows]

    @functools.cached_property
    def label_names(self) -> tuple[str, ...]:
        """The train file's labels, sorted (numerically when all are integers): class id i is label_names[i]."""
        names = set(self.records("train")[2])
        if len(names) < 2:
            raise DataError(f"data error: every label in '{self.paths['train']}' is '{next(iter(names))}'; "
                            "distillation needs >= 2 classes")
        numeric = all(n.lstrip("-").isdigit() for n in names)
        return tuple(sorted(names, key=lambda n: (int(n), n) if numeric else (0, n)))

    def load(self, split: str) -> GlueSplit:
        """A split as GLUE's loader gives one (the same tokenisation and TextLoader path follow)."""
        texts, pairs, raw, where = self.records(split)
        ids = {name: i for i, name in enumerate(self.label_names)}
        unknown = next((i for i, label in enumerate(raw) if label not in ids), None)
        if unknown is not None:
            raise DataError(f"data error: '{self.paths[split]}' {where[unknown]} has label '{raw[unknown]}', which the "
                            f"train file lacks (its labels: {', '.join(self.label_names)})")
        labels = np.array([ids[label] for label in raw], dtype=np.int64)
        return GlueSplit(f"textfile-{self.paths['train'].stem}", split, texts, pairs, labels, self.label_names)
