"""Results store (SQLite, WAL) and report tables: round trip, resume lookup, statistics by hand."""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import leankd.results.store as store_mod
from leankd.report.table import summarise, to_json, to_markdown, write_report
from leankd.results.store import COLUMN_NAMES, ResultsStore

EXP = "tiny"


def _row(arm: str, seed: int, acc: float, train_s: float, cache_s: float, flops: float,
         energy: float | None = None, **kw) -> dict:
    teacher = arm == "teacher"
    row = {
        "experiment": EXP, "config_hash": "h1", "role": "teacher" if teacher else "student",
        "arm": arm, "seed": seed, "model": "resnet8", "task": "cifar10", "split": "test",
        "metrics": {"accuracy": acc, "macro_f1": acc - 0.01},
        "train_s": train_s, "teacher_s": cache_s, "cache_share_s": cache_s,
        "total_s": train_s + cache_s, "train_flops": int(flops), "infer_batch_size": 64,
        "infer_ms_p50": 2.0, "infer_ms_p90": 3.0, "infer_ms_p50_b1": 0.5, "infer_ms_p90_b1": 0.7,
        "peak_mem_mb": 100.0, "peak_mem_source": "child_rss_minus_baseline",
        "energy_j": energy, "energy_source": "rapl" if energy is not None else "unavailable",
        "params": 1_000_000 if teacher else 270_000, "size_mb": 4.0 if teacher else 1.08,
        "extra": {"epochs": 1, "precision": "fp32"},
        "provenance": {"git_commit": "abc", "threads": 2, "seed": seed},
        "started_at": "2025-01-01T00:00:00", "ended_at": "2025-01-01T00:01:00",
    }
    row.update(kw)
    return row


def _rows() -> list[dict]:
    return [
        _row("teacher", 0, 0.93, 100.0, 0.0, 5e12),
        _row("plain", 0, 0.80, 10.0, 0.0, 1e12, energy=50.0),
        _row("plain", 1, 0.82, 12.0, 0.0, 1e12),
        _row("kd", 0, 0.84, 14.0, 2.0, 1.5e12, metrics={"accuracy": 0.84, "agreement": 0.90}),
        _row("kd", 1, 0.86, 16.0, 2.0, 1.5e12, metrics={"accuracy": 0.86, "agreement": 0.92}),
    ]


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    s = ResultsStore(tmp_path / "runs" / "results.db")  # parent dir does not exist yet
    for r in _rows():
        s.insert(r)
    return s


def test_wal_mode_and_schema_version(store: ResultsStore):
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert int(version) == store_mod.SCHEMA_VERSION
    ResultsStore(store.path)  # reopening an existing file is fine


def test_rows_round_trip(store: ResultsStore):
    rows = store.rows(EXP)
    assert [r["arm"] for r in rows] == ["teacher", "plain", "plain", "kd", "kd"]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    for got, want in zip(rows, _rows()):
        assert {k: got[k] for k in want} == want  # JSON columns decoded back to dicts
    assert rows[0]["energy_j"] is None
    assert store.experiments() == [EXP]
    assert store.rows("other") == []


def test_insert_refuses_unknown_key_and_bad_role(tmp_path: Path):
    s = ResultsStore(tmp_path / "r.db")
    with pytest.raises(ValueError, match="accuracy"):
        s.insert({"experiment": EXP, "role": "student", "arm": "kd", "accuracy": 0.9})
    with pytest.raises(ValueError, match="role"):
        s.insert({"experiment": EXP, "role": "pupil", "arm": "kd"})
    assert s.rows() == []


def test_insert_accepts_numpy_scalars(tmp_path: Path):
    s = ResultsStore(tmp_path / "r.db")
    s.insert({"experiment": EXP, "role": "student", "arm": "kd", "seed": np.int64(3),
              "train_flops": np.int64(7), "train_s": np.float32(1.5)})
    (row,) = s.rows()
    assert (row["seed"], row["train_flops"], row["train_s"]) == (3, 7, 1.5)


def test_find_returns_latest_match(store: ResultsStore):
    assert store.find(EXP, "h1", "kd", 1)["metrics"]["accuracy"] == 0.86
    assert store.find(EXP, "h2", "kd", 1) is None
    assert store.find(EXP, "h1", "kd", 7) is None
    new_id = store.insert(_row("kd", 1, 0.5, 1.0, 0.0, 1.0))  # a re-run of the same seed
    assert store.find(EXP, "h1", "kd", 1)["id"] == new_id


