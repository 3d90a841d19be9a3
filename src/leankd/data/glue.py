"""GLUE from the official TSV files: `<data_dir>/glue/<Folder>/{train,dev,test}.tsv`.

MNLI uses `dev_matched` / `dev_mismatched` (and `test_matched` / `test_mismatched`); AX is the single file
`<data_dir>/glue/diagnostic/diagnostic.tsv`, loaded as split `test`. Test files and AX are unlabelled
(`labels is None`): they can be predicted, not scored. Task names are the lowercase config names in `TASKS`.

    train = load_glue(data_dir, "rte", "train")
    dev = load_glue(data_dir, "rte", "dev")
    print(len(train), train.label_names)

Every file is read with `csv` (`delimiter="\\t"`, `quoting=csv.QUOTE_NONE`, since GLUE text holds bare `"`) as UTF-8
(`read_utf8`: the MRPC files start with a BOM). A full SST-2 train parse takes about 0.1 s. A file with no
examples, a line whose sentence is empty, or a byte that is not UTF-8 is refused with the file and line.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leankd.data.files import read_utf8
from leankd.errors import DataError, did_you_mean

NLI3 = ("contradiction", "entailment", "neutral")  # label order of the GLUE MNLI processor
BINARY_NLI = ("entailment", "not_entailment")


@dataclass(frozen=True)
class GlueTask:
    name: str                          # config name, lowercase
    folder: str                        # folder under <data_dir>/glue/
    text_a: str                        # column of the first sentence
    text_b: str | None                 # column of the second sentence (None: single-sentence task)
    label_column: str | None           # None: no labelled split (AX)
    label_names: tuple[str, ...] | None  # raw label strings in class-id order; None for regression
    is_regression: bool
    dev_splits: tuple[str, ...]
    test_splits: tuple[str, ...]
    metrics: tuple[str, ...]           # the official metrics (glue_metrics adds accuracy/macro_f1 extras)
    headline: str                      # the metric a GLUE leaderboard reports first
    headerless: tuple[str, ...] | None = None  # column names of header-less labelled files (CoLA)

    @property
    def splits(self) -> tuple[str, ...]:
        return (() if self.name == "ax" else ("train",)) + self.dev_splits + self.test_splits

    def path(self, data_dir: Path, split: str) -> Path:
        name = "diagnostic.tsv" if self.name == "ax" else f"{split}.tsv"
        return Path(data_dir) / "glue" / self.folder / name

    @property
    def layout(self) -> str:
        if self.name == "ax":
            return "<data_dir>/glue/diagnostic/diagnostic.tsv"
        return f"<data_dir>/glue/{self.folder}/{{{','.join(self.splits)}}}.tsv"


def _task(name, folder, a, b, label, names, metrics, headline, dev=("dev",), test=("test",), **kw):
    return GlueTask(name, folder, a, b, label, names, names is None and label is not None, dev, test,
                    metrics, headline, **kw)


TASKS: dict[str, GlueTask] = {t.name: t for t in [
    _task("cola", "CoLA", "sentence", None, "label", ("0", "1"), ("matthews",), "matthews",
          headerless=("source", "label", "original_label", "sentence")),
    _task("sst2", "SST-2", "sentence", None, "label", ("0", "1"), ("accuracy",), "accuracy"),
    _task("mrpc", "MRPC", "#1 String", "#2 String", "Quality", ("0", "1"), ("f1", "accuracy"), "f1"),
    _task("qqp", "QQP", "question1", "question2", "is_duplicate", ("0", "1"), ("f1", "accuracy"), "f1"),
    _task("stsb", "STS-B", "sentence1", "sentence2", "score", None, ("pearson", "spearman"), "pearson"),
    _task("mnli", "MNLI", "sentence1", "sentence2", "gold_label", NLI3, ("accuracy",), "accuracy",
          dev=("dev_matched", "dev_mismatched"), test=("test_matched", "test_mismatched")),
    _task("qnli", "QNLI", "question", "sentence", "label", BINARY_NLI, ("accuracy",), "accuracy"),
    _task("rte", "RTE", "sentence1", "sentence2", "label", BINARY_NLI, ("accuracy",), "accuracy"),
    _task("wnli", "WNLI", "sentence1", "sentence2", "label", ("0", "1"), ("accuracy",), "accuracy"),
    # AX is predicted with an MNLI model; GLUE scores it server-side with R3 (3-class Matthews correlation).
    _task("ax", "diagnostic", "sentence1", "sentence2", None, NLI3, ("matthews",), "matthews", dev=()),
]}


@dataclass
class GlueSplit:
    task: str
    split: str
    texts_a: list[str]
    texts_b: list[str] | None
    labels: np.ndarray | None          # int64 class ids; float32 scores for STS-B; None when unlabelled
    label_names: tuple[str, ...] | None

    def __len__(self) -> int:
        return len(self.texts_a)


def get_task(name: str) -> GlueTask:
    """The TASKS entry for `name` (case and '-' ignored: 'SST-2' -> sst2); DataError with a hint otherwise."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise DataError(f"data error: unknown GLUE task '{name}'{did_you_mean(key, TASKS)}; known: {', '.join(TASKS)}")
    return TASKS[key]


