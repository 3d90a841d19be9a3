"""Typed experiment config: YAML file + dotted `key=value` overrides -> `ExperimentConfig`.

    cfg = load_config("configs/demo/cifar10-resnet20-resnet8.yaml", ["train.epochs=1", "seeds=[0,1]"])

Every mistake is refused here, before any work starts, as a `ConfigError` whose message is one line that
names the key and, for a typo, the closest valid key. Configs are data: `yaml.safe_load`, never eval.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
        return self


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
    dtype: Literal["float32", "float16"] = Field("float32", description="stored logits dtype (float32: exactly "
                                                  "what the online teacher gives)")
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
        return self

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


# ---------------------------------------------------------------------------- loading and overrides

def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _valid_keys(ann, prefix + name + ".")
    return keys


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config error: cannot set '{key}': '{p}' is not a section")
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"config error: override '{item}' is not key=value (e.g. train.epochs=3)")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return out


# names other toolkits (Hugging Face TrainingArguments, torchdistill, timm) use for leankd's keys
ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs", "max_epochs": "epochs",
           "per_device_train_batch_size": "batch_size", "train_batch_size": "batch_size", "bs": "batch_size",
           "warmup_ratio": "warmup_frac", "wd": "weight_decay", "optim": "optimizer", "lr_scheduler_type": "schedule",
           "scheduler": "schedule", "tau": "temperature", "T": "temperature", "max_seq_length": "max_length",
           "seed": "seeds", "bf16": "precision", "fp16": "precision", "mixed_precision": "precision"}


def _suggest(loc: str) -> str:
    """" (did you mean 'x'?)" for an unknown dotted key: a known alias in the same section first, then the closest
    whole dotted key (arm fields as arms.<name>.field)."""
    valid = _valid_keys(ExperimentConfig) + [f"arms.<name>.{k}" for k in _valid_keys(ArmConfig)]
    probe = "arms.<name>." + loc.split(".", 2)[2] if loc.startswith("arms.") and loc.count(".") >= 2 else loc
    section, _, last = probe.rpartition(".")
    alias = f"{section}.{ALIASES[last]}".lstrip(".") if last in ALIASES else None
    if alias in valid:
        return f" (did you mean '{alias}'?)"
    same_section = [k for k in valid if k.rpartition(".")[0] == section]
    return did_you_mean(probe, same_section, cutoff=0.6) or did_you_mean(probe, valid, cutoff=0.6)


def _format_error(err: ValidationError) -> str:
    # a value matching no branch of a union (arms.<name>.pairs) gives one error per branch: report the
    # deepest one (the branch the input was meant for) and drop pydantic's branch tags from its location
    e = max(err.errors(), key=lambda e: len(e["loc"]))
    tags = ("int", "str", PairSpec.__name__)
    loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in tags)))
    if e["type"] == "extra_forbidden":
        return f"config error: unknown key '{loc}'{_suggest(loc)}"
    if e["type"] in ("value_error", "assertion_error"):
        msg = str(e.get("ctx", {}).get("error", e["msg"]))
        return f"config error: {loc + ': ' if loc else ''}{msg}"
    return f"config error: {loc}: {e['msg'].lower()}, got {e.get('input')!r}"


def build_config(tree: dict) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (the second would silently win); keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: file '{path}' not found (see configs/ for examples)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config error: '{path}' is not UTF-8 text (byte {err.start}: {err.reason}); save it "
                          "as UTF-8") from None
    try:
        tree = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config error: '{path}' is not valid YAML{where}: {what}") from None
    if tree is None:
        raise ConfigError(f"config error: '{path}' is empty; start from one of configs/ (e.g. "
                          "configs/demo/cifar10-resnet20-resnet8.yaml)")
    if not isinstance(tree, dict):
        raise ConfigError(f"config error: '{path}' must hold a mapping at the top level")
    tree.setdefault("name", path.stem)
    for key, value in parse_overrides(list(overrides)):
        _set_dotted(tree, key, value)
    return build_config(tree)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