def test_summary_statistics_by_hand(store: ResultsStore):
    summary = summarise(store.rows(EXP))
    assert [s["arm"] for s in summary] == ["teacher", "plain", "kd"]
    teacher, plain, kd = summary
    assert teacher["n"] == 1 and plain["n"] == 2 and kd["n"] == 2

    acc = plain["metrics"]["accuracy"]
    assert acc["mean"] == pytest.approx(0.81)
    assert acc["std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2 / 1))  # sample std, n - 1 = 1
    assert teacher["metrics"]["accuracy"]["std"] == 0.0
    assert kd["metrics"]["agreement"]["mean"] == pytest.approx(0.91)
    assert "agreement" not in plain["metrics"]
    assert plain["total_s"]["mean"] == pytest.approx(11.0)
    assert plain["total_s"]["std"] == pytest.approx(math.sqrt(2.0))
    assert kd["total_s"]["mean"] == pytest.approx(17.0)

    # None is skipped: plain has energy for one seed only; nobody else has any
    assert plain["energy_j"] == {"mean": 50.0, "std": 0.0, "n": 1}
    assert teacher["energy_j"] is None and kd["energy_j"] is None
    assert plain["energy_source"] == "rapl, unavailable"

    assert kd["total_s_vs_plain"] == pytest.approx(17.0 / 11.0)
    assert kd["train_flops_vs_plain"] == pytest.approx(1.5)
    assert plain["total_s_vs_plain"] == pytest.approx(1.0)
    assert teacher["total_s_vs_plain"] is None and teacher["train_flops_vs_plain"] is None


def test_summary_without_plain_and_rerun_seed_counts_once():
    rows = [r for r in _rows() if r["arm"] == "kd"]
    rows.append(_row("kd", 1, 0.70, 16.0, 2.0, 1.5e12))  # re-run of seed 1 replaces the first
    (kd,) = summarise(rows)
    assert kd["n"] == 2
    assert kd["metrics"]["accuracy"]["mean"] == pytest.approx((0.84 + 0.70) / 2)
    assert kd["total_s_vs_plain"] is None and kd["train_flops_vs_plain"] is None
    with pytest.raises(ValueError):
        summarise(rows + [_row("plain", 0, 0.8, 1.0, 0.0, 1.0, experiment="other")])


def test_markdown_one_line_per_arm(store: ResultsStore):
    text = to_markdown(summarise(store.rows(EXP)), EXP)
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    header, body = lines[0], lines[1:]
    assert [ln.split("|")[1].strip() for ln in body] == ["teacher", "plain", "kd"]
    assert "infer ms p50 @bs=64" in header and "accuracy (%)" in header
    teacher, plain, kd = body
    assert "| 93.00 |" in teacher                  # n == 1: the mean alone
    assert "81.00 ± 1.41" in plain                 # percent, 2 decimals, mean ± std
    assert "unavailable" in teacher and "unavailable" in kd
    assert "50.0 (rapl, unavailable)" in plain
    assert "1.50 ± 0.00 TFLOP" in kd and "0.27M" in plain and "1.00M" in teacher
    assert kd.rstrip(" |").endswith("1.55 | 1.50")
    assert teacher.rstrip(" |").endswith("— | —")
    assert all(ln.count("|") == header.count("|") for ln in body)


def test_json_and_write_report(store: ResultsStore, tmp_path: Path):
    summary = summarise(store.rows(EXP))
    parsed = json.loads(to_json(summary))
    assert [s["arm"] for s in parsed] == ["teacher", "plain", "kd"]
    assert parsed[2]["total_s_vs_plain"] == pytest.approx(17.0 / 11.0)

    store.insert(_row("plain", 0, 0.5, 1.0, 0.0, 1.0, experiment="second"))
    out = tmp_path / "report"
    text = write_report(store.rows(), out)
    assert (out / "report.md").read_text() == text
    assert "## tiny" in text and "## second" in text
    assert set(json.loads((out / "report.json").read_text())) == {"tiny", "second"}
    only = write_report(store.rows(), out, experiment="second")
    assert "## tiny" not in only
    with pytest.raises(ValueError, match="tiny"):
        write_report(store.rows(), out, experiment="missing")


def test_schema_documented():
    docs = Path(__file__).resolve().parents[1] / "docs" / "results-schema.md"
    for text in (store_mod.__doc__, docs.read_text()):
        for col in ("id",) + COLUMN_NAMES:
            assert f"| `{col}` |" in text, col
