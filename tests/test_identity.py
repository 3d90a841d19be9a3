"""A row's identity is complete by construction: every field of the config schema changes it unless it is on the
documented allow-list (leankd.experiment.identity.NOT_IDENTITY), and what enters resolved (the teacher's precision,
a matched arm's target, the cache only for arms that read it) enters as what ran."""
import json
import typing

import pytest
from pydantic import BaseModel

from leankd.config import load_config
from leankd.experiment import plan as plan_mod
from leankd.experiment.plan import Plan

from conftest import REPO

BASE = ["precision=fp32", "arms={plain: {method: plain}, kd: {method: kd, cache: on}, "
        "auto: {method: kd, pairs: auto, feature_losses: {attention_transfer: 1}}, "
        "longer: {method: plain, match: kd}}", "teacher.train.epochs=2", "train.epochs=2"]
# Values a walked field takes when its type gives no obvious other value (a str, a list, an optional).
OTHER = {"name": "other", "data.dataset": None, "data.task": None, "teacher.model": "resnet20",
         "teacher.checkpoint": None, "student.model": "resnet20", "student.layers": None, "device": None,
         "seeds": [0, 1], "data.train_limit": 100, "data.test_limit": 100, "threads": 1, "cache.views": 3,
         "cache.batch_size": 64, "arms.kd.layers": None, "arms.kd.pairs": "last", "arms.kd.relation_heads": 2,
         "arms.kd.relations": ["qq"], "arms.kd.feature_losses": {"hint_cosine": 1.0}, "arms.kd.cache": "off",
         "arms.kd.precision": "bf16", "arms.longer.match": "auto", "teacher.min_metric": 0.5,
         "teacher.precision": "bf16"}
# Not walked here, and why (a field that switches the task, or that needs files the test does not make).
SKIP = {"data.dataset": "switches the task (glue needs data.task): changes the data files, hence every identity",
        "data.task": "text only (glue)", "student.layers": "text only", "arms.kd.layers": "text only",
        "teacher.checkpoint": "needs a checkpoint file; it enters the teacher key (its content hash)",
        **{f"data.{k}": "your own data only (refused with cifar10): the whole data section and the files' content "
           "enter every identity (tests/test_user_data.py changes a file)" for k in (
               "root", "image_size", "train_file", "eval_file", "text_column", "text_pair_column", "label_column")},
        "device": "no second device here; it enters resolved (device.type)"}


def _leaves(model: BaseModel, prefix: str = ""):
    for name, field in type(model).model_fields.items():
        value, path = getattr(model, name), f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from _leaves(value, path + ".")
        elif name == "arms" and not prefix:
            for sub, f in type(value["kd"]).model_fields.items():  # match*: only on a plain arm (`longer`)
                arm = "longer" if sub.startswith("match") else "kd"
                yield f"arms.{arm}.{sub}", f, getattr(value[arm], sub)
        else:
            yield path, field, value


def _other(path: str, field, value):
    if path in OTHER:
        return OTHER[path]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.1
    choices = [c for c in typing.get_args(field.annotation) if isinstance(c, str)] or [
        c for a in typing.get_args(field.annotation) for c in typing.get_args(a) if isinstance(c, str)]
    other = [c for c in choices if c != value and c not in ("fp16", "int8", "auto")]
    assert other, f"{path}: give the walker a value for it in OTHER"
    return other[0]


@pytest.fixture()
def identity(tmp_path, monkeypatch):
    """cfg overrides -> {arm: row identity} (data files stand in as a constant: hashing 60k images per field is
    slow, and the data's content is covered by test_plan / the end-to-end reruns)."""
    monkeypatch.setattr(plan_mod, "data_identity", lambda cfg, data_dir: ["files"])

    def of(*more) -> dict:
        cfg = load_config(REPO / "tests" / "configs" / "tiny-cifar10.yaml", BASE + list(more))
        plan = Plan.make(cfg, tmp_path, tmp_path)
        return {arm: plan.row_identity(arm) for arm in cfg.arms}
    return of


def test_every_schema_field_changes_the_identity_unless_allow_listed(identity):
    from leankd.experiment.identity import CACHE_ONLY, NOT_IDENTITY  # here: the other tests run on older code too

    base = identity()
    cfg = load_config(REPO / "tests" / "configs" / "tiny-cifar10.yaml", BASE)
    walked = set()
    for path, field, value in _leaves(cfg):
        if path in SKIP:
            continue
        new = _other(path, field, value)

        got = identity(f"{path}={json.dumps(new)}")
        arm = "longer" if path.startswith("arms.longer") else "auto" if path.startswith("ranking.") else "kd"
        allowed = path in NOT_IDENTITY  # arms.<this arm>.* is the arm's own settings: never allowed
        assert (got[arm] == base[arm]) == allowed, f"{path}={new}: identity {'kept' if allowed else 'changed'}?"
        walked.add(path)
    assert len(walked) > 50  # every field of the schema but SKIP's
    assert {f"cache.{k}" for k in CACHE_ONLY} <= walked and "teacher.precision" in walked


