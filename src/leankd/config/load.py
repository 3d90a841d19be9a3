"""Loading a config: a YAML file + dotted `key=value` overrides -> `ExperimentConfig`, every mistake one line."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from leankd.config.schema import ArmConfig, ExperimentConfig, PairSpec
from leankd.errors import ConfigError, did_you_mean, not_found


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


def _models_beside(tree: dict, folder: Path) -> None:
    """A model file the config file names by a relative path (`models.py:tiny8`) is the one beside it (a
    command-line override's, like any path typed in a shell, is relative to the working directory)."""
    from leankd.models.user import absolute_ref  # local: models import torch

    for role in ("teacher", "student"):
        node = tree.get(role)
        if isinstance(node, dict) and isinstance(node.get("model"), str):
            node["model"] = absolute_ref(node["model"], folder.resolve())


BRACKETS = {"{": "}", "[": "]"}


def _at(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(err: yaml.YAMLError) -> str:
    """Where and what: a bracket or quote left open is named with the place it was opened, a stray closing one with
    its own place."""
    opened, mark = getattr(err, "context_mark", None), getattr(err, "problem_mark", None)
    what = getattr(err, "problem", None) or str(err).splitlines()[0]
    if opened is not None and opened.buffer and any(k in (err.context or "") for k in ("flow", "quoted")):
        char = opened.buffer[opened.pointer]
        where = f" ({_at(mark)}: {what})" if mark else ""
        return f": the '{char}' at {_at(opened)} is never closed{where}; add the missing '{BRACKETS.get(char, char)}'"
    stray = next((c for c in BRACKETS.values() if what.endswith(f"found '{c}'")), None)
    if stray and mark is not None:
        return f": the '{stray}' at {_at(mark)} closes nothing (no bracket is open there); remove it"
    mark = mark or opened
    return f"{' at ' + _at(mark) if mark else ''}: {what}"


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    from leankd.models.user import refuse_in_job

    refuse_in_job()  # a user's script, imported by a job for its models, would start its experiment again
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: file '{path}' {not_found(path)} (see configs/ for examples)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config error: '{path}' is not UTF-8 text (byte {err.start}: {err.reason}); save it "
                          "as UTF-8") from None
    try:
        tree = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"config error: '{path}' is not valid YAML{_yaml_problem(err)}") from None
    if tree is None:
        raise ConfigError(f"config error: '{path}' is empty; start from one of configs/ (e.g. "
                          "configs/demo/cifar10-resnet20-resnet8.yaml)")
    if not isinstance(tree, dict):
        raise ConfigError(f"config error: '{path}' must hold a mapping at the top level")
    tree.setdefault("name", path.stem)
    _models_beside(tree, path.parent)
    teacher = tree.get("teacher")
    if isinstance(teacher, dict) and isinstance(teacher.get("checkpoint"), str):  # relative: to this file's folder
        teacher["checkpoint"] = str(path.parent.resolve() / Path(teacher["checkpoint"]).expanduser())
    for key, value in parse_overrides(list(overrides)):
        _set_dotted(tree, key, value)
    return build_config(tree)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
