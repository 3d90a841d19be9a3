"""Verdicts you can trust, end to end on a real CIFAR-10 slice: a rerun retrains exactly the rows whose result
could change (teacher precision, a matched arm's target), and every shared cost (the teacher cache build, the layer
ranking) is charged in full to the rows that read it, whatever order arms and seeds ran in."""
from collections import defaultdict

import pytest

from leankd.config import load_config
from leankd.experiment import run_experiment
from leankd.results.store import ResultsStore

from conftest import REPO

ARMS = ("arms={plain: {method: plain}, kd: {method: kd}, "
        "auto: {method: kd, pairs: auto, feature_losses: {attention_transfer: 100}}, "
        "plain_at_kd: {method: plain, match: kd}}")
BASE = [ARMS, "seeds=[0]", "metering.isolate_arms=false", "ranking.samples=64", "data.train_limit=256",
        "data.test_limit=128"]


def _run(data_dir, out, *more) -> set[tuple[str, int]]:
    """Run the tiny experiment with `more` overrides; the (arm, seed) of every student row it trained."""
    cfg = load_config(REPO / "tests" / "configs" / "tiny-cifar10.yaml", BASE + list(more))
    store = ResultsStore(out / "results.db")
    before = {r["id"] for r in store.rows()}
    run_experiment(cfg, data_dir, out)
    return {(r["arm"], r["seed"]) for r in store.rows() if r["id"] not in before and r["role"] == "student"}


@pytest.fixture(scope="module")
def reruns(data_dir, tmp_path_factory):
    """One experiment run, then rerun three ways; returns ({rerun: the jobs it trained}, the store)."""
    out = tmp_path_factory.mktemp("verdicts")
    _run(data_dir, out)
    trained = {"bf16 teacher": _run(data_dir, out, "teacher.precision=bf16"),
               "kd online": _run(data_dir, out, "teacher.precision=bf16", "arms.kd.cache=off")}
    more = ARMS[:-1] + ", kd_t2: {method: kd, temperature: 2.0}}"
    trained["more"] = _run(data_dir, out, "teacher.precision=bf16", "arms.kd.cache=off", more, "seeds=[0,1]")
    return trained, ResultsStore(out / "results.db")


def test_teacher_precision_retrains_every_distilled_row(reruns):
    trained, _ = reruns
    # plain reads no teacher: kept; kd and auto distil from a bf16 teacher now; plain_at_kd matches kd's budget
    assert trained["bf16 teacher"] == {("kd", 0), ("auto", 0), ("plain_at_kd", 0)}


def test_a_changed_target_retrains_its_matched_arm(reruns):
    trained, _ = reruns
    assert trained["kd online"] == {("kd", 0), ("plain_at_kd", 0)}


def test_more_seeds_and_a_new_arm_keep_every_finished_row(reruns):
    trained, _ = reruns
    assert trained["more"] == {(a, 1) for a in ("plain", "kd", "auto", "plain_at_kd", "kd_t2")} | {("kd_t2", 0)}


def test_each_shared_cost_is_charged_exactly_once_over_its_readers(reruns):
    _, store = reruns
    rows = {r["id"]: r for r in store.rows()}
    charged = defaultdict(lambda: [0.0, 0, 0])
    costs = {}
    for read in store.reads():
        col = "cache_share" if read["kind"] == "cache" else "ranking_share"
        r = rows[read["run_id"]]
        charged[read["resource"]][0] += r[f"{col}_s"]
        charged[read["resource"]][1] += r[f"{col}_flops"]
        charged[read["resource"]][2] += 1
        costs[read["resource"]] = read
    kinds = defaultdict(int)
    for resource, (seconds, flops, readers) in charged.items():
        cost = costs[resource]
        kinds[cost["kind"]] += 1
        assert seconds == pytest.approx(cost["seconds"], abs=1e-6)
        assert flops == cost["flops"] and cost["flops"] > 0
        assert readers >= 2
    # caches: the fp32 teacher's (first run), the bf16 teacher's (auto, and kd_t2 + the new seed); one ranking
    assert kinds == {"cache": 2, "ranking": 1}
    for r in rows.values():
        if r["role"] == "student":
            assert r["total_s"] == pytest.approx(r["train_s"] + r["cache_share_s"] + r["ranking_share_s"])
            assert r["total_flops"] == r["train_flops"] + r["cache_share_flops"] + r["ranking_share_flops"]
            if r["arm"] == "auto":
                assert r["ranking_share_flops"] > 0  # the ranking's FLOPs are in total_flops
