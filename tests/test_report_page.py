"""The report's headline (significance, compute-matched comparison, Pareto front) and its HTML page, opened in
headless Chromium (Python playwright, the system's Chromium found by leankd.report.screenshot.find_browser; never
`playwright install`): at a phone's and a desktop's width, with 14 crowded arms, no text may overlap.

The browser tests skip only when no Chromium is found and $CI is unset; in CI they fail instead.
`screenshot(html, png)` is the same launch, for docs: `python -m leankd.report.screenshot REPORT.html OUT.png`.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from leankd.metering.ledger import PEAK_CHILD
from leankd.report.headline import (
    BETTER,
    LEGEND,
    NOT_APPLICABLE,
    NOT_SIGNIFICANT,
    TEST_COLUMN,
    WORSE,
    columns,
    headline,
    pareto_front,
    significance,
)
from leankd.report.page import CSS, headline_html
from leankd.report.table import summarise, write_report
from leankd.results.store import ResultsStore

EXP, TEACHER_KEY = "cifar-synthetic", "dc095d5be831"
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


# The SST-2 findings' arms (docs/findings/sst2-minilm6-3l.md): 14 arms whose accuracy and cost nearly coincide, so
# that labels placed without care pile up. arm: accuracy mean, std (%), total_s mean, std, total TFLOPs, peak MiB,
# infer ms p50, distilled teacher layers
FINDINGS = """
teacher 82.11 0 44.1 0 4.51 1980 461 -
plain 79.17 .57 21.6 .3 2.25 1466 234 -
kd 78.94 .26 23.8 1.1 2.50 1401 220 -
skip 79.43 .40 44.8 4.0 3.80 1942 243 1,3,5
last 79.17 .18 45.3 2.4 3.80 1902 241 3,4,5
auto 79.20 .37 49.0 2.2 3.80 1912 236 0,3,5
random0 79.20 .37 45.3 2.2 3.80 1841 230 0,3,5
random1 79.32 .07 43.4 1.7 3.80 1871 232 0,1,4
random2 79.24 .30 46.4 3.3 3.80 1868 233 0,4,5
features 79.32 .78 37.9 .7 3.28 1883 237 1,3
kd_fp32 78.82 .37 38.9 1.1 2.50 1088 388 -
kd_online 78.82 .26 34.4 1.4 3.75 1509 221 -
plain_at_kd 79.89 .07 25.0 .7 2.58 1452 236 -
plain_at_auto 80.81 .18 36.8 1.4 3.82 1483 217 -
"""


def findings_rows(experiment: str = "findings-like") -> list[dict]:
    """Three seeds per arm (mean - std, mean, mean + std) of the FINDINGS table, one seed for the teacher."""
    rows = []
    for line in FINDINGS.split("\n")[1:-1]:
        arm, acc, sd, secs, secs_sd, tflops, mem, infer, layers = line.split()
        extra = {"teacher_layers": [int(i) for i in layers.split(",")]} if layers != "-" else {}
        if arm.startswith("plain_at_"):
            extra["budget"] = {"match": arm[9:], "by": "flops", "target": float(tflops) * 1e12, "epochs": 1.4}
        for seed, d in enumerate([0] if arm == "teacher" else [-1, 0, 1]):
            row = _row(arm, seed, (float(acc) + d * float(sd)) / 100, float(secs) + d * float(secs_sd), 0.0,
                       float(tflops) * 1e12, **extra)
            rows.append(row | {"experiment": experiment, "peak_mem_mb": float(mem) + 10 * d,
                               "infer_ms_p50": float(infer) + d, "infer_ms_p90": float(infer) * 1.1 + d})
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

def _seeds(values: list[float], first: int = 0) -> dict[int, float]:
    return dict(enumerate(values, start=first))


def test_paired_test_against_scipy():
    """delta, CI and p are the paired t-test's over 5 seeds, computed here with scipy directly."""
    plain, arm = [62.1, 62.6, 61.9, 63.0, 62.4], [63.0, 63.1, 62.8, 63.9, 62.9]
    t = significance(_seeds(arm), _seeds(plain))
    diffs = np.subtract(arm, plain)
    half = stats.t.ppf(0.975, 4) * diffs.std(ddof=1) / math.sqrt(5)
    assert t["n"] == 5 and t["delta"] == pytest.approx(diffs.mean())
    assert (t["ci_low"], t["ci_high"]) == (pytest.approx(diffs.mean() - half), pytest.approx(diffs.mean() + half))
    assert t["p"] == pytest.approx(stats.ttest_rel(arm, plain).pvalue)
    assert abs(t["p"] - 0.0016468) < 1e-4  # computed once with scipy 1.17: t = 7.55, df = 4
    assert (t["ci_low"], t["ci_high"]) == (pytest.approx(0.4680, abs=1e-4), pytest.approx(1.0120, abs=1e-4))
    assert t["direction"] == BETTER and t["mark"] == "better (p=0.002, n=5)"
    back = significance(_seeds(plain), _seeds(arm))  # the same comparison the other way round: a loss
    assert back["direction"] == WORSE and back["mark"] == "worse (p=0.002, n=5)"
    assert back["p"] == pytest.approx(t["p"]) and back["delta"] == pytest.approx(-t["delta"])


