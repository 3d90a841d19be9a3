"""A job spec: everything that makes one job what it is, decided once when the experiment is planned.

Teacher and student jobs differ only in this data, never in `if role ==` branches in the steps:

    JobSpec(role="student", arm="kd", seed=0, config=cfg.model_dump(mode="json"), optim="train",
            loss={"method": "kd", ...}, model="resnet8", teacher_path="runs/teachers/ab12/model", distil=True, ...)

It travels to the child process as JSON (`to_json` / `from_json`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class JobSpec:
    role: str                        # the row's role: "teacher" or "student"
    arm: str                         # arm name ("teacher" for the teacher job)
    seed: int                        # model init and data order
    config: dict                     # the resolved experiment config (JSON)
    optim: str                       # which optimiser settings: "teacher.train" or "train"
    loss: dict                       # the ArmConfig (JSON) of the loss; the teacher trains as "plain"
    model: str                       # model name: registry/HF name; "user" when the caller passes a module
    data_dir: str
    out_dir: str
    save_path: str                   # where the trained model is saved (task.save adds the suffix)
    teacher_key: str                 # the stored teacher this experiment uses
    teacher_path: str | None = None  # load this stored teacher (students that distil or start from it)
    user_teacher: bool = False       # the teacher is the caller's module, not `teacher_path`
    init_layers: list[int] | None = None  # text students built from these teacher encoder layers
    distil: bool = False             # the loss runs the teacher (kd, feature pairs)
    weights: str | None = None       # load these weights and do not train (teacher.checkpoint)
    train: bool = True               # False: evaluated and metered only (a loaded or given model)
    eval_logits_out: str | None = None   # write eval logits here (the teacher's, for students' agreement)
    agreement_with: str | None = None    # compare eval predictions with these logits
    ranking_dir: str | None = None   # pairs=auto: where the teacher's layer ranking is stored
    ranking_users: int = 1           # jobs of this experiment that share the ranking's cost
    views: int = 1                   # augmentation views of the training data (the teacher cache's views)
    cache: dict | None = None        # read the teacher from this cache: {"root", "key", "dtype", "batch_size", "users",
                                     #   "maps": layer -> attention-map shape}
    teacher_source: str = ""         # why the teacher is cached, online or unused (recorded in the row)
    checkpoint: dict | None = None   # mid-run checkpoints: {"path", "identity", "every_s", "every_steps"}
    refuse: dict | None = None       # teacher jobs: {"min_metric", "chance"}: a model below it is never saved
    budget: dict | None = None       # a budget-matched arm: {"match", "by", "target", "base", "steps", "epochs"}:
                                     #   train `steps` steps in all (the schedule spans them), not train.epochs
    until: str | None = None         # stop after this step (e.g. "teacher_cache": a job that only builds the cache)

    @property
    def tag(self) -> str:
        return f"{self.arm}/s{self.seed}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        return cls(**json.loads(text))


def error_path(result: Path) -> Path:
    """Where a failed child job leaves its one-line error (beside its result file), for the parent's record."""
    return result.with_name(result.name + ".error")