def test_an_arm_reading_no_cache_ignores_the_cache_settings(identity):
    base = identity()
    for change in ("cache.views=5", "cache.dtype=float16", "cache.batch_size=64", "cache.mode=off"):
        assert identity(change)["plain"] == base["plain"], change


def test_teacher_precision_is_in_every_distilled_row_but_not_plain(identity):
    base, bf16 = identity(), identity("teacher.precision=bf16")
    assert bf16["kd"] != base["kd"] and bf16["auto"] != base["auto"]
    assert bf16["plain"] == base["plain"]
    # `same` is the experiment's precision as resolved: same == fp32 here, so nothing changes
    assert identity("teacher.precision=fp32")["kd"] == base["kd"]


def test_a_matched_arm_follows_its_target(identity):
    base, online = identity(), identity("arms.kd.cache=off")
    assert online["longer"] != base["longer"] and online["plain"] == base["plain"]
    assert identity("arms.auto.alpha=0.5")["longer"] == base["longer"]  # another arm: not its target


def test_teacher_same_is_the_experiments_precision_for_every_arm(tmp_path, monkeypatch):
    """Finding 6: a student arm in fp32 (arms.kd.precision) distils from the teacher at the experiment's precision;
    the cache key says so, and there is one cache for every arm."""
    monkeypatch.setattr(plan_mod, "data_identity", lambda cfg, data_dir: ["files"])
    cfg = load_config(REPO / "tests" / "configs" / "tiny-cifar10.yaml",
                      ["precision=bf16", "arms={kd: {method: kd}, kd_fp32: {method: kd, precision: fp32}}"])
    plan = Plan.make(cfg, tmp_path, tmp_path)
    assert plan.cache_key()["precision"] == "bf16" == plan.teacher_precision()
    assert plan.student_job("kd_fp32", 0).cache["key"] == plan.student_job("kd", 0).cache["key"]


def test_uncached_arms_draw_a_fresh_view_every_epoch(tmp_path, monkeypatch):
    """Finding 5: plain and a matched arm trained past cache.views epochs never repeat a view; a cached arm reads the
    cache's views and its row says when it reuses them."""
    monkeypatch.setattr(plan_mod, "data_identity", lambda cfg, data_dir: ["files"])
    cfg = load_config(REPO / "tests" / "configs" / "tiny-cifar10.yaml",
                      ["train.epochs=3", "cache.views=2", "arms={plain: {method: plain}, kd: {method: kd, cache: on},"
                       " longer: {method: plain, match: kd}}"])
    plan = Plan.make(cfg, tmp_path, tmp_path)
    assert plan.student_job("plain", 0).views == 3
    assert plan.student_job("longer", 0, {"epochs": 4.4, "steps": 9, "match": "kd", "by": "flops"}).views == 5
    kd = plan.student_job("kd", 0)
    assert kd.views == 2 and "epochs 3-3 reuse them" in kd.teacher_source
    assert plan.teacher_job().views == cfg.teacher.train.epochs




def test_rows_of_an_older_identity_rule_are_never_current():
    from leankd.report.table import summarise
    from leankd.results.store import IDENTITY_VERSION

    def row(i, version):
        extra = {"arm_config": {}, **({"identity_version": version} if version else {})}
        return {"id": i, "experiment": "e", "role": "student", "arm": "kd", "seed": 0, "config_hash": f"h{i}",
                "metrics": {"accuracy": 0.5}, "extra": extra}
    assert [s["older"] for s in summarise([row(1, None)])] == [True]  # an older leankd's row alone: not current
    assert [s["older"] for s in summarise([row(1, None), row(2, IDENTITY_VERSION)])] == [False, True]


def test_an_fp32_arm_distils_from_the_teacher_at_the_experiments_precision():
    """Finding 6, in the job: teacher.precision=same is the experiment's precision, not the arm's own (so a cached
    and an online arm of one experiment read the same teacher outputs, and the row says which precision ran)."""
    from types import SimpleNamespace

    import torch

    from leankd.jobs.teacher_cache import teacher_setup
    from leankd.models import create_model
    from leankd.precision import Precision

    cpu = torch.device("cpu")
    cfg = load_config(REPO / "tests" / "configs" / "tiny-cifar10.yaml", ["precision=bf16"])
    job = SimpleNamespace(teacher=create_model("resnet8", 10).eval(), spec=SimpleNamespace(distil=True), cfg=cfg,
                          device=cpu, prec=Precision.create("fp32", cpu), extra={}, task=SimpleNamespace(
                              is_regression=True))  # regression: no fidelity pass needed here
    teacher_setup(job)
    assert job.teacher_precision == "bf16" == job.extra["teacher_precision"]
