"""The torchdistill side of benchmarks/vs_torchdistill.py: Hinton KD with torchdistill's own DistillationBox.

Runs in its own virtual environment (benchmarks/.venv-torchdistill: torch + torchvision + torchdistill), started
by vs_torchdistill.py as a subprocess; it does not import leankd. By hand:

    benchmarks/.venv-torchdistill/bin/python benchmarks/torchdistill_side.py SPEC.json

SPEC.json (written by vs_torchdistill.py) names the data slice (.npz: train/test uint8 NCHW images + labels),
the trained teacher's and the student's initial state dicts (torch.save), and the recipe. The training section
is torchdistill's YAML config (below), loaded with its yaml_util and built by `get_distillation_box`; the loop
is torchdistill's documented one (pre_epoch_process, forward_process, post_forward_process, post_epoch_process).
Prints one JSON line: per-epoch seconds (training loop only: data loading, augmentation, teacher and student
forward/backward, optimiser step; evaluation excluded), test accuracy and top-1 agreement with the teacher.
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchdistill.common import yaml_util
from torchdistill.core.distillation import get_distillation_box
from torchdistill.models.classification.resnet import resnet
from torchvision.transforms import v2

# torchdistill's KDLoss: alpha weighs the CE term, beta (default 1 - alpha) the T^2 KL term
TRAIN_YAML = """
num_epochs: {epochs}
train_data_loader:
  dataset_id: train
  sampler:
    class_or_func: !import_get {{key: 'torch.utils.data.RandomSampler'}}
    kwargs: {{}}
  kwargs: {{batch_size: {batch_size}, num_workers: 0, pin_memory: false, drop_last: false}}
teacher: {{forward_proc: 'forward_batch_only', sequential: [], requires_grad: false}}
student: {{forward_proc: 'forward_batch_only', sequential: [], requires_grad: true}}
optimizer:
  key: 'SGD'
  kwargs: {{lr: {lr}, momentum: {momentum}, nesterov: {nesterov}, weight_decay: {weight_decay}}}
criterion:
  key: 'WeightedSumLoss'
  kwargs:
    sub_terms:
      kd:
        criterion:
          key: 'KDLoss'
          kwargs: {{student_module_path: '.', student_module_io: 'output', teacher_module_path: '.',
                    teacher_module_io: 'output', temperature: {temperature}, alpha: {ce_weight}, beta: {kl_weight},
                    reduction: 'batchmean'}}
        weight: 1.0
"""


class NpzImages(Dataset):
    """uint8 N x 3 x 32 x 32 images + labels, with torchvision transforms (crop + flip, then normalise)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, augment: bool):
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels)
        aug = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if augment else []
        self.transform = v2.Compose([*aug, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def schedule(spec: dict, total_steps: int):
    """leankd's per-step schedule (linear warm-up over warmup_frac, then linear decay to 0), as a multiplier."""
    warm = int(spec["warmup_frac"] * total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, 1 - (step - warm) / max(1, total_steps - warm))
    return factor


def build_box(spec: dict, teacher, student, train_set):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(TRAIN_YAML.format(ce_weight=1 - spec["alpha"], kl_weight=spec["alpha"], **spec))
    train_config = yaml_util.load_yaml_file(f.name)
    Path(f.name).unlink()
    box = get_distillation_box(teacher, student, {"train": train_set}, train_config, torch.device("cpu"),
                               None, False, 1)
    # leankd decays weights only (not BN gains or biases) and steps a warm-up + linear-decay schedule per batch;
    # torchdistill's config decays every parameter and has no such schedule in YAML, so the same groups and
    # schedule are set on the box here (the box's own post_forward_process still steps both).
    params = [p for p in student.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": spec["weight_decay"]},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    box.optimizer = torch.optim.SGD(groups, lr=spec["lr"], momentum=spec["momentum"], nesterov=spec["nesterov"])
    total = spec["epochs"] * math.ceil(len(train_set) / spec["batch_size"])
    box.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(box.optimizer, schedule(spec, total))
    box.scheduling_step = 1
    return box


@torch.inference_mode()
def predict(model, images: np.ndarray, mean, std, precision: str) -> np.ndarray:
    model.eval()
    norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    out = []
    for i in range(0, len(images), 256):
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            out.append(model(norm(torch.from_numpy(images[i:i + 256]))).float())
    return torch.cat(out).argmax(1).numpy()


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    data = np.load(spec["data"])
    mean, std = spec["mean"], spec["std"]
    train_set = NpzImages(data["train_images"], data["train_labels"], mean, std, spec["augment"])
    # torchdistill's own CIFAR ResNet (depth 6n+2, option-B shortcuts): the same modules and state-dict keys as
    # leankd's resnet20 / resnet8, so the shared teacher and the student's initial weights load as they are
    teacher, student = resnet(spec["teacher_depth"], 10, False, False), resnet(spec["student_depth"], 10, False, False)
    teacher.load_state_dict(torch.load(spec["teacher_state"]))
    student.load_state_dict(torch.load(spec["student_state"]))
    teacher.eval()
    torch.manual_seed(spec["seed"])
    box = build_box(spec, teacher, student, train_set)
    epoch_s = []
    for epoch in range(spec["epochs"]):
        start = time.perf_counter()
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            with torch.autocast("cpu", torch.bfloat16, enabled=spec["precision"] == "bf16"):
                loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
        box.post_epoch_process()
        epoch_s.append(time.perf_counter() - start)
    pred = predict(student, data["test_images"], mean, std, spec["precision"])
    teacher_pred = predict(teacher, data["test_images"], mean, std, spec["precision"])
    print(json.dumps({"epoch_s": epoch_s, "accuracy": float((pred == data["test_labels"]).mean()),
                      "agreement": float((pred == teacher_pred).mean()), "loss": float(loss),
                      "versions": {m.__name__: m.__version__ for m in (torch, __import__("torchvision"),
                                                                       __import__("torchdistill"))}}))


if __name__ == "__main__":
    main(sys.argv[1])
