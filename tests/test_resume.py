"""Mid-run checkpoints: a loop stopped at any step and resumed from its last checkpoint ends bit-identical to an
uninterrupted one (CPU, fp32); damaged or foreign checkpoints are never read; a failed write keeps the last one."""
import os
import subprocess
import sys

import pytest
import torch

from leankd.config import ArmConfig, OptimConfig, load_config
from leankd.data.cifar10 import VisionLoader, cifar10_splits
from leankd.distill.distiller import Distiller
from leankd.models import create_model
from leankd.precision import Precision
from leankd.resume import Resume
from leankd.train import build_optimizer, build_scheduler, fit

from conftest import REPO

CPU = torch.device("cpu")


class Crash(Exception):
    pass


class CrashingLoader:
    """The real loader, raising after `after` batches of the whole run (a crash in the middle of a step loop)."""

    def __init__(self, loader, after):
        self.loader, self.after, self.seen = loader, after, 0
        self.num_samples, self.batch_size = loader.num_samples, loader.batch_size

    def __len__(self):
        return len(self.loader)

    def keyed_epoch(self, epoch, start=0):
        for batch in self.loader.keyed_epoch(epoch, start):
            if self.seen == self.after:
                raise Crash
            self.seen += 1
            yield batch


def _setup(data_dir, teacher):
    cfg = load_config(REPO / "tests" / "configs" / "tiny-cifar10.yaml", ["data.train_limit=640"])
    images, labels = cifar10_splits(data_dir, cfg.data)["train"]
    loader = VisionLoader(images, labels, batch_size=64, seed=3, augment=True, shuffle=True, views=2)
    torch.manual_seed(0)
    student = create_model("resnet8", 10)
    distiller = Distiller(student, teacher, ArmConfig(method="kd", temperature=4.0, alpha=0.9))
    optim = OptimConfig(epochs=2, lr=0.1, batch_size=64)
    opt = build_optimizer(distiller, optim)
    return distiller, loader, opt, build_scheduler(opt, optim, 2 * len(loader))


@pytest.mark.parametrize("crash_after", [6, 10, 17])  # mid-epoch 1, right after epoch 1 ends, mid-epoch 2
def test_resumed_loop_is_bit_identical_to_an_uninterrupted_one(tmp_path, data_dir, crash_after):
    torch.manual_seed(1)
    teacher = create_model("resnet8", 10).eval()
    prec = Precision.create("fp32", CPU)
    d, loader, opt, sched = _setup(data_dir, teacher)
    whole = fit(d, loader, opt, sched, prec, 2, CPU)
    want = {k: v.clone() for k, v in d.state_dict().items()}

    ckpt = Resume(tmp_path / "job.ckpt", identity="job-a", every_s=0, every_steps=4)
    d, loader, opt, sched = _setup(data_dir, teacher)
    with pytest.raises(Crash):
        fit(d, CrashingLoader(loader, crash_after), opt, sched, prec, 2, CPU, resume=ckpt)
    torch.manual_seed(999)  # whatever the new process does first, the resumed loop restores every RNG
    d, loader, opt, sched = _setup(data_dir, teacher)  # a fresh process: new model, optimiser, schedule
    again = fit(d, loader, opt, sched, prec, 2, CPU, resume=ckpt)
    assert (again["resumed"]["epoch"], again["resumed"]["step"]) == {6: (1, 4), 10: (2, 0), 17: (2, 4)}[crash_after]
    assert again["epoch_loss"] == whole["epoch_loss"]
    for k, v in d.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert again["train_s"] > again["resumed"]["train_s"] >= 0


def test_damaged_or_foreign_checkpoints_are_never_read(tmp_path):
    ckpt = Resume(tmp_path / "a.ckpt", identity="job-a", every_s=0)
    ckpt.save({"step": 1, "w": torch.ones(3)})
    ckpt.save({"step": 2, "w": torch.ones(3)})
    assert ckpt.load()["step"] == 2
    data = bytearray(ckpt.path.read_bytes())
    data[-20] ^= 0xFF
    ckpt.path.write_bytes(bytes(data))
    assert ckpt.load()["step"] == 1  # the newest is damaged: the previous valid one
    ckpt.prev.write_bytes(b"garbage")
    assert ckpt.load() is None  # nothing valid: start fresh
    Resume(tmp_path / "b.ckpt", identity="job-b").save({"step": 5})
    os.replace(tmp_path / "b.ckpt", tmp_path / "a.ckpt")
    assert Resume(tmp_path / "a.ckpt", identity="job-a").load() is None  # another job's checkpoint


def test_a_file_size_limit_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "job.ckpt"
    Resume(path, identity="j", every_s=0).save({"step": 1, "w": torch.zeros(10)})
    script = "\n".join([
        "import resource, signal, torch",
        "from leankd.errors import CheckpointError",
        "from leankd.resume import Resume",
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as leankd's job processes do: EFBIG, not death",
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))",
        "try:",
        f"    Resume({str(path)!r}, identity='j', every_s=0).save({{'step': 2, 'w': torch.zeros(100_000)}})",
        "except CheckpointError as err:",
        "    print(err)"])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(f"could not write {path}") and "file-size limit" in line and "\n" not in line
    assert Resume(path, identity="j").load()["step"] == 1  # the previous checkpoint, intact
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind



@pytest.mark.parametrize("code", ["ENOSPC", "EFBIG"])
def test_a_full_disk_in_any_job_write_is_one_line_for_the_parent(tmp_path, monkeypatch, code):
    """A teacher save or cache build that hits a full disk or a file-size limit: the job exits 2 with one line
    naming the file and the fix, which the parent records as the job's failure."""
    import errno

    import leankd.jobs.runner as runner
    from leankd.jobs.spec import JobSpec, error_path

    spec = JobSpec(role="teacher", arm="teacher", seed=0, config={}, optim="teacher.train", loss={}, model="resnet8",
                   data_dir="d", out_dir=str(tmp_path), save_path="s", teacher_key="k")
    (tmp_path / "job.json").write_text(spec.to_json())

    def full(_spec):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(tmp_path / "cache" / "x.npy"))

    monkeypatch.setattr(runner, "run_job", full)
    assert runner.main([str(tmp_path / "job.json"), str(tmp_path / "result.json")]) == 2
    line = error_path(tmp_path / "result.json").read_text()
    assert line.startswith(f"could not write {tmp_path / 'cache' / 'x.npy'} (") and "rerun the same command" in line
    assert not (tmp_path / "result.json").exists()