def _missing_message(task: GlueTask, data_dir: Path, split: str) -> str:
    path = task.path(data_dir, split)
    missing = [task.path(data_dir, s).name for s in task.splits if not task.path(data_dir, s).is_file()]
    if task.name == "qnli" and split == "train":
        why = ("QNLI is evaluation-only here: this data directory has no QNLI train.tsv, so a teacher trained "
               "elsewhere can be evaluated on dev/test, and students distilled on another task's data")
    elif len(missing) == len(task.splits):
        why = f"{task.folder} files are absent from the data directory (missing: {', '.join(missing)})"
    else:
        why = f"missing in {task.folder}/: {', '.join(missing)}"
    return f"data error: GLUE file '{path}' not found: {why}; expected {task.layout}"


def _read_rows(path: Path, task: GlueTask, labelled: bool) -> tuple[list[str], list[list[str]]]:
    """(header, rows) with every row checked to have the header's field count; at least one row."""
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    headerless = bool(labelled and task.headerless)
    header = list(task.headerless) if headerless else next(reader, None)
    if header is None:
        raise DataError(f"data error: GLUE file '{path}' is empty; expected a header line ({task.layout})")
    rows = []
    for row in reader:
        if len(row) != len(header):
            raise DataError(f"data error: '{path}' line {reader.line_num} has {len(row)} tab-separated fields, "
                            f"expected {len(header)} ({', '.join(header)})")
        rows.append(row)
    if not rows:
        only = "" if headerless else " (only its header)"
        raise DataError(f"data error: GLUE file '{path}' holds no examples{only}; expected one per line under the "
                        f"header ({task.layout})")
    return header, rows


def _no_empty_text(path: Path, columns: dict[str, list[str]], first_line: int) -> None:
    """A sentence that is empty (or only spaces) is a broken line, not an example: named, never trained on."""
    for name, texts in columns.items():
        i = next((i for i, t in enumerate(texts) if not t.strip()), None)
        if i is not None:
            raise DataError(f"data error: '{path}' line {first_line + i} has an empty '{name}'; fill it in or remove "
                            "the line")


def _parse_labels(path: Path, task: GlueTask, raw: list[str], first_line: int) -> np.ndarray:
    if task.is_regression:
        try:
            return np.array([float(x) for x in raw], dtype=np.float32)
        except ValueError as err:
            raise DataError(f"data error: '{path}' has a non-numeric {task.label_column} ({err})") from None
    ids = {name: i for i, name in enumerate(task.label_names)}
    out = np.empty(len(raw), dtype=np.int64)
    for i, x in enumerate(raw):
        if x not in ids:  # line numbers assume one physical line per row (true of every GLUE file)
            raise DataError(f"data error: '{path}' line {first_line + i} has label '{x}', expected one of "
                            f"{list(task.label_names)}")
        out[i] = ids[x]
    return out


def load_glue(data_dir: Path, task: str, split: str) -> GlueSplit:
    """One GLUE split from the TSV files. Raises DataError on an unknown task/split, a missing file or a
    malformed row (naming file and line)."""
    spec = get_task(task)
    if split not in spec.splits:
        raise DataError(f"data error: GLUE task '{spec.name}' has no split '{split}' "
                        f"(splits: {', '.join(spec.splits)})")
    path = spec.path(data_dir, split)
    if path.is_dir():
        raise DataError(f"data error: GLUE file '{path}' is a folder, expected a file; expected {spec.layout}")
    if not path.is_file():
        raise DataError(_missing_message(spec, Path(data_dir), split))
    labelled = split not in spec.test_splits and spec.label_column is not None
    header, rows = _read_rows(path, spec, labelled)
    wanted = [spec.text_a] + ([spec.text_b] if spec.text_b else []) + ([spec.label_column] if labelled else [])
    absent = [c for c in wanted if c not in header]
    if absent:
        raise DataError(f"data error: '{path}' lacks column(s) {absent}; header is {header} ({spec.layout})")
    col = {name: header.index(name) for name in wanted}
    texts_a = [r[col[spec.text_a]] for r in rows]
    texts_b = [r[col[spec.text_b]] for r in rows] if spec.text_b else None
    first_line = 1 if spec.headerless and labelled else 2
    _no_empty_text(path, {spec.text_a: texts_a, **({spec.text_b: texts_b} if spec.text_b else {})}, first_line)
    labels = (_parse_labels(path, spec, [r[col[spec.label_column]] for r in rows], first_line)
              if labelled else None)
    return GlueSplit(spec.name, split, texts_a, texts_b, labels, spec.label_names)
