"""Model inputs are a tensor (vision) or a dict of tensors (text: input_ids, attention_mask, ...).

These three helpers are the only places that care which: the loop, the distiller and the meters call them.
"""
from __future__ import annotations

import torch


def to_device(inputs, device: torch.device):
    if isinstance(inputs, dict):
        return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
    return inputs.to(device, non_blocking=True)


def input_device(inputs) -> torch.device:
    return next(iter(inputs.values())).device if isinstance(inputs, dict) else inputs.device


def logits_of(model: torch.nn.Module, inputs) -> torch.Tensor:
    """Call `model` on `inputs`; Hugging Face models return an output object whose `.logits` we take."""
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out if isinstance(out, torch.Tensor) else out.logits
