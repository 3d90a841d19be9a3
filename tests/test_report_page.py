"""The report's headline (significance, compute-matched comparison, Pareto front) and its HTML page, opened in
headless Chromium (Python playwright, the system's /usr/bin/chromium; never `playwright install`).

The browser test skips only when /usr/bin/chromium is missing and $CI is unset; in CI it fails instead.
`screenshot(html, png)` is the same launch, for docs: `python -m leankd.report.screenshot REPORT.html OUT.png`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from leankd.metering.ledger import PEAK_CHILD
from leankd.report.headline import NOT_SIGNIFICANT, ONE_SEED, SIGNIFICANT, headline, pareto_front, significance
from leankd.report.table import summarise, write_report
from leankd.results.store import ResultsStore

EXP, TEACHER_KEY = "cifar-synthetic", "dc095d5be831"
CHROMIUM = Path("/usr/bin/chromium")
# accuracy per seed, (train_s, cache_share_s), total FLOPs: realistic for ResNet-20 -> ResNet-8, 2 epochs, CPU
ARMS = {
    "plain": ([0.6210, 0.6260, 0.6190], (94.0, 0.0), 7.41e12),
    "kd": ([0.6420, 0.6390, 0.6450], (91.0, 3.5), 7.80e12),          # + ~2 points: > spread
    "auto": ([0.6240, 0.6180, 0.6270], (140.0, 3.5), 9.10e12),       # + ~0.1: inside the spread
    "plain_matched": ([0.6300, 0.6330, 0.6280], (99.0, 0.0), 7.80e12),
}


def _row(arm: str, seed: int, acc: float, train_s: float, share_s: float, flops: float, **extra) -> dict:
    teacher = arm == "teacher"
    return {"experiment": EXP, "config_hash": TEACHER_KEY if teacher else f"cfg-{arm}",
            "role": "teacher" if teacher else "student", "arm": arm, "seed": seed,
            "model": "resnet20" if teacher else "resnet8", "task": "cifar10", "split": "test",
            "metrics": {"accuracy": acc, "macro_f1": acc - 0.004, **({} if teacher else {"agreement": acc + 0.06})},
            "train_s": train_s, "teacher_s": share_s, "cache_share_s": share_s, "ranking_share_s": 0.0,
            "total_s": train_s + share_s, "train_flops": int(flops), "total_flops": int(flops),
            "infer_batch_size": 128, "infer_ms_p50": 102.0 if teacher else 30.0 + seed,
            "infer_ms_p90": 109.0 if teacher else 38.0 + seed, "infer_ms_p50_b1": 4.5 if teacher else 1.4,
            "infer_ms_p90_b1": 4.7 if teacher else 1.9, "peak_mem_mb": 444.0 if teacher else 370.0 + 10 * seed,
            "peak_mem_source": PEAK_CHILD, "energy_j": None, "energy_source": "unavailable",
            "params": 272_474 if teacher else 78_042, "size_mb": 1.05 if teacher else 0.30,
            "extra": {"epochs": 7 if teacher else 2, "precision": "bf16", **extra},
            "provenance": {"seed": seed}, "started_at": "2025-01-01T00:00:00", "ended_at": "2025-01-01T00:02:00"}


def synthetic_rows(ranking_path: str | None = None) -> list[dict]:
    rows = [_row("teacher", 0, 0.8117, 961.0, 0.0, 85.4e12)]
    for arm, (accs, (train_s, share_s), flops) in ARMS.items():
        extra = {"teacher_source": "cache:resnet20-logits"} if share_s else {}
        if arm == "auto":
            extra |= {"teacher_layers": [2, 5, 8], "ranking": {"by": "ablation", "path": ranking_path}}
        if arm == "plain_matched":
            extra = {"budget": {"match": "kd", "by": "flops", "target": 7.80e12, "epochs": 2.1}}
        rows += [_row(arm, seed, acc, train_s + seed, share_s, flops, **extra) for seed, acc in enumerate(accs)]
    return rows


def write_ranking(out: Path) -> Path:
    path = out / "teachers" / TEACHER_KEY / "ranking-abc123.json"
    path.parent.mkdir(parents=True)
    scores = [0.02, 0.31, 0.05, 0.12, 0.44, 0.09, 0.07, 0.21, 0.15]
    ranked = sorted(({"index": i, "name": f"layer{i // 3 + 1}.{i % 3}", "ablation": s} for i, s in enumerate(scores)),
                    key=lambda s: -s["ablation"])
    path.write_text(json.dumps({"by": "ablation", "samples": 512, "seconds": 7.0, "experiment": EXP,
                                "ranked": [{**s, "rank": r} for r, s in enumerate(ranked, start=1)]}))
    return path


# ---- headline numbers, no browser ----------------------------------------------------------------

def test_significance_rule():
    a, b = {"mean": 64.2, "std": 0.3, "n": 3}, {"mean": 62.2, "std": 0.4, "n": 3}
    delta, spread, mark = significance(a, b)
    assert delta == pytest.approx(2.0) and spread == pytest.approx(0.5) and mark == SIGNIFICANT
    assert significance({**a, "mean": 62.6}, b)[2] == NOT_SIGNIFICANT        # 0.4 <= 0.5
    assert significance({**a, "mean": 62.7}, b)[2] == NOT_SIGNIFICANT        # exactly the spread: not larger
    assert significance({**a, "mean": 61.6}, b)[2] == SIGNIFICANT            # a loss beyond the spread counts too
    assert significance({**a, "n": 1, "std": 0.0}, b) == (pytest.approx(2.0), None, ONE_SEED)
    assert significance(a, None) == (None, None, None)


def test_headline_lines_by_hand():
    rows = synthetic_rows()
    head = headline(summarise(rows))
    assert head["metric"] == "accuracy" and head["unit"] == "points"
    by_arm = {ln["arm"]: ln for ln in head["lines"]}
    assert list(by_arm) == ["teacher", "plain", "kd", "auto", "plain_matched"]
    plain, kd, auto = (by_arm[a] for a in ("plain", "kd", "auto"))
    assert plain["quality"]["mean"] == pytest.approx(62.2) and plain["delta"] is None
    assert kd["delta"] == pytest.approx(64.2 - 62.2)
    assert kd["spread"] == pytest.approx(math.hypot(kd["quality"]["std"], plain["quality"]["std"]))
    assert kd["mark"] == SIGNIFICANT and auto["mark"] == NOT_SIGNIFICANT
    assert by_arm["teacher"]["mark"] == ONE_SEED
    assert kd["total_s_x"] == pytest.approx((92.0 + 3.5) / 95.0) and kd["flops_x"] == pytest.approx(7.80 / 7.41)
    assert kd["peak_mem_mb"]["mean"] == pytest.approx(380.0) and kd["infer_ms_p50"]["mean"] == pytest.approx(31.0)
    assert by_arm["plain_matched"]["label"] == "plain_matched (plain at kd's FLOPs)"
    (cmp,) = head["comparisons"]
    assert (cmp["target"], cmp["matched"]) == ("kd", "plain_matched")
    assert cmp["delta"] == pytest.approx(64.2 - 63.03333, abs=1e-4) and cmp["mark"] == SIGNIFICANT
    assert cmp["text"].startswith("kd vs plain at kd's FLOPs: +1.17 points (significant)")


def test_rows_without_budget_and_one_seed():
    rows = [r for r in synthetic_rows() if r["seed"] == 0 and r["arm"] != "plain_matched"]
    head = headline(summarise(rows))
    assert head["comparisons"] == []
    assert {ln["arm"]: ln["mark"] for ln in head["lines"]} == {
        "teacher": ONE_SEED, "plain": None, "kd": ONE_SEED, "auto": ONE_SEED}


def test_pareto_front():
    # (cost, quality): 0 and 2 are the front; 1 is dominated by 0 (cheaper, better), 3 costs more for less
    points = [(10.0, 0.80), (12.0, 0.79), (20.0, 0.85), (25.0, 0.84), (20.0, 0.85)]
    assert pareto_front(points) == [0, 2, 4]  # equal points are both kept, cheapest first
    assert pareto_front([(5.0, 0.5)]) == [0]


def test_markdown_has_headline_above_full_ledger(tmp_path: Path):
    text = write_report(synthetic_rows(), tmp_path)
    head, ledger = text.index("**Headline**"), text.index("**Full ledger**")
    assert head < ledger < text.index("| arm | n | teacher layers")
    assert "| kd | 3 | 64.20 ± 0.30 | +2.00 | significant (spread 0.47) |" in text
    assert "- kd vs plain at kd's FLOPs: +1.17 points (significant)" in text
    assert (tmp_path / "report.html").is_file()


# ---- the page in a browser -----------------------------------------------------------------------

def _sync_api():
    """playwright's sync API, or a skip when there is no Chromium outside CI (in CI a missing one fails)."""
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing in CI: install the Debian package chromium (.ci/run does)")
        pytest.skip(f"{CHROMIUM} missing (CI installs it; here: apt-get install chromium)")
    from playwright import sync_api
    return sync_api