def test_old_spread_rule_false_positive_is_not_significant():
    """|delta| beyond sqrt(sd_a^2 + sd_b^2) (the old rule's "significant") but a paired p of 0.16 with 3 seeds."""
    plain, arm = [44.0, 45.0, 46.0], [46.3, 46.2, 46.3]
    t = significance(_seeds(arm), _seeds(plain))
    assert abs(t["delta"]) > math.hypot(statistics.stdev(arm), statistics.stdev(plain))
    assert t["p"] == pytest.approx(stats.ttest_rel(arm, plain).pvalue) and 0.15 < t["p"] < 0.2
    assert t["direction"] == NOT_SIGNIFICANT and t["mark"] == "n.s. (p=0.16, n=3)"


def test_fewer_than_three_paired_seeds_is_never_significant():
    two = significance({0: 70.0, 1: 70.1}, {0: 60.0, 1: 60.0})  # +10 points, but two seeds
    assert two["n"] == 2 and two["p"] < 0.05 and two["direction"] == NOT_APPLICABLE
    assert two["mark"] == "n/a (n=2: needs 3 seeds)"
    one = significance({0: 70.0}, {0: 60.0})
    assert (one["n"], one["delta"], one["p"], one["ci_low"], one["mark"]) == (1, 10.0, None, None, "n/a (1 seed)")
    assert significance({0: 1.0}, None) is None and significance({}, {0: 1.0}) is None


def test_only_seeds_in_both_arms_are_paired():
    arm = {0: 63.0, 1: 63.1, 2: 62.8, 7: 10.0}        # seed 7 has no plain run: left out, not paired with seed 3
    plain = {0: 62.1, 1: 62.6, 2: 61.9, 3: 99.0, None: 0.0}
    t = significance(arm, plain)
    assert t["n"] == 3 and t["delta"] == pytest.approx(((63.0 - 62.1) + (63.1 - 62.6) + (62.8 - 61.9)) / 3)
    assert t["p"] == pytest.approx(stats.ttest_rel([63.0, 63.1, 62.8], [62.1, 62.6, 61.9]).pvalue)
    assert significance({5: 1.0, 6: 2.0}, {0: 1.0, 1: 2.0})["mark"] == "n/a (no seed in both arms)"


def test_identical_or_constant_differences_give_no_nan():
    same = significance(_seeds([48.5, 49.0, 47.9]), _seeds([48.5, 49.0, 47.9]))  # cached kd == online kd
    assert (same["delta"], same["p"], same["ci_low"], same["ci_high"]) == (0.0, 1.0, 0.0, 0.0)
    assert same["direction"] == NOT_SIGNIFICANT and same["mark"] == "n.s. (identical, n=3)"
    shifted = significance(_seeds([50.0, 51.0, 52.0]), _seeds([48.0, 49.0, 50.0]))  # exactly +2 on every seed
    assert shifted["p"] == 0.0 and shifted["direction"] == BETTER and shifted["mark"] == "better (p<0.001, n=3)"
    # +2 points on every seed, up to float rounding (fractions scaled to points): sd 7e-15, counted as constant
    noisy = significance(_seeds([100 * v for v in (0.63, 0.64, 0.65, 0.57)]),
                         _seeds([100 * v for v in (0.61, 0.62, 0.63, 0.55)]))
    assert noisy["p"] == 0.0 and noisy["ci_low"] == noisy["ci_high"] == pytest.approx(2.0)
    for t in (same, shifted, noisy):
        assert all(math.isfinite(t[k]) for k in ("delta", "ci_low", "ci_high", "p"))


