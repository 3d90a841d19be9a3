"""`leankd run` under torchrun / accelerate launch: one experiment, every job data parallel over the launched ranks.

    torchrun --nproc_per_node 2 -m leankd.cli run CONFIG --out runs      # (gloo on CPU, nccl on GPUs)

Rank 0 runs the experiment as one process would (the store, claims, skipping finished rows, budgets, rows,
reports); every job it submits goes to all ranks: each launcher starts the job's child process with its rank
(`dist.World`, in the child's environment), the children form the job's own process group at a fresh tcp://
address and train the student in DDP on their shards of each global batch, and rank 0's child reports the job.
The other ranks only `follow`: wait for the next job, run their part, send back their outcome and peak memory.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import torch.distributed as torch_dist

from leankd import dist
from leankd.errors import ConfigError, JobFailed
from leankd.experiment.executors import Finished, failed, run_child
from leankd.jobs.spec import JobSpec
from leankd.metering.ledger import peak_memory

log = logging.getLogger(__name__)
LAUNCHER_TIMEOUT = timedelta(days=7)  # ranks > 0 wait this long for rank 0's next job (it may wait on a lock)


def start(world: dist.World) -> None:
    """The launchers' own process group (gloo, control messages only), at the launcher's env:// address."""
    torch_dist.init_process_group("gloo", timeout=LAUNCHER_TIMEOUT)
    log.info("data parallel: rank %d of %d", world.rank, world.size)


def stop() -> None:
    """Leave the launchers' group once every rank is done."""
    torch_dist.barrier()
    torch_dist.destroy_process_group()


def _run_rank(spec_json: str, work: Path, world: dist.World) -> dict:
    """This rank's part of a job: {"result", "peak_mb"} or {"error"}."""
    spec = JobSpec.from_json(spec_json)
    try:
        result, peak = run_child(spec, work, world.to_env())
    except (JobFailed, ConfigError) as err:
        return {"error": str(err)}
    return {"result": result, "peak_mb": peak}


class DistributedExecutor:
    """Rank 0's executor: each job runs on every rank at submit time (one after another, like LocalExecutor)."""

    def __init__(self, world: dist.World):
        self.world = world

    def submit(self, spec: JobSpec, work: Path) -> Finished:
        message = {"spec": spec.to_json(), "init": dist.free_address()}
        dist.broadcast(message)
        outcomes = dist.gather(_run_rank(message["spec"], work, self.world.for_job(message["init"])))
        errors = {r: o["error"].split(" failed: ", 1)[-1] for r, o in enumerate(outcomes) if "error" in o}
        if errors:
            same = len(set(errors.values())) == 1 and len(errors) == len(outcomes)
            why = f"on every rank: {errors[0]}" if same else "; ".join(f"rank {r}: {e}" for r, e in errors.items())
            return Finished(error=failed(spec, why))
        result, peak = outcomes[0]["result"], outcomes[0]["peak_mb"]
        if "costs" not in result:  # a job that makes no row (the teacher cache build)
            return Finished((result, peak))
        ranks = [peak_memory(o["result"]["costs"], o["peak_mb"])[0] for o in outcomes]
        result["costs"]["rank_peaks_mb"] = ranks
        result["extra"]["rank_peaks_mb"] = ranks
        return Finished((result, peak))

    def close(self) -> None:
        dist.broadcast(None)  # the followers' loop ends


def follow(world: dist.World, work: Path) -> None:
    """Ranks > 0: run each job rank 0 submits, until it says there are no more."""
    while (message := dist.broadcast(None)) is not None:
        outcome = _run_rank(message["spec"], work, world.for_job(message["init"]))
        if "error" in outcome:
            log.error("rank %d: %s", world.rank, outcome["error"])
        dist.gather(outcome)


def check_supported(cfg, user: bool) -> None:
    if user or not cfg.metering.isolate_arms:
        raise ConfigError("config error: a data parallel run (torchrun / accelerate launch) runs each job in child "
                          "processes of leankd's own models; use metering.isolate_arms=true and a config's models, "
                          "or run your modules in one process")
