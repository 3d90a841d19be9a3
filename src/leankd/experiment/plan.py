"""Planning an experiment: which jobs it has and what each one is, decided once, as job specs.

    plan = Plan.make(cfg, data_dir, out_dir, task)   # validates every arm's layers against the real models
    plan.teacher_job()                               # the JobSpec that trains (or loads) the teacher
    plan.student_job("kd", seed=0)                   # a JobSpec per arm x seed
    plan.row_identity("kd")                          # settings + data files + teacher weights: the row's identity
    plan.cache_job(["kd"])                           # the job that builds the teacher cache those arms read

Whether a job runs the teacher, which teacher layers a text student starts from, where the teacher comes from
(online or a cache, and what the cache holds) and how the ranking's cost is shared are decided here and nowhere
else.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

from leankd.config import ArmConfig
from leankd.device import resolve_device
from leankd.distill.cache import TeacherCache
from leankd.distill.selection import init_layer_indices, layer_map, preset_layers
from leankd.distill.taps import candidate_layers, qkv_modules
from leankd.distill.targets import MAP_PREFIX, arm_fields, field_bytes, map_field, map_shapes, uncached_losses
from leankd.errors import ModelError
from leankd.experiment import identity, teachers
from leankd.jobs.spec import JobSpec
from leankd.models.user import is_import_path
from leankd.precision import resolve, teacher_precision
from leankd.tasks import data_identity


def uses_teacher(cfg, arm: ArmConfig) -> bool:
    """The job loads the teacher: to distil from it, or to build the student from its layers."""
    return arm.method != "plain" or arm.layers is not None or cfg.student.layers is not None


def check_factories(cfg, task) -> None:
    """A model named by import path is built once here, so a factory that returns no nn.Module fails before any
    job, not in every student job after the teacher has trained."""
    for role in ("teacher", "student"):
        name = getattr(cfg, role).model
        if is_import_path(name):
            try:
                task.build_model(name)
            except ModelError as err:
                raise ModelError(f"model error: {role}.model: {str(err).removeprefix('model error: ')}") from None


def check_layers(cfg, task) -> tuple[dict[str, list[int] | None], dict[str, list[str]], object]:
    """Resolve every arm's layers against the real (untrained) models before any training starts, so a typo
    or an out-of-range index fails in seconds with a did-you-mean hint, not after the teacher. Returns the
    teacher encoder layers each arm's student starts from (None: a model of its own), the teacher layers each
    arm with pairs reads (every candidate for `auto`, ranked only after the teacher is trained), and the
    untrained teacher they were resolved on (None when no arm needed it)."""
    init: dict[str, list[int] | None] = {name: None for name in cfg.arms}
    reads: dict[str, list[str]] = {}
    arms = {n: a for n, a in cfg.arms.items() if a.pairs or a.layers is not None or cfg.student.layers}
    teacher = task.build_model(cfg.teacher.model) if arms else None
    for name, arm in arms.items():
        try:
            refs = arm.layers if arm.layers is not None else cfg.student.layers
            init[name] = init_layer_indices(teacher, refs) if refs is not None else None
            student = task.build_model(cfg.student.model, init[name], teacher)
            if arm.pairs == "auto":  # the ranking needs the trained teacher; check the depths now
                preset_layers("last", len(candidate_layers(student)), len(candidate_layers(teacher)))
                reads[name] = candidate_layers(teacher)
            elif arm.pairs:
                pairs = layer_map(arm, student, teacher)
                for s_name, t_name in pairs if "attention_relation" in arm.feature_losses else ():
                    qkv_modules(student.get_submodule(s_name), s_name)
                    qkv_modules(teacher.get_submodule(t_name), t_name)
                reads[name] = [t for _, t in pairs]
        except ModelError as err:
            raise ModelError(f"arm '{name}': {err}") from None
    return init, reads, teacher


def cache_targets(cfg, task, reads: dict[str, list[str]], teacher) -> tuple[dict[str, list[str] | str],
                                                                          dict[str, tuple]]:
    """Per distilled arm: the cache fields it would read, or why it cannot read a cache; the per-sample shape of
    each attention map any arm would read (one dry forward of the untrained teacher `check_layers` built).
    `reads`: the teacher layers each arm with pairs reads (from `check_layers`)."""
    fields: dict[str, list[str] | str] = {}
    for name, arm in cfg.arms.items():
        uncached = uncached_losses(arm)
        if arm.method == "plain":
            continue
        if uncached:
            fields[name] = (f"online: {', '.join(uncached)} compare(s) whole teacher features; a cache holds logits "
                            "and attention maps only")
        elif arm.pairs and name not in reads:
            fields[name] = "online: the teacher's feature shapes are not known at planning (a caller's modules)"
        else:
            fields[name] = arm_fields(arm, reads.get(name, []))
    layers = list(dict.fromkeys(n for name, f in fields.items() if not isinstance(f, str) for n in reads.get(name, [])))
    if not layers:
        return fields, {}
    return fields, map_shapes(teacher, task.train_loader(2, 0).example(None, 2)[0], layers)


@dataclass
class Plan:
    cfg: object
    data_dir: Path
    out_dir: Path
    key: str                          # the stored teacher's key
    init_layers: dict = field(default_factory=dict)
    user_student: bool = False
    user_teacher: bool = False
    data_files: list = field(default_factory=list)
    arm_fields: dict = field(default_factory=dict)  # arm -> cache fields it would read, or why it cannot
    target_shapes: dict = field(default_factory=dict)  # cache field -> per-sample shape of an attention map
    train_samples: int | None = None
    num_outputs: int | None = None

    def _spec(self, **kw) -> JobSpec:
        return JobSpec(config=self.cfg.model_dump(mode="json"), data_dir=str(self.data_dir),
                       out_dir=str(self.out_dir.resolve()), teacher_key=self.key, **kw)

    def views(self, arm: str | None = None, budget: dict | None = None) -> int:
        """Augmentation views of an arm's training data (text or no augmentation: 1). An arm that reads the teacher
        cache gets the cache's (cache.views, default train.epochs): past them its epochs reuse views, and its row
        says so. Any other arm (and the teacher) draws a fresh view every epoch it runs: as many views as its
        epochs (a budget-matched arm's, rounded up), so training longer never repeats a crop or flip."""
        cfg = self.cfg
        if cfg.data.is_text or not cfg.data.augment:
            return 1
        if arm is None:
            return cfg.teacher.train.epochs
        if self.teacher_source(arm)[0]:
            return self.cache_views()
        return max(1, math.ceil(budget["epochs"] - 1e-9)) if budget else cfg.train.epochs

    def cache_views(self) -> int:
        """Views the teacher cache holds: cache.views (default train.epochs); text or no augmentation: 1."""
        cfg = self.cfg
        return 1 if cfg.data.is_text or not cfg.data.augment else cfg.cache.views or cfg.train.epochs

    def teacher_precision(self) -> str:
        """The precision the teacher runs at when distilling (cache build and online alike)."""
        return teacher_precision(self.cfg.teacher.precision, self.cfg.precision, resolve_device(self.cfg.device))

    def cache_key(self) -> dict:
        """Everything the cached teacher outputs depend on (the precision as this machine resolves it)."""
        cfg = self.cfg
        return {"teacher": self.key, "weights": teachers.teacher_weights(self.out_dir, self.key),
                "data": self.data_files, "data_settings": cfg.data.settings(),
                **({"speed": cfg.speed.changed()} if cfg.speed.changed() else {}),
                "views": self.cache_views(), "aug_seed": cfg.cache.seed,
                "targets": ["logits", *sorted(map_field(n) for n in self.cache_layout[1])],
                "precision": self.teacher_precision(), "dtype": cfg.cache.dtype}

    def cache_users(self) -> list[str]:
        """The arms whose jobs read the teacher from the cache (`teacher_source` says why for each)."""
        return [a for a in self.cfg.arms if self.teacher_source(a)[0]]

    @functools.cached_property
    def cache_layout(self) -> tuple[dict[str, str], dict[str, tuple]]:
        """(arm -> why it runs the teacher online, "" when its targets are in the cache; the cache's attention
        maps, layer -> per-sample shape). Arms join in config order while the cache stays within cache.max_gb."""
        cfg, why, maps = self.cfg, {}, {}
        views, itemsize = self.cache_views(), 2 if cfg.cache.dtype == "float16" else 4
        for arm, want in self.arm_fields.items():
            if isinstance(want, str) or (cfg.arms[arm].cache or cfg.cache.mode) == "off":
                why[arm] = want if isinstance(want, str) else "online: cache mode off"
                continue
            more = {**maps, **{f[len(MAP_PREFIX):]: self.target_shapes[f] for f in want if f != "logits"}}
            size = field_bytes({"logits": (self.num_outputs or 0,), **more}, self.train_samples or 0, views,
                               itemsize)
            if size > cfg.cache.max_gb * 1e9:
                why[arm] = (f"online: with its targets the cache would take {size / 1e9:.3g} GB, over cache.max_gb "
                            f"{cfg.cache.max_gb:g}")
                continue
            why[arm], maps = "", more
        return why, maps

    def teacher_source(self, arm: str) -> tuple[bool, str]:
        """(read the teacher from the cache, why) for `arm`; the reason is recorded in its rows."""
        acfg, cfg = self.cfg.arms[arm], self.cfg
        if acfg.method == "plain":
            return False, "none: a plain arm runs no teacher"
        out = self.cache_layout[0][arm]
        if out:
            return False, out
        jobs = sum(not why for why in self.cache_layout[0].values()) * len(cfg.seeds)
        if (acfg.cache or cfg.cache.mode) == "on":
            why = "cache: cache mode on"
        elif jobs >= 2:
            why = f"cache: auto, {jobs} jobs of this experiment share it"
        elif self._valid_cache_exists:
            why = "cache: auto, a valid cache for this teacher and data exists"
        else:
            return False, "online: auto, a cache would serve one job only"
        views = self.cache_views()
        if not cfg.data.is_text and cfg.data.augment and cfg.train.epochs > views:
            why += (f"; {cfg.train.epochs} epochs over {views} cached augmentation views: epochs {views + 1}-"
                    f"{cfg.train.epochs} reuse them (an uncached arm draws a fresh view every epoch)")
        return True, why

    @functools.cached_property
    def _valid_cache_exists(self) -> bool:  # hashes every shard: asked once per plan
        if not teachers.is_stored(self.out_dir, self.key):
            return False  # no teacher yet, so no cache of its outputs
        return TeacherCache(self.out_dir / "cache" / "teacher", self.cache_key()).is_valid()

    def _cache_spec(self, arm: str) -> tuple[dict | None, str]:
        use, why = self.teacher_source(arm)
        if not use:
            return None, why
        cfg = self.cfg
        return {"root": str((self.out_dir / "cache" / "teacher").resolve()), "key": self.cache_key(),
                "dtype": cfg.cache.dtype, "batch_size": cfg.cache.batch_size or self.build_batch(),
                "users": len(self.cache_users()) * len(cfg.seeds), "maps": self.cache_layout[1]}, why

    def cache_job(self, arms) -> JobSpec | None:
        """The job that only builds the teacher cache (steps up to teacher_cache) before the students that read it
        run, for the cache users among `arms` (the arms with jobs still to run); None when none of them reads the
        cache or a valid cache is already there. Its spec is its first user's (same cache key, same maps)."""
        users = [a for a in arms if a in self.cache_users()]
        if not users:
            return None
        if TeacherCache(self.out_dir / "cache" / "teacher", self.cache_key()).is_valid():
            return None  # hashes every shard: asked once per run
        spec = self.student_job(users[0], self.cfg.seeds[0])
        return dataclasses.replace(spec, until="teacher_cache", checkpoint=None)

    def build_batch(self) -> int:
        """The cache build's teacher batch: 4x the training batch for images (no backward, so memory allows it);
        the training batch for text, where a wider batch pads more tokens (sorted by length either way)."""
        return self.cfg.train.batch_size * (1 if self.cfg.data.is_text else 4)

    def teacher_job(self) -> JobSpec:
        cfg = self.cfg
        given = self.user_teacher or cfg.teacher.checkpoint is not None
        return self._spec(role="teacher", arm="teacher", seed=cfg.teacher.seed, optim="teacher.train",
                          loss=ArmConfig(method="plain").model_dump(mode="json"),
                          model="user" if self.user_teacher else cfg.teacher.model,
                          save_path=str(teachers.model_path(self.out_dir, self.key)),
                          weights=cfg.teacher.checkpoint, train=not given, views=self.views(),
                          eval_logits_out=str(teachers.eval_logits_path(self.out_dir, self.key)),
                          refuse={"min_metric": cfg.teacher.min_metric,
                                  "chance": cfg.guard.refuse_chance_teacher and not given},
                          checkpoint=None if self.user_teacher else
                          self._checkpoint(f"teacher-{self.key}", f"teacher/{self.key}"))

    def student_job(self, arm: str, seed: int, budget: dict | None = None) -> JobSpec:
        cfg, acfg = self.cfg, self.cfg.arms[arm]
        loads_teacher = uses_teacher(cfg, acfg)
        init = self.init_layers.get(arm)
        cache, source = self._cache_spec(arm)
        return self._spec(role="student", arm=arm, seed=seed, optim="train", loss=acfg.model_dump(mode="json"),
                          model="user" if self.user_student else cfg.teacher.model if init else cfg.student.model,
                          save_path=str(self.out_dir / "students" / cfg.name / f"{arm}-seed{seed}"),
                          teacher_path=str(teachers.model_path(self.out_dir, self.key))
                          if loads_teacher and not self.user_teacher else None,
                          user_teacher=loads_teacher and self.user_teacher, init_layers=init,
                          distil=acfg.method != "plain",
                          agreement_with=str(teachers.eval_logits_path(self.out_dir, self.key)),
                          ranking_dir=str(teachers.teacher_dir(self.out_dir, self.key)) if acfg.pairs == "auto"
                          else None, ranking_users=self.ranking_users(), views=self.views(arm, budget),
                          cache=cache, teacher_source=source, budget=budget,
                          checkpoint=None if self.user_student else
                          self._checkpoint(f"{cfg.name}/{arm}-seed{seed}", f"{self.row_identity(arm)}/{arm}/{seed}"))

    def _checkpoint(self, name: str, identity: str) -> dict:
        """Where a job's mid-run checkpoints go, and what they must have been written for to be resumed."""
        cp = self.cfg.checkpoint
        return {"path": str((self.out_dir / "checkpoints" / f"{name}.ckpt").resolve()), "identity": identity,
                "every_s": cp.every_s, "every_steps": cp.every_steps}

    def budget(self, arm: str, target: dict, base: dict) -> dict:
        """A budget-matched arm's training length: its base arm's steps scaled by target / base on the figure it
        matches (`target`, `base`: the two arms' rows of the same seed)."""
        acfg, cfg = self.cfg.arms[arm], self.cfg
        fig = "total_flops" if acfg.match_by == "flops" else "total_s"
        per_epoch = -(-self.train_samples // cfg.train.batch_size)
        steps = max(1, round(cfg.train.epochs * per_epoch * target[fig] / base[fig]))
        return {"match": acfg.match, "by": acfg.match_by, "target": target[fig], "base": base[fig],
                "base_arm": base["arm"], "steps": steps, "epochs": steps / per_epoch}

    def ranking_users(self) -> int:
        """Jobs of this experiment that use the teacher's layer ranking (share its cost)."""
        return max(1, sum(a.pairs == "auto" for a in self.cfg.arms.values()) * len(self.cfg.seeds))

    def row_identity(self, arm: str) -> str | None:
        """What makes a student row what it is (identity.py: the resolved config minus an allow-list), with the
        data files and the teacher's key and stored weights. None with a caller's student module: such rows are
        never reused (leankd cannot tell whether the module changed)."""
        if self.user_student:
            return None
        cfg, acfg = self.cfg, self.cfg.arms[arm]
        device = resolve_device(cfg.device)
        cached = self.teacher_source(arm)[0]
        targets = None if acfg.match is None else {"match": self.row_identity(acfg.match),
                                                   "base": self.row_identity(cfg.base_arm(arm))}
        resolved = {"precision": resolve(acfg.precision or cfg.precision, device)[0], "device": device.type,
                    "teacher_precision": self.teacher_precision() if acfg.method != "plain" else None,
                    "cache": self.cache_key() if cached else None,
                    "views": None if targets else self.views(arm), "targets": targets}
        return identity.row_identity(cfg, arm, [self.key, teachers.teacher_weights(self.out_dir, self.key)],
                                     self.data_files, resolved)

    @classmethod
    def make(cls, cfg, data_dir: Path, out_dir: Path, task=None, student=None, teacher=None) -> "Plan":
        """The plan of `cfg`; with `task`, every arm's layers are checked against the real models first."""
        if task is not None:
            check_factories(cfg, task)
        init, reads, teacher_model = check_layers(cfg, task) if task is not None else ({}, {}, None)
        fields, shapes = cache_targets(cfg, task, reads, teacher_model)
        files = data_identity(cfg, Path(data_dir))  # content hashes: hashed once per experiment
        return cls(cfg, Path(data_dir), Path(out_dir), teachers.teacher_key(cfg, files, teacher), init,
                   user_student=student is not None, user_teacher=teacher is not None, data_files=files,
                   arm_fields=fields, target_shapes=shapes, train_samples=task.num_train() if task else None,
                   num_outputs=task.num_outputs if task else None)