def test_headline_lines_by_hand():
    rows = synthetic_rows()
    head = headline(summarise(rows))
    assert head["metric"] == "accuracy" and head["unit"] == "points"
    by_arm = {ln["arm"]: ln for ln in head["lines"]}
    assert list(by_arm) == ["teacher", "plain", "kd", "auto", "plain_matched"]
    plain, kd, auto = (by_arm[a] for a in ("plain", "kd", "auto"))
    assert plain["quality"]["mean"] == pytest.approx(62.2) and plain["delta"] is None and plain["mark"] is None
    kd_acc, plain_acc = (np.array(ARMS[a][0]) * 100 for a in ("kd", "plain"))
    assert kd["delta"] == pytest.approx(64.2 - 62.2) and kd["n_paired"] == 3
    assert kd["p"] == pytest.approx(stats.ttest_rel(kd_acc, plain_acc).pvalue)
    assert kd["direction"] == BETTER and auto["direction"] == NOT_SIGNIFICANT
    assert kd["mark"] == f"better (p={kd['p']:.3f}, n=3)"
    assert by_arm["teacher"]["mark"] == "n/a (teacher)" and by_arm["teacher"]["p"] is None
    assert kd["total_s_x"] == pytest.approx((92.0 + 3.5) / 95.0) and kd["flops_x"] == pytest.approx(7.80 / 7.41)
    assert kd["peak_mem_mb"]["mean"] == pytest.approx(380.0) and kd["infer_ms_p50"]["mean"] == pytest.approx(31.0)
    assert by_arm["plain_matched"]["label"] == "plain_matched (plain at kd's FLOPs)"
    (cmp,) = head["comparisons"]
    assert (cmp["target"], cmp["matched"]) == ("kd", "plain_matched")
    matched_acc = np.array(ARMS["plain_matched"][0]) * 100
    assert cmp["delta"] == pytest.approx(64.2 - 63.03333, abs=1e-4) and cmp["n"] == 3
    assert cmp["p"] == pytest.approx(stats.ttest_rel(kd_acc, matched_acc).pvalue)  # 0.067: not significant
    assert cmp["direction"] == NOT_SIGNIFICANT
    assert cmp["text"].startswith(f"kd vs plain at kd's FLOPs: +1.17 points, 95% CI [{cmp['ci_low']:+.2f}, "
                                  f"{cmp['ci_high']:+.2f}]: n.s. (p=0.067, n=3)")


def test_rows_without_budget_and_one_seed():
    rows = [r for r in synthetic_rows() if r["seed"] == 0 and r["arm"] != "plain_matched"]
    head = headline(summarise(rows))
    assert head["comparisons"] == []
    assert {ln["arm"]: ln["mark"] for ln in head["lines"]} == {
        "teacher": "n/a (teacher)", "plain": None, "kd": "n/a (1 seed)", "auto": "n/a (1 seed)"}


def test_pareto_front():
    # (cost, quality): 0 and 2 are the front; 1 is dominated by 0 (cheaper, better), 3 costs more for less
    points = [(10.0, 0.80), (12.0, 0.79), (20.0, 0.85), (25.0, 0.84), (20.0, 0.85)]
    assert pareto_front(points) == [0, 2, 4]  # equal points are both kept, cheapest first
    assert pareto_front([(5.0, 0.5)]) == [0]


def _table_widths(markdown: str) -> list[int]:
    return [len(re.split(r"(?<!\\)\|", ln.strip())) - 2 for ln in markdown.splitlines() if ln.startswith("| ")]