@pytest.fixture()
def page_file(tmp_path: Path) -> Path:
    store = ResultsStore(tmp_path / "results.db")
    for r in synthetic_rows(str(write_ranking(tmp_path))):
        store.insert(r)
    store_rows = store.rows(EXP)
    write_report(store_rows, tmp_path, failures=[{"experiment": EXP, "arm": "wide", "seed": 0,
                                                  "error": "loss diverged at step 412: lower train.lr"}])
    return tmp_path / "report.html"


def test_page_in_chromium(page_file: Path):
    from leankd.report.screenshot import launch

    sync_api = _sync_api()
    left: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                   else (left.append(route.request.url), route.abort()))
        local = ("file:", "data:", "about:")
        page.on("request", lambda req: None if req.url.startswith(local) else left.append(req.url))
        page.goto(page_file.as_uri())
        table = page.locator("table.headline")
        assert table.count() == 1 and table.is_visible()
        assert table.locator("tbody tr").count() == 5
        assert "plain_matched (plain at kd's FLOPs)" in table.inner_text()
        assert "kd vs plain at kd's FLOPs: +1.17 points (significant)" in page.locator("ul.compare").inner_text()

        figures = page.locator("figure.plot")
        titles = [figures.nth(i).locator("figcaption b").inner_text() for i in range(figures.count())]
        assert titles == ["Quality vs total seconds.", "Quality vs total FLOPs.", "Inference latency.",
                          "Peak memory.", "Teacher layer importance.", "Training energy."]
        for i in range(5):  # every figure but energy (unavailable here) is an SVG with marks
            svg = figures.nth(i).locator("svg")
            svg.scroll_into_view_if_needed()
            box = svg.bounding_box()
            assert box and box["width"] > 200 and box["height"] > 100, titles[i]
            assert box["y"] >= 0 and box["y"] + 10 <= page.viewport_size["height"], titles[i]  # in view
            assert svg.locator("path").count() > 20, titles[i]
        energy = figures.nth(5)
        assert energy.locator("svg").count() == 0 and "unavailable (energy_source: unavailable" in energy.inner_text()
        assert "loss diverged at step 412" in page.locator("ul.failures").inner_text()

        ledger = page.locator("details table.ledger")
        assert not ledger.is_visible()
        page.locator("details summary").click()
        assert ledger.is_visible() and ledger.locator("tbody tr").count() == 5
        assert "total_flops" in ledger.locator("thead").inner_text()
        browser.close()
    assert left == []
