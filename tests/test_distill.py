"""Invariants of the training path: frozen teacher, pure-function randomness, same seed -> same result."""
import numpy as np
import torch

from leankd.config import ArmConfig, OptimConfig
from leankd.data import randomness as rnd
from leankd.data.cifar10 import VisionLoader, augment
from leankd.distill.distiller import Distiller
from leankd.models import create_model
from leankd.precision import Precision
from leankd.train import build_optimizer, build_scheduler, fit


def _fake_loader(n=64, bs=16, seed=0):
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return VisionLoader(images, g.integers(0, 10, n), batch_size=bs, seed=seed, augment=True, shuffle=True)


def _train(method, teacher=None, seed=0):
    torch.manual_seed(seed)
    student = create_model("resnet8", 10)
    optim = OptimConfig(epochs=2, batch_size=16, lr=0.05)
    d = Distiller(student, teacher, ArmConfig(method=method))
    loader = _fake_loader(seed=seed)
    opt = build_optimizer(student, optim)
    fit(d, loader, opt, build_scheduler(opt, optim, 2 * len(loader)), Precision.create("fp32", torch.device("cpu")),
        2, torch.device("cpu"))
    return student, d


def test_teacher_state_is_bit_identical_after_kd_arm():
    torch.manual_seed(1)
    teacher = create_model("resnet8", 10)
    teacher.train()  # even handed over in train mode, the distiller must freeze it
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    _, d = _train("kd", teacher)
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert d.teacher_s > 0
    assert "teacher" not in dict(d.named_modules())  # never trained, never in the student's state


def test_same_seed_same_weights_and_different_seed_differs():
    a, _ = _train("plain", seed=3)
    b, _ = _train("plain", seed=3)
    c, _ = _train("plain", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_randomness_is_a_pure_function_of_seed_epoch_index():
    idx = np.arange(100)
    assert np.array_equal(rnd.shuffle_order(100, 0, 1), rnd.shuffle_order(100, 0, 1))
    assert not np.array_equal(rnd.shuffle_order(100, 0, 1), rnd.shuffle_order(100, 0, 2))
    assert sorted(rnd.shuffle_order(100, 0, 1)) == list(range(100))
    # the same sample gets the same crop/flip whatever batch it lands in
    x = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    whole = augment(x, 7, 2, idx)
    part = augment(x[40:50], 7, 2, idx[40:50])
    assert torch.equal(whole[40:50], part)
    assert not torch.equal(whole, augment(x, 7, 3, idx))
    u = rnd.uniform(0, 0, np.arange(20000), rnd.STREAM_FLIP)
    assert 0.48 < (u < 0.5).mean() < 0.52


def test_augment_crop_and_flip_are_correct():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).reshape(2, 3, 32, 32).to(torch.uint8)
    idx = np.array([5, 9])
    out = augment(x, 1, 0, idx)
    dx = rnd.randint(1, 0, idx, rnd.STREAM_CROP_X, 9)
    dy = rnd.randint(1, 0, idx, rnd.STREAM_CROP_Y, 9)
    flip = rnd.uniform(1, 0, idx, rnd.STREAM_FLIP) < 0.5
    for i in range(2):
        padded = torch.nn.functional.pad(x[i:i + 1], (4, 4, 4, 4))[0]
        crop = padded[:, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)


def test_nan_loss_stops_with_one_line_error():
    import pytest

    from leankd.errors import TrainingError

    class NaNNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 10)

        def forward(self, x):
            return self.fc(x.mean((2, 3))) * float("nan")

    model = NaNNet()
    optim = OptimConfig(epochs=1, batch_size=16)
    opt = build_optimizer(model, optim)
    with pytest.raises(TrainingError) as info:
        fit(Distiller(model, None, ArmConfig()), _fake_loader(), opt, build_scheduler(opt, optim, 4),
            Precision.create("fp32", torch.device("cpu")), 1, torch.device("cpu"), tag="plain/s0")
    msg = str(info.value)
    assert "nan" in msg and "epoch 1 step 1" in msg and "train.lr" in msg and "\n" not in msg
