"""The config schema: pydantic models of an experiment and the checks that refuse a bad combination.
Every mistake is refused here, as a `ConfigError` whose message is one line naming the key (see load.py).
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from leankd.errors import ConfigError, UserError, did_you_mean


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _on_off(value: Any) -> Any:
    """YAML reads bare `on` / `off` as booleans: take them back as the words the user wrote."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class DataConfig(_Strict):
    dataset: Literal["cifar10", "glue"] = "cifar10"
    task: str | None = Field(None, description="GLUE task (sst2, mrpc, rte, cola, stsb, wnli, qnli, ...)")
    max_length: int = Field(128, gt=0, description="text: tokens per sequence after truncation")
    bucket: bool = Field(True, description="text: length-bucketed batches (less padding)")
    train_limit: int | None = Field(None, gt=0, description="use a fixed stratified-by-shuffle slice of train")
    test_limit: int | None = Field(None, gt=0, description="use a fixed slice of the test split")
    val_size: int = Field(0, ge=0, description="held-out validation images carved from train")
    augment: bool = True


class OptimConfig(_Strict):
    epochs: int = Field(1, gt=0)
    batch_size: int = Field(128, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_frac: float = Field(0.15, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    freeze_embeddings: bool = Field(False, description="text: keep the word embeddings fixed (the largest "
                                    "tensor: ~30% faster steps on CPU)")


def _known_model(name: str) -> str:
    from leankd.models import list_models  # local: models import torch

    if name not in list_models():
        raise ValueError(f"unknown model '{name}'{did_you_mean(name, list_models(), known=20)}")
    return name


class TeacherConfig(_Strict):
    model: str = "resnet20"
    checkpoint: str | None = Field(None, description="safetensors or torch file; skips training")
    seed: int = 0
    train: OptimConfig = OptimConfig()
    min_metric: float | None = Field(None, description="refuse (never store or use) a teacher whose eval metric, the "
                                     "task's first, is below this; a teacher at chance level is always refused")
    precision: Literal["same", "fp32", "bf16", "int8"] = Field(
        "same", description="the teacher's forwards when distilling (cache build and online): same = the "
        "experiment's precision; int8 = dynamic quantisation of its Linear layers (text teachers on CPU)")
    shard: bool = Field(False, description="data parallel runs (torchrun): shard the online teacher's parameters "
                        "over the ranks with FSDP (fully_shard per block), gathered for each block's forward; for a "
                        "teacher too big for one device (GPU); no effect in one process")



LayerRef = int | str  # a 0-based index into the model's candidate layers (`leankd layers`), or a module name
FEATURE_LOSSES = ("hint_mse", "hint_cosine", "attention_transfer", "attention_relation")


class StudentConfig(_Strict):
    model: str = "resnet8"
    layers: list[LayerRef] | None = Field(None, description="text: teacher layers (index or name) the student keeps")


class PairSpec(_Strict):
    """One explicit layer pair: a student layer distilled from a teacher layer (index or module name)."""
    student: LayerRef
    teacher: LayerRef


class ArmConfig(_Strict):
    method: Literal["plain", "kd", "features"] = Field(
        "plain", description="plain: labels only; kd: + teacher logits (+ feature pairs if set); "
        "features: labels + feature pairs only (the teacher forward stops after its deepest tapped layer)")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the logit-KD term vs the label loss")
    layers: list[LayerRef] | None = Field(None, description="text: this arm's teacher layers (overrides "
                                          "student.layers)")
    pairs: Literal["last", "skip", "uniform", "auto", "random"] | list[LayerRef | PairSpec] | None = Field(
        None, description="feature distillation: a preset, or teacher layers for student layers 0, 1, ..., or "
        "{student, teacher} records")
    pair_seed: int = Field(0, description="the draw for pairs=random")
    feature_losses: dict[str, float] = Field(
        {"hint_mse": 1.0}, description=f"feature loss -> weight (summed over pairs / number of pairs); "
        f"one of {', '.join(FEATURE_LOSSES)}")
    relations: list[Literal["qq", "kk", "vv", "qk"]] = Field(
        ["qq", "kk", "vv"], description="attention_relation: MiniLMv2 Q-Q/K-K/V-V; qk = attention (MiniLM v1)")
    relation_heads: int | None = Field(None, gt=0, description="attention_relation heads (default: teacher's)")
    cache: Literal["auto", "on", "off"] | None = Field(None, description="this arm's teacher cache mode "
                                                       "(default: cache.mode)")
    _cache_words = field_validator("cache", mode="before")(_on_off)
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = Field(
        None, description="this arm's student precision (default: the experiment's); the teacher keeps "
        "teacher.precision")
    match: str | None = Field(None, description="method plain only: train for the budget of this other arm (as many "
                              "FLOPs, or seconds, as its total), measured per seed: is distillation better than "
                              "training the student longer?")
    match_by: Literal["flops", "seconds"] = Field("flops", description="the budget match compares: total_flops "
                                                  "(deterministic) or total_s (this machine's seconds)")

    @model_validator(mode="after")
    def _pairs(self) -> "ArmConfig":
        bad = [k for k in self.feature_losses if k not in FEATURE_LOSSES]
        if bad:
            raise ValueError(f"unknown feature loss '{bad[0]}'{did_you_mean(bad[0], FEATURE_LOSSES, known=9)}")
        if any(w < 0 for w in self.feature_losses.values()):
            raise ValueError("feature loss weights must be >= 0")
        if self.method == "features" and not self.pairs:
            raise ValueError("method 'features' needs pairs (a preset or a list of layers)")
        if self.method == "plain" and self.pairs:
            raise ValueError("pairs need a teacher: use method 'kd' (logits + features) or 'features'")
        if self.match is not None and self.method != "plain":
            raise ValueError("match trains a plain student for another arm's budget: use it with method 'plain'")
        return self

    def identity(self) -> dict:
        """The settings that make a row what it is; keys added after rows were stored count only when set, so
        older stores keep their rows."""
        unset = ({"match", "match_by"} if self.match is None else set()) | ({"precision"} if self.precision is None
                                                                             else set())
        return self.model_dump(mode="json", exclude=unset)


class RankingConfig(_Strict):
    samples: int = Field(512, ge=8, description="calibration samples drawn from the training data")
    by: Literal["ablation", "influence"] = Field(
        "ablation", description="auto's score: task-loss increase when the layer is ablated, or block "
        "influence 1 - cos(input, output)")
    seed: int = 0
    batch_size: int = Field(128, gt=0)


class CacheConfig(_Strict):
    mode: Literal["auto", "on", "off"] = Field(
        "auto", description="teacher outputs read from a cache built once: auto = when >= 2 jobs share it or a "
        "valid one exists; on; off = the teacher runs online every step")
    _mode_words = field_validator("mode", mode="before")(_on_off)
    views: int | None = Field(None, gt=0, description="augmentation views cached per sample (default: train.epochs; "
                              "text: 1)")
    seed: int = Field(0, description="the augmentation seed of the views (every arm's inputs depend on it)")
    dtype: Literal["float32", "float16"] = Field("float32", description="stored logits dtype (float32: as the "
                                                  "teacher gave them; float16 rounds them)")
    batch_size: int | None = Field(None, gt=0, description="teacher batch for the build (default: 4x train for "
                                   "images, 1x for text: less padding)")
    max_gb: float = Field(4.0, gt=0, description="disk budget of the cache (GB): arms join it in config order; one "
                          "whose targets (logits, attention maps) would take it past this runs its teacher online")


class MeteringConfig(_Strict):
    latency_batches: int = Field(20, ge=20, description="timed batches per latency figure (>= 20)")
    latency_warmup: int = Field(3, ge=1)
    isolate_arms: bool = Field(True, description="run each arm in its own child process (CPU peak memory)")


class CheckpointConfig(_Strict):
    every_s: float = Field(300.0, ge=0, description="seconds of training between mid-epoch checkpoints (0: epoch "
                           "ends only); a rerun of the same command resumes an unfinished job from its last one")
    every_steps: int = Field(0, ge=0, description="also checkpoint every N steps (0: off)")


class GuardConfig(_Strict):
    max_loss_growth: float = Field(10.0, ge=0, description="stop a job whose mean loss over 20 steps exceeds this "
                                   "times its first 20 steps' (divergence); 0: off")
    refuse_chance_teacher: bool = Field(True, description="refuse a trained teacher at chance level (non-finite "
                                        "outputs, or one class / one value for every eval sample)")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # experiment and arm names become file names under --out


def _check_name(kind: str, name: str) -> str:
    if not NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{kind}'{name}' is used in file names under --out: use letters, digits, '_', '.' and '-' "
                         "(starting with a letter or digit, no '..' or path separators)")
    return name


class ExperimentConfig(_Strict):
    name: str
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    train: OptimConfig = OptimConfig()
    arms: dict[str, ArmConfig] = {"plain": ArmConfig(method="plain"), "kd": ArmConfig(method="kd")}
    seeds: list[int] = [0]
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    threads: int | None = Field(None, gt=0, description="torch intra-op threads (default: torch's choice)")
    metering: MeteringConfig = MeteringConfig()
    ranking: RankingConfig = RankingConfig()
    cache: CacheConfig = CacheConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    guard: GuardConfig = GuardConfig()

    @field_validator("name")
    @classmethod
    def _name_is_a_file_name(cls, v: str) -> str:
        return _check_name("", v)

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, v: dict) -> dict:
        for arm in v:
            _check_name("arm name ", str(arm))
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds_nonempty(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("list at least one seed")
        return v

    @model_validator(mode="after")
    def _combos(self) -> "ExperimentConfig":
        from leankd.device import resolve_device  # local: both import torch
        from leankd.precision import resolve

        try:
            device = resolve_device(self.device)
            resolve(self.precision, device)  # the one precision check
        except ConfigError as err:
            raise ValueError(str(err).removeprefix("config error: ")) from None
        if self.teacher.precision == "int8" and (self.data.dataset == "cifar10" or device.type != "cpu"):
            raise ValueError("teacher.precision=int8 quantises Linear layers dynamically, which runs on CPU and "
                             "pays off for transformer teachers only (a CNN's convolutions would stay fp32); "
                             "use teacher.precision=bf16 or fp32 here")
        if self.data.dataset == "cifar10":
            for where, name in (("teacher.model", self.teacher.model), ("student.model", self.student.model)):
                try:
                    _known_model(name)
                except ValueError as err:
                    raise ValueError(f"{where}: {err}") from None
            if self.student.layers is not None or any(a.layers is not None for a in self.arms.values()):
                raise ValueError("student/arm 'layers' build text students from teacher layers; "
                                 "they do not apply to data.dataset=cifar10")
        else:
            from leankd.data.glue import get_task

            if self.data.task is None:
                raise ValueError("data.task is required for data.dataset=glue (e.g. data.task=sst2)")
            try:
                task = get_task(self.data.task)  # unknown task: one-line error with a did-you-mean hint
            except UserError as err:
                raise ValueError(str(err).removeprefix("data error: ")) from None
            self._check_text_arms(task.is_regression)
        if not self.arms:
            raise ValueError("list at least one arm")
        for name, arm in self.arms.items():
            if arm.precision is not None:
                try:
                    resolve(arm.precision, device)
                except ConfigError as err:
                    raise ValueError(f"arms.{name}.{str(err).removeprefix('config error: ')}") from None
        self._check_matches()
        return self

    def _check_matches(self) -> None:
        """A budget-matched arm needs its target and an unmatched plain arm of the same settings (its base: the
        cost of one run of the recipe, which the budget is divided by)."""
        for name, arm in self.arms.items():
            if arm.match is None:
                continue
            target = self.arms.get(arm.match)
            if target is None or arm.match == name:
                raise ValueError(f"arms.{name}.match: '{arm.match}' is not another arm of this experiment"
                                 f"{did_you_mean(arm.match, [a for a in self.arms if a != name], known=9)}")
            if target.match is not None:
                raise ValueError(f"arms.{name}.match: '{arm.match}' is itself budget-matched; match an arm that is not")
            if self.base_arm(name) is None:
                raise ValueError(f"arms.{name}.match needs an unmatched plain arm with the same settings to measure "
                                 "what one run costs (add e.g. plain: {method: plain})")

    def base_arm(self, name: str) -> str | None:
        """The unmatched plain arm a budget-matched arm scales: the first with the same settings, match aside."""
        want = self.arms[name].model_dump(exclude={"match", "match_by"})
        return next((a for a, arm in self.arms.items() if arm.match is None and arm.method == "plain"
                     and arm.model_dump(exclude={"match", "match_by"}) == want), None)

    def _check_text_arms(self, regression: bool) -> None:
        for name, arm in self.arms.items():
            if "attention_transfer" in arm.feature_losses:
                raise ValueError(f"arms.{name}: attention_transfer compares convolutional feature maps; for "
                                 "transformer layers use hint_mse, hint_cosine or attention_relation")
            if regression and arm.temperature != ArmConfig.model_fields["temperature"].default:
                raise ValueError(f"arms.{name}.temperature does not apply to a regression task ({self.data.task}: "
                                 "kd is an MSE to the teacher's prediction); remove it")

    def hash(self) -> str:
        return config_hash(self.model_dump(mode="json"))


def config_hash(obj: Any) -> str:
    """Stable 12-hex hash of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]
