"""A row's identity: every resolved setting that can change its result, by construction.

    identity = row_identity(cfg, "kd", teacher=[key, weights], data_files=files, resolved=plan.resolved("kd"))

The identity is the hash of the whole resolved config *minus* an explicit allow-list of fields that cannot change
a row's result (`NOT_IDENTITY`, each with its reason), so a field added to the schema later is part of every row's
identity until someone argues it onto the list (tests/test_identity.py walks every schema field). Three parts enter
resolved rather than as written, because what ran is what matters:

- `precision`, `device`, `teacher.precision`: as this machine resolves them (`auto` -> bf16 or fp32; the teacher's
  `same` -> the experiment's precision), so rerunning with `teacher.precision=bf16` retrains every distilled row;
- the teacher: its key (teacher.* settings but precision, data, data files, a user's model file) and its stored
  weights' hash; a student named by import path: its source file's content hash;
- the arm: only this arm's settings (not the other arms'), and for a budget-matched arm the identities of the
  arm it matches and of its base plain arm (so its budget);
- the teacher cache: an arm that reads it has the cache's settings and its own views in its identity; an arm that
  does not (plain, online) has neither, so `cache.views` never retrains `plain`.

`IDENTITY_VERSION` is part of the hash and recorded in rows (`extra.identity_version`): rows of an older leankd
can not be proven equal and are shown as "(older config)", never reused.
"""
from __future__ import annotations

from leankd.config import config_hash
from leankd.data.files import file_identity
from leankd.models.user import model_source
from leankd.results.store import IDENTITY_VERSION

NOT_IDENTITY: dict[str, str] = {
    "name": "the experiment's name: rows are looked up under it, it does not change them",
    "seeds": "the seed list: each row is one seed, a key of its own",
    "arms": "the other arms: the row's own arm enters as `arm` (and a matched arm's target and base identities)",
    "checkpoint.every_s": "when mid-run checkpoints are written: resume is bit-exact (tests/test_resume.py)",
    "checkpoint.every_steps": "as checkpoint.every_s",
    "guard.max_loss_growth": "stops a diverging job; a finished row passed the check",
    "guard.refuse_chance_teacher": "refuses a chance-level teacher; a row's teacher passed the check",
    "teacher.min_metric": "a check on the teacher; a row's teacher passed it",
    "teacher.shard": "where the online teacher's parameters live in a data parallel run (FSDP), not what it is",
    "metering.latency_batches": "how many batches time the latency figures, not what is trained",
    "metering.latency_warmup": "as metering.latency_batches",
    "data.on_device": "where the training set and teacher cache live (GPU or host): the batches and targets are "
                      "bit-identical either way (tests/test_device_data.py)",
    "metering.isolate_arms": "whether a job runs in a child process (its peak memory is measurable), not what it "
                             "trains",
}
# Fields that enter only when the arm reads the teacher cache (resolved: `cache` in `row_identity`).
CACHE_ONLY = ("mode", "views", "dtype", "batch_size", "max_gb")
# ranking.* enters only for arms with pairs: auto (the only ones that read the ranking).


def _drop(tree: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest and isinstance(tree.get(head), dict):
        _drop(tree[head], rest)
    elif not rest:
        tree.pop(head, None)


def row_identity(cfg, arm: str, teacher: list, data_files: list, resolved: dict) -> str:
    """The identity hash of `arm`'s rows (see the module docstring). `teacher`: [teacher key, stored weights hash];
    `resolved`: {"precision", "device", "teacher_precision" (None when the arm runs no teacher), "cache" (the
    cache key the arm reads, None), "views", "targets" ({"match": identity, "base": identity} or None)}."""
    tree = cfg.model_dump(mode="json")
    for dotted in NOT_IDENTITY:
        _drop(tree, dotted)
    acfg = cfg.arms[arm]
    if resolved.get("cache") is None:
        for name in CACHE_ONLY:
            tree["cache"].pop(name, None)
    if acfg.pairs != "auto":
        tree.pop("ranking")
    if not cfg.speed.changed():  # rows at the default speed settings keep the identities they had before them
        tree.pop("speed")
    tree.update(precision=resolved["precision"], device=resolved["device"], data=[tree["data"], data_files],
                teacher=[teacher, resolved.get("teacher_precision")], arm=acfg.model_dump(mode="json"),
                views=resolved["views"], cache_key=resolved.get("cache"), matched=resolved.get("targets"),
                identity_version=IDENTITY_VERSION)
    source = model_source(cfg.student.model)
    if source is not None and source.is_file():  # a user's model file: edited code retrains (the teacher's: its key)
        tree["student_source"] = file_identity(source)
    return config_hash(tree)