def test_markdown_headline_first_and_the_full_ledger_linked(tmp_path: Path):
    """The terminal (what write_report returns) shows the headline, at most 10 columns, and says where the full
    ledger is; report.md has the headline first, linked to the full ledger (every figure) in its own section."""
    text = write_report(synthetic_rows(), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert max(_table_widths(text)) <= 10 and "| arm | n | teacher layers" not in text
    assert f"Full ledger (every figure): {tmp_path / 'report.md'}, section Full ledger" in text
    link = f"[Full ledger: {EXP}](#full-ledger-{EXP})"
    assert md.index("**Headline**") < md.index(link) < md.index("\n# Full ledger\n") < \
        md.index(f"\n## Full ledger: {EXP}\n") < md.index("| arm | n | teacher layers")
    assert max(_table_widths(md)) > 20  # the full ledger: every figure
    header = next(ln for ln in text.splitlines() if ln.startswith("| arm | n | accuracy (%)"))
    assert header == ("| arm | n | accuracy (%) | Δ vs plain (points) | 95% CI | p (paired, n) | total_s ×plain | "
                      "FLOPs ×plain | peak mem (MiB) | infer ms p50 @bs=128 |")
    assert "| kd | 3 | 64.20 ± 0.30 | +2.00 | [+0.37, +3.63] | better (p=0.034, n=3) |" in text
    assert "| auto | 3 | 62.30 ± 0.46 | +0.10 | [-1.93, +2.13] | n.s. (p=0.85, n=3) |" in text
    assert "- kd vs plain at kd's FLOPs: +1.17 points, 95% CI [-0.20, +2.53]: n.s. (p=0.067, n=3)" in text
    assert "paired t-test" in text and "p < 0.05 with n ≥ 3" in text  # the legend
    assert "nan" not in text
    assert (tmp_path / "report.html").is_file()


def test_page_colours_a_loss_red_never_green():
    """A distilled arm that is worse on every seed is marked "worse" and drawn red; only a gain is green."""
    rows = [r for r in synthetic_rows() if r["arm"] in ("plain", "kd", "auto")]
    rows = [dict(r, metrics={**r["metrics"], "accuracy": r["metrics"]["accuracy"] - 0.03}) if r["arm"] == "auto"
            else r for r in rows]  # auto: about 3 points below plain on each seed
    head = headline(summarise(rows))
    by_arm = {ln["arm"]: ln for ln in head["lines"]}
    assert by_arm["auto"]["direction"] == WORSE and by_arm["auto"]["mark"].startswith("worse (p=")
    assert by_arm["kd"]["direction"] == BETTER
    page = headline_html(head)
    test_col = [name for name, _ in columns(head)].index(TEST_COLUMN)
    cells = [re.findall(r'<td(?: class="([^"]*)")?>(.*?)</td>', row) for row in page.split("<tr")[2:]]
    classes = {row[0][1]: row[test_col][0] for row in cells}  # arm -> the test cell's class
    assert classes == {"plain": "num", "kd": "better", "auto": "worse"}  # plain's cell is "—"
    assert ".worse { color: #c0392b" in CSS and ".better { color: #1b7f3b" in CSS
    assert "paired t-test" in LEGEND


def test_labels_of_coinciding_points_never_touch():
    """Twelve labels for one spot, beside an error bar: each lands in a free place inside the axes (measured with
    matplotlib's renderer); when the axes cannot hold them all, nothing is drawn and the caller is told."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    from leankd.report.labels import place

    fig = Figure(figsize=(5.4, 4.0))
    renderer = FigureCanvasAgg(fig).get_renderer()
    ax = fig.add_subplot(xlim=(0, 10), ylim=(0, 10))
    fig.draw_without_rendering()
    (x, y), (_, top) = ax.transData.transform([(5, 5), (5, 8)])
    bar = Bbox([[x - 3, 2 * y - top], [x + 3, top]])  # an error bar from 2 to 8 through the point
    made = place(ax, [(5.0, 5.0, f"random{i}", "k") for i in range(12)], [bar], gap_px=8)
    fig.draw_without_rendering()  # puts each label where it was placed
    boxes = [Text.get_window_extent(a, renderer) for a in made]  # the text alone, not its leader line
    assert [a.get_text() for a in made] == [f"random{i}" for i in range(12)]
    assert not [(i, k) for i, a in enumerate(boxes) for k, b in enumerate(boxes[i + 1:], i + 1) if a.overlaps(b)]
    assert not any(b.overlaps(bar) for b in boxes)
    area = ax.get_window_extent(renderer)
    assert all(area.x0 <= b.x0 and b.x1 <= area.x1 and area.y0 <= b.y0 and b.y1 <= area.y1 for b in boxes)
    assert sum(a.arrow_patch is not None for a in made) >= 4  # far ones are tied to their point by a line
    for a in made:
        a.remove()
    assert place(ax, [(5.0, 5.0, "a much longer label " * 3, "k")] * 60, [], gap_px=8) is None and not ax.texts


def test_off_scale_teacher_is_named_in_the_legend_outside_the_axes():
    from leankd.report.plots import cost_quality

    lines = headline(summarise(synthetic_rows()))["lines"]  # the teacher: 961 s against the students' ~100 s
    svg = cost_quality(lines, "total_s", "total_s", "accuracy (%)", "s")
    legend = svg[svg.index('<g id="legend_1">'):]
    assert "teacher (off scale): 81.17, 961 s" in legend and "Pareto front (students)" in legend
    assert svg.index('<g id="legend_1">') > svg.rindex('<g id="axes_1">')  # a figure legend, not in the axes
    assert all(f">{arm}</text>" in svg for arm in ARMS)


# ---- the page in a browser -----------------------------------------------------------------------

def _sync_api():
    """playwright's sync API, or a skip when there is no Chromium outside CI (in CI a missing one fails)."""
    from leankd.report.screenshot import ScreenshotError, find_browser

    try:
        find_browser()
    except ScreenshotError as e:
        if os.environ.get("CI"):
            pytest.fail(f"{e} (CI installs the Debian package chromium: .ci/run)")
        pytest.skip(str(e))
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
        compare = page.locator("ul.compare li")
        assert "kd vs plain at kd's FLOPs: +1.17 points, 95% CI" in compare.inner_text()
        assert compare.get_attribute("class") == "ns"  # p = 0.067: not green
        assert table.locator("td.better").count() == 2 and table.locator("td.worse").count() == 0

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
            assert svg.locator("path").count() > 10 and svg.locator("text").count() > 5, titles[i]  # marks, words
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


# ---- the page on a phone and on a desktop: no page overflow, no text on text, no label on a point -----------------

_BOXES_JS = """() => [...document.querySelectorAll('figure.plot svg')].map(svg => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const marks = 'g[id^="axes"] > g[id^="line2d"] use, g[id^="axes"] > g[id^="LineCollection"] path, ' +
                'g[id^="axes"] > g[id^="PathCollection"] use';
  return {texts: [...svg.querySelectorAll('text')].filter(t => t.textContent.trim())
                    .map(t => [t.textContent, ...box(t), t.closest('g[id^="legend"]') !== null]),
          marks: [...svg.querySelectorAll(marks)].map(box)};
})"""


def _overlap(a: list[float], b: list[float], tol: float) -> bool:
    """Two [left, top, right, bottom] boxes share more than `tol` CSS pixels both across and down."""
    return min(a[2], b[2]) - max(a[0], b[0]) > tol and min(a[3], b[3]) - max(a[1], b[1]) > tol


@pytest.fixture()
def crowded_page(tmp_path: Path) -> Path:
    store = ResultsStore(tmp_path / "results.db")
    for r in findings_rows():
        store.insert(r)
    write_report(store.rows(), tmp_path)
    return tmp_path / "report.html"


def _check_layout(page, width: int) -> list[dict]:
    """The page at `width` CSS pixels: no horizontal page overflow, tables scrolling in their own boxes, inline code
    in the ledger's legend; returns each figure's text and mark boxes."""
    page.set_viewport_size({"width": width, "height": 900})
    assert page.evaluate("document.documentElement.scrollWidth") <= width, width
    for table in ("table.headline", "table.ledger"):
        box = page.locator(f"div.scroll:has({table})")
        assert box.evaluate("e => getComputedStyle(e).overflowX") == "auto"
        assert box.bounding_box()["x"] + box.bounding_box()["width"] <= width, (width, table)
    if width >= 1400:  # a desktop shows the whole headline, its last column included, without scrolling
        assert page.locator("div.scroll:has(table.headline)").evaluate("e => e.scrollWidth <= e.clientWidth")
    legend = page.locator("details p.legend")
    assert legend.locator("code").count() >= 2 and "`" not in legend.inner_text()
    return page.evaluate(_BOXES_JS)


def test_page_fits_any_screen_and_no_text_collides(crowded_page: Path):
    """At 390 px (a phone) and 1400 px: no horizontal page overflow, and in every figure no two texts (tick labels
    included) overlap and no text lies on a marker or an error bar, with 14 arms of near-equal quality and cost."""
    from leankd.report.screenshot import launch

    sync_api = _sync_api()
    arms = [ln.split()[0] for ln in FINDINGS.split("\n")[1:-1]]
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(crowded_page.as_uri())
        page.locator("details summary").click()  # the full ledger open too: it must scroll in its own box
        by_width = {width: _check_layout(page, width) for width in (390, 1400)}
        browser.close()
    for width, svgs in by_width.items():
        assert len(svgs) == 4  # seconds, FLOPs, latency, memory (no ranking; energy unavailable)
        for i, svg in enumerate(svgs[:2]):  # both cost plots name every arm, once, in the axes
            assert sorted(t[0] for t in svg["texts"] if t[0] in arms and not t[5]) == sorted(arms), (width, i)
            assert len(svg["marks"]) > 3 * len(arms), (width, i)  # markers, error bars and caps were found
        for i, svg in enumerate(svgs):
            texts = svg["texts"]
            assert len(texts) > 8, (width, i)
            hits = [(a[0], b[0]) for k, a in enumerate(texts) for b in texts[k + 1:] if _overlap(a[1:5], b[1:5], 0.5)]
            assert not hits, (width, i, hits)
            on_marks = [t[0] for t in texts for m in svg["marks"] if _overlap(t[1:5], m, 0.5)]
            assert not on_marks, (width, i, on_marks)


def test_screenshot_finds_a_browser_or_says_how_to_pass_one(tmp_path: Path, monkeypatch, capsys):
    from leankd.report import screenshot as shot

    chrome = tmp_path / "google-chrome"
    chrome.write_text("#!/bin/sh\n")
    chrome.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(shot, "CHROMIUM", str(tmp_path / "chromium-not-here"))
    assert shot.find_browser() == str(chrome)  # no chromium on PATH: the next name tried
    assert shot.find_browser(str(chrome)) == shot.find_browser("google-chrome") == str(chrome)
    chrome.unlink()
    with pytest.raises(shot.ScreenshotError) as none:
        shot.find_browser()
    assert "\n" not in str(none.value) and "--browser PATH" in str(none.value)
    assert all(name in str(none.value) for name in (*shot.BROWSERS, shot.CHROMIUM))
    for argv, says in (([], "--browser PATH"), (["--browser", str(chrome)], f"--browser {chrome}: not an executable")):
        with pytest.raises(SystemExit) as exit_:
            shot.main([str(tmp_path / "report.html"), str(tmp_path / "report.png"), *argv])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and "\n" not in err and says in err
    assert not (tmp_path / "report.png").exists()


def test_screenshot_with_browser_flag(tmp_path: Path, monkeypatch):
    from leankd.report import screenshot as shot

    _sync_api()
    browser = shot.find_browser()
    monkeypatch.setenv("PATH", "")  # nothing to find: only --browser can say where it is
    monkeypatch.setattr(shot, "CHROMIUM", str(tmp_path / "chromium-not-here"))
    (tmp_path / "page.html").write_text("<!DOCTYPE html><title>t</title><p>leankd</p>", encoding="utf-8")
    shot.main([str(tmp_path / "page.html"), str(tmp_path / "page.png"), "--width", "390", "--viewport",
               "--browser", browser])
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
