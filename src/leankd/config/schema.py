"""The config schema: pydantic models of an experiment and the checks that refuse a bad combination.
Every mistake is refused here, as a `ConfigError` whose message is one line naming the key (see load.py).
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from leankd.config.base import Strict as _Strict
from leankd.config.base import on_off as _on_off
from leankd.config.numbers import Float, Int, Seed
from leankd.config.speed import SpeedConfig
from leankd.errors import ConfigError, UserError, did_you_mean

# The keys of your own data sets (README "Your own data"): which data set each belongs to, and which it needs.
DATASET_KEYS = {"root": "imagefolder", "image_size": "imagefolder", "train_file": "textfile", "eval_file": "textfile",
                "text_column": "textfile", "text_pair_column": "textfile", "label_column": "textfile"}
REQUIRED_KEYS = {"imagefolder": ("root",), "textfile": ("train_file", "eval_file", "text_column", "label_column")}


class DataConfig(_Strict):
    dataset: Literal["cifar10", "glue", "imagefolder", "textfile"] = "cifar10"
    task: str | None = Field(None, description="GLUE task (sst2, mrpc, rte, cola, stsb, wnli, qnli, ...)")
    root: str | None = Field(None, description="imagefolder: the folder holding train/<class>/ and test/<class>/ "
                             "(or val/); a relative path is under the data directory")
    image_size: Int | None = Field(None, gt=0, description="imagefolder: resize (centre crop) every image to N x N "
                                   "(default: the images' own size, which must then be the same for all)")
    train_file: str | None = Field(None, description="textfile: training examples (.csv, .tsv, .jsonl, .parquet); "
                                   "a relative path is under the data directory")
    eval_file: str | None = Field(None, description="textfile: the examples the metrics are computed on")
    text_column: str | None = Field(None, description="textfile: the column (JSON key) holding the text")
    text_pair_column: str | None = Field(None, description="textfile: the column of a second text (sentence pairs)")
    label_column: str | None = Field(None, description="textfile: the column of the class (strings or integers)")
    max_length: Int = Field(128, gt=0, description="text: tokens per sequence after truncation")
    bucket: bool = Field(True, description="text: length-bucketed batches (less padding)")
    train_limit: Int | None = Field(None, gt=0, description="use a fixed stratified-by-shuffle slice of train")
    test_limit: Int | None = Field(None, gt=0, description="use a fixed slice of the test split")
    val_size: Int = Field(0, ge=0, description="held-out validation images carved from train")
    augment: bool = True
    on_device: Literal["auto", "on", "off"] = Field(
        "auto", description="keep the uint8 training set (text: token ids) and the teacher cache on the training "
        "device, batches gathered and augmented there: auto = when it takes <= 25% of the GPU's free memory (CPU: "
        "in place); off = batches made on the host, copied per step (pinned, non-blocking)")
    _device_words = field_validator("on_device", mode="before")(_on_off)

    def settings(self) -> dict:
        """What the data is, for identities: every key but where it is placed (on_device: the same batches)."""
        return self.model_dump(mode="json", exclude={"on_device"})

    @property
    def is_text(self) -> bool:
        return self.dataset in ("glue", "textfile")

    def check_keys(self) -> None:
        """The keys of your own data set are given, and only with it (called by ExperimentConfig: one-line errors
        that name the keys in full)."""
        missing = [k for k in REQUIRED_KEYS.get(self.dataset, ()) if getattr(self, k) is None]
        if missing:
            raise ValueError(f"data.dataset={self.dataset} needs data.{missing[0]} (missing: "
                             f"{', '.join('data.' + k for k in missing)}; see README 'Your own data')")
        stray = [k for k, dataset in DATASET_KEYS.items() if getattr(self, k) is not None and dataset != self.dataset]
        if stray:
            raise ValueError(f"data.{stray[0]} applies to data.dataset={DATASET_KEYS[stray[0]]} only, not "
                             f"{self.dataset}; remove it or set data.dataset={DATASET_KEYS[stray[0]]}")


class OptimConfig(_Strict):
    epochs: Int = Field(1, gt=0)
    batch_size: Int = Field(128, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: Float = Field(0.1, gt=0)
    momentum: Float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: Float = Field(5e-4, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup_frac: Float = Field(0.15, ge=0, lt=1)
    label_smoothing: Float = Field(0.0, ge=0, lt=1)
    freeze_embeddings: bool = Field(False, description="text: keep the word embeddings fixed (the largest "
                                    "tensor: ~30% faster steps on CPU)")


def _known_model(name: str, isolated: bool) -> str:
    from leankd.models.registry import ORIGINS, list_models  # local: models import torch
    from leankd.models.user import is_import_path

    if is_import_path(name):  # checked when it was set (_own_model)
        return name
    if name not in list_models():
        hint = did_you_mean(name, list_models()) or (f"; known: {', '.join(list_models()[:20])}; or your own: "
                                                     "FILE.py:FUNCTION or package.module:FUNCTION")
        raise ValueError(f"unknown model '{name}'{hint}")
    if isolated and name in ORIGINS:  # registered where no job process can import it from
        raise ValueError(f"model '{name}' was registered where a job's child process cannot import it from (an "
                         "interactive session, or inside a function); define it at the top level of a .py file, or "
                         "set metering.isolate_arms=false")
    return name


def _own_model(name: str) -> str:
    """A user's model as each job's child process will build it: an import path with its file made absolute (a
    relative one against the working directory: load_config resolves a config file's own against its folder),
    checked to import; a model registered by a user's module or script, the import path of its function."""
    from leankd.models import resolve_model  # local: models import torch

    try:
        return resolve_model(name)
    except UserError as err:
        raise ValueError(str(err).removeprefix("model error: ")) from None


class TeacherConfig(_Strict):
    model: str = Field("resnet20", description="a built-in or registered name, FILE.py:FUNCTION or "
                       "package.module:FUNCTION (vision); a Hugging Face name or local folder (text)")
    _own = field_validator("model")(_own_model)
    checkpoint: str | None = Field(None, description="safetensors or torch file; skips training. A relative path "
                                   "in a config file is relative to that file's folder (on the command line: to the "
                                   "working directory)")
    seed: Seed = 0
    train: OptimConfig = OptimConfig()
    min_metric: Float | None = Field(None, description="refuse (never store or use) a teacher whose eval metric, the "
                                     "task's first, is below this; a teacher at chance level is always refused")
    precision: Literal["same", "fp32", "bf16", "int8"] = Field(
        "same", description="the teacher's forwards when distilling (cache build and online): same = the "
        "experiment's precision; int8 = dynamic quantisation of its Linear layers (text teachers on CPU)")
    shard: bool = Field(False, description="data parallel runs (torchrun): shard the online teacher's parameters "
                        "over the ranks with FSDP (fully_shard per block), gathered for each block's forward; for a "
                        "teacher too big for one device (GPU); no effect in one process")



LayerRef = Int | str  # a 0-based index into the model's candidate layers (`leankd layers`), or a module name
FEATURE_LOSSES = ("hint_mse", "hint_cosine", "attention_transfer", "attention_relation")


class StudentConfig(_Strict):
    model: str = Field("resnet8", description="as teacher.model")
    _own = field_validator("model")(_own_model)
    layers: list[LayerRef] | None = Field(None, description="text: teacher layers (index or name) the student keeps")


class PairSpec(_Strict):
    """One explicit layer pair: a student layer distilled from a teacher layer (index or module name)."""
    student: LayerRef
    teacher: LayerRef


class ArmConfig(_Strict):
    method: Literal["plain", "kd", "features"] = Field(
        "plain", description="plain: labels only; kd: + teacher logits (+ feature pairs if set); "
        "features: labels + feature pairs only (the teacher forward stops after its deepest tapped layer)")
    temperature: Float = Field(4.0, gt=0)
    alpha: Float = Field(0.9, ge=0, le=1, description="weight of the logit-KD term vs the label loss")
    layers: list[LayerRef] | None = Field(None, description="text: this arm's teacher layers (overrides "
                                          "student.layers)")
    pairs: Literal["last", "skip", "uniform", "auto", "random"] | list[LayerRef | PairSpec] | None = Field(
        None, description="feature distillation: a preset, or teacher layers for student layers 0, 1, ..., or "
        "{student, teacher} records")
    pair_seed: Seed = Field(0, description="the draw for pairs=random")
    feature_losses: dict[str, Float] = Field(
        {"hint_mse": 1.0}, description=f"feature loss -> weight (summed over pairs / number of pairs); "
        f"one of {', '.join(FEATURE_LOSSES)}")
    relations: list[Literal["qq", "kk", "vv", "qk"]] = Field(
        ["qq", "kk", "vv"], description="attention_relation: MiniLMv2 Q-Q/K-K/V-V; qk = attention (MiniLM v1)")
    relation_heads: Int | None = Field(None, gt=0, description="attention_relation heads (default: teacher's)")
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
    samples: Int = Field(512, ge=8, description="calibration samples drawn from the training data")
    by: Literal["ablation", "influence"] = Field(
        "ablation", description="auto's score: task-loss increase when the layer is ablated, or block "
        "influence 1 - cos(input, output)")
    seed: Seed = 0
    batch_size: Int = Field(128, gt=0)


class CacheConfig(_Strict):
    mode: Literal["auto", "on", "off"] = Field(
        "auto", description="teacher outputs read from a cache built once: auto = when >= 2 jobs share it or a "
        "valid one exists; on; off = the teacher runs online every step")
    _mode_words = field_validator("mode", mode="before")(_on_off)
    views: Int | None = Field(None, gt=0, description="augmentation views cached per sample (default: train.epochs; "
                              "text: 1)")
    seed: Seed = Field(0, description="the augmentation seed of the views (every arm's inputs depend on it)")
    dtype: Literal["float32", "float16"] = Field("float32", description="stored logits dtype (float32: as the "
                                                  "teacher gave them; float16 rounds them)")
    batch_size: Int | None = Field(None, gt=0, description="teacher batch for the build (default: 4x train for "
                                   "images, 1x for text: less padding)")
    max_gb: Float = Field(4.0, gt=0, description="disk budget of the cache (GB): arms join it in config order; one "
                          "whose targets (logits, attention maps) would take it past this runs its teacher online")


class MeteringConfig(_Strict):
    latency_batches: Int = Field(20, ge=20, description="timed batches per latency figure (>= 20)")
    latency_warmup: Int = Field(3, ge=1)
    isolate_arms: bool = Field(True, description="run each arm in its own child process (CPU peak memory)")


class CheckpointConfig(_Strict):
    every_s: Float = Field(300.0, ge=0, description="seconds of training between mid-epoch checkpoints (0: epoch "
                           "ends only); a rerun of the same command resumes an unfinished job from its last one")
    every_steps: Int = Field(0, ge=0, description="also checkpoint every N steps (0: off)")


class GuardConfig(_Strict):
    max_loss_growth: Float = Field(10.0, ge=0, description="stop a job whose mean loss over 20 steps exceeds this "
                                   "times its first 20 steps' (divergence); 0: off")
    refuse_chance_teacher: bool = Field(True, description="refuse a trained teacher at chance level (non-finite "
                                        "outputs, or one class / one value for every eval sample)")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # experiment and arm names become file names under --out
NAME_MAX = 160  # bytes: file systems allow 255 in a file name, and leankd adds up to ~70 (e.g. -seed<N>.ckpt.progress)


def _check_name(kind: str, name: str) -> str:
    if not NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{kind}'{name}' is used in file names under --out: use letters, digits, '_', '.' and '-' "
                         "(starting with a letter or digit, no '..' or path separators)")
    if len(name.encode()) > NAME_MAX:
        raise ValueError(f"{kind}'{name[:20]}...' is {len(name.encode())} bytes long; it is used in file names under "
                         f"--out, which leankd extends and file systems cut at 255: use at most {NAME_MAX}")
    return name


