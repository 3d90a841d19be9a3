"""Report tables (leankd.report.table): statistics by hand, one row per (arm, config), Markdown and JSON."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from leankd.metering.ledger import ENERGY_SOURCES, PEAK_CHILD, PEAK_MEM_SOURCES
from leankd.report.table import LEDGER_FIGURES, summarise, to_json, to_markdown, write_report
from leankd.results.store import ResultsStore

EXP = "tiny"


def _row(row_id: int | None, arm: str, seed: int, acc: float, train_s: float, cache_s: float, flops: float,
         energy: float | None = None, ranking_s: float = 0.0, **kw) -> dict:
    teacher = arm == "teacher"
    row = {
        "id": row_id, "experiment": EXP, "config_hash": "h1", "role": "teacher" if teacher else "student",
        "arm": arm, "seed": seed, "model": "resnet8", "task": "cifar10", "split": "test",
        "metrics": {"accuracy": acc, "macro_f1": acc - 0.01},
        "train_s": train_s, "teacher_s": cache_s, "cache_share_s": cache_s, "ranking_share_s": ranking_s,
        "total_s": train_s + cache_s + ranking_s, "train_flops": int(flops), "infer_batch_size": 64,
        "infer_ms_p50": 2.0, "infer_ms_p90": 3.0, "infer_ms_p50_b1": 0.5, "infer_ms_p90_b1": 0.7,
        "peak_mem_mb": 100.0, "peak_mem_source": PEAK_CHILD,
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
        _row(1, "teacher", 0, 0.93, 100.0, 0.0, 5e12),
        _row(2, "plain", 0, 0.80, 10.0, 0.0, 1e12, energy=50.0),
        _row(3, "plain", 1, 0.82, 12.0, 0.0, 1e12),
        _row(4, "kd", 0, 0.84, 14.0, 2.0, 1.5e12, ranking_s=0.5, metrics={"accuracy": 0.84, "agreement": 0.90}),
        _row(5, "kd", 1, 0.86, 16.0, 2.0, 1.5e12, ranking_s=0.5, metrics={"accuracy": 0.86, "agreement": 0.92}),
    ]


def test_fixture_uses_sources_the_code_writes():
    for r in _rows():
        assert r["peak_mem_source"] in PEAK_MEM_SOURCES and r["energy_source"] in ENERGY_SOURCES


def _body(text: str) -> tuple[str, list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    return lines[0], lines[1:]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_summary_statistics_by_hand():
    summary = summarise(_rows())
    assert [s["arm"] for s in summary] == ["teacher", "plain", "kd"]
    assert not any(s["older"] for s in summary)
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
    assert kd["ranking_share_s"] == {"mean": 0.5, "std": 0.0, "n": 2}
    assert kd["total_s"]["mean"] == pytest.approx(17.5)  # (14 + 2 + 0.5 + 16 + 2 + 0.5) / 2

    # None is skipped: plain has energy for one seed only; nobody else has any
    assert plain["energy_j"] == {"mean": 50.0, "std": 0.0, "n": 1}
    assert teacher["energy_j"] is None and kd["energy_j"] is None
    assert plain["energy_source"] == "rapl, unavailable"
    assert plain["peak_mem_source"] == PEAK_CHILD

    assert kd["total_s_vs_plain"] == pytest.approx(17.5 / 11.0)
    assert kd["train_flops_vs_plain"] == pytest.approx(1.5)
    assert plain["total_s_vs_plain"] == pytest.approx(1.0)
    assert teacher["total_s_vs_plain"] is None and teacher["train_flops_vs_plain"] is None


def test_summary_keeps_each_seeds_value_for_pairing():
    rows = _rows() + [_row(6, "kd", 1, 0.70, 16.0, 2.0, 1.5e12, metrics={"accuracy": 0.70, "agreement": None})]
    teacher, plain, kd = summarise(rows)
    assert plain["per_seed"] == {"accuracy": {0: 0.80, 1: 0.82}, "macro_f1": {0: pytest.approx(0.79),
                                                                             1: pytest.approx(0.81)}}
    assert teacher["per_seed"]["accuracy"] == {0: 0.93}
    # the re-run of seed 1 (row 6) replaces the first, as in the stats; a None value is left out
    assert kd["per_seed"] == {"accuracy": {0: 0.84, 1: 0.70}, "agreement": {0: 0.90}}
    assert kd["metrics"]["accuracy"]["mean"] == pytest.approx((0.84 + 0.70) / 2)


def test_summary_without_plain_rerun_seed_counts_once_and_rows_without_ids():
    rows = [dict(r, id=None) for r in _rows() if r["arm"] == "kd"]  # no ids: list order is insertion order
    rows.append(_row(None, "kd", 1, 0.70, 16.0, 2.0, 1.5e12))  # re-run of seed 1 replaces the first
    (kd,) = summarise(rows)
    assert kd["n"] == 2 and kd["seeds"] == [0, 1]
    assert kd["metrics"]["accuracy"]["mean"] == pytest.approx((0.84 + 0.70) / 2)
    assert kd["total_s_vs_plain"] is None and kd["train_flops_vs_plain"] is None
    with pytest.raises(ValueError):
        summarise(rows + [_row(None, "plain", 0, 0.8, 1.0, 0.0, 1.0, experiment="other")])


def _edited_config_rows() -> list[dict]:
    """kd seeds 0 and 1 under a 1-epoch config (1a2b3c...), then seed 0 again after editing to 3 epochs."""
    one, three = "1a2b3c4d5e6f", "9f8e7d6c5b4a"
    return [
        _row(1, "plain", 0, 0.80, 10.0, 0.0, 1e12, config_hash=one),
        _row(2, "kd", 0, 0.70, 10.0, 0.0, 1e12, config_hash=one, extra={"epochs": 1}),
        _row(3, "kd", 1, 0.72, 12.0, 0.0, 1e12, config_hash=one, extra={"epochs": 1}),
        _row(4, "kd", 0, 0.90, 30.0, 0.0, 3e12, config_hash=three, extra={"epochs": 3}),
    ]


def test_different_configs_of_an_arm_are_never_averaged():
    rows = _edited_config_rows()
    random.Random(0).shuffle(rows)  # newest is decided by row id, not by list position
    plain, kd_new, kd_old = summarise(rows)
    assert plain["arm"] == "plain" and kd_new["arm"] == kd_old["arm"] == "kd"
    # the newest group (row id 4) is the arm's current row, even though it has fewer seeds
    assert (kd_new["config_hash"], kd_new["older"], kd_new["n"], kd_new["seeds"]) == ("9f8e7d6c5b4a", False, 1, [0])
    assert kd_new["metrics"]["accuracy"] == {"mean": 0.90, "std": 0.0, "n": 1}
    assert kd_new["train_s"]["mean"] == 30.0
    assert (kd_old["config_hash"], kd_old["older"], kd_old["n"]) == ("1a2b3c4d5e6f", True, 2)
    assert sorted(kd_old["seeds"]) == [0, 1]
    assert kd_old["metrics"]["accuracy"]["mean"] == pytest.approx(0.71)


def test_ratios_only_for_current_groups_against_current_plain():
    rows = _edited_config_rows() + [_row(5, "plain", 0, 0.85, 20.0, 0.0, 2e12, config_hash="9f8e7d6c5b4a")]
    summary = summarise(rows)
    assert [(s["arm"], s["older"]) for s in summary] == [("plain", False), ("plain", True),
                                                         ("kd", False), ("kd", True)]
    plain_new, plain_old, kd_new, kd_old = summary
    assert plain_new["total_s_vs_plain"] == pytest.approx(1.0)
    assert kd_new["total_s_vs_plain"] == pytest.approx(30.0 / 20.0)  # not 30 / 10 (the older plain)
    assert kd_new["train_flops_vs_plain"] == pytest.approx(3e12 / 2e12)
    for s in (plain_old, kd_old):
        assert s["total_s_vs_plain"] is None and s["train_flops_vs_plain"] is None


def test_arm_order_teacher_plain_then_first_seen():
    rows = [_row(1, "fitnet", 0, 0.8, 1.0, 0.0, 1.0), _row(2, "kd", 0, 0.8, 1.0, 0.0, 1.0),
            _row(3, "plain", 0, 0.8, 1.0, 0.0, 1.0), _row(4, "teacher", 0, 0.9, 1.0, 0.0, 1.0),
            _row(5, "fitnet", 0, 0.8, 1.0, 0.0, 1.0, config_hash="h2")]
    assert [(s["arm"], s["older"]) for s in summarise(rows)] == [
        ("teacher", False), ("plain", False), ("fitnet", False), ("fitnet", True), ("kd", False)]


def test_markdown_one_line_per_arm():
    text = to_markdown(summarise(_rows()), EXP)
    header, body = _body(text)
    assert [_cells(ln)[0] for ln in body] == ["teacher", "plain", "kd"]
    assert "infer ms p50 @bs=64" in header and "accuracy (%)" in header
    assert "| cache_share_s | ranking_share_s | total_s |" in header
    assert "total_s = train_s + cache_share_s + ranking_share_s" in text
    teacher, plain, kd = body
    assert "| 93.00 |" in teacher                  # n == 1: the mean alone
    assert "81.00 ± 1.41" in plain                 # percent, 2 decimals, mean ± std
    assert "unavailable" in teacher and "unavailable" in kd
    assert "50.0 (rapl, unavailable)" in plain
    assert "1.50 ± 0.00 TFLOP" in kd and "0.27M" in plain and "1.00M" in teacher
    ranking = _cells(header).index("ranking_share_s")
    assert _cells(kd)[ranking] == "0.500 ± 0.000" and _cells(plain)[ranking] == "0.00 ± 0.00"
    assert kd.rstrip(" |").endswith("1.59 | 1.50")  # 17.5 / 11, 1.5e12 / 1e12
    assert teacher.rstrip(" |").endswith("— | —")
    assert all(ln.count("|") == header.count("|") for ln in body)


def test_markdown_marks_older_configs():
    rows = _edited_config_rows()
    header, body = _body(to_markdown(summarise(rows), EXP))
    assert [_cells(ln)[0] for ln in body] == ["plain", "kd", "kd (older config 1a2b3c)"]
    assert [_cells(ln)[1] for ln in body] == ["1", "1", "2"]  # n
    kd_new, kd_old = body[1:]
    assert kd_new.rstrip(" |").endswith("3.00 | 3.00")
    assert kd_old.rstrip(" |").endswith("— | —")
    assert all(ln.count("|") == header.count("|") for ln in body)


def test_json_and_write_report(tmp_path: Path):
    summary = summarise(_rows())
    parsed = json.loads(to_json(summary))
    assert [(s["arm"], s["older"], s["config_hash"]) for s in parsed] == [
        ("teacher", False, "h1"), ("plain", False, "h1"), ("kd", False, "h1")]
    assert parsed[2]["total_s_vs_plain"] == pytest.approx(17.5 / 11.0)

    rows = _rows() + [_row(6, "plain", 0, 0.5, 1.0, 0.0, 1.0, experiment="second")]
    out = tmp_path / "report"
    text = write_report(rows, out)
    md = (out / "report.md").read_text()
    headlines, ledgers = md.split("\n# Full ledger\n")
    assert text.startswith(headlines) and text.endswith(f"section Full ledger; page: {out / 'report.html'}\n")
    assert "## tiny" in text and "## second" in text and "## Full ledger: tiny" in ledgers
    assert set(json.loads((out / "report.json").read_text())) == {"tiny", "second"}
    only = write_report(rows, out, experiment="second")
    assert "## tiny" not in only
    with pytest.raises(ValueError, match="tiny"):
        write_report(rows, out, experiment="missing")


def test_report_from_store_rows(tmp_path: Path):
    """The same summary from rows read back out of a real store (ids assigned by SQLite)."""
    store = ResultsStore(tmp_path / "results.db")
    for r in _rows():
        store.insert({k: v for k, v in r.items() if k != "id"})
    assert summarise(store.rows(EXP)) == summarise(_rows())
    assert set(LEDGER_FIGURES) <= set(store.rows(EXP)[0])  # every figure the report reads is a column
