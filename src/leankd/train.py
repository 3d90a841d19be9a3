"""fit() and predict(): the one hot loop, used for the teacher and for every student arm; optimiser and LR schedule.

    stats = fit(distiller, loader, optimizer, scheduler, precision, epochs=3, device=dev, tag="kd/s0")
    logits, labels = predict(model, test_loader, precision, device=dev)

`stats["train_s"]` covers the whole step loop (batch assembly and augmentation, teacher forwards, student
forward/backward/step) with the device synchronised before the clock is read; evaluation is outside it.
The loop never waits for the device per step: on CUDA the NaN check reads a device flag every
`CHECK_EVERY` steps (when the progress bar reads the loss anyway), on CPU every step (free there).
"""
from __future__ import annotations

import logging
import math
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from leankd.batching import logits_of, to_device
from leankd.device import sync
from leankd.errors import TrainingError

log = logging.getLogger(__name__)
CHECK_EVERY = 20  # CUDA: steps between reads of the loss (each read is a CPU-GPU sync point)


def build_optimizer(params_model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """SGD/Adam/AdamW; weight decay on weights only (not on BN/LayerNorm gains or biases)."""
    params = [p for p in params_model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return opt_cls(groups, lr=cfg.lr)


def build_scheduler(optimizer, cfg, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR multiplier: linear warm-up, then linear decay to 0 (onecycle), cosine, or constant."""
    warm = int(cfg.warmup_frac * total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        frac = (step - warm) / max(1, total_steps - warm)
        return max(0.0, 1 - frac) if cfg.schedule == "onecycle" else 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _check_finite(bad_step: torch.Tensor, tag: str, epoch: int) -> None:
    """Raise for the first step whose loss was not finite (reading `bad_step` syncs on CUDA)."""
    step = int(bad_step.item())
    if step >= 0:
        raise TrainingError(f"{tag}: loss became nan or inf at epoch {epoch + 1} step {step + 1}; "
                            "lower the learning rate (train.lr=...) or use precision=fp32")


def fit(distiller, loader, optimizer, scheduler, precision, epochs: int, device: torch.device,
        tag: str = "") -> dict:
    distiller.train()
    history = []
    every = CHECK_EVERY if device.type == "cuda" else 1
    sync(device)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        bar = tqdm(total=loader.num_samples, desc=f"{tag} epoch {epoch + 1}/{epochs}", unit="sample",
                   unit_scale=True, leave=False, mininterval=1.0 if sys.stderr.isatty() else 10.0)
        loss_sum, n_steps = torch.zeros((), device=device), 0
        bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step, on device
        for step, (x, y, key) in enumerate(loader.keyed_epoch(epoch)):
            x, y = to_device(x, device), y.to(device, non_blocking=True)
            with precision.autocast():
                out = distiller(x, y, key)  # key (sample indices, views): for a cached teacher's lookups
            loss = out["loss"]
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss.detach()), step, bad_step)
            if step % every == 0:
                _check_finite(bad_step, tag, epoch)  # before a NaN reaches the weights on CPU
            precision.backward(loss)
            precision.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loss_sum += loss.detach()
            n_steps += 1
            bar.update(len(y))
            if step % CHECK_EVERY == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.3g}", refresh=False)
            del out, loss
        bar.close()
        _check_finite(bad_step, tag, epoch)
        mean_loss = (loss_sum / max(1, n_steps)).item()
        history.append(mean_loss)
        log.info("%s epoch %d/%d: mean loss %.4f, %.0f s elapsed", tag, epoch + 1, epochs, mean_loss,
                 time.perf_counter() - t0)
    sync(device)
    return {"train_s": time.perf_counter() - t0, "epoch_loss": history}


@torch.inference_mode()
def predict(model, loader, precision, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32 numpy, N x C) and labels of `model` over `loader` in order, in eval mode."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in loader.epoch(0):
        with precision.autocast():
            out = logits_of(model, to_device(x, device))
        logits.append(out.float().cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()
