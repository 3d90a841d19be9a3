"""Data parallel plumbing: which process this is, and the few collectives a job needs. torch.distributed does
the work; this module only names the world and keeps single-process runs free of it.

    world = World.from_env()          # torchrun / accelerate launch set RANK, WORLD_SIZE, LOCAL_RANK
    world.main                        # rank 0: the only process that writes rows, checkpoints and reports
    join(world, device)               # a job's own process group (gloo on CPU, nccl on CUDA)
    totals = all_reduce({"train_flops": 3e12})     # summed over the ranks
    leave()

A `leankd run` under torchrun is N launcher processes (one per rank); each job of the experiment is a child
process per rank, and the N children of one job form that job's process group at `world.init` (a tcp:// address
rank 0 chose). Single process: `World()` (size 1), and every helper here is a no-op.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, replace
from datetime import timedelta

import torch
import torch.distributed as dist

JOB_WORLD_ENV = "LEANKD_JOB_WORLD"  # a child job's World, as JSON, from its launcher
TIMEOUT = timedelta(minutes=30)     # a collective waiting longer than this fails the job (a peer hung)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    init: str | None = None  # the job group's rendezvous (tcp://host:port); None: the launcher's env://

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env=os.environ) -> "World":
        """The launcher's world (torchrun and accelerate launch both set these), or one process."""
        if JOB_WORLD_ENV in env:
            return cls(**json.loads(env[JOB_WORLD_ENV]))
        size = int(env.get("WORLD_SIZE", 1))
        return cls(int(env.get("RANK", 0)), size, int(env.get("LOCAL_RANK", 0))) if size > 1 else cls()

    def for_job(self, init: str) -> "World":
        return replace(self, init=init)

    def to_env(self) -> dict[str, str]:
        """A child job's environment: its World; torchrun's agent store is the launchers', not the job's."""
        return {JOB_WORLD_ENV: json.dumps(asdict(self)), "TORCHELASTIC_USE_AGENT_STORE": "False"}


def free_address() -> str:
    """A tcp:// rendezvous on this host (MASTER_ADDR when set) at a port free now."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return f"tcp://{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{port}"


def device_for(world: World, device: torch.device) -> torch.device:
    """Each rank's own GPU (LOCAL_RANK); CPU stays CPU."""
    return torch.device("cuda", world.local_rank) if device.type == "cuda" and world.size > 1 else device


def join(world: World, device: torch.device) -> None:
    """Join the job's process group (nothing for one process); `leave()` when its collectives are done (a job
    that fails first simply exits: its peers' collectives then fail too)."""
    if world.size == 1:
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=world.init, rank=world.rank,
                            world_size=world.size, timeout=TIMEOUT)


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """FSDP2 (`fully_shard`) over the job's ranks: each block's parameters (every child of a ModuleList or
    Sequential that has any) split across them and gathered for that block's forward only; `module` is sharded in
    place (its module names, hence forward hooks, are unchanged). Every rank must run each forward."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for p in module.parameters():  # FSDP shards contiguous tensors only (conv weights may be channels_last)
        p.data = p.data.contiguous()
    lists = [name for name, m in module.named_modules() if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential))]
    blocks = {f"{name}.{child}".lstrip("."): m for name in lists for child, m in
              module.get_submodule(name).named_children() if any(True for _ in m.parameters())}
    for name, block in blocks.items():  # the outermost blocks only (a block inside a block is not split again)
        if not any(name.startswith(other + ".") for other in blocks):
            fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(values: dict[str, float | None], op: str = "sum") -> dict[str, float | None]:
    """Each value summed (or max) over the ranks; a value that is None on any rank is None. One process: as is."""
    if not active():
        return dict(values)
    keys = sorted(values)
    missing = torch.tensor([float(values[k] is None) for k in keys], dtype=torch.float64)
    data = torch.tensor([0.0 if values[k] is None else float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(missing, dist.ReduceOp.MAX)
    dist.all_reduce(data, dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return {k: None if m else v for k, m, v in zip(keys, missing.tolist(), data.tolist())}


def mean(value: float) -> float:
    """`value` averaged over the ranks (one process: as is)."""
    return all_reduce({"v": value})["v"] / dist.get_world_size() if active() else value


def gather(obj) -> list | None:
    """Every rank's `obj` on rank 0 (None on the others). One process: [obj]."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj):
    """Rank 0's `obj` on every rank. One process: obj."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