class ExperimentConfig(_Strict):
    name: str
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    train: OptimConfig = OptimConfig()
    arms: dict[str, ArmConfig] = {"plain": ArmConfig(method="plain"), "kd": ArmConfig(method="kd")}
    seeds: list[Seed] = [0]
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    threads: Int | None = Field(None, gt=0, description="torch intra-op threads (default: torch's choice)")
    speed: SpeedConfig = SpeedConfig()
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
        self.data.check_keys()
        if self.teacher.precision == "int8" and (not self.data.is_text or device.type != "cpu"):
            raise ValueError("teacher.precision=int8 quantises Linear layers dynamically, which runs on CPU and "
                             "pays off for transformer teachers only (a CNN's convolutions would stay fp32); "
                             "use teacher.precision=bf16 or fp32 here")
        self._check_models()
        if not self.data.is_text:
            if self.student.layers is not None or any(a.layers is not None for a in self.arms.values()):
                raise ValueError("student/arm 'layers' build text students from teacher layers; "
                                 f"they do not apply to data.dataset={self.data.dataset}")
        elif self.data.dataset == "textfile":
            self._check_text_arms(False)
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

    def _check_models(self) -> None:
        """Vision: a built-in, registered or imported model; text: no import path (those name vision factories)."""
        from leankd.models.user import is_import_path  # local: models import torch

        for where, name in (("teacher.model", self.teacher.model), ("student.model", self.student.model)):
            if self.data.is_text:
                if is_import_path(name):
                    raise ValueError(f"{where}: an import path names a vision model factory; a text model is a "
                                     "Hugging Face name or a local folder")
                continue
            try:
                _known_model(name, self.metering.isolate_arms)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None

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
